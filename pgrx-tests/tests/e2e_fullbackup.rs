//! End to end, oracle 4 of DESIGN.md: a stock PostgreSQL 15 starts from the
//! page server's `fullbackup` at any LSN. At three LSNs of a streamed
//! primary (after `pgbench -i`, between two pgbench runs, after them; writes
//! paused at each while `pg_dump` runs), the fullbackup at that LSN, unpacked
//! into an empty directory, starts; its `pg_dump` equals the primary's at
//! that LSN; `pg_amcheck --heapallindexed --all` reports nothing. The same
//! for a branch created at the middle LSN.
//!
//! Scale and duration: `E2E_SCALE` (default 5) and `E2E_SECONDS` (default 20 per run).

use anyhow::{bail, Context, Result};
use pageserver_harness::{ClusterConfig, PgCluster};
use std::time::{Duration, Instant};
use storage::lsn::Lsn;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn dump(pg: &PgCluster) -> Result<String> {
    let out = pg.run_as_postgres_checked("pg_dump", &["--restrict-key=e2e", "-d", "postgres"])?;
    Ok(String::from_utf8(out.stdout)?)
}

fn lsn_of(pg: &PgCluster, sql: &str) -> Result<Lsn> {
    pg.sql_one(sql)?.context("no LSN")?.parse().map_err(|_| anyhow::anyhow!("bad LSN"))
}

fn wait_ingested(host: &PgCluster, timeline: &str, lsn: Lsn) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let at: Lsn = lsn_of(host, &format!("SELECT last_record_lsn FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"))?;
        if at >= lsn {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timeline {timeline} at {at} did not reach {lsn}\n{}", host.log_tail(30));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Fetches `fullbackup` with psql (as a compute would) into `dir/backup.tar`.
fn fetch_fullbackup(host: &PgCluster, tenant: &str, timeline: &str, lsn: Option<Lsn>, into: &std::path::Path) -> Result<()> {
    let addr = host.listener_addr().context("listener")?;
    let command = match lsn {
        Some(lsn) => format!("fullbackup {tenant} {timeline} {lsn}"),
        None => format!("fullbackup {tenant} {timeline}"),
    };
    let conn = format!("host={} port={} user=compute", addr.ip(), addr.port());
    let out = host.run_as_postgres_checked("psql", &["-X", "-w", "-d", &conn, "-c", &command])?;
    std::fs::write(into, &out.stdout)?;
    Ok(())
}

fn check_backup_starts(host: &PgCluster, tenant: &str, timeline: &str, lsn: Option<Lsn>, expected_dump: &str, what: &str) -> Result<()> {
    let started = Instant::now();
    let tar = std::env::temp_dir().join(format!("e2e-fullbackup-{}-{timeline}.tar", std::process::id()));
    fetch_fullbackup(host, tenant, timeline, lsn, &tar)?;
    let size = std::fs::metadata(&tar)?.len();
    let restored = PgCluster::start_on_data_dir(ClusterConfig::default(), |dir| {
        let status = std::process::Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(dir).status()?;
        if !status.success() {
            bail!("tar -x failed");
        }
        Ok(())
    });
    let _ = std::fs::remove_file(&tar);
    let restored = restored.with_context(|| format!("{what}: stock PostgreSQL did not start from the fullbackup"))?;
    let got = dump(&restored)?;
    if got != expected_dump {
        let diff: Vec<_> = got.lines().zip(expected_dump.lines()).filter(|(a, b)| a != b).take(5).collect();
        bail!("{what}: pg_dump differs ({} vs {} bytes); first differing lines: {diff:?}", got.len(), expected_dump.len());
    }
    let amcheck = restored.run_as_postgres("pg_amcheck", &["--all", "--heapallindexed", "--install-missing"])?;
    let report = format!("{}{}", String::from_utf8_lossy(&amcheck.stdout), String::from_utf8_lossy(&amcheck.stderr));
    if !amcheck.status.success() || !report.trim().is_empty() {
        bail!("{what}: pg_amcheck reported: {report}");
    }
    eprintln!("{what}: {size} byte fullbackup started, pg_dump equal, amcheck clean ({:.1}s)", started.elapsed().as_secs_f64());
    Ok(())
}

#[test]
fn stock_postgres_starts_from_fullbackup_at_any_lsn_and_on_a_branch() -> Result<()> {
    let scale = env_u64("E2E_SCALE", 5).to_string();
    let seconds = env_u64("E2E_SECONDS", 20).to_string();
    let primary = PgCluster::start_primary(&[("autovacuum", "off")])?;
    let host = PgCluster::start_host(&[])?;
    host.sql("CREATE EXTENSION pageserver_ext")?;
    let tenant = host.sql_one("SELECT pageserver.create_tenant()")?.unwrap();
    let timeline = host.sql_one(&format!("SELECT pageserver.create_timeline('{tenant}', '{}')", primary.connstr("postgres")))?.unwrap();

    let pgbench = |args: &[&str]| primary.run_as_postgres_checked("pgbench", args);
    let mut points = Vec::new();
    pgbench(&["-i", "-s", &scale, "-q", "postgres"])?;
    for round in 0..3 {
        if round > 0 {
            pgbench(&["-c", "4", "-j", "2", "-T", &seconds, "postgres"])?;
        }
        // Writes are paused: the dump shows the data as of this LSN.
        let lsn = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
        points.push((lsn, dump(&primary)?));
    }
    let last = points.last().unwrap().0;
    wait_ingested(&host, &timeline, last)?;
    let middle = points[1].0;
    let branch = host
        .sql_one(&format!("SELECT timeline_id FROM pageserver.branch_timeline('{tenant}', '{timeline}', '{middle}')"))?
        .unwrap();
    for (i, (lsn, expected)) in points.iter().enumerate() {
        check_backup_starts(&host, &tenant, &timeline, Some(*lsn), expected, &format!("timeline at LSN {i} ({lsn})"))?;
    }
    check_backup_starts(&host, &tenant, &branch, None, &points[1].1, &format!("branch at {middle}"))?;
    let log = host.log();
    if let Some(line) = log.lines().find(|l| l.contains("PANIC") || l.contains("ERROR:  ")) {
        bail!("host log has \"{line}\"");
    }
    Ok(())
}

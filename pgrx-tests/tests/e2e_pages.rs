//! End to end, oracle 3 of DESIGN.md: a stock primary with data checksums
//! on streams to the page server while pgbench runs; after `CHECKPOINT` on
//! the primary, every block of every WAL-logged fork in its data directory
//! must equal GetPage at the checkpoint's LSN, masked by the resource
//! manager's `rm_mask` where raw bytes differ (hint bits and other unlogged
//! bits), and carry a valid checksum; Exists / Nblocks of every fork and the
//! SLRU segments must agree too (`common::e2e::compare_pages`, which also
//! names the differences PostgreSQL allows). The same checks with checksums
//! off, on a workload of every WAL-writing feature: `e2e_workload.rs`.
//!
//! Crash safety rides along: during pgbench the host postmaster is killed
//! with SIGKILL twice and the main worker once; ingest must resume from
//! `disk_consistent_lsn` through the slot with no gap and no record applied
//! twice, which the page comparison afterwards would show.
//!
//! Scale and duration: `E2E_SCALE` (default 20) and `E2E_SECONDS` (default 120).

use anyhow::{bail, Context, Result};
use pageserver_harness::PgCluster;
use std::time::{Duration, Instant};
use storage::lsn::Lsn;

mod common;

pub fn timeline_lsn(host: &PgCluster, timeline: &str) -> Result<(Lsn, String)> {
    let row = host.sql(&format!(
        "SELECT last_record_lsn, state, coalesce(last_error, '') FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"
    ))?;
    let row = row.first().context("timeline not listed")?;
    Ok((
        row[0].as_ref().unwrap().parse().map_err(|_| anyhow::anyhow!("bad lsn"))?,
        format!("{} {}", row[1].as_deref().unwrap(), row[2].as_deref().unwrap()),
    ))
}

#[test]
fn pages_equal_the_primarys_after_checkpoint() -> Result<()> {
    let scale = common::e2e::env_u64("E2E_SCALE", 20);
    let seconds = common::e2e::env_u64("E2E_SECONDS", 120);
    let primary = common::e2e::start_primary(true, &[])?;
    // Small in-memory layers and a short timeout, so layers reach disk during
    // the run and the crashes below restart from a recent disk_consistent_lsn.
    let mut host = common::e2e::start_host(
        true,
        &[("pageserver.wait_lsn_timeout", "120s"), ("pageserver.checkpoint_distance", "16MB"), ("pageserver.checkpoint_timeout", "5s")],
    )?;
    primary.sql("CREATE DATABASE other")?;
    primary.sql_db(
        "other",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 5000) i",
    )?;

    let tenant = host.sql_one("SELECT pageserver.create_tenant()")?.unwrap();
    let conninfo = primary.connstr("postgres");
    let started = Instant::now();
    let timeline = host.sql_one(&format!("SELECT pageserver.create_timeline('{tenant}', '{conninfo}')"))?.unwrap();
    eprintln!("timeline {timeline} imported in {:.1}s", started.elapsed().as_secs_f64());

    let pgbench = |args: &[&str]| primary.run_as_postgres_checked("pgbench", args);
    let started = Instant::now();
    pgbench(&["-i", "-s", &scale.to_string(), "-q", "postgres"])?;
    eprintln!("pgbench -i -s {scale}: {:.1}s", started.elapsed().as_secs_f64());
    primary.sql("CREATE INDEX ON pgbench_accounts USING hash (bid)")?;
    primary.sql("CREATE INDEX ON pgbench_history USING brin (mtime)")?;
    let crashes = std::thread::scope(|scope| -> Result<Vec<String>> {
        let run = scope.spawn(|| pgbench(&["-c", "4", "-j", "2", "-T", &seconds.to_string(), "postgres"]));
        let mut done = Vec::new();
        let pause = Duration::from_secs(seconds / 4);
        for kind in ["postmaster", "postmaster", "main worker"] {
            std::thread::sleep(pause);
            if run.is_finished() {
                break;
            }
            let (before, _) = timeline_lsn(&host, &timeline)?;
            if kind == "postmaster" {
                host.kill_postmaster()?;
                host.start_again()?;
            } else {
                let pid = host.sql_one("SELECT pid FROM pageserver.status() WHERE kind = 'main'")?.context("main pid")?;
                let pid: i32 = pid.parse()?;
                pageserver_harness::process::signal(pid, libc::SIGKILL);
                std::thread::sleep(Duration::from_secs(3)); // the postmaster restarts the host
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            let after = loop {
                match timeline_lsn(&host, &timeline) {
                    Ok((lsn, state)) if state.starts_with("active") => break lsn,
                    _ if Instant::now() > deadline => bail!("timeline not back after killing the {kind}\n{}", host.log_tail(40)),
                    _ => std::thread::sleep(Duration::from_millis(300)),
                }
            };
            done.push(format!("killed the {kind} at ingest LSN {before}; back at {after}"));
        }
        run.join().map_err(|_| anyhow::anyhow!("pgbench thread panicked"))??;
        Ok(done)
    })?;
    for c in &crashes {
        eprintln!("{c}");
    }
    if crashes.len() < 3 {
        bail!("pgbench ended before all three crashes: {crashes:?}");
    }
    for step in ["VACUUM pgbench_history", "DELETE FROM pgbench_history WHERE tid % 3 = 0", "VACUUM pgbench_history"] {
        primary.sql(step)?;
    }
    primary.sql("CHECKPOINT")?;
    let lsn: Lsn = primary.sql_one("SELECT pg_current_wal_lsn()")?.unwrap().parse().map_err(|_| anyhow::anyhow!("lsn"))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (at, state) = timeline_lsn(&host, &timeline)?;
        if at >= lsn {
            break;
        }
        if Instant::now() > deadline {
            bail!("timeline at {at} ({state}) did not reach {lsn}\n{}", host.log_tail(40));
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    let report = common::e2e::compare_pages(&primary, &host, &tenant, &timeline, lsn, true)?;
    report.ensure_clean()?;
    if report.blocks < 1000 || report.checksums_checked != report.blocks {
        bail!("only {} blocks compared, {} checksums verified", report.blocks, report.checksums_checked);
    }
    common::e2e::ensure_log_clean(&host)
}

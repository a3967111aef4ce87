//! Benchmark: a host is lost with its disk; how long until a stock
//! PostgreSQL runs the database again from what the page server put in
//! object storage, against `pg_basebackup` of the primary, same run.
//!
//! Set-up: moto (`pageserver_harness::s3`) on loopback, a stock primary and
//! a host backing up to moto. `pgbench -i -s 64` (about 1 GiB), imported by
//! `create_timeline`; `pgbench -c 4 -j 2` writes for a while; the host
//! ingests it all and the backup worker brings `remote_consistent_lsn` to
//! its `disk_consistent_lsn`. The primary then stays idle, so both copies
//! must hold the same `sum(abalance)`.
//!
//! Row `remote.restore_s`: from the moment the host is SIGKILLed and its
//! data directory deleted: a fresh host is initialised and started with
//! the extension, `attach_tenant` downloads the tenant from the bucket,
//! `fullbackup` of the timeline is piped into `tar -x`, a stock PostgreSQL
//! starts on it, and its first query returns the primary's
//! `sum(abalance)`. Floor: `pg_basebackup -X stream` of the primary into an
//! empty directory, a stock PostgreSQL started on it, the same first query.
//! The phases are printed to stderr.
//!
//! `RESTORE_SCALE` (default 64) and `RESTORE_PGBENCH_S` (default 20) shrink
//! the run for a quick look. Needs the extension installed: see `COMMAND`.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use pageserver_harness::s3::S3Server;
use pageserver_harness::{as_postgres, cluster::check_pageserver_installed, PgCluster};
use tools::bench_copy::{fullbackup_into, race, run_as_postgres};
use tools::bench_host::{first_text, pgbench_timeline, primary_lsn, wait_caught_up, CATCH_UP_TIMEOUT};

const COMMAND: &str =
    "cargo pgrx install --release -p pageserver_ext -c /usr/lib/postgresql/15/bin/pg_config && cargo run --release -p tools --bin restore_bench";
const SUM_QUERY: &str = "SELECT sum(abalance) FROM pgbench_accounts";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The first query on a copy: the primary's `sum(abalance)`.
fn same_sum(expected: &str) -> impl FnOnce(&mut postgres::Client) -> Result<()> + '_ {
    move |client| {
        let got = first_text(client, SUM_QUERY)?;
        ensure!(got.as_deref() == Some(expected), "sum(abalance) is {got:?} on the copy, {expected} on the primary");
        Ok(())
    }
}

/// A host backing up to the bucket, with the extension created.
fn start_host(settings: &[(&str, &str)]) -> Result<PgCluster> {
    let host = PgCluster::start_host(settings)?;
    host.sql("CREATE EXTENSION pageserver_ext")?;
    Ok(host)
}

fn main() -> Result<()> {
    check_pageserver_installed()?;
    let scale = env_u64("RESTORE_SCALE", 64);
    let pgbench_s = env_u64("RESTORE_PGBENCH_S", 20);
    let bench_started = Instant::now();
    let s3 = S3Server::start()?;
    s3.create_bucket("restore")?;
    let (url, options) = (s3.url("restore", "hosts"), s3.options());
    let settings = [("pageserver.remote_storage", url.as_str()), ("pageserver.remote_storage_options", options.as_str())];

    let primary = PgCluster::start_primary(&[("max_wal_size", "1GB")])?;
    let mut host = start_host(&settings)?;
    let (tenant, timeline) = pgbench_timeline(&primary, &host, scale)?;
    primary.run_as_postgres_checked("pgbench", &["-c", "4", "-j", "2", "-T", &pgbench_s.to_string(), "-n", "postgres"])?;
    let mut pc = primary.client("postgres")?;
    let end = primary_lsn(&mut pc)?;
    let expected = first_text(&mut pc, SUM_QUERY)?.context("NULL sum")?;
    let mut hc = host.client("postgres")?;
    wait_caught_up(&mut hc, &timeline, end, "ingest of the workload")?;
    let started = Instant::now();
    host.wait_for("the backup to reach the ingested WAL", CATCH_UP_TIMEOUT, || {
        host.sql_one(&format!(
            "SELECT pg_size_pretty(layer_bytes) FROM pageserver.timelines() WHERE timeline_id = '{timeline}' \
             AND remote_consistent_lsn::pg_lsn >= '{end}' AND remote_consistent_lsn = disk_consistent_lsn"
        ))
        .ok()
        .flatten()
    })?;
    eprintln!("backup caught up with {end} {:.1} s after ingest", started.elapsed().as_secs_f64());

    // The floor: a copy of the primary by pg_basebackup.
    let basebackup_s = race(
        "pg_basebackup + start",
        |dir| {
            as_postgres::chown_to_postgres(dir)?;
            let port = primary.port().to_string();
            let target = dir.display().to_string();
            let pg_basebackup = pageserver_harness::pg_bin("pg_basebackup").display().to_string();
            let args = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-D", &target, "-X", "stream", "--checkpoint=fast", "--no-sync"];
            run_as_postgres(&pg_basebackup, &args).map(|_| ())
        },
        same_sum(&expected),
    )?;

    // The host is lost: killed, and its disk gone.
    host.kill_postmaster()?;
    let data = host.data_dir().to_path_buf();
    std::fs::remove_dir_all(&data).with_context(|| format!("deleting {}", data.display()))?;
    drop(host);
    let lost = Instant::now();
    let fresh = start_host(&settings)?;
    let host_up = lost.elapsed().as_secs_f64();
    let row = fresh.sql(&format!("SELECT layer_files, downloaded_bytes FROM pageserver.attach_tenant('{tenant}')"))?;
    let attached = lost.elapsed().as_secs_f64();
    let row = row.first().context("attach returned no row")?;
    let mib = row[1].as_deref().unwrap_or("0").parse::<f64>().unwrap_or(0.0) / f64::from(1 << 20);
    eprintln!(
        "fresh host up after {host_up:.1} s; attach: {} layer files, {mib:.0} MiB in {:.1} s ({:.0} MiB/s)",
        row[0].as_deref().unwrap_or("?"),
        attached - host_up,
        mib / (attached - host_up).max(1e-3)
    );
    let copy_s = race(
        "fullbackup of the attached timeline + start",
        |dir| fullbackup_into(&fresh, &tenant, &timeline, None, dir),
        same_sum(&expected),
    )?;
    let restore_s = lost.elapsed().as_secs_f64();
    eprintln!("host loss to first query: {restore_s:.1} s (host {host_up:.1} s, attach {:.1} s, copy {copy_s:.1} s)", attached - host_up);

    tools::print_row("remote.restore_s", restore_s, "s", Some(basebackup_s), COMMAND);
    let log = fresh.log();
    if log.contains("ERROR") || log.contains("PANIC") {
        eprintln!("warning: the fresh host's log has errors:\n{}", fresh.log_tail(30));
    }
    eprintln!("restore_bench took {:.1} s", bench_started.elapsed().as_secs_f64());
    Ok(())
}

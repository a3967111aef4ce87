//! Running copies for the benchmarks that race to "a stock PostgreSQL
//! answering queries": a directory filled by some means (`fullbackup`,
//! `pgbackrest restore`, `pg_basebackup`), a stock server started on it,
//! and the seconds until a first query, checked by the caller, succeeds.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pageserver_harness::{as_postgres, ClusterConfig, PgCluster};
use storage::lsn::Lsn;

use crate::bench_host::first_text;

/// How long a copy may take to come out of recovery.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `program` as `postgres` and fails with its output if it fails.
pub fn run_as_postgres(program: &str, args: &[&str]) -> Result<Output> {
    let out = as_postgres::command(program, &[]).args(args).output().with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// A stock server for a copy: no archiving of its own.
pub fn copy_config() -> ClusterConfig {
    ClusterConfig::default().setting("archive_mode", "off").setting("max_prepared_transactions", "10")
}

/// Connects to `copy` once it accepts connections and waits until it is
/// out of recovery.
fn connect_out_of_recovery(copy: &PgCluster) -> Result<postgres::Client> {
    let started = Instant::now();
    let mut client = loop {
        match copy.client("postgres") {
            Ok(c) => break c,
            Err(_) if started.elapsed() < RECOVERY_TIMEOUT => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.context("connecting to the copy")),
        }
    };
    while first_text(&mut client, "SELECT pg_is_in_recovery()")?.as_deref() == Some("t") {
        ensure!(started.elapsed() < RECOVERY_TIMEOUT, "still in recovery after {RECOVERY_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(client)
}

/// Seconds from nothing to the first query on a copy: `fill` fills an
/// empty data directory, a stock server starts on it, and once it is out of
/// recovery `check` runs the first query (and says whether the copy holds
/// what it must).
pub fn race(what: &str, fill: impl FnOnce(&Path) -> Result<()>, check: impl FnOnce(&mut postgres::Client) -> Result<()>) -> Result<f64> {
    race_keep(what, fill, check).map(|(secs, _copy)| secs)
}

/// [`race`], keeping the copy running for more queries.
pub fn race_keep(
    what: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
    check: impl FnOnce(&mut postgres::Client) -> Result<()>,
) -> Result<(f64, PgCluster)> {
    let started = Instant::now();
    let mut filled = None;
    let copy = PgCluster::start_on_data_dir(copy_config(), |dir| {
        let result = fill(dir);
        filled = Some(started.elapsed());
        result
    })
    .with_context(|| format!("{what}: starting the copy"))?;
    let up = started.elapsed();
    let mut client = connect_out_of_recovery(&copy).with_context(|| format!("{what}: first query"))?;
    check(&mut client).with_context(|| format!("{what}: first query"))?;
    let secs = started.elapsed().as_secs_f64();
    let filled = filled.map_or(0.0, |d| d.as_secs_f64());
    eprintln!("{what}: first query after {secs:.1} s (directory filled after {filled:.1} s, server up after {:.1} s)", up.as_secs_f64());
    Ok((secs, copy))
}

/// `fullbackup` of `timeline` (at `lsn`, or its latest) over psql, piped
/// into `tar -x` in `dir`, as `postgres`.
pub fn fullbackup_into(host: &PgCluster, tenant: &str, timeline: &str, lsn: Option<Lsn>, dir: &Path) -> Result<()> {
    let addr = host.listener_addr().context("host without pageserver.listen_addr")?;
    let command = match lsn {
        Some(lsn) => format!("fullbackup {tenant} {timeline} {lsn}"),
        None => format!("fullbackup {tenant} {timeline}"),
    };
    let psql = pageserver_harness::pg_bin("psql");
    let script = format!(
        "set -o pipefail; {} -X -w -d 'host={} port={} user=compute' -c '{command}' | tar -x -C {}",
        psql.display(),
        addr.ip(),
        addr.port(),
        dir.display()
    );
    as_postgres::chown_to_postgres(dir)?;
    run_as_postgres("bash", &["-c", &script]).map(|_| ())
}

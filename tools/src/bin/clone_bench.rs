//! Benchmark: a running copy at X through a live clone (`pageserver-clone`,
//! FUSE), against `fullbackup` and pgBackRest, same primary, same X, same
//! run; and a cold scan on a clone against a local copy.
//!
//! For each database size (`pgbench -i -s 64`, about 1 GiB, and `-s 256`,
//! about 4 GiB), the set-up of `pitr_bench`: a primary archiving its WAL
//! with pgBackRest, a host importing it, pgBackRest's full backup at the
//! same point, then about 1 GiB of pgbench WAL, the marker row, X. Then
//! three races from nothing to the first query at X (the marker row reads
//! back, the later table is absent):
//! * pgBackRest: `restore --type=lsn --target=X --target-action=promote`,
//!   start, replay to X (the floor);
//! * `fullbackup` at X piped into `tar -x`, start;
//! * a clone: `pageserver-clone mount` at X (a branch, the `clonebackup`,
//!   the FUSE mount), start.
//!
//! Rows: `clone.first_query_s_1gib`, `clone.first_query_s_4gib`,
//! `fullbackup.first_query_s_4gib`, each with pgBackRest's time at that
//! size as floor (target: the clone flat in size, at most 0.05 of the floor
//! at 4 GiB). On the 1 GiB set, `clone.scan_mb_s`: `SELECT count(*) FROM
//! pgbench_accounts` on the clone just started (no block of the table
//! fetched yet) in MB/s of the table, against the same scan on the
//! `fullbackup` copy after a restart of its server (floor; target ≥ 0.5).
//! Three scans of each kind, each on a fresh copy; the row has the
//! medians. Each scan starts once the host's workers are idle (compaction of the
//! workload's layers would otherwise share the CPU with one of them) and
//! prints the CPU each process used during it.
//!
//! `CLONE_BENCH_SCALES` (default `64,256`) and `CLONE_BENCH_WAL_MIB`
//! (default 1024) shrink the run. Needs the extension installed, the tool
//! built in release mode and `pgbackrest` (`scripts/bench.sh` installs it):
//! see `COMMAND`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pageserver_harness::{as_postgres, cluster::check_pageserver_installed, PgCluster};
use storage::lsn::Lsn;
use tools::bench_copy::{fullbackup_into, race_keep};
use tools::bench_host::{all_process_ticks, pgbench_timeline, primary_lsn, print_process_cpu, wait_caught_up, wait_host_quiet};
use tools::pitr::{marker_at_x, write_window, PgBackRest, Window};

const COMMAND: &str = "cargo pgrx install --release -p pageserver_ext -c /usr/lib/postgresql/15/bin/pg_config && cargo build --release -p pageserver_clone && cargo run --release -p tools --bin clone_bench";

fn row(name: &str, value: f64, unit: &str, floor: Option<f64>) {
    tools::print_row(name, value, unit, floor, COMMAND);
}

/// The release build of `pageserver-clone`, next to this binary.
fn clone_tool() -> Result<PathBuf> {
    let bin = std::env::current_exe()?.parent().context("no directory")?.join("pageserver-clone");
    if !bin.exists() {
        bail!("{} is missing: cargo build --release -p pageserver_clone", bin.display());
    }
    Ok(bin)
}

fn run_tool(tool: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(tool).args(args).output()?;
    ensure!(
        out.status.success(),
        "pageserver-clone {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Seconds of `SELECT count(*) FROM pgbench_accounts` on `copy`, and the table's MB.
fn scan(copy: &PgCluster, what: &str) -> Result<f64> {
    let mb: f64 = copy.sql_one("SELECT pg_relation_size('pgbench_accounts')")?.context("size")?.parse::<f64>()? / 1e6;
    let (cpu_before, started) = (all_process_ticks(), Instant::now());
    let count = copy.sql_one("SELECT count(*) FROM pgbench_accounts")?;
    let secs = started.elapsed().as_secs_f64();
    print_process_cpu(what, &cpu_before, &all_process_ticks(), secs);
    eprintln!("{what}: count(*) = {count:?} over {mb:.0} MB in {secs:.2} s: {:.0} MB/s", mb / secs);
    Ok(mb / secs)
}

/// Empties the OS page cache if this machine lets us (a container often does not).
fn drop_os_cache() -> &'static str {
    let _ = Command::new("sync").status();
    match std::fs::write("/proc/sys/vm/drop_caches", "3") {
        Ok(()) => "OS page cache dropped",
        Err(_) => "OS page cache could not be dropped here (the local copy may read from it)",
    }
}

/// Cold scans of each kind on the 1 GiB set, each on a copy of its own
/// (the first scan sets hint bits the next would find set); the row takes
/// the medians.
const SCAN_ROUNDS: usize = 3;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// What a clone at X is made of.
struct CloneTarget<'a> {
    tool: &'a Path,
    admin: String,
    tenant: &'a str,
    timeline: &'a str,
    x: Lsn,
}

impl CloneTarget<'_> {
    /// Races a new clone at X to its first query (seconds), runs `then` on
    /// it, prints its `status` and destroys it.
    fn race(&self, what: &str, then: impl FnOnce(&PgCluster) -> Result<()>) -> Result<f64> {
        let clone_dir = tempfile::Builder::new().prefix("clone-bench.").tempdir()?;
        as_postgres::chown_to_postgres(clone_dir.path())?;
        let (cd, x) = (clone_dir.path().display().to_string(), self.x.to_string());
        let (secs, mut copy) = race_keep(
            what,
            |dir| {
                let mp = dir.display().to_string();
                let args = [
                    "mount",
                    &cd,
                    "--admin",
                    &self.admin,
                    "--tenant",
                    self.tenant,
                    "--timeline",
                    self.timeline,
                    "--lsn",
                    &x,
                    "--mountpoint",
                    &mp,
                ];
                run_tool(self.tool, &args)
            },
            marker_at_x,
        )?;
        let result = then(&copy);
        let status = Command::new(self.tool).arg("status").arg(&cd).output()?;
        eprintln!("{}", String::from_utf8_lossy(&status.stdout));
        copy.stop()?;
        run_tool(self.tool, &["destroy", &cd])?;
        result.map(|()| secs)
    }
}

struct SizeResult {
    backrest_s: f64,
    fullbackup_s: f64,
    clone_s: f64,
    scan: Option<(f64, f64)>,
}

fn one_size(tool: &Path, scale: u64, wal_bytes: u64, with_scan: bool) -> Result<SizeResult> {
    let backrest = PgBackRest::new()?;
    let archive_command = backrest.archive_command();
    let primary = PgCluster::start_primary(&[("max_wal_size", "1GB"), ("archive_mode", "on"), ("archive_command", &archive_command)])?;
    backrest.write_conf(&primary)?;
    backrest.run(&["stanza-create"])?;
    let host = PgCluster::start_host(&[])?;
    host.sql("CREATE EXTENSION pageserver_ext")?;
    let (tenant, timeline) = pgbench_timeline(&primary, &host, scale)?;
    let mut pc = primary.client("postgres")?;
    let backup_start = primary_lsn(&mut pc)?;
    let started = Instant::now();
    backrest.run(&["backup", "--type=full"])?;
    eprintln!("pgbackrest backup --type=full: {:.1} s", started.elapsed().as_secs_f64());
    let Window { x, end } = write_window(&primary, &mut pc, backup_start, wal_bytes)?;
    wait_caught_up(&mut host.client("postgres")?, &timeline, end, "ingest of the workload")?;
    eprintln!("scale {scale}: X = {x}");

    let backrest_s = backrest.race_to(x)?;
    let (fullbackup_s, full_copy) =
        race_keep("fullbackup at X", |dir| fullbackup_into(&host, &tenant, &timeline, Some(x), dir), marker_at_x)?;
    drop(full_copy);
    let target = CloneTarget { tool, admin: host.connstr("postgres"), tenant: &tenant, timeline: &timeline, x };
    let clone_s = target.race("clone at X", |_| Ok(()))?;
    let scan = if with_scan {
        let (mut clone_rounds, mut local_rounds) = (Vec::new(), Vec::new());
        for round in 1..=SCAN_ROUNDS {
            eprintln!("scan round {round} of {SCAN_ROUNDS}");
            let (_, mut local) = race_keep("fullbackup at X", |dir| fullbackup_into(&host, &tenant, &timeline, Some(x), dir), marker_at_x)?;
            local.stop()?;
            wait_host_quiet(&host, Duration::from_secs(120))?;
            eprintln!("{}", drop_os_cache());
            local.start_again()?;
            local_rounds.push(scan(&local, "local copy (fullbackup), cold server")?);
            drop(local);
            let mut clone_mb_s = 0.0;
            target.race("clone at X", |clone| {
                wait_host_quiet(&host, Duration::from_secs(120))?;
                clone_mb_s = scan(clone, "clone, nothing of the table fetched")?;
                Ok(())
            })?;
            clone_rounds.push(clone_mb_s);
        }
        eprintln!("scans in MB/s: clone {clone_rounds:.0?}, local copy {local_rounds:.0?}");
        Some((median(clone_rounds), median(local_rounds)))
    } else {
        None
    };
    Ok(SizeResult { backrest_s, fullbackup_s, clone_s, scan })
}

fn main() -> Result<()> {
    check_pageserver_installed()?;
    let tool = clone_tool()?;
    let scales: Vec<u64> = std::env::var("CLONE_BENCH_SCALES")
        .unwrap_or_else(|_| "64,256".into())
        .split(',')
        .map(|s| s.trim().parse().context("CLONE_BENCH_SCALES: comma-separated pgbench scales"))
        .collect::<Result<_>>()?;
    let wal_bytes = std::env::var("CLONE_BENCH_WAL_MIB").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(1024) << 20;
    let started = Instant::now();
    let mut results = Vec::new();
    for (i, &scale) in scales.iter().enumerate() {
        results.push((scale, one_size(&tool, scale, wal_bytes, i == 0)?));
    }
    for (scale, r) in &results {
        let label = match scale {
            64 => "1gib".to_string(),
            256 => "4gib".to_string(),
            s => format!("scale{s}"),
        };
        row(&format!("clone.first_query_s_{label}"), r.clone_s, "s", Some(r.backrest_s));
        if *scale != 64 {
            row(&format!("fullbackup.first_query_s_{label}"), r.fullbackup_s, "s", Some(r.backrest_s));
        } else {
            eprintln!("fullbackup at 1 GiB: {:.1} s (pgBackRest {:.1} s)", r.fullbackup_s, r.backrest_s);
        }
        if let Some((clone, local)) = r.scan {
            row("clone.scan_mb_s", clone, "MB/s", Some(local));
        }
    }
    if let [(_, small), .., (_, large)] = &results[..] {
        eprintln!(
            "clone: {:.2} s at the smallest size, {:.2} s at the largest ({:.2}x); at the largest {:.3} of pgBackRest's time (target 0.05)",
            small.clone_s,
            large.clone_s,
            large.clone_s / small.clone_s,
            large.clone_s / large.backrest_s
        );
    }
    eprintln!("clone_bench took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

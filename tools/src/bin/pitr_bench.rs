//! Benchmark: "a running copy of my database as of LSN X", the page server
//! against pgBackRest, same primary, same X, same run.
//!
//! Set-up: a stock primary archiving its WAL with pgBackRest (zstd,
//! `process-max=2`, `archive-async`, repository on local disk) and a host.
//! `pgbench -i -s 64` (about 1 GiB); then, at the same point, the page
//! server imports the primary (`create_timeline`) and pgBackRest takes a full
//! backup. `pgbench -c 4 -j 2` then writes until about 1 GiB of WAL lies
//! after the backup; a marker row is committed, and X is the primary's LSN
//! just after it; a little more WAL follows (a table that must not exist
//! at X), the WAL is switched and archived, and the host ingests it all.
//! The host runs no pass of the layers worker until the races are over, so
//! that at X every page changed since the import is rebuilt from the
//! import's images and the WAL: the worst case, and the same in every run.
//!
//! Rows (each copy is started on an empty directory, warm caches; "first
//! query" means the server is out of recovery and the marker row reads back,
//! the later table is absent):
//! * `pitr.first_query_s`: `fullbackup` at X piped to `tar -x`, a stock
//!   PostgreSQL started on it, first query; floor: `pgbackrest restore
//!   --type=lsn --target=X --target-action=promote`, start, replay to X,
//!   first query.
//! * `pitr.first_query_s_branch`: `branch_timeline` at X, then the same with
//!   the branch's `fullbackup`; same floor.
//! * `fullbackup.mb_s`: `fullbackup` at the import LSN (images only, no WAL
//!   to apply) written to a file, in MB/s of tar; floor: `pg_basebackup -Ft
//!   -X none` of the primary, which holds the same data then. Each side is
//!   the best of [`FULLBACKUP_RUNS`] runs.
//! * `layers.bytes_per_history`: the timeline's layer bytes after the
//!   workload and one pass of the layers worker, in MiB; floor: pgBackRest's
//!   repository for the same window (the full backup plus the archived WAL
//!   from the backup's start to X).
//!
//! During the page server's race the CPU seconds of the main worker and of
//! the redo workers are printed to stderr.
//!
//! `PITR_SCALE` (default 64) and `PITR_WAL_MIB` (default 1024) shrink the
//! run for a quick look. Needs the extension installed and `pgbackrest`
//! (`scripts/bench.sh` installs it): see `COMMAND`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pageserver_harness::{as_postgres, cluster::check_pageserver_installed, PgCluster};
use tools::bench_copy::{fullbackup_into, race, run_as_postgres};
use tools::bench_host::{
    first_text, parse_lsn, pgbench_timeline, primary_lsn, process_ticks, wait_caught_up, worker_pids, CLOCK_TICKS_PER_S,
};
use tools::pitr::{marker_at_x, write_window, PgBackRest, Window};

/// Runs of each side of the `fullbackup.mb_s` comparison; the best counts.
const FULLBACKUP_RUNS: usize = 3;

const COMMAND: &str =
    "cargo pgrx install --release -p pageserver_ext -c /usr/lib/postgresql/15/bin/pg_config && cargo run --release -p tools --bin pitr_bench";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn row(name: &str, value: f64, unit: &str, floor: Option<f64>) {
    tools::print_row(name, value, unit, floor, COMMAND);
}

/// Bytes of the files under `dir` whose name passes `keep`.
fn dir_bytes(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            total += dir_bytes(&entry.path(), keep)?;
        } else if keep(&entry.file_name().to_string_lossy()) {
            total += meta.len();
        }
    }
    Ok(total)
}

/// (busy, all) ticks of all CPUs since boot, from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let all: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

/// CPU seconds of the host's main worker and redo workers while `f` runs.
fn with_worker_cpu<T>(host: &PgCluster, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let main = worker_pids(host, "main")?;
    let redo = worker_pids(host, "redo")?;
    let ticks = |pids: &[u32]| pids.iter().map(|p| process_ticks(*p)).collect::<Vec<u64>>();
    let (main0, redo0, machine0) = (ticks(&main), ticks(&redo), machine_ticks());
    let started = Instant::now();
    let out = f()?;
    let secs = started.elapsed().as_secs_f64();
    let (busy, all) = machine_ticks();
    let machine = (busy - machine0.0) as f64 / (all - machine0.1).max(1) as f64 * 100.0;
    let used = |before: &[u64], pids: &[u32]| -> Vec<String> {
        ticks(pids).iter().zip(before).map(|(t, t0)| format!("{:.1}", t.saturating_sub(*t0) as f64 / CLOCK_TICKS_PER_S)).collect()
    };
    eprintln!(
        "{what}: {secs:.1} s; CPU seconds: main worker {}, redo workers [{}]; the machine was {machine:.0}% busy",
        used(&main0, &main).join(""),
        used(&redo0, &redo).join(", ")
    );
    Ok(out)
}

fn main() -> Result<()> {
    check_pageserver_installed()?;
    let scale = env_u64("PITR_SCALE", 64);
    let wal_bytes = env_u64("PITR_WAL_MIB", 1024) << 20;
    let bench_started = Instant::now();
    let backrest = PgBackRest::new()?;

    let archive_command = backrest.archive_command();
    let primary = PgCluster::start_primary(&[("max_wal_size", "1GB"), ("archive_mode", "on"), ("archive_command", &archive_command)])?;
    backrest.write_conf(&primary)?;
    backrest.run(&["stanza-create"])?;
    // No pass of the layers worker before the races: at X every page changed
    // since the import is rebuilt from the import's images and the WAL (the
    // worst case, and the same in every run); one pass after them.
    let host = PgCluster::start_host(&[("pageserver.compaction_period", "3600s")])?;
    host.sql("CREATE EXTENSION pageserver_ext")?;

    // The page server's and pgBackRest's bases, at the same point.
    let (tenant, timeline) = pgbench_timeline(&primary, &host, scale)?;
    let import_lsn = parse_lsn(
        &host
            .sql_one(&format!("SELECT last_record_lsn FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"))?
            .context("NULL last_record_lsn")?,
    )?;
    let mut pc = primary.client("postgres")?;
    let backup_start = primary_lsn(&mut pc)?;
    let backup_start_segment = first_text(&mut pc, &format!("SELECT pg_walfile_name('{backup_start}')"))?.context("no segment")?;
    let started = Instant::now();
    backrest.run(&["backup", "--type=full"])?;
    eprintln!("pgbackrest backup --type=full: {:.1} s", started.elapsed().as_secs_f64());

    // fullbackup with no WAL to apply, against pg_basebackup of the same
    // data: the best of FULLBACKUP_RUNS runs of each, as one run of a few
    // seconds is at the mercy of anything else the machine does.
    let scratch = tempfile::Builder::new().prefix("pitr-bench-tar-").tempdir()?;
    as_postgres::chown_to_postgres(scratch.path())?;
    let (full_mb_s, basebackup_mb_s) = {
        let tar = scratch.path().join("fullbackup.tar");
        let addr = host.listener_addr().context("listener")?;
        let script = format!(
            "{} -X -w -d 'host={} port={} user=compute' -c 'fullbackup {tenant} {timeline} {import_lsn}' > {}",
            pageserver_harness::pg_bin("psql").display(),
            addr.ip(),
            addr.port(),
            tar.display()
        );
        let base_dir = scratch.path().join("basebackup");
        let (mut best_full, mut best_base) = (0f64, 0f64);
        for run in 1..=FULLBACKUP_RUNS {
            let started = Instant::now();
            run_as_postgres("bash", &["-c", &script])?;
            let secs = started.elapsed().as_secs_f64();
            let full_mb = std::fs::metadata(&tar)?.len() as f64 / 1e6;
            std::fs::remove_file(&tar)?;
            let started = Instant::now();
            primary.run_as_postgres_checked(
                "pg_basebackup",
                &["-Ft", "-X", "none", "--checkpoint=fast", "--no-sync", "-D", &base_dir.display().to_string()],
            )?;
            let base_secs = started.elapsed().as_secs_f64();
            let base_mb = dir_bytes(&base_dir, &|_| true)? as f64 / 1e6;
            std::fs::remove_dir_all(&base_dir)?;
            eprintln!(
                "fullbackup at {import_lsn}, run {run}: {full_mb:.0} MB in {secs:.2} s; pg_basebackup: {base_mb:.0} MB in {base_secs:.2} s"
            );
            best_full = best_full.max(full_mb / secs);
            best_base = best_base.max(base_mb / base_secs);
        }
        (best_full, best_base)
    };

    let Window { x, end } = write_window(&primary, &mut pc, backup_start, wal_bytes)?;
    let mut hc = host.client("postgres")?;
    wait_caught_up(&mut hc, &timeline, end, "ingest of the workload")?;
    eprintln!("X = {x}; set-up done after {:.1} s", bench_started.elapsed().as_secs_f64());

    // The races, pgBackRest first.
    let backrest_s = backrest.race_to(x)?;
    let fullbackup_s = with_worker_cpu(&host, "fullbackup at X", || {
        race("fullbackup at X", |dir| fullbackup_into(&host, &tenant, &timeline, Some(x), dir), marker_at_x)
    })?;
    let branch_s = with_worker_cpu(&host, "branch at X + fullbackup", || {
        race(
            "branch at X + fullbackup",
            |dir| {
                let branch = host
                    .sql_one(&format!("SELECT timeline_id FROM pageserver.branch_timeline('{tenant}', '{timeline}', '{x}')"))?
                    .context("NULL branch")?;
                fullbackup_into(&host, &tenant, &branch, None, dir)
            },
            marker_at_x,
        )
    })?;

    // Bytes kept for the window, once a pass of the layers worker has
    // compacted the history: the layers against the backup + WAL archive.
    let passes = |host: &PgCluster| -> Option<(u64, bool)> {
        let rows =
            host.sql(&format!("SELECT compaction_passes, compacting FROM pageserver.timelines() WHERE timeline_id = '{timeline}'")).ok()?;
        let row = rows.first()?;
        Some((row[0].as_deref()?.parse().ok()?, row[1].as_deref() == Some("t")))
    };
    let (before, _) = passes(&host).context("timeline not listed")?;
    host.sql("ALTER SYSTEM SET pageserver.compaction_period = '1s'")?;
    host.sql("SELECT pg_reload_conf()")?;
    let started = Instant::now();
    host.wait_for("a pass of the layers worker", Duration::from_secs(900), || {
        let (done, running) = passes(&host)?;
        (done > before && !running).then_some(())
    })?;
    eprintln!("a pass of the layers worker over the history took {:.1} s", started.elapsed().as_secs_f64());
    let layer_bytes: f64 = host
        .sql_one(&format!("SELECT layer_bytes FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"))?
        .context("NULL layer_bytes")?
        .parse()?;
    let timeline_dir = host.data_dir().join("pageserver/tenants").join(&tenant).join("timelines").join(&timeline);
    let by_kind: Vec<String> = ["I_", "D0_", "D1_"]
        .iter()
        .map(|prefix| -> Result<String> {
            let (mut files, mut bytes) = (0, 0);
            for entry in std::fs::read_dir(&timeline_dir).with_context(|| format!("listing {}", timeline_dir.display()))? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with(prefix) {
                    files += 1;
                    bytes += entry.metadata()?.len();
                }
            }
            Ok(format!("{prefix}*: {files} files, {:.0} MiB", bytes as f64 / (1 << 20) as f64))
        })
        .collect::<Result<_>>()?;
    eprintln!("layer files by kind: {}", by_kind.join("; "));
    let x_segment = first_text(&mut pc, &format!("SELECT pg_walfile_name('{x}')"))?.context("no segment")?;
    let repo = backrest.repo();
    let backup_bytes = dir_bytes(&repo.join("backup"), &|_| true)?;
    let in_window = |name: &str| name.len() >= 24 && name[..24] >= *backup_start_segment && name[..24] <= *x_segment;
    let archive_bytes = dir_bytes(&repo.join("archive"), &|name| in_window(name) && !name.ends_with(".history"))?;
    let mib = |b: f64| b / (1 << 20) as f64;
    eprintln!(
        "layers: {:.0} MiB; pgBackRest: backup {:.0} MiB + WAL {:.0} MiB ({backup_start_segment}..={x_segment})",
        mib(layer_bytes),
        mib(backup_bytes as f64),
        mib(archive_bytes as f64)
    );

    row("pitr.first_query_s", fullbackup_s, "s", Some(backrest_s));
    row("pitr.first_query_s_branch", branch_s, "s", Some(backrest_s));
    row("fullbackup.mb_s", full_mb_s, "MB/s", Some(basebackup_mb_s));
    row("layers.bytes_per_history", mib(layer_bytes), "MiB", Some(mib((backup_bytes + archive_bytes) as f64)));

    let log = host.log();
    for line in log.lines().filter(|l| l.contains("Fullbackup of timeline")) {
        eprintln!("host: {}", line.split_once("LOG:").map_or(line, |(_, rest)| rest.trim()));
    }
    if log.contains("ERROR") || log.contains("PANIC") {
        eprintln!("warning: the host log has errors:\n{}", host.log_tail(30));
    }
    eprintln!("pitr_bench took {:.1} s", bench_started.elapsed().as_secs_f64());
    Ok(())
}

//! Benchmark of the page service end to end: ingest lag and GetPage.
//!
//! Starts a stock primary and a host, creates a tenant and a timeline fed by
//! the (still empty) primary, runs `pgbench -i -s 68` there (about 1 GiB) and
//! waits until the timeline has ingested all of it. Then:
//! * ingest lag during `pgbench -c 4 -j 2 -T 30`: every 100 ms the primary's
//!   `pg_current_wal_lsn()` is recorded with its time, and every ~10 ms the
//!   timeline's `last_record_lsn`; a sample's lag is the time from when the
//!   primary was at its LSN until the timeline had reached it (each time is
//!   the middle of its query's round trip, so the figure includes up to
//!   ~10 ms of polling resolution). Reported: the p99, in ms.
//! * GetPage with `pagebench` (the release binary next to this one): hot
//!   pages (the first 1000 blocks of `pgbench_accounts`) at the primary's
//!   LSN after pgbench, once the timeline has caught up (the layers worker
//!   waits: the host runs with `pageserver.compaction_period = 3600s`),
//!   with 1 connection ×
//!   depth 1 and 8 connections × depth 32, 10 s each after a 2 s warmup;
//!   and `pagebench --floor` (a trivial server process speaking the same
//!   protocol) with the same shapes in the same run, as the floors.
//!   During the 8×32 run the main worker's VmRSS is sampled every 50 ms
//!   (the peak is reported) and its threads' CPU time is printed to stderr.
//! * GetPage at the latest LSN, as computes read: random blocks of every
//!   relation of the database (about 1 GiB, 16 times the host's 64 MiB page
//!   cache) while `pgbench -c 1 -R 300` writes on the primary, each request
//!   carrying the primary's current LSN as `request_lsn` and its LSN of 1 s
//!   before as `not_modified_since` (`pagebench --lsn-from`), 1×1 and 8×32,
//!   against the floor server under the same writes and shapes.
//! * GetPage at depth 1 while the layers worker runs a pass over all of
//!   that history (the host has `compaction_threshold = 2` and
//!   `image_creation_threshold = 1`: the pass merges every L0 layer and
//!   writes image layers over the whole database), started by a reload of
//!   `compaction_period = 1s` while pgbench writes at 200 tps, measured for
//!   6 s after 1 s of warmup (the pass must still be running at the end, or
//!   the benchmark fails): its p99 against the idle p99 of the 1×1 run above
//!   as the floor, and the CPU
//!   seconds of the layers worker, the main worker and the redo workers
//!   over the measured part (from `/proc`).
//! * the import of the whole (now ~1 GiB) primary into a second timeline:
//!   MB/s against `pg_basebackup -Ft` of the same primary as the floor, and
//!   the main worker's peak VmRSS while `create_timeline` runs.
//!
//! Needs the extension installed and pagebench built (release, same target
//! directory): see `COMMAND`.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pageserver_harness::{cluster::check_pageserver_installed, PgCluster};
use storage::lsn::Lsn;
use tools::bench_host::{
    primary_lsn, print_thread_cpu, process_ticks, thread_times, timeline_lsn, wait_caught_up, worker_pids, CLOCK_TICKS_PER_S,
};

const COMMAND: &str = "cargo pgrx install --release -p pageserver_ext -c /usr/lib/postgresql/15/bin/pg_config && cargo build --release -p tools --bin pagebench && cargo run --release -p tools --bin service_bench";
const SCALE: u32 = 68;
const PGBENCH_SECONDS: u32 = 30;
const HOT_PAGES: u32 = 1000;
const PAGEBENCH_SECONDS: f64 = 10.0;
const PAGEBENCH_WARMUP: f64 = 2.0;
/// The GetPage run during a pass: shorter than the pass (about 12 s here),
/// so that the whole measured part overlaps it.
const COMPACTING_SECONDS: f64 = 6.0;
const COMPACTING_WARMUP: f64 = 1.0;

fn midpoint(t0: Instant, t1: Instant) -> Instant {
    t0 + (t1 - t0) / 2
}

/// (compacting, compaction_passes, last_compaction) of the timeline.
fn compaction_status(client: &mut postgres::Client, timeline: &str) -> Result<(bool, u64, String)> {
    let query = format!(
        "SELECT compacting, compaction_passes, coalesce(last_compaction, '') FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"
    );
    for m in client.simple_query(&query)? {
        if let postgres::SimpleQueryMessage::Row(row) = m {
            let passes = row.get(1).context("NULL compaction_passes")?.parse()?;
            return Ok((row.get(0) == Some("t"), passes, row.get(2).unwrap_or_default().to_string()));
        }
    }
    bail!("timeline {timeline} not listed by pageserver.timelines()")
}

/// CPU seconds per process while GetPage was measured during a pass.
struct CompactionCpu {
    layers_s: f64,
    main_s: f64,
    redo_s: f64,
}

/// `spc/db/relfilenode:nblocks` of every non-empty permanent relation fork
/// (main forks) of the primary's `postgres` database, shared catalogs included.
fn all_relations(primary: &PgCluster) -> Result<Vec<String>> {
    let rows = primary.sql(
        "SELECT CASE WHEN c.reltablespace = 0 THEN d.dattablespace ELSE c.reltablespace END, \
                CASE WHEN c.relisshared THEN 0 ELSE d.oid END, pg_relation_filenode(c.oid), \
                pg_relation_size(c.oid) / 8192 \
         FROM pg_class c, pg_database d \
         WHERE d.datname = current_database() AND c.relpersistence = 'p' \
           AND pg_relation_filenode(c.oid) IS NOT NULL AND pg_relation_size(c.oid) > 0",
    )?;
    let field = |r: &Vec<Option<String>>, i: usize| r[i].clone().context("NULL in the relation list");
    rows.iter().map(|r| Ok(format!("{}/{}/{}:{}", field(r, 0)?, field(r, 1)?, field(r, 2)?, field(r, 3)?))).collect()
}

/// pagebench with `args` while `pgbench -c 1 -R 300` writes on the primary.
fn run_pagebench_while_writing(primary: &PgCluster, args: &[String]) -> Result<PageBench> {
    std::thread::scope(|scope| {
        let seconds = (PAGEBENCH_SECONDS + PAGEBENCH_WARMUP + 1.0).ceil().to_string();
        let writes = scope.spawn(move || primary.run_as_postgres_checked("pgbench", &["-c", "1", "-R", "300", "-T", &seconds, "postgres"]));
        let bench = run_pagebench(args, |_, _| {});
        writes.join().map_err(|_| anyhow!("pgbench thread panicked"))??;
        bench
    })
}

/// Starts a pass of the layers worker (a reload of `compaction_period =
/// 1s`), waits until it is compacting, and runs pagebench with `args` while
/// pgbench writes; returns pagebench's figures and the CPU each process
/// used over pagebench's measured part. Warns if the pass ended early.
fn measure_while_compacting(
    primary: &PgCluster,
    host: &PgCluster,
    hc: &mut postgres::Client,
    timeline: &str,
    args: &[String],
) -> Result<(PageBench, CompactionCpu)> {
    let (_, passes_before, _) = compaction_status(hc, timeline)?;
    host.sql("ALTER SYSTEM SET pageserver.compaction_period = '1s'")?;
    host.sql("SELECT pg_reload_conf()")?;
    let started = Instant::now();
    host.wait_for("the layers worker to start a pass", Duration::from_secs(60), || {
        let activity = host.sql_one("SELECT activity FROM pageserver.status() WHERE kind = 'layers'").ok()??;
        activity.starts_with("compacting").then_some(())
    })?;
    // One pass is enough: no other starts until the measurement is over.
    host.sql("ALTER SYSTEM SET pageserver.compaction_period = '3600s'")?;
    host.sql("SELECT pg_reload_conf()")?;
    eprintln!("layers worker compacting {:.1} s after the reload", started.elapsed().as_secs_f64());
    let (layers, main, redo) = (worker_pids(host, "layers")?, worker_pids(host, "main")?, worker_pids(host, "redo")?);
    let ticks = |pids: &[u32]| pids.iter().map(|p| process_ticks(*p)).sum::<u64>();
    let warmup = Duration::from_secs_f64(COMPACTING_WARMUP);
    let mut window: Option<(Instant, [u64; 3])> = None;
    let mut cpu = None;
    let main_pid = *main.first().context("no main worker")? as i32;
    let mut main_threads = Vec::new();
    let bench = std::thread::scope(|scope| {
        let seconds = (COMPACTING_SECONDS + COMPACTING_WARMUP).ceil().to_string();
        let writes = scope.spawn(move || primary.run_as_postgres_checked("pgbench", &["-c", "1", "-R", "200", "-T", &seconds, "postgres"]));
        let bench = run_pagebench_for(args, COMPACTING_SECONDS, COMPACTING_WARMUP, |_, since| {
            if since >= warmup && window.is_none() {
                window = Some((Instant::now(), [ticks(&layers), ticks(&main), ticks(&redo)]));
                main_threads = thread_times(main_pid);
            }
            if let Some((at, t0)) = &window {
                let secs = |t: u64, t0: u64| t.saturating_sub(t0) as f64 / CLOCK_TICKS_PER_S;
                cpu = Some((at.elapsed(), secs(ticks(&layers), t0[0]), secs(ticks(&main), t0[1]), secs(ticks(&redo), t0[2])));
            }
        });
        writes.join().map_err(|_| anyhow!("pgbench thread panicked"))??;
        bench
    })?;
    let (window, layers_s, main_s, redo_s) = cpu.context("pagebench ended before its measured part")?;
    print_thread_cpu("main worker during GetPage while compacting", &main_threads, &thread_times(main_pid), window.as_secs_f64());
    let (running, passes, last) = compaction_status(hc, timeline)?;
    if passes > passes_before + u64::from(running) {
        bail!("the pass ended before the measurement did ({last}): make the pass longer or the run shorter");
    }
    eprintln!("the pass was still running when the measurement ended");
    eprintln!(
        "during {:.1} s of GetPage while compacting: layers worker {layers_s:.1} s CPU, main worker {main_s:.1} s, redo workers {redo_s:.1} s",
        window.as_secs_f64()
    );
    Ok((bench, CompactionCpu { layers_s, main_s, redo_s }))
}

/// What bootstrapping a second timeline from the (now ~1 GiB) primary took.
struct ImportFigures {
    mb_s: f64,
    floor_mb_s: f64,
    peak_rss_mib: f64,
}

/// Creates a second timeline from the primary, sampling the main worker's
/// VmRSS every 50 ms while `create_timeline` imports its `BASE_BACKUP`; the
/// floor is `pg_basebackup -Ft` of the same primary into a directory. Run
/// last: the new timeline streams WAL from then on.
fn measure_import(primary: &PgCluster, host: &PgCluster, tenant: &str, main_pid: i32) -> Result<ImportFigures> {
    let db_bytes: f64 = primary.sql_one("SELECT sum(pg_database_size(oid)) FROM pg_database")?.context("no size")?.parse()?;
    let started = Instant::now();
    let tar = primary.base_backup_tar("import_floor")?;
    let floor_secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(tar.parent().context("base.tar has a directory")?);

    let done = AtomicBool::new(false);
    let conninfo = primary.connstr("postgres");
    let (secs, peak_kib) = std::thread::scope(|scope| -> Result<(f64, u64)> {
        let sampler = scope.spawn(|| {
            let mut peak = 0;
            while !done.load(Ordering::SeqCst) {
                peak = peak.max(vm_rss_kib(main_pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let started = Instant::now();
        let created = host.sql_one(&format!("SELECT pageserver.create_timeline('{tenant}', '{conninfo}')"));
        let secs = started.elapsed().as_secs_f64();
        done.store(true, Ordering::SeqCst);
        let peak = sampler.join().map_err(|_| anyhow!("the RSS sampler panicked"))?;
        let timeline = created?.context("NULL timeline")?;
        eprintln!(
            "import of {:.0} MiB into timeline {timeline}: {secs:.1} s (pg_basebackup: {floor_secs:.1} s), main worker peak VmRSS {} MiB",
            db_bytes / 1048576.0,
            peak >> 10
        );
        Ok((secs, peak))
    })?;
    Ok(ImportFigures { mb_s: db_bytes / 1e6 / secs, floor_mb_s: db_bytes / 1e6 / floor_secs, peak_rss_mib: peak_kib as f64 / 1024.0 })
}

/// The `q` quantile (0..=1) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Lag (ms) of each primary sample: from when the primary was at its LSN to
/// the first poll that saw the timeline at or past it. Both lists are in
/// time order with non-decreasing LSNs.
fn lags_ms(samples: &[(Instant, Lsn)], polls: &[(Instant, Lsn)]) -> Result<Vec<f64>> {
    let mut lags = Vec::with_capacity(samples.len());
    let mut j = 0;
    for &(t, lsn) in samples {
        while j < polls.len() && polls[j].1 < lsn {
            j += 1;
        }
        let Some(&(reached, _)) = polls.get(j) else { bail!("the timeline never reached {lsn}") };
        lags.push(reached.saturating_duration_since(t).as_secs_f64() * 1000.0);
    }
    Ok(lags)
}

/// Runs pgbench on the primary while measuring the ingest lag; returns the
/// sorted lags in ms.
fn measure_ingest_lag(primary: &PgCluster, host: &PgCluster, timeline: &str) -> Result<Vec<f64>> {
    let done = AtomicBool::new(false);
    let seconds = PGBENCH_SECONDS.to_string();
    let mut hc = host.client("postgres")?;
    std::thread::scope(|scope| -> Result<Vec<f64>> {
        let pgbench = scope.spawn(|| {
            let r = primary.run_as_postgres_checked("pgbench", &["-c", "4", "-j", "2", "-T", &seconds, "postgres"]);
            done.store(true, Ordering::SeqCst);
            r
        });
        let sampler = scope.spawn(|| -> Result<Vec<(Instant, Lsn)>> {
            let mut pc = primary.client("postgres")?;
            let mut samples = Vec::new();
            let mut next = Instant::now();
            while !done.load(Ordering::SeqCst) {
                let t0 = Instant::now();
                let lsn = primary_lsn(&mut pc)?;
                samples.push((midpoint(t0, Instant::now()), lsn));
                next += Duration::from_millis(100);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(samples)
        });
        let mut polls: Vec<(Instant, Lsn)> = Vec::new();
        let mut poll = |hc: &mut postgres::Client| -> Result<Lsn> {
            let t0 = Instant::now();
            let lsn = timeline_lsn(hc, timeline)?;
            polls.push((midpoint(t0, Instant::now()), lsn));
            Ok(lsn)
        };
        let mut next = Instant::now();
        let mut poll_error = None;
        while !done.load(Ordering::SeqCst) {
            if let Err(e) = poll(&mut hc) {
                poll_error = Some(e);
                break;
            }
            next += Duration::from_millis(10);
            let now = Instant::now();
            if next < now {
                next = now;
            }
            std::thread::sleep(next - now);
        }
        let samples = sampler.join().map_err(|_| anyhow!("the sampler panicked"))?;
        let out = pgbench.join().map_err(|_| anyhow!("the pgbench thread panicked"))??;
        if let Some(e) = poll_error {
            return Err(e);
        }
        let samples = samples?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines().filter(|l| l.starts_with("tps") || l.starts_with("number of transactions actually")) {
            eprintln!("pgbench: {line}");
        }
        let target = samples.last().context("no primary samples")?.1;
        let started = Instant::now();
        while poll(&mut hc)? < target {
            if started.elapsed() > Duration::from_secs(300) {
                bail!("the timeline did not reach {target} within 300 s after pgbench");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut lags = lags_ms(&samples, &polls)?;
        lags.sort_by(f64::total_cmp);
        eprintln!(
            "ingest lag over {} samples ({} polls): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lags.len(),
            polls.len(),
            quantile(&lags, 0.5),
            quantile(&lags, 0.99),
            lags.last().copied().unwrap_or(f64::NAN)
        );
        Ok(lags)
    })
}

/// One pagebench result (its --json line).
struct PageBench {
    p50_us: f64,
    p99_us: f64,
    pages_s: f64,
}

fn pagebench_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe()?.with_file_name("pagebench");
    if !exe.is_file() {
        bail!(
            "{} not found: build it into the same target directory first (cargo build --release -p tools --bin pagebench)",
            exe.display()
        );
    }
    Ok(exe)
}

/// Runs pagebench with `args` (plus the common ones), calling `during`
/// every 50 ms while it runs with its pid and the time since it started.
fn run_pagebench(args: &[String], during: impl FnMut(u32, Duration)) -> Result<PageBench> {
    run_pagebench_for(args, PAGEBENCH_SECONDS, PAGEBENCH_WARMUP, during)
}

/// [`run_pagebench`] measuring `seconds` after `warmup` seconds.
fn run_pagebench_for(args: &[String], seconds: f64, warmup: f64, mut during: impl FnMut(u32, Duration)) -> Result<PageBench> {
    let exe = pagebench_exe()?;
    let mut cmd = Command::new(&exe);
    cmd.args(args)
        .args(["--pattern", &format!("hot:{HOT_PAGES}")])
        .args(["--duration", &seconds.to_string(), "--warmup", &warmup.to_string()])
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().with_context(|| format!("starting {}", exe.display()))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        during(child.id(), started.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    child.stdout.take().expect("piped").read_to_string(&mut stdout)?;
    if !status.success() {
        bail!("pagebench {args:?} failed with {status}");
    }
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).context("no JSON line from pagebench")?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let num = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {line}"));
    Ok(PageBench { p50_us: num("p50_us")?, p99_us: num("p99_us")?, pages_s: num("pages_per_s")? })
}

fn vm_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn row(name: &str, value: f64, unit: &str, floor: Option<f64>) {
    tools::print_row(name, value, unit, floor, COMMAND);
}

fn main() -> Result<()> {
    check_pageserver_installed()?;
    pagebench_exe()?;
    let bench_started = Instant::now();

    let primary = PgCluster::start_primary(&[("max_wal_size", "1GB")])?;
    // No pass of the layers worker until the benchmark starts one; then a
    // pass that merges every L0 layer and writes images everywhere.
    let host = PgCluster::start_host(&[
        ("pageserver.compaction_period", "3600s"),
        ("pageserver.compaction_threshold", "2"),
        ("pageserver.image_creation_threshold", "1"),
    ])?;
    host.sql("CREATE EXTENSION pageserver_ext")?;
    let tenant = host.sql_one("SELECT pageserver.create_tenant()")?.context("NULL tenant")?;
    let conninfo = primary.connstr("postgres");
    let timeline = host.sql_one(&format!("SELECT pageserver.create_timeline('{tenant}', '{conninfo}')"))?.context("NULL timeline")?;
    eprintln!("tenant {tenant}, timeline {timeline}");

    let started = Instant::now();
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", &SCALE.to_string(), "-q", "postgres"])?;
    let size = primary.sql_one("SELECT pg_size_pretty(pg_database_size('postgres'))")?.unwrap_or_default();
    eprintln!("pgbench -i -s {SCALE}: {:.1} s, database {size}", started.elapsed().as_secs_f64());
    let mut hc = host.client("postgres")?;
    let mut pc = primary.client("postgres")?;
    let target = primary_lsn(&mut pc)?;
    wait_caught_up(&mut hc, &timeline, target, "ingest of pgbench -i")?;
    eprintln!("set-up done after {:.1} s", bench_started.elapsed().as_secs_f64());

    let lags = measure_ingest_lag(&primary, &host, &timeline)?;
    let lag_p99 = quantile(&lags, 0.99);

    let request_lsn = primary_lsn(&mut pc)?;
    wait_caught_up(&mut hc, &timeline, request_lsn, "ingest after pgbench")?;
    let filenode = primary.sql_one("SELECT pg_relation_filenode('pgbench_accounts')")?.context("no filenode")?;
    let db_oid = primary.sql_one("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.context("no db oid")?;
    let nblocks = primary.sql_one("SELECT pg_relation_size('pgbench_accounts') / 8192")?.context("no size")?;
    let rel = format!("1663/{db_oid}/{filenode}:{nblocks}");
    let addr = host.listener_addr().context("host without pageserver.listen_addr")?.to_string();
    let main_pid: i32 =
        host.sql_one("SELECT pid FROM pageserver.status() WHERE kind = 'main'")?.context("main worker has no pid")?.parse()?;
    eprintln!("pagebench over {rel} at {request_lsn}, page service {addr}, main worker pid {main_pid}");

    let shape = |conns: usize, depth: usize| -> Vec<String> {
        vec!["--connections".into(), conns.to_string(), "--depth".into(), depth.to_string(), "--rel".into(), rel.clone()]
    };
    let server = |conns: usize, depth: usize| -> Vec<String> {
        let mut a = vec![
            "--addr".into(),
            addr.clone(),
            "--tenant".into(),
            tenant.clone(),
            "--timeline".into(),
            timeline.clone(),
            "--request-lsn".into(),
            request_lsn.to_string(),
        ];
        a.extend(shape(conns, depth));
        a
    };
    let floor = |conns: usize, depth: usize| -> Vec<String> {
        let mut a = vec!["--floor".to_string()];
        a.extend(shape(conns, depth));
        a
    };

    let floor_d1 = run_pagebench(&floor(1, 1), |_, _| {})?;
    let server_d1 = run_pagebench(&server(1, 1), |_, _| {})?;
    let floor_8x32 = run_pagebench(&floor(8, 32), |_, _| {})?;

    // The 8×32 run against the server: peak RSS of the main worker, and
    // which threads burn the CPU during the measured part.
    let mut peak_rss_kib = vm_rss_kib(main_pid).context("main worker gone before the 8x32 run")?;
    let rss_before = peak_rss_kib;
    enum Phase {
        Warmup,
        Measuring { at: Instant, server: Vec<(i32, String, u64)>, client: u64 },
        Reported,
    }
    let mut phase = Phase::Warmup;
    let warmup = Duration::from_secs_f64(PAGEBENCH_WARMUP);
    let measured = Duration::from_secs_f64(PAGEBENCH_SECONDS - 0.5);
    let server_8x32 = run_pagebench(&server(8, 32), |child, since| {
        if let Some(kib) = vm_rss_kib(main_pid) {
            peak_rss_kib = peak_rss_kib.max(kib);
        }
        match &phase {
            Phase::Warmup if since >= warmup => {
                phase = Phase::Measuring { at: Instant::now(), server: thread_times(main_pid), client: process_ticks(child) };
            }
            Phase::Measuring { at, server, client } if at.elapsed() >= measured => {
                let secs = at.elapsed().as_secs_f64();
                print_thread_cpu("main worker during 8x32", server, &thread_times(main_pid), secs);
                let used = process_ticks(child).saturating_sub(*client) as f64 / CLOCK_TICKS_PER_S;
                eprintln!("pagebench client during 8x32: {:.0}% CPU", used / secs * 100.0);
                phase = Phase::Reported;
            }
            _ => {}
        }
    })?;
    eprintln!("main worker VmRSS: {} MiB before the 8x32 run, peak {} MiB during it", rss_before >> 10, peak_rss_kib >> 10);

    row("pagebench.p50_us_d1", server_d1.p50_us, "us", Some(floor_d1.p50_us));
    row("pagebench.p99_us_d1", server_d1.p99_us, "us", Some(floor_d1.p99_us));
    row("pagebench.pages_s_d1", server_d1.pages_s, "pages/s", Some(floor_d1.pages_s));
    row("pagebench.pages_s_8x32", server_8x32.pages_s, "pages/s", Some(floor_8x32.pages_s));
    row("pagebench.p50_us_8x32", server_8x32.p50_us, "us", Some(floor_8x32.p50_us));
    row("pagebench.p99_us_8x32", server_8x32.p99_us, "us", Some(floor_8x32.p99_us));
    row("ingest.lag_p99_ms", lag_p99, "ms", None);
    row("pagebench.rss_mib", peak_rss_kib as f64 / 1024.0, "MiB", None);

    // At the latest LSN, over every relation, while pgbench writes.
    let relations = all_relations(&primary)?;
    let latest = |conns: usize, depth: usize, floor: bool| -> Vec<String> {
        let mut a = vec!["--connections".into(), conns.to_string(), "--depth".into(), depth.to_string()];
        for rel in &relations {
            a.extend(["--rel".to_string(), rel.clone()]);
        }
        // The floor polls the primary too (and ignores the LSNs), so both
        // sides pay for the polling.
        a.extend(["--lsn-from".into(), primary.connstr("postgres")]);
        if floor {
            a.push("--floor".into());
        } else {
            a.extend(["--addr".into(), addr.clone(), "--tenant".into(), tenant.clone(), "--timeline".into(), timeline.clone()]);
        }
        a
    };
    eprintln!("GetPage at the latest LSN over {} relations while pgbench writes", relations.len());
    let latest_floor_d1 = run_pagebench_while_writing(&primary, &latest(1, 1, true))?;
    let latest_d1 = run_pagebench_while_writing(&primary, &latest(1, 1, false))?;
    let latest_floor_8x32 = run_pagebench_while_writing(&primary, &latest(8, 32, true))?;
    let latest_8x32 = run_pagebench_while_writing(&primary, &latest(8, 32, false))?;
    row("pagebench.p99_us_latest_d1", latest_d1.p99_us, "us", Some(latest_floor_d1.p99_us));
    row("pagebench.pages_s_latest_8x32", latest_8x32.pages_s, "pages/s", Some(latest_floor_8x32.pages_s));

    let (compacting, cpu) = measure_while_compacting(&primary, &host, &mut hc, &timeline, &server(1, 1))?;
    row("pagebench.p99_us_d1_compacting", compacting.p99_us, "us", Some(server_d1.p99_us));
    row("compaction.cpu_s_layers_worker", cpu.layers_s, "s", None);
    row("compaction.cpu_s_main_worker", cpu.main_s, "s", None);
    row("compaction.cpu_s_redo_workers", cpu.redo_s, "s", None);

    let import = measure_import(&primary, &host, &tenant, main_pid)?;
    row("import.mb_s", import.mb_s, "MB/s", Some(import.floor_mb_s));
    row("import.rss_mib", import.peak_rss_mib, "MiB", None);

    let log = host.log();
    if log.contains("ERROR") || log.contains("PANIC") {
        eprintln!("warning: the host log has errors:\n{}", host.log_tail(30));
    }
    eprintln!("service_bench took {:.1} s", bench_started.elapsed().as_secs_f64());
    Ok(())
}

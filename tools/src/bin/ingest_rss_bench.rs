//! Resident memory of WAL ingest: feeds at least 2 GiB of real PostgreSQL 15
//! WAL, recorded from a pgbench primary, through
//! [`storage::wal::WalStreamDecoder`] and [`storage::walingest::WalIngest`]
//! into a [`storage::repo::Repository`] timeline, with a background thread
//! flushing frozen in-memory layers (as the page server's flusher does), and
//! samples the process's resident set (`VmRSS` in `/proc/self/status`) every
//! 50 ms. Prints the BENCHMARKS.md row
//!
//! - `repo.rss_mib_ingest`: the peak resident memory while ingesting, in MiB
//!   (the larger of the sampled peak and `VmHWM`, which is reset through
//!   `/proc/self/clear_refs` when ingest starts). Floor: the limit it is held
//!   to, `page_cache_bytes` + the in-memory layers' limit
//!   ([`RepoConfig::inmem_limit`], frozen layers included) + 64 MiB; the
//!   ratio is value / limit and must stay below 1: the binary exits with
//!   status 1 when the peak is over the limit.
//!
//! Throughput, records, layers written and back-pressure figures go to
//! stderr.
//!
//! The input is recorded once and cached in `target/ingest_rss_wal` (or
//! `--cache-dir`): a throwaway primary started through the test harness, with
//! a physical replication slot keeping its WAL, is backed up with
//! `pg_basebackup -Ft -X none -c fast` while still nearly empty (the import
//! holds the whole base backup in the open in-memory layer, so the data comes
//! through WAL instead), then runs `pgbench -i -s 50` and `pgbench -c 4 -j 2`
//! until the WAL since the backup's start is long enough. The cache holds
//! `base.tar`, the segment files and a `range` file naming the backup's start
//! LSN and the end of the recorded WAL. Ingest reads the segment files as it
//! goes, in 128 KiB chunks (the way a replication stream delivers them): the
//! WAL is never held in memory as a whole.
//!
//! The repository is opened in a temporary directory with
//! `checkpoint_distance` = 64 MiB, `page_cache_bytes` = 64 MiB,
//! `max_inmem_bytes` = `None` (2 × `checkpoint_distance`) and fsync on. Its
//! redo fails every request: ingest reads only images (sizes, directories,
//! the checkpoint).
//!
//! Next to the RSS, a counting global allocator reports the live heap (bytes
//! allocated and not freed) and its peak, which tells what the engine holds
//! from what the allocator keeps. Diagnostics, not used for the row:
//! `--explain` prints, per in-memory layer, the bytes it counts against the
//! limit next to the bytes its values hold; `--copy-records` copies each
//! record out of the decoder's input buffer before ingest (the page server
//! does not); `--flush-interval-ms N` makes the flusher fall behind.
//!
//! Usage: `cargo run --release -p tools --bin ingest_rss_bench [-- --wal-gib 2.0 ...]`
//! (`--help` lists the options).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use bytes::Bytes;
use clap::Parser;
use pageserver_harness::PgCluster;
use storage::import::{import_basebackup_tar, parse_backup_label, ImportProgress};
use storage::key::Key;
use storage::lsn::Lsn;
use storage::repo::{Redo, RepoConfig, Repository, TimelineId};
use storage::value::WalRecordValue;
use storage::wal::{WalStreamDecoder, DEFAULT_WAL_SEG_SIZE};
use storage::walingest::WalIngest;

const SEG: u64 = DEFAULT_WAL_SEG_SIZE;
const MIB: u64 = 1 << 20;
const COMMAND: &str = "cargo run --release -p tools --bin ingest_rss_bench";
/// What the limit allows on top of the page cache and the in-memory layers.
const SLACK: u64 = 64 * MIB;
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

#[derive(Parser, Debug)]
#[command(about = "Peak resident memory while ingesting real WAL (BENCHMARKS.md row repo.rss_mib_ingest)")]
struct Args {
    /// GiB of WAL to ingest (recorded once, cached).
    #[arg(long, default_value_t = 2.0)]
    wal_gib: f64,
    /// Where the recorded base backup and WAL segments are kept.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// pgbench scale of the initial load (applies when recording).
    #[arg(long, default_value_t = 50)]
    scale: u32,
    /// `checkpoint_distance` of the repository, MiB.
    #[arg(long, default_value_t = 64)]
    checkpoint_distance_mib: u64,
    /// `page_cache_bytes` of the repository, MiB.
    #[arg(long, default_value_t = 64)]
    page_cache_mib: u64,
    /// `max_inmem_bytes` of the repository, MiB (default: 2 × checkpoint distance).
    #[arg(long)]
    max_inmem_mib: Option<u64>,
    /// Bytes handed to the decoder per feed, KiB.
    #[arg(long, default_value_t = 128)]
    chunk_kib: usize,
    /// Turn the repository's fsync off.
    #[arg(long)]
    no_fsync: bool,
    /// Record the WAL again even if the cache has enough.
    #[arg(long)]
    rerecord: bool,
    /// Diagnostic: copy each record's bytes out of the decoder's buffer
    /// before ingest (the page server does not), so that a stored record no
    /// longer keeps the whole input chunk it came in allocated.
    #[arg(long)]
    copy_records: bool,
    /// Diagnostic: also map every record with `ingest_record` and print, per
    /// in-memory layer, the bytes the layer counts against the limit next to
    /// the bytes its values hold (page images, and each stored record's
    /// length once).
    #[arg(long)]
    explain: bool,
    /// Diagnostic: the flusher ignores freeze notices and looks for frozen
    /// layers only every this many ms, as if flushing fell behind (a writer
    /// over the in-memory limit still waits for it, or flushes itself).
    #[arg(long)]
    flush_interval_ms: Option<u64>,
}

/// The system allocator, counting the bytes allocated and not yet freed
/// (live heap) and their peak: next to the RSS it tells what the engine
/// holds from what the allocator keeps.
struct CountingAlloc;

static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK_LIVE: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to the system allocator with the caller's
// own arguments (so its contract is the caller's) and only adds counting on
// atomics, which allocates nothing.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed) + layout.size() as u64;
            PEAK_LIVE.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl).
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed) + layout.size() as u64;
            PEAK_LIVE.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = (new_size - layout.size()) as u64;
                let now = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK_LIVE.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub((layout.size() - new_size) as u64, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Ingest reads only images: any redo request is a bug worth failing on.
struct NoRedo;

impl Redo for NoRedo {
    fn apply(&self, key: Key, _base: Option<Bytes>, records: &[(Lsn, WalRecordValue)]) -> Result<Bytes, storage::repo::RedoError> {
        Err(format!("unexpected redo of {key:?} ({} records): WAL ingest should read only images", records.len()).into())
    }
}

fn segment_name(segno: u64) -> String {
    let per_id = 0x1_0000_0000 / SEG;
    format!("{:08X}{:08X}{:08X}", 1, segno / per_id, segno % per_id)
}

fn sql_lsn(pg: &PgCluster, q: &str) -> anyhow::Result<Lsn> {
    let v = pg.sql_one(q)?.context("NULL LSN")?;
    v.parse::<Lsn>().map_err(|e| anyhow!("{q}: {v:?}: {e}"))
}

/// The cached recording: the base backup's start LSN and the end of the WAL
/// (every record starting before it is complete in the segment files).
struct Recording {
    dir: PathBuf,
    start: Lsn,
    end: Lsn,
}

fn read_range(dir: &Path) -> Option<(Lsn, Lsn)> {
    let s = std::fs::read_to_string(dir.join("range")).ok()?;
    let mut it = s.split_whitespace().map(|w| w.parse::<Lsn>());
    let (start, end) = (it.next()?.ok()?, it.next()?.ok()?);
    dir.join("base.tar").is_file().then_some((start, end))
}

/// Records a base backup and at least `min_bytes` of WAL after its start into `dir`.
fn record(dir: &Path, min_bytes: u64, scale: u32) -> anyhow::Result<(Lsn, Lsn)> {
    let t = Instant::now();
    eprintln!("recording a base backup and at least {} MiB of WAL into {} (once)", min_bytes / MIB, dir.display());
    let pg = PgCluster::start_primary(&[
        ("max_wal_size", "16GB"),
        ("checkpoint_timeout", "60s"),
        ("shared_buffers", "128MB"),
        ("autovacuum", "off"),
    ])?;
    // The slot keeps every segment from here on.
    pg.sql("SELECT pg_create_physical_replication_slot('ingest_rss', true)")?;
    let tar_path = pg.base_backup_tar("backup")?;
    let out = Command::new("tar").arg("-xOf").arg(&tar_path).arg("backup_label").output()?;
    ensure!(out.status.success(), "tar -xOf {} backup_label: {}", tar_path.display(), String::from_utf8_lossy(&out.stderr));
    let start = parse_backup_label(&String::from_utf8_lossy(&out.stdout)).map_err(|e| anyhow!("backup_label: {e}"))?;
    eprintln!("  base backup of {} MiB starts at {start}", std::fs::metadata(&tar_path)?.len() / MIB);
    pg.run_as_postgres_checked("pgbench", &["-i", "-s", &scale.to_string(), "-q"])?;
    loop {
        let now = sql_lsn(&pg, "SELECT pg_current_wal_insert_lsn()")?;
        eprintln!("  {} MiB of WAL so far ({:.0} s)", (now.0 - start.0) / MIB, t.elapsed().as_secs_f64());
        if now.0 - start.0 >= min_bytes {
            break;
        }
        pg.run_as_postgres_checked("pgbench", &["-n", "-c", "4", "-j", "2", "-T", "30"])?;
    }
    let end = sql_lsn(&pg, "SELECT pg_current_wal_insert_lsn()")?;
    // Writes out (and ends the segment of) everything before `end`.
    pg.sql("SELECT pg_switch_wal()")?;
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    std::fs::copy(&tar_path, tmp.join("base.tar"))?;
    for segno in start.0 / SEG..=end.0 / SEG {
        let name = segment_name(segno);
        std::fs::copy(pg.data_dir().join("pg_wal").join(&name), tmp.join(&name)).with_context(|| format!("copying {name}"))?;
    }
    std::fs::write(tmp.join("range"), format!("{start} {end}\n"))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir)?;
    eprintln!("recorded {} MiB of WAL ({start}..{end}) in {:.0} s", (end.0 - start.0) / MIB, t.elapsed().as_secs_f64());
    Ok((start, end))
}

fn recording(args: &Args, min_bytes: u64) -> anyhow::Result<Recording> {
    let dir = match &args.cache_dir {
        Some(d) => d.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ingest_rss_wal"),
    };
    let (start, end) = match read_range(&dir) {
        Some((s, e)) if !args.rerecord && e.0 - s.0 >= min_bytes => {
            eprintln!("using the WAL recorded in {} ({s}..{e}, {} MiB)", dir.display(), (e.0 - s.0) / MIB);
            (s, e)
        }
        _ => record(&dir, min_bytes, args.scale)?,
    };
    Ok(Recording { dir, start, end })
}

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("ingest_rss_bench: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Returns whether the peak stayed under the limit.
fn run(args: &Args) -> anyhow::Result<bool> {
    ensure!(args.wal_gib > 0.0 && args.chunk_kib > 0, "--wal-gib and --chunk-kib must be positive");
    let want = (args.wal_gib * (1u64 << 30) as f64) as u64;
    let rec = recording(args, want)?;
    let wal_end = Lsn(rec.end.0.min(rec.start.0 + want));

    let conf = RepoConfig {
        checkpoint_distance: args.checkpoint_distance_mib * MIB,
        page_cache_bytes: args.page_cache_mib * MIB,
        max_inmem_bytes: args.max_inmem_mib.map(|m| m * MIB),
        fsync: !args.no_fsync,
        ..RepoConfig::default()
    };
    let limit = conf.page_cache_bytes + conf.inmem_limit() + SLACK;
    let repo_dir = tempfile::Builder::new().prefix("ingest_rss_repo").tempdir()?;
    let repo = Repository::open(repo_dir.path(), conf.clone(), Arc::new(NoRedo))?;
    let tl = repo.create_timeline(TimelineId(0x1))?;

    // Bootstrap from the base backup, written out before ingest starts.
    let t = Instant::now();
    let stats = {
        let mut writer = tl.writer();
        let tar = std::io::BufReader::new(File::open(rec.dir.join("base.tar"))?);
        let stats = import_basebackup_tar(&mut writer, tar, rec.start, &ImportProgress::default())?;
        writer.freeze()?;
        stats
    };
    tl.flush_frozen_layers()?;
    eprintln!("imported {stats:?} at {} in {:.1} s", rec.start, t.elapsed().as_secs_f64());
    let mut ingest = WalIngest::new(&tl)?;

    // From here on, the peak: reset VmHWM ("5" to clear_refs, Linux ≥ 4.0).
    let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let baseline = proc_status_bytes("VmRSS");
    let baseline_live = LIVE.load(Ordering::Relaxed);
    PEAK_LIVE.store(baseline_live, Ordering::Relaxed);
    eprintln!(
        "ingesting {} MiB of WAL ({}..{wal_end}) in {} KiB chunks; checkpoint_distance {} MiB, in-memory limit {} MiB, \
         page cache {} MiB, fsync {}; limit {:.0} MiB, RSS before ingest {:.1} MiB",
        (wal_end.0 - rec.start.0) / MIB,
        rec.start,
        args.chunk_kib,
        conf.checkpoint_distance / MIB,
        conf.inmem_limit() / MIB,
        conf.page_cache_bytes / MIB,
        conf.fsync,
        mib(limit),
        mib(baseline)
    );

    let done = AtomicBool::new(false);
    let peak_rss = AtomicU64::new(baseline);
    let peak_inmem = AtomicU64::new(0);
    let peak_frozen_layers = AtomicU64::new(0);
    let peak_unflushed_wal = AtomicU64::new(0);
    let (froze_tx, froze_rx) = mpsc::channel::<()>();
    let t = Instant::now();
    let (records, fed, frozen, flusher_result) = std::thread::scope(|s| -> anyhow::Result<_> {
        // The flusher: as the page server's, woken when a layer is frozen.
        let flush_tl = &tl;
        let interval = args.flush_interval_ms.map(Duration::from_millis);
        let flusher = s.spawn(move || -> anyhow::Result<()> {
            loop {
                if let Some(interval) = interval {
                    std::thread::sleep(interval);
                    while froze_rx.try_recv().is_ok() {}
                }
                match froze_rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => flush_tl.flush_frozen_layers()?,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(flush_tl.flush_frozen_layers()?),
                }
            }
        });
        // The sampler: VmRSS every 50 ms, a progress line every 2 s.
        s.spawn(|| {
            let mut last_report = Instant::now();
            while !done.load(Ordering::Relaxed) {
                let rss = proc_status_bytes("VmRSS");
                peak_rss.fetch_max(rss, Ordering::Relaxed);
                let (open, frozen) = tl.inmem_bytes();
                peak_inmem.fetch_max(open + frozen, Ordering::Relaxed);
                peak_frozen_layers.fetch_max(tl.frozen_layer_count() as u64, Ordering::Relaxed);
                let unflushed = tl.last_record_lsn().0.saturating_sub(tl.disk_consistent_lsn().0);
                peak_unflushed_wal.fetch_max(unflushed, Ordering::Relaxed);
                if last_report.elapsed() >= Duration::from_secs(2) {
                    last_report = Instant::now();
                    eprintln!(
                        "  {:>5.0} s: {:>5} MiB ingested, RSS {:.0} MiB (peak {:.0}), live heap {:.0} MiB, in-memory layers \
                         {:.0} + {:.0} MiB frozen ({} layers), WAL not yet flushed {:.0} MiB",
                        t.elapsed().as_secs_f64(),
                        (tl.last_record_lsn().0.saturating_sub(rec.start.0)) / MIB,
                        mib(rss),
                        mib(peak_rss.load(Ordering::Relaxed)),
                        mib(LIVE.load(Ordering::Relaxed)),
                        mib(open),
                        mib(frozen),
                        tl.frozen_layer_count(),
                        mib(unflushed)
                    );
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        let result = feed_wal(&rec, wal_end, args, &tl, &mut ingest, &froze_tx);
        drop(froze_tx);
        let flushed = flusher.join();
        done.store(true, Ordering::Relaxed);
        let flushed = flushed.map_err(|_| anyhow!("the flusher panicked"))?;
        let (records, fed, frozen) = result?;
        Ok((records, fed, frozen, flushed))
    })?;
    flusher_result.context("background flush")?;
    let secs = t.elapsed().as_secs_f64();
    let sampled = peak_rss.load(Ordering::Relaxed);
    let hwm = if hwm_reset { proc_status_bytes("VmHWM") } else { 0 };
    let peak = sampled.max(hwm);
    let bp = tl.backpressure_stats();
    ensure!(tl.last_record_lsn() >= wal_end, "ingest ended at {}, before {wal_end}", tl.last_record_lsn());
    eprintln!(
        "ingested {:.1} MB of WAL, {records} records in {secs:.1} s: {:.1} MB/s, {:.0} records/s",
        fed as f64 / 1e6,
        fed as f64 / 1e6 / secs,
        records as f64 / secs
    );
    eprintln!(
        "layers: {frozen} frozen by ingest, {} layer files ({:.0} MiB) at the end; peak in-memory layers {:.1} MiB \
         (as counted), at most {} frozen at once; back-pressure: {} waits, {:.2} s waited, {} layers flushed by the writer",
        tl.layer_names().len(),
        mib(tl.layer_bytes()),
        mib(peak_inmem.load(Ordering::Relaxed)),
        peak_frozen_layers.load(Ordering::Relaxed),
        bp.waits,
        bp.wait_time.as_secs_f64(),
        bp.writer_flushed_layers
    );
    eprintln!(
        "heap (bytes allocated, not freed): {:.2} MiB before ingest, peak {:.1} MiB, {:.1} MiB at the end; \
         peak WAL ingested but not flushed (last_record_lsn - disk_consistent_lsn) {:.1} MiB",
        mib(baseline_live),
        mib(PEAK_LIVE.load(Ordering::Relaxed)),
        mib(LIVE.load(Ordering::Relaxed)),
        mib(peak_unflushed_wal.load(Ordering::Relaxed))
    );
    eprintln!(
        "RSS: {:.1} MiB before ingest, peak {:.1} MiB sampled every {} ms, VmHWM {} MiB, {:.1} MiB at the end; limit {:.0} MiB \
         (page cache {} + in-memory layers {} + {} MiB)",
        mib(baseline),
        mib(sampled),
        SAMPLE_EVERY.as_millis(),
        if hwm_reset { format!("{:.1}", mib(hwm)) } else { "n/a (clear_refs not writable)".into() },
        mib(proc_status_bytes("VmRSS")),
        mib(limit),
        conf.page_cache_bytes / MIB,
        conf.inmem_limit() / MIB,
        SLACK / MIB
    );
    println!("| name | value | unit | floor | ratio | command |");
    println!("|---|---|---|---|---|---|");
    println!("| repo.rss_mib_ingest | {:.1} | MiB | {:.0} | {:.3} | {COMMAND} |", mib(peak), mib(limit), peak as f64 / limit as f64);
    drop(tl);
    drop(repo);
    if peak > limit {
        eprintln!(
            "ingest_rss_bench: FAILED: peak resident memory {:.1} MiB exceeds the limit {:.0} MiB \
             (page_cache_bytes {} MiB + in-memory layers' limit {} MiB + {} MiB)",
            mib(peak),
            mib(limit),
            conf.page_cache_bytes / MIB,
            conf.inmem_limit() / MIB,
            SLACK / MIB
        );
        return Ok(false);
    }
    Ok(true)
}

/// Feeds the segment files from `rec.start` on in `chunk`-byte pieces and
/// ingests every record that starts before `end`. Returns (records, bytes
/// fed, layers frozen).
fn feed_wal(
    rec: &Recording,
    end: Lsn,
    args: &Args,
    tl: &storage::repo::Timeline,
    ingest: &mut WalIngest,
    froze: &mpsc::Sender<()>,
) -> anyhow::Result<(u64, u64, u64)> {
    let mut decoder = WalStreamDecoder::new(rec.start);
    let mut writer = tl.writer();
    let mut buf = vec![0u8; args.chunk_kib << 10];
    let mut explain = args.explain.then(Explain::default);
    let (mut records, mut fed, mut frozen) = (0u64, 0u64, 0u64);
    for segno in rec.start.0 / SEG..=rec.end.0 / SEG {
        let path = rec.dir.join(segment_name(segno));
        let mut file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        if segno == rec.start.0 / SEG {
            file.seek(SeekFrom::Start(rec.start.0 % SEG))?;
        }
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            decoder.feed(&buf[..n]);
            fed += n as u64;
            while let Some(mut r) = decoder.next_record().map_err(|e| anyhow!("decoder: {e}"))? {
                if r.start_lsn >= end {
                    if let Some(x) = &mut explain {
                        x.layer_done(tl, true);
                    }
                    return Ok((records, fed, frozen));
                }
                if args.copy_records {
                    r.raw = Bytes::copy_from_slice(&r.raw);
                }
                if let Some(x) = &mut explain {
                    x.record(&r)?;
                }
                let froze_now = ingest.ingest(&mut writer, &r).with_context(|| format!("record at {}", r.start_lsn))?;
                records += 1;
                if froze_now {
                    frozen += 1;
                    let _ = froze.send(());
                    if let Some(x) = &mut explain {
                        x.layer_done(tl, false);
                    }
                }
            }
        }
    }
    bail!("the recorded WAL ended at {} before {end}", decoder.consumed_lsn())
}

/// `--explain`: per in-memory layer, what it counts against the limit
/// (`InMemoryLayer::put`: an image's length + 32, a record 64 + 32) and what
/// its values hold (an image's length, a stored PostgreSQL record's length
/// once however many blocks it is stored for, project records not counted).
/// Versions that `WalIngest` adds itself (sizes, directories, the
/// checkpoint) are small and left out of both.
#[derive(Default)]
struct Explain {
    layer: u64,
    counted: u64,
    held: u64,
    images: u64,
    records: u64,
    record_bytes: u64,
    max_held_over_counted: f64,
}

impl Explain {
    fn record(&mut self, r: &storage::wal::DecodedRecord) -> anyhow::Result<()> {
        use storage::value::{RecordPayload, Value};
        use storage::wal::ingest::{ingest_record, IngestChange};
        let batch = ingest_record(r).map_err(|e| anyhow!("record at {}: {e}", r.start_lsn))?;
        let mut raw_stored = false;
        for change in &batch.changes {
            if let IngestChange::Put { value, .. } = change {
                match value {
                    Value::Image(page) => {
                        self.counted += page.len() as u64 + 32;
                        self.held += page.len() as u64;
                        self.images += 1;
                    }
                    Value::WalRecord(v) => {
                        self.counted += 96;
                        if let RecordPayload::Postgres { raw, .. } = &v.rec {
                            if !raw_stored {
                                raw_stored = true;
                                self.held += raw.len() as u64;
                                self.records += 1;
                                self.record_bytes += raw.len() as u64;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn layer_done(&mut self, tl: &storage::repo::Timeline, last: bool) {
        let ratio = self.held as f64 / self.counted.max(1) as f64;
        self.max_held_over_counted = self.max_held_over_counted.max(ratio);
        eprintln!(
            "  layer {:>2}{}: counted {:>6.1} MiB, values hold {:>6.1} MiB ({:.2}x): {} images, {} records stored \
             ({:.1} MiB, {:.0} B each); at freeze: {} frozen layers, {:.1} MiB counted in memory",
            self.layer,
            if last { " (open, at the end)" } else { "" },
            mib(self.counted),
            mib(self.held),
            ratio,
            self.images,
            self.records,
            mib(self.record_bytes),
            self.record_bytes as f64 / self.records.max(1) as f64,
            tl.frozen_layer_count(),
            {
                let (o, f) = tl.inmem_bytes();
                mib(o + f)
            }
        );
        *self = Explain { layer: self.layer + 1, max_held_over_counted: self.max_held_over_counted, ..Explain::default() };
    }
}

//! Back-pressure on ingest (`RepoConfig::max_inmem_bytes`): a writer putting
//! faster than a flusher thread can write layer files is held back so that
//! the in-memory layers stay within the limit, and a writer with no flusher
//! at all flushes frozen layers itself instead of waiting forever.

mod repo_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use repo_common::*;
use storage::key::{Key, RelTag};
use storage::lsn::Lsn;
use storage::repo::{RepoConfig, Timeline, TimelineId};
use storage::value::Value;

const PAGE: usize = 8192;
/// Bytes an 8 KiB image counts for in an in-memory layer (value + overhead).
const VERSION_BYTES: u64 = PAGE as u64 + 32;
const CHECKPOINT_DISTANCE: u64 = 256 * 1024;
const LIMIT: u64 = 2 * CHECKPOINT_DISTANCE;
const BLOCKS: u32 = 1024;

fn config() -> RepoConfig {
    RepoConfig { checkpoint_distance: CHECKPOINT_DISTANCE, max_inmem_bytes: Some(LIMIT), page_cache_bytes: 0, ..small_config() }
}

/// 64 distinct pages; version `i` of the workload is `pages[i % 64]`.
fn pages() -> Vec<Bytes> {
    let mut rng = Rng::new(42);
    (0..64).map(|_| Bytes::from(rng.bytes(PAGE))).collect()
}

fn key(i: u64) -> Key {
    Key::rel_block(RelTag::new(1663, 5, 16384, 0), (i % u64::from(BLOCKS)) as u32)
}

fn lsn(i: u64) -> Lsn {
    // As if each page came with 8 KiB of WAL: a layer freezes every 32 versions.
    Lsn(0x1000 + i * PAGE as u64)
}

/// Puts `n` 8 KiB images, one per LSN, checking after each `finish_lsn`
/// that the writer kept the limit. Returns the largest frozen size seen.
fn write(timeline: &Timeline, n: u64, pages: &[Bytes], limit: u64) -> u64 {
    let mut max_frozen = 0;
    for i in 0..n {
        let mut writer = timeline.writer();
        writer.put(key(i), lsn(i), Value::Image(pages[i as usize % pages.len()].clone())).unwrap();
        writer.finish_lsn(lsn(i)).unwrap();
        drop(writer);
        // Only this thread adds to the in-memory layers: what holds now held
        // when finish_lsn returned, or the flusher has since made it smaller.
        let (open, frozen) = timeline.inmem_bytes();
        assert!(frozen == 0 || open + frozen <= limit, "after LSN {}: open {open} + frozen {frozen} bytes above the limit {limit}", lsn(i));
        max_frozen = max_frozen.max(frozen);
    }
    max_frozen
}

/// Every block's last version, and a sample of older ones, read back.
fn verify(timeline: &Timeline, n: u64, pages: &[Bytes]) {
    for i in (n.saturating_sub(u64::from(BLOCKS))..n).chain((0..n).step_by(97)) {
        let got = timeline.get(key(i), lsn(i)).unwrap().unwrap();
        assert_eq!(got, pages[i as usize % pages.len()], "version {i}");
    }
}

#[test]
fn default_limit_is_twice_the_checkpoint_distance() {
    let conf = RepoConfig::default();
    assert_eq!(conf.max_inmem_bytes, None);
    assert_eq!(conf.inmem_limit(), 2 * conf.checkpoint_distance);
    let conf = RepoConfig { checkpoint_distance: 1 << 30, ..RepoConfig::default() };
    assert_eq!(conf.inmem_limit(), 2 << 30);
    assert_eq!(RepoConfig { max_inmem_bytes: Some(5), ..conf }.inmem_limit(), 5);
}

/// A writer that puts much faster than the flusher writes files (the pages
/// are shared `Bytes`; the flusher compresses and writes every one) never
/// lets the frozen layers grow past the limit plus one layer; it waits for
/// the flusher rather than flushing itself while a flush runs.
#[test]
fn fast_writer_waits_for_slow_flusher() {
    let dir = tempfile::tempdir().unwrap();
    let repo = open(dir.path(), config());
    let timeline = repo.create_timeline(TimelineId(1)).unwrap();
    let pages = pages();
    let n: u64 = 8192; // 64 MiB of pages, 256 layers
    let done = AtomicBool::new(false);
    let monitor_max = AtomicU64::new(0);
    let flusher_runs = AtomicU64::new(0);
    let started = Instant::now();
    let writer_max = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                if timeline.frozen_layer_count() > 0 {
                    timeline.flush_frozen_layers().unwrap();
                    flusher_runs.fetch_add(1, Ordering::Relaxed);
                } else {
                    std::thread::yield_now();
                }
            }
        });
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                monitor_max.fetch_max(timeline.frozen_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        let max = write(&timeline, n, &pages, LIMIT);
        done.store(true, Ordering::SeqCst);
        max
    });
    let elapsed = started.elapsed();
    let stats = timeline.backpressure_stats();
    let monitor_max = monitor_max.load(Ordering::Relaxed);
    eprintln!(
        "{} MiB in {elapsed:?}: {} layer files, flusher ran {} times, {stats:?}; largest frozen size seen: writer {writer_max}, monitor {monitor_max} (limit {LIMIT}, layer {CHECKPOINT_DISTANCE})",
        (n * PAGE as u64) >> 20,
        timeline.layer_names().len(),
        flusher_runs.load(Ordering::Relaxed),
    );
    // A layer freezes at checkpoint_distance (plus at most one version).
    let one_layer = CHECKPOINT_DISTANCE + VERSION_BYTES;
    assert!(monitor_max <= LIMIT + one_layer, "frozen layers reached {monitor_max} bytes");
    assert!(writer_max <= LIMIT, "frozen layers held {writer_max} bytes after finish_lsn");
    assert!(stats.waits > 0, "the writer never waited for the flusher: {stats:?}");
    assert!(stats.writer_flushed_layers < timeline.layer_names().len() as u64, "the writer flushed every layer itself: {stats:?}");
    timeline.writer().freeze().unwrap();
    timeline.flush_frozen_layers().unwrap();
    assert_eq!(timeline.disk_consistent_lsn(), lsn(n - 1));
    verify(&timeline, n, &pages);
}

/// With nobody flushing, the writer flushes itself: it makes progress (the
/// test fails instead of hanging if it does not), never waits, and keeps
/// the limit; also with a limit below checkpoint_distance.
#[test]
fn writer_without_flusher_flushes_itself() {
    for (conf, limit) in
        [(config(), LIMIT), (RepoConfig { max_inmem_bytes: Some(CHECKPOINT_DISTANCE / 4), ..config() }, CHECKPOINT_DISTANCE / 4)]
    {
        let dir = tempfile::tempdir().unwrap();
        let repo = open(dir.path(), conf);
        let timeline = repo.create_timeline(TimelineId(1)).unwrap();
        let pages = pages();
        let n: u64 = 4096;
        let (tx, rx) = mpsc::channel();
        let worker = {
            let timeline = timeline.clone();
            let pages = pages.clone();
            std::thread::spawn(move || {
                let max = write(&timeline, n, &pages, limit.max(CHECKPOINT_DISTANCE + VERSION_BYTES));
                tx.send(max).unwrap();
            })
        };
        let max_frozen = rx.recv_timeout(Duration::from_secs(120)).expect("the writer made no progress without a flusher");
        worker.join().unwrap();
        let stats = timeline.backpressure_stats();
        let layers = timeline.layer_names().len() as u64;
        eprintln!("limit {limit}: {layers} layer files, {stats:?}, largest frozen size after finish_lsn {max_frozen}");
        assert_eq!(stats.waits, 0, "waited with nobody flushing");
        // n pages of 8 KiB in layers of 256 KiB: the writer flushed all but the last frozen ones.
        let frozen_total = n * PAGE as u64 / CHECKPOINT_DISTANCE;
        assert!(stats.writer_flushed_layers + 2 >= frozen_total, "{stats:?}");
        assert_eq!(layers, stats.writer_flushed_layers);
        assert!(max_frozen <= limit.max(CHECKPOINT_DISTANCE + VERSION_BYTES));
        verify(&timeline, n, &pages);
    }
}

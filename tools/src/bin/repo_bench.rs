//! Benchmarks of the layered repository (`storage::repo`).
//!
//! Prints markdown rows `| name | value | unit | floor | ratio | command |`:
//!
//! - `repo.get_us_depth{0,10,100}`: mean latency of `Timeline::get` of an
//!   8 KiB page with 0, 10 or 100 records above its image, all in layer files
//!   (read through the OS page cache), the repository's page cache off;
//!   `..._cached`: the same with the page cache on and warm (a read at the
//!   LSN of a cached version needs no walk and no redo); `..._inmem`: the versions
//!   still in the in-memory layer, page cache off. Floor: a `HashMap` lookup
//!   plus copy of an 8 KiB page, measured in the same run.
//! - `repo.branch_ms_1gib`: creating a branch of a timeline with 1 GiB of layer
//!   files (fsync on). Floor: creating a branch of an empty timeline.
//! - `repo.compaction_mb_s`: L0 → L1 compaction of that 1 GiB, MB of L0 input
//!   per second. Floor: copying the same files with `std::fs::copy`.
//!
//! The ratio is value / floor. Redo is a trivial Rust one (write bytes at an
//! offset), so the figures are the engine's own cost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use storage::key::{Key, RelTag};
use storage::lsn::Lsn;
use storage::repo::{Redo, RepoConfig, Repository, Timeline, TimelineId};
use storage::value::{RecordPayload, Value, WalRecordValue};

const COMMAND: &str = "cargo run --release -p tools --bin repo_bench";
const PAGE: usize = pg_constants::BLCKSZ;

struct WriteAtRedo;

impl Redo for WriteAtRedo {
    fn apply(&self, _key: Key, base: Option<Bytes>, records: &[(Lsn, WalRecordValue)]) -> Result<Bytes, storage::repo::RedoError> {
        let mut page = base.map(|b| b.to_vec()).unwrap_or_else(|| vec![0; PAGE]);
        for (_, record) in records {
            let RecordPayload::Postgres { raw, .. } = &record.rec else { return Err("unexpected record".into()) };
            let offset = u16::from_le_bytes([raw[0], raw[1]]) as usize;
            page[offset..offset + raw.len() - 2].copy_from_slice(&raw[2..]);
        }
        Ok(Bytes::from(page))
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A page: the first `random` bytes random, the rest zeros.
    fn page(&mut self, random: usize) -> Bytes {
        let mut page = vec![0u8; PAGE];
        for chunk in page[..random].chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Bytes::from(page)
    }
}

fn row(name: &str, value: f64, unit: &str, floor: f64) {
    println!("| {name} | {value:.3} | {unit} | {floor:.3} | {:.2} | {COMMAND} |", value / floor);
}

fn record(offset: u16, data: &[u8]) -> Value {
    let mut raw = offset.to_le_bytes().to_vec();
    raw.extend_from_slice(data);
    Value::WalRecord(WalRecordValue { will_init: false, rec: RecordPayload::Postgres { target_block_id: 0, raw: Bytes::from(raw) } })
}

fn flush(timeline: &Timeline) {
    timeline.writer().freeze().unwrap();
    timeline.flush_frozen_layers().unwrap();
}

/// Mean µs of `get` over random keys, with `depth` records above each image.
fn get_latency(dir: &std::path::Path, depth: usize, in_memory: bool, page_cache: bool, rng: &mut Rng) -> f64 {
    let conf =
        RepoConfig { checkpoint_distance: u64::MAX / 4, page_cache_bytes: if page_cache { 64 << 20 } else { 0 }, ..RepoConfig::default() };
    let repo = Repository::open(dir, conf, Arc::new(WriteAtRedo)).unwrap();
    let id = TimelineId(depth as u128 * 2 + in_memory as u128 + 1);
    let timeline = repo.create_timeline(id).unwrap();
    let rel = RelTag::new(1663, 5, 16384, 0);
    let keys: Vec<Key> = (0..2000).map(|blk| Key::rel_block(rel, blk)).collect();
    let mut lsn = Lsn(0x1000);
    {
        let mut writer = timeline.writer();
        for key in &keys {
            writer.put(*key, lsn, Value::Image(rng.page(PAGE / 2))).unwrap();
        }
        writer.finish_lsn(lsn).unwrap();
    }
    if !in_memory {
        flush(&timeline);
    }
    for round in 0..depth {
        lsn += 0x100;
        let mut writer = timeline.writer();
        for key in &keys {
            writer.put(*key, lsn, record(((round * 16) % (PAGE - 16)) as u16, &[round as u8; 16])).unwrap();
        }
        writer.finish_lsn(lsn).unwrap();
    }
    if !in_memory {
        flush(&timeline);
    }
    let reads = if depth >= 100 { 3000 } else { 20000 };
    // Warm up (opens files, fills the OS page cache and the repository's).
    for key in &keys {
        timeline.get(*key, lsn).unwrap().unwrap();
    }
    let start = Instant::now();
    for _ in 0..reads {
        let key = keys[(rng.next() % keys.len() as u64) as usize];
        let page = timeline.get(key, lsn).unwrap().unwrap();
        assert_eq!(page.len(), PAGE);
    }
    start.elapsed().as_secs_f64() * 1e6 / reads as f64
}

/// µs of a HashMap lookup plus an 8 KiB copy.
fn hashmap_floor(rng: &mut Rng) -> f64 {
    let pages: HashMap<u32, Bytes> = (0..2000).map(|i| (i, rng.page(PAGE / 2))).collect();
    let mut out = vec![0u8; PAGE];
    let reads = 200_000;
    let start = Instant::now();
    for _ in 0..reads {
        let page = &pages[&((rng.next() % 2000) as u32)];
        out.copy_from_slice(page);
        std::hint::black_box(&out);
    }
    start.elapsed().as_secs_f64() * 1e6 / reads as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn branch_ms(repo: &Repository, parent: TimelineId, lsn: Lsn, next_id: &mut u128) -> f64 {
    let mut times = Vec::new();
    for _ in 0..9 {
        *next_id += 1;
        let start = Instant::now();
        repo.branch_timeline(parent, TimelineId(*next_id), lsn).unwrap();
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    median(times)
}

fn main() {
    let scratch = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);

    let floor = hashmap_floor(&mut rng);
    for depth in [0usize, 10, 100] {
        let files = get_latency(&scratch.path().join(format!("get{depth}")), depth, false, false, &mut rng);
        let cached = get_latency(&scratch.path().join(format!("get{depth}c")), depth, false, true, &mut rng);
        let memory = get_latency(&scratch.path().join(format!("get{depth}m")), depth, true, false, &mut rng);
        row(&format!("repo.get_us_depth{depth}"), files, "us", floor);
        row(&format!("repo.get_us_depth{depth}_cached"), cached, "us", floor);
        row(&format!("repo.get_us_depth{depth}_inmem"), memory, "us", floor);
    }

    // 1 GiB of incompressible pages in L0 files of 128 MiB.
    let conf = RepoConfig {
        checkpoint_distance: 128 << 20,
        checkpoint_timeout: Duration::from_secs(3600),
        target_file_size: 128 << 20,
        compaction_threshold: 8,
        ..RepoConfig::default()
    };
    let repo = Repository::open(&scratch.path().join("big"), conf, Arc::new(WriteAtRedo)).unwrap();
    let big = TimelineId(1);
    let empty = TimelineId(2);
    let timeline = repo.create_timeline(big).unwrap();
    let empty_timeline = repo.create_timeline(empty).unwrap();
    {
        let mut writer = empty_timeline.writer();
        writer.finish_lsn(Lsn(0x100)).unwrap();
    }
    let rel = RelTag::new(1663, 5, 16385, 0);
    let pages = (1u64 << 30) / PAGE as u64;
    let mut lsn = Lsn(0x100);
    let load_start = Instant::now();
    for blk in 0..pages {
        lsn += PAGE as u64;
        // Key order differs from LSN order, as in real WAL.
        let blkno = ((blk * 7919) % pages) as u32;
        let mut writer = timeline.writer();
        writer.put(Key::rel_block(rel, blkno), lsn, Value::Image(rng.page(PAGE))).unwrap();
        writer.finish_lsn(lsn).unwrap();
        drop(writer);
        if timeline.frozen_layer_count() > 0 {
            timeline.flush_frozen_layers().unwrap();
        }
    }
    flush(&timeline);
    let layer_bytes = timeline.layer_bytes();
    eprintln!(
        "loaded {} MiB in {} layer files in {:.1} s",
        layer_bytes >> 20,
        timeline.layer_names().len(),
        load_start.elapsed().as_secs_f64()
    );
    let mut next_id = 100;
    let empty_ms = branch_ms(&repo, empty, Lsn(0x100), &mut next_id);
    let big_ms = branch_ms(&repo, big, lsn, &mut next_id);
    row("repo.branch_ms_1gib", big_ms, "ms", empty_ms);

    // Floor: copying the L0 files.
    let copy_dir = scratch.path().join("copy");
    std::fs::create_dir(&copy_dir).unwrap();
    let start = Instant::now();
    for name in timeline.layer_names() {
        let file_name = name.file_name();
        std::fs::copy(timeline.dir().join(&file_name), copy_dir.join(&file_name)).unwrap();
    }
    let copy_mb_s = layer_bytes as f64 / 1e6 / start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&copy_dir).unwrap();

    let start = Instant::now();
    let stats = timeline.compact_level0().unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(stats.l0_merged >= 8, "compaction did not run: {stats:?}");
    eprintln!("compaction: {stats:?} in {secs:.1} s");
    row("repo.compaction_mb_s", stats.l0_bytes as f64 / 1e6 / secs, "MB/s", copy_mb_s);
    // Reads after compaction are still right.
    let page = timeline.get(Key::rel_block(rel, 0), lsn).unwrap().unwrap();
    assert_eq!(page.len(), PAGE);
}

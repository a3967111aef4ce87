//! Shared by the repository tests: a Rust-only redo, a reference model, a PRNG.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use storage::key::{Key, RelTag, SlruKind};
use storage::lsn::Lsn;
use storage::repo::{Redo, RepoConfig, RepoError, Repository, Timeline, TimelineId};
use storage::value::{RecordPayload, Value, WalRecordValue};

/// SplitMix64: small, deterministic, good enough for test workloads.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        // Compressible but not constant.
        let base = self.next_u64() as u8;
        (0..len).map(|i| base.wrapping_add((i / 7) as u8)).collect()
    }
}

/// Test records: `offset u16 LE | bytes`, meaning "write these bytes at this
/// offset" (extending the value with zeros as needed).
pub struct TestRedo;

pub fn write_at(base: &mut Vec<u8>, offset: usize, data: &[u8]) {
    if base.len() < offset + data.len() {
        base.resize(offset + data.len(), 0);
    }
    base[offset..offset + data.len()].copy_from_slice(data);
}

impl Redo for TestRedo {
    fn apply(&self, _key: Key, base: Option<Bytes>, records: &[(Lsn, WalRecordValue)]) -> Result<Bytes, storage::repo::RedoError> {
        let mut page = base.map(|b| b.to_vec()).unwrap_or_default();
        let mut previous = Lsn(0);
        for (i, (lsn, record)) in records.iter().enumerate() {
            if *lsn <= previous {
                return Err(format!("records out of order: {lsn} after {previous}").into());
            }
            previous = *lsn;
            if record.will_init {
                if i != 0 {
                    return Err("will-init record in the middle".into());
                }
                page.clear();
            }
            let RecordPayload::Postgres { raw, .. } = &record.rec else { return Err("not a test record".into()) };
            if raw.len() < 2 {
                return Err("short test record".into());
            }
            let offset = u16::from_le_bytes([raw[0], raw[1]]) as usize;
            write_at(&mut page, offset, &raw[2..]);
        }
        Ok(Bytes::from(page))
    }
}

pub fn test_record(will_init: bool, offset: u16, data: &[u8]) -> Value {
    let mut raw = offset.to_le_bytes().to_vec();
    raw.extend_from_slice(data);
    Value::WalRecord(WalRecordValue { will_init, rec: RecordPayload::Postgres { target_block_id: 0, raw: Bytes::from(raw) } })
}

/// A pool of keys of every family.
pub fn key_pool() -> Vec<Key> {
    let mut keys = Vec::new();
    for rel_node in [16384u32, 16390] {
        let rel = RelTag::new(1663, 5, rel_node, 0);
        for blkno in 0..12 {
            keys.push(Key::rel_block(rel, blkno));
        }
        keys.push(Key::rel_size(rel));
        keys.push(Key::rel_block(rel.with_fork(2), 0));
    }
    keys.push(Key::rel_dir(1663, 5));
    keys.push(Key::db_dir());
    keys.push(Key::relmap_file(1663, 5));
    for segno in 0..2 {
        for blkno in 0..3 {
            keys.push(Key::slru_block(SlruKind::Clog, segno, blkno));
        }
    }
    keys.push(Key::twophase_file(777));
    keys.push(Key::checkpoint());
    keys.push(Key::control_file());
    keys
}

pub fn small_config() -> RepoConfig {
    RepoConfig {
        checkpoint_distance: 3000,
        checkpoint_timeout: Duration::from_secs(3600),
        max_inmem_bytes: None,
        target_file_size: 48 * 1024,
        compaction_threshold: 3,
        image_creation_threshold: 2,
        image_layer_distance: 0,
        gc_horizon: 0,
        pitr_interval: Duration::ZERO,
        // Small, so that eviction happens too.
        page_cache_bytes: 64 * 1024,
        ancestor_wait_timeout: Duration::from_secs(10),
        fsync: false,
        data_checksums: false,
        read_parallelism: 3,
    }
}

pub fn open(dir: &Path, conf: RepoConfig) -> Repository {
    Repository::open(dir, conf, Arc::new(TestRedo)).expect("open repository")
}

/// The reference: materialized values per timeline, plus the WAL to re-ingest.
#[derive(Default, Clone)]
pub struct ModelTimeline {
    pub ancestor: Option<(TimelineId, Lsn)>,
    pub values: BTreeMap<Key, BTreeMap<Lsn, Bytes>>,
    /// (lsn, versions put at it), increasing.
    pub wal: Vec<(Lsn, Vec<(Key, Value)>)>,
    pub last_lsn: Lsn,
    pub cutoff: Lsn,
    /// A GC cutoff requested by an operation that has not returned (crash tests).
    pub pending_cutoff: Option<Lsn>,
}

#[derive(Default)]
pub struct Model {
    pub timelines: BTreeMap<TimelineId, ModelTimeline>,
    /// A branch whose creation has not returned (crash tests).
    pub pending_branch: Option<(TimelineId, ModelTimeline)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Expected {
    Value(Option<Bytes>),
    TooOld,
}

impl Model {
    /// What a read of `key` at `lsn` on `timeline` must return.
    pub fn expected(&self, timeline: TimelineId, key: Key, lsn: Lsn) -> Expected {
        self.expected_inner(timeline, key, lsn, true)
    }

    fn expected_inner(&self, id: TimelineId, key: Key, lsn: Lsn, check_cutoff: bool) -> Expected {
        let tl = &self.timelines[&id];
        if check_cutoff && lsn < tl.cutoff {
            return Expected::TooOld;
        }
        if let Some((_, value)) = tl.values.get(&key).and_then(|v| v.range(..=lsn).next_back()) {
            return Expected::Value(Some(value.clone()));
        }
        match tl.ancestor {
            Some((parent, branch_lsn)) => self.expected_inner(parent, key, lsn.min(branch_lsn), lsn < branch_lsn),
            None => Expected::Value(None),
        }
    }

    /// The value `key` has after applying `value` on top of its latest version.
    pub fn apply(&mut self, id: TimelineId, key: Key, lsn: Lsn, value: &Value) {
        let previous = match self.expected_inner(id, key, lsn, false) {
            Expected::Value(v) => v.map(|b| b.to_vec()).unwrap_or_default(),
            Expected::TooOld => unreachable!(),
        };
        let new = match value {
            Value::Image(page) => page.clone(),
            Value::WalRecord(WalRecordValue { will_init, rec: RecordPayload::Postgres { raw, .. } }) => {
                let mut page = if *will_init { Vec::new() } else { previous };
                write_at(&mut page, u16::from_le_bytes([raw[0], raw[1]]) as usize, &raw[2..]);
                Bytes::from(page)
            }
            _ => unreachable!(),
        };
        self.timelines.get_mut(&id).unwrap().values.entry(key).or_default().insert(lsn, new);
    }

    /// Random versions of random keys at a new LSN, applied to the model and the engine.
    pub fn random_put(&mut self, rng: &mut Rng, repo: &Repository, id: TimelineId, keys: &[Key]) -> Result<(), RepoError> {
        let lsn = self.timelines[&id].last_lsn + rng.range(1, 200);
        let mut versions = Vec::new();
        let count = rng.range(1, 5);
        for _ in 0..count {
            let key = keys[rng.range(0, keys.len() as u64) as usize];
            if versions.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let value = match rng.range(0, 10) {
                0 | 1 => {
                    let len = rng.range(16, 700) as usize;
                    Value::Image(Bytes::from(rng.bytes(len)))
                }
                2 => {
                    let len = rng.range(1, 40) as usize;
                    test_record(true, rng.range(0, 100) as u16, &rng.bytes(len))
                }
                _ => {
                    let len = rng.range(1, 24) as usize;
                    test_record(false, rng.range(0, 300) as u16, &rng.bytes(len))
                }
            };
            versions.push((key, value));
        }
        for (key, value) in &versions {
            self.apply(id, *key, lsn, value);
        }
        let tl = self.timelines.get_mut(&id).unwrap();
        tl.last_lsn = lsn;
        tl.wal.push((lsn, versions.clone()));
        ingest(&*repo.get_timeline(id)?, lsn, &versions)
    }

    /// After a restart: re-ingest every timeline's WAL above its disk_consistent_lsn.
    pub fn reingest(&self, repo: &Repository) -> Result<(), RepoError> {
        for (id, model) in &self.timelines {
            let timeline = repo.get_timeline(*id)?;
            let dcl = timeline.disk_consistent_lsn();
            for (lsn, versions) in model.wal.iter().filter(|(lsn, _)| *lsn > dcl) {
                ingest(&timeline, *lsn, versions)?;
            }
            assert_eq!(timeline.last_record_lsn(), model.last_lsn.max(dcl), "timeline {id} after re-ingest");
        }
        Ok(())
    }

    /// Every key at every interesting LSN of every timeline; returns the number of reads.
    pub fn check_all(&self, repo: &Repository, keys: &[Key]) -> usize {
        self.check_sampled(repo, keys, usize::MAX, &mut Rng::new(0))
    }

    /// Every key at up to `max_lsns` random LSNs where something changed, plus
    /// the branch point and the GC cutoff (and the LSN just below each).
    pub fn check_sampled(&self, repo: &Repository, keys: &[Key], max_lsns: usize, rng: &mut Rng) -> usize {
        let mut reads = 0;
        for (id, model) in &self.timelines {
            let timeline = repo.get_timeline(*id).unwrap();
            let mut lsns: Vec<Lsn> = model.wal.iter().map(|(lsn, _)| *lsn).collect();
            while lsns.len() > max_lsns {
                lsns.swap_remove(rng.range(0, lsns.len() as u64) as usize);
            }
            if let Some((_, bp)) = model.ancestor {
                lsns.push(bp);
            }
            lsns.push(model.cutoff);
            lsns.extend(lsns.clone().iter().map(|l| l.saturating_sub(1u64)));
            lsns.retain(|l| *l <= timeline.last_record_lsn());
            lsns.sort();
            lsns.dedup();
            let mut sorted = keys.to_vec();
            sorted.sort();
            for lsn in &lsns {
                for key in keys {
                    check_read(self, &timeline, *key, *lsn);
                    reads += 1;
                }
                check_bulk_read(self, &timeline, &sorted, *lsn);
            }
        }
        reads
    }
}

pub fn ingest(timeline: &Timeline, lsn: Lsn, versions: &[(Key, Value)]) -> Result<(), RepoError> {
    let mut writer = timeline.writer();
    for (key, value) in versions {
        writer.put(*key, lsn, value.clone())?;
    }
    writer.finish_lsn(lsn).map(|_| ())
}

/// A bulk read of `keys` (ascending) at `lsn` gives each key's value in
/// order, or fails as a whole when some key's version is below the cutoff.
/// Small batches, so that several threads share the read.
pub fn check_bulk_read(model: &Model, timeline: &Timeline, keys: &[Key], lsn: Lsn) {
    let expected: Vec<Expected> = keys.iter().map(|key| model.expected(timeline.id(), *key, lsn)).collect();
    let mut got = Vec::new();
    let outcome = timeline.read_in_batches(keys, lsn, 4, |key, value| {
        got.push((key, value));
        Ok::<(), RepoError>(())
    });
    if expected.iter().any(|e| matches!(e, Expected::TooOld)) {
        assert!(matches!(outcome, Err(RepoError::TooOld { .. })), "timeline {} bulk read at {lsn}: {outcome:?}", timeline.id());
        return;
    }
    outcome.unwrap_or_else(|e| panic!("timeline {} bulk read at {lsn}: {e}", timeline.id()));
    assert_eq!(got.len(), keys.len());
    for ((key, value), (want_key, want)) in got.iter().zip(keys.iter().zip(&expected)) {
        assert_eq!(key, want_key);
        let Expected::Value(want) = want else { unreachable!() };
        assert_eq!(value, want, "timeline {} key {key:?} at {lsn} (bulk read)", timeline.id());
    }
}

pub fn check_read(model: &Model, timeline: &Timeline, key: Key, lsn: Lsn) {
    let expected = model.expected(timeline.id(), key, lsn);
    let got = timeline.get(key, lsn);
    match (&expected, got) {
        (Expected::Value(want), Ok(have)) => {
            assert_eq!(&have, want, "timeline {} key {key:?} at {lsn}", timeline.id())
        }
        (Expected::TooOld, Err(RepoError::TooOld { .. })) => {}
        (_, got) => panic!("timeline {} key {key:?} at {lsn}: expected {expected:?}, got {got:?}", timeline.id()),
    }
}

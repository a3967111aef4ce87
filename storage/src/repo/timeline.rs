//! A timeline: one branch of a tenant's history.
//!
//! It tracks three LSNs: `last_record_lsn` (every record at or below it has
//! been ingested), `disk_consistent_lsn` (every record at or below it is in
//! layer files named by the index; after a restart ingest resumes above it)
//! and `remote_consistent_lsn` (kept for the backup worker; not used here).
//! A branch has an ancestor timeline and a branch LSN: reads at or below the
//! branch LSN (or below the child's own layers) continue in the ancestor.
//!
//! Ingest goes through a [`TimelineWriter`] (one at a time): `put` versions at
//! an LSN above `last_record_lsn`, then `finish_lsn` to publish that LSN to
//! readers. Freezing happens only at such record boundaries, so a frozen
//! layer `[start, end)` holds exactly the records with LSN in that range.
//!
//! Back-pressure: `finish_lsn` keeps the in-memory layers of a timeline (open
//! and frozen together) within [`RepoConfig::max_inmem_bytes`] by waiting for
//! [`Timeline::flush_frozen_layers`] running on another thread, or, when no
//! flush is running, by flushing frozen layers itself; see
//! [`TimelineWriter::finish_lsn`].

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use super::bulk_read::BulkReadStats;
use super::index::IndexFile;
use super::inmem_layer::InMemoryLayer;
use super::layer_file::{BlockCache, LayerKind, LayerName, LayerWriter};
use super::layer_map::{LayerMap, PersistentLayer};
use super::reconstruct::{with_checksum, Collector, Redo, RedoItem};
use super::{CrashPoints, RepoConfig, RepoError, Result, TimelineId};
use crate::key::{Key, KeyRange};
use crate::lsn::Lsn;
use crate::value::Value;

/// What all timelines of a repository share.
pub(crate) struct Shared {
    pub conf: RepoConfig,
    /// The settings a tenant may change while it runs (checkpoint distance
    /// and timeout, compaction and image thresholds, GC horizon, PITR
    /// interval: see `Repository::retune`), `conf` with the tenant's
    /// overrides. Read these from here, not from `conf`.
    pub tuned: parking_lot::RwLock<RepoConfig>,
    pub redo: Arc<dyn Redo>,
    pub crash: Arc<CrashPoints>,
    pub page_cache: super::page_cache::PageCache,
}

struct WriterState {
    /// The LSN of versions put but not yet finished.
    pending_lsn: Option<Lsn>,
    /// Where the next in-memory layer starts.
    next_layer_start: Lsn,
}

/// How much ingest has been held back on a timeline (since it was loaded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackpressureStats {
    /// Waits of `finish_lsn` for a flush running on another thread.
    pub waits: u64,
    /// Time spent in those waits.
    pub wait_time: Duration,
    /// Frozen layers the writer flushed itself because no flush was running.
    pub writer_flushed_layers: u64,
}

#[derive(Default)]
struct BackpressureCounters {
    waits: AtomicU64,
    wait_nanos: AtomicU64,
    writer_flushed_layers: AtomicU64,
}

/// Longest single wait of a writer under back-pressure before it looks again
/// (whether the flush it waits for is still running, or ended with an error).
const BACKPRESSURE_RECHECK: Duration = Duration::from_millis(100);

/// Bound on the layer-file blocks one bulk read keeps parsed.
const BULK_READ_CACHE_BYTES: usize = 32 << 20;

pub struct Timeline {
    id: TimelineId,
    dir: PathBuf,
    pub(crate) shared: Arc<Shared>,
    ancestor: Option<Arc<Timeline>>,
    ancestor_lsn: Lsn,
    pub(crate) layers: RwLock<Arc<LayerMap>>,
    last_record_lsn: Mutex<Lsn>,
    lsn_advanced: Condvar,
    disk_consistent_lsn: AtomicU64,
    remote_consistent_lsn: AtomicU64,
    gc_cutoff: AtomicU64,
    pub(crate) next_layer_seq: AtomicU64,
    writer: Mutex<WriterState>,
    /// Held by whoever is writing frozen layers out (a flusher, or the writer).
    flush_lock: Mutex<()>,
    /// Frozen layers written out so far; bumped (and `layer_flushed`
    /// notified) after each one, for writers waiting under back-pressure.
    flushed_layers: Mutex<u64>,
    layer_flushed: Condvar,
    backpressure: BackpressureCounters,
    pub(crate) compaction_lock: Mutex<()>,
    index_lock: Mutex<()>,
    /// A view loaded by someone who does not own the timeline (the layers
    /// worker): it removes no files and writes no index.
    pub(crate) read_only: bool,
    /// Swap generation and layer-work grants ([`super::layer_work`]).
    pub(crate) generation: AtomicU64,
    pub(crate) swap_lock: Mutex<()>,
    pub(crate) grants: Mutex<super::layer_work::Grants>,
    /// (time, last_record_lsn) samples, oldest first, for the PITR cutoff.
    lsn_history: Mutex<VecDeque<(SystemTime, Lsn)>>,
}

impl Timeline {
    /// Builds a timeline from its index; unless `read_only`, files the index
    /// does not name are removed.
    pub(crate) fn load(
        dir: PathBuf,
        index: IndexFile,
        ancestor: Option<Arc<Timeline>>,
        shared: Arc<Shared>,
        read_only: bool,
    ) -> Result<Timeline> {
        let mut named = BTreeSet::new();
        let mut historic = Vec::new();
        for (name, size) in &index.layers {
            let file_name = name.file_name();
            historic.push(Arc::new(PersistentLayer::new(*name, dir.join(&file_name), *size, shared.crash.clone())));
            named.insert(file_name);
        }
        named.insert(super::index::INDEX_FILE_NAME.to_string());
        for entry in std::fs::read_dir(&dir).map_err(super::io_error(&dir))?.filter(|_| !read_only) {
            let entry = entry.map_err(super::io_error(&dir))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if !named.contains(&file_name) {
                std::fs::remove_file(entry.path()).map_err(super::io_error(entry.path()))?;
            }
        }
        let dcl = index.disk_consistent_lsn;
        Ok(Timeline {
            id: index.timeline_id,
            dir,
            shared,
            ancestor,
            ancestor_lsn: index.ancestor.map(|(_, lsn)| lsn).unwrap_or_default(),
            layers: RwLock::new(Arc::new(LayerMap { open: None, frozen: Vec::new(), historic })),
            last_record_lsn: Mutex::new(dcl),
            lsn_advanced: Condvar::new(),
            disk_consistent_lsn: AtomicU64::new(dcl.0),
            remote_consistent_lsn: AtomicU64::new(0),
            gc_cutoff: AtomicU64::new(index.gc_cutoff.0),
            next_layer_seq: AtomicU64::new(index.next_layer_seq),
            writer: Mutex::new(WriterState { pending_lsn: None, next_layer_start: dcl + 1 }),
            flush_lock: Mutex::new(()),
            flushed_layers: Mutex::new(0),
            layer_flushed: Condvar::new(),
            backpressure: BackpressureCounters::default(),
            compaction_lock: Mutex::new(()),
            index_lock: Mutex::new(()),
            read_only,
            generation: AtomicU64::new(super::layer_work::initial_generation()),
            swap_lock: Mutex::new(()),
            grants: Mutex::new(super::layer_work::Grants::default()),
            lsn_history: Mutex::new(
                index.lsn_history.iter().map(|(secs, lsn)| (SystemTime::UNIX_EPOCH + Duration::from_secs(*secs), *lsn)).collect(),
            ),
        })
    }

    pub fn id(&self) -> TimelineId {
        self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ancestor timeline and the branch LSN, for a branch.
    pub fn ancestor(&self) -> Option<(&Arc<Timeline>, Lsn)> {
        self.ancestor.as_ref().map(|a| (a, self.ancestor_lsn))
    }

    pub fn last_record_lsn(&self) -> Lsn {
        *self.last_record_lsn.lock()
    }

    pub fn disk_consistent_lsn(&self) -> Lsn {
        Lsn(self.disk_consistent_lsn.load(Ordering::SeqCst))
    }

    pub fn remote_consistent_lsn(&self) -> Lsn {
        Lsn(self.remote_consistent_lsn.load(Ordering::SeqCst))
    }

    pub fn set_remote_consistent_lsn(&self, lsn: Lsn) {
        self.remote_consistent_lsn.fetch_max(lsn.0, Ordering::SeqCst);
    }

    /// Reads below this LSN fail with [`RepoError::TooOld`].
    pub fn gc_cutoff(&self) -> Lsn {
        Lsn(self.gc_cutoff.load(Ordering::SeqCst))
    }

    pub(crate) fn raise_gc_cutoff(&self, cutoff: Lsn) {
        self.gc_cutoff.fetch_max(cutoff.0, Ordering::SeqCst);
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_layer_seq.fetch_add(1, Ordering::SeqCst)
    }

    /// The names of the layer files, for inspection.
    pub fn layer_names(&self) -> Vec<LayerName> {
        self.layers.read().historic.iter().map(|l| l.name).collect()
    }

    /// The layer files with their sizes, for inspection.
    pub fn layer_files(&self) -> Vec<(LayerName, u64)> {
        self.layers.read().historic.iter().map(|l| (l.name, l.file_size)).collect()
    }

    /// Bytes in layer files.
    pub fn layer_bytes(&self) -> u64 {
        self.layers.read().historic.iter().map(|l| l.file_size).sum()
    }

    /// Frozen in-memory layers not yet flushed.
    pub fn frozen_layer_count(&self) -> usize {
        self.layers.read().frozen.len()
    }

    /// Bytes held by frozen in-memory layers not yet flushed.
    pub fn frozen_bytes(&self) -> u64 {
        self.layers.read().frozen.iter().map(|l| l.size()).sum()
    }

    /// Bytes held by all in-memory layers: (open, frozen).
    pub fn inmem_bytes(&self) -> (u64, u64) {
        let map = self.layers.read();
        (map.open.as_ref().map_or(0, |l| l.size()), map.frozen.iter().map(|l| l.size()).sum())
    }

    /// How much back-pressure has held ingest back so far.
    pub fn backpressure_stats(&self) -> BackpressureStats {
        let c = &self.backpressure;
        BackpressureStats {
            waits: c.waits.load(Ordering::Relaxed),
            wait_time: Duration::from_nanos(c.wait_nanos.load(Ordering::Relaxed)),
            writer_flushed_layers: c.writer_flushed_layers.load(Ordering::Relaxed),
        }
    }

    /// The exclusive writer; blocks while another writer exists.
    pub fn writer(&self) -> TimelineWriter<'_> {
        TimelineWriter { timeline: self, state: self.writer.lock() }
    }

    /// Whether every ancestor has ingested what a read at `lsn` needs from
    /// it (each up to the branch point below it), so that such a read never
    /// waits. After a restart an ancestor re-ingests from its
    /// `disk_consistent_lsn`, which may lie below a child's branch point.
    pub fn ancestors_caught_up(&self, lsn: Lsn) -> bool {
        let (mut timeline, mut lsn) = (self, lsn);
        while let Some(ancestor) = &timeline.ancestor {
            lsn = lsn.min(timeline.ancestor_lsn);
            if ancestor.last_record_lsn() < lsn {
                return false;
            }
            timeline = ancestor;
        }
        true
    }

    /// Waits until `last_record_lsn >= lsn`.
    pub fn wait_lsn(&self, lsn: Lsn, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = self.last_record_lsn.lock();
        while *last < lsn {
            if self.lsn_advanced.wait_until(&mut last, deadline).timed_out() && *last < lsn {
                return Err(RepoError::WaitTimeout { timeline: self.id, lsn, last_record_lsn: *last });
            }
        }
        Ok(())
    }

    /// The value of `key` as of `lsn` (`None` if it has none); `lsn` must not
    /// be ahead of `last_record_lsn` (see [`wait_lsn`](Self::wait_lsn)) nor
    /// below the GC cutoff.
    pub fn get(&self, key: Key, lsn: Lsn) -> Result<Option<Bytes>> {
        let last = self.last_record_lsn();
        if lsn > last {
            return Err(RepoError::Invalid(format!("read of {key} at {lsn} on timeline {} ahead of last_record_lsn {last}", self.id)));
        }
        self.get_unchecked_ahead(key, lsn, true)
    }

    /// [`get`](Self::get) without the `last_record_lsn` check; with
    /// `check_cutoff` false also without the GC cutoff check (callers that
    /// know the LSN is retained, such as image creation).
    pub(crate) fn get_unchecked_ahead(&self, key: Key, lsn: Lsn, check_cutoff: bool) -> Result<Option<Bytes>> {
        let cached = self.shared.page_cache.lookup(self.id, key, lsn);
        // A value read at exactly this LSN before: nothing to walk. (Below
        // the GC cutoff the walk below reports "too old" instead.)
        if let Some((at, value)) = &cached {
            if *at == lsn && !(check_cutoff && lsn < self.gc_cutoff()) {
                return Ok(Some(value.clone()));
            }
        }
        let final_lsn = lsn <= self.last_record_lsn();
        let collector = self.collect(key, lsn, check_cutoff, cached, None)?;
        let newest_record = collector.records.first().map(|(lsn, _)| *lsn);
        let mut page = self.reconstruct(key, collector)?;
        if newest_record.is_none() && final_lsn {
            // A value read as stored is a slice of its layer-file block (16
            // KiB or more once decompressed): the cache keeps a copy of the
            // value alone, not the whole block.
            page = page.map(|value| Bytes::copy_from_slice(&value));
        }
        if let (Some(record_lsn), Some(page)) = (newest_record, &page) {
            self.shared.page_cache.insert(self.id, key, record_lsn, page.clone());
        }
        // Also at the read LSN, for the next read there (hot pages, relation
        // sizes): only once no more versions can arrive at or below it, which
        // is not yet so for the writer's reads at its pending LSN.
        if let (true, Some(value)) = (final_lsn, &page) {
            if newest_record != Some(lsn) {
                self.shared.page_cache.insert(self.id, key, lsn, value.clone());
            }
        }
        Ok(page)
    }

    /// The values of `keys` (ascending, typically a run of neighbouring
    /// relation blocks) as of `lsn`, in the same order: a bulk read. Each
    /// layer-file block it needs is read and parsed once for all the keys,
    /// not once per key, and the pages it rebuilds are not put in the page
    /// cache (a bulk read would only push out the pages that reads come
    /// back to). Same rules for `lsn` as [`get`](Self::get). Runs redo on
    /// the calling thread; callers spread batches over threads (see
    /// [`RepoConfig::read_parallelism`]).
    pub fn get_many(&self, keys: &[Key], lsn: Lsn) -> Result<Vec<Option<Bytes>>> {
        self.get_batch(keys, lsn, true).map(|(values, _)| values)
    }

    /// [`get_many`](Self::get_many), also saying what it took; with
    /// `check_cutoff` false without the GC cutoff check (image creation at
    /// `disk_consistent_lsn`).
    pub(crate) fn get_batch(&self, keys: &[Key], lsn: Lsn, check_cutoff: bool) -> Result<(Vec<Option<Bytes>>, BulkReadStats)> {
        let last = self.last_record_lsn();
        if lsn > last {
            return Err(RepoError::Invalid(format!("read at {lsn} on timeline {} ahead of last_record_lsn {last}", self.id)));
        }
        let started = Instant::now();
        let mut stats = BulkReadStats { keys: keys.len() as u64, ..BulkReadStats::default() };
        let mut blocks = BlockCache::new(BULK_READ_CACHE_BYTES);
        let mut collectors = Vec::with_capacity(keys.len());
        for &key in keys {
            let cached = self.shared.page_cache.lookup(self.id, key, lsn);
            if let Some((at, value)) = &cached {
                if *at == lsn && !(check_cutoff && lsn < self.gc_cutoff()) {
                    collectors.push((key, Err(value.clone())));
                    continue;
                }
            }
            let collector = self.collect(key, lsn, check_cutoff, cached, Some(&mut blocks))?;
            if !collector.records.is_empty() {
                stats.redone += 1;
                stats.records += collector.records.len() as u64;
            }
            collectors.push((key, Ok(collector)));
        }
        drop(blocks);
        let gathered = Instant::now();
        stats.gather = gathered - started;
        // The keys that need redo go to the redo workers together. A stored
        // image (a page from a record's full-page image, say) gets its
        // checksum like a rebuilt page.
        let checksummed = |key: Key, page: Bytes| if self.shared.conf.data_checksums { with_checksum(key, page) } else { page };
        let mut values = Vec::with_capacity(keys.len());
        let mut pending = Vec::new();
        for (key, collected) in collectors {
            match collected.map(Collector::into_redo_input) {
                Err(cached) => values.push(Some(cached)),
                Ok(Ok(value)) => values.push(value.map(|page| checksummed(key, page))),
                Ok(Err((base, records))) => {
                    pending.push((values.len(), key, base, records));
                    values.push(None);
                }
            }
        }
        let items: Vec<RedoItem<'_>> = pending.iter().map(|(_, key, base, records)| RedoItem { key: *key, base, records }).collect();
        let rebuilt = self.shared.redo.apply_many(&items);
        for ((index, key, _, records), page) in pending.iter().zip(rebuilt) {
            let lsn = records.last().map(|(lsn, _)| *lsn).unwrap_or_default();
            let page = page.map_err(|error| RepoError::Redo { key: *key, lsn, error })?;
            values[*index] = Some(checksummed(*key, page));
        }
        stats.redo = gathered.elapsed();
        Ok((values, stats))
    }

    /// Gathers the versions of `key` needed at `lsn`: this timeline's layers,
    /// then its ancestors' at the branch LSN, down to an image, a will-init
    /// record or the `floor` (a cached value at or below `lsn`).
    fn collect(
        &self,
        key: Key,
        lsn: Lsn,
        check_cutoff: bool,
        floor: Option<(Lsn, Bytes)>,
        mut blocks: Option<&mut BlockCache>,
    ) -> Result<Collector> {
        let mut collector = Collector { floor, ..Collector::default() };
        let mut timeline = self;
        let mut read_lsn = lsn;
        let mut check_cutoff = check_cutoff;
        loop {
            let map = timeline.layers.read().clone();
            if check_cutoff {
                let cutoff = timeline.gc_cutoff();
                if read_lsn < cutoff {
                    return Err(RepoError::TooOld { timeline: timeline.id, key, lsn, cutoff });
                }
            }
            let cont = map.search(key, read_lsn + 1, &mut collector, blocks.as_deref_mut())?;
            if collector.done {
                break;
            }
            let Some(ancestor) = &timeline.ancestor else { break };
            let below = Lsn(cont.0 - 1);
            // At the branch LSN the ancestor keeps everything for us; below it
            // its own GC cutoff applies.
            check_cutoff = below < timeline.ancestor_lsn;
            read_lsn = below.min(timeline.ancestor_lsn);
            timeline = ancestor;
            if timeline.last_record_lsn() < read_lsn {
                timeline.wait_lsn(read_lsn, self.shared.conf.ancestor_wait_timeout)?;
            }
        }
        collector.end_of_walk();
        Ok(collector)
    }

    /// Runs redo over what [`collect`](Self::collect) gathered, and stamps
    /// the checksum if the tenant has them.
    fn reconstruct(&self, key: Key, collector: Collector) -> Result<Option<Bytes>> {
        let page = collector.reconstruct(key, self.shared.redo.as_ref()).map_err(|(lsn, error)| RepoError::Redo { key, lsn, error })?;
        Ok(match page {
            Some(value) if self.shared.conf.data_checksums => Some(with_checksum(key, value)),
            page => page,
        })
    }

    /// Keys in `range` that have a version at or below `lsn`, here or in ancestors.
    ///
    /// Keys never disappear, and an image layer at `J` holds every key of its
    /// range that exists at `J`; so a layer whose key range is covered by
    /// image layers at or above its last LSN (and at or below `lsn`) adds no
    /// key and is not read, nor is the ancestor once images cover `range`.
    pub fn collect_keys(&self, range: &KeyRange, lsn: Lsn) -> Result<BTreeSet<Key>> {
        let mut keys = BTreeSet::new();
        let mut timeline = self;
        let mut lsn = lsn;
        loop {
            let map = timeline.layers.read().clone();
            for mem in map.open.iter().chain(map.frozen.iter()) {
                mem.keys_below(lsn + 1, range, &mut keys);
            }
            let images_between = |low: Lsn, skip: Option<&Arc<PersistentLayer>>| -> Vec<KeyRange> {
                map.historic
                    .iter()
                    .filter(|l| l.name.is_image() && l.name.image_lsn() >= low && l.name.image_lsn() <= lsn)
                    .filter(|l| skip.is_none_or(|s| !Arc::ptr_eq(s, l)))
                    .map(|l| l.name.key_range)
                    .collect()
            };
            for layer in &map.historic {
                if layer.name.lsn_range.start > lsn || !layer.name.key_range.overlaps(range) {
                    continue;
                }
                let last_lsn = Lsn(layer.name.lsn_range.end.0 - 1);
                if super::gc::covered(&layer.name.key_range, images_between(last_lsn, Some(layer))) {
                    continue;
                }
                layer.reader()?.for_each_entry(|entry| {
                    if entry.lsn <= lsn && range.contains(entry.key) {
                        keys.insert(entry.key);
                    }
                    Ok(())
                })?;
            }
            match &timeline.ancestor {
                Some(ancestor) if !super::gc::covered(range, images_between(Lsn(0), None)) => {
                    lsn = lsn.min(timeline.ancestor_lsn);
                    timeline = ancestor;
                    if timeline.last_record_lsn() < lsn {
                        timeline.wait_lsn(lsn, self.shared.conf.ancestor_wait_timeout)?;
                    }
                }
                _ => return Ok(keys),
            }
        }
    }

    /// The last_record_lsn as of `time`, from samples taken during ingest.
    pub(crate) fn lsn_at_time(&self, time: SystemTime) -> Option<Lsn> {
        let history = self.lsn_history.lock();
        history.iter().rev().find(|(t, _)| *t <= time).map(|(_, lsn)| *lsn)
    }

    /// Samples "by this time last_record_lsn had reached this", at most one
    /// per `max(1 s, pitr_interval / 1024)`, kept (and persisted in the index)
    /// for `pitr_interval` plus an hour. A lookup for time T returns the newest
    /// sample taken at or before T, an LSN reached by T: so the PITR cutoff
    /// errs towards keeping more.
    fn record_lsn_sample(&self, lsn: Lsn) {
        let now = SystemTime::now();
        let pitr_interval = self.shared.tuned.read().pitr_interval;
        let spacing = (pitr_interval / 1024).max(Duration::from_secs(1));
        let mut history = self.lsn_history.lock();
        if history.back().is_some_and(|(t, _)| now.duration_since(*t).unwrap_or_default() < spacing) {
            return;
        }
        history.push_back((now, lsn));
        let keep = pitr_interval + Duration::from_secs(3600);
        while history.len() > 2 && history.front().is_some_and(|(t, _)| now.duration_since(*t).unwrap_or_default() > keep) {
            history.pop_front();
        }
    }

    /// The index as it would be with `historic` as the layer list.
    fn index_for(&self, historic: &[Arc<PersistentLayer>], dcl: Lsn, gc_cutoff: Lsn) -> IndexFile {
        let mut layers: Vec<_> = historic.iter().map(|l| (l.name, l.file_size)).collect();
        layers.sort_by_key(|(name, _)| (name.lsn_range.start, name.key_range.start, name.seq));
        IndexFile {
            timeline_id: self.id,
            ancestor: self.ancestor.as_ref().map(|a| (a.id, self.ancestor_lsn)),
            disk_consistent_lsn: dcl,
            gc_cutoff,
            next_layer_seq: self.next_layer_seq.load(Ordering::SeqCst),
            layers,
            lsn_history: self
                .lsn_history
                .lock()
                .iter()
                .map(|(t, lsn)| {
                    // Rounded up: the LSN had been reached by then too.
                    let since_epoch = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                    (since_epoch.as_secs() + u64::from(since_epoch.subsec_nanos() > 0), *lsn)
                })
                .collect(),
        }
    }

    /// Changes the set of layer files: writes the new index, then publishes
    /// the new map; removed files are unlinked when no reader holds them.
    /// `modify` is applied twice (for the index, then to the current map) and
    /// must only touch `historic` and `frozen`.
    pub(crate) fn replace_layers(&self, modify: impl Fn(&mut LayerMap), new_dcl: Option<Lsn>, new_gc_cutoff: Option<Lsn>) -> Result<()> {
        let _index = self.index_lock.lock();
        let mut next = (**self.layers.read()).clone();
        modify(&mut next);
        let dcl = new_dcl.unwrap_or(self.disk_consistent_lsn());
        let cutoff = new_gc_cutoff.unwrap_or(self.gc_cutoff()).max(self.gc_cutoff());
        self.index_for(&next.historic, dcl, cutoff).write(&self.dir, self.shared.conf.fsync, &self.shared.crash)?;
        let removed: Vec<Arc<PersistentLayer>> = {
            let mut guard = self.layers.write();
            let mut next = (**guard).clone();
            modify(&mut next);
            let removed = guard.historic.iter().filter(|old| !next.historic.iter().any(|new| Arc::ptr_eq(old, new))).cloned().collect();
            *guard = Arc::new(next);
            removed
        };
        self.disk_consistent_lsn.fetch_max(dcl.0, Ordering::SeqCst);
        for layer in removed {
            layer.delete_when_unused();
        }
        Ok(())
    }

    /// Publishes a changed layer map without writing an index (a read-only
    /// view following its owner's swaps).
    pub(crate) fn publish_in_memory(&self, modify: impl Fn(&mut LayerMap)) {
        let mut guard = self.layers.write();
        let mut next = (**guard).clone();
        modify(&mut next);
        *guard = Arc::new(next);
    }

    /// Writes every frozen in-memory layer as an L0 delta layer file, oldest
    /// first, advancing `disk_consistent_lsn` after each. Meant to run on a
    /// thread of its own, triggered when `finish_lsn` returns true: a writer
    /// held back by [`RepoConfig::max_inmem_bytes`] waits for it.
    pub fn flush_frozen_layers(&self) -> Result<()> {
        let _flush = self.flush_lock.lock();
        while self.flush_oldest_frozen()? {}
        Ok(())
    }

    /// Writes out the oldest frozen layer, if any; the caller holds `flush_lock`.
    fn flush_oldest_frozen(&self) -> Result<bool> {
        let Some(frozen) = self.layers.read().frozen.first().cloned() else { return Ok(false) };
        let lsn_range = frozen.lsn_range();
        let file = match frozen.key_range() {
            Some(key_range) => {
                let name =
                    LayerName { kind: LayerKind::Delta, level: 0, key_range, lsn_range: lsn_range.clone().into(), seq: self.next_seq() };
                let mut writer = LayerWriter::new(&self.dir, name, self.shared.conf.fsync)?;
                frozen.for_each(|key, lsn, value| writer.put_value(key, lsn, value))?;
                let (name, size) = writer.finish(&self.shared.crash)?;
                Some(Arc::new(PersistentLayer::new(name, self.dir.join(name.file_name()), size, self.shared.crash.clone())))
            }
            None => None,
        };
        self.replace_layers(
            |map| {
                map.frozen.retain(|l| !Arc::ptr_eq(l, &frozen));
                if let Some(file) = &file {
                    if !map.historic.iter().any(|h| Arc::ptr_eq(h, file)) {
                        map.historic.push(file.clone());
                    }
                }
            },
            Some(Lsn(lsn_range.end.0 - 1)),
            None,
        )?;
        *self.flushed_layers.lock() += 1;
        self.layer_flushed.notify_all();
        Ok(true)
    }

    /// Freezes the open layer if it has been open longer than `checkpoint_timeout`
    /// (waits for the current writer). Returns true if it froze one.
    pub fn maybe_freeze_on_timeout(&self) -> Result<bool> {
        let mut writer = self.writer();
        let expired =
            self.layers.read().open.as_ref().is_some_and(|open| open.opened_at().elapsed() >= self.shared.tuned.read().checkpoint_timeout);
        if expired && writer.state.pending_lsn.is_none() {
            writer.freeze()?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// The single writer of a timeline.
pub struct TimelineWriter<'a> {
    timeline: &'a Timeline,
    state: MutexGuard<'a, WriterState>,
}

impl<'a> TimelineWriter<'a> {
    /// Adds a version of `key` at `lsn`, which must be above `last_record_lsn`;
    /// readers see it once [`finish_lsn`](Self::finish_lsn) reaches `lsn`.
    pub fn put(&mut self, key: Key, lsn: Lsn, value: Value) -> Result<()> {
        let tl = self.timeline;
        let last = tl.last_record_lsn();
        if lsn <= last || self.state.pending_lsn.is_some_and(|p| lsn < p) {
            return Err(RepoError::Invalid(format!(
                "put of {key} at {lsn} on timeline {}: LSNs must increase (last_record_lsn {last})",
                tl.id
            )));
        }
        let open = {
            let existing = tl.layers.read().open.clone();
            match existing {
                Some(open) => open,
                None => {
                    let open = Arc::new(InMemoryLayer::new(self.state.next_layer_start));
                    let mut guard = tl.layers.write();
                    let mut next = (**guard).clone();
                    next.open = Some(open.clone());
                    *guard = Arc::new(next);
                    open
                }
            }
        };
        open.put(key, lsn, value);
        self.state.pending_lsn = Some(lsn);
        Ok(())
    }

    /// Publishes every version put at or below `lsn`; `lsn` may also advance
    /// past WAL that changed nothing. Freezes the open layer when
    /// `checkpoint_distance` or `checkpoint_timeout` is reached, and then
    /// returns true: the caller should have
    /// [`Timeline::flush_frozen_layers`] run in the background.
    ///
    /// Back-pressure: before returning, while frozen layers exist and the
    /// in-memory layers (open and frozen) hold more than
    /// [`RepoConfig::max_inmem_bytes`], it waits for flushing to catch up:
    /// - if a flush is running (another thread is in `flush_frozen_layers`),
    ///   it waits for that flush to write out a layer (woken by it, looking
    ///   again at least every 100 ms);
    /// - if none is running, the writer flushes the oldest frozen layers
    ///   itself, on its own thread, until the limit is met. So ingest never
    ///   waits for a flusher that does not exist, and an error of that flush
    ///   is returned here (`lsn` is published all the same).
    pub fn finish_lsn(&mut self, lsn: Lsn) -> Result<bool> {
        let tl = self.timeline;
        if self.state.pending_lsn.is_some_and(|p| lsn < p) {
            return Err(RepoError::Invalid(format!("finish_lsn({lsn}) below a pending put")));
        }
        {
            let mut last = tl.last_record_lsn.lock();
            if lsn < *last {
                return Err(RepoError::Invalid(format!("finish_lsn({lsn}) below last_record_lsn {}", *last)));
            }
            *last = lsn;
        }
        tl.lsn_advanced.notify_all();
        self.state.pending_lsn = None;
        tl.record_lsn_sample(lsn);
        let conf = tl.shared.tuned.read();
        let should_freeze = tl.layers.read().open.as_ref().is_some_and(|open| {
            lsn.distance_from(open.start_lsn()) >= conf.checkpoint_distance
                || open.size() >= conf.checkpoint_distance
                || open.opened_at().elapsed() >= conf.checkpoint_timeout
        });
        if should_freeze {
            self.freeze()?;
        }
        self.wait_for_flush_backpressure()?;
        Ok(should_freeze)
    }

    /// See [`finish_lsn`](Self::finish_lsn).
    fn wait_for_flush_backpressure(&mut self) -> Result<()> {
        let tl = self.timeline;
        let limit = tl.shared.tuned.read().inmem_limit();
        let over = || {
            let (open, frozen) = tl.inmem_bytes();
            frozen > 0 && open + frozen > limit
        };
        if !over() {
            return Ok(());
        }
        loop {
            // Read the flush count before looking again: a layer flushed
            // after this point ends the wait below at once.
            let seen = *tl.flushed_layers.lock();
            if !over() {
                return Ok(());
            }
            match tl.flush_lock.try_lock() {
                Some(_flush) => {
                    // Nobody is flushing: write out the oldest frozen layer ourselves.
                    if tl.flush_oldest_frozen()? {
                        tl.backpressure.writer_flushed_layers.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    let started = Instant::now();
                    let deadline = started + BACKPRESSURE_RECHECK;
                    let mut flushed = tl.flushed_layers.lock();
                    while *flushed == seen && !tl.layer_flushed.wait_until(&mut flushed, deadline).timed_out() {}
                    drop(flushed);
                    tl.backpressure.waits.fetch_add(1, Ordering::Relaxed);
                    tl.backpressure.wait_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            }
        }
    }

    /// Freezes the open layer at `last_record_lsn` (also an empty one, so that
    /// `disk_consistent_lsn` can advance over WAL that changed nothing).
    pub fn freeze(&mut self) -> Result<()> {
        let tl = self.timeline;
        if self.state.pending_lsn.is_some() {
            return Err(RepoError::Invalid("freeze with versions put but not finished".into()));
        }
        let end = tl.last_record_lsn() + 1;
        if end <= self.state.next_layer_start {
            return Ok(());
        }
        let mut guard = tl.layers.write();
        let mut next = (**guard).clone();
        let layer = next.open.take().unwrap_or_else(|| Arc::new(InMemoryLayer::new(self.state.next_layer_start)));
        layer.freeze(end);
        next.frozen.push(layer);
        *guard = Arc::new(next);
        self.state.next_layer_start = end;
        Ok(())
    }

    pub fn timeline(&self) -> &'a Timeline {
        self.timeline
    }

    /// The latest value of `key`, including versions put at the pending LSN
    /// (for ingest's read-modify-write of directories and sizes).
    pub fn get_latest(&self, key: Key) -> Result<Option<Bytes>> {
        let lsn = self.state.pending_lsn.unwrap_or_else(|| self.timeline.last_record_lsn());
        self.timeline.get_unchecked_ahead(key, lsn, true)
    }
}

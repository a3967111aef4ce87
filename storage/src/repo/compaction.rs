//! Compaction: L0 → L1 deltas, and image layers.
//!
//! **L0 → L1.** Once `compaction_threshold` L0 delta layers exist, all of them
//! (contiguous in LSN, each covering every key changed in its LSN range) are
//! merged in (key, LSN) order, streaming a block at a time, into L1 delta
//! layers that cover the union of their LSN ranges and partition the key space:
//! a new file is started at a key boundary once the current one reaches
//! `target_file_size` on disk. Entries are copied as stored, without decoding,
//! except values a format version 1 file compressed one by one: these are
//! copied uncompressed, for the new file's block compression to cover them.
//!
//! **Image layers.** The keys existing at `disk_consistent_lsn` are cut into
//! partitions of about `target_file_size` of pages, the partitions together
//! covering the whole key space. A partition whose delta depth (delta layers
//! with versions above its newest image) reaches `image_creation_threshold`,
//! or that has such deltas and whose newest image (oldest such delta, if it
//! has no image) lies `image_layer_distance` or more of WAL below,
//! gets an image layer at `disk_consistent_lsn` holding the materialized value
//! of each of its keys, rebuilt with a bulk read (`bulk_read.rs`: parallel
//! batches, each layer-file block read once per batch). A delta layer counts towards a partition's depth only
//! if it holds a version of one of the partition's keys: an L0
//! layer's key range spans every key changed in its LSN range, so a few
//! scattered changes would otherwise re-image every partition between them.
//!
//! Both run on a view of the timeline ([`LayerWork`]): they write their new
//! files first, then return a [`LayerSwap`] that the timeline's owner applies
//! to the layer map and the index in one step; replaced files are unlinked
//! once no reader holds them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use super::bulk_read::BULK_READ_BATCH_KEYS;
use super::gc::covered;
use super::layer_file::{LayerIter, LayerKind, LayerName, LayerReader, LayerWriter, LsnRange, RawEntry};
use super::layer_map::PersistentLayer;
use super::layer_work::{LayerSwap, LayerWork};
use super::timeline::Timeline;
use super::Result;
use crate::key::{Key, KeyRange};
use crate::lsn::Lsn;
use crate::value::Value;

/// What one compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// L0 files merged and bytes read from them.
    pub l0_merged: usize,
    pub l0_bytes: u64,
    /// L1 files written.
    pub l1_written: usize,
    /// Image layers written.
    pub images_written: usize,
}

/// Approximate size of one page, for partitioning.
const PAGE_SIZE: u64 = pg_constants::BLCKSZ as u64;

impl Timeline {
    /// L0 → L1 compaction (if enough L0s exist), then image layer creation,
    /// in-process: planned on this timeline and applied through layer swaps
    /// ([`super::layer_work`]), as the layers worker does from its view.
    pub fn compact(&self) -> Result<CompactionStats> {
        self.in_process(|work| work.compact(&|swap| self.apply_layer_swap(swap)))
    }

    /// L0 → L1 compaction alone, in-process (see [`compact`](Self::compact)).
    pub fn compact_level0(&self) -> Result<CompactionStats> {
        self.in_process(|work| self.plan_and_apply(work, LayerWork::plan_level0)).map(Option::unwrap_or_default)
    }

    /// Image layer creation alone, in-process (see [`compact`](Self::compact));
    /// returns how many image layers it wrote.
    pub fn create_image_layers(&self) -> Result<usize> {
        self.in_process(|work| self.plan_and_apply(work, LayerWork::plan_image_layers)).map(Option::unwrap_or_default)
    }

    /// Runs `pass` on this timeline as its own view, under a grant of its own.
    fn in_process<T>(&self, pass: impl FnOnce(&mut LayerWork<'_>) -> Result<T>) -> Result<T> {
        let _compaction = self.compaction_lock.lock();
        let grant = self.begin_layer_work(self.gc_cutoff(), Vec::new())?;
        pass(&mut LayerWork::new(self, &grant))
    }

    /// One planning step and its swap, applied here.
    fn plan_and_apply<'v, T>(
        &self,
        work: &mut LayerWork<'v>,
        plan: impl FnOnce(&mut LayerWork<'v>) -> Result<Option<(LayerSwap, T)>>,
    ) -> Result<Option<T>> {
        let Some((swap, result)) = plan(work)? else { return Ok(None) };
        work.commit(&swap, &|swap| self.apply_layer_swap(swap))?;
        Ok(Some(result))
    }
}

impl LayerWork<'_> {
    /// L0 → L1, then image layers, each committed through `owner` as soon as
    /// its files are written.
    pub fn compact(&mut self, owner: &dyn Fn(&LayerSwap) -> Result<u64>) -> Result<CompactionStats> {
        let mut stats = CompactionStats::default();
        if let Some((swap, level0)) = self.plan_level0()? {
            self.commit(&swap, owner)?;
            stats = level0;
        }
        if let Some((swap, images)) = self.plan_image_layers()? {
            self.commit(&swap, owner)?;
            stats.images_written = images;
        }
        Ok(stats)
    }

    /// Writes the L1 layers that replace all L0 delta layers of the view once
    /// there are at least `compaction_threshold` of them; returns the swap.
    pub fn plan_level0(&mut self) -> Result<Option<(LayerSwap, CompactionStats)>> {
        let view = self.view;
        let map = view.layers.read().clone();
        let mut level0: Vec<Arc<PersistentLayer>> =
            map.historic.iter().filter(|l| l.name.kind == LayerKind::Delta && l.name.level == 0).cloned().collect();
        if level0.len() < view.shared.tuned.read().compaction_threshold.max(1) {
            return Ok(None);
        }
        level0.sort_by_key(|l| l.name.lsn_range.start);
        let lsn_range: LsnRange = (level0[0].name.lsn_range.start..level0.iter().map(|l| l.name.lsn_range.end).max().unwrap()).into();
        let readers = level0.iter().map(|l| l.reader()).collect::<Result<Vec<Arc<LayerReader>>>>()?;

        let mut iters: Vec<LayerIter> = readers.iter().map(|r| r.iter()).collect();
        let mut heads: Vec<Option<RawEntry>> = Vec::with_capacity(iters.len());
        let mut heap = BinaryHeap::new();
        for (i, iter) in iters.iter_mut().enumerate() {
            let head = iter.next_entry()?;
            if let Some(entry) = &head {
                heap.push(Reverse((entry.key, entry.lsn, i)));
            }
            heads.push(head);
        }

        let conf = &view.shared.conf;
        let mut written: Vec<(LayerName, u64)> = Vec::new();
        let mut writer: Option<LayerWriter> = None;
        while let Some(Reverse((key, _, i))) = heap.pop() {
            let entry = heads[i].take().expect("heap entries have heads");
            heads[i] = iters[i].next_entry()?;
            if let Some(next) = &heads[i] {
                heap.push(Reverse((next.key, next.lsn, i)));
            }
            let new_key = writer.as_ref().is_some_and(|w| w.last_key() != Some(key));
            if new_key && writer.as_ref().is_some_and(|w| w.size() >= conf.target_file_size) {
                written.push(self.finish_l1(writer.take().unwrap())?);
            }
            if writer.is_none() {
                let name = LayerName {
                    kind: LayerKind::Delta,
                    level: 1,
                    key_range: KeyRange::new(key, Key::MAX),
                    lsn_range,
                    seq: self.next_seq()?,
                };
                writer = Some(LayerWriter::new(view.dir(), name, conf.fsync)?);
            }
            let entry = readers[i].uncompressed_entry(entry)?;
            writer.as_mut().unwrap().put_raw(entry.key, entry.lsn, entry.flags, &entry.bytes)?;
        }
        if let Some(writer) = writer {
            written.push(self.finish_l1(writer)?);
        }
        view.shared.crash.hit("compaction: L1 layers written")?;

        let stats = CompactionStats {
            l0_merged: level0.len(),
            l0_bytes: level0.iter().map(|l| l.file_size).sum(),
            l1_written: written.len(),
            images_written: 0,
        };
        let swap = LayerSwap { generation: self.generation, remove: level0.iter().map(|l| l.name).collect(), add: written, gc: None };
        Ok(Some((swap, stats)))
    }

    fn finish_l1(&self, mut writer: LayerWriter) -> Result<(LayerName, u64)> {
        let last = writer.last_key().expect("an L1 writer has entries");
        writer.set_key_end(last.next())?;
        writer.finish(&self.view.shared.crash)
    }

    /// Writes image layers at the view's `disk_consistent_lsn` for the key
    /// partitions whose delta depth reaches `image_creation_threshold`;
    /// returns the swap that adds them and how many there are.
    pub fn plan_image_layers(&mut self) -> Result<Option<(LayerSwap, usize)>> {
        let view = self.view;
        let lsn = view.disk_consistent_lsn();
        // Reads at disk_consistent_lsn are intact even if it is below the GC
        // cutoff: no image layer is newer than it, and GC removes a layer only
        // when images at or above the layer's end cover it.
        if !lsn.is_valid() {
            return Ok(None);
        }
        let map = view.layers.read().clone();
        let keys = view.collect_keys(&KeyRange::ALL, lsn)?;
        let conf = view.shared.tuned.read().clone();
        let keys_per_partition = (conf.target_file_size / PAGE_SIZE).max(1) as usize;
        let keys: Vec<Key> = keys.into_iter().collect();
        let mut written = Vec::new();
        for (i, chunk) in keys.chunks(keys_per_partition).enumerate() {
            let start = if i == 0 { Key::MIN } else { chunk[0] };
            let end = keys.get((i + 1) * keys_per_partition).copied().unwrap_or(Key::MAX);
            let partition = KeyRange::new(start, end);
            let newest_image = newest_covering_image(&map.historic, &partition, lsn);
            if newest_image == Some(lsn) {
                continue;
            }
            let mut depth = 0;
            let mut oldest_delta = lsn;
            for l in &map.historic {
                if l.name.kind == LayerKind::Delta
                    && l.name.key_range.overlaps(&partition)
                    && l.name.lsn_range.start <= lsn
                    && newest_image.is_none_or(|image| l.name.lsn_range.end > image + 1)
                    && l.reader()?.has_key_in(&partition)?
                {
                    depth += 1;
                    oldest_delta = oldest_delta.min(l.name.lsn_range.start);
                }
            }
            let since = lsn.0.saturating_sub(newest_image.unwrap_or(oldest_delta).0);
            let far = conf.image_layer_distance > 0 && since >= conf.image_layer_distance;
            if depth == 0 || (depth < conf.image_creation_threshold.max(1) && !far) {
                continue;
            }
            let name = LayerName {
                kind: LayerKind::Image,
                level: 0,
                key_range: partition,
                lsn_range: (lsn..lsn + 1).into(),
                seq: self.next_seq()?,
            };
            let mut writer = LayerWriter::new(view.dir(), name, conf.fsync)?;
            view.bulk_read(chunk, lsn, BULK_READ_BATCH_KEYS, false, |key, page| match page {
                Some(page) => writer.put_value(key, lsn, &Value::Image(page)),
                None => Ok(()),
            })?;
            written.push(writer.finish(&view.shared.crash)?);
        }
        if written.is_empty() {
            return Ok(None);
        }
        view.shared.crash.hit("image creation: layers written")?;
        let count = written.len();
        Ok(Some((LayerSwap { generation: self.generation, remove: Vec::new(), add: written, gc: None }, count)))
    }
}

/// The newest LSN at or below `lsn` whose image layers together cover
/// `partition`. Partitions are cut afresh from the keys of each run, so a
/// new key moves the boundaries of every later partition: the images an
/// earlier run wrote still cover them, but only together.
fn newest_covering_image(historic: &[Arc<PersistentLayer>], partition: &KeyRange, lsn: Lsn) -> Option<Lsn> {
    let mut images: Vec<&LayerName> =
        historic.iter().map(|l| &l.name).filter(|n| n.is_image() && n.image_lsn() <= lsn && n.key_range.overlaps(partition)).collect();
    images.sort_by_key(|n| Reverse(n.image_lsn()));
    images
        .chunk_by(|a, b| a.image_lsn() == b.image_lsn())
        .find(|at_one_lsn| covered(partition, at_one_lsn.iter().map(|n| n.key_range).collect()))
        .map(|at_one_lsn| at_one_lsn[0].image_lsn())
}

/// Adds the layers a compaction or image creation wrote to the layer map's
/// historic list, once each (a retried swap may offer them again).
pub(super) fn add_new_layers(historic: &mut Vec<Arc<PersistentLayer>>, written: &[Arc<PersistentLayer>]) {
    for new in written {
        if !historic.iter().any(|h| Arc::ptr_eq(h, new)) {
            historic.push(new.clone());
        }
    }
}

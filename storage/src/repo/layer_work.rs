//! Layer work (compaction, image layers, GC) done on a view of a timeline and
//! swapped into the timeline's layer map by its owner in one step.
//!
//! The **owner** of a timeline is whoever ingests into it and serves reads
//! (the main worker). The **worker** plans and writes new layer files on a
//! [`Timeline`] it loaded read-only from the same directory
//! ([`Repository::open_read_only`](super::Repository::open_read_only)), or,
//! in-process, on the owner's timeline itself. They exchange two messages:
//!
//! 1. [`LayerWorkGrant`] (owner → worker, [`Timeline::begin_layer_work`]):
//!    the timeline's *swap generation*, a range of layer sequence numbers
//!    reserved for the pass's new files (made durable in the index first, so
//!    no flush ever reuses one), and what the worker cannot know from disk:
//!    `last_record_lsn`, the GC cutoff wanted now and the branch points.
//!    Granting also removes the files the previous pass wrote under its
//!    grant and never got swapped in (a killed or refused worker); files a
//!    swap took in are left to the layer map, which unlinks them once they
//!    have left it and no reader holds them.
//! 2. [`LayerSwap`] (worker → owner, [`Timeline::apply_layer_swap`]): the
//!    layers to drop, the new files to add (already durable under their final
//!    names) and, for GC, the new cutoff with the branch points it was
//!    computed for. The owner refuses a swap that no longer fits: another
//!    generation (a newer swap landed, or the owner restarted), a layer to
//!    drop that is gone, a file to add that is missing, has another size or a
//!    sequence number it did not grant, or (for GC) other branch points. Then
//!    the worker deletes the files it wrote and starts over from fresh state.
//!
//! An accepted swap writes the new index, then publishes the new layer map;
//! dropped files are unlinked when no reader of the owner holds them. The
//! worker applies the same swap to its view in memory only, so the next
//! step of its pass (images after L0 → L1, GC after images) sees the result.
//! [`LayerWork`] holds one pass's state on the worker's side.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::compaction::add_new_layers;
use super::layer_file::LayerName;
use super::layer_map::PersistentLayer;
use super::timeline::Timeline;
use super::{RepoError, Result};
use crate::lsn::Lsn;

/// Sequence numbers reserved per grant: far more files than a pass writes.
pub const SEQS_PER_GRANT: u64 = 1 << 16;

/// What the owner of a timeline grants one pass of layer work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerWorkGrant {
    /// The timeline's swap generation: the first swap must be based on it.
    pub generation: u64,
    /// Sequence numbers reserved for the files of this pass.
    pub seqs: Range<u64>,
    pub last_record_lsn: Lsn,
    pub disk_consistent_lsn: Lsn,
    /// The GC cutoff the owner would set now (never below the current one).
    pub gc_cutoff: Lsn,
    /// Branch LSNs of the timeline's children, sorted.
    pub branch_points: Vec<Lsn>,
}

/// A GC's part of a swap: raise the cutoff, valid only for these branch points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcChange {
    pub cutoff: Lsn,
    pub branch_points: Vec<Lsn>,
}

/// A change to a timeline's layer files, applied by its owner in one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerSwap {
    /// The generation the change was planned on.
    pub generation: u64,
    /// Layers that leave the layer map.
    pub remove: Vec<LayerName>,
    /// New layer files (durable under their final names) and their sizes.
    pub add: Vec<(LayerName, u64)>,
    pub gc: Option<GcChange>,
}

impl LayerSwap {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty() && self.gc.is_none()
    }
}

/// The owner's record of its current grant: the sequence numbers it handed
/// out, and those of files a swap took into the layer map. A granted file
/// never taken in is garbage once the next grant starts; one taken in is
/// unlinked by the layer map when it leaves it (not before its readers are
/// done), never by the grant cleanup.
#[derive(Default)]
pub(crate) struct Grants {
    seqs: Vec<Range<u64>>,
    adopted: std::collections::BTreeSet<u64>,
}

fn refused(timeline: &Timeline, why: String) -> RepoError {
    RepoError::SwapRefused(format!("timeline {}: {why}", timeline.id()))
}

/// A generation no earlier incarnation of the owner can have handed out
/// (nanoseconds since the epoch, shifted to leave room for increments).
pub(crate) fn initial_generation() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    nanos << 8
}

impl Timeline {
    /// The current swap generation.
    pub fn layer_generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Owner side: starts a pass of layer work. Removes the files of the
    /// previous grant that no swap took in (temporary files included),
    /// reserves [`SEQS_PER_GRANT`]
    /// sequence numbers (durably: the index is rewritten with the new
    /// `next_layer_seq`), and returns the grant. `gc_cutoff` and
    /// `branch_points` are the repository's (see
    /// [`Repository::begin_layer_work`](super::Repository::begin_layer_work)).
    pub fn begin_layer_work(&self, gc_cutoff: Lsn, branch_points: Vec<Lsn>) -> Result<LayerWorkGrant> {
        if self.read_only {
            return Err(RepoError::Invalid(format!("timeline {} is a read-only view: it grants no layer work", self.id())));
        }
        let _swap = self.swap_lock.lock();
        let mut grants = self.grants.lock();
        for entry in std::fs::read_dir(self.dir()).map_err(super::io_error(self.dir()))? {
            let entry = entry.map_err(super::io_error(self.dir()))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = LayerName::parse(file_name.strip_suffix(".tmp").unwrap_or(&file_name)) else { continue };
            let granted = grants.seqs.iter().any(|range| range.contains(&name.seq));
            if granted && !grants.adopted.contains(&name.seq) {
                std::fs::remove_file(entry.path()).map_err(super::io_error(entry.path()))?;
            }
        }
        let start = self.next_layer_seq.fetch_add(SEQS_PER_GRANT, Ordering::SeqCst);
        let seqs = start..start + SEQS_PER_GRANT;
        self.replace_layers(|_| {}, None, None)?;
        *grants = Grants { seqs: vec![seqs.clone()], adopted: Default::default() };
        Ok(LayerWorkGrant {
            generation: self.layer_generation(),
            seqs,
            last_record_lsn: self.last_record_lsn(),
            disk_consistent_lsn: self.disk_consistent_lsn(),
            gc_cutoff: gc_cutoff.max(self.gc_cutoff()),
            branch_points,
        })
    }

    /// Applies `swap` if it still fits (see the module documentation) and
    /// returns the new generation; otherwise fails with
    /// [`RepoError::SwapRefused`] and changes nothing. On a read-only view
    /// the swap changes only the in-memory layer map (the owner accepted it
    /// already), and the view takes `view_generation`, the owner's answer.
    pub fn apply_layer_swap(&self, swap: &LayerSwap) -> Result<u64> {
        self.apply_swap(swap, None)
    }

    /// Read-only side of [`apply_layer_swap`](Self::apply_layer_swap).
    pub(crate) fn adopt_layer_swap(&self, swap: &LayerSwap, owner_generation: u64) -> Result<()> {
        self.apply_swap(swap, Some(owner_generation)).map(|_| ())
    }

    fn apply_swap(&self, swap: &LayerSwap, owner_generation: Option<u64>) -> Result<u64> {
        let _swap = self.swap_lock.lock();
        let current = self.layer_generation();
        if swap.generation != current {
            return Err(refused(self, format!("the swap is based on generation {} but the timeline is at {current}", swap.generation)));
        }
        let map = self.layers.read().clone();
        for name in &swap.remove {
            if !map.historic.iter().any(|l| l.name == *name) {
                return Err(refused(self, format!("layer {} is no longer in the layer map", name.file_name())));
            }
        }
        let mut added = Vec::with_capacity(swap.add.len());
        for (name, size) in &swap.add {
            if map.historic.iter().any(|l| l.name == *name) {
                return Err(refused(self, format!("layer {} is in the layer map already", name.file_name())));
            }
            if !self.read_only && !self.grants.lock().seqs.iter().any(|r| r.contains(&name.seq)) {
                return Err(refused(self, format!("layer {} has a sequence number this owner did not grant", name.file_name())));
            }
            let path = self.dir().join(name.file_name());
            match std::fs::metadata(&path) {
                Ok(meta) if meta.len() == *size => {}
                Ok(meta) => return Err(refused(self, format!("layer {} has {} bytes, not {size}", name.file_name(), meta.len()))),
                Err(e) => return Err(refused(self, format!("layer {} cannot be found: {e}", name.file_name()))),
            }
            let layer = Arc::new(PersistentLayer::new(*name, path, *size, self.shared.crash.clone()));
            // Opening checks the file's header, trailer and block index.
            layer.reader()?;
            added.push(layer);
        }
        let modify = |map: &mut super::layer_map::LayerMap| {
            map.historic.retain(|h| !swap.remove.contains(&h.name));
            add_new_layers(&mut map.historic, &added);
        };
        let cutoff = swap.gc.as_ref().map(|gc| gc.cutoff);
        if let Some(cutoff) = cutoff {
            // Readers check the cutoff after taking their map snapshot, so
            // raising it before the new map is published keeps every read
            // either complete or refused.
            self.raise_gc_cutoff(cutoff);
        }
        match owner_generation {
            None => {
                self.replace_layers(modify, None, cutoff)?;
                self.grants.lock().adopted.extend(swap.add.iter().map(|(name, _)| name.seq));
            }
            Some(_) => self.publish_in_memory(modify),
        }
        let next = owner_generation.unwrap_or(current + 1);
        self.generation.store(next, Ordering::SeqCst);
        Ok(next)
    }
}

/// One pass of layer work on a view of a timeline: the view, the grant's
/// sequence numbers still free, and the generation the next swap is based on.
pub struct LayerWork<'a> {
    pub(crate) view: &'a Timeline,
    seqs: Range<u64>,
    pub(crate) generation: u64,
}

impl<'a> LayerWork<'a> {
    /// Starts a pass on `view` under `grant`. A read-only view takes the
    /// grant's generation (its own index may be older or newer: swaps based
    /// on a mismatch are refused by the owner and the pass starts over).
    pub fn new(view: &'a Timeline, grant: &LayerWorkGrant) -> LayerWork<'a> {
        if view.read_only {
            view.generation.store(grant.generation, Ordering::SeqCst);
        }
        LayerWork { view, seqs: grant.seqs.clone(), generation: grant.generation }
    }

    /// The generation the next swap must be based on.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn view(&self) -> &'a Timeline {
        self.view
    }

    /// The next free sequence number of the grant.
    pub(crate) fn next_seq(&mut self) -> Result<u64> {
        let seq = self.seqs.next().ok_or_else(|| RepoError::Invalid("the pass used every sequence number of its grant".into()))?;
        Ok(seq)
    }

    /// Has the owner apply `swap` (through `owner`), then applies it to the
    /// view. If the owner refuses, the files the swap would have added are
    /// deleted (nothing names them) and the refusal is returned.
    pub fn commit(&mut self, swap: &LayerSwap, owner: &dyn Fn(&LayerSwap) -> Result<u64>) -> Result<()> {
        match owner(swap) {
            Ok(generation) => {
                if self.view.layer_generation() != generation {
                    self.view.adopt_layer_swap(swap, generation)?;
                }
                self.generation = generation;
                Ok(())
            }
            Err(e) => {
                if matches!(e, RepoError::SwapRefused(_)) {
                    let in_view = self.view.layer_names();
                    for (name, _) in swap.add.iter().filter(|(name, _)| !in_view.contains(name)) {
                        let _ = std::fs::remove_file(self.view.dir().join(name.file_name()));
                    }
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;
    use crate::repo::{Redo, RedoError, RepoConfig, Repository, TimelineId};
    use crate::value::{Value, WalRecordValue};
    use bytes::Bytes;

    struct NoRedo;
    impl Redo for NoRedo {
        fn apply(&self, key: Key, _: Option<Bytes>, _: &[(Lsn, WalRecordValue)]) -> Result<Bytes, RedoError> {
            Err(RedoError::Invalid(format!("no redo expected for {key}")))
        }
    }

    #[test]
    fn a_grant_removes_only_the_files_no_swap_took_in() {
        let dir = tempfile::tempdir().unwrap();
        let conf = RepoConfig { fsync: false, compaction_threshold: 2, ..RepoConfig::default() };
        let repo = Repository::open(dir.path(), conf, Arc::new(NoRedo)).unwrap();
        let tl = repo.create_timeline(TimelineId(1)).unwrap();
        for round in 1..=2u64 {
            let mut writer = tl.writer();
            for n in 0..4 {
                let lsn = Lsn(round * 0x100 + n * 8);
                writer.put(Key { field6: n as u32, ..Key::MIN }, lsn, Value::Image(Bytes::from(vec![round as u8; 64]))).unwrap();
                writer.finish_lsn(lsn).unwrap();
            }
            writer.freeze().unwrap();
            drop(writer);
            tl.flush_frozen_layers().unwrap();
        }
        // A pass: an L1 swapped in, plus what a stopped worker leaves under
        // the same grant (a finished file and a temporary one, never swapped in).
        let grant = tl.begin_layer_work(Lsn(0), Vec::new()).unwrap();
        let mut work = LayerWork::new(&tl, &grant);
        let (swap, _) = work.plan_level0().unwrap().expect("two L0 layers to merge");
        work.commit(&swap, &|swap| tl.apply_layer_swap(swap)).unwrap();
        let l1 = swap.add[0].0;
        let stray = LayerName { seq: grant.seqs.end - 1, ..l1 }.file_name();
        let stray_tmp = format!("{}.tmp", LayerName { seq: grant.seqs.end - 2, ..l1 }.file_name());
        std::fs::write(tl.dir().join(&stray), b"stray").unwrap();
        std::fs::write(tl.dir().join(&stray_tmp), b"stray").unwrap();

        // A reader's snapshot holds the L1 while a later swap drops it.
        let snapshot = tl.layers.read().clone();
        let drop_l1 = LayerSwap { generation: tl.layer_generation(), remove: vec![l1], ..LayerSwap::default() };
        tl.apply_layer_swap(&drop_l1).unwrap();

        // The next grant removes the strays, but not the file the reader holds.
        tl.begin_layer_work(Lsn(0), Vec::new()).unwrap();
        assert!(!tl.dir().join(&stray).exists(), "a file no swap took in survived the next grant");
        assert!(!tl.dir().join(&stray_tmp).exists(), "a temporary file survived the next grant");
        assert!(tl.dir().join(l1.file_name()).exists(), "the grant removed a layer a reader still holds");
        drop(snapshot);
        assert!(!tl.dir().join(l1.file_name()).exists(), "the dropped layer outlived its last reader");
    }
}

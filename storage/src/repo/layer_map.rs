//! The layer map: which layers hold versions of a key below an LSN.
//!
//! A timeline's layer map is an immutable value replaced as a whole
//! (copy-on-write behind an `RwLock<Arc<LayerMap>>`), so a reader's snapshot
//! keeps every layer it may visit alive — including files that compaction or
//! GC has already dropped from the map; those are unlinked when the last
//! snapshot holding them goes away.
//!
//! The search for (key, LSN) keeps an exclusive upper bound `cont` (initially
//! LSN + 1) and repeatedly picks, among the layers containing the key whose LSN
//! range starts below `cont`, the one reaching highest (its end capped at
//! `cont`; an image layer wins a tie). From a delta layer it takes the versions
//! in `[max(start, newest image below cont + 1), cont)`, from an image layer
//! its value; then `cont` drops to where it read from. The walk ends at an
//! image or a will-init record, or when no layer is left (the caller then
//! continues in the ancestor at the branch LSN).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::inmem_layer::InMemoryLayer;
use super::layer_file::{BlockCache, LayerName, LayerReader};
use super::reconstruct::Collector;
use super::{CrashPoints, Result};
use crate::key::Key;
use crate::lsn::Lsn;

/// A layer file of the timeline, opened on first use.
pub struct PersistentLayer {
    pub name: LayerName,
    pub path: PathBuf,
    pub file_size: u64,
    reader: OnceLock<Arc<LayerReader>>,
    delete_on_drop: AtomicBool,
    crash: Arc<CrashPoints>,
}

impl PersistentLayer {
    pub fn new(name: LayerName, path: PathBuf, file_size: u64, crash: Arc<CrashPoints>) -> PersistentLayer {
        PersistentLayer { name, path, file_size, reader: OnceLock::new(), delete_on_drop: AtomicBool::new(false), crash }
    }

    /// Opens the file on first use; a failure is reported (naming the file) and retried next time.
    pub fn reader(&self) -> Result<Arc<LayerReader>> {
        if let Some(reader) = self.reader.get() {
            return Ok(reader.clone());
        }
        let reader = Arc::new(LayerReader::open(&self.path, &self.name)?);
        Ok(self.reader.get_or_init(|| reader).clone())
    }

    /// Unlink the file once no snapshot holds this layer any more.
    pub fn delete_when_unused(&self) {
        self.delete_on_drop.store(true, Ordering::SeqCst);
    }
}

impl Drop for PersistentLayer {
    fn drop(&mut self) {
        if self.delete_on_drop.load(Ordering::SeqCst) && !self.crash.crashed() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[derive(Clone, Default)]
pub struct LayerMap {
    /// Receives ingest.
    pub open: Option<Arc<InMemoryLayer>>,
    /// Frozen, waiting to be flushed; oldest first.
    pub frozen: Vec<Arc<InMemoryLayer>>,
    /// Layer files, in no particular order.
    pub historic: Vec<Arc<PersistentLayer>>,
}

enum Candidate<'a> {
    Memory(&'a InMemoryLayer),
    File(&'a PersistentLayer),
}

impl LayerMap {
    /// Walks down from `cont` (exclusive) gathering versions of `key`; returns
    /// the LSN (exclusive) below which nothing was visited. A bulk read
    /// passes its `cache` of layer-file blocks.
    pub(crate) fn search(&self, key: Key, mut cont: Lsn, collector: &mut Collector, mut cache: Option<&mut BlockCache>) -> Result<Lsn> {
        while !collector.reached_floor(cont) {
            let mut best: Option<(Lsn, bool, Lsn, Candidate)> = None;
            let mut newest_image: Option<Lsn> = None;
            let mut pick = |capped_end: Lsn, is_image: bool, start: Lsn, candidate| match &best {
                Some((e, i, _, _)) if (*e, *i) >= (capped_end, is_image) => {}
                _ => best = Some((capped_end, is_image, start, candidate)),
            };
            for mem in self.open.iter().chain(self.frozen.iter()) {
                let range = mem.lsn_range();
                if range.start < cont {
                    pick(range.end.min(cont), false, range.start, Candidate::Memory(mem));
                }
            }
            for layer in &self.historic {
                let range = &layer.name.lsn_range;
                if range.start < cont && layer.name.key_range.contains(key) {
                    if layer.name.is_image() {
                        newest_image = newest_image.max(Some(range.start));
                    }
                    pick(range.end.min(cont), layer.name.is_image(), range.start, Candidate::File(layer));
                }
            }
            let Some((_, is_image, start, candidate)) = best else { break };
            let lower = match newest_image {
                Some(image_lsn) if !is_image && image_lsn >= start => image_lsn + 1,
                _ => start,
            };
            let mut versions = Vec::new();
            match candidate {
                Candidate::Memory(mem) => mem.get_versions(key, lower..cont, &mut versions),
                Candidate::File(layer) => match cache.as_deref_mut() {
                    Some(cache) => layer.reader()?.get_versions_cached(key, lower..cont, &mut versions, cache)?,
                    None => layer.reader()?.get_versions(key, lower..cont, &mut versions)?,
                },
            }
            collector.add_ascending(versions);
            cont = lower;
        }
        Ok(cont)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyRange;
    use crate::repo::LayerKind;

    fn layer(dir: &std::path::Path, crash: &Arc<CrashPoints>) -> Arc<PersistentLayer> {
        let name = LayerName { kind: LayerKind::Delta, level: 0, key_range: KeyRange::ALL, lsn_range: (Lsn(1)..Lsn(2)).into(), seq: 0 };
        let path = dir.join(name.file_name());
        std::fs::write(&path, b"x").unwrap();
        Arc::new(PersistentLayer::new(name, path, 1, crash.clone()))
    }

    #[test]
    fn replaced_files_go_when_the_last_reader_does() {
        let dir = tempfile::tempdir().unwrap();
        let crash = Arc::new(CrashPoints::default());
        let layer = layer(dir.path(), &crash);
        let reader_snapshot = layer.clone();
        layer.delete_when_unused();
        drop(layer);
        assert!(reader_snapshot.path.exists(), "unlinked while a reader holds it");
        let path = reader_snapshot.path.clone();
        drop(reader_snapshot);
        assert!(!path.exists());
    }

    #[test]
    fn a_crashed_process_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let crash = Arc::new(CrashPoints::default());
        let layer = layer(dir.path(), &crash);
        layer.delete_when_unused();
        crash.arm(Some(1));
        assert!(crash.hit("test").is_err());
        let path = layer.path.clone();
        drop(layer);
        assert!(path.exists());
    }
}

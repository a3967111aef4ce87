//! Image layers written straight from a bulk load (a base backup import).
//!
//! An import puts every page of the database at one LSN, and versions at
//! one LSN cannot be split across in-memory layers; through the in-memory
//! layer an import would need as much memory as the database. Instead,
//! runs of consecutive blocks of one relation fork go to image layer files
//! as they are read, at most `target_file_size` each, and are published
//! together by [`ImageImport::finish`]. Each file's key range is exactly its
//! run of blocks, so no other key (a size, a directory) reads as absent in
//! it; those small keys still go through the in-memory layer, and so do
//! small relation files ([`ImageImport::takes`]): a file per catalog table
//! would make hundreds of tiny layers that every read then walks past.

use std::sync::Arc;

use bytes::Bytes;

use super::compaction::add_new_layers;
use super::layer_file::{LayerKind, LayerName, LayerWriter};
use super::layer_map::PersistentLayer;
use super::timeline::Timeline;
use super::{RepoError, Result};
use crate::key::{Key, KeyRange, RelTag};
use crate::lsn::Lsn;
use crate::value::Value;

/// Image layers being written at one LSN; see the module documentation.
pub struct ImageImport<'a> {
    timeline: &'a Timeline,
    lsn: Lsn,
    /// The file being written and the key its run expects next.
    current: Option<(LayerWriter, Key)>,
    written: Vec<Arc<PersistentLayer>>,
}

impl Timeline {
    /// Starts writing image layers at `lsn` for a bulk load.
    pub fn import_images(&self, lsn: Lsn) -> ImageImport<'_> {
        ImageImport { timeline: self, lsn, current: None, written: Vec::new() }
    }
}

/// Relation files at least this large (or as large as a layer file, if
/// that is smaller) are written straight to image layers.
const DIRECT_MIN_BYTES: u64 = 1 << 20;

impl ImageImport<'_> {
    /// True if a relation file of `bytes` should go to image layers rather
    /// than the in-memory layer.
    pub fn takes(&self, bytes: u64) -> bool {
        bytes >= DIRECT_MIN_BYTES.min(self.timeline.shared.conf.target_file_size)
    }

    /// Adds the page image of block `blkno` of `rel`. Consecutive blocks of
    /// one fork share a file until it reaches `target_file_size`.
    pub fn put_block(&mut self, rel: RelTag, blkno: u32, page: Bytes) -> Result<()> {
        let key = Key::rel_block(rel, blkno);
        let target = self.timeline.shared.conf.target_file_size;
        let continues = self.current.as_ref().is_some_and(|(writer, next)| *next == key && writer.size() < target);
        if !continues {
            self.finish_file()?;
            let name = LayerName {
                kind: LayerKind::Image,
                level: 0,
                key_range: KeyRange::new(key, Key::MAX),
                lsn_range: (self.lsn..self.lsn + 1).into(),
                seq: self.timeline.next_seq(),
            };
            let writer = LayerWriter::new(self.timeline.dir(), name, self.timeline.shared.conf.fsync)?;
            self.current = Some((writer, key));
        }
        let next = blkno.checked_add(1).ok_or_else(|| RepoError::Invalid(format!("block number {blkno} of {rel} is too large")))?;
        let (writer, expected) = self.current.as_mut().expect("a file was started above");
        writer.put_value(key, self.lsn, &Value::Image(page))?;
        *expected = Key::rel_block(rel, next);
        Ok(())
    }

    /// Closes the current file: its key range ends after its last block.
    fn finish_file(&mut self) -> Result<()> {
        let Some((mut writer, end)) = self.current.take() else { return Ok(()) };
        writer.set_key_end(end)?;
        let (name, size) = writer.finish(&self.timeline.shared.crash)?;
        let path = self.timeline.dir().join(name.file_name());
        self.written.push(Arc::new(PersistentLayer::new(name, path, size, self.timeline.shared.crash.clone())));
        Ok(())
    }

    /// Publishes every file written (one update of the layer map and the
    /// index); returns how many. Files of an import dropped before this
    /// stay unreferenced in the timeline's directory, which a failed import
    /// deletes.
    pub fn finish(mut self) -> Result<usize> {
        self.finish_file()?;
        let written = std::mem::take(&mut self.written);
        if !written.is_empty() {
            self.timeline.replace_layers(|map| add_new_layers(&mut map.historic, &written), None, None)?;
        }
        Ok(written.len())
    }
}

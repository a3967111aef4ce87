//! The timeline index: the list of layer files plus the timeline's metadata.
//!
//! One file, `<timeline dir>/index`, replaced atomically (written as
//! `index.tmp`, fsynced, renamed over `index`, directory fsynced) whenever the
//! set of layer files, `disk_consistent_lsn` or the GC cutoff changes. A layer
//! file is on disk (durably, under its final name) before any index names it,
//! and is unlinked only after an index without it has replaced the old one. On
//! open, files in the directory that the index does not name (temp files,
//! layers of an interrupted flush or compaction, layers GC dropped) are removed.
//!
//! ## Format (version 1; integers little-endian)
//!
//! ```text
//! magic                 b"PSINDEX\0"
//! format version        u16 = 1
//! timeline id           u128
//! has ancestor          u8 (0 or 1)
//! ancestor timeline id  u128 (0 without ancestor)
//! ancestor (branch) LSN u64 (0 without ancestor)
//! disk_consistent_lsn   u64   every record at or below it is in the listed layers
//! gc cutoff             u64   reads below it fail with "too old"
//! next layer seq        u64   the next `seq` for a layer file name
//! layer count           u32
//! per layer:            name length u16 | file name (UTF-8) | file size u64
//! sample count          u32
//! per sample:           unix time in seconds u64 | LSN u64   "last_record_lsn had reached
//!                       this LSN by this time", oldest first (for the PITR cutoff)
//! crc32c                u32 of everything above
//! ```
//!
//! The layer file name carries its kind, level, key range and LSN range (see
//! `layer_file`), so the layer map is built from the index without opening
//! any layer file.

use std::path::Path;

use super::layer_file::{write_file_durably, LayerName};
use super::{io_error, CrashPoints, RepoError, Result, TimelineId};
use crate::lsn::Lsn;

pub const INDEX_FILE_NAME: &str = "index";
pub const INDEX_FORMAT_VERSION: u16 = 1;
const MAGIC: &[u8; 8] = b"PSINDEX\0";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexFile {
    pub timeline_id: TimelineId,
    pub ancestor: Option<(TimelineId, Lsn)>,
    pub disk_consistent_lsn: Lsn,
    pub gc_cutoff: Lsn,
    pub next_layer_seq: u64,
    pub layers: Vec<(LayerName, u64)>,
    /// (unix seconds, LSN) samples, oldest first.
    pub lsn_history: Vec<(u64, Lsn)>,
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.layers.len() * 160);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.timeline_id.0.to_le_bytes());
        let (ancestor_id, ancestor_lsn) = self.ancestor.unwrap_or((TimelineId(0), Lsn(0)));
        out.push(self.ancestor.is_some() as u8);
        out.extend_from_slice(&ancestor_id.0.to_le_bytes());
        out.extend_from_slice(&ancestor_lsn.0.to_le_bytes());
        out.extend_from_slice(&self.disk_consistent_lsn.0.to_le_bytes());
        out.extend_from_slice(&self.gc_cutoff.0.to_le_bytes());
        out.extend_from_slice(&self.next_layer_seq.to_le_bytes());
        out.extend_from_slice(&(self.layers.len() as u32).to_le_bytes());
        for (name, size) in &self.layers {
            let file_name = name.file_name();
            out.extend_from_slice(&(file_name.len() as u16).to_le_bytes());
            out.extend_from_slice(file_name.as_bytes());
            out.extend_from_slice(&size.to_le_bytes());
        }
        out.extend_from_slice(&(self.lsn_history.len() as u32).to_le_bytes());
        for (secs, lsn) in &self.lsn_history {
            out.extend_from_slice(&secs.to_le_bytes());
            out.extend_from_slice(&lsn.0.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8], path: &Path) -> Result<IndexFile> {
        let corrupt = |msg: &str| RepoError::Corrupt { path: path.to_path_buf(), msg: msg.to_string() };
        if bytes.len() < 4 {
            return Err(corrupt("too short"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().unwrap()) {
            return Err(corrupt("checksum mismatch"));
        }
        let mut pos = 0;
        let mut take = |n: usize| -> Result<&[u8]> {
            let slice = body.get(pos..pos + n).ok_or_else(|| corrupt("truncated"))?;
            pos += n;
            Ok(slice)
        };
        if take(8)? != MAGIC {
            return Err(corrupt("bad magic"));
        }
        let version = u16::from_le_bytes(take(2)?.try_into().unwrap());
        if version != INDEX_FORMAT_VERSION {
            return Err(corrupt(&format!("unsupported index format version {version}")));
        }
        let timeline_id = TimelineId(u128::from_le_bytes(take(16)?.try_into().unwrap()));
        let has_ancestor = take(1)?[0];
        let ancestor_id = TimelineId(u128::from_le_bytes(take(16)?.try_into().unwrap()));
        let ancestor_lsn = Lsn(u64::from_le_bytes(take(8)?.try_into().unwrap()));
        let disk_consistent_lsn = Lsn(u64::from_le_bytes(take(8)?.try_into().unwrap()));
        let gc_cutoff = Lsn(u64::from_le_bytes(take(8)?.try_into().unwrap()));
        let next_layer_seq = u64::from_le_bytes(take(8)?.try_into().unwrap());
        let count = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let ancestor = match has_ancestor {
            0 => None,
            1 => Some((ancestor_id, ancestor_lsn)),
            _ => return Err(corrupt("bad ancestor flag")),
        };
        let mut layers = Vec::with_capacity(count.min(1 << 20));
        for _ in 0..count {
            let len = u16::from_le_bytes(take(2)?.try_into().unwrap()) as usize;
            let name = std::str::from_utf8(take(len)?).map_err(|_| corrupt("layer name is not UTF-8"))?;
            let name = LayerName::parse(name).ok_or_else(|| corrupt(&format!("bad layer name {name:?}")))?;
            let size = u64::from_le_bytes(take(8)?.try_into().unwrap());
            layers.push((name, size));
        }
        let samples = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let mut lsn_history = Vec::with_capacity(samples.min(1 << 16));
        for _ in 0..samples {
            let secs = u64::from_le_bytes(take(8)?.try_into().unwrap());
            let lsn = Lsn(u64::from_le_bytes(take(8)?.try_into().unwrap()));
            lsn_history.push((secs, lsn));
        }
        if pos != body.len() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(IndexFile { timeline_id, ancestor, disk_consistent_lsn, gc_cutoff, next_layer_seq, layers, lsn_history })
    }

    /// Replaces `<dir>/index` atomically and durably.
    pub fn write(&self, dir: &Path, fsync: bool, crash: &CrashPoints) -> Result<()> {
        crash.hit("index: before write")?;
        write_file_durably(dir, INDEX_FILE_NAME, &self.encode(), fsync, crash, "index: written under temp name")?;
        crash.hit("index: replaced")
    }

    pub fn read(dir: &Path) -> Result<IndexFile> {
        let path = dir.join(INDEX_FILE_NAME);
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        IndexFile::decode(&bytes, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyRange;
    use crate::repo::LayerKind;

    #[test]
    fn round_trip_and_corruption_detected() {
        let index = IndexFile {
            timeline_id: TimelineId(0xabc),
            ancestor: Some((TimelineId(7), Lsn(0x1234))),
            disk_consistent_lsn: Lsn(0x5000),
            gc_cutoff: Lsn(0x100),
            next_layer_seq: 9,
            layers: vec![(
                LayerName { kind: LayerKind::Delta, level: 0, key_range: KeyRange::ALL, lsn_range: (Lsn(1)..Lsn(9)).into(), seq: 3 },
                4096,
            )],
            lsn_history: vec![(1_700_000_000, Lsn(0x100)), (1_700_000_060, Lsn(0x2000))],
        };
        let path = Path::new("index");
        let bytes = index.encode();
        assert_eq!(IndexFile::decode(&bytes, path).unwrap(), index);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(IndexFile::decode(&bad, path).is_err(), "flip at {i} not detected");
        }
    }
}

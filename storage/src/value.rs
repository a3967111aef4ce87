//! Values stored under a key at an LSN.
//!
//! A [`Value`] is either a full page image or a WAL record to apply to the
//! previous version. Records are either raw PostgreSQL records (applied by a
//! redo worker running the host's resource-manager redo on one target block)
//! or small [`ProjectRecord`]s applied in Rust (SLRU bits, visibility-map
//! clears, multixacts).
//!
//! ## Encoding (used inside layer files)
//!
//! All integers little-endian.
//!
//! ```text
//! Image:            0x00 | page bytes
//! WalRecord:        0x01 | flags u8 (bit 0 = will_init) | payload
//!   payload Postgres: 0x00 | target_block_id u8 | raw record bytes
//!   payload Project:  0x01 | format version u8 (= 1) | variant u8 | fields
//! ```
//!
//! Project-record variants (version 1):
//!
//! ```text
//! 0 ClogSetStatus     status u8 | n u32 | n × xid u32
//! 1 VmClearBits       flags u8 | new_heap_blkno (0|1 u8, u32) | old_heap_blkno (0|1 u8, u32)
//! 2 (read only)       multi u32 | offset u32, read as a MultixactOffsets of one entry
//! 3 MultixactMembers  first_offset u32 | n u32 | n × (xid u32, status u8)
//! 4 MultixactOffsets  n u32 | n × (multi u32, offset u32)
//! 5 VmTruncate        heap_blocks u32
//! ```
//!
//! A decoder rejects an unknown tag, variant or version, and trailing or
//! missing bytes, with a [`ValueDecodeError`] rather than guessing.

use bytes::{BufMut, Bytes, BytesMut};

/// Current format version of [`ProjectRecord`] encoding.
pub const PROJECT_RECORD_VERSION: u8 = 1;

const TAG_IMAGE: u8 = 0x00;
const TAG_WAL_RECORD: u8 = 0x01;
const PAYLOAD_POSTGRES: u8 = 0x00;
const PAYLOAD_PROJECT: u8 = 0x01;
const FLAG_WILL_INIT: u8 = 0x01;

/// One version of a key: a full image or a record on top of the previous version.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Value {
    Image(Bytes),
    WalRecord(WalRecordValue),
}

/// A record to apply to the previous version of its key.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WalRecordValue {
    /// The record builds the page from nothing; versions below it are not needed.
    pub will_init: bool,
    pub rec: RecordPayload,
}

/// The body of a record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RecordPayload {
    /// A raw PostgreSQL WAL record (header included, as in the WAL), applied
    /// by a redo worker to the block with block id `target_block_id`.
    Postgres { target_block_id: u8, raw: Bytes },
    /// A record of this project, applied in Rust.
    Project(ProjectRecord),
}

/// Transaction status values of `pg_xact` (two bits per xid).
pub const TRANSACTION_STATUS_COMMITTED: u8 = 0x01;
pub const TRANSACTION_STATUS_ABORTED: u8 = 0x02;
pub const TRANSACTION_STATUS_SUB_COMMITTED: u8 = 0x03;

/// Records applied in Rust, for pages whose PostgreSQL redo would touch the host.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ProjectRecord {
    /// Set the `pg_xact` status of `xids` (all on this CLOG page) to `status`.
    ClogSetStatus { status: u8, xids: Vec<u32> },
    /// Clear visibility-map bits `flags` for the heap blocks whose VM bits are on this VM page.
    VmClearBits { flags: u8, new_heap_blkno: Option<u32>, old_heap_blkno: Option<u32> },
    /// Set the starting offsets of multixacts in `pg_multixact/offsets`:
    /// `(multi, offset)` pairs, all on this page. One record carries every
    /// entry a WAL record writes on one page (a key has one version per LSN).
    MultixactOffsets { entries: Vec<(u32, u32)> },
    /// Write members from `first_offset` on in `pg_multixact/members`.
    MultixactMembers { first_offset: u32, members: Vec<MultiXactMember> },
    /// The relation was truncated to `heap_blocks` heap blocks: clear the
    /// visibility-map bits of the heap blocks at and past it on this VM page
    /// (`visibilitymap_prepare_truncate`).
    VmTruncate { heap_blocks: u32 },
}

/// One member of a multixact.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MultiXactMember {
    pub xid: u32,
    pub status: u8,
}

/// Bytes that are not a value of this format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode value: {0}")]
pub struct ValueDecodeError(pub String);

impl Value {
    /// True for an image or a will-init record: reconstruction stops here.
    pub fn will_init(&self) -> bool {
        match self {
            Value::Image(_) => true,
            Value::WalRecord(rec) => rec.will_init,
        }
    }

    pub fn is_image(&self) -> bool {
        matches!(self, Value::Image(_))
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode_into(&mut out);
        out.freeze()
    }

    pub fn encode_into(&self, out: &mut BytesMut) {
        match self {
            Value::Image(page) => {
                out.put_u8(TAG_IMAGE);
                out.put_slice(page);
            }
            Value::WalRecord(rec) => {
                out.put_u8(TAG_WAL_RECORD);
                out.put_u8(if rec.will_init { FLAG_WILL_INIT } else { 0 });
                match &rec.rec {
                    RecordPayload::Postgres { target_block_id, raw } => {
                        out.put_u8(PAYLOAD_POSTGRES);
                        out.put_u8(*target_block_id);
                        out.put_slice(raw);
                    }
                    RecordPayload::Project(record) => {
                        out.put_u8(PAYLOAD_PROJECT);
                        record.encode_into(out);
                    }
                }
            }
        }
    }

    /// Decodes what [`Value::encode`] wrote; `bytes` is sliced, not copied.
    pub fn decode(bytes: &Bytes) -> Result<Value, ValueDecodeError> {
        let tag = *bytes.first().ok_or_else(|| ValueDecodeError("empty".into()))?;
        match tag {
            TAG_IMAGE => Ok(Value::Image(bytes.slice(1..))),
            TAG_WAL_RECORD => {
                if bytes.len() < 3 {
                    return Err(ValueDecodeError("record header truncated".into()));
                }
                let flags = bytes[1];
                if flags & !FLAG_WILL_INIT != 0 {
                    return Err(ValueDecodeError(format!("unknown record flags {flags:#x}")));
                }
                let will_init = flags & FLAG_WILL_INIT != 0;
                let rec = match bytes[2] {
                    PAYLOAD_POSTGRES => {
                        let target_block_id = *bytes.get(3).ok_or_else(|| ValueDecodeError("postgres record truncated".into()))?;
                        RecordPayload::Postgres { target_block_id, raw: bytes.slice(4..) }
                    }
                    PAYLOAD_PROJECT => RecordPayload::Project(ProjectRecord::decode(&bytes[3..])?),
                    other => return Err(ValueDecodeError(format!("unknown record payload tag {other}"))),
                };
                Ok(Value::WalRecord(WalRecordValue { will_init, rec }))
            }
            other => Err(ValueDecodeError(format!("unknown value tag {other}"))),
        }
    }
}

impl ProjectRecord {
    pub fn encode_into(&self, out: &mut BytesMut) {
        out.put_u8(PROJECT_RECORD_VERSION);
        match self {
            ProjectRecord::ClogSetStatus { status, xids } => {
                out.put_u8(0);
                out.put_u8(*status);
                out.put_u32_le(xids.len() as u32);
                xids.iter().for_each(|xid| out.put_u32_le(*xid));
            }
            ProjectRecord::VmClearBits { flags, new_heap_blkno, old_heap_blkno } => {
                out.put_u8(1);
                out.put_u8(*flags);
                for blkno in [new_heap_blkno, old_heap_blkno] {
                    out.put_u8(blkno.is_some() as u8);
                    out.put_u32_le(blkno.unwrap_or(0));
                }
            }
            ProjectRecord::MultixactOffsets { entries } => {
                out.put_u8(4);
                out.put_u32_le(entries.len() as u32);
                for (multi, offset) in entries {
                    out.put_u32_le(*multi);
                    out.put_u32_le(*offset);
                }
            }
            ProjectRecord::VmTruncate { heap_blocks } => {
                out.put_u8(5);
                out.put_u32_le(*heap_blocks);
            }
            ProjectRecord::MultixactMembers { first_offset, members } => {
                out.put_u8(3);
                out.put_u32_le(*first_offset);
                out.put_u32_le(members.len() as u32);
                for member in members {
                    out.put_u32_le(member.xid);
                    out.put_u8(member.status);
                }
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<ProjectRecord, ValueDecodeError> {
        let mut reader = Reader { bytes, pos: 0 };
        let version = reader.u8()?;
        if version != PROJECT_RECORD_VERSION {
            return Err(ValueDecodeError(format!("unknown project record version {version}")));
        }
        let record = match reader.u8()? {
            0 => {
                let status = reader.u8()?;
                let n = reader.count(4)?;
                let xids = (0..n).map(|_| reader.u32()).collect::<Result<_, _>>()?;
                ProjectRecord::ClogSetStatus { status, xids }
            }
            1 => {
                let flags = reader.u8()?;
                let new_heap_blkno = reader.optional_u32()?;
                let old_heap_blkno = reader.optional_u32()?;
                ProjectRecord::VmClearBits { flags, new_heap_blkno, old_heap_blkno }
            }
            2 => ProjectRecord::MultixactOffsets { entries: vec![(reader.u32()?, reader.u32()?)] },
            3 => {
                let first_offset = reader.u32()?;
                let n = reader.count(5)?;
                let members = (0..n)
                    .map(|_| Ok(MultiXactMember { xid: reader.u32()?, status: reader.u8()? }))
                    .collect::<Result<_, ValueDecodeError>>()?;
                ProjectRecord::MultixactMembers { first_offset, members }
            }
            4 => {
                let n = reader.count(8)?;
                let entries = (0..n).map(|_| Ok((reader.u32()?, reader.u32()?))).collect::<Result<_, ValueDecodeError>>()?;
                ProjectRecord::MultixactOffsets { entries }
            }
            5 => ProjectRecord::VmTruncate { heap_blocks: reader.u32()? },
            other => return Err(ValueDecodeError(format!("unknown project record variant {other}"))),
        };
        if reader.pos != bytes.len() {
            return Err(ValueDecodeError(format!("{} trailing bytes after project record", bytes.len() - reader.pos)));
        }
        Ok(record)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ValueDecodeError> {
        let slice = self.bytes.get(self.pos..self.pos + n).ok_or_else(|| ValueDecodeError("project record truncated".into()))?;
        self.pos += n;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, ValueDecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ValueDecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn optional_u32(&mut self) -> Result<Option<u32>, ValueDecodeError> {
        let present = self.u8()?;
        let value = self.u32()?;
        match present {
            0 => Ok(None),
            1 => Ok(Some(value)),
            other => Err(ValueDecodeError(format!("bad option marker {other}"))),
        }
    }
    /// A count of items of `item_size` bytes each, checked against what is left.
    fn count(&mut self, item_size: usize) -> Result<usize, ValueDecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item_size) > self.bytes.len() - self.pos {
            return Err(ValueDecodeError(format!("count {n} exceeds the record")));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Value> {
        let record = |will_init, rec| Value::WalRecord(WalRecordValue { will_init, rec });
        vec![
            Value::Image(Bytes::from(vec![7u8; 8192])),
            Value::Image(Bytes::new()),
            record(false, RecordPayload::Postgres { target_block_id: 2, raw: Bytes::from_static(b"raw record") }),
            record(true, RecordPayload::Project(ProjectRecord::ClogSetStatus { status: 1, xids: vec![3, 4, 5] })),
            record(false, RecordPayload::Project(ProjectRecord::VmClearBits { flags: 3, new_heap_blkno: Some(9), old_heap_blkno: None })),
            record(false, RecordPayload::Project(ProjectRecord::MultixactOffsets { entries: vec![(10, 20), (11, 23)] })),
            record(false, RecordPayload::Project(ProjectRecord::VmTruncate { heap_blocks: 1001 })),
            record(
                false,
                RecordPayload::Project(ProjectRecord::MultixactMembers {
                    first_offset: 20,
                    members: vec![MultiXactMember { xid: 100, status: 2 }, MultiXactMember { xid: 101, status: 5 }],
                }),
            ),
        ]
    }

    #[test]
    fn single_multixact_offsets_of_older_files_still_decode() {
        let mut bytes = vec![PROJECT_RECORD_VERSION, 2];
        bytes.extend_from_slice(&7u32.to_le_bytes());
        bytes.extend_from_slice(&9u32.to_le_bytes());
        assert_eq!(ProjectRecord::decode(&bytes).unwrap(), ProjectRecord::MultixactOffsets { entries: vec![(7, 9)] });
    }

    #[test]
    fn round_trip() {
        for value in samples() {
            assert_eq!(Value::decode(&value.encode()).unwrap(), value);
        }
    }

    #[test]
    fn rejects_truncation_and_garbage() {
        for value in samples() {
            let encoded = value.encode();
            if let Value::WalRecord(WalRecordValue { rec: RecordPayload::Project(_), .. }) = value {
                for cut in 0..encoded.len() {
                    assert!(Value::decode(&encoded.slice(..cut)).is_err(), "{value:?} cut at {cut} decoded");
                }
                let mut longer = encoded.to_vec();
                longer.push(0);
                assert!(Value::decode(&Bytes::from(longer)).is_err());
            }
        }
        assert!(Value::decode(&Bytes::from_static(&[9])).is_err());
        assert!(Value::decode(&Bytes::from_static(&[1, 0x80, 0])).is_err());
    }
}

//! PostgreSQL 15 WAL: decoding and (later) ingest.
//!
//! This module owns everything that reads the byte format of PostgreSQL's
//! write-ahead log:
//! - [`stream`]: [`WalStreamDecoder`] takes WAL bytes in arbitrary chunks from
//!   any record-start LSN, checks segment and page headers, reassembles records
//!   across page and segment boundaries and yields whole records;
//! - [`record`]: [`decode_record`] checks a record's header and CRC-32C and
//!   parses its block references, full-page images, origin, top-level xid and
//!   main data ([`DecodedRecord`]), keeping the raw bytes for the redo workers;
//! - [`fpi`]: restores full-page images to 8192 bytes (hole, pglz, lz4, zstd);
//! - [`encode`]: lays records out on WAL pages (tests, fuzzing, backups);
//! - [`ingest`]: maps each record onto the key space (the ingest rules).
//!
//! Every malformed input gives a [`WalDecodeError`] naming the LSN and what is
//! wrong; nothing here panics on input, and no allocation is larger than the
//! input actually received (plus one 8 KiB page for image restores).
//!
//! Layouts follow PostgreSQL 15's `access/xlogrecord.h`, `access/xlog_internal.h`
//! and the rules of `xlogreader.c`.

pub mod encode;
pub mod fpi;
pub mod ingest;
pub mod record;
pub mod stream;
#[cfg(test)]
mod tests;

pub use fpi::{restore_image, FpiImage};
pub use record::{decode_record, BlockRef, DecodedRecord};
pub use stream::WalStreamDecoder;

use crate::lsn::Lsn;

/// `XLOG_BLCKSZ`: size of a WAL page, as a `u64` for LSN arithmetic.
pub const XLOG_BLCKSZ: u64 = pg_constants::XLOG_BLCKSZ as u64;
pub use pg_constants::{BLCKSZ, WAL_SEGMENT_SIZE as DEFAULT_WAL_SEG_SIZE, XLOG_PAGE_MAGIC};
/// `SizeOfXLogShortPHD`.
pub const SIZE_OF_SHORT_PAGE_HEADER: usize = 24;
/// `SizeOfXLogLongPHD`.
pub const SIZE_OF_LONG_PAGE_HEADER: usize = 40;
/// `SizeOfXLogRecord`.
pub const SIZE_OF_XLOG_RECORD: usize = 24;
/// Largest record accepted: PostgreSQL 15's reader refuses records whose
/// reassembly buffer would not be a valid palloc size (`MaxAllocSize`).
/// The stream decoder never reserves this much up front: it grows its buffer
/// with the bytes that actually arrive.
pub const MAX_RECORD_LEN: u32 = 0x3fff_ffff;

/// `xlp_info` flags.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
pub const XLP_LONG_HEADER: u16 = 0x0002;
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// `xl_info` bits reserved for the WAL machinery.
pub const XLR_INFO_MASK: u8 = 0x0F;
pub const XLR_RMGR_INFO_MASK: u8 = 0xF0;
pub const XLR_SPECIAL_REL_UPDATE: u8 = 0x01;
pub const XLR_CHECK_CONSISTENCY: u8 = 0x02;

/// Block reference and data header ids.
pub const XLR_MAX_BLOCK_ID: u8 = 32;
pub const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
pub const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
pub const XLR_BLOCK_ID_ORIGIN: u8 = 253;
pub const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

/// `fork_flags` of a block reference.
pub const BKPBLOCK_FORK_MASK: u8 = 0x0F;
pub const BKPBLOCK_FLAG_MASK: u8 = 0xF0;
pub const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
pub const BKPBLOCK_HAS_DATA: u8 = 0x20;
pub const BKPBLOCK_WILL_INIT: u8 = 0x40;
pub const BKPBLOCK_SAME_REL: u8 = 0x80;

/// `bimg_info` of a full-page image.
pub const BKPIMAGE_HAS_HOLE: u8 = 0x01;
pub const BKPIMAGE_APPLY: u8 = 0x02;
pub const BKPIMAGE_COMPRESS_PGLZ: u8 = 0x04;
pub const BKPIMAGE_COMPRESS_LZ4: u8 = 0x08;
pub const BKPIMAGE_COMPRESS_ZSTD: u8 = 0x10;

/// Resource manager ids (`access/rmgrlist.h`).
pub mod rmgr {
    pub const XLOG: u8 = 0;
    pub const XACT: u8 = 1;
    pub const SMGR: u8 = 2;
    pub const CLOG: u8 = 3;
    pub const DBASE: u8 = 4;
    pub const TBLSPC: u8 = 5;
    pub const MULTIXACT: u8 = 6;
    pub const RELMAP: u8 = 7;
    pub const STANDBY: u8 = 8;
    pub const HEAP2: u8 = 9;
    pub const HEAP: u8 = 10;
    pub const BTREE: u8 = 11;
    pub const HASH: u8 = 12;
    pub const GIN: u8 = 13;
    pub const GIST: u8 = 14;
    pub const SEQ: u8 = 15;
    pub const SPGIST: u8 = 16;
    pub const BRIN: u8 = 17;
    pub const COMMIT_TS: u8 = 18;
    pub const REPLORIGIN: u8 = 19;
    pub const GENERIC: u8 = 20;
    pub const LOGICALMSG: u8 = 21;
    /// `RM_MAX_BUILTIN_ID`.
    pub const MAX_BUILTIN: u8 = 21;
    /// `RM_MIN_CUSTOM_ID`: ids from here to 255 belong to extensions.
    pub const MIN_CUSTOM: u8 = 128;

    /// The name pg_waldump prints for a resource manager.
    pub fn name(rmid: u8) -> &'static str {
        const NAMES: [&str; 22] = [
            "XLOG",
            "Transaction",
            "Storage",
            "CLOG",
            "Database",
            "Tablespace",
            "MultiXact",
            "RelMap",
            "Standby",
            "Heap2",
            "Heap",
            "Btree",
            "Hash",
            "Gin",
            "Gist",
            "Sequence",
            "SPGist",
            "BRIN",
            "CommitTs",
            "ReplicationOrigin",
            "Generic",
            "LogicalMessage",
        ];
        NAMES.get(rmid as usize).copied().unwrap_or(if rmid >= MIN_CUSTOM { "custom" } else { "invalid" })
    }

    /// `RmgrIdIsValid`.
    pub fn is_valid(rmid: u8) -> bool {
        rmid <= MAX_BUILTIN || rmid >= MIN_CUSTOM
    }
}

/// `XLOG_SWITCH` (rmgr XLOG): the rest of the segment is unused.
pub const XLOG_SWITCH: u8 = 0x40;

/// `MAXALIGN` for 8-byte alignment.
#[inline]
pub fn maxalign(v: u64) -> u64 {
    (v + 7) & !7
}

/// `IsValidWalSegSize`: a power of two from 1 MiB to 1 GiB.
pub fn is_valid_segment_size(seg_size: u64) -> bool {
    seg_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&seg_size)
}

/// Bytes of the header of the WAL page holding `lsn`: long on a segment's
/// first page, short on the others.
pub fn page_header_size(lsn: Lsn, seg_size: u64) -> usize {
    if lsn.segment_offset(seg_size) < XLOG_BLCKSZ {
        SIZE_OF_LONG_PAGE_HEADER
    } else {
        SIZE_OF_SHORT_PAGE_HEADER
    }
}

/// The file name of WAL segment `segno` on timeline `tli` (`XLogFileName`).
pub fn segment_file_name(tli: u32, segno: u64, seg_size: u64) -> String {
    let per_xlogid = 0x1_0000_0000 / seg_size;
    format!("{tli:08X}{:08X}{:08X}", segno / per_xlogid, segno % per_xlogid)
}

/// Why WAL could not be decoded. Every variant names the LSN it is about:
/// the page address for page-header errors, the record's start otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalDecodeError {
    /// A segment or page header is wrong (magic, flags, address, sizes).
    #[error("invalid WAL page header at {lsn}: {reason}")]
    PageHeader { lsn: Lsn, reason: String },
    /// A continuation page does not continue the record being read.
    #[error("invalid continuation of record at {lsn}: {reason}")]
    Continuation { lsn: Lsn, reason: String },
    /// The fixed record header is impossible (length, rmgr, prev pointer).
    #[error("invalid record header at {lsn}: {reason}")]
    RecordHeader { lsn: Lsn, reason: String },
    /// The record's CRC-32C does not match its contents.
    #[error("incorrect resource manager data checksum in record at {lsn}: stored {stored:08X}, computed {computed:08X}")]
    Crc { lsn: Lsn, stored: u32, computed: u32 },
    /// The record body (block headers, lengths, ids) is malformed.
    #[error("malformed record at {lsn}: {reason}")]
    Record { lsn: Lsn, reason: String },
    /// A full-page image cannot be restored to a page.
    #[error("cannot restore image of block #{block_id} in record at {lsn}: {reason}")]
    Image { lsn: Lsn, block_id: u8, reason: String },
    /// The decoder was asked to start somewhere a record cannot start.
    #[error("invalid start position {lsn}: {reason}")]
    StartPosition { lsn: Lsn, reason: String },
}

impl WalDecodeError {
    /// The LSN the error is about.
    pub fn lsn(&self) -> Lsn {
        match self {
            WalDecodeError::PageHeader { lsn, .. }
            | WalDecodeError::Continuation { lsn, .. }
            | WalDecodeError::RecordHeader { lsn, .. }
            | WalDecodeError::Crc { lsn, .. }
            | WalDecodeError::Record { lsn, .. }
            | WalDecodeError::Image { lsn, .. }
            | WalDecodeError::StartPosition { lsn, .. } => *lsn,
        }
    }
}

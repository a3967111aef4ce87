//! One WAL record: header and CRC checks, and the parse of its body.
//!
//! [`decode_record`] does what PostgreSQL's `ValidXLogRecordHeader`,
//! `ValidXLogRecord` and `DecodeXLogRecord` do for a reassembled record: it
//! checks the fixed header and the CRC-32C, then walks the block headers, the
//! origin / top-level xid headers and the main-data header, and checks that
//! the lengths they announce add up to the record's length exactly. The
//! result points into the raw bytes (kept unchanged for the redo workers)
//! instead of copying them.

use bytes::Bytes;

use super::fpi::FpiImage;
use super::*;
use crate::key::RelTag;
use crate::lsn::Lsn;

/// A decoded WAL record. Block data, image bytes and main data are ranges of
/// [`DecodedRecord::raw`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRecord {
    /// Where the record starts (`ReadRecPtr`).
    pub start_lsn: Lsn,
    /// Where the next record may start (`EndRecPtr`): the end of this record,
    /// MAXALIGNed; for `XLOG_SWITCH`, the end of the segment.
    pub end_lsn: Lsn,
    pub xl_tot_len: u32,
    pub xl_xid: u32,
    pub xl_prev: Lsn,
    pub xl_info: u8,
    pub xl_rmid: u8,
    pub xl_crc: u32,
    /// `XLR_BLOCK_ID_ORIGIN`: replication origin of the change.
    pub origin: Option<u16>,
    /// `XLR_BLOCK_ID_TOPLEVEL_XID`: top-level xid of a subtransaction's record.
    pub toplevel_xid: Option<u32>,
    /// Block references in block-id order.
    pub blocks: Vec<BlockRef>,
    /// Offset and length of the main data in `raw`.
    pub main_data_offset: u32,
    pub main_data_len: u32,
    /// The whole record as written, header included (`xl_tot_len` bytes).
    pub raw: Bytes,
}

/// One block reference of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    /// Block id (0..=32) as written.
    pub id: u8,
    /// Relation and fork.
    pub rel: RelTag,
    pub blkno: u32,
    /// `fork_flags` as written: fork in the low bits, `BKPBLOCK_*` above.
    pub fork_flags: u8,
    /// The full-page image, if `BKPBLOCK_HAS_IMAGE`.
    pub image: Option<FpiImage>,
    /// Offset and length of the block data in the record (`data_len` 0 if none).
    pub data_offset: u32,
    pub data_len: u16,
}

impl BlockRef {
    pub fn fork(&self) -> u8 {
        self.fork_flags & BKPBLOCK_FORK_MASK
    }
    /// `BKPBLOCK_WILL_INIT`: redo initialises the page; no older version needed.
    pub fn will_init(&self) -> bool {
        self.fork_flags & BKPBLOCK_WILL_INIT != 0
    }
    pub fn same_rel(&self) -> bool {
        self.fork_flags & BKPBLOCK_SAME_REL != 0
    }
    pub fn has_image(&self) -> bool {
        self.image.is_some()
    }
    /// The image is to be restored during replay (not only for consistency checks).
    pub fn apply_image(&self) -> bool {
        self.image.is_some_and(|i| i.apply())
    }
    pub fn has_data(&self) -> bool {
        self.fork_flags & BKPBLOCK_HAS_DATA != 0
    }
}

impl DecodedRecord {
    /// `xl_info & XLR_RMGR_INFO_MASK`: the record type within its rmgr.
    pub fn rmgr_info(&self) -> u8 {
        self.xl_info & XLR_RMGR_INFO_MASK
    }
    pub fn main_data(&self) -> &[u8] {
        let start = self.main_data_offset as usize;
        &self.raw[start..start + self.main_data_len as usize]
    }
    pub fn block_data(&self, block: &BlockRef) -> &[u8] {
        let start = block.data_offset as usize;
        &self.raw[start..start + block.data_len as usize]
    }
    /// The block reference with this id, if any.
    pub fn block(&self, id: u8) -> Option<&BlockRef> {
        self.blocks.iter().find(|b| b.id == id)
    }
    /// Sum of the stored image lengths (pg_waldump's "tot - rec").
    pub fn fpi_len(&self) -> u32 {
        self.blocks.iter().filter_map(|b| b.image.map(|i| u32::from(i.length))).sum()
    }
    /// Restores the image of `block` to a full 8192-byte page in `page`.
    pub fn restore_image(&self, block: &BlockRef, page: &mut [u8; BLCKSZ]) -> Result<(), WalDecodeError> {
        let image = block.image.ok_or_else(|| WalDecodeError::Image {
            lsn: self.start_lsn,
            block_id: block.id,
            reason: "block reference has no image".into(),
        })?;
        fpi::restore_image(&self.raw, &image, page).map_err(|reason| WalDecodeError::Image {
            lsn: self.start_lsn,
            block_id: block.id,
            reason,
        })
    }
    /// Whether this is an `XLOG_SWITCH` record.
    pub fn is_switch(&self) -> bool {
        is_switch(self.xl_rmid, self.xl_info)
    }
}

pub(crate) fn is_switch(rmid: u8, info: u8) -> bool {
    rmid == rmgr::XLOG && info & XLR_RMGR_INFO_MASK == XLOG_SWITCH
}

#[inline]
pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
#[inline]
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
#[inline]
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The fixed header of a record (`XLogRecord`), read from its first 24 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub xl_tot_len: u32,
    pub xl_xid: u32,
    pub xl_prev: Lsn,
    pub xl_info: u8,
    pub xl_rmid: u8,
    pub xl_crc: u32,
}

impl RecordHeader {
    /// Reads the header; `b` must hold at least [`SIZE_OF_XLOG_RECORD`] bytes.
    pub fn parse(b: &[u8]) -> RecordHeader {
        RecordHeader {
            xl_tot_len: u32_at(b, 0),
            xl_xid: u32_at(b, 4),
            xl_prev: Lsn(u64_at(b, 8)),
            xl_info: b[16],
            xl_rmid: b[17],
            xl_crc: u32_at(b, 20),
        }
    }

    /// `ValidXLogRecordHeader`: length, resource manager and back-link.
    /// With `expected_prev`, `xl_prev` must equal it (sequential reading);
    /// without, it must point before the record (random access).
    pub fn validate(&self, lsn: Lsn, expected_prev: Option<Lsn>) -> Result<(), WalDecodeError> {
        let err = |reason: String| Err(WalDecodeError::RecordHeader { lsn, reason });
        if (self.xl_tot_len as usize) < SIZE_OF_XLOG_RECORD {
            return err(format!("invalid record length: expected at least {SIZE_OF_XLOG_RECORD}, got {}", self.xl_tot_len));
        }
        if self.xl_tot_len > MAX_RECORD_LEN {
            return err(format!("record length {} exceeds the maximum {MAX_RECORD_LEN}", self.xl_tot_len));
        }
        if !rmgr::is_valid(self.xl_rmid) {
            return err(format!("invalid resource manager ID {}", self.xl_rmid));
        }
        match expected_prev {
            Some(prev) if self.xl_prev != prev => err(format!("record with incorrect prev-link {} (expected {prev})", self.xl_prev)),
            None if self.xl_prev >= lsn => err(format!("record with incorrect prev-link {}", self.xl_prev)),
            _ => Ok(()),
        }
    }
}

/// CRC-32C of a record as PostgreSQL computes it: the body after the fixed
/// header, then the header up to (not including) `xl_crc`.
pub fn record_crc(raw: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&raw[SIZE_OF_XLOG_RECORD..]);
    crc32c::crc32c_append(crc, &raw[..20])
}

/// Checks and parses one whole record. `raw` must be exactly the record's
/// bytes (`xl_tot_len` of them); `end_lsn` is stored as given.
pub fn decode_record(raw: Bytes, start_lsn: Lsn, end_lsn: Lsn) -> Result<DecodedRecord, WalDecodeError> {
    decode_record_checked(raw, start_lsn, end_lsn, None)
}

pub(crate) fn decode_record_checked(
    raw: Bytes,
    start_lsn: Lsn,
    end_lsn: Lsn,
    expected_prev: Option<Lsn>,
) -> Result<DecodedRecord, WalDecodeError> {
    let lsn = start_lsn;
    if raw.len() < SIZE_OF_XLOG_RECORD {
        return Err(WalDecodeError::RecordHeader { lsn, reason: format!("record of {} bytes is shorter than its header", raw.len()) });
    }
    let hdr = RecordHeader::parse(&raw);
    hdr.validate(lsn, expected_prev)?;
    if hdr.xl_tot_len as usize != raw.len() {
        return Err(WalDecodeError::RecordHeader { lsn, reason: format!("xl_tot_len {} but {} bytes given", hdr.xl_tot_len, raw.len()) });
    }
    let computed = record_crc(&raw);
    if computed != hdr.xl_crc {
        return Err(WalDecodeError::Crc { lsn, stored: hdr.xl_crc, computed });
    }
    let mut rec = DecodedRecord {
        start_lsn,
        end_lsn,
        xl_tot_len: hdr.xl_tot_len,
        xl_xid: hdr.xl_xid,
        xl_prev: hdr.xl_prev,
        xl_info: hdr.xl_info,
        xl_rmid: hdr.xl_rmid,
        xl_crc: hdr.xl_crc,
        origin: None,
        toplevel_xid: None,
        blocks: Vec::new(),
        main_data_offset: 0,
        main_data_len: 0,
        raw: Bytes::new(),
    };
    parse_body(&raw, &mut rec)?;
    rec.raw = raw;
    Ok(rec)
}

/// `DecodeXLogRecord`: the headers first, then the payloads in the same order.
fn parse_body(raw: &[u8], rec: &mut DecodedRecord) -> Result<(), WalDecodeError> {
    let lsn = rec.start_lsn;
    let bad = |reason: String| WalDecodeError::Record { lsn, reason };
    let end = raw.len();
    let mut p = SIZE_OF_XLOG_RECORD;
    // Bytes of payload announced by the headers read so far.
    let mut datatotal: u64 = 0;
    let mut main_data_len: u32 = 0;
    let mut max_block_id: i32 = -1;
    let mut prev_rel: Option<(u32, u32, u32)> = None;

    macro_rules! need {
        ($n:expr, $what:expr) => {
            if end - p < $n {
                return Err(bad(format!("record too short to hold {} at offset {}", $what, p)));
            }
        };
    }

    while ((end - p) as u64) > datatotal {
        let block_id = raw[p];
        p += 1;
        match block_id {
            XLR_BLOCK_ID_DATA_SHORT => {
                need!(1, "main data length");
                main_data_len = u32::from(raw[p]);
                p += 1;
                datatotal += u64::from(main_data_len);
                // By convention the main data header is the last one.
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                need!(4, "main data length");
                main_data_len = u32_at(raw, p);
                p += 4;
                datatotal += u64::from(main_data_len);
                break;
            }
            XLR_BLOCK_ID_ORIGIN => {
                need!(2, "origin");
                rec.origin = Some(u16_at(raw, p));
                p += 2;
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                need!(4, "top-level xid");
                rec.toplevel_xid = Some(u32_at(raw, p));
                p += 4;
            }
            id if id <= XLR_MAX_BLOCK_ID => {
                if i32::from(id) <= max_block_id {
                    return Err(bad(format!("out-of-order block_id {id}")));
                }
                max_block_id = i32::from(id);
                need!(3, "block header");
                let fork_flags = raw[p];
                let data_len = u16_at(raw, p + 1);
                p += 3;
                let has_image = fork_flags & BKPBLOCK_HAS_IMAGE != 0;
                let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
                if has_data && data_len == 0 {
                    return Err(bad(format!("BKPBLOCK_HAS_DATA set, but no data included (block {id})")));
                }
                if !has_data && data_len != 0 {
                    return Err(bad(format!("BKPBLOCK_HAS_DATA not set, but data length is {data_len} (block {id})")));
                }
                let fork = fork_flags & BKPBLOCK_FORK_MASK;
                if fork > crate::key::INIT_FORKNUM {
                    return Err(bad(format!("invalid fork number {fork} (block {id})")));
                }
                datatotal += u64::from(data_len);
                let mut image = None;
                if has_image {
                    need!(5, "block image header");
                    let length = u16_at(raw, p);
                    let hole_offset = u16_at(raw, p + 2);
                    let bimg_info = raw[p + 4];
                    p += 5;
                    let compressed = bimg_info & (BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD) != 0;
                    let has_hole = bimg_info & BKPIMAGE_HAS_HOLE != 0;
                    let hole_length = if compressed {
                        if has_hole {
                            need!(2, "block image hole length");
                            let h = u16_at(raw, p);
                            p += 2;
                            h
                        } else {
                            0
                        }
                    } else {
                        // Uncompressed: the hole is what the image lacks.
                        (BLCKSZ as u16).wrapping_sub(length)
                    };
                    datatotal += u64::from(length);
                    let blck = BLCKSZ as u16;
                    if has_hole && (hole_offset == 0 || hole_length == 0 || length == blck) {
                        return Err(bad(format!(
                            "BKPIMAGE_HAS_HOLE set, but hole offset {hole_offset} length {hole_length} block image length {length} (block {id})"
                        )));
                    }
                    if !has_hole && (hole_offset != 0 || hole_length != 0) {
                        return Err(bad(format!(
                            "BKPIMAGE_HAS_HOLE not set, but hole offset {hole_offset} length {hole_length} (block {id})"
                        )));
                    }
                    if compressed && length == blck {
                        return Err(bad(format!("BKPIMAGE_COMPRESSED set, but block image length {length} (block {id})")));
                    }
                    if !has_hole && !compressed && length != blck {
                        return Err(bad(format!(
                            "neither BKPIMAGE_HAS_HOLE nor BKPIMAGE_COMPRESSED set, but block image length is {length} (block {id})"
                        )));
                    }
                    if length as usize > BLCKSZ || u32::from(hole_offset) + u32::from(hole_length) > BLCKSZ as u32 {
                        return Err(bad(format!(
                            "block image length {length}, hole offset {hole_offset} length {hole_length} do not fit a page (block {id})"
                        )));
                    }
                    image = Some(FpiImage { offset: 0, length, hole_offset, hole_length, bimg_info });
                }
                let (spc, db, relnode) = if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    need!(12, "relfilenode");
                    let r = (u32_at(raw, p), u32_at(raw, p + 4), u32_at(raw, p + 8));
                    p += 12;
                    prev_rel = Some(r);
                    r
                } else {
                    prev_rel.ok_or_else(|| bad(format!("BKPBLOCK_SAME_REL set but no previous rel (block {id})")))?
                };
                need!(4, "block number");
                let blkno = u32_at(raw, p);
                p += 4;
                rec.blocks.push(BlockRef {
                    id,
                    rel: RelTag::new(spc, db, relnode, fork),
                    blkno,
                    fork_flags,
                    image,
                    data_offset: 0,
                    data_len,
                });
            }
            other => return Err(bad(format!("invalid block_id {other}"))),
        }
    }

    if (end - p) as u64 != datatotal {
        return Err(bad(format!("record with invalid length: headers announce {datatotal} bytes of payload, {} remain", end - p)));
    }

    // Payloads follow in header order: per block the image, then the data;
    // the main data last. The sums were checked above, so this stays in range.
    for b in rec.blocks.iter_mut() {
        if let Some(img) = b.image.as_mut() {
            img.offset = p as u32;
            p += img.length as usize;
        }
        if b.data_len > 0 {
            b.data_offset = p as u32;
            p += b.data_len as usize;
        }
    }
    rec.main_data_offset = p as u32;
    rec.main_data_len = main_data_len;
    Ok(())
}

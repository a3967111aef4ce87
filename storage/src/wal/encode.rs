//! Writing WAL: records laid out on pages the way PostgreSQL 15 does.
//!
//! [`WalWriter`] appends records (fixing `xl_prev` and the CRC) to a byte
//! stream starting at a segment or page boundary, with short and long page
//! headers and continuation flags, so the result is WAL that PostgreSQL and
//! [`super::WalStreamDecoder`] accept. It serves tests and fuzzing (records
//! mutated and re-laid out), and is what a backup needs to write a
//! checkpoint record into a WAL segment.

use super::record::record_crc;
use super::*;
use crate::lsn::Lsn;

/// Lays records out on WAL pages from a page boundary on.
#[derive(Debug)]
pub struct WalWriter {
    seg_size: u64,
    sysid: u64,
    tli: u32,
    /// WAL position of `out`'s first byte.
    start: Lsn,
    out: Vec<u8>,
    prev: Lsn,
}

impl WalWriter {
    /// A writer whose output starts at `start`, which must be a page
    /// boundary; `prev` is the start of the record before the first one.
    pub fn new(start: Lsn, prev: Lsn, sysid: u64, tli: u32, seg_size: u64) -> WalWriter {
        assert_eq!(start.0 % XLOG_BLCKSZ, 0, "WalWriter must start at a page boundary");
        WalWriter { seg_size, sysid, tli, start, out: Vec::new(), prev }
    }

    /// Position of the next byte written.
    pub fn lsn(&self) -> Lsn {
        Lsn(self.start.0 + self.out.len() as u64)
    }

    /// The bytes written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    fn page_header(&mut self, rem_len: u32) {
        let addr = self.lsn().0;
        let long = addr.is_multiple_of(self.seg_size);
        let mut info: u16 = 0;
        if rem_len > 0 {
            info |= XLP_FIRST_IS_CONTRECORD;
        }
        if long {
            info |= XLP_LONG_HEADER;
        }
        self.out.extend_from_slice(&XLOG_PAGE_MAGIC.to_le_bytes());
        self.out.extend_from_slice(&info.to_le_bytes());
        self.out.extend_from_slice(&self.tli.to_le_bytes());
        self.out.extend_from_slice(&addr.to_le_bytes());
        self.out.extend_from_slice(&rem_len.to_le_bytes());
        self.out.extend_from_slice(&[0u8; 4]);
        if long {
            self.out.extend_from_slice(&self.sysid.to_le_bytes());
            self.out.extend_from_slice(&(self.seg_size as u32).to_le_bytes());
            self.out.extend_from_slice(&(XLOG_BLCKSZ as u32).to_le_bytes());
        }
    }

    /// Appends one record. `record` is the whole record (its `xl_tot_len`
    /// is set to its length, `xl_prev` and `xl_crc` are filled in here).
    /// Returns its start and end (MAXALIGNed) LSN.
    pub fn append(&mut self, record: &[u8]) -> (Lsn, Lsn) {
        assert!(record.len() >= SIZE_OF_XLOG_RECORD, "record shorter than its header");
        let mut rec = record.to_vec();
        let len = rec.len() as u32;
        rec[0..4].copy_from_slice(&len.to_le_bytes());
        rec[8..16].copy_from_slice(&self.prev.0.to_le_bytes());
        let crc = record_crc(&rec);
        rec[20..24].copy_from_slice(&crc.to_le_bytes());
        self.append_raw(&rec)
    }

    /// Appends record bytes exactly as given (no fix-ups).
    pub fn append_raw(&mut self, rec: &[u8]) -> (Lsn, Lsn) {
        if self.lsn().0.is_multiple_of(XLOG_BLCKSZ) {
            self.page_header(0);
        }
        let start = self.lsn();
        let mut written = 0usize;
        while written < rec.len() {
            if self.lsn().0.is_multiple_of(XLOG_BLCKSZ) {
                self.page_header((rec.len() - written) as u32);
            }
            let room = (XLOG_BLCKSZ - self.lsn().0 % XLOG_BLCKSZ) as usize;
            let n = room.min(rec.len() - written);
            self.out.extend_from_slice(&rec[written..written + n]);
            written += n;
        }
        let end = maxalign(self.lsn().0);
        self.out.resize((end - self.start.0) as usize, 0);
        self.prev = start;
        (start, Lsn(end))
    }

    /// Zero-fills up to the next page boundary (and writes nothing if at one).
    pub fn pad_to_page(&mut self) {
        let rem = (XLOG_BLCKSZ - self.lsn().0 % XLOG_BLCKSZ) % XLOG_BLCKSZ;
        self.out.resize(self.out.len() + rem as usize, 0);
    }
}

/// Builds the body of a record (after the 24-byte header): block headers,
/// then origin / top-level xid / main-data headers, then the payloads.
#[derive(Debug, Default, Clone)]
pub struct RecordBuilder {
    pub xid: u32,
    pub info: u8,
    pub rmid: u8,
    pub blocks: Vec<BlockSpec>,
    pub origin: Option<u16>,
    pub toplevel_xid: Option<u32>,
    pub main_data: Vec<u8>,
}

/// One block reference for [`RecordBuilder`].
#[derive(Debug, Clone)]
pub struct BlockSpec {
    pub id: u8,
    pub fork_flags: u8,
    pub rel: (u32, u32, u32),
    pub blkno: u32,
    pub data: Vec<u8>,
    /// Stored image bytes, hole offset, hole length, `bimg_info`.
    pub image: Option<(Vec<u8>, u16, u16, u8)>,
}

impl RecordBuilder {
    /// The whole record; `xl_tot_len`, `xl_prev` and `xl_crc` are left for
    /// [`WalWriter::append`] (tot_len is set here too).
    pub fn build(&self) -> Vec<u8> {
        let mut r = vec![0u8; SIZE_OF_XLOG_RECORD];
        r[4..8].copy_from_slice(&self.xid.to_le_bytes());
        r[16] = self.info;
        r[17] = self.rmid;
        let mut prev_rel = None;
        for b in &self.blocks {
            let mut flags = b.fork_flags & !(BKPBLOCK_HAS_IMAGE | BKPBLOCK_HAS_DATA | BKPBLOCK_SAME_REL);
            if b.image.is_some() {
                flags |= BKPBLOCK_HAS_IMAGE;
            }
            if !b.data.is_empty() {
                flags |= BKPBLOCK_HAS_DATA;
            }
            let same = prev_rel == Some(b.rel);
            if same {
                flags |= BKPBLOCK_SAME_REL;
            }
            r.push(b.id);
            r.push(flags);
            r.extend_from_slice(&(b.data.len() as u16).to_le_bytes());
            if let Some((img, hole_off, hole_len, info)) = &b.image {
                r.extend_from_slice(&(img.len() as u16).to_le_bytes());
                r.extend_from_slice(&hole_off.to_le_bytes());
                r.push(*info);
                let compressed = info & (BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD) != 0;
                if compressed && info & BKPIMAGE_HAS_HOLE != 0 {
                    r.extend_from_slice(&hole_len.to_le_bytes());
                }
            }
            if !same {
                r.extend_from_slice(&b.rel.0.to_le_bytes());
                r.extend_from_slice(&b.rel.1.to_le_bytes());
                r.extend_from_slice(&b.rel.2.to_le_bytes());
            }
            r.extend_from_slice(&b.blkno.to_le_bytes());
            prev_rel = Some(b.rel);
        }
        if let Some(o) = self.origin {
            r.push(XLR_BLOCK_ID_ORIGIN);
            r.extend_from_slice(&o.to_le_bytes());
        }
        if let Some(x) = self.toplevel_xid {
            r.push(XLR_BLOCK_ID_TOPLEVEL_XID);
            r.extend_from_slice(&x.to_le_bytes());
        }
        if !self.main_data.is_empty() {
            if self.main_data.len() < 256 {
                r.push(XLR_BLOCK_ID_DATA_SHORT);
                r.push(self.main_data.len() as u8);
            } else {
                r.push(XLR_BLOCK_ID_DATA_LONG);
                r.extend_from_slice(&(self.main_data.len() as u32).to_le_bytes());
            }
        }
        for b in &self.blocks {
            if let Some((img, ..)) = &b.image {
                r.extend_from_slice(img);
            }
            r.extend_from_slice(&b.data);
        }
        r.extend_from_slice(&self.main_data);
        let len = r.len() as u32;
        r[0..4].copy_from_slice(&len.to_le_bytes());
        r
    }
}

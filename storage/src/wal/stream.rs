//! [`WalStreamDecoder`]: whole records out of a WAL byte stream.
//!
//! WAL is a sequence of 8 KiB pages, each starting with a page header (a long
//! one at the start of every segment). Records start MAXALIGNed and may span
//! any number of pages; a page whose first bytes continue a record says so
//! (`XLP_FIRST_IS_CONTRECORD`, `xlp_rem_len`). The decoder is a small state
//! machine fed with chunks of any size, as they come off a replication
//! connection or a segment file. It keeps only the bytes not yet consumed and
//! the part of the record being reassembled, which grows with the bytes that
//! arrive, never with what a header claims.
//!
//! A record that lies inside one page of one fed chunk is returned without
//! copying: its `raw` shares the input buffer, so keeping such a record (or a
//! value holding its `raw`) keeps that buffer allocated; copy `raw` if it is
//! to outlive the bytes around it by long.

use bytes::{Buf, Bytes, BytesMut};

use super::record::{decode_record_checked, is_switch, u16_at, u32_at, u64_at, RecordHeader};
use super::*;
use crate::lsn::Lsn;

#[derive(Debug)]
enum State {
    /// Expecting a record to start at the next MAXALIGNed position.
    RecordStart,
    /// Reassembling a record that started at `start`.
    Continue { start: Lsn, tot_len: u32, data: Vec<u8>, header_checked: bool },
    /// At the start of decoding, the first page began with the tail of a
    /// record that started before our start position: skip that many bytes.
    SkipContrecord { remaining: u32 },
    /// After `XLOG_SWITCH`: the rest of the segment holds nothing.
    SkipToSegmentEnd,
}

/// Decodes a WAL stream into records. See the module documentation.
#[derive(Debug)]
pub struct WalStreamDecoder {
    seg_size: u64,
    /// Unconsumed input; `buf[0]` is at `lsn`.
    buf: BytesMut,
    lsn: Lsn,
    state: State,
    /// Start of the last record returned, for the `xl_prev` check.
    prev: Option<Lsn>,
    /// System identifier from the first long page header, or as given.
    sysid: Option<u64>,
    /// Timeline of the last page header.
    last_tli: u32,
    /// The first error; once set, every call returns it.
    error: Option<WalDecodeError>,
}

impl WalStreamDecoder {
    /// A decoder for a stream starting at `start_lsn` with 16 MiB segments.
    /// `start_lsn` must be where a record starts or a page boundary.
    pub fn new(start_lsn: Lsn) -> WalStreamDecoder {
        WalStreamDecoder::with_segment_size(start_lsn, DEFAULT_WAL_SEG_SIZE)
    }

    /// As [`WalStreamDecoder::new`], for another `wal_segment_size`.
    pub fn with_segment_size(start_lsn: Lsn, seg_size: u64) -> WalStreamDecoder {
        let mut d = WalStreamDecoder {
            seg_size,
            buf: BytesMut::new(),
            lsn: start_lsn,
            state: State::RecordStart,
            prev: None,
            sysid: None,
            last_tli: 0,
            error: None,
        };
        let page_off = start_lsn.0 % XLOG_BLCKSZ;
        let fail = |reason: String| Some(WalDecodeError::StartPosition { lsn: start_lsn, reason });
        if !is_valid_segment_size(seg_size) {
            d.error = fail(format!("invalid WAL segment size {seg_size}"));
        } else if page_off != 0 && page_off < page_header_size(start_lsn, seg_size) as u64 {
            d.error = fail(format!("position lies inside the page header ({} bytes)", page_header_size(start_lsn, seg_size)));
        } else if !start_lsn.0.is_multiple_of(8) {
            d.error = fail("position is not MAXALIGNed".into());
        } else if start_lsn.0 > u64::MAX / 2 {
            d.error = fail("position beyond any real WAL".into());
        }
        d
    }

    /// Also requires every long page header to carry this system identifier.
    pub fn with_system_id(mut self, sysid: u64) -> Self {
        self.sysid = Some(sysid);
        self
    }

    /// Also requires the first record's `xl_prev` to equal `prev`.
    pub fn with_prev_lsn(mut self, prev: Lsn) -> Self {
        self.prev = Some(prev);
        self
    }

    /// Position up to which the input has been consumed (fed bytes start here).
    pub fn consumed_lsn(&self) -> Lsn {
        self.lsn
    }

    /// Position just after the last byte fed.
    pub fn fed_lsn(&self) -> Lsn {
        Lsn(self.lsn.0 + self.buf.len() as u64)
    }

    /// Bytes fed but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// System identifier seen in (or required of) long page headers.
    pub fn system_id(&self) -> Option<u64> {
        self.sysid
    }

    /// Appends the next bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole record, `Ok(None)` if more input is needed.
    pub fn next_record(&mut self) -> Result<Option<DecodedRecord>, WalDecodeError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.step() {
            Ok(r) => Ok(r),
            Err(e) => {
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.lsn.0 += n as u64;
    }

    fn page_left(&self) -> u64 {
        XLOG_BLCKSZ - self.lsn.0 % XLOG_BLCKSZ
    }

    fn step(&mut self) -> Result<Option<DecodedRecord>, WalDecodeError> {
        loop {
            if matches!(self.state, State::SkipToSegmentEnd) {
                let to_end = (self.seg_size - self.lsn.0 % self.seg_size) % self.seg_size;
                let n = (to_end as usize).min(self.buf.len());
                self.consume(n);
                if (n as u64) < to_end {
                    return Ok(None);
                }
                self.state = State::RecordStart;
            }
            if self.lsn.0.is_multiple_of(XLOG_BLCKSZ) {
                if !self.read_page_header()? {
                    return Ok(None);
                }
                continue;
            }
            let page_left = self.page_left();
            let buffered = self.buf.len() as u64;
            match &mut self.state {
                State::SkipToSegmentEnd => unreachable!("handled above"),
                State::SkipContrecord { remaining } => {
                    let n = (*remaining as u64).min(page_left).min(buffered) as usize;
                    *remaining -= n as u32;
                    let done = *remaining == 0;
                    self.consume(n);
                    if done {
                        self.state = State::RecordStart;
                    } else if !self.lsn.0.is_multiple_of(XLOG_BLCKSZ) {
                        return Ok(None);
                    }
                }
                State::RecordStart => {
                    let pad = (maxalign(self.lsn.0) - self.lsn.0) as usize;
                    if pad > 0 {
                        let n = pad.min(self.buf.len());
                        self.consume(n);
                        if n < pad {
                            return Ok(None);
                        }
                        continue;
                    }
                    if let Some(r) = self.start_record()? {
                        return Ok(Some(r));
                    }
                    if matches!(self.state, State::RecordStart) {
                        return Ok(None);
                    }
                }
                State::Continue { .. } => {
                    if let Some(r) = self.continue_record()? {
                        return Ok(Some(r));
                    }
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Reads and checks the header of the page starting at `self.lsn`.
    /// Returns false if more input is needed.
    fn read_page_header(&mut self) -> Result<bool, WalDecodeError> {
        let page = self.lsn;
        if self.buf.len() < SIZE_OF_SHORT_PAGE_HEADER {
            return Ok(false);
        }
        let b = &self.buf[..];
        let magic = u16_at(b, 0);
        let info = u16_at(b, 2);
        let tli = u32_at(b, 4);
        let pageaddr = u64_at(b, 8);
        let rem_len = u32_at(b, 16);
        let fail = |reason: String| Err(WalDecodeError::PageHeader { lsn: page, reason });
        if magic != XLOG_PAGE_MAGIC {
            return fail(format!("invalid magic number {magic:04X}"));
        }
        if info & !XLP_ALL_FLAGS != 0 {
            return fail(format!("invalid info bits {info:04X}"));
        }
        let seg_start = page.0.is_multiple_of(self.seg_size);
        let hdr_len = if info & XLP_LONG_HEADER != 0 {
            if !seg_start {
                return fail("long page header in the middle of a segment".into());
            }
            if self.buf.len() < SIZE_OF_LONG_PAGE_HEADER {
                return Ok(false);
            }
            let b = &self.buf[..];
            let sysid = u64_at(b, 24);
            let seg_size = u32_at(b, 32);
            let blcksz = u32_at(b, 36);
            if let Some(expected) = self.sysid {
                if sysid != expected {
                    return fail(format!("WAL file is from different database system: system identifier {sysid}, expected {expected}"));
                }
            }
            if u64::from(seg_size) != self.seg_size {
                return fail(format!("segment size {seg_size} in page header, expected {}", self.seg_size));
            }
            if u64::from(blcksz) != XLOG_BLCKSZ {
                return fail(format!("XLOG_BLCKSZ {blcksz} in page header, expected {XLOG_BLCKSZ}"));
            }
            self.sysid = Some(sysid);
            SIZE_OF_LONG_PAGE_HEADER
        } else {
            if seg_start {
                return fail("missing long page header at segment start".into());
            }
            SIZE_OF_SHORT_PAGE_HEADER
        };
        if pageaddr != page.0 {
            return fail(format!("unexpected pageaddr {} (expected {page})", Lsn(pageaddr)));
        }
        if tli < self.last_tli {
            return fail(format!("out-of-sequence timeline ID {tli} (after {})", self.last_tli));
        }
        self.last_tli = tli;
        let contrecord = info & XLP_FIRST_IS_CONTRECORD != 0;
        match &mut self.state {
            State::Continue { start, tot_len, data, .. } => {
                let start = *start;
                if !contrecord {
                    if info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                        // The primary crashed in the middle of this record and
                        // wrote XLOG_OVERWRITE_CONTRECORD here: forget it.
                        self.state = State::RecordStart;
                    } else {
                        return Err(WalDecodeError::Continuation {
                            lsn: start,
                            reason: format!("there is no contrecord flag on page {page}"),
                        });
                    }
                } else {
                    let left = *tot_len - data.len() as u32;
                    if rem_len != left {
                        return Err(WalDecodeError::Continuation {
                            lsn: start,
                            reason: format!("invalid contrecord length {rem_len} on page {page} (expected {left})"),
                        });
                    }
                }
            }
            State::SkipContrecord { remaining } => {
                if !contrecord || rem_len != *remaining {
                    return fail(format!(
                        "expected the rest ({remaining} bytes) of a record, page has flags {info:04X} and xlp_rem_len {rem_len}"
                    ));
                }
            }
            State::RecordStart => {
                if contrecord {
                    if self.prev.is_some() {
                        return fail(format!("contrecord flag set (xlp_rem_len {rem_len}) where a new record should start"));
                    }
                    if rem_len == 0 {
                        return fail("contrecord flag set with xlp_rem_len 0".into());
                    }
                    // Started in the middle of a record: skip its tail.
                    self.state = State::SkipContrecord { remaining: rem_len };
                }
            }
            State::SkipToSegmentEnd => unreachable!("pages after XLOG_SWITCH are skipped"),
        }
        self.consume(hdr_len);
        Ok(true)
    }

    /// At a MAXALIGNed position inside a page, with no record in progress.
    fn start_record(&mut self) -> Result<Option<DecodedRecord>, WalDecodeError> {
        let start = self.lsn;
        let page_left = self.page_left() as usize;
        // A record start leaves at least 8 bytes on the page: xl_tot_len is
        // always on the first page, the rest of the header may not be.
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let tot_len = u32_at(&self.buf, 0);
        let mut header_checked = false;
        if page_left >= SIZE_OF_XLOG_RECORD && self.buf.len() >= SIZE_OF_XLOG_RECORD {
            RecordHeader::parse(&self.buf).validate(start, self.prev)?;
            header_checked = true;
        } else if (tot_len as usize) < SIZE_OF_XLOG_RECORD || tot_len > MAX_RECORD_LEN {
            return Err(WalDecodeError::RecordHeader { lsn: start, reason: format!("invalid record length {tot_len}") });
        }
        let len = tot_len as usize;
        if len <= page_left {
            if self.buf.len() < len {
                return Ok(None);
            }
            // Whole record on this page and in the buffer: no copy.
            let raw = self.buf.split_to(len).freeze();
            self.lsn.0 += len as u64;
            return self.finish(start, raw).map(Some);
        }
        // Spans pages: reassemble. Wait until the page's share has arrived so
        // that small chunks do not start a copy needlessly.
        if self.buf.len() < page_left {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(len.min(4 * XLOG_BLCKSZ as usize));
        data.extend_from_slice(&self.buf[..page_left]);
        self.consume(page_left);
        // An unchecked header is checked once its rest arrives.
        self.state = State::Continue { start, tot_len, data, header_checked };
        Ok(None)
    }

    /// Appends the next piece of the record being reassembled.
    fn continue_record(&mut self) -> Result<Option<DecodedRecord>, WalDecodeError> {
        let page_left = self.page_left() as usize;
        let prev = self.prev;
        let State::Continue { start, tot_len, data, header_checked } = &mut self.state else { unreachable!("only called in Continue") };
        let want = *tot_len as usize - data.len();
        let n = want.min(page_left).min(self.buf.len());
        data.extend_from_slice(&self.buf[..n]);
        let start = *start;
        if !*header_checked && data.len() >= SIZE_OF_XLOG_RECORD {
            RecordHeader::parse(data).validate(start, prev)?;
            *header_checked = true;
        }
        let complete = data.len() == *tot_len as usize;
        self.buf.advance(n);
        self.lsn.0 += n as u64;
        if !complete {
            return Ok(None);
        }
        let State::Continue { data, .. } = std::mem::replace(&mut self.state, State::RecordStart) else { unreachable!() };
        self.finish(start, Bytes::from(data)).map(Some)
    }

    /// A record's bytes are complete (`self.lsn` is just after them).
    fn finish(&mut self, start: Lsn, raw: Bytes) -> Result<DecodedRecord, WalDecodeError> {
        let switch = raw.len() >= SIZE_OF_XLOG_RECORD && is_switch(raw[17], raw[16]);
        let mut end = maxalign(self.lsn.0);
        if switch {
            // Like xlogreader: pretend the record extends to the end of the segment.
            end = end.div_ceil(self.seg_size) * self.seg_size;
        }
        let rec = decode_record_checked(raw, start, Lsn(end), self.prev)?;
        self.prev = Some(start);
        self.state = if switch { State::SkipToSegmentEnd } else { State::RecordStart };
        Ok(rec)
    }
}

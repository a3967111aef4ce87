//! Wire format of redo requests and replies inside a queue slot.
//!
//! Pure functions on byte slices; decoding never panics and rejects anything
//! that is not exactly one well-formed message. All integers are
//! little-endian (every process runs on the same host, but the layout is
//! fixed anyway so that a dump of a slot can be read).
//!
//! Request:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `REQUEST_MAGIC` |
//! | 4 | flags (`FLAG_*`) |
//! | 4, 4, 4 | target tablespace, database, relfilenode |
//! | 1 | target fork |
//! | 4 | target block number |
//! | 1 | 1 if a base image follows, 0 otherwise |
//! | 8192 | base image (only if present) |
//! | 4 | number of records |
//! | per record: 8, 8, 4, n | start LSN, end LSN, raw length n, raw record |
//!
//! A raw record is a complete `XLogRecord` as laid out in WAL with the page
//! headers removed; this format does not look inside it.
//!
//! Reply: one tag byte, then for `REPLY_OK` the 8192-byte page, for
//! `REPLY_ERR` (redo raised `ERROR`, or its result failed the check after
//! redo) and `REPLY_REJECTED` (a record refused by the checks before redo)
//! the LSN (8), the resource manager id (1), the message length (4) and the
//! message (UTF-8).
//!
//! A **batch** rebuilds several pages in one round trip (bulk reads): the
//! request is magic `BATCH_MAGIC` (4), the item count (4), then per item its
//! length (4) and a request as above; the reply is tag `REPLY_BATCH` (1),
//! the count (4), then per item its length (4) and a reply as above, in the
//! order of the items. An item's error does not fail the others.

use std::fmt;

/// Size of a PostgreSQL page (`BLCKSZ`).
pub const PAGE_SIZE: usize = pg_constants::BLCKSZ;

/// Flag: apply the resource manager's `rm_mask` to the result (for tests that
/// compare with `wal_consistency_checking` images). When a request is split
/// into chunks, only the last chunk carries it.
pub const FLAG_MASK_RESULT: u32 = 1 << 0;

/// Flags that only make sense on the final result, cleared on intermediate chunks.
pub const FINAL_CHUNK_ONLY_FLAGS: u32 = FLAG_MASK_RESULT;

/// First four bytes of an encoded request: "RDQ" + format version 1.
pub const REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"RDQ1");

/// Reply tag: a page follows.
pub const REPLY_OK: u8 = 0;
/// Reply tag: a redo error follows.
pub const REPLY_ERR: u8 = 1;
/// Reply tag: the error of a record rejected before redo follows.
pub const REPLY_REJECTED: u8 = 2;

/// First four bytes of an encoded batch request: "RDQB".
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"RDQB");

/// Reply tag: the replies of a batch follow.
pub const REPLY_BATCH: u8 = 3;

/// Bytes of a batch request or reply before its items (magic or tag, count).
pub const BATCH_HEADER_LEN: usize = 4 + 4;
/// Bytes before each item of a batch (its length).
pub const BATCH_ITEM_HEADER_LEN: usize = 4;
/// Room for an item's error message in a batch reply (longer ones are cut).
pub const BATCH_ERROR_ROOM: usize = 1024;

/// Bytes of a request before the base image: magic, flags, target, base flag.
pub const REQUEST_HEADER_LEN: usize = 4 + 4 + 4 + 4 + 4 + 1 + 4 + 1;
/// Bytes of the record count.
pub const RECORD_COUNT_LEN: usize = 4;
/// Bytes of a record before its raw bytes: start LSN, end LSN, length.
pub const RECORD_HEADER_LEN: usize = 8 + 8 + 4;
/// Bytes of an OK reply.
pub const REPLY_OK_LEN: usize = 1 + PAGE_SIZE;
/// Bytes of an error reply before its message.
pub const REPLY_ERR_HEADER_LEN: usize = 1 + 8 + 1 + 4;

/// The block a request rebuilds (PostgreSQL's `RelFileNode` + fork + block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RelBlock {
    pub spc_node: u32,
    pub db_node: u32,
    pub rel_node: u32,
    pub fork: u8,
    pub blkno: u32,
}

/// One WAL record to apply. `R` is any byte container (`Vec<u8>`,
/// `bytes::Bytes`, ...), so callers need not copy records out of their layers
/// before the one copy into the queue slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedoRecord<R = Vec<u8>> {
    pub start_lsn: u64,
    pub end_lsn: u64,
    /// A complete `XLogRecord` as laid out in WAL, page headers removed.
    pub raw: R,
}

/// A redo request as callers build it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedoRequest<R = Vec<u8>> {
    pub target: RelBlock,
    /// The page to start from; `None` when the first record initialises the page.
    pub base_image: Option<Box<[u8; PAGE_SIZE]>>,
    /// Records in LSN order.
    pub records: Vec<RedoRecord<R>>,
    /// `FLAG_*` bits.
    pub flags: u32,
}

/// A decoded request, borrowing the bytes it was decoded from (zero-copy).
#[derive(Clone, Copy, Debug)]
pub struct RedoRequestView<'a> {
    pub target: RelBlock,
    pub base_image: Option<&'a [u8; PAGE_SIZE]>,
    pub flags: u32,
    record_count: u32,
    /// The records, already validated by [`decode_request`].
    record_bytes: &'a [u8],
}

/// One record of a [`RedoRequestView`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedoRecordView<'a> {
    pub start_lsn: u64,
    pub end_lsn: u64,
    pub raw: &'a [u8],
}

/// A decoded reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedoReply {
    Ok(Box<[u8; PAGE_SIZE]>),
    /// `rejected`: refused by the checks before redo ([`REPLY_REJECTED`]).
    Err {
        lsn: u64,
        rmgr: u8,
        message: String,
        rejected: bool,
    },
}

/// Why bytes are not a well-formed request or reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end inside the named field.
    Truncated {
        field: &'static str,
        offset: usize,
    },
    BadMagic(u32),
    BadBaseImageFlag(u8),
    BadReplyTag(u8),
    MessageNotUtf8,
    /// Bytes left over after the last field.
    TrailingBytes(usize),
    /// A batch reply with another number of replies than the batch had items.
    WrongCount {
        expected: usize,
        got: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { field, offset } => {
                write!(f, "redo message truncated in {field} at byte {offset}")
            }
            DecodeError::BadMagic(m) => write!(f, "redo request has magic {m:#010x}, expected {REQUEST_MAGIC:#010x}"),
            DecodeError::BadBaseImageFlag(b) => {
                write!(f, "redo request base-image flag is {b}, expected 0 or 1")
            }
            DecodeError::BadReplyTag(t) => write!(f, "redo reply tag is {t}, expected {REPLY_OK}, {REPLY_ERR} or {REPLY_REJECTED}"),
            DecodeError::MessageNotUtf8 => write!(f, "redo error message is not UTF-8"),
            DecodeError::TrailingBytes(n) => {
                write!(f, "{n} bytes after the end of the redo message")
            }
            DecodeError::WrongCount { expected, got } => write!(f, "a redo batch of {expected} pages got {got} replies"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The buffer is too small for the message; `needed` bytes would do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferTooSmall {
    pub needed: usize,
    pub available: usize,
}

impl fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redo message needs {} bytes, the buffer holds {}", self.needed, self.available)
    }
}

impl std::error::Error for BufferTooSmall {}

/// Encoded size of one record.
pub fn encoded_record_len(raw_len: usize) -> usize {
    RECORD_HEADER_LEN + raw_len
}

/// Encoded size of a request with these parts.
pub fn encoded_request_len<R: AsRef<[u8]>>(has_base_image: bool, records: &[RedoRecord<R>]) -> usize {
    REQUEST_HEADER_LEN
        + if has_base_image { PAGE_SIZE } else { 0 }
        + RECORD_COUNT_LEN
        + records.iter().map(|r| encoded_record_len(r.raw.as_ref().len())).sum::<usize>()
}

/// Writes a request made of these parts into `buf`; returns the bytes used.
/// Used directly by the queue to encode chunks of a request without copying it.
pub fn encode_request_parts<R: AsRef<[u8]>>(
    target: &RelBlock,
    base_image: Option<&[u8; PAGE_SIZE]>,
    records: &[RedoRecord<R>],
    flags: u32,
    buf: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let needed = encoded_request_len(base_image.is_some(), records);
    if needed > buf.len() || records.len() > u32::MAX as usize || records.iter().any(|r| r.raw.as_ref().len() > u32::MAX as usize) {
        return Err(BufferTooSmall { needed, available: buf.len() });
    }
    let mut w = Writer { buf, pos: 0 };
    w.put(&REQUEST_MAGIC.to_le_bytes());
    w.put(&flags.to_le_bytes());
    w.put(&target.spc_node.to_le_bytes());
    w.put(&target.db_node.to_le_bytes());
    w.put(&target.rel_node.to_le_bytes());
    w.put(&[target.fork]);
    w.put(&target.blkno.to_le_bytes());
    match base_image {
        Some(page) => {
            w.put(&[1]);
            w.put(page);
        }
        None => w.put(&[0]),
    }
    w.put(&(records.len() as u32).to_le_bytes());
    for r in records {
        w.put(&r.start_lsn.to_le_bytes());
        w.put(&r.end_lsn.to_le_bytes());
        let raw = r.raw.as_ref();
        w.put(&(raw.len() as u32).to_le_bytes());
        w.put(raw);
    }
    debug_assert_eq!(w.pos, needed);
    Ok(w.pos)
}

/// Writes `request` into `buf`; returns the bytes used.
pub fn encode_request_into<R: AsRef<[u8]>>(request: &RedoRequest<R>, buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
    encode_request_parts(&request.target, request.base_image.as_deref(), &request.records, request.flags, buf)
}

/// Encodes `request` into a new vector.
pub fn encode_request<R: AsRef<[u8]>>(request: &RedoRequest<R>) -> Vec<u8> {
    let mut buf = vec![0u8; encoded_request_len(request.base_image.is_some(), &request.records)];
    let len = encode_request_into(request, &mut buf).expect("buffer sized by encoded_request_len");
    buf.truncate(len);
    buf
}

/// Decodes and validates a whole request; the view borrows `bytes`.
pub fn decode_request(bytes: &[u8]) -> Result<RedoRequestView<'_>, DecodeError> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r.u32("magic")?;
    if magic != REQUEST_MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let flags = r.u32("flags")?;
    let target = RelBlock {
        spc_node: r.u32("target tablespace")?,
        db_node: r.u32("target database")?,
        rel_node: r.u32("target relfilenode")?,
        fork: r.u8("target fork")?,
        blkno: r.u32("target block number")?,
    };
    let base_image = match r.u8("base image flag")? {
        0 => None,
        1 => Some(r.array::<PAGE_SIZE>("base image")?),
        other => return Err(DecodeError::BadBaseImageFlag(other)),
    };
    let record_count = r.u32("record count")?;
    let records_start = r.pos;
    for _ in 0..record_count {
        r.u64("record start LSN")?;
        r.u64("record end LSN")?;
        let len = r.u32("record length")? as usize;
        r.take(len, "record bytes")?;
    }
    let record_bytes = &bytes[records_start..r.pos];
    r.finish()?;
    Ok(RedoRequestView { target, base_image, flags, record_count, record_bytes })
}

impl<'a> RedoRequestView<'a> {
    /// Number of records.
    pub fn record_count(&self) -> usize {
        self.record_count as usize
    }

    /// The records in order.
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter { reader: Reader { bytes: self.record_bytes, pos: 0 }, remaining: self.record_count }
    }

    /// An owned copy.
    pub fn to_request(&self) -> RedoRequest {
        RedoRequest {
            target: self.target,
            base_image: self.base_image.map(|p| Box::new(*p)),
            records: self.records().map(|r| RedoRecord { start_lsn: r.start_lsn, end_lsn: r.end_lsn, raw: r.raw.to_vec() }).collect(),
            flags: self.flags,
        }
    }
}

/// Iterator over the records of a [`RedoRequestView`].
#[derive(Clone, Debug)]
pub struct RecordIter<'a> {
    reader: Reader<'a>,
    remaining: u32,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = RedoRecordView<'a>;

    fn next(&mut self) -> Option<RedoRecordView<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // decode_request validated these bytes; a failure here would be a bug,
        // and ending the iteration is the non-panicking answer to it.
        let start_lsn = self.reader.u64("").ok()?;
        let end_lsn = self.reader.u64("").ok()?;
        let len = self.reader.u32("").ok()? as usize;
        let raw = self.reader.take(len, "").ok()?;
        Some(RedoRecordView { start_lsn, end_lsn, raw })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

/// Writes an OK reply; returns the bytes used.
pub fn encode_reply_ok(page: &[u8; PAGE_SIZE], buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
    if buf.len() < REPLY_OK_LEN {
        return Err(BufferTooSmall { needed: REPLY_OK_LEN, available: buf.len() });
    }
    buf[0] = REPLY_OK;
    buf[1..REPLY_OK_LEN].copy_from_slice(page);
    Ok(REPLY_OK_LEN)
}

/// Writes an error reply (`rejected`: before redo); a message longer than
/// the buffer allows is cut at a character boundary and marked with "…".
/// Returns the bytes used.
pub fn encode_reply_err(lsn: u64, rmgr: u8, message: &str, rejected: bool, buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
    const ELLIPSIS: &str = "…";
    if buf.len() < REPLY_ERR_HEADER_LEN + ELLIPSIS.len() {
        return Err(BufferTooSmall { needed: REPLY_ERR_HEADER_LEN + ELLIPSIS.len(), available: buf.len() });
    }
    let room = (buf.len() - REPLY_ERR_HEADER_LEN).min(u32::MAX as usize);
    let (body, suffix) = if message.len() <= room {
        (message, "")
    } else {
        let mut cut = room - ELLIPSIS.len();
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        (&message[..cut], ELLIPSIS)
    };
    let len = body.len() + suffix.len();
    let mut w = Writer { buf, pos: 0 };
    w.put(&[if rejected { REPLY_REJECTED } else { REPLY_ERR }]);
    w.put(&lsn.to_le_bytes());
    w.put(&[rmgr]);
    w.put(&(len as u32).to_le_bytes());
    w.put(body.as_bytes());
    w.put(suffix.as_bytes());
    Ok(w.pos)
}

/// Decodes a whole reply.
pub fn decode_reply(bytes: &[u8]) -> Result<RedoReply, DecodeError> {
    let mut r = Reader { bytes, pos: 0 };
    let reply = match r.u8("reply tag")? {
        REPLY_OK => RedoReply::Ok(Box::new(*r.array::<PAGE_SIZE>("page")?)),
        tag @ (REPLY_ERR | REPLY_REJECTED) => {
            let lsn = r.u64("error LSN")?;
            let rmgr = r.u8("error resource manager")?;
            let len = r.u32("error message length")? as usize;
            let message = std::str::from_utf8(r.take(len, "error message")?).map_err(|_| DecodeError::MessageNotUtf8)?.to_owned();
            RedoReply::Err { lsn, rmgr, message, rejected: tag == REPLY_REJECTED }
        }
        other => return Err(DecodeError::BadReplyTag(other)),
    };
    r.finish()?;
    Ok(reply)
}

/// Decodes an OK reply straight into `page` without allocating; an error
/// reply is returned as `Err(Ok(RedoReply::Err))`.
pub(crate) fn decode_reply_into(bytes: &[u8], page: &mut [u8; PAGE_SIZE]) -> Result<(), Result<RedoReply, DecodeError>> {
    if bytes.len() == REPLY_OK_LEN && bytes[0] == REPLY_OK {
        page.copy_from_slice(&bytes[1..]);
        return Ok(());
    }
    Err(decode_reply(bytes))
}

/// One page of a batch: what a [`RedoRequest`] holds, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct BatchItem<'a, R = Vec<u8>> {
    pub target: RelBlock,
    pub base_image: Option<&'a [u8; PAGE_SIZE]>,
    pub records: &'a [RedoRecord<R>],
}

/// Encoded size of a batch of these items.
pub fn encoded_batch_len<R: AsRef<[u8]>>(items: &[BatchItem<'_, R>]) -> usize {
    BATCH_HEADER_LEN + items.iter().map(|i| BATCH_ITEM_HEADER_LEN + encoded_request_len(i.base_image.is_some(), i.records)).sum::<usize>()
}

/// Encoded size of the reply to a batch of `count` items that all succeed
/// (an error reply is at most as long, with [`BATCH_ERROR_ROOM`]).
pub fn encoded_batch_reply_len(count: usize) -> usize {
    BATCH_HEADER_LEN + count * (BATCH_ITEM_HEADER_LEN + REPLY_OK_LEN.max(REPLY_ERR_HEADER_LEN + BATCH_ERROR_ROOM))
}

/// Writes a batch request into `buf`; returns the bytes used.
pub fn encode_batch_into<R: AsRef<[u8]>>(items: &[BatchItem<'_, R>], buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
    let needed = encoded_batch_len(items);
    if needed > buf.len() || items.len() > u32::MAX as usize {
        return Err(BufferTooSmall { needed, available: buf.len() });
    }
    buf[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&(items.len() as u32).to_le_bytes());
    let mut pos = BATCH_HEADER_LEN;
    for item in items {
        let len = encode_request_parts(&item.target, item.base_image, item.records, 0, &mut buf[pos + BATCH_ITEM_HEADER_LEN..])?;
        buf[pos..pos + BATCH_ITEM_HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
        pos += BATCH_ITEM_HEADER_LEN + len;
    }
    debug_assert_eq!(pos, needed);
    Ok(pos)
}

/// True if `bytes` start like a batch request.
pub fn is_batch(bytes: &[u8]) -> bool {
    bytes.get(0..4) == Some(&BATCH_MAGIC.to_le_bytes()[..])
}

/// Decodes and validates a whole batch request; the views borrow `bytes`.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<RedoRequestView<'_>>, DecodeError> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r.u32("batch magic")?;
    if magic != BATCH_MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let count = r.u32("batch count")?;
    let mut items = Vec::with_capacity((count as usize).min(bytes.len() / REQUEST_HEADER_LEN));
    for _ in 0..count {
        let len = r.u32("batch item length")? as usize;
        items.push(decode_request(r.take(len, "batch item")?)?);
    }
    r.finish()?;
    Ok(items)
}

/// One item's outcome in a batch reply: the page, or (LSN, resource manager,
/// message, rejected) as in [`encode_reply_err`].
pub type BatchItemReply<'a> = Result<&'a [u8; PAGE_SIZE], (u64, u8, &'a str, bool)>;

/// Writes a batch reply (one entry per item, in order); error messages are
/// cut to [`BATCH_ERROR_ROOM`] bytes. Returns the bytes used.
pub fn encode_batch_reply(replies: &[BatchItemReply<'_>], buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
    let needed = encoded_batch_reply_len(replies.len());
    if needed > buf.len() || replies.len() > u32::MAX as usize {
        return Err(BufferTooSmall { needed, available: buf.len() });
    }
    buf[0] = REPLY_BATCH;
    buf[1..5].copy_from_slice(&(replies.len() as u32).to_le_bytes());
    let mut pos = 1 + 4;
    for reply in replies {
        let item = &mut buf[pos + BATCH_ITEM_HEADER_LEN..];
        let len = match reply {
            Ok(page) => encode_reply_ok(page, item)?,
            Err((lsn, rmgr, message, rejected)) => {
                let room = (REPLY_ERR_HEADER_LEN + BATCH_ERROR_ROOM).min(item.len());
                encode_reply_err(*lsn, *rmgr, message, *rejected, &mut item[..room])?
            }
        };
        buf[pos..pos + BATCH_ITEM_HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
        pos += BATCH_ITEM_HEADER_LEN + len;
    }
    Ok(pos)
}

/// Decodes a whole batch reply: one reply per item, in order. A single
/// reply in its place (an error for the whole batch, e.g. a malformed
/// request) is returned as `Err(Ok(reply))`.
pub fn decode_batch_reply(bytes: &[u8]) -> Result<Vec<RedoReply>, Result<RedoReply, DecodeError>> {
    if bytes.first() != Some(&REPLY_BATCH) {
        return Err(decode_reply(bytes));
    }
    let mut r = Reader { bytes, pos: 1 };
    let count = r.u32("batch reply count").map_err(Err)?;
    let mut replies = Vec::with_capacity((count as usize).min(bytes.len() / REPLY_OK_LEN + 1));
    for _ in 0..count {
        let len = r.u32("batch reply item length").map_err(Err)? as usize;
        replies.push(decode_reply(r.take(len, "batch reply item").map_err(Err)?).map_err(Err)?);
    }
    r.finish().map_err(Err)?;
    Ok(replies)
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    /// Callers check the total size first.
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
}

#[derive(Clone, Debug)]
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(len).filter(|&end| end <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(DecodeError::Truncated { field, offset: self.pos }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<&'a [u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(*self.array::<4>(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(*self.array::<8>(field)?))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_request(with_base: bool, n: usize) -> RedoRequest {
        RedoRequest {
            target: RelBlock { spc_node: 1663, db_node: 5, rel_node: 16384, fork: 2, blkno: 77 },
            base_image: with_base.then(|| Box::new(std::array::from_fn(|i| (i * 7) as u8))),
            records: (0..n)
                .map(|i| RedoRecord {
                    start_lsn: 0x1000 + i as u64 * 100,
                    end_lsn: 0x1000 + i as u64 * 100 + 50,
                    raw: (0..(i * 13 % 97)).map(|b| b as u8 ^ i as u8).collect(),
                })
                .collect(),
            flags: FLAG_MASK_RESULT,
        }
    }

    #[test]
    fn request_round_trips_with_and_without_base_image() {
        for with_base in [false, true] {
            for n in [0, 1, 5, 300] {
                let req = sample_request(with_base, n);
                let bytes = encode_request(&req);
                assert_eq!(bytes.len(), encoded_request_len(with_base, &req.records));
                let view = decode_request(&bytes).unwrap();
                assert_eq!(view.record_count(), n);
                assert_eq!(view.records().count(), n);
                assert_eq!(view.to_request(), req);
            }
        }
    }

    #[test]
    fn request_into_small_buffer_is_refused() {
        let req = sample_request(true, 3);
        let mut buf = vec![0u8; 100];
        let err = encode_request_into(&req, &mut buf).unwrap_err();
        assert_eq!(err.needed, encoded_request_len(true, &req.records));
        assert_eq!(err.available, 100);
    }

    #[test]
    fn every_truncation_of_a_request_is_an_error() {
        let bytes = encode_request(&sample_request(true, 4));
        for len in 0..bytes.len() {
            assert!(matches!(decode_request(&bytes[..len]), Err(DecodeError::Truncated { .. })), "len {len}");
        }
    }

    #[test]
    fn malformed_requests_are_errors() {
        let good = encode_request(&sample_request(false, 2));
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 0xff;
        assert!(matches!(decode_request(&bad_magic), Err(DecodeError::BadMagic(_))));

        let mut bad_flag = good.clone();
        bad_flag[REQUEST_HEADER_LEN - 1] = 7;
        assert_eq!(decode_request(&bad_flag).unwrap_err(), DecodeError::BadBaseImageFlag(7));

        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode_request(&trailing).unwrap_err(), DecodeError::TrailingBytes(1));

        // A record count far beyond the bytes present.
        let mut huge_count = good.clone();
        huge_count[REQUEST_HEADER_LEN..REQUEST_HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_request(&huge_count), Err(DecodeError::Truncated { .. })));

        // A record length far beyond the bytes present.
        let mut huge_len = good.clone();
        let len_at = REQUEST_HEADER_LEN + RECORD_COUNT_LEN + 16;
        huge_len[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_request(&huge_len), Err(DecodeError::Truncated { .. })));
    }

    /// xorshift64*, enough to make garbage without a dependency.
    fn garbage(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn garbage_never_panics() {
        let valid = encode_request(&sample_request(true, 3));
        for seed in 0..2000u64 {
            let len = (seed as usize * 37) % 10_000;
            let junk = garbage(seed, len);
            let _ = decode_request(&junk);
            let _ = decode_reply(&junk);
            // Valid prefix with garbage flipped in: exercises the deeper fields.
            let mut flipped = valid.clone();
            let noise = garbage(seed ^ 0xdead, 4);
            let at = (seed as usize * 131) % flipped.len();
            flipped[at] ^= noise[0] | 1;
            let _ = decode_request(&flipped);
            if let Ok(view) = decode_request(&flipped) {
                let _ = view.records().count();
            }
        }
    }

    #[test]
    fn replies_round_trip() {
        let page: [u8; PAGE_SIZE] = std::array::from_fn(|i| (i % 251) as u8);
        let mut buf = vec![0u8; 64 * 1024];
        let n = encode_reply_ok(&page, &mut buf).unwrap();
        assert_eq!(decode_reply(&buf[..n]).unwrap(), RedoReply::Ok(Box::new(page)));
        let mut out = [0u8; PAGE_SIZE];
        decode_reply_into(&buf[..n], &mut out).unwrap();
        assert_eq!(out, page);

        let n = encode_reply_err(0x1_0000_0028, 10, "invalid lp: ünïcode", false, &mut buf).unwrap();
        assert_eq!(
            decode_reply(&buf[..n]).unwrap(),
            RedoReply::Err { lsn: 0x1_0000_0028, rmgr: 10, message: "invalid lp: ünïcode".into(), rejected: false }
        );
        let n = encode_reply_err(7, 10, "not a page-level resource manager", true, &mut buf).unwrap();
        assert_eq!(buf[0], REPLY_REJECTED);
        assert_eq!(
            decode_reply(&buf[..n]).unwrap(),
            RedoReply::Err { lsn: 7, rmgr: 10, message: "not a page-level resource manager".into(), rejected: true }
        );
    }

    #[test]
    fn long_error_messages_are_cut_at_a_character_boundary() {
        let message = "é".repeat(100); // 200 bytes
        let mut buf = vec![0u8; REPLY_ERR_HEADER_LEN + 50];
        let n = encode_reply_err(1, 2, &message, false, &mut buf).unwrap();
        let RedoReply::Err { message: got, .. } = decode_reply(&buf[..n]).unwrap() else { panic!() };
        assert!(got.ends_with('…'));
        assert!(got.len() <= 50);
        assert!(message.starts_with(got.trim_end_matches('…')));
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(matches!(decode_reply(&[]), Err(DecodeError::Truncated { .. })));
        assert_eq!(decode_reply(&[9]).unwrap_err(), DecodeError::BadReplyTag(9));
        assert!(matches!(decode_reply(&[REPLY_OK, 1, 2]), Err(DecodeError::Truncated { .. })));
        let mut buf = vec![0u8; 100];
        let n = encode_reply_err(1, 2, "abc", true, &mut buf).unwrap();
        assert_eq!(decode_reply(&buf[..n + 1]).unwrap_err(), DecodeError::TrailingBytes(1));
        buf[n - 1] = 0xff;
        assert_eq!(decode_reply(&buf[..n]).unwrap_err(), DecodeError::MessageNotUtf8);
        let mut ok = vec![0u8; REPLY_OK_LEN + 1];
        ok[0] = REPLY_OK;
        assert_eq!(decode_reply(&ok).unwrap_err(), DecodeError::TrailingBytes(1));
    }

    #[test]
    fn batches_round_trip_item_by_item() {
        let requests = [sample_request(true, 3), sample_request(false, 1), sample_request(true, 0)];
        let items: Vec<BatchItem<'_>> =
            requests.iter().map(|r| BatchItem { target: r.target, base_image: r.base_image.as_deref(), records: &r.records }).collect();
        let mut buf = vec![0u8; encoded_batch_len(&items)];
        let n = encode_batch_into(&items, &mut buf).unwrap();
        assert_eq!(n, buf.len());
        assert!(is_batch(&buf) && !is_batch(&encode_request(&requests[0])));
        let views = decode_batch(&buf).unwrap();
        // Batch items carry no flags.
        let expected: Vec<RedoRequest> = requests.iter().map(|r| RedoRequest { flags: 0, ..r.clone() }).collect();
        assert!(views.iter().map(|v| v.to_request()).eq(expected), "batch items differ from the requests");
        // Too small a buffer, a cut batch, a bad item, trailing bytes.
        assert!(encode_batch_into(&items, &mut buf[..n - 1]).is_err());
        assert!(matches!(decode_batch(&buf[..n - 1]), Err(DecodeError::Truncated { .. })));
        let mut bad = buf.clone();
        bad[BATCH_HEADER_LEN + BATCH_ITEM_HEADER_LEN] ^= 0xff;
        assert!(matches!(decode_batch(&bad), Err(DecodeError::BadMagic(_))));
        buf.push(0);
        assert_eq!(decode_batch(&buf).unwrap_err(), DecodeError::TrailingBytes(1));
    }

    #[test]
    fn batch_replies_carry_pages_and_errors_in_order() {
        let page_a = [1u8; PAGE_SIZE];
        let page_b = [2u8; PAGE_SIZE];
        let long = "x".repeat(5000);
        let replies: Vec<BatchItemReply<'_>> =
            vec![Ok(&page_a), Err((9, 10, long.as_str(), false)), Ok(&page_b), Err((3, 11, "bad", true))];
        let mut buf = vec![0u8; encoded_batch_reply_len(replies.len())];
        let n = encode_batch_reply(&replies, &mut buf).unwrap();
        let got = decode_batch_reply(&buf[..n]).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], RedoReply::Ok(Box::new(page_a)));
        let RedoReply::Err { lsn: 9, rmgr: 10, message, rejected: false } = &got[1] else { panic!("{:?}", got[1]) };
        assert!(message.len() <= BATCH_ERROR_ROOM && message.ends_with('…'));
        assert_eq!(got[2], RedoReply::Ok(Box::new(page_b)));
        assert_eq!(got[3], RedoReply::Err { lsn: 3, rmgr: 11, message: "bad".into(), rejected: true });
        // A single reply in place of a batch reply is handed back as such.
        let mut single = vec![0u8; 64];
        let m = encode_reply_err(1, 2, "malformed", true, &mut single).unwrap();
        assert!(matches!(decode_batch_reply(&single[..m]), Err(Ok(RedoReply::Err { .. }))));
        assert!(matches!(decode_batch_reply(&buf[..n - 1]), Err(Err(DecodeError::Truncated { .. }))));
    }
}

//! The pagestream protocol: the messages a compute node and the page server
//! exchange inside libpq CopyData messages after `pagestream_v2` or
//! `pagestream_v3`.
//!
//! This module is a pure codec: bytes in, messages out, and back. It follows
//! the wire layouts of Neon's pagestream protocol versions 2 and 3, so a Neon
//! compute and this page server understand each other. All integers are
//! big-endian.
//!
//! # Requests (frontend → page server)
//!
//! Every request starts with a one-byte tag and a header. In v2 the header is
//! `request_lsn u64, not_modified_since u64`; v3 puts a request id in front:
//! `reqid u64, request_lsn u64, not_modified_since u64`. Then:
//!
//! | tag | request | body after the header | v2 bytes | v3 bytes |
//! |---|---|---|---|---|
//! | 0 | Exists | spc u32, db u32, rel u32, fork u8 | 30 | 38 |
//! | 1 | Nblocks | spc u32, db u32, rel u32, fork u8 | 30 | 38 |
//! | 2 | GetPage | spc u32, db u32, rel u32, fork u8, blkno u32 | 34 | 42 |
//! | 3 | DbSize | db u32 | 21 | 29 |
//! | 4 | GetSlruSegment | kind u8, segno u32 | 22 | 30 |
//!
//! SLRU kinds are numbered as Neon numbers them: 0 `pg_xact`, 1
//! `pg_multixact/members`, 2 `pg_multixact/offsets` ([`slru_kind_to_wire`]).
//!
//! # Responses (page server → frontend)
//!
//! A v2 response is its tag and its payload. A v3 response is its tag, the
//! request's header, the request's body (everything after its header, echoed
//! so the client can check which request is answered), then the payload. An
//! Error response echoes only the header.
//!
//! | tag | response | payload |
//! |---|---|---|
//! | 100 | Exists | exists u8 (0 or 1) |
//! | 101 | Nblocks | n_blocks u32 |
//! | 102 | GetPage | the page, exactly 8192 bytes |
//! | 103 | Error | the message, a NUL-terminated string |
//! | 104 | DbSize | size in bytes, i64 |
//! | 105 | GetSlruSegment | n_blocks u32, then n_blocks × 8192 bytes |
//!
//! v2 responses carry nothing that names their request: the client matches
//! them to its requests by order (answers come in request order). Use
//! [`Response::parse_for`] to parse an answer to a known request in either
//! version; it fills a v2 response's echo from the request and checks a v3
//! echo against it.
//!
//! Parsing is strict: a message of the wrong length, an unknown tag, a fork
//! number above 3, an unknown SLRU kind, an exists flag other than 0 or 1, a
//! segment that is not a whole number of pages (or more than one segment's
//! worth), or an error message without its terminator is an error, never a
//! panic.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::key::{RelTag, SlruKind, INIT_FORKNUM};
use crate::lsn::Lsn;
use crate::wal::ingest::SLRU_PAGES_PER_SEGMENT;
use crate::wal::BLCKSZ;

/// An SLRU kind's number in GetSlruSegment (Neon's `SlruKind` order).
pub fn slru_kind_to_wire(kind: SlruKind) -> u8 {
    match kind {
        SlruKind::Clog => 0,
        SlruKind::MultiXactMembers => 1,
        SlruKind::MultiXactOffsets => 2,
    }
}

/// The SLRU kind a GetSlruSegment number names, if any.
pub fn slru_kind_from_wire(kind: u8) -> Option<SlruKind> {
    SlruKind::ALL.into_iter().find(|k| slru_kind_to_wire(*k) == kind)
}

/// Message tags (the values of Neon's `NeonMessageTag`): requests 0..=4, responses 100..=105.
pub mod tag {
    pub const EXISTS_REQUEST: u8 = 0;
    pub const NBLOCKS_REQUEST: u8 = 1;
    pub const GET_PAGE_REQUEST: u8 = 2;
    pub const DB_SIZE_REQUEST: u8 = 3;
    pub const GET_SLRU_SEGMENT_REQUEST: u8 = 4;

    pub const EXISTS_RESPONSE: u8 = 100;
    pub const NBLOCKS_RESPONSE: u8 = 101;
    pub const GET_PAGE_RESPONSE: u8 = 102;
    pub const ERROR_RESPONSE: u8 = 103;
    pub const DB_SIZE_RESPONSE: u8 = 104;
    pub const GET_SLRU_SEGMENT_RESPONSE: u8 = 105;
}

/// Bytes of an encoded [`RelTag`]: spc, db, rel (u32 each) and fork (u8).
const RELTAG_LEN: usize = 13;

/// The largest SLRU segment a GetSlruSegment response may carry, in blocks.
pub const MAX_SLRU_SEGMENT_BLOCKS: u32 = SLRU_PAGES_PER_SEGMENT;

/// The pagestream protocol version chosen by the `pagestream_v2` or
/// `pagestream_v3` command.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ProtocolVersion {
    V2,
    V3,
}

impl ProtocolVersion {
    /// The page service command that opens a stream of this version.
    pub fn command(self) -> &'static str {
        match self {
            ProtocolVersion::V2 => "pagestream_v2",
            ProtocolVersion::V3 => "pagestream_v3",
        }
    }

    /// The version a page service command names, if it is a pagestream command.
    pub fn from_command(command: &str) -> Option<ProtocolVersion> {
        match command {
            "pagestream_v2" => Some(ProtocolVersion::V2),
            "pagestream_v3" => Some(ProtocolVersion::V3),
            _ => None,
        }
    }

    /// Bytes of a request header in this version.
    pub fn header_len(self) -> usize {
        match self {
            ProtocolVersion::V2 => 16,
            ProtocolVersion::V3 => 24,
        }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProtocolVersion::V2 => "v2",
            ProtocolVersion::V3 => "v3",
        })
    }
}

/// The fields every request starts with.
///
/// `request_lsn` is the LSN to read at ([`Lsn::MAX`] means "the latest");
/// `not_modified_since` is the client's promise that the object did not change
/// between it and `request_lsn`. `reqid` exists only in v3: a v2 request
/// encodes without it and parses with `reqid` 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct RequestHeader {
    pub reqid: u64,
    pub request_lsn: Lsn,
    pub not_modified_since: Lsn,
}

/// A request of the frontend (compute node) to the page server.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Request {
    /// Does the relation fork exist?
    Exists { hdr: RequestHeader, rel: RelTag },
    /// How many blocks has the relation fork?
    Nblocks { hdr: RequestHeader, rel: RelTag },
    /// One 8 KiB page.
    GetPage { hdr: RequestHeader, rel: RelTag, blkno: u32 },
    /// The total size of a database's relations, in bytes.
    DbSize { hdr: RequestHeader, db_oid: u32 },
    /// A whole SLRU segment.
    GetSlruSegment { hdr: RequestHeader, kind: SlruKind, segno: u32 },
}

/// An answer of the page server to one [`Request`].
///
/// Besides its payload, each response holds the request's header and body
/// (`hdr`, `rel`, `blkno`, ...): v3 puts them on the wire, v2 does not (see
/// [`Response::parse`] and [`Response::parse_for`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Response {
    Exists {
        hdr: RequestHeader,
        rel: RelTag,
        exists: bool,
    },
    Nblocks {
        hdr: RequestHeader,
        rel: RelTag,
        n: u32,
    },
    /// `page` must be exactly 8192 bytes.
    GetPage {
        hdr: RequestHeader,
        rel: RelTag,
        blkno: u32,
        page: Bytes,
    },
    DbSize {
        hdr: RequestHeader,
        db_oid: u32,
        bytes: i64,
    },
    /// `segment` must be a whole number of 8192-byte blocks, at most
    /// [`MAX_SLRU_SEGMENT_BLOCKS`].
    GetSlruSegment {
        hdr: RequestHeader,
        kind: SlruKind,
        segno: u32,
        segment: Bytes,
    },
    /// The request failed. The message goes on the wire as a C string, so it
    /// ends at its first NUL character, if any.
    Error {
        hdr: RequestHeader,
        message: String,
    },
}

/// Why bytes are not a valid pagestream message, or a response does not
/// answer the request it was read for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PagestreamError {
    #[error("empty pagestream {0}: no message tag")]
    Empty(&'static str),
    #[error("unknown pagestream request tag {0} (expected 0 Exists, 1 Nblocks, 2 GetPage, 3 DbSize or 4 GetSlruSegment)")]
    UnknownRequestTag(u8),
    #[error(
        "unknown pagestream response tag {0} (expected 100 Exists, 101 Nblocks, 102 GetPage, 103 Error, 104 DbSize or 105 GetSlruSegment)"
    )]
    UnknownResponseTag(u8),
    #[error("pagestream {version} {message}: expected {expected} bytes, got {actual}")]
    WrongLength { version: ProtocolVersion, message: &'static str, expected: usize, actual: usize },
    #[error("pagestream {version} {message}: expected at least {minimum} bytes, got {actual}")]
    TooShort { version: ProtocolVersion, message: &'static str, minimum: usize, actual: usize },
    #[error("invalid fork number {0} in pagestream {1} (expected 0 main, 1 fsm, 2 vm or 3 init)")]
    InvalidFork(u8, &'static str),
    #[error("unknown SLRU kind {0} in pagestream {1} (expected 0 pg_xact, 1 multixact members or 2 multixact offsets)")]
    UnknownSlruKind(u8, &'static str),
    #[error("invalid exists flag {0} in pagestream Exists response (expected 0 or 1)")]
    InvalidExistsFlag(u8),
    #[error(
        "pagestream {version} GetSlruSegment response: header says {n_blocks} blocks ({} bytes) but {actual} bytes follow",
        u64::from(*n_blocks) * BLCKSZ as u64
    )]
    SegmentLengthMismatch { version: ProtocolVersion, n_blocks: u32, actual: usize },
    #[error("pagestream GetSlruSegment response of {0} blocks: an SLRU segment has at most {MAX_SLRU_SEGMENT_BLOCKS}")]
    SegmentTooLarge(u32),
    #[error("pagestream GetPage response page of {0} bytes (a page is 8192)")]
    BadPageSize(usize),
    #[error("pagestream GetSlruSegment response segment of {0} bytes (not a multiple of 8192)")]
    SegmentNotWholeBlocks(usize),
    #[error("pagestream Error response: the message has no NUL terminator")]
    UnterminatedErrorMessage,
    #[error("pagestream Error response: {0} bytes follow the message's NUL terminator")]
    TrailingAfterErrorMessage(usize),
    #[error("pagestream Error response: the message is not valid UTF-8")]
    ErrorMessageNotUtf8,
    #[error("pagestream {request} request answered by a {response} response")]
    UnexpectedResponse { request: &'static str, response: &'static str },
    #[error("pagestream {request} response echoes {field} {got}, but the request sent {sent}")]
    EchoMismatch { request: &'static str, field: &'static str, sent: String, got: String },
}

/// Reads big-endian fields off a slice whose length was checked beforehand;
/// running short still yields an error rather than a panic.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
    version: ProtocolVersion,
    len: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str, version: ProtocolVersion) -> Reader<'a> {
        Reader { buf, what, version, len: buf.len() }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], PagestreamError> {
        match self.buf.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.buf = rest;
                Ok(*head)
            }
            None => Err(PagestreamError::TooShort {
                version: self.version,
                message: self.what,
                minimum: self.len - self.buf.len() + N,
                actual: self.len,
            }),
        }
    }
    fn u8(&mut self) -> Result<u8, PagestreamError> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, PagestreamError> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, PagestreamError> {
        Ok(u64::from_be_bytes(self.take()?))
    }
    fn i64(&mut self) -> Result<i64, PagestreamError> {
        Ok(i64::from_be_bytes(self.take()?))
    }
    fn header(&mut self) -> Result<RequestHeader, PagestreamError> {
        let reqid = match self.version {
            ProtocolVersion::V2 => 0,
            ProtocolVersion::V3 => self.u64()?,
        };
        Ok(RequestHeader { reqid, request_lsn: Lsn(self.u64()?), not_modified_since: Lsn(self.u64()?) })
    }
    fn rel(&mut self) -> Result<RelTag, PagestreamError> {
        let rel = RelTag::new(self.u32()?, self.u32()?, self.u32()?, self.u8()?);
        if rel.fork > INIT_FORKNUM {
            return Err(PagestreamError::InvalidFork(rel.fork, self.what));
        }
        Ok(rel)
    }
    fn slru_kind(&mut self) -> Result<SlruKind, PagestreamError> {
        let kind = self.u8()?;
        slru_kind_from_wire(kind).ok_or(PagestreamError::UnknownSlruKind(kind, self.what))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

fn put_header(buf: &mut BytesMut, version: ProtocolVersion, hdr: &RequestHeader) {
    if version == ProtocolVersion::V3 {
        buf.put_u64(hdr.reqid);
    }
    buf.put_u64(hdr.request_lsn.0);
    buf.put_u64(hdr.not_modified_since.0);
}

fn put_rel(buf: &mut BytesMut, rel: &RelTag) {
    buf.put_u32(rel.spc_node);
    buf.put_u32(rel.db_node);
    buf.put_u32(rel.rel_node);
    buf.put_u8(rel.fork);
}

fn check_len(buf: &[u8], version: ProtocolVersion, message: &'static str, expected: usize) -> Result<(), PagestreamError> {
    if buf.len() != expected {
        return Err(PagestreamError::WrongLength { version, message, expected, actual: buf.len() });
    }
    Ok(())
}

impl Request {
    /// The message's name, e.g. `"GetPage"`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Request::Exists { .. } => "Exists",
            Request::Nblocks { .. } => "Nblocks",
            Request::GetPage { .. } => "GetPage",
            Request::DbSize { .. } => "DbSize",
            Request::GetSlruSegment { .. } => "GetSlruSegment",
        }
    }

    pub fn header(&self) -> &RequestHeader {
        match self {
            Request::Exists { hdr, .. }
            | Request::Nblocks { hdr, .. }
            | Request::GetPage { hdr, .. }
            | Request::DbSize { hdr, .. }
            | Request::GetSlruSegment { hdr, .. } => hdr,
        }
    }

    pub fn header_mut(&mut self) -> &mut RequestHeader {
        match self {
            Request::Exists { hdr, .. }
            | Request::Nblocks { hdr, .. }
            | Request::GetPage { hdr, .. }
            | Request::DbSize { hdr, .. }
            | Request::GetSlruSegment { hdr, .. } => hdr,
        }
    }

    fn tag(&self) -> u8 {
        match self {
            Request::Exists { .. } => tag::EXISTS_REQUEST,
            Request::Nblocks { .. } => tag::NBLOCKS_REQUEST,
            Request::GetPage { .. } => tag::GET_PAGE_REQUEST,
            Request::DbSize { .. } => tag::DB_SIZE_REQUEST,
            Request::GetSlruSegment { .. } => tag::GET_SLRU_SEGMENT_REQUEST,
        }
    }

    /// Bytes of the body after the header (also what a v3 response echoes).
    fn body_len(&self) -> usize {
        match self {
            Request::Exists { .. } | Request::Nblocks { .. } => RELTAG_LEN,
            Request::GetPage { .. } => RELTAG_LEN + 4,
            Request::DbSize { .. } => 4,
            Request::GetSlruSegment { .. } => 5,
        }
    }

    /// Bytes of the encoded request in `version`.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        1 + version.header_len() + self.body_len()
    }

    /// Appends the request's bytes (the payload of one CopyData message).
    /// In v2 the header's `reqid` is not sent.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.reserve(self.encoded_len(version));
        buf.put_u8(self.tag());
        put_header(buf, version, self.header());
        self.put_body(buf);
    }

    fn put_body(&self, buf: &mut BytesMut) {
        match self {
            Request::Exists { rel, .. } | Request::Nblocks { rel, .. } => put_rel(buf, rel),
            Request::GetPage { rel, blkno, .. } => {
                put_rel(buf, rel);
                buf.put_u32(*blkno);
            }
            Request::DbSize { db_oid, .. } => buf.put_u32(*db_oid),
            Request::GetSlruSegment { kind, segno, .. } => {
                buf.put_u8(slru_kind_to_wire(*kind));
                buf.put_u32(*segno);
            }
        }
    }

    /// Parses one request (the payload of one CopyData message). The whole
    /// slice must be the request: nothing may follow it.
    pub fn parse(version: ProtocolVersion, buf: &[u8]) -> Result<Request, PagestreamError> {
        let (&tag, _) = buf.split_first().ok_or(PagestreamError::Empty("request"))?;
        let (name, body_len) = match tag {
            tag::EXISTS_REQUEST => ("Exists request", RELTAG_LEN),
            tag::NBLOCKS_REQUEST => ("Nblocks request", RELTAG_LEN),
            tag::GET_PAGE_REQUEST => ("GetPage request", RELTAG_LEN + 4),
            tag::DB_SIZE_REQUEST => ("DbSize request", 4),
            tag::GET_SLRU_SEGMENT_REQUEST => ("GetSlruSegment request", 5),
            other => return Err(PagestreamError::UnknownRequestTag(other)),
        };
        check_len(buf, version, name, 1 + version.header_len() + body_len)?;
        let mut r = Reader::new(buf, name, version);
        r.u8()?;
        let hdr = r.header()?;
        Ok(match tag {
            tag::EXISTS_REQUEST => Request::Exists { hdr, rel: r.rel()? },
            tag::NBLOCKS_REQUEST => Request::Nblocks { hdr, rel: r.rel()? },
            tag::GET_PAGE_REQUEST => Request::GetPage { hdr, rel: r.rel()?, blkno: r.u32()? },
            tag::DB_SIZE_REQUEST => Request::DbSize { hdr, db_oid: r.u32()? },
            _ => Request::GetSlruSegment { hdr, kind: r.slru_kind()?, segno: r.u32()? },
        })
    }

    /// An Error response to this request.
    pub fn error_response(&self, message: impl Into<String>) -> Response {
        Response::Error { hdr: *self.header(), message: message.into() }
    }
}

impl Response {
    /// The message's name, e.g. `"GetPage"`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Response::Exists { .. } => "Exists",
            Response::Nblocks { .. } => "Nblocks",
            Response::GetPage { .. } => "GetPage",
            Response::DbSize { .. } => "DbSize",
            Response::GetSlruSegment { .. } => "GetSlruSegment",
            Response::Error { .. } => "Error",
        }
    }

    /// The header of the request this answers (all zeros for a v2 response
    /// parsed with [`Response::parse`]).
    pub fn header(&self) -> &RequestHeader {
        match self {
            Response::Exists { hdr, .. }
            | Response::Nblocks { hdr, .. }
            | Response::GetPage { hdr, .. }
            | Response::DbSize { hdr, .. }
            | Response::GetSlruSegment { hdr, .. }
            | Response::Error { hdr, .. } => hdr,
        }
    }

    fn tag(&self) -> u8 {
        match self {
            Response::Exists { .. } => tag::EXISTS_RESPONSE,
            Response::Nblocks { .. } => tag::NBLOCKS_RESPONSE,
            Response::GetPage { .. } => tag::GET_PAGE_RESPONSE,
            Response::DbSize { .. } => tag::DB_SIZE_RESPONSE,
            Response::GetSlruSegment { .. } => tag::GET_SLRU_SEGMENT_RESPONSE,
            Response::Error { .. } => tag::ERROR_RESPONSE,
        }
    }

    /// The bytes of the error message that go on the wire (up to its first NUL).
    fn error_message_bytes(message: &str) -> &[u8] {
        let bytes = message.as_bytes();
        match bytes.iter().position(|&b| b == 0) {
            Some(nul) => &bytes[..nul],
            None => bytes,
        }
    }

    /// Whether the payload obeys the protocol's size rules (a GetPage page of
    /// 8192 bytes, a segment of whole blocks and at most one segment). A
    /// response that fails this check still encodes, but no peer will accept it.
    pub fn check(&self) -> Result<(), PagestreamError> {
        match self {
            Response::GetPage { page, .. } if page.len() != BLCKSZ => Err(PagestreamError::BadPageSize(page.len())),
            Response::GetSlruSegment { segment, .. } => {
                if segment.len() % BLCKSZ != 0 {
                    return Err(PagestreamError::SegmentNotWholeBlocks(segment.len()));
                }
                match u32::try_from(segment.len() / BLCKSZ) {
                    Ok(n) if n <= MAX_SLRU_SEGMENT_BLOCKS => Ok(()),
                    Ok(n) => Err(PagestreamError::SegmentTooLarge(n)),
                    Err(_) => Err(PagestreamError::SegmentTooLarge(u32::MAX)),
                }
            }
            _ => Ok(()),
        }
    }

    /// Bytes of the encoded response in `version`.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let echo = match (version, self) {
            (ProtocolVersion::V2, _) => 0,
            (ProtocolVersion::V3, Response::Exists { .. } | Response::Nblocks { .. }) => 24 + RELTAG_LEN,
            (ProtocolVersion::V3, Response::GetPage { .. }) => 24 + RELTAG_LEN + 4,
            (ProtocolVersion::V3, Response::DbSize { .. }) => 24 + 4,
            (ProtocolVersion::V3, Response::GetSlruSegment { .. }) => 24 + 5,
            (ProtocolVersion::V3, Response::Error { .. }) => 24,
        };
        let payload = match self {
            Response::Exists { .. } => 1,
            Response::Nblocks { .. } => 4,
            Response::GetPage { page, .. } => page.len(),
            Response::DbSize { .. } => 8,
            Response::GetSlruSegment { segment, .. } => 4 + segment.len(),
            Response::Error { message, .. } => Self::error_message_bytes(message).len() + 1,
        };
        1 + echo + payload
    }

    /// Appends the response's bytes (the payload of one CopyData message).
    /// In v2 nothing of the request is sent. The payload should pass
    /// [`Response::check`] (debug builds assert it).
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        debug_assert_eq!(self.check(), Ok(()));
        buf.reserve(self.encoded_len(version));
        buf.put_u8(self.tag());
        if version == ProtocolVersion::V3 {
            put_header(buf, version, self.header());
            match self {
                Response::Exists { rel, .. } | Response::Nblocks { rel, .. } => put_rel(buf, rel),
                Response::GetPage { rel, blkno, .. } => {
                    put_rel(buf, rel);
                    buf.put_u32(*blkno);
                }
                Response::DbSize { db_oid, .. } => buf.put_u32(*db_oid),
                Response::GetSlruSegment { kind, segno, .. } => {
                    buf.put_u8(slru_kind_to_wire(*kind));
                    buf.put_u32(*segno);
                }
                Response::Error { .. } => {}
            }
        }
        match self {
            Response::Exists { exists, .. } => buf.put_u8(u8::from(*exists)),
            Response::Nblocks { n, .. } => buf.put_u32(*n),
            Response::GetPage { page, .. } => buf.put_slice(page),
            Response::DbSize { bytes, .. } => buf.put_i64(*bytes),
            Response::GetSlruSegment { segment, .. } => {
                buf.put_u32((segment.len() / BLCKSZ) as u32);
                buf.put_slice(segment);
            }
            Response::Error { message, .. } => {
                buf.put_slice(Self::error_message_bytes(message));
                buf.put_u8(0);
            }
        }
    }

    /// Parses one response (the payload of one CopyData message); the whole
    /// slice must be the response.
    ///
    /// A v2 response does not carry its request's fields, so they parse as
    /// zeros (header, relation, block, database, segment number) and
    /// [`SlruKind::Clog`]; [`Response::parse_for`] fills them from the request.
    pub fn parse(version: ProtocolVersion, buf: &[u8]) -> Result<Response, PagestreamError> {
        let v3 = version == ProtocolVersion::V3;
        let (&tag, _) = buf.split_first().ok_or(PagestreamError::Empty("response"))?;
        let hdr_len = if v3 { 24 } else { 0 };
        // The fixed part: tag, echo (v3) and payload, or the part before the
        // variable payload of GetSlruSegment and Error.
        let (name, fixed_len, exact) = match tag {
            tag::EXISTS_RESPONSE => ("Exists response", 1 + if v3 { hdr_len + RELTAG_LEN } else { 0 } + 1, true),
            tag::NBLOCKS_RESPONSE => ("Nblocks response", 1 + if v3 { hdr_len + RELTAG_LEN } else { 0 } + 4, true),
            tag::GET_PAGE_RESPONSE => ("GetPage response", 1 + if v3 { hdr_len + RELTAG_LEN + 4 } else { 0 } + BLCKSZ, true),
            tag::DB_SIZE_RESPONSE => ("DbSize response", 1 + if v3 { hdr_len + 4 } else { 0 } + 8, true),
            tag::GET_SLRU_SEGMENT_RESPONSE => ("GetSlruSegment response", 1 + if v3 { hdr_len + 5 } else { 0 } + 4, false),
            tag::ERROR_RESPONSE => ("Error response", 1 + hdr_len + 1, false),
            other => return Err(PagestreamError::UnknownResponseTag(other)),
        };
        if exact {
            check_len(buf, version, name, fixed_len)?;
        } else if buf.len() < fixed_len {
            return Err(PagestreamError::TooShort { version, message: name, minimum: fixed_len, actual: buf.len() });
        }
        let mut r = Reader::new(buf, name, version);
        r.u8()?;
        let hdr = if v3 { r.header()? } else { RequestHeader::default() };
        let rel = |r: &mut Reader| if v3 { r.rel() } else { Ok(RelTag::new(0, 0, 0, 0)) };
        let u32_echo = |r: &mut Reader| if v3 { r.u32() } else { Ok(0) };
        Ok(match tag {
            tag::EXISTS_RESPONSE => {
                let rel = rel(&mut r)?;
                let exists = match r.u8()? {
                    0 => false,
                    1 => true,
                    other => return Err(PagestreamError::InvalidExistsFlag(other)),
                };
                Response::Exists { hdr, rel, exists }
            }
            tag::NBLOCKS_RESPONSE => Response::Nblocks { hdr, rel: rel(&mut r)?, n: r.u32()? },
            tag::GET_PAGE_RESPONSE => {
                Response::GetPage { hdr, rel: rel(&mut r)?, blkno: u32_echo(&mut r)?, page: Bytes::copy_from_slice(r.rest()) }
            }
            tag::DB_SIZE_RESPONSE => Response::DbSize { hdr, db_oid: u32_echo(&mut r)?, bytes: r.i64()? },
            tag::GET_SLRU_SEGMENT_RESPONSE => {
                let kind = if v3 { r.slru_kind()? } else { SlruKind::Clog };
                let segno = u32_echo(&mut r)?;
                let n_blocks = r.u32()?;
                let segment = r.rest();
                if u64::from(n_blocks) * BLCKSZ as u64 != segment.len() as u64 {
                    return Err(PagestreamError::SegmentLengthMismatch { version, n_blocks, actual: segment.len() });
                }
                if n_blocks > MAX_SLRU_SEGMENT_BLOCKS {
                    return Err(PagestreamError::SegmentTooLarge(n_blocks));
                }
                Response::GetSlruSegment { hdr, kind, segno, segment: Bytes::copy_from_slice(segment) }
            }
            _ => {
                let text = r.rest();
                let nul = text.iter().position(|&b| b == 0).ok_or(PagestreamError::UnterminatedErrorMessage)?;
                if nul + 1 != text.len() {
                    return Err(PagestreamError::TrailingAfterErrorMessage(text.len() - nul - 1));
                }
                let message = std::str::from_utf8(&text[..nul]).map_err(|_| PagestreamError::ErrorMessageNotUtf8)?.to_string();
                Response::Error { hdr, message }
            }
        })
    }

    /// Parses the answer to `request`, which was sent in the same stream.
    ///
    /// The response must be of the request's kind, or an Error. In v2 the
    /// request's header and body are copied into the response; in v3 the
    /// response's echo must equal them.
    pub fn parse_for(version: ProtocolVersion, buf: &[u8], request: &Request) -> Result<Response, PagestreamError> {
        let mut response = Response::parse(version, buf)?;
        if version == ProtocolVersion::V2 {
            response.fill_echo(request)?;
        }
        response.check_answers(request)?;
        Ok(response)
    }

    /// Copies the request's header and body into this response's echo fields.
    fn fill_echo(&mut self, request: &Request) -> Result<(), PagestreamError> {
        let mismatch = || PagestreamError::UnexpectedResponse { request: request.kind_name(), response: self.kind_name() };
        let err = mismatch();
        match (&mut *self, request) {
            (Response::Error { hdr, .. }, req) => *hdr = *req.header(),
            (Response::Exists { hdr, rel, .. }, Request::Exists { hdr: h, rel: r })
            | (Response::Nblocks { hdr, rel, .. }, Request::Nblocks { hdr: h, rel: r }) => {
                *hdr = *h;
                *rel = *r;
            }
            (Response::GetPage { hdr, rel, blkno, .. }, Request::GetPage { hdr: h, rel: r, blkno: b }) => {
                *hdr = *h;
                *rel = *r;
                *blkno = *b;
            }
            (Response::DbSize { hdr, db_oid, .. }, Request::DbSize { hdr: h, db_oid: d }) => {
                *hdr = *h;
                *db_oid = *d;
            }
            (Response::GetSlruSegment { hdr, kind, segno, .. }, Request::GetSlruSegment { hdr: h, kind: k, segno: s }) => {
                *hdr = *h;
                *kind = *k;
                *segno = *s;
            }
            _ => return Err(err),
        }
        Ok(())
    }

    /// Checks that this response answers `request`: the same kind (or an
    /// Error) and the same header and echoed body.
    pub fn check_answers(&self, request: &Request) -> Result<(), PagestreamError> {
        let name = request.kind_name();
        let echo = |field: &'static str, sent: String, got: String| {
            if sent == got {
                Ok(())
            } else {
                Err(PagestreamError::EchoMismatch { request: name, field, sent, got })
            }
        };
        let (sent, got) = (request.header(), self.header());
        echo("reqid", sent.reqid.to_string(), got.reqid.to_string())?;
        echo("request_lsn", sent.request_lsn.to_string(), got.request_lsn.to_string())?;
        echo("not_modified_since", sent.not_modified_since.to_string(), got.not_modified_since.to_string())?;
        match (self, request) {
            (Response::Error { .. }, _) => Ok(()),
            (Response::Exists { rel, .. }, Request::Exists { rel: r, .. })
            | (Response::Nblocks { rel, .. }, Request::Nblocks { rel: r, .. }) => echo("relation", format!("{r:?}"), format!("{rel:?}")),
            (Response::GetPage { rel, blkno, .. }, Request::GetPage { rel: r, blkno: b, .. }) => {
                echo("relation", format!("{r:?}"), format!("{rel:?}"))?;
                echo("block", b.to_string(), blkno.to_string())
            }
            (Response::DbSize { db_oid, .. }, Request::DbSize { db_oid: d, .. }) => echo("database", d.to_string(), db_oid.to_string()),
            (Response::GetSlruSegment { kind, segno, .. }, Request::GetSlruSegment { kind: k, segno: s, .. }) => {
                echo("SLRU kind", format!("{k:?}"), format!("{kind:?}"))?;
                echo("segment number", s.to_string(), segno.to_string())
            }
            _ => Err(PagestreamError::UnexpectedResponse { request: name, response: self.kind_name() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProtocolVersion::{V2, V3};

    const LSN_A: Lsn = Lsn(0x0000_0001_0203_0405);
    const LSN_B: Lsn = Lsn(0x0000_0001_0000_0010);

    fn hdr() -> RequestHeader {
        RequestHeader { reqid: 0x1122_3344_5566_7788, request_lsn: LSN_A, not_modified_since: LSN_B }
    }

    fn rel() -> RelTag {
        RelTag::new(1663, 5, 16384, 2)
    }

    fn requests(hdr: RequestHeader) -> Vec<Request> {
        vec![
            Request::Exists { hdr, rel: rel() },
            Request::Nblocks { hdr, rel: rel().with_fork(0) },
            Request::GetPage { hdr, rel: rel().with_fork(3), blkno: 0xdead_beef },
            Request::DbSize { hdr, db_oid: 5 },
            Request::GetSlruSegment { hdr, kind: SlruKind::MultiXactMembers, segno: 7 },
            Request::GetSlruSegment { hdr, kind: SlruKind::Clog, segno: 0 },
        ]
    }

    fn page(fill: u8) -> Bytes {
        Bytes::from((0..BLCKSZ).map(|i| (i as u8) ^ fill).collect::<Vec<_>>())
    }

    /// A response of each kind (and an error) answering `req`.
    fn answers(req: &Request) -> Vec<Response> {
        let hdr = *req.header();
        let ok = match *req {
            Request::Exists { rel, .. } => {
                vec![Response::Exists { hdr, rel, exists: true }, Response::Exists { hdr, rel, exists: false }]
            }
            Request::Nblocks { rel, .. } => vec![Response::Nblocks { hdr, rel, n: 0x0102_0304 }],
            Request::GetPage { rel, blkno, .. } => vec![Response::GetPage { hdr, rel, blkno, page: page(0x5a) }],
            Request::DbSize { db_oid, .. } => vec![Response::DbSize { hdr, db_oid, bytes: -2 }],
            Request::GetSlruSegment { kind, segno, .. } => vec![
                Response::GetSlruSegment { hdr, kind, segno, segment: Bytes::new() },
                Response::GetSlruSegment { hdr, kind, segno, segment: Bytes::from(vec![7u8; BLCKSZ * MAX_SLRU_SEGMENT_BLOCKS as usize]) },
            ],
        };
        let mut all = ok;
        all.push(req.error_response("could not read block: ünïcode"));
        all.push(req.error_response(""));
        all
    }

    fn encode_req(req: &Request, v: ProtocolVersion) -> Vec<u8> {
        let mut buf = BytesMut::new();
        req.encode(v, &mut buf);
        assert_eq!(buf.len(), req.encoded_len(v));
        buf.to_vec()
    }

    fn encode_resp(resp: &Response, v: ProtocolVersion) -> Vec<u8> {
        let mut buf = BytesMut::new();
        resp.encode(v, &mut buf);
        assert_eq!(buf.len(), resp.encoded_len(v), "{resp:?}");
        buf.to_vec()
    }

    fn v2_header(mut h: RequestHeader) -> RequestHeader {
        h.reqid = 0;
        h
    }

    #[test]
    fn requests_round_trip_in_both_versions() {
        for req in requests(hdr()) {
            let bytes = encode_req(&req, V3);
            assert_eq!(Request::parse(V3, &bytes).unwrap(), req);

            let bytes = encode_req(&req, V2);
            let mut expected = req;
            *expected.header_mut() = v2_header(*req.header());
            assert_eq!(Request::parse(V2, &bytes).unwrap(), expected, "v2 drops reqid");
        }
    }

    #[test]
    fn responses_round_trip_in_both_versions() {
        for req in requests(hdr()) {
            for resp in answers(&req) {
                let bytes = encode_resp(&resp, V3);
                assert_eq!(Response::parse(V3, &bytes).unwrap(), resp);
                assert_eq!(Response::parse_for(V3, &bytes, &req).unwrap(), resp);

                let bytes = encode_resp(&resp, V2);
                // v2 carries no echo: parse_for restores it from the request.
                assert_eq!(Response::parse_for(V2, &bytes, &req).unwrap(), resp);
                let bare = Response::parse(V2, &bytes).unwrap();
                assert_eq!(bare.kind_name(), resp.kind_name());
                assert_eq!(*bare.header(), RequestHeader::default());
                assert_eq!(encode_resp(&bare, V2), bytes, "v2 encoding ignores the echo");
            }
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    // Golden vectors written out by hand from Neon's layouts (tag, then
    // reqid in v3, request_lsn, not_modified_since, then the body).
    const H3: &str = "1122334455667788 0000000102030405 0000000100000010";
    const H2: &str = "0000000102030405 0000000100000010";
    const REL: &str = "0000067f 00000005 00004000 02";

    #[test]
    fn slru_kinds_are_numbered_as_neon_numbers_them() {
        assert_eq!(slru_kind_from_wire(0), Some(SlruKind::Clog));
        assert_eq!(slru_kind_from_wire(1), Some(SlruKind::MultiXactMembers));
        assert_eq!(slru_kind_from_wire(2), Some(SlruKind::MultiXactOffsets));
        assert_eq!(slru_kind_from_wire(3), None);
        for kind in SlruKind::ALL {
            assert_eq!(slru_kind_from_wire(slru_kind_to_wire(kind)), Some(kind));
        }
        let v3 = hex(&format!("04 {H3} 01 00000000"));
        assert!(matches!(Request::parse(V3, &v3).unwrap(), Request::GetSlruSegment { kind: SlruKind::MultiXactMembers, .. }));
    }

    #[test]
    fn golden_request_bytes() {
        let h = hdr();
        let cases = [
            (Request::Exists { hdr: h, rel: rel() }, format!("00 {H2} {REL}"), format!("00 {H3} {REL}")),
            (Request::Nblocks { hdr: h, rel: rel() }, format!("01 {H2} {REL}"), format!("01 {H3} {REL}")),
            (
                Request::GetPage { hdr: h, rel: rel(), blkno: 0xdeadbeef },
                format!("02 {H2} {REL} deadbeef"),
                format!("02 {H3} {REL} deadbeef"),
            ),
            (Request::DbSize { hdr: h, db_oid: 5 }, format!("03 {H2} 00000005"), format!("03 {H3} 00000005")),
            (
                // Neon's numbering: 2 is pg_multixact/offsets.
                Request::GetSlruSegment { hdr: h, kind: SlruKind::MultiXactOffsets, segno: 0x1234 },
                format!("04 {H2} 02 00001234"),
                format!("04 {H3} 02 00001234"),
            ),
        ];
        let lens = [(30, 38), (30, 38), (34, 42), (21, 29), (22, 30)];
        for ((req, v2, v3), (len2, len3)) in cases.iter().zip(lens) {
            assert_eq!(encode_req(req, V2), hex(v2), "{req:?} v2");
            assert_eq!(encode_req(req, V3), hex(v3), "{req:?} v3");
            assert_eq!(hex(v2).len(), len2);
            assert_eq!(hex(v3).len(), len3);
            assert_eq!(Request::parse(V3, &hex(v3)).unwrap(), *req);
        }
    }

    #[test]
    fn golden_response_bytes() {
        let h = hdr();
        let r = rel();
        let cases = [
            (Response::Exists { hdr: h, rel: r, exists: true }, "64 01".to_string(), format!("64 {H3} {REL} 01")),
            (Response::Nblocks { hdr: h, rel: r, n: 10 }, "65 0000000a".to_string(), format!("65 {H3} {REL} 0000000a")),
            (
                Response::DbSize { hdr: h, db_oid: 5, bytes: 0x0102030405060708 },
                "68 0102030405060708".to_string(),
                format!("68 {H3} 00000005 0102030405060708"),
            ),
            (
                Response::Error { hdr: h, message: "no such relation".into() },
                format!("67 {}00", hex_of(b"no such relation")),
                format!("67 {H3} {}00", hex_of(b"no such relation")),
            ),
            (
                // Neon's numbering: 1 is pg_multixact/members.
                Response::GetSlruSegment { hdr: h, kind: SlruKind::MultiXactMembers, segno: 3, segment: Bytes::new() },
                "69 00000000".to_string(),
                format!("69 {H3} 01 00000003 00000000"),
            ),
        ];
        for (resp, v2, v3) in &cases {
            assert_eq!(encode_resp(resp, V2), hex(v2), "{resp:?} v2");
            assert_eq!(encode_resp(resp, V3), hex(v3), "{resp:?} v3");
        }

        // GetPage: tag, echo, then the 8192 bytes; 8193 (v2) and 8234 (v3) in all.
        let p = page(1);
        let resp = Response::GetPage { hdr: h, rel: r, blkno: 9, page: p.clone() };
        let v2 = encode_resp(&resp, V2);
        assert_eq!(v2.len(), 1 + BLCKSZ);
        assert_eq!((v2[0], &v2[1..]), (0x66, &p[..]));
        let v3 = encode_resp(&resp, V3);
        assert_eq!(v3.len(), 8234);
        assert_eq!(v3[..42], hex(&format!("66 {H3} {REL} 00000009"))[..]);
        assert_eq!(&v3[42..], &p[..]);

        // A one-block segment: n_blocks 1, then the block.
        let resp = Response::GetSlruSegment { hdr: h, kind: SlruKind::Clog, segno: 1, segment: p.clone() };
        let v2 = encode_resp(&resp, V2);
        assert_eq!(v2[..5], hex("69 00000001")[..]);
        assert_eq!(&v2[5..], &p[..]);
        let v3 = encode_resp(&resp, V3);
        assert_eq!(v3[..34], hex(&format!("69 {H3} 00 00000001 00000001"))[..]);
    }

    fn hex_of(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn error_message_stops_at_nul() {
        let resp = Response::Error { hdr: hdr(), message: "bad\0tail".into() };
        assert_eq!(encode_resp(&resp, V2), b"\x67bad\0");
    }

    #[test]
    fn truncated_and_oversized_requests_are_rejected() {
        for v in [V2, V3] {
            for req in requests(hdr()) {
                let bytes = encode_req(&req, v);
                for cut in 0..bytes.len() {
                    let err = Request::parse(v, &bytes[..cut]).unwrap_err();
                    if cut == 0 {
                        assert_eq!(err, PagestreamError::Empty("request"));
                    } else {
                        assert!(matches!(err, PagestreamError::WrongLength { actual, .. } if actual == cut), "{err}");
                    }
                }
                let mut long = bytes.clone();
                long.push(0);
                let err = Request::parse(v, &long).unwrap_err();
                assert!(err.to_string().contains(&format!("expected {} bytes, got {}", bytes.len(), long.len())), "{err}");
            }
        }
        // A v3 request read as v2 (or the other way) has the wrong length.
        let bytes = encode_req(&requests(hdr())[2], V3);
        assert!(Request::parse(V2, &bytes).is_err());
    }

    #[test]
    fn bad_request_fields_are_rejected() {
        for v in [V2, V3] {
            let err = Request::parse(v, &[9]).unwrap_err();
            assert_eq!(err, PagestreamError::UnknownRequestTag(9));
            assert!(err.to_string().contains("unknown pagestream request tag 9"));

            let mut bytes = encode_req(&Request::GetPage { hdr: hdr(), rel: rel(), blkno: 1 }, v);
            let fork_at = 1 + v.header_len() + 12;
            bytes[fork_at] = 4;
            let err = Request::parse(v, &bytes).unwrap_err();
            assert_eq!(err, PagestreamError::InvalidFork(4, "GetPage request"));
            assert!(err.to_string().contains("invalid fork number 4"));

            let mut bytes = encode_req(&Request::GetSlruSegment { hdr: hdr(), kind: SlruKind::Clog, segno: 1 }, v);
            bytes[1 + v.header_len()] = 3;
            let err = Request::parse(v, &bytes).unwrap_err();
            assert_eq!(err, PagestreamError::UnknownSlruKind(3, "GetSlruSegment request"));
        }
    }

    #[test]
    fn truncated_and_oversized_responses_are_rejected() {
        for v in [V2, V3] {
            for req in requests(hdr()) {
                for resp in answers(&req) {
                    let bytes = encode_resp(&resp, v);
                    for cut in 0..bytes.len() {
                        assert!(Response::parse(v, &bytes[..cut]).is_err(), "{v} {} cut at {cut}", resp.kind_name());
                    }
                    let mut long = bytes.clone();
                    long.push(0);
                    assert!(Response::parse(v, &long).is_err(), "{v} {} with a byte more", resp.kind_name());
                }
            }
        }
    }

    #[test]
    fn bad_response_fields_are_rejected() {
        for v in [V2, V3] {
            assert_eq!(Response::parse(v, &[]).unwrap_err(), PagestreamError::Empty("response"));
            assert_eq!(Response::parse(v, &[2]).unwrap_err(), PagestreamError::UnknownResponseTag(2));

            let req = Request::Exists { hdr: hdr(), rel: rel() };
            let mut bytes = encode_resp(&Response::Exists { hdr: hdr(), rel: rel(), exists: true }, v);
            *bytes.last_mut().unwrap() = 2;
            assert_eq!(Response::parse(v, &bytes).unwrap_err(), PagestreamError::InvalidExistsFlag(2));

            // A segment whose n_blocks disagrees with the bytes that follow.
            let seg = Response::GetSlruSegment { hdr: hdr(), kind: SlruKind::Clog, segno: 0, segment: page(0) };
            let mut bytes = encode_resp(&seg, v);
            let n_at = bytes.len() - BLCKSZ - 4;
            bytes[n_at..n_at + 4].copy_from_slice(&2u32.to_be_bytes());
            let err = Response::parse(v, &bytes).unwrap_err();
            assert!(matches!(err, PagestreamError::SegmentLengthMismatch { n_blocks: 2, actual: BLCKSZ, .. }), "{err}");
            // n_blocks near u32::MAX must not overflow or allocate.
            bytes[n_at..n_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
            assert!(Response::parse(v, &bytes).is_err());
            // More than one segment's worth.
            let n = MAX_SLRU_SEGMENT_BLOCKS + 1;
            let mut big = bytes[..n_at].to_vec();
            big.extend(n.to_be_bytes());
            big.extend(vec![0u8; n as usize * BLCKSZ]);
            assert_eq!(Response::parse(v, &big).unwrap_err(), PagestreamError::SegmentTooLarge(n));

            // Error messages: terminator, nothing after it, UTF-8.
            let err_resp = req.error_response("oops");
            let good = encode_resp(&err_resp, v);
            let unterminated = &good[..good.len() - 1];
            assert_eq!(Response::parse(v, unterminated).unwrap_err(), PagestreamError::UnterminatedErrorMessage);
            let mut trailing = good.clone();
            trailing.extend(b"xy");
            assert_eq!(Response::parse(v, &trailing).unwrap_err(), PagestreamError::TrailingAfterErrorMessage(2));
            let mut not_utf8 = good.clone();
            let at = not_utf8.len() - 2;
            not_utf8[at] = 0xff;
            assert_eq!(Response::parse(v, &not_utf8).unwrap_err(), PagestreamError::ErrorMessageNotUtf8);
        }

        // v3 echoes are checked like requests: fork and SLRU kind.
        let mut bytes = encode_resp(&Response::Nblocks { hdr: hdr(), rel: rel(), n: 1 }, V3);
        bytes[1 + 24 + 12] = 200;
        assert_eq!(Response::parse(V3, &bytes).unwrap_err(), PagestreamError::InvalidFork(200, "Nblocks response"));
        let seg = Response::GetSlruSegment { hdr: hdr(), kind: SlruKind::Clog, segno: 0, segment: Bytes::new() };
        let mut bytes = encode_resp(&seg, V3);
        bytes[25] = 7;
        assert_eq!(Response::parse(V3, &bytes).unwrap_err(), PagestreamError::UnknownSlruKind(7, "GetSlruSegment response"));
    }

    #[test]
    fn parse_for_checks_the_answer() {
        let get = Request::GetPage { hdr: hdr(), rel: rel(), blkno: 3 };
        let nblocks = Request::Nblocks { hdr: hdr(), rel: rel() };
        let resp = Response::Nblocks { hdr: hdr(), rel: rel(), n: 1 };
        for v in [V2, V3] {
            let err = Response::parse_for(v, &encode_resp(&resp, v), &get).unwrap_err();
            assert_eq!(err, PagestreamError::UnexpectedResponse { request: "GetPage", response: "Nblocks" });
            assert!(err.to_string().contains("GetPage request answered by a Nblocks response"));
            // An error answers anything.
            let e = get.error_response("nope");
            assert_eq!(Response::parse_for(v, &encode_resp(&e, v), &get).unwrap(), e);
        }
        // v3: the echo must match.
        let mut other = nblocks;
        other.header_mut().reqid += 1;
        let err = Response::parse_for(V3, &encode_resp(&resp, V3), &other).unwrap_err();
        assert!(matches!(err, PagestreamError::EchoMismatch { field: "reqid", .. }), "{err}");
        let page_resp = Response::GetPage { hdr: hdr(), rel: rel(), blkno: 4, page: page(0) };
        let err = Response::parse_for(V3, &encode_resp(&page_resp, V3), &get).unwrap_err();
        assert_eq!(err.to_string(), "pagestream GetPage response echoes block 4, but the request sent 3");
    }

    #[test]
    fn check_flags_bad_payload_sizes() {
        let h = hdr();
        assert!(Response::GetPage { hdr: h, rel: rel(), blkno: 0, page: Bytes::from_static(b"short") }.check().is_err());
        let seg = |len| Response::GetSlruSegment { hdr: h, kind: SlruKind::Clog, segno: 0, segment: Bytes::from(vec![0; len]) };
        assert!(seg(BLCKSZ + 1).check().is_err());
        assert!(seg(BLCKSZ * 33).check().is_err());
        assert!(seg(BLCKSZ * 32).check().is_ok());
    }

    #[test]
    fn version_commands() {
        assert_eq!(ProtocolVersion::from_command("pagestream_v3"), Some(V3));
        assert_eq!(ProtocolVersion::from_command("pagestream_v1"), None);
        assert_eq!(V2.command(), "pagestream_v2");
    }
}

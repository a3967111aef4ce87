//! The server side of the PostgreSQL frontend/backend protocol (v3), as far
//! as the page service needs it: the packets of the startup phase (SSL and
//! GSS encryption requests, cancel requests, the startup packet; the
//! connection answers them, module `page_service`), simple queries, and the
//! backend messages we send. Pure Rust on tokio; no PostgreSQL code.
//!
//! Every length read from the wire is checked before anything is allocated:
//! a garbage or hostile client gets a [`ProtocolError`] and is disconnected.

use bytes::{BufMut, BytesMut};
use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// PostgreSQL's own limit on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET_LEN: u32 = 10_000;
/// Largest message accepted after startup. Page-service requests are tiny;
/// a query string longer than this is not one of ours.
pub const MAX_MESSAGE_LEN: u32 = 1 << 20;

const PROTOCOL_V3: u32 = 3 << 16;
const SSL_REQUEST_CODE: u32 = (1234 << 16) | 5679;
const GSSENC_REQUEST_CODE: u32 = (1234 << 16) | 5680;
const CANCEL_REQUEST_CODE: u32 = (1234 << 16) | 5678;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid startup packet length {0}")]
    BadStartupLength(u32),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u32, minor: u32 },
    #[error("invalid startup packet layout: {0}")]
    BadStartupPacket(&'static str),
    #[error("invalid message length {len} for message type '{tag}'")]
    BadMessageLength { tag: char, len: u32 },
    #[error("connection closed by the client")]
    Closed,
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(std::io::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    fn from_read(e: std::io::Error) -> ProtocolError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::Closed
        } else {
            ProtocolError::Io(e)
        }
    }
}

/// One packet of the startup phase.
#[derive(Debug)]
pub enum StartupPacket {
    /// SSLRequest: the client asks for TLS (answered 'S' or 'N').
    SslRequest,
    /// GSSENCRequest: the client asks for GSSAPI encryption (answered 'N').
    GssEncRequest,
    /// A normal session with its parameters (`user`, `database`, `options`, ...).
    Session(HashMap<String, String>),
    /// A cancel request; we have nothing to cancel, the connection just closes.
    Cancel,
}

/// Reads one packet of the startup phase. It reads exactly the packet's
/// bytes, so after an SSLRequest the next bytes on the socket are the
/// client's TLS handshake.
pub async fn read_startup_packet<S: AsyncRead + Unpin>(stream: &mut S) -> Result<StartupPacket, ProtocolError> {
    let len = stream.read_u32().await.map_err(ProtocolError::from_read)?;
    if !(8..=MAX_STARTUP_PACKET_LEN).contains(&len) {
        return Err(ProtocolError::BadStartupLength(len));
    }
    let code = stream.read_u32().await.map_err(ProtocolError::from_read)?;
    let mut body = vec![0u8; len as usize - 8];
    stream.read_exact(&mut body).await.map_err(ProtocolError::from_read)?;
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if !body.is_empty() => {
            Err(ProtocolError::BadStartupPacket("encryption request with a body"))
        }
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => Ok(StartupPacket::Cancel),
        PROTOCOL_V3 => parse_startup_params(&body).map(StartupPacket::Session),
        other => Err(ProtocolError::UnsupportedProtocol { major: other >> 16, minor: other & 0xFFFF }),
    }
}

/// What a client of a server without encryption asked for at startup.
#[derive(Debug)]
pub enum Startup {
    Session(HashMap<String, String>),
    Cancel,
}

/// The startup phase of a server without encryption: answers SSL and GSS
/// encryption requests with 'N' and returns the startup packet. (The page
/// service answers them itself, with TLS when configured; `pagebench`'s
/// floor server uses this.)
pub async fn read_startup<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<Startup, ProtocolError> {
    loop {
        match read_startup_packet(stream).await? {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                stream.write_all(b"N").await?;
                stream.flush().await?;
            }
            StartupPacket::Cancel => return Ok(Startup::Cancel),
            StartupPacket::Session(params) => return Ok(Startup::Session(params)),
        }
    }
}

fn parse_startup_params(body: &[u8]) -> Result<HashMap<String, String>, ProtocolError> {
    // name\0value\0 ... \0
    let Some((&0, pairs)) = body.split_last() else {
        return Err(ProtocolError::BadStartupPacket("missing terminator"));
    };
    let mut params = HashMap::new();
    if pairs.is_empty() {
        return Ok(params);
    }
    let Some((&0, pairs)) = pairs.split_last() else {
        return Err(ProtocolError::BadStartupPacket("missing terminator after last value"));
    };
    let mut fields = pairs.split(|b| *b == 0);
    while let Some(name) = fields.next() {
        let value = fields.next().ok_or(ProtocolError::BadStartupPacket("name without value"))?;
        let name = std::str::from_utf8(name).map_err(|_| ProtocolError::BadStartupPacket("name is not UTF-8"))?;
        let value = std::str::from_utf8(value).map_err(|_| ProtocolError::BadStartupPacket("value is not UTF-8"))?;
        params.insert(name.to_string(), value.to_string());
    }
    Ok(params)
}

/// A message from the client after startup.
#[derive(Debug, PartialEq, Eq)]
pub enum FrontendMessage {
    /// 'Q': a simple query.
    Query(String),
    /// 'X': the client is leaving.
    Terminate,
    /// 'S': end of an extended-protocol batch.
    Sync,
    /// Any other message type, with its body; answered with an error.
    Other { tag: u8, body: Vec<u8> },
}

impl FrontendMessage {
    /// The message's type byte.
    pub fn tag(&self) -> u8 {
        match self {
            FrontendMessage::Query(_) => b'Q',
            FrontendMessage::Terminate => b'X',
            FrontendMessage::Sync => b'S',
            FrontendMessage::Other { tag, .. } => *tag,
        }
    }
}

/// Reads one message after startup.
pub async fn read_message<S: AsyncRead + Unpin>(stream: &mut S) -> Result<FrontendMessage, ProtocolError> {
    let tag = stream.read_u8().await.map_err(ProtocolError::from_read)?;
    let len = checked_message_len(tag, stream.read_u32().await.map_err(ProtocolError::from_read)?)?;
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await.map_err(ProtocolError::from_read)?;
    Ok(match tag {
        b'Q' => {
            let text = body.strip_suffix(&[0]).unwrap_or(&body);
            FrontendMessage::Query(String::from_utf8_lossy(text).into_owned())
        }
        b'X' => FrontendMessage::Terminate,
        b'S' => FrontendMessage::Sync,
        _ => FrontendMessage::Other { tag, body },
    })
}

/// A message's length field (which counts itself), checked before anything
/// is allocated for it.
fn checked_message_len(tag: u8, len: u32) -> Result<usize, ProtocolError> {
    if !(4..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(ProtocolError::BadMessageLength { tag: tag as char, len });
    }
    Ok(len as usize)
}

/// Takes one whole message (tag and body) off the front of `buf`, or
/// `None` if `buf` does not hold a whole one yet; for reading a stream of
/// small messages a buffer-full at a time.
pub fn take_message(buf: &mut BytesMut) -> Result<Option<(u8, BytesMut)>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = checked_message_len(tag, u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]))?;
    if buf.len() < 1 + len {
        buf.reserve(1 + len - buf.len());
        return Ok(None);
    }
    let mut message = buf.split_to(1 + len);
    Ok(Some((tag, message.split_off(5))))
}

/// Backend messages, appended to an output buffer.
pub struct BackendWriter<'a>(pub &'a mut BytesMut);

impl BackendWriter<'_> {
    fn message(&mut self, tag: u8, body: impl FnOnce(&mut BytesMut)) {
        self.0.put_u8(tag);
        let len_at = self.0.len();
        self.0.put_u32(0);
        body(self.0);
        let len = (self.0.len() - len_at) as u32;
        self.0[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn authentication_ok(&mut self) {
        self.message(b'R', |b| b.put_u32(0));
    }

    /// AuthenticationCleartextPassword: the client answers with a
    /// PasswordMessage ('p').
    pub fn authentication_cleartext_password(&mut self) {
        self.message(b'R', |b| b.put_u32(3));
    }

    pub fn parameter_status(&mut self, name: &str, value: &str) {
        self.message(b'S', |b| {
            put_cstr(b, name);
            put_cstr(b, value);
        });
    }

    pub fn ready_for_query(&mut self) {
        self.message(b'Z', |b| b.put_u8(b'I'));
    }

    /// CopyBothResponse (binary, no columns): the pagestream sub-protocol starts.
    pub fn copy_both_response(&mut self) {
        self.message(b'W', |b| {
            b.put_u8(1);
            b.put_u16(0);
        });
    }

    /// CopyOutResponse (binary, no columns): a tar stream follows.
    pub fn copy_out_response(&mut self) {
        self.message(b'H', |b| {
            b.put_u8(1);
            b.put_u16(0);
        });
    }

    /// CopyData with `data` as its body.
    pub fn copy_data(&mut self, data: &[u8]) {
        self.message(b'd', |b| b.extend_from_slice(data));
    }

    /// CopyData whose body `body` writes in place (no intermediate copy).
    pub fn copy_data_with(&mut self, body: impl FnOnce(&mut BytesMut)) {
        self.message(b'd', body);
    }

    pub fn copy_done(&mut self) {
        self.message(b'c', |_| {});
    }

    pub fn command_complete(&mut self, tag: &str) {
        self.message(b'C', |b| put_cstr(b, tag));
    }

    pub fn empty_query_response(&mut self) {
        self.message(b'I', |_| {});
    }

    /// An ErrorResponse with severity ERROR (the session goes on).
    pub fn error(&mut self, sqlstate: &str, message: &str, hint: Option<&str>) {
        self.notice_or_error(b'E', "ERROR", sqlstate, message, hint);
    }

    /// An ErrorResponse with severity FATAL (the server closes the connection).
    pub fn fatal(&mut self, sqlstate: &str, message: &str) {
        self.notice_or_error(b'E', "FATAL", sqlstate, message, None);
    }

    fn notice_or_error(&mut self, tag: u8, severity: &str, sqlstate: &str, message: &str, hint: Option<&str>) {
        self.message(tag, |b| {
            for (field, value) in [(b'S', severity), (b'V', severity), (b'C', sqlstate), (b'M', message)] {
                b.put_u8(field);
                put_cstr(b, value);
            }
            if let Some(hint) = hint {
                b.put_u8(b'H');
                put_cstr(b, hint);
            }
            b.put_u8(0);
        });
    }
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; drop it rather than corrupt the frame.
    b.extend(s.bytes().filter(|c| *c != 0));
    b.put_u8(0);
}

/// SQLSTATEs we use.
/// The SQLSTATE codes, from the service's one table of them.
pub use crate::error::sqlstate;

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_packet(code: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(((body.len() + 8) as u32).to_be_bytes());
        v.extend(code.to_be_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn take_message_waits_for_whole_messages_and_checks_lengths() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"d\0\0\0\x07abcd\0\0");
        let (tag, body) = take_message(&mut buf).unwrap().unwrap();
        assert_eq!((tag, &body[..]), (b'd', &b"abc"[..]));
        assert_eq!(&buf[..], b"d\0\0", "a partial message stays in the buffer");
        assert!(take_message(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"\0\x04c\0\0\0\x04");
        assert_eq!(take_message(&mut buf).unwrap().unwrap().0, b'd');
        assert_eq!(take_message(&mut buf).unwrap().unwrap().0, b'c');
        assert!(buf.is_empty());
        buf.extend_from_slice(b"d\0\0\0\x03");
        assert!(matches!(take_message(&mut buf), Err(ProtocolError::BadMessageLength { tag: 'd', len: 3 })));
        let mut huge = BytesMut::from(&b"d\x7f\0\0\0"[..]);
        assert!(matches!(take_message(&mut huge), Err(ProtocolError::BadMessageLength { .. })));
    }

    #[tokio::test]
    async fn encryption_requests_and_the_startup_packet_are_told_apart() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut input = startup_packet(GSSENC_REQUEST_CODE, &[]);
        input.extend(startup_packet(SSL_REQUEST_CODE, &[]));
        input.extend(startup_packet(PROTOCOL_V3, b"user\0alice\0database\0db\0\0"));
        input.extend(startup_packet(CANCEL_REQUEST_CODE, &[0; 8]));
        client.write_all(&input).await.unwrap();
        assert!(matches!(read_startup_packet(&mut server).await.unwrap(), StartupPacket::GssEncRequest));
        assert!(matches!(read_startup_packet(&mut server).await.unwrap(), StartupPacket::SslRequest));
        match read_startup_packet(&mut server).await.unwrap() {
            StartupPacket::Session(p) => {
                assert_eq!(p["user"], "alice");
                assert_eq!(p["database"], "db");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(read_startup_packet(&mut server).await.unwrap(), StartupPacket::Cancel));
        client.write_all(&startup_packet(SSL_REQUEST_CODE, b"x")).await.unwrap();
        assert!(matches!(read_startup_packet(&mut server).await.unwrap_err(), ProtocolError::BadStartupPacket(_)));
    }

    #[tokio::test]
    async fn without_encryption_ssl_is_refused_then_startup_is_read() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut input = startup_packet(SSL_REQUEST_CODE, &[]);
        input.extend(startup_packet(PROTOCOL_V3, b"user\0alice\0\0"));
        client.write_all(&input).await.unwrap();
        let startup = read_startup(&mut server).await.unwrap();
        let mut answer = [0u8; 1];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
        assert!(matches!(startup, Startup::Session(p) if p["user"] == "alice"));
    }

    #[tokio::test]
    async fn huge_or_tiny_startup_lengths_are_rejected_without_allocating() {
        for len in [0u32, 7, MAX_STARTUP_PACKET_LEN + 1, 1 << 30, u32::MAX] {
            let (mut client, mut server) = tokio::io::duplex(64);
            client.write_all(&len.to_be_bytes()).await.unwrap();
            client.write_all(&PROTOCOL_V3.to_be_bytes()).await.unwrap();
            let err = read_startup_packet(&mut server).await.unwrap_err();
            assert!(matches!(err, ProtocolError::BadStartupLength(l) if l == len), "{err}");
        }
    }

    #[tokio::test]
    async fn malformed_parameters_are_rejected() {
        for body in [&b"user\0alice"[..], b"user\0\0", b"\xff\0x\0\0", b""] {
            let (mut client, mut server) = tokio::io::duplex(4096);
            client.write_all(&startup_packet(PROTOCOL_V3, body)).await.unwrap();
            assert!(read_startup_packet(&mut server).await.is_err(), "accepted {body:?}");
        }
    }

    #[tokio::test]
    async fn other_protocol_versions_are_named_in_the_error() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&startup_packet(2 << 16, b"\0")).await.unwrap();
        let err = read_startup_packet(&mut server).await.unwrap_err().to_string();
        assert!(err.contains("2.0"), "{err}");
    }

    #[tokio::test]
    async fn messages_are_framed_and_bounded() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"Q\0\0\0\x0dhello!!!\0").await.unwrap();
        assert_eq!(read_message(&mut server).await.unwrap(), FrontendMessage::Query("hello!!!".into()));
        client.write_all(b"Q\x40\0\0\0").await.unwrap();
        assert!(matches!(read_message(&mut server).await.unwrap_err(), ProtocolError::BadMessageLength { tag: 'Q', .. }));
    }

    #[test]
    fn error_response_layout() {
        let mut buf = BytesMut::new();
        BackendWriter(&mut buf).error("42601", "bad", Some("try again"));
        assert_eq!(buf[0], b'E');
        let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, buf.len());
        assert_eq!(&buf[5..], b"SERROR\0VERROR\0C42601\0Mbad\0Htry again\0\0");
    }
}

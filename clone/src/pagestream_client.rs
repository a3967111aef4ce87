//! A pagestream client: the compute side of the page service's
//! `pagestream_v2` / `pagestream_v3` protocol, over libpq protocol v3.
//!
//! [`PagestreamClient::connect`] sends a StartupMessage, answers the server's
//! authentication (trust, or a cleartext password such as a JWT), sends the
//! simple query `pagestream_vN <tenant> <timeline>` and waits for
//! CopyBothResponse. Each request then travels in one CopyData message and
//! each answer comes back in one, in request order.
//!
//! Requests can be pipelined: [`PagestreamClient::queue`] as many as wanted,
//! [`PagestreamClient::flush`] them, and [`PagestreamClient::recv`] the answers
//! one by one; [`PagestreamClient::send`] is queue + flush. Every answer is
//! checked against the request it answers (its kind, and in v3 its echo of
//! the request), so a confused or broken server shows up as a
//! [`ClientError`], never as a wrong page.
//!
//! [`BlockingClient`] wraps the same client for synchronous tests.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::{backend, frontend};
use storage::pagestream::{PagestreamError, ProtocolVersion, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// The largest backend message accepted: a full SLRU segment response is
/// about 256 KiB, so anything near this is a broken stream.
const MAX_MESSAGE_LEN: usize = 16 << 20;

/// How the client introduces itself.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The StartupMessage's `user`.
    pub user: String,
    /// Sent if the server asks for a cleartext password (e.g. a JWT).
    pub password: Option<String>,
    /// The StartupMessage's `application_name`.
    pub application_name: String,
    /// How long connecting, startup and the pagestream query may take.
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            user: "pagestream_client".into(),
            password: None,
            application_name: "pagestream_client".into(),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// An error reported by the server in a libpq ErrorResponse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (SQLSTATE {})", self.severity, self.message, self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, "; detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

impl ServerError {
    fn parse(body: &[u8]) -> ServerError {
        let mut e = ServerError { severity: String::new(), code: String::new(), message: String::new(), detail: None, hint: None };
        let mut rest = body;
        while let Some((&field, tail)) = rest.split_first() {
            if field == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            rest = tail.get(end + 1..).unwrap_or_default();
            match field {
                b'S' => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
        }
        e
    }
}

/// Why a pagestream session failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("timed out after {0:?} {1}")]
    Timeout(Duration, &'static str),
    #[error("the server closed the connection {0}")]
    Closed(&'static str),
    #[error("server error {0}: {1}")]
    Server(&'static str, Box<ServerError>),
    #[error("libpq protocol violation by the server: {0}")]
    Protocol(String),
    #[error("the server asks for {0}, which this client does not support (only trust and cleartext password)")]
    UnsupportedAuth(String),
    #[error("the server asks for a password, but none was given")]
    PasswordRequired,
    #[error("malformed pagestream response from the server: {0}")]
    Malformed(#[from] PagestreamError),
    #[error("recv() with no request in flight")]
    NothingInFlight,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ClientError {
    let context = context.into();
    move |source| ClientError::Io { context, source }
}

/// One pagestream session.
pub struct PagestreamClient {
    stream: TcpStream,
    version: ProtocolVersion,
    rbuf: BytesMut,
    wbuf: BytesMut,
    in_flight: VecDeque<Request>,
}

impl fmt::Debug for PagestreamClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PagestreamClient").field("version", &self.version).field("in_flight", &self.in_flight.len()).finish_non_exhaustive()
    }
}

impl PagestreamClient {
    /// Connects with the default [`ConnectOptions`] and opens a pagestream of
    /// `version` on the tenant's timeline.
    pub async fn connect(
        addr: impl ToSocketAddrs,
        version: ProtocolVersion,
        tenant: &str,
        timeline: &str,
    ) -> Result<PagestreamClient, ClientError> {
        Self::connect_with(addr, version, tenant, timeline, &ConnectOptions::default()).await
    }

    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        version: ProtocolVersion,
        tenant: &str,
        timeline: &str,
        options: &ConnectOptions,
    ) -> Result<PagestreamClient, ClientError> {
        let timeout = options.connect_timeout;
        tokio::time::timeout(timeout, Self::connect_inner(addr, version, tenant, timeline, options))
            .await
            .map_err(|_| ClientError::Timeout(timeout, "connecting and opening the pagestream"))?
    }

    async fn connect_inner(
        addr: impl ToSocketAddrs,
        version: ProtocolVersion,
        tenant: &str,
        timeline: &str,
        options: &ConnectOptions,
    ) -> Result<PagestreamClient, ClientError> {
        let mut client = Self::startup(addr, version, options).await?;
        let query = format!("{} {tenant} {timeline}", version.command());
        frontend::query(&query, &mut client.wbuf).map_err(io_err("encoding the query"))?;
        client.flush().await?;
        loop {
            let (tag, body) = client.read_message("after the pagestream query").await?;
            match tag {
                b'W' => break,
                b'E' => {
                    let error = Box::new(ServerError::parse(&body));
                    return Err(ClientError::Server("answering the pagestream query", error));
                }
                b'S' | b'N' => {}
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected CopyBothResponse after \"{query}\", got message '{}'",
                        other.escape_ascii()
                    )))
                }
            }
        }
        Ok(client)
    }

    /// Connects and authenticates, up to the first ReadyForQuery.
    async fn startup(
        addr: impl ToSocketAddrs,
        version: ProtocolVersion,
        options: &ConnectOptions,
    ) -> Result<PagestreamClient, ClientError> {
        let stream = TcpStream::connect(addr).await.map_err(io_err("cannot connect to the page server"))?;
        stream.set_nodelay(true).map_err(io_err("setting TCP_NODELAY"))?;
        let mut client = PagestreamClient {
            stream,
            version,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(4096),
            in_flight: VecDeque::new(),
        };

        let params = [("user", options.user.as_str()), ("application_name", options.application_name.as_str())];
        frontend::startup_message(params, &mut client.wbuf).map_err(io_err("encoding the startup message"))?;
        client.flush().await?;

        // Authentication, then parameters, up to ReadyForQuery.
        loop {
            let (tag, body) = client.read_message("during startup").await?;
            match tag {
                b'R' => {
                    let code = body.get(..4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    match code {
                        Some(0) => {}
                        Some(3) => {
                            let password = options.password.as_deref().ok_or(ClientError::PasswordRequired)?;
                            frontend::password_message(password.as_bytes(), &mut client.wbuf)
                                .map_err(io_err("encoding the password message"))?;
                            client.flush().await?;
                        }
                        Some(5) => return Err(ClientError::UnsupportedAuth("MD5 password authentication".into())),
                        Some(10) => return Err(ClientError::UnsupportedAuth("SASL authentication".into())),
                        Some(other) => return Err(ClientError::UnsupportedAuth(format!("authentication method {other}"))),
                        None => return Err(ClientError::Protocol("Authentication message without a code".into())),
                    }
                }
                b'E' => return Err(ClientError::Server("during startup", Box::new(ServerError::parse(&body)))),
                b'S' | b'K' | b'N' => {}
                b'Z' => break,
                other => return Err(ClientError::Protocol(format!("unexpected message '{}' during startup", other.escape_ascii()))),
            }
        }
        Ok(client)
    }

    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Requests sent (or queued) and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Buffers a request; nothing is sent before [`flush`](Self::flush).
    pub fn queue(&mut self, request: Request) {
        let start = self.wbuf.len();
        let len = request.encoded_len(self.version);
        // CopyData: 'd', length (itself included), payload.
        self.wbuf.reserve(5 + len);
        self.wbuf.extend_from_slice(&[b'd', 0, 0, 0, 0]);
        request.encode(self.version, &mut self.wbuf);
        let msg_len = (self.wbuf.len() - start - 1) as u32;
        self.wbuf[start + 1..start + 5].copy_from_slice(&msg_len.to_be_bytes());
        self.in_flight.push_back(request);
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await.map_err(io_err("writing to the page server"))?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Queues and flushes one request.
    pub async fn send(&mut self, request: Request) -> Result<(), ClientError> {
        self.queue(request);
        self.flush().await
    }

    /// The answer to the oldest request in flight. A pagestream Error
    /// response is an `Ok(Response::Error)`; a response that does not parse or
    /// does not answer that request is an error. Anything queued is flushed
    /// first.
    pub async fn recv(&mut self) -> Result<Response, ClientError> {
        if self.in_flight.is_empty() {
            return Err(ClientError::NothingInFlight);
        }
        self.flush().await?;
        loop {
            let (tag, body) = self.read_message("while requests were in flight").await?;
            match tag {
                b'd' => {
                    let request = self.in_flight.pop_front().ok_or(ClientError::NothingInFlight)?;
                    return Ok(Response::parse_for(self.version, &body, &request)?);
                }
                b'N' | b'S' => {}
                b'E' => return Err(ClientError::Server("in the pagestream", Box::new(ServerError::parse(&body)))),
                b'c' => return Err(ClientError::Closed("(CopyDone) while requests were in flight")),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected message '{}' in the pagestream (expected CopyData)",
                        other.escape_ascii()
                    )))
                }
            }
        }
    }

    /// Sends one request and waits for its answer.
    pub async fn request(&mut self, request: Request) -> Result<Response, ClientError> {
        self.send(request).await?;
        self.recv().await
    }

    /// Ends the stream (CopyDone, Terminate) and closes the connection.
    pub async fn close(mut self) -> Result<(), ClientError> {
        frontend::copy_done(&mut self.wbuf);
        frontend::terminate(&mut self.wbuf);
        self.flush().await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Reads one whole backend message: its tag and body.
    async fn read_message(&mut self, when: &'static str) -> Result<(u8, BytesMut), ClientError> {
        loop {
            if let Some(header) = backend::Header::parse(&self.rbuf).map_err(|e| ClientError::Protocol(format!("{e} {when}")))? {
                let len = header.len() as usize; // >= 4, checked by parse
                if len > MAX_MESSAGE_LEN {
                    return Err(ClientError::Protocol(format!(
                        "message '{}' of {len} bytes {when} (at most {MAX_MESSAGE_LEN} expected)",
                        header.tag().escape_ascii()
                    )));
                }
                if self.rbuf.len() > len {
                    let mut msg = self.rbuf.split_to(1 + len);
                    msg.advance(5);
                    return Ok((header.tag(), msg));
                }
                self.rbuf.reserve(1 + len - self.rbuf.len());
            } else {
                self.rbuf.reserve(64 * 1024);
            }
            let n = self.stream.read_buf(&mut self.rbuf).await.map_err(io_err(format!("reading {when}")))?;
            if n == 0 {
                return Err(ClientError::Closed(when));
            }
        }
    }
}

/// Runs a page service command answered with CopyOut (`fullbackup`,
/// `clonebackup`, ...) and returns the bytes copied out. `options`'
/// `connect_timeout` bounds connecting; the copy itself may take as long as
/// the server streams.
pub async fn copy_out(addr: impl ToSocketAddrs, query: &str, options: &ConnectOptions) -> Result<Vec<u8>, ClientError> {
    let timeout = options.connect_timeout;
    let connecting = PagestreamClient::startup(addr, ProtocolVersion::V3, options);
    let mut client = tokio::time::timeout(timeout, connecting).await.map_err(|_| ClientError::Timeout(timeout, "connecting"))??;
    frontend::query(query, &mut client.wbuf).map_err(io_err("encoding the query"))?;
    client.flush().await?;
    let mut out = Vec::new();
    let mut error = None;
    loop {
        let (tag, body) = client.read_message("during the copy").await?;
        match tag {
            b'd' => out.extend_from_slice(&body),
            b'E' => error = Some(Box::new(ServerError::parse(&body))),
            b'Z' => break,
            b'H' | b'c' | b'C' | b'S' | b'N' => {}
            other => return Err(ClientError::Protocol(format!("unexpected message '{}' answering \"{query}\"", other.escape_ascii()))),
        }
    }
    let _ = client.close().await;
    match error {
        Some(e) => Err(ClientError::Server("answering the command", e)),
        None => Ok(out),
    }
}

/// [`PagestreamClient`] for synchronous code: each call runs on a private
/// current-thread tokio runtime.
#[derive(Debug)]
pub struct BlockingClient {
    runtime: tokio::runtime::Runtime,
    client: PagestreamClient,
}

impl BlockingClient {
    pub fn connect(addr: &str, version: ProtocolVersion, tenant: &str, timeline: &str) -> Result<BlockingClient, ClientError> {
        Self::connect_with(addr, version, tenant, timeline, &ConnectOptions::default())
    }

    pub fn connect_with(
        addr: &str,
        version: ProtocolVersion,
        tenant: &str,
        timeline: &str,
        options: &ConnectOptions,
    ) -> Result<BlockingClient, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(io_err("starting a tokio runtime"))?;
        let client = runtime.block_on(PagestreamClient::connect_with(addr, version, tenant, timeline, options))?;
        Ok(BlockingClient { runtime, client })
    }

    pub fn in_flight(&self) -> usize {
        self.client.in_flight()
    }
    /// See [`PagestreamClient::queue`].
    pub fn queue(&mut self, request: Request) {
        self.client.queue(request)
    }
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.runtime.block_on(self.client.flush())
    }
    pub fn send(&mut self, request: Request) -> Result<(), ClientError> {
        self.runtime.block_on(self.client.send(request))
    }
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        self.runtime.block_on(self.client.recv())
    }
    /// [`recv`](Self::recv) that gives up after `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Response, ClientError> {
        let client = &mut self.client;
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, client.recv()).await })
            .map_err(|_| ClientError::Timeout(timeout, "waiting for a pagestream response"))?
    }
    pub fn request(&mut self, request: Request) -> Result<Response, ClientError> {
        self.runtime.block_on(self.client.request(request))
    }
    pub fn close(self) -> Result<(), ClientError> {
        let BlockingClient { runtime, client } = self;
        runtime.block_on(client.close())
    }
}

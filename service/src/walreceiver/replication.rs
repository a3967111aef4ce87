//! A client of PostgreSQL's streaming-replication protocol: connect with
//! `replication=true`, run replication commands (`IDENTIFY_SYSTEM`,
//! `CREATE_REPLICATION_SLOT`, `BASE_BACKUP`, `START_REPLICATION`) and read the
//! CopyBoth stream of WAL. Frontend messages are built with
//! `postgres-protocol`; backend messages are framed here, because that crate
//! does not parse `CopyBothResponse`. TCP connections use TLS as the
//! connection string's `sslmode` says (module `tls`), and SCRAM binds to
//! that channel as its `channel_binding` says.
//!
//! Runs on tokio; never calls PostgreSQL.

use super::passfile::PassfileLookup;
use super::tls::{SslMode, SslOptions, TlsClient, TlsError};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use storage::lsn::Lsn;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::ChannelBinding as ChannelBindingMode;

/// Largest backend message accepted (a WAL chunk is at most 128 KiB; a base backup data message 32 KiB).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What went wrong talking to the primary.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("invalid primary connection string: {0}")]
    Conninfo(String),
    #[error("cannot connect to the primary at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connection to the primary lost: {0}")]
    Io(#[from] std::io::Error),
    /// An ErrorResponse from the primary.
    #[error("the primary says: {message} (SQLSTATE {code})")]
    Server { code: String, message: String },
    #[error("unexpected reply from the primary: {0}")]
    Protocol(String),
    /// TLS could not be set up (files, options) or negotiated.
    #[error("{0}")]
    Tls(#[from] TlsError),
}

impl ReplError {
    pub fn code(&self) -> Option<&str> {
        match self {
            ReplError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// One backend message: tag and body.
struct Message {
    tag: u8,
    body: Bytes,
}

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Clone, Copy, Debug)]
pub struct SystemInfo {
    pub system_id: u64,
    pub timeline: u32,
    pub xlogpos: Lsn,
}

/// A message of the WAL stream.
#[derive(Debug)]
pub enum StreamMessage {
    /// WAL bytes starting at `start`; the primary has WAL up to `wal_end`.
    XLogData { start: Lsn, wal_end: Lsn, data: Bytes },
    /// The primary's WAL end; answer at once when `reply_requested`.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

/// A connection in replication mode.
pub struct ReplicationConn {
    stream: Box<dyn Stream>,
    inbuf: BytesMut,
    out: BytesMut,
}

/// Parsed connection settings (libpq keyword/value or URI form).
pub struct ConnSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub ssl: SslOptions,
    /// `channel_binding`: `disable`, `prefer` (the default) or `require`.
    pub channel_binding: ChannelBindingMode,
}

/// What SCRAM can bind to on one connection: nothing (no TLS), or the TLS
/// channel, with the primary's certificate hash when its signature
/// algorithm defines one (`tls-server-end-point`).
enum Channel {
    Plain,
    Tls(Option<Vec<u8>>),
}

impl ConnSettings {
    /// A Unix-socket directory rather than a TCP host (never TLS, as in libpq).
    fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }
}

/// Reads `host`, `port`, `user`, `password` and the TLS options from a
/// libpq connection string.
pub fn parse_conninfo(conninfo: &str) -> Result<ConnSettings, ReplError> {
    let (conninfo, ssl) = super::tls::split_conninfo(conninfo).map_err(|e| match e {
        TlsError::Syntax(m) => ReplError::Conninfo(m),
        e => ReplError::Conninfo(e.to_string()),
    })?;
    let config: tokio_postgres::Config = conninfo.parse().map_err(|e| ReplError::Conninfo(format!("{e}")))?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.to_string_lossy().into_owned(),
        None => super::passfile::DEFAULT_SOCKET_DIR.to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().map(str::to_string).ok_or_else(|| ReplError::Conninfo("user is required".into()))?;
    let channel_binding = config.get_channel_binding();
    Ok(ConnSettings { host, port, user, password: config.get_password().map(<[u8]>::to_vec), ssl, channel_binding })
}

/// Whether one connection attempt asks for TLS.
#[derive(Clone, Copy)]
enum Encryption<'a> {
    Plain,
    Tls(&'a TlsClient),
}

impl ReplicationConn {
    /// Connects in physical replication mode, with TLS as `sslmode` says,
    /// and authenticates (trust, password, md5 or SCRAM-SHA-256).
    pub async fn connect(conninfo: &str) -> Result<ReplicationConn, ReplError> {
        let s = parse_conninfo(conninfo)?;
        if s.is_unix_socket() {
            return Self::connect_with(&s, Encryption::Plain).await;
        }
        let Some(tls) = s.ssl.client(&s.host)? else {
            return Self::connect_with(&s, Encryption::Plain).await;
        };
        match tls.mode {
            // Plain first; TLS if the primary refuses the plain connection.
            SslMode::Allow => match Self::connect_with(&s, Encryption::Plain).await {
                Err(plain @ ReplError::Server { .. }) => match Self::connect_with(&s, Encryption::Tls(&tls)).await {
                    Err(ReplError::Tls(TlsError::NotSupportedByServer(_))) => Err(plain),
                    other => other,
                },
                other => other,
            },
            // TLS if offered (plain on the same connection otherwise); a
            // failed handshake is retried plain, as libpq does.
            SslMode::Prefer => match Self::connect_with(&s, Encryption::Tls(&tls)).await {
                Err(ReplError::Tls(TlsError::Handshake { source, .. })) => {
                    tracing::info!(
                        "TLS handshake with the primary at {}:{} failed ({source}); sslmode=prefer: connecting without TLS",
                        s.host,
                        s.port
                    );
                    Self::connect_with(&s, Encryption::Plain).await
                }
                other => other,
            },
            _ => Self::connect_with(&s, Encryption::Tls(&tls)).await,
        }
    }

    async fn connect_with(s: &ConnSettings, encryption: Encryption<'_>) -> Result<ReplicationConn, ReplError> {
        let (stream, channel): (Box<dyn Stream>, Channel) = if s.is_unix_socket() {
            let path = format!("{}/.s.PGSQL.{}", s.host, s.port);
            let connect = tokio::net::UnixStream::connect(&path);
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| ReplError::Connect { addr: path.clone(), source: std::io::ErrorKind::TimedOut.into() })?
                .map_err(|source| ReplError::Connect { addr: path.clone(), source })?;
            (Box::new(stream), Channel::Plain)
        } else {
            let addr = format!("{}:{}", s.host, s.port);
            let connect = tokio::net::TcpStream::connect(&addr);
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| ReplError::Connect { addr: addr.clone(), source: std::io::ErrorKind::TimedOut.into() })?
                .map_err(|source| ReplError::Connect { addr: addr.clone(), source })?;
            stream.set_nodelay(true)?;
            match encryption {
                Encryption::Plain => (Box::new(stream), Channel::Plain),
                Encryption::Tls(tls) => match tls.negotiate(stream).await? {
                    Ok(tls_stream) => {
                        let certificate = tls_stream.get_ref().1.peer_certificates().and_then(|chain| chain.first());
                        let end_point = certificate.and_then(|c| super::tls::server_end_point(c));
                        (Box::new(tls_stream), Channel::Tls(end_point))
                    }
                    Err(declined) => (Box::new(declined), Channel::Plain),
                },
            }
        };
        let mut conn = ReplicationConn { stream, inbuf: BytesMut::with_capacity(256 * 1024), out: BytesMut::new() };
        let params =
            [("user", s.user.as_str()), ("replication", "true"), ("application_name", "pageserver_ext"), ("client_encoding", "UTF8")];
        frontend::startup_message(params.iter().copied(), &mut conn.out)?;
        conn.flush().await?;
        let password = match s.password.clone() {
            Some(password) => Ok(password),
            None => match super::passfile::default_path() {
                Some(path) => match super::passfile::lookup(&path, &s.host, s.port, &s.user) {
                    PassfileLookup::Found(password) => Ok(password),
                    other => Err(other),
                },
                None => Err(PassfileLookup::NoFile),
            },
        };
        conn.authenticate(&s.user, password, &channel, s.channel_binding).await?;
        conn.read_until_ready().await?;
        Ok(conn)
    }

    /// `password` is the connection string's or the password file's; if
    /// neither has one, what the password file lookup found instead. SCRAM
    /// binds to the TLS channel (SCRAM-SHA-256-PLUS, `tls-server-end-point`)
    /// when the primary offers it, unless `channel_binding=disable`;
    /// `channel_binding=require` fails unless it did, as libpq does.
    async fn authenticate(
        &mut self,
        user: &str,
        password: Result<Vec<u8>, PassfileLookup>,
        channel: &Channel,
        binding_mode: ChannelBindingMode,
    ) -> Result<(), ReplError> {
        let need_password = || {
            let passfile = match password.as_ref().err() {
                Some(PassfileLookup::NotFound(path)) => format!("{} has no line for it", path.display()),
                Some(PassfileLookup::Ignored(path, why)) => format!("{} is ignored: {why}", path.display()),
                _ => "there is no password file (PGPASSFILE or ~/.pgpass of the host's user)".to_string(),
            };
            ReplError::Conninfo(format!(
                "the primary asks for a password; put password=… in the connection string or a line                  host:port:replication:user:password in the host's password file ({passfile})"
            ))
        };
        let password = password.as_deref().ok();
        let mut scram: Option<ScramSha256> = None;
        let mut bound = false;
        let required = binding_mode == ChannelBindingMode::Require;
        loop {
            let msg = self.read_message().await?;
            if msg.tag != b'R' {
                return Err(self.unexpected(msg, "authentication"));
            }
            let mut body = msg.body.clone();
            if body.len() < 4 {
                return Err(ReplError::Protocol("short authentication message".into()));
            }
            match body.get_u32() {
                0 if required && !bound => {
                    return Err(ReplError::Conninfo(
                        "channel binding required (channel_binding=require), but the primary authenticated the client \
                         without it (it needs SCRAM over TLS)"
                            .into(),
                    ))
                }
                0 => return Ok(()),
                3 | 5 if required => {
                    return Err(ReplError::Conninfo(
                        "channel binding required (channel_binding=require), but the primary asks for a password \
                         without SCRAM"
                            .into(),
                    ))
                }
                3 => {
                    let pw = password.ok_or_else(need_password)?;
                    frontend::password_message(pw, &mut self.out)?;
                }
                5 => {
                    let pw = password.ok_or_else(need_password)?;
                    if body.len() < 4 {
                        return Err(ReplError::Protocol("short md5 salt".into()));
                    }
                    let salt = [body[0], body[1], body[2], body[3]];
                    let hash = postgres_protocol::authentication::md5_hash(user.as_bytes(), pw, salt);
                    frontend::password_message(hash.as_bytes(), &mut self.out)?;
                }
                10 => {
                    let pw = password.ok_or_else(need_password)?;
                    let mechanisms = String::from_utf8_lossy(&body);
                    let offered = |name: &str| mechanisms.split('\0').any(|m| m == name);
                    let (mechanism, binding) = match channel {
                        _ if binding_mode == ChannelBindingMode::Disable => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
                        Channel::Tls(Some(end_point)) if offered("SCRAM-SHA-256-PLUS") => {
                            bound = true;
                            ("SCRAM-SHA-256-PLUS", ChannelBinding::tls_server_end_point(end_point.clone()))
                        }
                        // We could bind, the primary offers no binding: say so ('y').
                        Channel::Tls(Some(_)) => ("SCRAM-SHA-256", ChannelBinding::unrequested()),
                        _ => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
                    };
                    if required && !bound {
                        return Err(ReplError::Conninfo(
                            match channel {
                                Channel::Tls(Some(_)) => {
                                    "channel binding required (channel_binding=require), but the primary does not offer \
                                 SCRAM-SHA-256-PLUS"
                                }
                                _ => {
                                    "channel binding required (channel_binding=require), but the connection has no TLS \
                                 channel to bind to (or its certificate's signature algorithm defines no hash for it)"
                                }
                            }
                            .into(),
                        ));
                    }
                    if !offered(mechanism) {
                        return Err(ReplError::Protocol(format!("unsupported SASL mechanisms {mechanisms:?}")));
                    }
                    let s = ScramSha256::new(pw, binding);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut self.out)?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| ReplError::Protocol("SASL continue before start".into()))?;
                    s.update(&body).map_err(|e| ReplError::Protocol(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.out)?;
                }
                12 => {
                    let s = scram.as_mut().ok_or_else(|| ReplError::Protocol("SASL final before start".into()))?;
                    s.finish(&body).map_err(|e| ReplError::Protocol(format!("SCRAM: {e}")))?;
                    continue;
                }
                other => return Err(ReplError::Protocol(format!("unsupported authentication method {other}"))),
            }
            self.flush().await?;
        }
    }

    async fn flush(&mut self) -> Result<(), ReplError> {
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        self.stream.flush().await?;
        Ok(())
    }

    async fn read_message(&mut self) -> Result<Message, ReplError> {
        loop {
            if self.inbuf.len() >= 5 {
                let len = u32::from_be_bytes(self.inbuf[1..5].try_into().unwrap()) as usize;
                if !(4..=MAX_MESSAGE).contains(&len) {
                    return Err(ReplError::Protocol(format!("message length {len} out of range")));
                }
                if self.inbuf.len() > len {
                    let tag = self.inbuf[0];
                    let mut frame = self.inbuf.split_to(len + 1);
                    frame.advance(5);
                    let body = frame.freeze();
                    match tag {
                        b'N' | b'S' | b'K' => continue, // notices, parameters, key data
                        b'E' => return Err(parse_error(&body)),
                        _ => return Ok(Message { tag, body }),
                    }
                }
            }
            let n = self.stream.read_buf(&mut self.inbuf).await?;
            if n == 0 {
                return Err(ReplError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    fn unexpected(&self, msg: Message, during: &str) -> ReplError {
        ReplError::Protocol(format!("message '{}' during {during}", msg.tag.escape_ascii()))
    }

    async fn read_until_ready(&mut self) -> Result<(), ReplError> {
        loop {
            let msg = self.read_message().await?;
            if msg.tag == b'Z' {
                return Ok(());
            }
        }
    }

    /// Runs a command answering with rows (text); an error leaves the connection usable.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ReplError> {
        frontend::query(sql, &mut self.out)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let msg = match self.read_message().await {
                Ok(m) => m,
                Err(e @ ReplError::Server { .. }) => {
                    error = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match msg.tag {
                b'D' => rows.push(parse_data_row(&msg.body)?),
                b'Z' => break,
                b'T' | b'C' | b'I' => {}
                _ => return Err(self.unexpected(msg, sql)),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemInfo, ReplError> {
        let rows = self.query("IDENTIFY_SYSTEM").await?;
        let row = rows.first().ok_or_else(|| ReplError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let bad = |what: &str, v: String| ReplError::Protocol(format!("IDENTIFY_SYSTEM: bad {what} {v:?}"));
        Ok(SystemInfo {
            system_id: field(0).parse().map_err(|_| bad("systemid", field(0)))?,
            timeline: field(1).parse().map_err(|_| bad("timeline", field(1)))?,
            xlogpos: field(2).parse().map_err(|_| bad("xlogpos", field(2)))?,
        })
    }

    /// A setting of the primary (`SHOW` works in replication connections).
    pub async fn show(&mut self, name: &str) -> Result<String, ReplError> {
        let rows = self.query(&format!("SHOW {name}")).await?;
        rows.first().and_then(|r| r.first().cloned().flatten()).ok_or_else(|| ReplError::Protocol(format!("SHOW {name} returned nothing")))
    }

    /// Streams a base backup of the primary's main tablespace. Calls
    /// `on_start(start_lsn, estimated total bytes)` once, then `on_data` for
    /// each chunk of the `base.tar` archive; returns (start LSN, end LSN).
    pub async fn base_backup(
        &mut self,
        label: &str,
        on_start: &mut (dyn FnMut(Lsn, u64) + Send),
        on_data: &mut (dyn FnMut(Bytes) -> Result<(), String> + Send),
    ) -> Result<(Lsn, Lsn), ReplError> {
        let label = label.replace('\'', "''");
        let cmd = format!("BASE_BACKUP ( LABEL '{label}', PROGRESS, CHECKPOINT 'fast', MANIFEST 'no', WAIT true )");
        frontend::query(&cmd, &mut self.out)?;
        self.flush().await?;
        // Result set 1: start position.
        let start = self.read_result_set().await?;
        let start_lsn = first_lsn(&start, "BASE_BACKUP: no start position")?;
        // Result set 2: tablespaces with their estimated sizes in kB.
        let spaces = self.read_result_set().await?;
        if spaces.len() > 1 {
            return Err(ReplError::Protocol(
                "the primary has tablespaces other than pg_default and pg_global, which are not supported".into(),
            ));
        }
        let total_kb: u64 = spaces.iter().filter_map(|r| r.get(2).cloned().flatten()).filter_map(|s| s.parse::<u64>().ok()).sum();
        on_start(start_lsn, total_kb * 1024);
        let msg = self.read_message().await?;
        if msg.tag != b'H' {
            return Err(self.unexpected(msg, "BASE_BACKUP"));
        }
        let mut archive = None::<String>;
        loop {
            let msg = self.read_message().await?;
            match msg.tag {
                b'd' => {
                    let (kind, body) = split_copy_data(msg.body)?;
                    match kind {
                        b'n' => {
                            let name = body.split(|b| *b == 0).next().unwrap_or_default();
                            archive = Some(String::from_utf8_lossy(name).into_owned());
                        }
                        b'd' if archive.as_deref() == Some("base.tar") => {
                            on_data(body).map_err(ReplError::Protocol)?;
                        }
                        b'd' => {
                            return Err(ReplError::Protocol(format!("unexpected archive {archive:?} in BASE_BACKUP")));
                        }
                        b'p' | b'm' => {}
                        other => return Err(ReplError::Protocol(format!("unknown BASE_BACKUP message '{}'", other.escape_ascii()))),
                    }
                }
                b'c' => break,
                _ => return Err(self.unexpected(msg, "BASE_BACKUP")),
            }
        }
        let end = self.read_result_set().await?;
        let end_lsn = first_lsn(&end, "BASE_BACKUP: no end position")?;
        // CommandComplete and ReadyForQuery follow.
        self.read_until_ready().await?;
        Ok((start_lsn, end_lsn))
    }

    /// Reads one result set: rows up to its CommandComplete.
    async fn read_result_set(&mut self) -> Result<Vec<Vec<Option<String>>>, ReplError> {
        let mut rows = Vec::new();
        loop {
            let msg = self.read_message().await?;
            match msg.tag {
                b'T' => {}
                b'D' => rows.push(parse_data_row(&msg.body)?),
                b'C' => return Ok(rows),
                _ => return Err(self.unexpected(msg, "a result set")),
            }
        }
    }

    /// Starts streaming WAL from `start` through `slot`.
    pub async fn start_replication(&mut self, slot: &str, start: Lsn, timeline: u32) -> Result<(), ReplError> {
        let cmd = format!("START_REPLICATION SLOT {slot} PHYSICAL {start} TIMELINE {timeline}");
        frontend::query(&cmd, &mut self.out)?;
        self.flush().await?;
        let msg = self.read_message().await?;
        if msg.tag != b'W' {
            return Err(self.unexpected(msg, "START_REPLICATION"));
        }
        Ok(())
    }

    /// The next message of the WAL stream; `Ok(None)` when the primary ended it.
    pub async fn next_message(&mut self) -> Result<Option<StreamMessage>, ReplError> {
        loop {
            let msg = self.read_message().await?;
            match msg.tag {
                b'd' => {
                    let (kind, mut body) = split_copy_data(msg.body)?;
                    match kind {
                        b'w' if body.len() >= 24 => {
                            let start = Lsn(body.get_u64());
                            let wal_end = Lsn(body.get_u64());
                            let _send_time = body.get_i64();
                            return Ok(Some(StreamMessage::XLogData { start, wal_end, data: body }));
                        }
                        b'k' if body.len() >= 17 => {
                            let wal_end = Lsn(body.get_u64());
                            let _send_time = body.get_i64();
                            let reply_requested = body.get_u8() != 0;
                            return Ok(Some(StreamMessage::Keepalive { wal_end, reply_requested }));
                        }
                        other => return Err(ReplError::Protocol(format!("unknown or short stream message '{}'", other.escape_ascii()))),
                    }
                }
                b'c' => return Ok(None),
                b'C' | b'T' | b'D' => continue,
                _ => return Err(self.unexpected(msg, "streaming")),
            }
        }
    }

    /// Sends a standby status update.
    pub async fn send_status(&mut self, write: Lsn, flush: Lsn, apply: Lsn, reply_requested: bool) -> Result<(), ReplError> {
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(write.0);
        body.put_u64(flush.0);
        body.put_u64(apply.0);
        body.put_i64(pg_now_micros());
        body.put_u8(reply_requested as u8);
        frontend::CopyData::new(&body[..])?.write(&mut self.out);
        self.flush().await
    }
}

/// Microseconds since 2000-01-01, PostgreSQL's timestamp epoch.
fn pg_now_micros() -> i64 {
    const PG_EPOCH_OFFSET_SECS: u64 = 946_684_800;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    now.as_micros() as i64 - (PG_EPOCH_OFFSET_SECS * 1_000_000) as i64
}

/// The first column of the first row, as an LSN.
fn first_lsn(rows: &[Vec<Option<String>>], missing: &str) -> Result<Lsn, ReplError> {
    rows.first().and_then(|r| r.first().cloned().flatten()).and_then(|s| s.parse().ok()).ok_or_else(|| ReplError::Protocol(missing.into()))
}

/// A CopyData body of the replication protocol: its kind byte and the rest.
fn split_copy_data(mut body: Bytes) -> Result<(u8, Bytes), ReplError> {
    if body.is_empty() {
        return Err(ReplError::Protocol("empty CopyData".into()));
    }
    let kind = body.get_u8();
    Ok((kind, body))
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, ReplError> {
    let bad = || ReplError::Protocol("malformed DataRow".into());
    let mut b = body;
    if b.len() < 2 {
        return Err(bad());
    }
    let n = b.get_i16();
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if b.len() < 4 {
            return Err(bad());
        }
        let len = b.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        if b.len() < len {
            return Err(bad());
        }
        row.push(Some(String::from_utf8_lossy(&b[..len]).into_owned()));
        b.advance(len);
    }
    Ok(row)
}

fn parse_error(body: &[u8]) -> ReplError {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|b| *b == 0) {
        if let Some((&t, value)) = field.split_first() {
            let value = String::from_utf8_lossy(value).into_owned();
            match t {
                b'C' => code = value,
                b'M' => message = value,
                _ => {}
            }
        }
    }
    ReplError::Server { code, message }
}

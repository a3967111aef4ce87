//! The page service: a libpq-protocol listener on `pageserver.listen_addr`,
//! run on the main worker's tokio runtime.
//!
//! It owns connection handling: startup (TLS when a certificate is
//! configured, module `tls`), authentication (trust, or a JWT as the
//! password: module `auth`), and simple queries dispatched to
//! page-service commands. Nothing here calls
//! PostgreSQL (tokio threads must never); messages for the server log go
//! through `tracing` (module `log`) to the worker's main thread. It stops
//! accepting connections when its cancellation token is cancelled.

pub mod auth;
mod batch;
pub mod commands;
pub mod pq;
pub mod stats;
pub mod tls;

use auth::{Access, AuthConfig, Session, SharedAuth};
use commands::ServiceContext;
use tokio_util::sync::CancellationToken;

use bytes::BytesMut;
use pq::{sqlstate, BackendWriter, FrontendMessage, ProtocolError, StartupPacket};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tls::{ClientStream, SharedTlsPolicy, TlsPolicy};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a client may take to finish the startup phase.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait before binding again when the address is taken.
const BIND_RETRY: Duration = Duration::from_secs(2);

/// Binds `listen_addr`, retrying while it is taken, then serves until
/// `cancel`. Each connection authenticates as `auth` says when it starts.
pub async fn run(listen_addr: String, ctx: Option<ServiceContext>, auth: SharedAuth, tls: SharedTlsPolicy, cancel: CancellationToken) {
    let listener = loop {
        match TcpListener::bind(&listen_addr).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(
                    "page service cannot listen on \"{listen_addr}\" (pageserver.listen_addr): {e}; retrying in {}s",
                    BIND_RETRY.as_secs()
                );
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(BIND_RETRY) => {}
                }
            }
        }
    };
    match listener.local_addr() {
        Ok(addr) => tracing::info!("page service listening on {addr}"),
        Err(e) => tracing::warn!("page service listening, local address unknown: {e}"),
    }
    serve(listener, ctx, auth, tls, cancel).await
}

/// Accepts connections and serves each on its own task, until `cancel`.
/// Each connection starts with the authentication and TLS policy current
/// when it is accepted.
pub async fn serve(listener: TcpListener, ctx: Option<ServiceContext>, auth: SharedAuth, tls: SharedTlsPolicy, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let ctx = ctx.clone();
                let auth = auth.current();
                let tls = tls.get();
                tokio::spawn(async move {
                    if let Err(e) = handle_connection(stream, peer, ctx, auth, tls).await {
                        tracing::info!("page service connection from {peer} ended: {e}");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!("page service accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, buf: &mut BytesMut) -> std::io::Result<()> {
    stream.write_all(buf).await?;
    buf.clear();
    stream.flush().await
}

/// What the startup phase ended with.
enum Started {
    /// A session on this stream, with the startup packet's parameters.
    Session(ClientStream, HashMap<String, String>),
    /// Nothing more to do: a cancel request, a refused or broken start (the
    /// client was told why if it could be).
    Done,
}

/// The startup phase, within [`STARTUP_TIMEOUT`]: answers a GSSENCRequest
/// with 'N' and an SSLRequest with 'S' and a TLS handshake if `tls` has a
/// configuration ('N' otherwise), as PostgreSQL does; reads the startup
/// packet; refuses a session without TLS if `tls.required`.
async fn start(stream: TcpStream, tls: &TlsPolicy, out: &mut BytesMut) -> Result<Started, ProtocolError> {
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let mut stream = ClientStream::Plain(stream);
    let params = loop {
        let packet = match tokio::time::timeout_at(deadline, pq::read_startup_packet(&mut stream)).await {
            Err(_) => {
                BackendWriter(out).fatal(sqlstate::PROTOCOL_VIOLATION, "startup packet not received in time");
                let _ = send(&mut stream, out).await;
                return Ok(Started::Done);
            }
            Ok(Err(ProtocolError::Closed)) => return Ok(Started::Done),
            Ok(Err(e)) => {
                BackendWriter(out).fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string());
                let _ = send(&mut stream, out).await;
                return Err(e);
            }
            Ok(Ok(packet)) => packet,
        };
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest if stream.is_tls() => {
                let e = ProtocolError::BadStartupPacket("encryption request inside TLS");
                BackendWriter(out).fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string());
                let _ = send(&mut stream, out).await;
                return Err(e);
            }
            StartupPacket::SslRequest => {
                let ClientStream::Plain(mut tcp) = stream else { unreachable!("checked above") };
                let Some(config) = tls.config.clone() else {
                    tcp.write_all(b"N").await?;
                    stream = ClientStream::Plain(tcp);
                    continue;
                };
                tcp.write_all(b"S").await?;
                let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
                match tokio::time::timeout_at(deadline, accept).await {
                    Err(_) => return Ok(Started::Done),
                    Ok(Err(e)) => return Err(ProtocolError::TlsHandshake(e)),
                    Ok(Ok(encrypted)) => stream = ClientStream::Tls(Box::new(encrypted)),
                }
            }
            StartupPacket::GssEncRequest => {
                // A client may ask for GSSAPI first and for SSL next.
                stream.write_all(b"N").await?;
            }
            StartupPacket::Cancel => return Ok(Started::Done), // nothing runs long enough to cancel
            StartupPacket::Session(params) => break params,
        }
    };
    if tls.required && !stream.is_tls() {
        let why = if tls.config.is_some() {
            "connection without TLS refused: pageserver.ssl_required is on (connect with sslmode=require or stronger)"
        } else {
            "connection refused: pageserver.ssl_required is on but the page service has no usable certificate \
             (pageserver.ssl_cert_file, pageserver.ssl_key_file; see the server log)"
        };
        BackendWriter(out).fatal(sqlstate::INVALID_AUTHORIZATION_SPECIFICATION, why);
        let _ = send(&mut stream, out).await;
        return Ok(Started::Done);
    }
    Ok(Started::Session(stream, params))
}

/// Serves one client until it leaves or breaks the protocol.
async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Option<ServiceContext>,
    auth: AuthConfig,
    tls: TlsPolicy,
) -> Result<(), ProtocolError> {
    stream.set_nodelay(true)?;
    let _open = ctx.as_ref().map(|ctx| ctx.stats.connection());
    let no_session = || {
        if let Some(ctx) = &ctx {
            ctx.stats.no_session();
        }
    };
    let mut out = BytesMut::with_capacity(8192);
    let Started::Session(mut stream, params) = start(stream, &tls, &mut out).await.inspect_err(|_| no_session())? else {
        no_session();
        return Ok(());
    };
    let user = params.get("user").map(String::as_str).unwrap_or_default();
    let Some(access) = authenticate(&mut stream, &mut out, &auth, user, peer).await.inspect_err(|_| no_session())? else {
        no_session();
        return Ok(());
    };
    let session = Session { peer, access };

    let mut w = BackendWriter(&mut out);
    w.authentication_ok();
    for (name, value) in [
        ("server_version", "15.0 (pageserver_ext)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        w.parameter_status(name, value);
    }
    w.ready_for_query();
    send(&mut stream, &mut out).await?;

    // After an error in an extended-protocol batch, skip to its Sync, as PostgreSQL does.
    let mut skipping_until_sync = false;
    loop {
        let msg = match pq::read_message(&mut stream).await {
            Ok(m) => m,
            Err(ProtocolError::Closed) => return Ok(()),
            Err(e) => {
                BackendWriter(&mut out).fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string());
                let _ = send(&mut stream, &mut out).await;
                return Err(e);
            }
        };
        let mut w = BackendWriter(&mut out);
        match msg {
            FrontendMessage::Terminate => return Ok(()),
            FrontendMessage::Sync => {
                skipping_until_sync = false;
                w.ready_for_query();
            }
            FrontendMessage::Query(query) => {
                skipping_until_sync = false;
                match commands::parse_command(&query) {
                    Ok(Some(command)) => match &ctx {
                        Some(ctx) => {
                            commands::run(&mut stream, &mut out, ctx, &session, command).await?;
                        }
                        None => w.error(sqlstate::FEATURE_NOT_SUPPORTED, "the page server's repository is not running", None),
                    },
                    Ok(None) => run_simple_query(&mut w, &query),
                    Err(message) => w.error(sqlstate::SYNTAX_ERROR, &message, None),
                }
                BackendWriter(&mut out).ready_for_query();
            }
            FrontendMessage::Other { .. } if skipping_until_sync => continue,
            FrontendMessage::Other { tag, .. } => {
                w.error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    &format!(
                        "message type '{}' is not supported: the page service speaks only the simple query protocol",
                        tag.escape_ascii()
                    ),
                    None,
                );
                skipping_until_sync = true;
            }
        }
        send(&mut stream, &mut out).await?;
    }
}

/// Authenticates the client as `auth` says. Returns what it may read, or
/// `None` when it was refused (a FATAL error was sent, nothing else) or
/// left without answering.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
    auth: &AuthConfig,
    user: &str,
    peer: SocketAddr,
) -> Result<Option<Access>, ProtocolError> {
    let keys = match auth {
        AuthConfig::Trust => return Ok(Some(Access::AllTenants)),
        AuthConfig::Jwt(keys) => keys,
    };
    let token = if keys.is_empty() {
        None // refused below without asking: no token could pass
    } else {
        BackendWriter(out).authentication_cleartext_password();
        send(stream, out).await?;
        let message = match tokio::time::timeout(STARTUP_TIMEOUT, pq::read_message(stream)).await {
            Err(_) => {
                BackendWriter(out).fatal(sqlstate::PROTOCOL_VIOLATION, "password not received in time");
                let _ = send(stream, out).await;
                return Ok(None);
            }
            // A client without a password leaves here (libpq says "no password supplied").
            Ok(Err(ProtocolError::Closed)) => return Ok(None),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(m)) => m,
        };
        match message {
            FrontendMessage::Other { tag: b'p', body } => {
                let text = body.strip_suffix(&[0]).unwrap_or(&body);
                // Bytes that are not UTF-8 become U+FFFD, which no JWT holds:
                // verify() calls the token malformed.
                Some(String::from_utf8_lossy(text).into_owned())
            }
            other => {
                let message = format!("expected password response, got message type '{}'", other.tag().escape_ascii());
                BackendWriter(out).fatal(sqlstate::PROTOCOL_VIOLATION, &message);
                let _ = send(stream, out).await;
                return Ok(None);
            }
        }
    };
    let refused = match token.as_deref().map(|t| auth::verify(keys, t)) {
        Some(Ok(access)) => return Ok(Some(access)),
        Some(Err(e)) => e,
        None => auth::AuthError::NoKeys,
    };
    tracing::info!("page service: authentication of {peer} (user {user:?}) refused: {}", refused.kind());
    let error = crate::error::ServiceError::from(refused);
    BackendWriter(out).fatal(error.sqlstate(), &format!("JWT authentication failed for user \"{user}\": {error}"));
    let _ = send(stream, out).await;
    Ok(None)
}

/// What the error hint says about the commands this port serves.
const COMMANDS_HINT: &str = "This port speaks the page service protocol, not SQL: connect to the host PostgreSQL \
     for SQL. Commands: pagestream_v2|pagestream_v3 <tenant> <timeline>, \
     basebackup|fullbackup <tenant> <timeline> [lsn].";

/// Runs one simple query; writes its responses (not ReadyForQuery).
fn run_simple_query(w: &mut BackendWriter<'_>, query: &str) {
    let query = query.trim().trim_end_matches(';').trim();
    if query.is_empty() {
        w.empty_query_response();
        return;
    }
    let command = query.split_whitespace().next().unwrap_or_default();
    let shown: String = command.chars().take(64).collect();
    w.error(sqlstate::SYNTAX_ERROR, &format!("pageserver_ext: unknown page service command \"{shown}\""), Some(COMMANDS_HINT));
}

/// The address the page service would listen on, checked at start-up so a
/// typo in `pageserver.listen_addr` is reported clearly.
pub fn parse_listen_addr(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|e| format!("invalid pageserver.listen_addr \"{value}\": {e} (expected host:port, e.g. 127.0.0.1:6400)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pageserver_harness::tls::{TestCa, TlsDir};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

    async fn start_server() -> (SocketAddr, CancellationToken) {
        let (addr, cancel, _) = start_server_with(TlsPolicy::default()).await;
        (addr, cancel)
    }

    async fn start_server_with(tls: TlsPolicy) -> (SocketAddr, CancellationToken, SharedTlsPolicy) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let shared = SharedTlsPolicy::new(tls);
        tokio::spawn(serve(listener, None, SharedAuth::default(), shared.clone(), cancel.clone()));
        (addr, cancel, shared)
    }

    /// A CA and a server policy with a certificate it signed for localhost.
    fn tls_policy(dir: &TlsDir, name: &str, required: bool) -> (TestCa, TlsPolicy) {
        let ca = TestCa::new(name).unwrap();
        let files = dir.server_files(&ca, name).unwrap();
        let config = tls::load_server_config(&files.cert.display().to_string(), &files.key.display().to_string()).unwrap();
        (ca, TlsPolicy { config, required })
    }

    /// Sends SSLRequest; after 'S', a TLS handshake that trusts `ca` only.
    async fn tls_connect(addr: SocketAddr, ca: &TestCa) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&SSL_REQUEST).await?;
        assert_eq!(s.read_u8().await?, b'S');
        tls_handshake(s, ca).await
    }

    async fn tls_handshake(s: TcpStream, ca: &TestCa) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("localhost").unwrap(), s).await
    }

    /// The SQLSTATE and message of an ErrorResponse body.
    fn error_fields(body: &[u8]) -> (String, String) {
        let mut code = String::new();
        let mut message = String::new();
        for field in body.split(|b| *b == 0) {
            match field.split_first() {
                Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
                Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
                _ => {}
            }
        }
        (code, message)
    }

    async fn startup<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Vec<(u8, Vec<u8>)> {
        send_startup(stream).await;
        read_until_ready(stream).await
    }

    async fn send_startup<S: AsyncWrite + Unpin>(stream: &mut S) {
        let body = b"user\0u\0database\0d\0\0";
        let mut p = Vec::new();
        p.extend(((body.len() + 8) as u32).to_be_bytes());
        p.extend((3u32 << 16).to_be_bytes());
        p.extend(body);
        stream.write_all(&p).await.unwrap();
    }

    /// Backend messages (tag, body) until the server closes.
    async fn read_to_close(stream: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
        let mut all = Vec::new();
        while let Ok(tag) = stream.read_u8().await {
            let len = stream.read_u32().await.unwrap();
            let mut body = vec![0; len as usize - 4];
            stream.read_exact(&mut body).await.unwrap();
            all.push((tag, body));
        }
        all
    }

    /// Backend messages (tag, body) up to and including ReadyForQuery, or
    /// up to an error when the server closes the connection after it.
    async fn read_until_ready<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<(u8, Vec<u8>)> {
        let mut all = Vec::new();
        loop {
            let Ok(tag) = stream.read_u8().await else { return all };
            let len = stream.read_u32().await.unwrap();
            let mut body = vec![0; len as usize - 4];
            stream.read_exact(&mut body).await.unwrap();
            all.push((tag, body));
            if tag == b'Z' {
                return all;
            }
        }
    }

    #[tokio::test]
    async fn unknown_command_gets_an_error_and_the_session_goes_on() {
        let (addr, _cancel) = start_server().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let hello = startup(&mut s).await;
        assert_eq!(hello[0].0, b'R');
        for _ in 0..2 {
            s.write_all(b"Q\0\0\0\x0bselect\0").await.unwrap();
            let reply = read_until_ready(&mut s).await;
            assert_eq!(reply[0].0, b'E');
            let text = String::from_utf8_lossy(&reply[0].1);
            assert!(text.contains("unknown page service command \"select\""), "{text}");
        }
    }

    #[tokio::test]
    async fn garbage_startup_gets_a_fatal_error_and_the_listener_keeps_serving() {
        let (addr, _cancel) = start_server().await;
        let mut bad = TcpStream::connect(addr).await.unwrap();
        // Only the length: the server rejects it before reading more, and
        // unread bytes would turn its close into a reset that hides the error.
        bad.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        let mut reply = Vec::new();
        bad.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply[0], b'E');
        assert!(String::from_utf8_lossy(&reply).contains("invalid startup packet length"));

        let mut good = TcpStream::connect(addr).await.unwrap();
        assert_eq!(startup(&mut good).await[0].0, b'R');
    }

    #[tokio::test]
    async fn a_cancelled_listener_stops_accepting() {
        let (addr, cancel) = start_server().await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        assert_eq!(startup(&mut first).await[0].0, b'R');
        cancel.cancel();
        // The listener is dropped once the accept loop has seen the cancel.
        let mut refused = false;
        for _ in 0..50 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "the listener still accepts after the cancel");
    }

    #[tokio::test]
    async fn extended_protocol_is_refused_once_per_batch() {
        let (addr, _cancel) = start_server().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        startup(&mut s).await;
        // Parse, Bind, Sync: one error, then ReadyForQuery.
        s.write_all(b"P\0\0\0\x08\0\0\0\0B\0\0\0\x04S\0\0\0\x04").await.unwrap();
        let reply = read_until_ready(&mut s).await;
        let tags: Vec<u8> = reply.iter().map(|(tag, _)| *tag).collect();
        assert_eq!(tags, b"EZ", "{reply:?}");
    }

    mod jwt {
        use super::*;
        use pageserver_harness::jwt::{admin_claims, tenant_claims, JwtKey};

        const TENANT: &str = "0123456789abcdef0123456789abcdef";

        fn keys_of(keys: &[&JwtKey]) -> AuthConfig {
            let dir = tempfile::tempdir().unwrap();
            for (i, key) in keys.iter().enumerate() {
                std::fs::write(dir.path().join(format!("{i}.pem")), key.public_pem()).unwrap();
            }
            AuthConfig::Jwt(std::sync::Arc::new(auth::load_keys(dir.path()).unwrap().keys))
        }

        async fn start_jwt_server(config: AuthConfig) -> (SocketAddr, SharedAuth, CancellationToken) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let cancel = CancellationToken::new();
            let auth = SharedAuth::new(config);
            tokio::spawn(serve(listener, None, auth.clone(), SharedTlsPolicy::new(TlsPolicy::default()), cancel.clone()));
            (addr, auth, cancel)
        }

        /// Connects, expects the password request, answers with `message` (tag and body).
        async fn answer_password_request(addr: SocketAddr, tag: u8, body: &[u8]) -> TcpStream {
            let mut s = TcpStream::connect(addr).await.unwrap();
            send_startup(&mut s).await;
            let (tag_in, len, code) = (s.read_u8().await.unwrap(), s.read_u32().await.unwrap(), s.read_u32().await.unwrap());
            assert_eq!((tag_in, len, code), (b'R', 8, 3), "AuthenticationCleartextPassword expected");
            let mut m = vec![tag];
            m.extend(((body.len() + 4) as u32).to_be_bytes());
            m.extend(body);
            s.write_all(&m).await.unwrap();
            s
        }

        async fn password(addr: SocketAddr, token: &str) -> TcpStream {
            answer_password_request(addr, b'p', format!("{token}\0").as_bytes()).await
        }

        /// The one FATAL error the server sent before closing: (SQLSTATE, message).
        fn only_fatal(messages: &[(u8, Vec<u8>)]) -> (String, String) {
            assert_eq!(messages.len(), 1, "one ErrorResponse and nothing else: {messages:?}");
            let (tag, body) = &messages[0];
            assert_eq!(*tag, b'E');
            let text = String::from_utf8_lossy(body);
            let field = |f: char| text.split('\0').find_map(|x| x.strip_prefix(f)).unwrap_or_default().to_string();
            assert_eq!(field('S'), "FATAL", "{text}");
            (field('C'), field('M'))
        }

        #[tokio::test]
        async fn a_valid_token_is_authenticated_and_the_session_runs() {
            let key = JwtKey::generate();
            let (addr, _auth, _cancel) = start_jwt_server(keys_of(&[&key])).await;
            let mut s = password(addr, &key.sign(&tenant_claims(TENANT, 600))).await;
            let hello = read_until_ready(&mut s).await;
            assert_eq!(hello[0], (b'R', 0u32.to_be_bytes().to_vec()), "AuthenticationOk");
            s.write_all(b"Q\0\0\0\x0bselect\0").await.unwrap();
            let reply = read_until_ready(&mut s).await;
            assert!(String::from_utf8_lossy(&reply[0].1).contains("unknown page service command"), "{reply:?}");
        }

        #[tokio::test]
        async fn bad_tokens_get_one_fatal_error_that_does_not_quote_them() {
            let key = JwtKey::generate();
            let other = JwtKey::generate();
            let (addr, _auth, _cancel) = start_jwt_server(keys_of(&[&key])).await;
            let cases = [
                ("another key", other.sign(&admin_claims(600)), "matches none of the page service's public keys"),
                ("expired", key.sign(&admin_claims(-3600)), "the token has expired"),
                ("garbage", "garbage-token-text".to_string(), "not a well-formed JWT"),
                ("empty", String::new(), "no token was sent"),
            ];
            for (what, token, reason) in cases {
                let mut s = password(addr, &token).await;
                let (code, message) = only_fatal(&read_to_close(&mut s).await);
                assert_eq!(code, "28P01", "{what}: {message}");
                assert!(message.starts_with("JWT authentication failed for user \"u\": "), "{what}: {message}");
                assert!(message.contains(reason), "{what}: {message}");
                assert!(token.is_empty() || !message.contains(&token), "{what}: the token is quoted");
            }
            let mut s = answer_password_request(addr, b'p', b"\xff\xfe not UTF-8\0").await;
            let (code, message) = only_fatal(&read_to_close(&mut s).await);
            assert_eq!(code, "28P01", "{message}");
            assert!(message.contains("not a well-formed JWT"), "{message}");
        }

        #[tokio::test]
        async fn anything_but_a_password_message_is_a_protocol_violation() {
            let key = JwtKey::generate();
            let (addr, _auth, _cancel) = start_jwt_server(keys_of(&[&key])).await;
            let mut s = answer_password_request(addr, b'Q', b"fullbackup x y\0").await;
            let (code, message) = only_fatal(&read_to_close(&mut s).await);
            assert_eq!((code.as_str(), message.as_str()), ("08P01", "expected password response, got message type 'Q'"));
        }

        #[tokio::test]
        async fn without_keys_every_connection_is_refused_at_once() {
            let (addr, _auth, _cancel) = start_jwt_server(keys_of(&[])).await;
            let mut s = TcpStream::connect(addr).await.unwrap();
            send_startup(&mut s).await;
            let (code, message) = only_fatal(&read_to_close(&mut s).await);
            assert_eq!(code, "28000", "{message}");
            assert!(message.contains("no public key is loaded (pageserver.auth_public_keys)"), "{message}");
        }

        #[tokio::test]
        async fn new_connections_use_the_keys_of_the_last_reload() {
            let (old, new) = (JwtKey::generate(), JwtKey::generate());
            let (addr, auth, _cancel) = start_jwt_server(keys_of(&[&old])).await;
            let mut before = password(addr, &old.sign(&admin_claims(600))).await;
            read_until_ready(&mut before).await;
            auth.set(keys_of(&[&new]));
            let mut s = password(addr, &new.sign(&admin_claims(600))).await;
            assert_eq!(read_until_ready(&mut s).await[0].0, b'R');
            let mut s = password(addr, &old.sign(&admin_claims(600))).await;
            assert_eq!(only_fatal(&read_to_close(&mut s).await).0, "28P01");
            // The connection made before the reload keeps working.
            before.write_all(b"Q\0\0\0\x05\0").await.unwrap();
            assert_eq!(read_until_ready(&mut before).await[0].0, b'I', "EmptyQueryResponse");
            auth.set(AuthConfig::Trust);
            let mut trusted = TcpStream::connect(addr).await.unwrap();
            assert_eq!(startup(&mut trusted).await[0], (b'R', 0u32.to_be_bytes().to_vec()));
        }
    }

    #[tokio::test]
    async fn without_a_certificate_ssl_is_declined_and_the_session_goes_on_plain() {
        let (addr, _cancel) = start_server().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&SSL_REQUEST).await.unwrap();
        assert_eq!(s.read_u8().await.unwrap(), b'N');
        assert_eq!(startup(&mut s).await[0].0, b'R');
    }

    #[tokio::test]
    async fn a_tls_session_works_after_gssapi_is_declined() {
        let dir = TlsDir::new().unwrap();
        let (ca, policy) = tls_policy(&dir, "ca", false);
        let (addr, _cancel, _) = start_server_with(policy).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&GSSENC_REQUEST).await.unwrap();
        assert_eq!(s.read_u8().await.unwrap(), b'N');
        s.write_all(&SSL_REQUEST).await.unwrap();
        assert_eq!(s.read_u8().await.unwrap(), b'S');
        let mut tls = tls_handshake(s, &ca).await.unwrap();
        assert_eq!(startup(&mut tls).await[0].0, b'R');
        tls.write_all(b"Q\0\0\0\x0bselect\0").await.unwrap();
        let reply = read_until_ready(&mut tls).await;
        assert!(String::from_utf8_lossy(&reply[0].1).contains("unknown page service command"), "{reply:?}");
        // Plain sessions still work while TLS is not required.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        assert_eq!(startup(&mut plain).await[0].0, b'R');
        // A certificate from another CA is not trusted by the client.
        let other = TestCa::new("other").unwrap();
        let err = tls_connect(addr, &other).await.unwrap_err().to_string();
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn ssl_required_refuses_plain_sessions_with_28000() {
        let dir = TlsDir::new().unwrap();
        let (ca, policy) = tls_policy(&dir, "ca", true);
        let (addr, _cancel, shared) = start_server_with(policy).await;
        let mut plain = TcpStream::connect(addr).await.unwrap();
        let reply = startup(&mut plain).await;
        assert_eq!(reply.len(), 1, "{reply:?}");
        let (code, message) = error_fields(&reply[0].1);
        assert_eq!(code, "28000");
        assert!(message.contains("pageserver.ssl_required is on"), "{message}");
        assert!(String::from_utf8_lossy(&reply[0].1).contains("SFATAL"));

        let mut tls = tls_connect(addr, &ca).await.unwrap();
        assert_eq!(startup(&mut tls).await[0].0, b'R');

        // Required, but no usable certificate: nothing gets in, and the message says why.
        shared.set(TlsPolicy { config: None, required: true });
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&SSL_REQUEST).await.unwrap();
        assert_eq!(s.read_u8().await.unwrap(), b'N');
        let (code, message) = error_fields(&startup(&mut s).await[0].1);
        assert_eq!(code, "28000");
        assert!(message.contains("no usable certificate"), "{message}");
    }

    #[tokio::test]
    async fn a_new_policy_applies_to_new_connections() {
        let dir = TlsDir::new().unwrap();
        let (old_ca, policy) = tls_policy(&dir, "old", false);
        let (addr, _cancel, shared) = start_server_with(policy).await;
        let mut before = tls_connect(addr, &old_ca).await.unwrap();
        let (new_ca, new_policy) = tls_policy(&dir, "new", false);
        shared.set(new_policy);
        assert!(tls_connect(addr, &old_ca).await.is_err(), "the old certificate is still served");
        let mut after = tls_connect(addr, &new_ca).await.unwrap();
        assert_eq!(startup(&mut after).await[0].0, b'R');
        // A session started before the change goes on with its certificate.
        assert_eq!(startup(&mut before).await[0].0, b'R');
    }

    #[test]
    fn listen_addr_errors_name_the_setting() {
        assert!(parse_listen_addr("127.0.0.1:6400").is_ok());
        let err = parse_listen_addr("localhost").unwrap_err();
        assert!(err.contains("pageserver.listen_addr"), "{err}");
    }
}

//! The page service: a libpq-protocol listener on `pageserver.listen_addr`,
//! run on the main worker's tokio runtime.
//!
//! It owns connection handling: startup, authentication (trust, or a JWT
//! as the password: module `auth`), and simple queries dispatched to
//! page-service commands. Nothing here calls
//! PostgreSQL (tokio threads must never); messages for the server log go
//! through `tracing` (module `log`) to the worker's main thread. It stops
//! accepting connections when its cancellation token is cancelled.

pub mod auth;
pub mod commands;
pub mod pq;

use auth::{Access, AuthConfig, Session, SharedAuth};
use commands::ServiceContext;
use tokio_util::sync::CancellationToken;

use bytes::BytesMut;
use pq::{sqlstate, BackendWriter, FrontendMessage, ProtocolError, Startup};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a client may take to finish the startup phase.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait before binding again when the address is taken.
const BIND_RETRY: Duration = Duration::from_secs(2);

/// Binds `listen_addr`, retrying while it is taken, then serves until
/// `cancel`. Each connection authenticates as `auth` says when it starts.
pub async fn run(listen_addr: String, ctx: Option<ServiceContext>, auth: SharedAuth, cancel: CancellationToken) {
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
    serve(listener, ctx, auth, cancel).await
}

/// Accepts connections and serves each on its own task, until `cancel`.
pub async fn serve(listener: TcpListener, ctx: Option<ServiceContext>, auth: SharedAuth, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let ctx = ctx.clone();
                let auth = auth.current();
                tokio::spawn(async move {
                    if let Err(e) = handle_connection(stream, peer, ctx, auth).await {
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

/// Serves one client until it leaves or breaks the protocol.
async fn handle_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Option<ServiceContext>,
    auth: AuthConfig,
) -> Result<(), ProtocolError> {
    stream.set_nodelay(true)?;
    let mut out = BytesMut::with_capacity(8192);
    let startup = match tokio::time::timeout(STARTUP_TIMEOUT, pq::read_startup(&mut stream)).await {
        Err(_) => {
            BackendWriter(&mut out).fatal(sqlstate::PROTOCOL_VIOLATION, "startup packet not received in time");
            let _ = send(&mut stream, &mut out).await;
            return Ok(());
        }
        Ok(Err(ProtocolError::Closed)) => return Ok(()),
        Ok(Err(e)) => {
            BackendWriter(&mut out).fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string());
            let _ = send(&mut stream, &mut out).await;
            return Err(e);
        }
        Ok(Ok(s)) => s,
    };
    let Startup::Session(params) = startup else {
        return Ok(()); // cancel request: nothing runs long enough to cancel
    };
    let user = params.get("user").map(String::as_str).unwrap_or_default();
    let Some(access) = authenticate(&mut stream, &mut out, &auth, user, peer).await? else {
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
    use tokio::io::AsyncReadExt;

    async fn start_server() -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, None, SharedAuth::default(), cancel.clone()));
        (addr, cancel)
    }

    async fn startup(stream: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
        send_startup(stream).await;
        read_until_ready(stream).await
    }

    async fn send_startup(stream: &mut TcpStream) {
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

    /// Backend messages (tag, body) up to and including ReadyForQuery.
    async fn read_until_ready(stream: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
        let mut all = Vec::new();
        loop {
            let tag = stream.read_u8().await.unwrap();
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
            tokio::spawn(serve(listener, None, auth.clone(), cancel.clone()));
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

    #[test]
    fn listen_addr_errors_name_the_setting() {
        assert!(parse_listen_addr("127.0.0.1:6400").is_ok());
        let err = parse_listen_addr("localhost").unwrap_err();
        assert!(err.contains("pageserver.listen_addr"), "{err}");
    }
}

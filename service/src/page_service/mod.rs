//! The page service: a libpq-protocol listener on `pageserver.listen_addr`,
//! run on the main worker's tokio runtime.
//!
//! It owns connection handling: startup, trust authentication, and simple
//! queries dispatched to page-service commands. Nothing here calls
//! PostgreSQL (tokio threads must never); messages for the server log go
//! through `tracing` (module `log`) to the worker's main thread. It stops
//! accepting connections when its cancellation token is cancelled.

pub mod auth;
pub mod commands;
pub mod pq;

use commands::ServiceContext;
use tokio_util::sync::CancellationToken;

use bytes::BytesMut;
use pq::{sqlstate, BackendWriter, FrontendMessage, ProtocolError, Startup};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// How long a client may take to finish the startup phase.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait before binding again when the address is taken.
const BIND_RETRY: Duration = Duration::from_secs(2);

/// Binds `listen_addr`, retrying while it is taken, then serves until `cancel`.
pub async fn run(listen_addr: String, ctx: Option<ServiceContext>, cancel: CancellationToken) {
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
    serve(listener, ctx, cancel).await
}

/// Accepts connections and serves each on its own task, until `cancel`.
pub async fn serve(listener: TcpListener, ctx: Option<ServiceContext>, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_connection(stream, ctx).await {
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

async fn send(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<()> {
    stream.write_all(buf).await?;
    buf.clear();
    stream.flush().await
}

/// Serves one client until it leaves or breaks the protocol.
async fn handle_connection(mut stream: TcpStream, ctx: Option<ServiceContext>) -> Result<(), ProtocolError> {
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
    let Startup::Session(_params) = startup else {
        return Ok(()); // cancel request: nothing runs long enough to cancel
    };

    // Trust authentication for now; JWT comes with the authentication issue.
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
                            commands::run(&mut stream, &mut out, ctx, command).await?;
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
        tokio::spawn(serve(listener, None, cancel.clone()));
        (addr, cancel)
    }

    async fn startup(stream: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
        let body = b"user\0u\0database\0d\0\0";
        let mut p = Vec::new();
        p.extend(((body.len() + 8) as u32).to_be_bytes());
        p.extend((3u32 << 16).to_be_bytes());
        p.extend(body);
        stream.write_all(&p).await.unwrap();
        read_until_ready(stream).await
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

    #[test]
    fn listen_addr_errors_name_the_setting() {
        assert!(parse_listen_addr("127.0.0.1:6400").is_ok());
        let err = parse_listen_addr("localhost").unwrap_err();
        assert!(err.contains("pageserver.listen_addr"), "{err}");
    }
}

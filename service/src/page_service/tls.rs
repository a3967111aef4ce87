//! TLS of the page service: the server configuration built from
//! `pageserver.ssl_cert_file` and `pageserver.ssl_key_file`, the policy
//! the listener's connections read when they start (that configuration and
//! `pageserver.ssl_required`), which the main worker's PostgreSQL thread
//! replaces on reload, and [`ClientStream`], a connection plain or
//! encrypted, which everything after the startup packet reads and writes.

use parking_lot::RwLock;
use rustls::ServerConfig;
use std::io::IoSlice;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Why the certificate and key could not be made into a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("{0}")]
    Pem(#[from] crate::tls::PemError),
    #[error("pageserver.ssl_cert_file is set but pageserver.ssl_key_file is not (both are needed for TLS)")]
    NoKeyFile,
    #[error("pageserver.ssl_key_file is set but pageserver.ssl_cert_file is not (both are needed for TLS)")]
    NoCertFile,
    #[error(
        "private key file \"{0}\" (pageserver.ssl_key_file) has group or world access; it must have permissions u=rw \
         (0600) or less if owned by the server's user, or u=rw,g=r (0640) or less if owned by root"
    )]
    KeyPermissions(String),
    #[error("the certificate \"{cert}\" and key \"{key}\" cannot be used: {reason}")]
    Unusable { cert: String, key: String, reason: String },
}

/// The TLS configuration for the certificate chain and key in these PEM
/// files (relative paths are relative to the working directory, the host's
/// data directory); `None` when both settings are empty.
pub fn load_server_config(cert_file: &str, key_file: &str) -> Result<Option<Arc<ServerConfig>>, ServerTlsError> {
    match (cert_file.is_empty(), key_file.is_empty()) {
        (true, true) => return Ok(None),
        (false, true) => return Err(ServerTlsError::NoKeyFile),
        (true, false) => return Err(ServerTlsError::NoCertFile),
        (false, false) => {}
    }
    let chain = crate::tls::read_certificates(Path::new(cert_file), "server certificate file (pageserver.ssl_cert_file)")?;
    let key = crate::tls::read_private_key(Path::new(key_file), "server key file (pageserver.ssl_key_file)")?;
    // As PostgreSQL checks its own ssl_key_file.
    if std::fs::metadata(key_file).is_ok_and(|meta| crate::tls::key_file_too_open(&meta)) {
        return Err(ServerTlsError::KeyPermissions(key_file.into()));
    }
    let unusable = |e: rustls::Error| ServerTlsError::Unusable { cert: cert_file.into(), key: key_file.into(), reason: e.to_string() };
    let mut config = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(unusable)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(unusable)?;
    // What PostgreSQL 17 servers offer; older clients send no ALPN at all.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// What a new connection is offered and held to.
#[derive(Clone, Default)]
pub struct TlsPolicy {
    /// `None`: SSLRequest is answered 'N'.
    pub config: Option<Arc<ServerConfig>>,
    /// `pageserver.ssl_required`: a session without TLS is refused.
    pub required: bool,
}

/// The current [`TlsPolicy`], shared by the listener and the thread that
/// applies reloads; a connection reads it once, when it starts.
#[derive(Clone, Default)]
pub struct SharedTlsPolicy(Arc<RwLock<TlsPolicy>>);

impl SharedTlsPolicy {
    pub fn new(policy: TlsPolicy) -> SharedTlsPolicy {
        SharedTlsPolicy(Arc::new(RwLock::new(policy)))
    }

    pub fn get(&self) -> TlsPolicy {
        self.0.read().clone()
    }

    pub fn set(&self, policy: TlsPolicy) {
        *self.0.write() = policy;
    }
}

/// A client connection, plain or encrypted.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }

    /// Needed after writes on a TLS stream: records may wait in rustls.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pageserver_harness::tls::{TestCa, TlsDir};

    #[test]
    fn settings_load_or_fail_naming_the_file() {
        assert!(load_server_config("", "").unwrap().is_none());
        assert!(load_server_config("server.crt", "").unwrap_err().to_string().contains("ssl_key_file is not"));
        assert!(load_server_config("", "server.key").unwrap_err().to_string().contains("ssl_cert_file is not"));

        let ca = TestCa::new("page service test CA").unwrap();
        let dir = TlsDir::new().unwrap();
        let files = dir.server_files(&ca, "server").unwrap();
        let (cert, key) = (files.cert.display().to_string(), files.key.display().to_string());
        assert!(load_server_config(&cert, &key).unwrap().is_some());

        let missing = dir.path().join("missing.key").display().to_string();
        let err = load_server_config(&cert, &missing).unwrap_err().to_string();
        assert!(err.contains("cannot read server key file (pageserver.ssl_key_file)") && err.contains("missing.key"), "{err}");
        // Certificate and key do not belong together.
        let other = dir.server_files(&ca, "other").unwrap();
        let err = load_server_config(&cert, &other.key.display().to_string()).unwrap_err().to_string();
        assert!(err.contains("cannot be used"), "{err}");
        // A key others may read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_server_config(&cert, &key).unwrap_err().to_string();
        assert!(err.contains("has group or world access"), "{err}");
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A key where the certificate should be.
        let err = load_server_config(&key, &key).unwrap_err().to_string();
        assert!(err.contains("server certificate file") && err.contains("holds no certificate"), "{err}");
    }
}

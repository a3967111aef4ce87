//! TLS of the replication connection, following libpq for the options of a
//! primary's connection string that govern it:
//!
//! - `sslmode`: `disable`, `allow` (plain first, TLS if the primary refuses
//!   that), `prefer` (the default: TLS if the primary offers it, plain if it
//!   does not or the handshake fails), `require` (TLS or nothing),
//!   `verify-ca` (TLS, and the primary's certificate must chain to a root
//!   certificate), `verify-full` (that, and it must name the host);
//! - `sslrootcert`: the root certificates (PEM), default
//!   `~/.postgresql/root.crt`. As in libpq, when that file exists the chain
//!   is checked in every mode, and `verify-ca`/`verify-full` fail without it;
//! - `sslcert`, `sslkey`: a client certificate and its key (PEM), default
//!   `~/.postgresql/postgresql.crt` and `.key`, sent when the certificate
//!   file exists. The key file must not be readable by group or others
//!   (0640 is allowed for a file owned by root), as libpq requires.
//!
//! `~` is `$HOME` of the user the host runs as. Host names are checked
//! against the certificate's subject alternative names (DNS names and IP
//! addresses), not its common name. Unix-socket connections never use TLS,
//! as in libpq. Other `ssl*` options are refused, naming the option.
//!
//! tokio-postgres, which parses the rest of the connection string, knows
//! none of these but a part of `sslmode`: [`split_conninfo`] takes them out
//! first.

use crate::tls::PemError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// `SSLRequest`: length 8, then the magic code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// `sslmode`, as libpq defines it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, TlsError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(TlsError::BadMode(other.to_string())),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The TLS options of a connection string (paths as given).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SslOptions {
    pub mode: SslMode,
    pub rootcert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Why TLS to the primary could not be set up or failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid sslmode \"{0}\": expected disable, allow, prefer, require, verify-ca or verify-full")]
    BadMode(String),
    #[error("connection option \"{0}\" is not supported (of the TLS options: sslmode, sslrootcert, sslcert, sslkey)")]
    Unsupported(String),
    #[error("invalid connection string: {0}")]
    Syntax(String),
    #[error(
        "root certificate file \"{}\" does not exist: sslmode={mode} needs the root certificates to check the primary's \
         certificate against (give sslrootcert=…, or use sslmode=require for encryption without verification)",
        path.display()
    )]
    NoRootCert { path: PathBuf, mode: SslMode },
    #[error("sslmode={0} needs sslrootcert=… (HOME is not set, so there is no ~/.postgresql/root.crt)")]
    NoHome(SslMode),
    #[error("{0}")]
    Pem(#[from] PemError),
    #[error("root certificate file \"{}\": {reason}", path.display())]
    BadRootCert { path: PathBuf, reason: String },
    #[error("certificate present, but not private key file \"{}\"", path.display())]
    NoKey { path: PathBuf },
    #[error(
        "private key file \"{}\" has group or world access; it must have permissions u=rw (0600) or less if owned by \
         the host's user, or u=rw,g=r (0640) or less if owned by root",
        path.display()
    )]
    KeyPermissions { path: PathBuf },
    #[error("client certificate \"{}\" and key \"{}\" cannot be used: {reason}", cert.display(), key.display())]
    BadClientCert { cert: PathBuf, key: PathBuf, reason: String },
    #[error("cannot configure TLS: {0}")]
    Config(String),
    #[error("host name \"{0}\" cannot be checked against a certificate")]
    BadHostName(String),
    #[error("the server does not support SSL, but sslmode={0}")]
    NotSupportedByServer(SslMode),
    #[error("unexpected answer '{}' to the SSL request", .0.escape_ascii())]
    BadAnswer(u8),
    #[error("TLS handshake with the primary failed (sslmode={mode}): {source}")]
    Handshake { mode: SslMode, source: std::io::Error },
}

impl TlsError {
    /// A problem of the connection string or the files it names (rather
    /// than of the primary's answer).
    pub fn is_configuration(&self) -> bool {
        !matches!(self, TlsError::NotSupportedByServer(_) | TlsError::BadAnswer(_) | TlsError::Handshake { .. })
    }
}

/// Takes the TLS options out of a libpq connection string (keyword/value
/// or URI form); returns the rest, for tokio-postgres, and the options.
pub fn split_conninfo(conninfo: &str) -> Result<(String, SslOptions), TlsError> {
    let trimmed = conninfo.trim();
    let mut options = SslOptions::default();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return Ok((trimmed.to_string(), options));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)?;
            if !take_option(&mut options, &key, || percent_decode(value))? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        return Ok((rest, options));
    }
    let mut kept = Vec::new();
    for (key, value) in keyword_pairs(trimmed)? {
        if !take_option(&mut options, &key, || Ok(value.clone()))? {
            kept.push(format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'")));
        }
    }
    Ok((kept.join(" "), options))
}

/// Stores a TLS option in `options`; false if `key` is not one.
fn take_option(options: &mut SslOptions, key: &str, value: impl FnOnce() -> Result<String, TlsError>) -> Result<bool, TlsError> {
    match key {
        "sslmode" => options.mode = SslMode::parse(&value()?)?,
        "sslrootcert" => options.rootcert = Some(value()?.into()),
        "sslcert" => options.cert = Some(value()?.into()),
        "sslkey" => options.key = Some(value()?.into()),
        // libpq's default; the primary gets SNI for host names anyway.
        "sslsni" if value()? == "1" => {}
        "requiressl"
        | "sslcompression"
        | "sslpassword"
        | "sslcrl"
        | "sslcrldir"
        | "sslsni"
        | "ssl_min_protocol_version"
        | "ssl_max_protocol_version"
        | "sslnegotiation"
        | "sslcertmode" => return Err(TlsError::Unsupported(key.to_string())),
        _ => return Ok(false),
    }
    Ok(true)
}

/// The `key = value` pairs of a keyword/value connection string, values
/// unquoted as libpq reads them (single quotes, `\` escaping any character).
fn keyword_pairs(text: &str) -> Result<Vec<(String, String)>, TlsError> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(TlsError::Syntax(format!("missing \"=\" after \"{key}\"")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(TlsError::Syntax(format!("unterminated quoted string in the value of \"{key}\""))),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

fn percent_decode(s: &str) -> Result<String, TlsError> {
    let bad = || TlsError::Syntax(format!("invalid percent-encoded text \"{s}\""));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// What TLS to a TCP host needs: the client configuration and the name the
/// primary's certificate is checked against (and sent as SNI).
#[derive(Clone)]
pub struct TlsClient {
    pub mode: SslMode,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("mode", &self.mode).field("server_name", &self.server_name).finish()
    }
}

/// `$HOME/.postgresql/<name>`, libpq's default place of the TLS files.
fn default_file(name: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|home| PathBuf::from(home).join(".postgresql").join(name))
}

impl SslOptions {
    /// The TLS client for `host` these options ask for; `None` with
    /// `sslmode=disable`. Reads the certificate and key files.
    pub fn client(&self, host: &str) -> Result<Option<TlsClient>, TlsError> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = crate::tls::provider();
        let rootcert = self.rootcert.clone().or_else(|| default_file("root.crt"));
        let verifier: Arc<dyn ServerCertVerifier> = match rootcert {
            Some(path) if path.exists() => {
                let roots = load_roots(&path)?;
                if self.mode == SslMode::VerifyFull {
                    WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
                        .build()
                        .map_err(|e| TlsError::BadRootCert { path, reason: e.to_string() })?
                } else {
                    Arc::new(ChainOnly { roots: Some(roots), provider: provider.clone() })
                }
            }
            Some(path) if self.mode.verifies() => return Err(TlsError::NoRootCert { path, mode: self.mode }),
            None if self.mode.verifies() => return Err(TlsError::NoHome(self.mode)),
            _ => Arc::new(ChainOnly { roots: None, provider: provider.clone() }),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match self.client_certificate()? {
            Some((cert, key)) => {
                let chain = crate::tls::read_certificates(&cert, "client certificate file")?;
                let private = crate::tls::read_private_key(&key, "private key file")?;
                builder.with_client_auth_cert(chain, private).map_err(|e| TlsError::BadClientCert { cert, key, reason: e.to_string() })?
            }
            None => builder.with_no_client_auth(),
        };
        let server_name = ServerName::try_from(host.to_string()).map_err(|_| TlsError::BadHostName(host.to_string()))?;
        Ok(Some(TlsClient { mode: self.mode, config: Arc::new(config), server_name }))
    }

    /// The client certificate and key files to use, if the certificate
    /// file exists (libpq sends none otherwise); checks the key file's
    /// permissions.
    fn client_certificate(&self) -> Result<Option<(PathBuf, PathBuf)>, TlsError> {
        let Some(cert) = self.cert.clone().or_else(|| default_file("postgresql.crt")) else { return Ok(None) };
        if !cert.exists() {
            return Ok(None);
        }
        let key = self.key.clone().or_else(|| default_file("postgresql.key")).unwrap_or_default();
        let meta = std::fs::metadata(&key).map_err(|_| TlsError::NoKey { path: key.clone() })?;
        if crate::tls::key_file_too_open(&meta) {
            return Err(TlsError::KeyPermissions { path: key });
        }
        Ok(Some((cert, key)))
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in crate::tls::read_certificates(path, "root certificate file")? {
        roots.add(cert).map_err(|e| TlsError::BadRootCert { path: path.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(roots)
}

impl TlsClient {
    /// Asks the primary for TLS on a fresh connection (`SSLRequest`) and,
    /// if it agrees, runs the handshake. `Ok(Err(stream))` gives the plain
    /// stream back when the primary declines and `sslmode` lets that pass
    /// (`allow`, `prefer`).
    pub async fn negotiate(&self, mut stream: TcpStream) -> Result<Result<TlsStream<TcpStream>, TcpStream>, TlsError> {
        let io = |source| TlsError::Handshake { mode: self.mode, source };
        stream.write_all(&SSL_REQUEST).await.map_err(io)?;
        // One byte and no more: anything the server sent after it before
        // the handshake would be unauthenticated (CVE-2021-23222).
        match stream.read_u8().await.map_err(io)? {
            b'S' => {
                let connector = tokio_rustls::TlsConnector::from(self.config.clone());
                Ok(Ok(connector.connect(self.server_name.clone(), stream).await.map_err(io)?))
            }
            b'N' if matches!(self.mode, SslMode::Allow | SslMode::Prefer) => Ok(Err(stream)),
            b'N' => Err(TlsError::NotSupportedByServer(self.mode)),
            other => Err(TlsError::BadAnswer(other)),
        }
    }
}

/// The `tls-server-end-point` channel binding data of RFC 5929 for the
/// primary's certificate (DER): the certificate hashed with the hash of its
/// signature algorithm, SHA-256 for MD5 and SHA-1. `None` for algorithms
/// that name no hash (RSA-PSS, EdDSA) or a certificate that does not parse:
/// SCRAM then goes without binding.
pub fn server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    use aws_lc_rs::digest;
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, ... }, signature }
    let (_, certificate_fields, _) = der_element(certificate)?;
    let (_, _, after_tbs) = der_element(certificate_fields)?;
    let (_, algorithm, _) = der_element(after_tbs)?;
    let (tag, oid, _) = der_element(algorithm)?;
    if tag != 0x06 {
        return None;
    }
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01]; // 1.2.840.113549.1.1
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]; // 1.2.840.10045.4.1
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03]; // 1.2.840.10045.4.3
    let hash = match oid {
        [rsa @ .., 4 | 5 | 11] if rsa == RSA => &digest::SHA256, // md5, sha1, sha256 WithRSAEncryption
        [rsa @ .., 12] if rsa == RSA => &digest::SHA384,
        [rsa @ .., 13] if rsa == RSA => &digest::SHA512,
        _ if oid == ECDSA_SHA1 => &digest::SHA256,
        [ecdsa @ .., 2] if ecdsa == ECDSA_SHA2 => &digest::SHA256,
        [ecdsa @ .., 3] if ecdsa == ECDSA_SHA2 => &digest::SHA384,
        [ecdsa @ .., 4] if ecdsa == ECDSA_SHA2 => &digest::SHA512,
        _ => return None,
    };
    Some(digest::digest(hash, certificate).as_ref().to_vec())
}

/// One DER element at the start of `input`: its tag, its contents, and what
/// follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count].iter().fold(0usize, |acc, b| acc << 8 | *b as usize);
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The verifier of the modes that do not check the host name: with `roots`
/// (`verify-ca`, and `require`/`prefer` with a root certificate file) the
/// certificate must chain to one of them; without (`require` and `prefer`
/// with no root certificate file: encryption without authentication of the
/// primary, as in libpq) any certificate passes. The handshake's signatures
/// are checked either way.
#[derive(Debug)]
struct ChainOnly {
    roots: Option<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn tls_options_are_taken_out_of_keyword_value_strings() {
        let (rest, o) =
            split_conninfo("host=db port=5433 sslmode=verify-full sslrootcert='/etc/my ca.pem' user=repl sslcert=/c.pem sslkey = /k.pem")
                .unwrap();
        assert_eq!(rest, "host='db' port='5433' user='repl'");
        assert_eq!(o.mode, SslMode::VerifyFull);
        assert_eq!(o.rootcert.as_deref(), Some(Path::new("/etc/my ca.pem")));
        assert_eq!(o.cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(o.key.as_deref(), Some(Path::new("/k.pem")));
        // Quotes and escapes survive the round trip.
        let (rest, o) = split_conninfo(r"user=u password='a b\' c\\'").unwrap();
        assert_eq!(rest, r"user='u' password='a b\' c\\'");
        assert_eq!(o, SslOptions::default(), "sslmode defaults to prefer");
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a b' c\\"[..]));
    }

    #[test]
    fn tls_options_are_taken_out_of_uris() {
        let (rest, o) =
            split_conninfo("postgres://repl@db:5433/postgres?sslmode=require&application_name=x&sslrootcert=%2Ftmp%2Fca.pem").unwrap();
        assert_eq!(rest, "postgres://repl@db:5433/postgres?application_name=x");
        assert_eq!(o.mode, SslMode::Require);
        assert_eq!(o.rootcert.as_deref(), Some(Path::new("/tmp/ca.pem")));
        let (rest, _) = split_conninfo("postgresql://db/postgres?sslmode=disable").unwrap();
        assert_eq!(rest, "postgresql://db/postgres");
    }

    #[test]
    fn the_channel_binding_hash_follows_the_certificate_signature() {
        let ca = pageserver_harness::tls::TestCa::new("binding CA").unwrap();
        // rcgen signs with ECDSA P-256 and SHA-256.
        let pem = ca.server_cert(&["localhost"]).unwrap().cert_pem;
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let end_point = server_end_point(&der).unwrap();
        assert_eq!(end_point, aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der).as_ref());
        assert_eq!(server_end_point(&der[..der.len() / 2]), None, "a cut certificate");
        assert_eq!(server_end_point(b""), None);
    }

    #[test]
    fn bad_and_unsupported_options_are_named() {
        let err = split_conninfo("host=db sslmode=verify").unwrap_err().to_string();
        assert!(err.contains("invalid sslmode \"verify\""), "{err}");
        let err = split_conninfo("host=db sslcrl=/crl.pem").unwrap_err().to_string();
        assert!(err.contains("\"sslcrl\" is not supported"), "{err}");
        assert!(split_conninfo("host=db sslsni=1").is_ok());
        let err = split_conninfo("host=db sslrootcert='/unterminated").unwrap_err().to_string();
        assert!(err.contains("unterminated"), "{err}");
    }

    #[test]
    fn verifying_modes_need_a_root_certificate_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("root.crt");
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let options = SslOptions { mode, rootcert: Some(missing.clone()), ..Default::default() };
            let err = options.client("db").unwrap_err().to_string();
            assert!(err.contains("does not exist") && err.contains(&format!("sslmode={mode}")), "{err}");
        }
        // require without a root file: encryption only, like libpq.
        let options = SslOptions { mode: SslMode::Require, rootcert: Some(missing), ..Default::default() };
        assert!(options.client("db").unwrap().is_some());
        assert!(SslOptions { mode: SslMode::Disable, ..Default::default() }.client("db").unwrap().is_none());
    }

    #[test]
    fn a_client_key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("client.crt");
        let key = dir.path().join("client.key");
        std::fs::write(&cert, "").unwrap();
        let options = SslOptions { mode: SslMode::Require, cert: Some(cert.clone()), key: Some(key.clone()), ..Default::default() };
        let err = options.client("db").unwrap_err().to_string();
        assert!(err.contains("not private key file"), "{err}");
        std::fs::write(&key, "").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = options.client("db").unwrap_err().to_string();
        assert!(err.contains("group or world access"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = options.client("db").unwrap_err().to_string();
        assert!(err.contains("client certificate file") && err.contains("holds no certificate"), "{err}");
    }
}

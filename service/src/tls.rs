//! TLS pieces both ends of the service share: the one rustls crypto
//! provider the workspace builds (aws-lc-rs, which object_store's HTTP
//! client pulls in already) and PEM files read into certificates and
//! private keys. Errors name the file and what it was for, never its
//! contents (a key file's bytes must not reach a log).

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The crypto provider of every TLS configuration we build, given
/// explicitly so nothing depends on a process-wide default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A PEM file that could not be used. `what` says what the file is for
/// ("server certificate file", "root certificate file", ...).
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {what} \"{}\": {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} \"{}\" is not valid PEM: {reason}", path.display())]
    Malformed { what: &'static str, path: PathBuf, reason: &'static str },
    #[error("{what} \"{}\" holds no {expected}", path.display())]
    Empty { what: &'static str, path: PathBuf, expected: &'static str },
}

impl PemError {
    fn malformed(what: &'static str, path: &Path, e: pem::Error) -> PemError {
        // The library's own text may quote a line of the file: keep it out.
        let reason = match e {
            pem::Error::MissingSectionEnd { .. } => "a section has no END line",
            pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
            pem::Error::Base64Decode(_) => "a section is not valid base64",
            pem::Error::SectionTooLarge => "a section is too large",
            _ => "it cannot be parsed",
        };
        PemError::Malformed { what, path: path.to_path_buf(), reason }
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read { what, path: path.to_path_buf(), source })
}

/// Whether a private key file's permissions are looser than PostgreSQL
/// and libpq allow: group or others may access it (for a file owned by
/// root, group read is allowed).
pub fn key_file_too_open(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    if meta.uid() == 0 {
        meta.mode() & 0o037 != 0
    } else {
        meta.mode() & 0o077 != 0
    }
}

/// Every certificate in the PEM file at `path`, in order (a chain: the
/// leaf first); at least one.
pub fn read_certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| PemError::malformed(what, path, e))?;
    if certs.is_empty() {
        return Err(PemError::Empty { what, path: path.to_path_buf(), expected: "certificate (BEGIN CERTIFICATE)" });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
pub fn read_private_key(path: &Path, what: &'static str) -> Result<PrivateKeyDer<'static>, PemError> {
    let bytes = read(path, what)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => PemError::Empty { what, path: path.to_path_buf(), expected: "private key (BEGIN PRIVATE KEY)" },
        e => PemError::malformed(what, path, e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_never_quote_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = read_certificates(&missing, "server certificate file").unwrap_err().to_string();
        assert!(err.contains("cannot read server certificate file") && err.contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        let err = read_certificates(&empty, "root certificate file").unwrap_err().to_string();
        assert!(err.contains("holds no certificate"), "{err}");

        let broken = dir.path().join("broken.key");
        std::fs::write(&broken, "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n").unwrap();
        let err = read_private_key(&broken, "server key file").unwrap_err().to_string();
        assert!(err.contains("server key file") && err.contains("broken.key") && err.contains("no END line"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "the key's bytes leaked: {err}");
    }
}

//! Test certificates, made on the fly with `rcgen` (no `openssl` program):
//! a [`TestCa`] that signs server certificates (for `localhost` and
//! `127.0.0.1` by default) and client certificates (the user's name as the
//! common name, as `cert` authentication wants), and [`TlsDir`], a
//! directory of PEM files that the `postgres` OS user owns (mode 0700, the
//! files 0600), so a server started by the harness can read its key and
//! PostgreSQL accepts the key's permissions.
//!
//! ```no_run
//! use pageserver_harness::tls::{TestCa, TlsDir};
//! let ca = TestCa::new("test CA").unwrap();
//! let dir = TlsDir::new().unwrap();
//! let files = dir.server_files(&ca, "server").unwrap();
//! // ssl = on, ssl_cert_file = files.cert, ssl_key_file = files.key; clients trust dir.write_ca(&ca)
//! ```

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

use crate::as_postgres;

/// A certificate authority of its own (ECDSA P-256).
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A new self-signed CA whose common name is `name`.
    pub fn new(name: &str) -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(TestCa { issuer })
    }

    /// The CA's certificate (what clients put in `sslrootcert`).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server_cert(&self, names: &[&str]) -> anyhow::Result<CertAndKey> {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("server"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }

    /// A client certificate whose common name is `user`.
    pub fn client_cert(&self, user: &str) -> anyhow::Result<CertAndKey> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> anyhow::Result<CertAndKey> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertAndKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Where a server certificate and its key were written.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A temporary directory of PEM files owned by the `postgres` OS user
/// (when the tests run as root), removed on drop.
pub struct TlsDir {
    dir: tempfile::TempDir,
}

impl TlsDir {
    pub fn new() -> anyhow::Result<TlsDir> {
        let dir = tempfile::Builder::new().prefix("ps-harness-tls-").tempdir().context("creating a directory for certificates")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        as_postgres::chown_to_postgres(dir.path())?;
        Ok(TlsDir { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` as `<dir>/<name>`, mode 0600, owned by `postgres`;
    /// replaces an existing file. Returns its path.
    pub fn write(&self, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            std::io::Write::write_all(&mut file, contents.as_bytes())?;
            file.sync_all()
        };
        write().with_context(|| format!("writing {}", tmp.display()))?;
        as_postgres::chown_to_postgres(&tmp)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(path)
    }

    /// Writes the CA's certificate as `<dir>/ca.crt`.
    pub fn write_ca(&self, ca: &TestCa) -> anyhow::Result<PathBuf> {
        self.write("ca.crt", &ca.cert_pem())
    }

    /// A server certificate for `localhost` and `127.0.0.1`, signed by
    /// `ca`, written as `<dir>/<name>.crt` and `<dir>/<name>.key`.
    pub fn server_files(&self, ca: &TestCa, name: &str) -> anyhow::Result<ServerFiles> {
        let pair = ca.server_cert(&["localhost", "127.0.0.1"])?;
        Ok(ServerFiles {
            cert: self.write(&format!("{name}.crt"), &pair.cert_pem)?,
            key: self.write(&format!("{name}.key"), &pair.key_pem)?,
        })
    }

    /// A client certificate for `user`, signed by `ca`, written as
    /// `<dir>/<user>.crt` and `<dir>/<user>.key`; returns (cert, key).
    pub fn client_files(&self, ca: &TestCa, user: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let pair = ca.client_cert(user)?;
        Ok((self.write(&format!("{user}.crt"), &pair.cert_pem)?, self.write(&format!("{user}.key"), &pair.key_pem)?))
    }
}

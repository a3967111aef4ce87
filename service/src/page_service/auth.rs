//! Who may use the page service: `pageserver.auth = trust` (anyone who can
//! connect) or `jwt` (the startup's password is a JWT signed with Ed25519).
//!
//! This module owns the public keys (read from a PEM file or a directory
//! of them, by the main worker's PostgreSQL thread on start and on every
//! reload, then swapped in whole: a connection keeps the key set it started
//! with), token verification (EdDSA only, `exp` required, every key tried)
//! and the claims: `{"scope": "tenant", "tenant_id": "<32 hex>"}` reads
//! that tenant only, `{"scope": "admin"}` reads every tenant. Nothing here
//! logs or returns a token or a key's bytes; errors name files and reasons.

use crate::error::ServiceError;
use crate::timeline_handle::TenantId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file larger than this is not a public key file (a directory holding
/// something else by mistake); it is skipped without being read whole.
const MAX_KEY_FILE_BYTES: u64 = 1 << 20;
/// Bytes of an Ed25519 public key.
const ED25519_PUBLIC_KEY_LEN: usize = 32;
/// Seconds of clock difference tolerated between the token's issuer and
/// this host when checking `exp`.
pub const EXPIRY_LEEWAY_SECS: u64 = 60;

/// One usable public key and the file it came from (for messages).
struct PublicKey {
    file: PathBuf,
    key: DecodingKey,
}

/// The public keys tokens are checked against.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<PublicKey>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The files the keys came from, in the order they are tried.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.keys.iter().map(|k| k.file.as_path())
    }
}

/// A key file that could not be used; the others still are.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read public key file \"{}\": {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("public key file \"{}\" is larger than {MAX_KEY_FILE_BYTES} bytes; skipped", path.display())]
    TooLarge { path: PathBuf },
    #[error("public key file \"{}\" holds no PEM block (expected \"-----BEGIN PUBLIC KEY-----\")", path.display())]
    NoPem { path: PathBuf },
    #[error("public key file \"{}\" holds a PEM block labelled \"{label}\": only PUBLIC KEY blocks are used{}", path.display(), private_key_hint(label))]
    NotAPublicKey { path: PathBuf, label: String },
    #[error("PEM block {block} of public key file \"{}\" is not an Ed25519 public key", path.display())]
    NotEd25519 { path: PathBuf, block: usize },
}

fn private_key_hint(label: &str) -> &'static str {
    if label.contains("PRIVATE") {
        " (a private key does not belong on the page server: keep it where tokens are signed)"
    } else {
        ""
    }
}

/// The keys found at a `pageserver.auth_public_keys` path, and the files
/// (or PEM blocks) skipped because they hold no usable key.
#[derive(Default)]
pub struct LoadedKeys {
    pub keys: KeySet,
    pub skipped: Vec<KeyFileError>,
}

/// The key path itself is unusable: nothing was loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyPathError {
    #[error("pageserver.auth_public_keys is not set")]
    NotSet,
    #[error("cannot read pageserver.auth_public_keys \"{}\": {source}", path.display())]
    Unreadable { path: PathBuf, source: std::io::Error },
}

/// Reads the Ed25519 public keys at `path`: a PEM file (one or more PUBLIC
/// KEY blocks), or a directory whose every regular file not starting with
/// `.` is one, taken in name order.
pub fn load_keys(path: &Path) -> Result<LoadedKeys, KeyPathError> {
    if path.as_os_str().is_empty() {
        return Err(KeyPathError::NotSet);
    }
    let unreadable = |source| KeyPathError::Unreadable { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            // Follows symlinks (a directory of links to mounted secrets).
            if !hidden && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
                files.push(entry.path());
            }
        }
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut loaded = LoadedKeys::default();
    for file in files {
        match read_key_file(&file) {
            Ok((keys, skipped)) => {
                loaded.keys.keys.extend(keys);
                loaded.skipped.extend(skipped);
            }
            Err(e) => loaded.skipped.push(e),
        }
    }
    Ok(loaded)
}

/// The keys of one file, and its PEM blocks that are not usable keys.
fn read_key_file(path: &Path) -> Result<(Vec<PublicKey>, Vec<KeyFileError>), KeyFileError> {
    let read_error = |source| KeyFileError::Read { path: path.to_path_buf(), source };
    let len = std::fs::metadata(path).map_err(read_error)?.len();
    if len > MAX_KEY_FILE_BYTES {
        return Err(KeyFileError::TooLarge { path: path.to_path_buf() });
    }
    let text = std::fs::read(path).map_err(read_error)?;
    // A block that does not parse makes the whole file unusable: pem
    // reports no position, and a half-read file is not worth guessing at.
    let blocks = pem::parse_many(&text).map_err(|_| KeyFileError::NoPem { path: path.to_path_buf() })?;
    if blocks.is_empty() {
        return Err(KeyFileError::NoPem { path: path.to_path_buf() });
    }
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        if block.tag() != "PUBLIC KEY" {
            skipped.push(KeyFileError::NotAPublicKey { path: path.to_path_buf(), label: block.tag().to_string() });
            continue;
        }
        let key = DecodingKey::from_ed_pem(pem::encode(block).as_bytes())
            .ok()
            .filter(|k| k.try_get_as_bytes().is_ok_and(|b| b.len() == ED25519_PUBLIC_KEY_LEN));
        match key {
            Some(key) => keys.push(PublicKey { file: path.to_path_buf(), key }),
            None => skipped.push(KeyFileError::NotEd25519 { path: path.to_path_buf(), block: i + 1 }),
        }
    }
    Ok((keys, skipped))
}

/// How the page service authenticates, as of the last reload.
#[derive(Clone, Default)]
pub enum AuthConfig {
    /// Anyone who can connect may read everything.
    #[default]
    Trust,
    /// A JWT signed by one of these keys, as the password.
    Jwt(Arc<KeySet>),
}

/// The current [`AuthConfig`], replaced whole by the main worker on each
/// reload; connections take a copy when they start.
#[derive(Clone, Default)]
pub struct SharedAuth(Arc<RwLock<AuthConfig>>);

impl SharedAuth {
    pub fn new(config: AuthConfig) -> SharedAuth {
        SharedAuth(Arc::new(RwLock::new(config)))
    }

    pub fn set(&self, config: AuthConfig) {
        *self.0.write() = config;
    }

    pub fn current(&self) -> AuthConfig {
        self.0.read().clone()
    }
}

/// What a connection may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every tenant (trust authentication, or a token with scope admin).
    AllTenants,
    /// This tenant only (a token with scope tenant).
    Tenant(TenantId),
}

/// Why a token, or a request made with one, was refused. The messages
/// never quote the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token was sent: the page service expects a JWT as the password")]
    Missing,
    #[error("the password is not a well-formed JWT")]
    Malformed,
    #[error("the token is signed with {0}; only EdDSA (Ed25519) tokens are accepted")]
    WrongAlgorithm(String),
    #[error("the token's signature matches none of the page service's public keys")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (its \"nbf\" is in the future)")]
    NotYetValid,
    #[error("the token has no expiry time (claim \"exp\", a number of seconds since 1970)")]
    NoExpiry,
    #[error("the token's claims are not usable: {0}")]
    BadClaims(String),
    #[error(
        "JWT authentication is on (pageserver.auth = jwt) but no public key is loaded (pageserver.auth_public_keys); see the server log"
    )]
    NoKeys,
    #[error("the token grants access to tenant {granted} only, not to tenant {requested}")]
    OtherTenant { granted: TenantId, requested: TenantId },
}

impl AuthError {
    /// A short name of the reason, for the server log.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Missing => "no token",
            AuthError::Malformed => "malformed token",
            AuthError::WrongAlgorithm(_) => "wrong algorithm",
            AuthError::BadSignature => "bad signature",
            AuthError::Expired => "expired token",
            AuthError::NotYetValid => "token not valid yet",
            AuthError::NoExpiry => "token without exp",
            AuthError::BadClaims(_) => "bad claims",
            AuthError::NoKeys => "no public keys loaded",
            AuthError::OtherTenant { .. } => "token for another tenant",
        }
    }
}

impl From<AuthError> for ServiceError {
    fn from(e: AuthError) -> ServiceError {
        let message = e.to_string();
        match e {
            AuthError::NoKeys => ServiceError::AuthenticationUnavailable(message),
            AuthError::OtherTenant { .. } => ServiceError::PermissionDenied(message),
            _ => ServiceError::AuthenticationFailed(message),
        }
    }
}

/// The claims this page service reads; anything else in the token is
/// ignored (`exp` and `nbf` are checked by the JWT library).
#[derive(Deserialize)]
struct Claims {
    scope: Option<String>,
    tenant_id: Option<String>,
}

/// Checks `token` against every key of `keys` and returns what it grants.
pub fn verify(keys: &KeySet, token: &str) -> Result<Access, AuthError> {
    if keys.is_empty() {
        return Err(AuthError::NoKeys);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    // The header first: the library would report its errors as any others.
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
    if header.alg != Algorithm::EdDSA {
        return Err(AuthError::WrongAlgorithm(format!("{:?}", header.alg)));
    }
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = EXPIRY_LEEWAY_SECS;
    validation.validate_nbf = true;
    // No audience is configured: a token that names one is still ours.
    validation.validate_aud = false;
    for key in &keys.keys {
        match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
            Ok(data) => return access(data.claims),
            // Another key may have signed it.
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
            // About the token, not the key: a malformed signature, or the
            // claims (checked once the signature is good).
            Err(e) => return Err(token_error(e.kind())),
        }
    }
    Err(AuthError::BadSignature)
}

/// A library error (after the header was read) as one of ours.
fn token_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => AuthError::NoExpiry,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::BadClaims(format!("claim \"{claim}\" is missing")),
        ErrorKind::InvalidClaimFormat(claim) => AuthError::BadClaims(format!("claim \"{claim}\" has the wrong type")),
        // A signed payload that is not a JSON object of the claims.
        ErrorKind::Json(_) => AuthError::BadClaims("the payload is not a JSON object of claims".into()),
        _ => AuthError::Malformed,
    }
}

/// What valid claims grant.
fn access(claims: Claims) -> Result<Access, AuthError> {
    match (claims.scope.as_deref(), claims.tenant_id) {
        (Some("admin"), _) => Ok(Access::AllTenants),
        (Some("tenant"), Some(id)) => {
            id.parse().map(Access::Tenant).map_err(|_| AuthError::BadClaims("claim \"tenant_id\" is not 32 hexadecimal digits".into()))
        }
        (Some("tenant"), None) => Err(AuthError::BadClaims("scope \"tenant\" without a \"tenant_id\" claim".into())),
        (Some(other), _) => {
            let shown: String = other.chars().take(32).collect();
            Err(AuthError::BadClaims(format!("scope \"{shown}\" is not one the page service grants (tenant or admin)")))
        }
        (None, _) => Err(AuthError::BadClaims("no \"scope\" claim (tenant or admin)".into())),
    }
}

/// An authenticated connection: who it is and what it may read.
#[derive(Debug, Clone)]
pub struct Session {
    pub peer: SocketAddr,
    pub access: Access,
}

impl Session {
    /// May this connection read `tenant`? A refusal is logged with the peer.
    pub fn check_tenant(&self, tenant: TenantId) -> Result<(), AuthError> {
        match self.access {
            Access::AllTenants => Ok(()),
            Access::Tenant(granted) if granted == tenant => Ok(()),
            Access::Tenant(granted) => {
                let e = AuthError::OtherTenant { granted, requested: tenant };
                tracing::info!("page service: {} refused access to tenant {tenant}: {}", self.peer, e.kind());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pageserver_harness::jwt::{admin_claims, tenant_claims, unix_time, JwtKey};
    use serde_json::json;

    const TENANT_A: &str = "0123456789abcdef0123456789abcdef";
    const TENANT_B: &str = "fedcba9876543210fedcba9876543210";

    fn key_dir(keys: &[&JwtKey]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (i, key) in keys.iter().enumerate() {
            std::fs::write(dir.path().join(format!("key{i}.pem")), key.public_pem()).unwrap();
        }
        dir
    }

    fn loaded(dir: &Path) -> KeySet {
        let loaded = load_keys(dir).unwrap();
        assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
        loaded.keys
    }

    #[test]
    fn a_tenant_token_grants_its_tenant_and_admin_grants_all() {
        let key = JwtKey::generate();
        let dir = key_dir(&[&key]);
        let keys = loaded(dir.path());
        let a: TenantId = TENANT_A.parse().unwrap();
        let b: TenantId = TENANT_B.parse().unwrap();
        assert_eq!(verify(&keys, &key.sign(&tenant_claims(TENANT_A, 600))), Ok(Access::Tenant(a)));
        assert_eq!(verify(&keys, &key.sign(&admin_claims(600))), Ok(Access::AllTenants));

        let peer: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let session = Session { peer, access: Access::Tenant(a) };
        assert_eq!(session.check_tenant(a), Ok(()));
        let refused = session.check_tenant(b).unwrap_err();
        assert_eq!(refused, AuthError::OtherTenant { granted: a, requested: b });
        assert_eq!(ServiceError::from(refused).sqlstate(), crate::error::sqlstate::INSUFFICIENT_PRIVILEGE);
        assert_eq!(Session { peer, access: Access::AllTenants }.check_tenant(b), Ok(()));
    }

    #[test]
    fn every_key_is_tried() {
        let (k1, k2, k3) = (JwtKey::generate(), JwtKey::generate(), JwtKey::generate());
        let dir = key_dir(&[&k1, &k2]);
        let keys = loaded(dir.path());
        assert_eq!(keys.len(), 2);
        for key in [&k1, &k2] {
            assert!(verify(&keys, &key.sign(&admin_claims(600))).is_ok());
        }
        assert_eq!(verify(&keys, &k3.sign(&admin_claims(600))), Err(AuthError::BadSignature));
    }

    #[test]
    fn every_refusal_has_its_reason_and_the_sqlstate_of_a_wrong_password() {
        let key = JwtKey::generate();
        let other = JwtKey::generate();
        let dir = key_dir(&[&key]);
        let keys = loaded(dir.path());
        let valid = key.sign(&tenant_claims(TENANT_A, 600));
        let mut parts: Vec<&str> = valid.split('.').collect();
        let tampered_claims = base64_url(&json!({"scope": "admin", "exp": unix_time(600)}).to_string());
        parts[1] = &tampered_claims;
        let tampered = parts.join(".");
        let hs256 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &admin_claims(600),
            &jsonwebtoken::EncodingKey::from_secret(key.public_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        let unsigned = format!("{}.{}.", base64_url(r#"{"alg":"none","typ":"JWT"}"#), base64_url(&admin_claims(600).to_string()));
        let cases: Vec<(&str, String, AuthError)> = vec![
            ("empty", String::new(), AuthError::Missing),
            ("garbage", "not a token at all".into(), AuthError::Malformed),
            ("three garbage parts", "a.b.c".into(), AuthError::Malformed),
            ("signed by another key", other.sign(&tenant_claims(TENANT_A, 600)), AuthError::BadSignature),
            ("claims changed after signing", tampered, AuthError::BadSignature),
            ("expired", key.sign(&tenant_claims(TENANT_A, -3600)), AuthError::Expired),
            ("no exp", key.sign(&json!({"scope": "admin"})), AuthError::NoExpiry),
            ("exp not a number", key.sign(&json!({"scope": "admin", "exp": "tomorrow"})), AuthError::NoExpiry),
            (
                "not before in an hour",
                key.sign(&json!({"scope": "admin", "exp": unix_time(7200), "nbf": unix_time(3600)})),
                AuthError::NotYetValid,
            ),
            ("HS256 with the public key as secret", hs256, AuthError::WrongAlgorithm("HS256".into())),
            ("alg none", unsigned, AuthError::Malformed),
            (
                "tenant scope without tenant_id",
                key.sign(&json!({"scope": "tenant", "exp": unix_time(600)})),
                AuthError::BadClaims("scope \"tenant\" without a \"tenant_id\" claim".into()),
            ),
            (
                "unknown scope",
                key.sign(&json!({"scope": "pageserverapi", "exp": unix_time(600)})),
                AuthError::BadClaims("scope \"pageserverapi\" is not one the page service grants (tenant or admin)".into()),
            ),
            ("no scope", key.sign(&json!({"exp": unix_time(600)})), AuthError::BadClaims("no \"scope\" claim (tenant or admin)".into())),
            (
                "bad tenant id",
                key.sign(&tenant_claims("xyz", 600)),
                AuthError::BadClaims("claim \"tenant_id\" is not 32 hexadecimal digits".into()),
            ),
            (
                "scope of the wrong type",
                key.sign(&json!({"scope": 7, "exp": unix_time(600)})),
                AuthError::BadClaims("the payload is not a JSON object of claims".into()),
            ),
        ];
        for (what, token, expected) in cases {
            let got = verify(&keys, &token).unwrap_err();
            assert_eq!(got, expected, "{what}");
            let service = ServiceError::from(got.clone());
            assert_eq!(service.sqlstate(), crate::error::sqlstate::INVALID_PASSWORD, "{what}");
            if token.len() > 8 {
                assert!(!service.to_string().contains(&token), "{what}: the message quotes the token");
            }
        }
        // A token within the leeway of its expiry is still good.
        assert!(verify(&keys, &key.sign(&tenant_claims(TENANT_A, -10))).is_ok());
    }

    #[test]
    fn without_keys_nobody_gets_in_and_the_sqlstate_says_so() {
        let key = JwtKey::generate();
        let err = verify(&KeySet::default(), &key.sign(&admin_claims(600))).unwrap_err();
        assert_eq!(err, AuthError::NoKeys);
        assert_eq!(ServiceError::from(err).sqlstate(), crate::error::sqlstate::INVALID_AUTHORIZATION_SPECIFICATION);
    }

    #[test]
    fn bad_key_files_are_skipped_by_name_and_the_others_kept() {
        let (good, second, private) = (JwtKey::generate(), JwtKey::generate(), JwtKey::generate());
        let dir = key_dir(&[&good]);
        let d = dir.path();
        std::fs::write(d.join("garbage.pem"), "hello, not a key").unwrap();
        std::fs::write(d.join("private.pem"), private.private_pem()).unwrap();
        let bogus = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        std::fs::write(d.join("two.pem"), format!("{bogus}{}", second.public_pem())).unwrap();
        std::fs::write(d.join(".hidden.pem"), "ignored").unwrap();
        std::fs::create_dir(d.join("subdir")).unwrap();
        let loaded = load_keys(d).unwrap();
        let files: Vec<String> = loaded.keys.files().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(files, ["key0.pem", "two.pem"]);
        let skipped: Vec<String> = loaded.skipped.iter().map(|e| e.to_string()).collect();
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].contains("garbage.pem") && skipped[0].contains("holds no PEM block"), "{}", skipped[0]);
        assert!(skipped[1].contains("private.pem") && skipped[1].contains("a private key does not belong"), "{}", skipped[1]);
        assert!(skipped[2].contains("PEM block 1 of public key file") && skipped[2].contains("two.pem"), "{}", skipped[2]);
        let private_body = private.private_pem().lines().nth(1).unwrap().to_string();
        assert!(skipped.iter().all(|s| !s.contains(&private_body) && !s.contains("hello")), "{skipped:?}");
        for key in [&good, &second] {
            assert!(verify(&loaded.keys, &key.sign(&admin_claims(600))).is_ok());
        }

        // One file works as well as a directory.
        assert_eq!(loaded_from_file(&d.join("key0.pem")), 1);
        assert!(matches!(load_keys(Path::new("")), Err(KeyPathError::NotSet)));
        let missing = load_keys(&d.join("nope")).err().unwrap().to_string();
        assert!(missing.starts_with("cannot read pageserver.auth_public_keys") && missing.contains("nope"), "{missing}");
    }

    fn loaded_from_file(path: &Path) -> usize {
        load_keys(path).unwrap().keys.len()
    }

    #[test]
    fn connections_see_the_key_set_of_the_last_reload() {
        let shared = SharedAuth::default();
        assert!(matches!(shared.current(), AuthConfig::Trust));
        let before = shared.current();
        shared.set(AuthConfig::Jwt(Arc::new(KeySet::default())));
        assert!(matches!(before, AuthConfig::Trust), "a copy taken earlier is unchanged");
        assert!(matches!(shared.current(), AuthConfig::Jwt(k) if k.is_empty()));
    }

    fn base64_url(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }
}

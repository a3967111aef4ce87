//! Ed25519 key pairs and the JWTs they sign, for tests of the page
//! service's JWT authentication: a fresh key pair per call (no `openssl`
//! command needed), its public key as the PEM a user would put in
//! `pageserver.auth_public_keys`, and signed tokens with any claims.
//!
//! ```no_run
//! use pageserver_harness::jwt::{JwtKey, tenant_claims};
//! let key = JwtKey::generate();
//! std::fs::write("/keys/a.pem", key.public_pem()).unwrap();
//! let token = key.sign(&tenant_claims("0123456789abcdef0123456789abcdef", 3600));
//! ```

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// An Ed25519 key pair.
pub struct JwtKey {
    /// The private key as PKCS#8 DER (what `jsonwebtoken` signs with).
    pkcs8: Vec<u8>,
    /// The public key as SubjectPublicKeyInfo DER.
    public_der: Vec<u8>,
}

impl JwtKey {
    /// A new random key pair.
    pub fn generate() -> JwtKey {
        let pair = Ed25519KeyPair::generate().expect("generating an Ed25519 key pair");
        let pkcs8 = pair.to_pkcs8().expect("encoding the private key").as_ref().to_vec();
        let public_der = pair.public_key().as_der().expect("encoding the public key").as_ref().to_vec();
        JwtKey { pkcs8, public_der }
    }

    /// The public key as PEM (`-----BEGIN PUBLIC KEY-----`), the form
    /// `openssl pkey -pubout` writes.
    pub fn public_pem(&self) -> String {
        pem("PUBLIC KEY", &self.public_der)
    }

    /// The private key as PEM (`-----BEGIN PRIVATE KEY-----`), to check that
    /// a private key misplaced among the public ones is refused.
    pub fn private_pem(&self) -> String {
        pem("PRIVATE KEY", &self.pkcs8)
    }

    /// A JWT with `claims`, signed with EdDSA.
    pub fn sign(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &EncodingKey::from_ed_der(&self.pkcs8)).expect("signing a JWT")
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Seconds since the Unix epoch, `offset` seconds from now.
pub fn unix_time(offset: i64) -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64;
    now + offset
}

/// Claims of a token for one tenant, expiring `expires_in` seconds from now
/// (negative: expired that long ago).
pub fn tenant_claims(tenant: &str, expires_in: i64) -> Value {
    json!({ "scope": "tenant", "tenant_id": tenant, "exp": unix_time(expires_in) })
}

/// Claims of an admin token expiring `expires_in` seconds from now.
pub fn admin_claims(expires_in: i64) -> Value {
    json!({ "scope": "admin", "exp": unix_time(expires_in) })
}

//! Acceptance 5 of issue 15, against the real listener: a host with
//! `pageserver.auth = jwt` and a directory of Ed25519 public keys, tenants
//! A and B each with a timeline streaming from one primary.
//!
//! - A valid tenant-A token reads a page of A (pagestream) and a
//!   `fullbackup` of A (psql with the token in `PGPASSWORD`, as a compute
//!   passes it); the same token on B gets 42501 and no data.
//! - A token signed by another key, an expired one, garbage, one with a
//!   wrong scope, an empty password and none at all are refused at
//!   connection time with FATAL 28P01 and no data.
//! - An admin token reads both tenants.
//! - A key written into the directory works after `pg_reload_conf()` and
//!   not before; a private key put there is skipped with a WARNING naming
//!   the file; a key directory with no key refuses everyone (28000) until
//!   the setting is reset.
//! - The key path is not in `pg_settings` for a non-superuser; no token and
//!   no key material ever reaches the server log.

use anyhow::{bail, ensure, Context, Result};
use pageserver_harness::jwt::{admin_claims, tenant_claims, unix_time, JwtKey};
use pageserver_harness::pg_bin;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use storage::key::RelTag;
use storage::lsn::Lsn;
use storage::pagestream::{ProtocolVersion, Request, RequestHeader, Response};
use tools::pagestream_client::{BlockingClient, ClientError, ConnectOptions, ServerError};

mod common;
use common::e2e;

/// Text in the rows of the test table: the page read must hold it.
const MARKER: &str = "page-service-auth-marker";

struct Timeline {
    tenant: String,
    timeline: String,
}

/// Opens a pagestream on `tl` with `password` (None: the client has none).
fn pagestream(addr: SocketAddr, tl: &Timeline, password: Option<&str>) -> Result<BlockingClient, ClientError> {
    let options = ConnectOptions { password: password.map(str::to_string), connect_timeout: Duration::from_secs(20), ..Default::default() };
    BlockingClient::connect_with(&addr.to_string(), ProtocolVersion::V3, &tl.tenant, &tl.timeline, &options)
}

/// Block 0 of `rel` at `lsn`, read through a pagestream opened with `password`.
fn read_page(addr: SocketAddr, tl: &Timeline, password: &str, rel: RelTag, lsn: Lsn) -> Result<Vec<u8>> {
    let mut client = pagestream(addr, tl, Some(password))?;
    let hdr = RequestHeader { reqid: 1, request_lsn: lsn, not_modified_since: lsn };
    match client.request(Request::GetPage { hdr, rel, blkno: 0 })? {
        Response::GetPage { page, .. } => Ok(page.to_vec()),
        other => bail!("GetPage answered with {other:?}"),
    }
}

/// The server's error when opening a pagestream with `password` fails.
fn refusal(addr: SocketAddr, tl: &Timeline, password: Option<&str>) -> Result<ServerError> {
    match pagestream(addr, tl, password) {
        Ok(_) => bail!("the page service accepted the connection"),
        Err(ClientError::Server(_, e)) => Ok(*e),
        Err(e) => bail!("expected an error from the server, got {e}"),
    }
}

/// `fullbackup` of `tl` through psql, the token (if any) in PGPASSWORD.
fn fullbackup(addr: SocketAddr, tl: &Timeline, password: Option<&str>) -> Result<Output> {
    let conninfo = format!("host={} port={} user=compute dbname=x connect_timeout=20", addr.ip(), addr.port());
    let mut cmd = Command::new(pg_bin("psql"));
    cmd.args(["-X", "-w", "-v", "VERBOSITY=verbose", "-d", &conninfo, "-c", &format!("fullbackup {} {}", tl.tenant, tl.timeline)]);
    cmd.env_remove("PGPASSWORD").env("PGPASSFILE", "/nonexistent");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    cmd.output().context("running psql")
}

fn is_tar_of_a_data_directory(bytes: &[u8]) -> bool {
    bytes.len() > 100_000 && bytes.windows(10).any(|w| w == b"PG_VERSION")
}

/// Sends a startup packet and a PasswordMessage with `password`; the
/// backend messages (tag, body) until the server closes.
fn raw_password(addr: SocketAddr, password: &[u8]) -> Result<Vec<(u8, Vec<u8>)>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let body = b"user\0raw\0\0";
    let mut m = Vec::new();
    m.extend(((body.len() + 8) as u32).to_be_bytes());
    m.extend((3u32 << 16).to_be_bytes());
    m.extend(body);
    s.write_all(&m)?;
    let mut ask = [0u8; 9];
    s.read_exact(&mut ask)?;
    ensure!(ask == [b'R', 0, 0, 0, 8, 0, 0, 0, 3], "AuthenticationCleartextPassword expected, got {ask:?}");
    let mut p = vec![b'p'];
    p.extend(((password.len() + 5) as u32).to_be_bytes());
    p.extend(password);
    p.push(0);
    s.write_all(&p)?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let mut messages = Vec::new();
    let mut rest = &all[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        messages.push((rest[0], rest[5..1 + len].to_vec()));
        rest = &rest[1 + len..];
    }
    Ok(messages)
}

fn write_key(dir: &Path, name: &str, pem: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, pem)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

#[test]
fn jwt_tokens_grant_their_tenant_and_every_bad_token_is_refused() -> Result<()> {
    let keys = tempfile::tempdir()?;
    // The server runs as postgres; the tests may run as root.
    std::fs::set_permissions(keys.path(), std::fs::Permissions::from_mode(0o755))?;
    let key = JwtKey::generate();
    write_key(keys.path(), "issuer.pem", &key.public_pem())?;
    let key_dir = keys.path().to_str().context("key dir path")?.to_string();

    let primary = e2e::start_primary(false, &[])?;
    let host = e2e::start_host(false, &[("pageserver.auth", "jwt"), ("pageserver.auth_public_keys", &key_dir)])?;
    let addr = host.listener_addr().context("listener")?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    let a = Timeline { tenant, timeline };
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    let b = Timeline { tenant, timeline };

    primary.sql(&format!("CREATE TABLE t (v text); INSERT INTO t SELECT '{MARKER}' || i FROM generate_series(1, 20) i"))?;
    let filenode: u32 = primary.sql_one("SELECT pg_relation_filenode('t')")?.context("filenode")?.parse()?;
    let db: u32 = primary.sql_one("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.context("db oid")?.parse()?;
    let rel = RelTag::new(1663, db, filenode, 0);
    let lsn = e2e::lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    e2e::wait_ingested(&host, &a.timeline, lsn)?;
    e2e::wait_ingested(&host, &b.timeline, lsn)?;
    let has_marker = |page: &[u8]| page.windows(MARKER.len()).any(|w| w == MARKER.as_bytes());

    let mut tokens = Vec::new();
    let mut token = |claims: serde_json::Value, by: &JwtKey| {
        let t = by.sign(&claims);
        tokens.push(t.clone());
        t
    };

    // A tenant-A token reads A, by pagestream and by fullbackup.
    let token_a = token(tenant_claims(&a.tenant, 600), &key);
    ensure!(has_marker(&read_page(addr, &a, &token_a, rel, lsn)?), "the page of A read with A's token lacks the rows");
    let out = fullbackup(addr, &a, Some(&token_a))?;
    ensure!(out.status.success() && is_tar_of_a_data_directory(&out.stdout), "fullbackup of A with A's token: {out:?}");

    // ... and nothing of B.
    let e = match pagestream(addr, &b, Some(&token_a)) {
        Err(ClientError::Server(_, e)) => *e,
        other => bail!("A's token opened a pagestream on B: {other:?}"),
    };
    ensure!(e.severity == "ERROR" && e.code == "42501", "A's token on B: {e}");
    ensure!(e.message.contains(&format!("grants access to tenant {} only, not to tenant {}", a.tenant, b.tenant)), "{e}");
    let out = fullbackup(addr, &b, Some(&token_a))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && out.stdout.is_empty(), "fullbackup of B with A's token gave data: {out:?}");
    ensure!(stderr.contains("ERROR:  42501: the token grants access to tenant"), "{stderr}");

    // Refused at connection time, with the SQLSTATE of a wrong password.
    let other_key = JwtKey::generate();
    let cases = [
        ("signed by another key", token(tenant_claims(&a.tenant, 600), &other_key), "matches none of the page service's public keys"),
        ("expired", token(tenant_claims(&a.tenant, -3600), &key), "the token has expired"),
        ("garbage", "eyJhbGciOiJFZERTQSJ9.garbage.garbage".to_string(), "not a well-formed JWT"),
        ("scope tenant without tenant_id", token(json!({"scope": "tenant", "exp": unix_time(600)}), &key), "without a \"tenant_id\""),
        ("unknown scope", token(json!({"scope": "safekeeperdata", "exp": unix_time(600)}), &key), "not one the page service grants"),
    ];
    for (what, bad, reason) in &cases {
        let e = refusal(addr, &a, Some(bad)).with_context(|| what.to_string())?;
        ensure!(e.severity == "FATAL" && e.code == "28P01", "{what}: {e}");
        ensure!(e.message.starts_with("JWT authentication failed for user \"pagestream_client\": "), "{what}: {e}");
        ensure!(e.message.contains(reason) && !e.message.contains(bad.as_str()), "{what}: {e}");
        let out = fullbackup(addr, &a, Some(bad))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && out.stdout.is_empty(), "{what}: psql got data: {out:?}");
        ensure!(stderr.contains("FATAL:  JWT authentication failed for user \"compute\"") && stderr.contains(reason), "{what}: {stderr}");
    }
    // No password: the server asks for one; libpq gives up without sending any.
    ensure!(matches!(pagestream(addr, &a, None), Err(ClientError::PasswordRequired)), "no password");
    let out = fullbackup(addr, &a, None)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && out.stdout.is_empty() && stderr.contains("no password supplied"), "no password: {stderr}");
    // An empty password, which libpq never sends, from a raw client.
    let messages = raw_password(addr, b"")?;
    let text = messages.first().map(|(_, body)| String::from_utf8_lossy(body).into_owned()).unwrap_or_default();
    ensure!(messages.len() == 1 && messages[0].0 == b'E' && text.contains("C28P01\0"), "empty password: {messages:?}");
    ensure!(text.contains("no token was sent"), "{text}");

    // An admin token reads both tenants.
    let admin = token(admin_claims(600), &key);
    for tl in [&a, &b] {
        ensure!(has_marker(&read_page(addr, tl, &admin, rel, lsn)?), "admin read of {}", tl.tenant);
    }
    let out = fullbackup(addr, &b, Some(&admin))?;
    ensure!(out.status.success() && is_tar_of_a_data_directory(&out.stdout), "fullbackup of B with the admin token: {out:?}");

    // Key rotation: a new key works after a reload, not before. A private
    // key dropped in the directory by mistake is skipped, by name.
    let rotated = JwtKey::generate();
    let rotated_token = token(tenant_claims(&a.tenant, 600), &rotated);
    write_key(keys.path(), "rotated.pem", &rotated.public_pem())?;
    write_key(keys.path(), "misplaced-private.pem", &rotated.private_pem())?;
    let e = refusal(addr, &a, Some(&rotated_token))?;
    ensure!(e.code == "28P01" && e.message.contains("matches none"), "the new key works before the reload: {e}");
    host.sql("SELECT pg_reload_conf()")?;
    host.wait_for("the new key after the reload", Duration::from_secs(30), || read_page(addr, &a, &rotated_token, rel, lsn).ok())?;
    ensure!(has_marker(&read_page(addr, &a, &token_a, rel, lsn)?), "the first key no longer works after the reload");
    let log = host.log();
    ensure!(log.contains("JWT authentication with 2 public key(s)"), "{}", host.log_tail(20));
    ensure!(
        log.lines().any(|l| l.contains("WARNING") && l.contains("misplaced-private.pem") && l.contains("a private key does not belong")),
        "no warning about the private key file:\n{}",
        host.log_tail(20)
    );

    // No usable key: everyone is refused, loudly, until the setting is fixed.
    let empty = tempfile::tempdir()?;
    std::fs::set_permissions(empty.path(), std::fs::Permissions::from_mode(0o755))?;
    host.sql(&format!("ALTER SYSTEM SET pageserver.auth_public_keys = '{}'", empty.path().display()))?;
    host.sql("SELECT pg_reload_conf()")?;
    let e = host.wait_for("refusals without keys", Duration::from_secs(30), || {
        refusal(addr, &a, Some(&token_a)).ok().filter(|e| e.code == "28000")
    })?;
    ensure!(e.severity == "FATAL" && e.message.contains("no public key is loaded"), "{e}");
    ensure!(host.log().contains("no Ed25519 public key was loaded"), "no warning for jwt without keys:\n{}", host.log_tail(20));
    host.sql("ALTER SYSTEM RESET pageserver.auth_public_keys")?;
    host.sql("SELECT pg_reload_conf()")?;
    host.wait_for("the keys back", Duration::from_secs(30), || read_page(addr, &a, &token_a, rel, lsn).ok())?;

    // The key path is for superusers only; the method is public.
    host.sql("CREATE ROLE alice LOGIN")?;
    let mut alice = postgres::Client::connect(&format!("host=127.0.0.1 port={} user=alice dbname=postgres", host.port()), postgres::NoTls)?;
    let seen = |c: &mut postgres::Client, name: &str| -> Result<Option<String>> {
        let rows = c.query("SELECT setting FROM pg_settings WHERE name = $1", &[&name])?;
        Ok(rows.first().map(|r| r.get(0)))
    };
    ensure!(seen(&mut alice, "pageserver.auth_public_keys")?.is_none(), "alice sees the key path");
    ensure!(alice.simple_query("SHOW pageserver.auth_public_keys").is_err(), "alice can SHOW the key path");
    ensure!(seen(&mut alice, "pageserver.auth")?.as_deref() == Some("jwt"));
    let mut superuser = host.client("postgres")?;
    ensure!(seen(&mut superuser, "pageserver.auth_public_keys")?.as_deref() == Some(key_dir.as_str()));

    // Refusals are logged with their reason; tokens and keys never are.
    let log = host.log();
    ensure!(log.lines().any(|l| l.contains("refused: expired token") && l.contains("127.0.0.1:")), "{}", host.log_tail(30));
    ensure!(log.contains("refused access to tenant"), "no log line for the tenant refusal");
    for t in &tokens {
        ensure!(!log.contains(t.as_str()), "a token is in the server log");
        let signature = t.rsplit('.').next().unwrap_or_default();
        ensure!(signature.len() < 16 || !log.contains(signature), "a token's signature is in the server log");
    }
    for pem in [key.public_pem(), rotated.public_pem(), rotated.private_pem()] {
        let body = pem.lines().nth(1).unwrap_or_default();
        ensure!(!log.contains(body), "key material is in the server log");
    }
    // alice's SHOW above is the one ERROR expected.
    e2e::ensure_log_clean_but(&host, &["pg_read_all_settings"])
}

//! TLS on the page service, driven by `psql` (libpq) against a host whose
//! `pageserver.ssl_cert_file`/`ssl_key_file` hold a certificate for
//! 127.0.0.1 from a test CA:
//!
//! - the host's WAL receiver streams the timeline from a primary that lets
//!   its role in over `hostssl` only (`sslmode=verify-full`);
//! - `sslmode=verify-full` with the CA as `sslrootcert` connects and
//!   `fullbackup` of that timeline arrives over TLS;
//! - a root certificate of another CA fails verification;
//! - with `pageserver.ssl_required = on` (a reload), `sslmode=disable` is
//!   refused with the FATAL and `require` and the default `prefer` get in;
//! - a reload reads new certificate files (a certificate from another CA,
//!   written over the old files), and a reload with a broken key file keeps
//!   the certificate in use, with a WARNING naming the file;
//! - JWT authentication (`pageserver.auth = jwt`, a reload) runs inside the
//!   TLS session: refused without a token, a `fullbackup` with one.

use anyhow::{bail, Context, Result};
use pageserver_harness::jwt::{tenant_claims, JwtKey};
use pageserver_harness::tls::{TestCa, TlsDir};
use pageserver_harness::{pg_bin, ClusterConfig, PgCluster};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

fn psql(addr: SocketAddr, tls: &str, command: &str) -> Result<Output> {
    let conninfo = format!("host={} port={} user=compute dbname=tenant connect_timeout=10 {tls}", addr.ip(), addr.port());
    Command::new(pg_bin("psql")).args(["-X", "-w", "-d", &conninfo, "-c", command]).output().context("running psql")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn verify_full(root: &Path) -> String {
    format!("sslmode=verify-full sslrootcert={}", root.display())
}

/// psql reached the page service and ran `hello` there: the session got
/// as far as a command.
fn assert_session(addr: SocketAddr, tls: &str) -> Result<()> {
    let out = psql(addr, tls, "hello")?;
    let err = stderr(&out);
    if !err.contains("unknown page service command \"hello\"") {
        bail!("no session with {tls:?}: {err}");
    }
    Ok(())
}

/// Retries `check` (which sees the effect of a reload) for up to 30 s.
fn eventually(what: &str, mut check: impl FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.context(format!("waiting for {what}"))),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn reload(host: &PgCluster) -> Result<()> {
    host.sql("SELECT pg_reload_conf()")?;
    Ok(())
}

#[test]
fn psql_verifies_the_page_service_certificate_and_ssl_required_refuses_plain_connections() -> Result<()> {
    let dir = TlsDir::new()?;
    let ca = TestCa::new("page service test CA")?;
    let root = dir.write_ca(&ca)?;
    let files = dir.server_files(&ca, "server")?;
    let other_ca = TestCa::new("another CA")?;
    let other_root = dir.write("other-ca.crt", &other_ca.cert_pem())?;

    // The primary lets `repl` in over TLS only.
    let primary_files = dir.server_files(&ca, "primary")?;
    let primary = PgCluster::start(
        ClusterConfig::primary(&[])
            .setting("ssl", "on")
            .setting("ssl_cert_file", &primary_files.cert.display().to_string())
            .setting("ssl_key_file", &primary_files.key.display().to_string())
            .hba_line("hostnossl replication repl 0.0.0.0/0 reject")
            .hba_line("hostssl replication repl 127.0.0.1/32 trust"),
    )?;
    primary.sql("CREATE ROLE repl LOGIN REPLICATION; CREATE TABLE t AS SELECT i FROM generate_series(1, 10000) i")?;
    let cert = files.cert.display().to_string();
    let key = files.key.display().to_string();
    let host = common::e2e::start_host(false, &[("pageserver.ssl_cert_file", &cert), ("pageserver.ssl_key_file", &key)])?;
    let addr = host.listener_addr().context("host has pageserver.listen_addr")?;
    host.wait_for("the page service to listen", Duration::from_secs(60), || TcpStream::connect(addr).ok())?;
    let tenant = host.sql_one("SELECT pageserver.create_tenant()")?.context("tenant")?;
    let plain = format!("host=127.0.0.1 port={} user=repl sslmode=disable", primary.port());
    let err = host.sql(&format!("SELECT pageserver.create_timeline('{tenant}', '{plain}')")).unwrap_err();
    assert!(format!("{err:#}").contains("no encryption"), "{err:#}");
    let conninfo = format!("host=127.0.0.1 port={} user=repl {}", primary.port(), verify_full(&root));
    let timeline = host.sql_one(&format!("SELECT pageserver.create_timeline('{tenant}', '{conninfo}')"))?.context("timeline")?;
    primary.sql("INSERT INTO t SELECT i FROM generate_series(1, 10000) i")?;
    let lsn = common::e2e::lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    common::e2e::wait_ingested(&host, &timeline, lsn)?;
    let walsender_ssl = primary.sql_one("SELECT bool_and(s.ssl)::text FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)")?;
    assert_eq!(walsender_ssl.as_deref(), Some("true"), "the host's walsender connection is not encrypted");

    // Verified TLS: a fullbackup arrives whole.
    let out = psql(addr, &verify_full(&root), &format!("fullbackup {tenant} {timeline}"))?;
    assert!(out.status.success(), "fullbackup over TLS failed: {}", stderr(&out));
    let tar = &out.stdout;
    assert!(tar.len() > 1 << 20, "fullbackup is only {} bytes", tar.len());
    assert!(tar.windows(10).any(|w| w == b"PG_VERSION"), "no PG_VERSION in the tar");
    // Plain connections still work while TLS is not required.
    assert_session(addr, "sslmode=disable")?;

    // Another CA's root certificate: libpq refuses the server's certificate.
    let out = psql(addr, &verify_full(&other_root), "hello")?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("certificate verify failed"), "{}", stderr(&out));

    // TLS required: plain sessions are refused with the FATAL, TLS ones go on.
    host.sql("ALTER SYSTEM SET pageserver.ssl_required = on")?;
    reload(&host)?;
    eventually("plain connections to be refused", || {
        let out = psql(addr, "sslmode=disable", "hello")?;
        let err = stderr(&out);
        if !err.contains("FATAL") || !err.contains("connection without TLS refused: pageserver.ssl_required is on") {
            bail!("not refused: {err}");
        }
        Ok(())
    })?;
    assert_session(addr, "sslmode=require")?;
    assert_session(addr, "")?; // psql's default, prefer
    assert_session(addr, &verify_full(&root))?;

    // A reload reads the files again: a certificate from another CA written
    // over them is served to new connections.
    let new_pair = other_ca.server_cert(&["localhost", "127.0.0.1"])?;
    dir.write("server.crt", &new_pair.cert_pem)?;
    dir.write("server.key", &new_pair.key_pem)?;
    reload(&host)?;
    eventually("the new certificate", || assert_session(addr, &verify_full(&other_root)))?;
    let out = psql(addr, &verify_full(&root), "hello")?;
    assert!(stderr(&out).contains("certificate verify failed"), "the old certificate is still served: {}", stderr(&out));

    // A broken key file on reload: a WARNING, and the certificate in use stays.
    dir.write("server.key", "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n")?;
    reload(&host)?;
    eventually("the warning about the key file", || {
        let log = host.log();
        if !log.contains("page service TLS configuration not reloaded") || !log.contains("server.key") {
            bail!("no warning yet");
        }
        Ok(())
    })?;
    assert!(!host.log().contains("not base64"), "the key file's contents reached the log");
    assert_session(addr, &verify_full(&other_root))?;

    // JWT authentication inside TLS: the token travels encrypted; without
    // it the session is refused, with it the fullbackup arrives.
    let keys = tempfile::tempdir()?;
    std::fs::set_permissions(keys.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let key = JwtKey::generate();
    std::fs::write(keys.path().join("issuer.pem"), key.public_pem())?;
    std::fs::set_permissions(keys.path().join("issuer.pem"), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    // One statement a query: ALTER SYSTEM refuses a transaction block.
    host.sql("ALTER SYSTEM SET pageserver.auth = 'jwt'")?;
    host.sql(&format!("ALTER SYSTEM SET pageserver.auth_public_keys = '{}'", keys.path().display()))?;
    reload(&host)?;
    let tls = verify_full(&other_root);
    eventually("JWT authentication", || {
        let out = psql(addr, &tls, "hello")?;
        if !stderr(&out).contains("28P01") && !stderr(&out).contains("password") {
            bail!("still no password asked: {}", stderr(&out));
        }
        Ok(())
    })?;
    let token = key.sign(&tenant_claims(&tenant, 600));
    let conninfo = format!("host={} port={} user=compute dbname=tenant {tls}", addr.ip(), addr.port());
    let out = Command::new(pg_bin("psql"))
        .args(["-X", "-w", "-d", &conninfo, "-c", &format!("fullbackup {tenant} {timeline}")])
        .env("PGPASSWORD", &token)
        .output()?;
    assert!(out.status.success() && out.stdout.len() > 1 << 20, "fullbackup with a token over TLS: {}", stderr(&out));
    Ok(())
}

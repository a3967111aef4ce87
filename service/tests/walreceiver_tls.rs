//! The replication client's TLS against a real PostgreSQL 15 primary that
//! accepts the page server's roles only over TLS (`hostssl`, with
//! `hostnossl ... reject` for them), under plain `cargo test` (no host):
//!
//! - a timeline streams with `sslmode=verify-full` and the test CA, and the
//!   primary's `pg_stat_ssl` shows its walsender encrypted;
//! - `sslmode=disable` is refused by the primary's pg_hba.conf (SQLSTATE
//!   28000, "no encryption"), and a primary without TLS makes
//!   `sslmode=require` fail with libpq's message;
//! - a root certificate of another CA fails the handshake; a certificate
//!   that does not name the host passes `verify-ca` but not `verify-full`;
//! - `require` encrypts without verifying, `prefer` (the default) uses TLS,
//!   `allow` turns to TLS once the plain connection is refused;
//! - SCRAM-SHA-256 works inside TLS, bound to the channel
//!   (SCRAM-SHA-256-PLUS) unless `channel_binding=disable`, and
//!   `channel_binding=require` fails where there is nothing to bind to;
//! - `cert` authentication works with `sslcert`/`sslkey` and is refused
//!   without them.
//!
//! The harness's own superuser connections stay plain (pg_hba lets them).

use anyhow::{bail, Context, Result};
use pageserver_harness::tls::{TestCa, TlsDir};
use pageserver_harness::{ClusterConfig, PgCluster};
use service::error::ServiceError;
use service::tenants::{HostSettings, Manager};
use service::timeline_handle::TimelineState;
use service::walreceiver::replication::{ReplError, ReplicationConn};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use storage::lsn::Lsn;
use storage::repo::RepoConfig;

mod common;
use common::{wait_for, NoRedo};

/// A primary whose roles `repl` (trust), `scramuser` (SCRAM-SHA-256,
/// password `s3cret`) and `certuser` (`cert`) may connect over TLS only;
/// its certificate names `names`.
fn tls_primary(ca: &TestCa, dir: &TlsDir, names: &[&str]) -> Result<PgCluster> {
    let pair = ca.server_cert(names)?;
    let cert = dir.write("server.crt", &pair.cert_pem)?;
    let key = dir.write("server.key", &pair.key_pem)?;
    let ca_file = dir.write_ca(ca)?;
    let mut config = ClusterConfig::primary(&[])
        .setting("ssl", "on")
        .setting("ssl_cert_file", &cert.display().to_string())
        .setting("ssl_key_file", &key.display().to_string())
        .setting("ssl_ca_file", &ca_file.display().to_string());
    for line in [
        "hostnossl replication repl,certuser,scramuser 0.0.0.0/0 reject",
        "hostnossl all repl,certuser,scramuser 0.0.0.0/0 reject",
        "hostssl replication certuser 127.0.0.1/32 cert",
        "hostssl replication scramuser 127.0.0.1/32 scram-sha-256",
        "hostssl replication repl 127.0.0.1/32 trust",
    ] {
        config = config.hba_line(line);
    }
    let primary = PgCluster::start(config)?;
    primary.sql(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE repl LOGIN REPLICATION; CREATE ROLE certuser LOGIN REPLICATION; \
         CREATE ROLE scramuser LOGIN REPLICATION PASSWORD 's3cret'",
    )?;
    Ok(primary)
}

fn connect(runtime: &tokio::runtime::Runtime, conninfo: &str) -> Result<ReplicationConn, ReplError> {
    runtime.block_on(ReplicationConn::connect(conninfo))
}

/// Connects and runs IDENTIFY_SYSTEM; the error as text.
fn try_identify(runtime: &tokio::runtime::Runtime, conninfo: &str) -> Result<(), String> {
    runtime.block_on(async {
        let mut conn = ReplicationConn::connect(conninfo).await.map_err(|e| e.to_string())?;
        conn.identify_system().await.map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// Whether every walsender of the primary runs over TLS (and there is one).
fn walsenders_encrypted(primary: &PgCluster) -> Result<bool> {
    let row = primary
        .sql_one("SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)")?;
    let row = row.context("no row")?;
    let (ssl, all) = row.split_once('/').context("bad row")?;
    Ok(all != "0" && ssl == all)
}

#[test]
fn a_timeline_streams_over_verified_tls_from_a_primary_that_requires_it() -> Result<()> {
    let ca = TestCa::new("walreceiver test CA")?;
    let dir = TlsDir::new()?;
    let primary = tls_primary(&ca, &dir, &["localhost", "127.0.0.1"])?;
    let ca_file = dir.path().join("ca.crt");
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, v text)")?;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let data_dir = tempfile::tempdir()?;
    let conf = RepoConfig { fsync: false, ..RepoConfig::default() };
    let host = HostSettings {
        data_checksums: primary.sql_one("SHOW data_checksums")?.context("data_checksums")?,
        wal_log_hints: primary.sql_one("SHOW wal_log_hints")?.context("wal_log_hints")?,
        remote: None,
    };
    let manager = Manager::start(data_dir.path(), conf, Arc::new(NoRedo), host, runtime.handle().clone())?;
    let tenant = manager.create_tenant(None)?;
    let base = format!("host=127.0.0.1 port={} user=repl", primary.port());

    // Plain: the primary's pg_hba.conf refuses it, and the caller is told why.
    let err = manager.create_timeline(tenant, None, &format!("{base} sslmode=disable"), None, None).unwrap_err();
    assert!(matches!(err, ServiceError::Connection(_)), "{err:?}");
    assert!(err.to_string().contains("no encryption") && err.to_string().contains("28000"), "{err}");

    // Verified TLS: the timeline imports and streams.
    let conninfo = format!("{base} sslmode=verify-full sslrootcert={}", ca_file.display());
    let id = manager.create_timeline(tenant, None, &conninfo, None, None)?;
    let handle = manager.timeline(tenant, id)?;
    wait_for("the import", || {
        let state = *handle.status.state.lock();
        if state == TimelineState::Broken {
            bail!("import failed: {:?}", handle.status.error.lock());
        }
        Ok(state == TimelineState::Active)
    })?;
    primary.sql("INSERT INTO t SELECT i, repeat('x', 100) FROM generate_series(1, 5000) i")?;
    let target: Lsn = primary.sql_one("SELECT pg_current_wal_lsn()")?.context("lsn")?.parse().map_err(|_| anyhow::anyhow!("bad LSN"))?;
    let timeline = handle.timeline.clone();
    wait_for("the insert to be ingested", || Ok(timeline.last_record_lsn() >= target))?;
    assert!(walsenders_encrypted(&primary)?, "the walsender does not use TLS");
    manager.stop();
    assert_eq!(manager.wait_tasks(Duration::from_secs(10)), 0, "tasks still running after stop");
    Ok(())
}

#[test]
fn tls_modes_root_certificates_host_names_and_client_certificates() -> Result<()> {
    let ca = TestCa::new("walreceiver test CA")?;
    let dir = TlsDir::new()?;
    // The certificate names only localhost: 127.0.0.1 is not its name.
    let primary = tls_primary(&ca, &dir, &["localhost"])?;
    let ca_file = dir.path().join("ca.crt");
    let other_ca = dir.write("other-ca.crt", &TestCa::new("another CA")?.cert_pem())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let port = primary.port();
    let at = |host: &str, user: &str, extra: String| format!("host={host} port={port} user={user} {extra}");
    let root = |p: &Path| format!("sslrootcert={}", p.display());

    // The host name is checked by verify-full only.
    try_identify(&runtime, &at("localhost", "repl", format!("sslmode=verify-full {}", root(&ca_file)))).map_err(anyhow::Error::msg)?;
    try_identify(&runtime, &at("127.0.0.1", "repl", format!("sslmode=verify-ca {}", root(&ca_file)))).map_err(anyhow::Error::msg)?;
    let err = try_identify(&runtime, &at("127.0.0.1", "repl", format!("sslmode=verify-full {}", root(&ca_file)))).unwrap_err();
    assert!(err.contains("TLS handshake with the primary failed") && err.contains("not valid for name"), "{err}");

    // Another CA's root certificate: the chain does not verify.
    for mode in ["verify-ca", "verify-full", "require"] {
        let err = try_identify(&runtime, &at("localhost", "repl", format!("sslmode={mode} {}", root(&other_ca)))).unwrap_err();
        assert!(err.contains(&format!("sslmode={mode}")) && err.contains("UnknownIssuer"), "{mode}: {err}");
    }
    // A missing root certificate file: verify modes refuse to start.
    let missing = dir.path().join("missing.crt");
    let err = connect(&runtime, &at("localhost", "repl", format!("sslmode=verify-full {}", root(&missing)))).err().context("connected")?;
    assert!(matches!(&err, ReplError::Tls(t) if t.is_configuration()), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    // require without root certificates, the default (prefer), and allow
    // (plain first, refused, then TLS): encrypted, unverified.
    for extra in ["sslmode=require", "", "sslmode=allow"] {
        let mut conn = connect(&runtime, &at("127.0.0.1", "repl", extra.to_string()))?;
        runtime.block_on(conn.identify_system())?;
        let ssl =
            primary.sql_one("SELECT bool_and(ssl)::text FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE usename = 'repl'")?;
        assert_eq!(ssl.as_deref(), Some("true"), "{extra:?}");
        drop(conn);
    }

    // SCRAM inside TLS, bound to the channel (SCRAM-SHA-256-PLUS, the
    // primary checks the certificate hash) unless channel_binding=disable;
    // require with no binding possible (trust) fails.
    for binding in ["", "channel_binding=require", "channel_binding=disable"] {
        let scram = format!("sslmode=verify-full {} password=s3cret {binding}", root(&ca_file));
        try_identify(&runtime, &at("localhost", "scramuser", scram)).map_err(|e| anyhow::anyhow!("{binding:?}: {e}"))?;
    }
    let wrong = format!("sslmode=verify-full {} password=wrong", root(&ca_file));
    let err = try_identify(&runtime, &at("localhost", "scramuser", wrong)).unwrap_err();
    assert!(err.contains("28P01"), "{err}");
    let err = try_identify(&runtime, &at("localhost", "repl", format!("{} channel_binding=require", root(&ca_file)))).unwrap_err();
    assert!(err.contains("channel binding required") && err.contains("without it"), "{err}");

    // Client certificates: `cert` authentication needs one, signed by the CA, for the user.
    let (cert, key) = dir.client_files(&ca, "certuser")?;
    let with_cert = format!("sslmode=verify-full {} sslcert={} sslkey={}", root(&ca_file), cert.display(), key.display());
    try_identify(&runtime, &at("localhost", "certuser", with_cert.clone())).map_err(anyhow::Error::msg)?;
    let err = try_identify(&runtime, &at("localhost", "certuser", format!("sslmode=verify-full {}", root(&ca_file)))).unwrap_err();
    assert!(err.contains("28000") && err.contains("certificate"), "{err}");
    // A certificate for another user does not authenticate certuser.
    let (repl_cert, repl_key) = dir.client_files(&ca, "repl")?;
    let wrong = format!("sslmode=verify-full {} sslcert={} sslkey={}", root(&ca_file), repl_cert.display(), repl_key.display());
    let err = try_identify(&runtime, &at("localhost", "certuser", wrong)).unwrap_err();
    assert!(err.contains("28000"), "{err}");
    Ok(())
}

#[test]
fn sslmode_require_fails_clearly_when_the_primary_has_no_tls() -> Result<()> {
    let primary = PgCluster::start(ClusterConfig::primary(&[]).hba_line("host replication scramuser 127.0.0.1/32 scram-sha-256"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let base = format!("host=127.0.0.1 port={} user=postgres", primary.port());
    let err = try_identify(&runtime, &format!("{base} sslmode=require")).unwrap_err();
    assert!(err.contains("the server does not support SSL, but sslmode=require"), "{err}");
    // No TLS, nothing to bind SCRAM to.
    primary.sql("SET password_encryption = 'scram-sha-256'; CREATE ROLE scramuser LOGIN REPLICATION PASSWORD 's3cret'")?;
    let scram = format!("host=127.0.0.1 port={} user=scramuser password=s3cret", primary.port());
    try_identify(&runtime, &scram).map_err(anyhow::Error::msg)?;
    let err = try_identify(&runtime, &format!("{scram} channel_binding=require")).unwrap_err();
    assert!(err.contains("channel binding required") && err.contains("no TLS channel"), "{err}");
    // prefer and allow fall back to plain.
    for mode in ["prefer", "allow"] {
        try_identify(&runtime, &format!("{base} sslmode={mode}")).map_err(|e| anyhow::anyhow!("{mode}: {e}"))?;
    }
    Ok(())
}

//! Detach: a host hands a tenant over to object storage and keeps nothing
//! of it; an attach (here, on the same host) brings it back whole.
//!
//! While pgbench writes on the primary, `pageserver.detach_tenant` stops the
//! tenant's ingest, waits for the last changes to be in the bucket (saying
//! so in NOTICEs) and removes the local copy. The bucket then holds every
//! timeline whole (the bucket checker finds nothing missing, damaged or
//! orphaned), the primary's slot still holds the WAL from the returned
//! LSN, and an attach streams on with no gap: every block equals the
//! primary's after `CHECKPOINT`, and the branch's `fullbackup` gives the
//! primary's data at the branch point. Same test on a local directory and
//! on a real S3 server (moto).
//!
//! An abandoned detach changes nothing: with the bucket unwritable the
//! detach waits (its NOTICEs carry the backup's error) until
//! `statement_timeout` cancels it; the tenant then streams again, and a
//! later detach, with the bucket writable, completes.

use anyhow::{ensure, Context, Result};
use pageserver_harness::s3::S3Server;
use pageserver_harness::PgCluster;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::lsn::Lsn;

mod common;
use common::e2e::{self, check_fullbackup, dump_all, lsn_of};

/// What `detach_tenant` returned: its rows `(timeline_id,
/// remote_consistent_lsn)`, or its SQLSTATE.
type Detached = Result<Vec<(String, Lsn)>, String>;

/// Runs `detach_tenant` (after `SET statement_timeout` if given): its
/// result and the NOTICEs it sent.
fn detach(host: &PgCluster, tenant: &str, statement_timeout: Option<&str>) -> Result<(Detached, Vec<String>)> {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let mut config: postgres::Config = host.connstr("postgres").parse()?;
    let sink = notices.clone();
    config.notice_callback(move |notice| sink.lock().unwrap().push(notice.message().to_string()));
    let mut client = config.connect(postgres::NoTls)?;
    if let Some(timeout) = statement_timeout {
        client.batch_execute(&format!("SET statement_timeout = '{timeout}'"))?;
    }
    let result = match client.query("SELECT timeline_id, remote_consistent_lsn FROM pageserver.detach_tenant($1)", &[&tenant]) {
        Ok(rows) => Ok(rows
            .iter()
            .map(|r| {
                let lsn: String = r.get(1);
                (r.get::<_, String>(0), lsn.parse().unwrap_or(Lsn(0)))
            })
            .collect()),
        Err(e) => Err(e.code().map(|c| c.code().to_string()).unwrap_or_else(|| e.to_string())),
    };
    let notices = notices.lock().unwrap().clone();
    Ok((result, notices))
}

fn tenant_dir(host: &PgCluster, tenant: &str) -> std::path::PathBuf {
    host.data_dir().join("pageserver").join("tenants").join(tenant)
}

fn detach_while_writing_and_attach_back(url: &str, options: &str) -> Result<()> {
    let primary = e2e::start_primary(true, &[])?;
    let host = e2e::start_host(true, &e2e::remote_host_settings_with_gc(url, options))?;
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", "2", "-q", "postgres"])?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    let branch_point = (lsn_of(&primary, "SELECT pg_current_wal_lsn()")?, dump_all(&primary)?);
    e2e::wait_ingested(&host, &timeline, branch_point.0)?;
    let branch = host
        .sql_one(&format!("SELECT timeline_id FROM pageserver.branch_timeline('{tenant}', '{timeline}', '{}')", branch_point.0))?
        .context("branch")?;
    let stop = AtomicBool::new(false);
    let (detached, notices) = std::thread::scope(|scope| {
        let pgbench = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                primary.run_as_postgres_checked("pgbench", &["-c", "2", "-j", "2", "-T", "2", "postgres"])?;
            }
            anyhow::Ok(())
        });
        std::thread::sleep(Duration::from_secs(4));
        let result = detach(&host, &tenant, None);
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        pgbench.join().map_err(|_| anyhow::anyhow!("pgbench thread panicked"))??;
        result
    })?;
    let detached = detached.map_err(|code| anyhow::anyhow!("detach failed with {code}; notices {notices:?}"))?;
    eprintln!("{url}: detached {detached:?}; notices: {notices:?}");
    ensure!(notices.iter().any(|n| n.contains("waiting for")), "no progress NOTICE: {notices:?}");
    ensure!(detached.len() == 2, "{detached:?}");
    let at = |id: &str| detached.iter().find(|(t, _)| t == id).map(|(_, lsn)| *lsn).context("timeline not in the result");
    let (main_lsn, branch_lsn) = (at(&timeline)?, at(&branch)?);
    ensure!(main_lsn > branch_point.0 && branch_lsn >= branch_point.0, "LSNs {main_lsn} and {branch_lsn}");

    // Nothing of the tenant is left on the host; the bucket holds it whole.
    ensure!(host.sql_one(&format!("SELECT count(*) FROM pageserver.timelines() WHERE tenant_id = '{tenant}'"))?.as_deref() == Some("0"));
    ensure!(!tenant_dir(&host, &tenant).exists(), "the tenant directory is still there");
    ensure!(!host.data_dir().join("pageserver").join("detached").join(&tenant).exists());
    let storage = remote::RemoteStorageConfig::parse(url, options)?.open()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let tenant_id: storage::repo::TenantId = tenant.parse().map_err(anyhow::Error::msg)?;
    let checks = rt.block_on(remote::check::check_tenant(&storage, tenant_id, true))?;
    ensure!(checks.len() == 2 && checks.iter().all(|c| c.is_clean()), "{checks:?}");
    for check in &checks {
        let (_, index_lsn) = check.index.context("no index")?;
        ensure!(index_lsn == at(&check.timeline.context("no timeline")?.to_string())?, "{check:?}");
    }
    // The primary kept the WAL from there on (the slot create_timeline made).
    let slot = format!("pageserver_{}", &timeline[..16]);
    let restart = lsn_of(&primary, &format!("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"))?;
    ensure!(restart <= main_lsn, "the slot moved to {restart}, past the detached {main_lsn}");
    ensure!(detach(&host, &tenant, None)?.0 == Err("42704".into()), "a second detach");

    // Back on this host: it streams on from the bucket's LSN.
    primary.run_as_postgres_checked("pgbench", &["-c", "2", "-j", "2", "-T", "2", "postgres"])?;
    let row = host.sql(&format!("SELECT timelines, streaming FROM pageserver.attach_tenant('{tenant}')"))?;
    ensure!(row.first().is_some_and(|r| r[0].as_deref() == Some("2") && r[1].as_deref() == Some("1")), "attach: {row:?}");
    e2e::compare_after_checkpoint(&primary, &host, &tenant, &timeline, true)?;
    check_fullbackup(&host, &tenant, &branch, None, &branch_point.1, true, "the branch after detach and attach")?;
    e2e::ensure_log_clean_but(&host, &[&format!("tenant {tenant} not found")])
}

#[test]
fn a_tenant_detached_to_a_local_directory_comes_back_whole() -> Result<()> {
    let bucket = tempfile::tempdir()?;
    pageserver_harness::as_postgres::chown_to_postgres(bucket.path())?;
    detach_while_writing_and_attach_back(&format!("file://{}/bucket", bucket.path().display()), "")
}

#[test]
fn a_tenant_detached_to_an_s3_server_comes_back_whole() -> Result<()> {
    let s3 = S3Server::start()?;
    s3.create_bucket("detach")?;
    detach_while_writing_and_attach_back(&s3.url("detach", "hosts"), &s3.options())
}

/// Makes every directory under `dir` (and `dir`) unwritable, or writable again.
fn set_writable(dir: &std::path::Path, writable: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if writable { 0o755 } else { 0o555 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_writable(&entry.path(), writable)?;
        }
    }
    Ok(())
}

#[test]
fn an_abandoned_detach_leaves_the_tenant_streaming() -> Result<()> {
    let bucket = tempfile::tempdir()?;
    pageserver_harness::as_postgres::chown_to_postgres(bucket.path())?;
    let root = bucket.path().join("bucket");
    let url = format!("file://{}", root.display());
    let primary = e2e::start_primary(true, &[])?;
    let host = e2e::start_host(true, &e2e::remote_host_settings(&url, ""))?;
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", "1", "-q", "postgres"])?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    host.wait_for("a first index in the bucket", Duration::from_secs(120), || {
        host.sql_one(&format!("SELECT remote_consistent_lsn FROM pageserver.timelines() WHERE timeline_id = '{timeline}'")).ok()?
    })?;

    ensure!(detach(&host, "0123456789abcdef0123456789abcdef", None)?.0 == Err("42704".into()), "unknown tenant");
    ensure!(detach(&host, "not a tenant", None)?.0 == Err("22023".into()), "malformed id");
    // The bucket refuses writes: the detach waits, and is cancelled.
    primary.run_as_postgres_checked("pgbench", &["-c", "2", "-j", "2", "-T", "2", "postgres"])?;
    set_writable(&root, false)?;
    let (result, notices) = detach(&host, &tenant, Some("6s"))?;
    set_writable(&root, true)?;
    ensure!(result == Err("57014".into()), "the detach was not cancelled: {result:?}");
    ensure!(notices.iter().any(|n| n.contains("last error")), "no NOTICE carries the backup's error: {notices:?}");
    eprintln!("notices of the cancelled detach: {notices:?}");

    // Nothing changed: the tenant streams and takes changes.
    ensure!(tenant_dir(&host, &tenant).exists());
    primary.run_as_postgres_checked("pgbench", &["-c", "2", "-j", "2", "-T", "2", "postgres"])?;
    let lsn = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    e2e::wait_ingested(&host, &timeline, lsn)?;
    let state = host.sql_one(&format!("SELECT state FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"))?;
    ensure!(state.as_deref() == Some("active"), "state {state:?}");
    host.sql(&format!("SELECT * FROM pageserver.branch_timeline('{tenant}', '{timeline}')"))?;

    // With the bucket writable, a detach completes; the tenant comes back whole.
    let (result, _) = detach(&host, &tenant, None)?;
    let detached = result.map_err(|code| anyhow::anyhow!("detach failed with {code}"))?;
    ensure!(detached.len() == 2 && detached.iter().all(|(_, l)| *l >= lsn || l.0 > 0), "{detached:?}");
    host.sql(&format!("SELECT * FROM pageserver.attach_tenant('{tenant}')"))?;
    e2e::compare_after_checkpoint(&primary, &host, &tenant, &timeline, true)?;
    Ok(())
}

#[test]
fn detach_needs_object_storage() -> Result<()> {
    let host = e2e::start_host(false, &[])?;
    let tenant = host.sql_one("SELECT pageserver.create_tenant()")?.context("tenant")?;
    ensure!(detach(&host, &tenant, None)?.0 == Err("55000".into()));
    ensure!(host.sql_one(&format!("SELECT count(*) FROM pageserver.tenants() WHERE tenant_id = '{tenant}'"))?.as_deref() == Some("1"));
    Ok(())
}

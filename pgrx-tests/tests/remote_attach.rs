//! Host loss: nothing reported durable is lost with the host's disk.
//!
//! pgbench writes on a checksummed primary while a host streams the
//! timeline with object storage on (a branch too). Once the host has
//! `remote_consistent_lsn` at the primary's LSN, it is SIGKILLed and its
//! whole data directory deleted; pgbench writes on. A fresh host with the
//! same object storage attaches the tenant from the bucket alone
//! (`pageserver.attach_tenant`) and streams on through the slot with no
//! WAL gap. Then every block equals the primary's after `CHECKPOINT`, and
//! `fullbackup` at three LSNs (one before the loss, one at it, one after)
//! and on the branch starts a stock PostgreSQL whose `pg_dumpall` equals the
//! primary's at that LSN, with `pg_checksums` and `pg_amcheck` clean; the
//! new host backs up on, and the bucket checker finds nothing missing,
//! damaged or orphaned. The same test runs on a local directory and on a
//! real S3 server (moto).
//! Attach refuses what it cannot do, with the SQLSTATE of the reason.
//!
//! A primary that wants a password for replication: the index keeps the
//! connection string without it, and a fresh host attaches with nothing
//! but the tenant id; its timeline says what is missing until the host's
//! password file (`PGPASSFILE`) has a line for the primary, then streams.

use anyhow::{ensure, Context, Result};
use pageserver_harness::s3::S3Server;
use pageserver_harness::PgCluster;
use std::time::Duration;
use storage::lsn::Lsn;

mod common;
use common::e2e::{self, check_fullbackup, dump_all, lsn_of};

/// The SQLSTATE of a failed statement.
fn sqlstate(host: &PgCluster, sql: &str) -> Result<String> {
    let mut client = host.client("postgres")?;
    match client.simple_query(sql) {
        Ok(_) => anyhow::bail!("{sql} succeeded"),
        Err(e) => Ok(e.code().map(|c| c.code().to_string()).unwrap_or_default()),
    }
}

fn lose_the_host_and_attach_elsewhere(url: &str, options: &str) -> Result<()> {
    let primary = e2e::start_primary(true, &[])?;
    let mut host = e2e::start_host(true, &e2e::remote_host_settings(url, options))?;
    let pgbench = |args: &[&str]| primary.run_as_postgres_checked("pgbench", args);
    pgbench(&["-i", "-s", "3", "-q", "postgres"])?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    let mut points: Vec<(Lsn, String)> = Vec::new();
    points.push((lsn_of(&primary, "SELECT pg_current_wal_lsn()")?, dump_all(&primary)?));
    pgbench(&["-c", "2", "-j", "2", "-T", "5", "postgres"])?;
    points.push((lsn_of(&primary, "SELECT pg_current_wal_lsn()")?, dump_all(&primary)?));
    let before_loss = points[1].0;
    e2e::wait_ingested(&host, &timeline, before_loss)?;
    let branch = host
        .sql_one(&format!("SELECT timeline_id FROM pageserver.branch_timeline('{tenant}', '{timeline}', '{}')", points[0].0))?
        .context("branch")?;
    host.wait_for("both timelines to be in the bucket at their LSNs", Duration::from_secs(120), || {
        let rows = host
            .sql(&format!(
                "SELECT timeline_id, remote_consistent_lsn FROM pageserver.timelines() \
                 WHERE (timeline_id = '{timeline}' AND remote_consistent_lsn::pg_lsn >= '{before_loss}') \
                    OR (timeline_id = '{branch}' AND remote_consistent_lsn IS NOT NULL)"
            ))
            .ok()?;
        (rows.len() == 2).then_some(())
    })?;

    // The host is lost: killed, and its disk gone.
    host.kill_postmaster()?;
    let data = host.data_dir().to_path_buf();
    std::fs::remove_dir_all(&data).with_context(|| format!("deleting {}", data.display()))?;
    drop(host);
    pgbench(&["-c", "2", "-j", "2", "-T", "3", "postgres"])?;

    let fresh = e2e::start_host(true, &e2e::remote_host_settings(url, options))?;
    ensure!(sqlstate(&fresh, "SELECT * FROM pageserver.attach_tenant('0123456789abcdef0123456789abcdef')")? == "42704");
    ensure!(sqlstate(&fresh, "SELECT * FROM pageserver.attach_tenant('not a tenant')")? == "22023");
    let row =
        fresh.sql(&format!("SELECT timelines, streaming, layer_files, downloaded_bytes FROM pageserver.attach_tenant('{tenant}')"))?;
    let row = row.first().context("attach returned no row")?;
    ensure!(row[0].as_deref() == Some("2") && row[1].as_deref() == Some("1"), "attach: {row:?}");
    eprintln!("{url}: attached {} layer files, {} bytes", row[2].as_deref().unwrap_or("?"), row[3].as_deref().unwrap_or("?"));
    ensure!(sqlstate(&fresh, &format!("SELECT * FROM pageserver.attach_tenant('{tenant}')"))? == "42710", "attaching twice");

    pgbench(&["-c", "2", "-j", "2", "-T", "3", "postgres"])?;
    points.push((lsn_of(&primary, "SELECT pg_current_wal_lsn()")?, dump_all(&primary)?));
    primary.sql("CHECKPOINT")?;
    let end = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    e2e::wait_ingested(&fresh, &timeline, end)?;
    let report = e2e::compare_pages(&primary, &fresh, &tenant, &timeline, end, true)?;
    report.ensure_clean()?;
    ensure!(report.blocks > 100 && report.checksums_checked == report.blocks, "{} blocks compared", report.blocks);
    for (i, (lsn, dump)) in points.iter().enumerate() {
        check_fullbackup(&fresh, &tenant, &timeline, Some(*lsn), dump, true, &format!("after attach, LSN {i} ({lsn})"))?;
    }
    check_fullbackup(&fresh, &tenant, &branch, None, &points[0].1, true, "after attach, the branch")?;
    // The fresh host backs up on; once it has caught up, the bucket holds
    // exactly what its indexes name, checked by size and CRC32C.
    let storage = remote::RemoteStorageConfig::parse(url, options)?.open()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let tenant_id: storage::repo::TenantId = tenant.parse().map_err(anyhow::Error::msg)?;
    let checks = fresh.wait_for("a clean bucket after the attached host caught up", Duration::from_secs(120), || {
        let behind = fresh
            .sql_one(&format!(
                "SELECT count(*) FROM pageserver.timelines() WHERE tenant_id = '{tenant}' \
                 AND remote_consistent_lsn IS DISTINCT FROM disk_consistent_lsn"
            ))
            .ok()??;
        if behind != "0" {
            return None;
        }
        let checks = rt.block_on(remote::check::check_tenant(&storage, tenant_id, true)).ok()?;
        checks.iter().all(|c| c.is_clean()).then_some(checks)
    })?;
    ensure!(checks.len() == 2, "{checks:?}");
    // The log may hold the two refused attaches; nothing else.
    let log = fresh.log();
    let unexpected: Vec<&str> = log
        .lines()
        .filter(|l| {
            (l.contains("ERROR:  ") || l.contains("PANIC") || l.contains("WAL gap"))
                && !l.contains("attach_tenant")
                && !l.contains("tenant")
        })
        .collect();
    ensure!(unexpected.is_empty(), "host log: {unexpected:?}");
    Ok(())
}

#[test]
fn a_lost_host_is_rebuilt_from_a_local_directory() -> Result<()> {
    let bucket = tempfile::tempdir()?;
    pageserver_harness::as_postgres::chown_to_postgres(bucket.path())?;
    lose_the_host_and_attach_elsewhere(&format!("file://{}/bucket", bucket.path().display()), "")
}

#[test]
fn a_lost_host_is_rebuilt_from_an_s3_server() -> Result<()> {
    let s3 = S3Server::start()?;
    s3.create_bucket("backups")?;
    lose_the_host_and_attach_elsewhere(&s3.url("backups", "hosts"), &s3.options())
}

#[test]
fn attach_needs_object_storage() -> Result<()> {
    let host = e2e::start_host(false, &[])?;
    ensure!(sqlstate(&host, "SELECT * FROM pageserver.attach_tenant('0123456789abcdef0123456789abcdef')")? == "55000");
    Ok(())
}

#[test]
fn an_attached_timeline_authenticates_from_the_host_password_file() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bucket = tempfile::tempdir()?;
    pageserver_harness::as_postgres::chown_to_postgres(bucket.path())?;
    let url = format!("file://{}/bucket", bucket.path().display());
    let primary = e2e::start_primary(true, &[("password_encryption", "scram-sha-256")])?;
    primary.sql("CREATE ROLE repl WITH REPLICATION LOGIN PASSWORD 'se:cret'")?;
    // Replication as repl from loopback needs the password (first match wins).
    let hba = primary.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba)?;
    std::fs::write(&hba, format!("host replication repl 127.0.0.1/32 scram-sha-256\n{rules}"))?;
    primary.sql("SELECT pg_reload_conf()")?;
    let pgbench = |args: &[&str]| primary.run_as_postgres_checked("pgbench", args);
    pgbench(&["-i", "-s", "1", "-q", "postgres"])?;
    let settings = e2e::remote_host_settings(&url, "");
    let host = e2e::start_host(true, &settings)?;
    let tenant = host.sql_one("SELECT pageserver.create_tenant()")?.context("tenant")?;
    let conninfo = format!("host=127.0.0.1 port={} user=repl", primary.port());
    ensure!(sqlstate(&host, &format!("SELECT pageserver.create_timeline('{tenant}', '{conninfo}')"))? == "22023", "no password anywhere");
    let timeline =
        host.sql_one(&format!("SELECT pageserver.create_timeline('{tenant}', '{conninfo} password=''se:cret''')"))?.context("timeline")?;
    pgbench(&["-c", "2", "-j", "2", "-T", "2", "postgres"])?;
    let lsn = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    host.wait_for("the timeline in the bucket", Duration::from_secs(120), || {
        host.sql_one(&format!(
            "SELECT 1 FROM pageserver.timelines() WHERE timeline_id = '{timeline}' AND remote_consistent_lsn::pg_lsn >= '{lsn}'"
        ))
        .ok()?
    })?;
    drop(host);

    // The fresh host's password file does not exist yet.
    let secrets = tempfile::tempdir()?;
    pageserver_harness::as_postgres::chown_to_postgres(secrets.path())?;
    let passfile = secrets.path().join("pgpass");
    let fresh = e2e::start_host_with_env(true, &settings, &[("PGPASSFILE", &passfile.display().to_string())])?;
    fresh.sql(&format!("SELECT * FROM pageserver.attach_tenant('{tenant}')"))?;
    let error = fresh.wait_for("the receiver to say what it lacks", Duration::from_secs(60), || {
        fresh
            .sql_one(&format!("SELECT last_error FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"))
            .ok()?
            .filter(|e| e.contains("password file"))
    })?;
    ensure!(error.contains(&passfile.display().to_string()), "{error}");
    std::fs::write(&passfile, format!("# the primary\n127.0.0.1:{}:replication:repl:se\\:cret\n", primary.port()))?;
    pageserver_harness::as_postgres::chown_to_postgres(&passfile)?;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600))?;
    pgbench(&["-c", "2", "-j", "2", "-T", "2", "postgres"])?;
    let end = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    e2e::wait_ingested(&fresh, &timeline, end)?;
    e2e::compare_after_checkpoint(&primary, &fresh, &tenant, &timeline, true)?;
    Ok(())
}

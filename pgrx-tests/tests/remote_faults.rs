//! Faults between the page server and its object storage: a proxy in front
//! of moto answers `FAULT_PERCENT` (default 30) of the requests with a 503,
//! a 500, a closed connection or a slow answer, while pgbench writes and
//! compaction makes the backup worker upload and delete. Ingest must go on
//! (only `remote_consistent_lsn` may fall behind), no worker may restart,
//! and once the faults stop the backup catches up: the bucket checker finds
//! nothing missing, damaged or orphaned. The host is then lost, and a fresh
//! host attaches through the same proxy with the faults on again (listing
//! and reading; a failed attach is simply tried again) and serves every
//! block equal to the primary's.

use anyhow::{ensure, Context, Result};
use pageserver_harness::fault_proxy::{FaultProxy, Outcome};
use pageserver_harness::s3::S3Server;
use std::collections::BTreeMap;
use std::time::Duration;

mod common;
use common::e2e::{self, lsn_of};

#[test]
fn the_backup_survives_a_faulty_store_and_catches_up() -> Result<()> {
    let percent = e2e::env_u64("FAULT_PERCENT", 30) as u32;
    let s3 = S3Server::start()?;
    s3.create_bucket("faults")?;
    let proxy = FaultProxy::start(([127, 0, 0, 1], s3.port()).into(), percent, 0x5eed)?;
    let url = s3.url("faults", "p");
    let through_proxy = format!("endpoint={},region=us-east-1,access_key_id=test,secret_access_key=test", proxy.endpoint());
    let primary = e2e::start_primary(true, &[])?;
    let settings = e2e::remote_host_settings_with_gc(&url, &through_proxy);
    let host = e2e::start_host(true, &settings)?;
    let workers_before = host.sql("SELECT kind, restarts FROM pageserver.status() ORDER BY kind, number")?;
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", "2", "-q", "postgres"])?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    primary.run_as_postgres_checked("pgbench", &["-c", "2", "-j", "2", "-T", "15", "postgres"])?;
    let target = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    // Ingest does not wait for the bucket.
    e2e::wait_ingested(&host, &timeline, target)?;
    let failed: i64 = host
        .sql_one(&format!("SELECT failed_tries FROM pageserver.remote_timelines() WHERE timeline_id = '{timeline}'"))?
        .context("no remote row")?
        .parse()?;

    let during_backup = summarize(&proxy.counts(), percent)?;
    proxy.set_fault_percent(0);
    eprintln!("backup under faults: {during_backup:?} ({failed} failed tries seen)");
    for operation in ["PUT", "GET", "LIST", "DELETE"] {
        ensure!(during_backup.get(operation).is_some_and(|(_, bad)| *bad > 0), "no {operation} was faulted: {during_backup:?}");
    }

    // Faults off: the backup catches up with the ingested WAL.
    host.wait_for("remote_consistent_lsn to reach the ingested WAL once the faults stop", Duration::from_secs(180), || {
        host.sql_one(&format!(
            "SELECT 1 FROM pageserver.timelines() WHERE timeline_id = '{timeline}' \
             AND remote_consistent_lsn::pg_lsn >= '{target}' AND remote_consistent_lsn = disk_consistent_lsn"
        ))
        .ok()
        .flatten()
    })?;
    let workers_after = host.sql("SELECT kind, restarts FROM pageserver.status() ORDER BY kind, number")?;
    ensure!(workers_before == workers_after, "a worker restarted: {workers_before:?} -> {workers_after:?}");
    let direct = remote::RemoteStorageConfig::parse(&url, &s3.options())?.open()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let tenant_id: storage::repo::TenantId = tenant.parse().map_err(anyhow::Error::msg)?;
    let checks = host.wait_for("a clean bucket", Duration::from_secs(60), || {
        let checks = rt.block_on(remote::check::check_tenant(&direct, tenant_id, true)).ok()?;
        checks.iter().all(|c| c.is_clean()).then_some(checks)
    })?;
    ensure!(checks.len() == 1 && checks[0].layers_checked > 0, "{checks:?}");
    e2e::ensure_log_clean(&host)?;

    // The host is lost; a fresh one attaches through the proxy, faults on.
    drop(host);
    let fresh = e2e::start_host(true, &settings)?;
    let before_attach = proxy.counts();
    proxy.set_fault_percent(percent);
    let mut tries = 0;
    while let Err(e) = fresh.sql(&format!("SELECT * FROM pageserver.attach_tenant('{tenant}')")) {
        tries += 1;
        ensure!(tries < 20, "attach failed {tries} times; last: {e:#}");
    }
    proxy.set_fault_percent(0);
    let mut during_attach = proxy.counts();
    for (key, n) in before_attach {
        *during_attach.entry(key).or_default() -= n;
    }
    let during_attach = summarize(&during_attach, 0)?;
    eprintln!("attach under faults ({tries} failed attaches): {during_attach:?}");
    for operation in ["LIST", "GET"] {
        ensure!(during_attach.get(operation).is_some_and(|(_, bad)| *bad > 0), "no {operation} was faulted: {during_attach:?}");
    }
    e2e::compare_after_checkpoint(&primary, &fresh, &tenant, &timeline, true)?;
    // Failed attaches are errors the host logged; nothing else may be.
    let log = fresh.log();
    let unexpected: Vec<&str> =
        log.lines().filter(|l| (l.contains("ERROR:  ") && !l.contains("object storage")) || l.contains("PANIC")).collect();
    ensure!(unexpected.is_empty(), "host log: {unexpected:?}");
    Ok(())
}

/// Requests and faulted requests per S3 operation; with `percent` > 0,
/// checks there were enough requests and that about that share faulted.
fn summarize(counts: &BTreeMap<(String, Outcome), u64>, percent: u32) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut by_operation: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for ((operation, outcome), n) in counts {
        let entry = by_operation.entry(operation.clone()).or_default();
        entry.0 += n;
        if *outcome != Outcome::Forwarded {
            entry.1 += n;
        }
    }
    if percent > 0 {
        let (requests, faults) = by_operation.values().fold((0, 0), |(all, bad), (n, f)| (all + n, bad + f));
        ensure!(requests >= 50, "too few requests to mean anything: {by_operation:?}");
        ensure!(faults * 100 >= requests * u64::from(percent) * 2 / 3, "only {faults} of {requests} faulted");
    }
    Ok(by_operation)
}

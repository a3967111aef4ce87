//! Dropping timelines and tenants: `pageserver.drop_timeline` refuses a
//! timeline with branches (`2BP01`) and leaves it streaming; it drops a
//! branch, then the timeline and its replication slot on the primary, and
//! removes their directories; `drop_tenant` refuses a tenant with
//! timelines unless `cascade`, which drops branches before their parents.
//! A primary that cannot be reached keeps its slot, and the drop says so.
//! With object storage (a local directory), the backup worker deletes a
//! dropped timeline's objects before the drop returns.

use anyhow::{ensure, Context, Result};
use pageserver_harness::PgCluster;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::e2e::{self, lsn_of};

/// The rows of a query, or its SQLSTATE.
type Outcome = Result<Vec<Vec<Option<String>>>, String>;

/// The outcome of `SELECT * FROM <call>` and the NOTICEs it sent.
fn run(host: &PgCluster, call: &str) -> Result<(Outcome, Vec<String>)> {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let mut config: postgres::Config = host.connstr("postgres").parse()?;
    let sink = notices.clone();
    config.notice_callback(move |notice| sink.lock().unwrap().push(notice.message().to_string()));
    let mut client = config.connect(postgres::NoTls)?;
    let result = match client.simple_query(&format!("SELECT * FROM {call}")) {
        Ok(messages) => Ok(messages
            .iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(row) => Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect()),
                _ => None,
            })
            .collect()),
        Err(e) => Err(e.code().map(|c| c.code().to_string()).unwrap_or_else(|| e.to_string())),
    };
    let notices = notices.lock().unwrap().clone();
    Ok((result, notices))
}

fn timeline_dir(host: &PgCluster, tenant: &str, timeline: &str) -> PathBuf {
    host.data_dir().join("pageserver").join("tenants").join(tenant).join("timelines").join(timeline)
}

fn listed(host: &PgCluster, timeline: &str) -> Result<bool> {
    Ok(host.sql_one(&format!("SELECT count(*) FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"))?.as_deref() == Some("1"))
}

fn slots(primary: &PgCluster) -> Result<Vec<String>> {
    Ok(primary.sql("SELECT slot_name FROM pg_replication_slots ORDER BY 1")?.into_iter().filter_map(|r| r[0].clone()).collect())
}

#[test]
fn timelines_and_tenants_are_dropped_with_their_slots() -> Result<()> {
    let mut primary = e2e::start_primary(false, &[])?;
    let host = e2e::start_host(false, &[])?;
    primary.sql("CREATE TABLE kept (id int)")?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    let branch =
        host.sql_one(&format!("SELECT timeline_id FROM pageserver.branch_timeline('{tenant}', '{timeline}')"))?.context("branch")?;
    ensure!(slots(&primary)?.len() == 1, "slots: {:?}", slots(&primary)?);

    // Refused while it has a branch; the timeline streams on.
    let (result, _) = run(&host, &format!("pageserver.drop_timeline('{tenant}', '{timeline}')"))?;
    ensure!(result == Err("2BP01".into()), "drop with a branch: {result:?}");
    primary.sql("INSERT INTO kept VALUES (1)")?;
    e2e::wait_ingested(&host, &timeline, lsn_of(&primary, "SELECT pg_current_wal_lsn()")?)?;
    for (call, code) in [
        (format!("pageserver.drop_timeline('{tenant}', 'nonsense')"), "22023"),
        (format!("pageserver.drop_timeline('{tenant}', 'ffffffffffffffffffffffffffffffff')"), "42704"),
        ("pageserver.drop_tenant('ffffffffffffffffffffffffffffffff')".to_string(), "42704"),
        (format!("pageserver.drop_tenant('{tenant}')"), "2BP01"),
    ] {
        let (result, _) = run(&host, &call)?;
        ensure!(result == Err(code.to_string()), "{call}: {result:?}, expected {code}");
    }
    ensure!(listed(&host, &timeline)? && listed(&host, &branch)?, "a refused drop removed something");

    // The branch, then the timeline with its slot.
    let (result, _) = run(&host, &format!("pageserver.drop_timeline('{tenant}', '{branch}')"))?;
    let rows = result.map_err(|e| anyhow::anyhow!("drop branch: {e}"))?;
    ensure!(rows == vec![vec![Some(branch.clone()), None, Some("f".into()), None]], "drop branch: {rows:?}");
    ensure!(!listed(&host, &branch)? && !timeline_dir(&host, &tenant, &branch).exists(), "the branch is still there");
    let (result, notices) = run(&host, &format!("pageserver.drop_timeline('{tenant}', '{timeline}')"))?;
    let rows = result.map_err(|e| anyhow::anyhow!("drop timeline: {e}"))?;
    ensure!(rows.len() == 1 && rows[0][2].as_deref() == Some("t") && rows[0][1].is_some(), "drop timeline: {rows:?} {notices:?}");
    ensure!(slots(&primary)?.is_empty(), "the slot is still on the primary: {:?}", slots(&primary)?);
    ensure!(!listed(&host, &timeline)? && !timeline_dir(&host, &tenant, &timeline).exists(), "the timeline is still there");
    let (result, _) = run(&host, &format!("pageserver.drop_timeline('{tenant}', '{timeline}')"))?;
    ensure!(result == Err("42704".into()), "a second drop: {result:?}");

    // An empty tenant goes; a tenant with timelines needs cascade, which
    // drops the branch before its parent. The primary is down: its slot stays.
    let (result, _) = run(&host, &format!("pageserver.drop_tenant('{tenant}')"))?;
    ensure!(result == Ok(vec![]), "drop an empty tenant: {result:?}");
    ensure!(host.sql_one(&format!("SELECT count(*) FROM pageserver.tenants() WHERE tenant_id = '{tenant}'"))?.as_deref() == Some("0"));
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    let branch =
        host.sql_one(&format!("SELECT timeline_id FROM pageserver.branch_timeline('{tenant}', '{timeline}')"))?.context("branch")?;
    let slot = slots(&primary)?.pop().context("a slot")?;
    primary.stop()?;
    let (result, notices) = run(&host, &format!("pageserver.drop_tenant('{tenant}', cascade => true)"))?;
    let rows = result.map_err(|e| anyhow::anyhow!("drop tenant cascade: {e}"))?;
    ensure!(rows.len() == 2 && rows[0][0].as_deref() == Some(branch.as_str()), "cascade order: {rows:?}");
    ensure!(rows[1][1].as_deref() == Some(slot.as_str()) && rows[1][2].as_deref() == Some("f"), "slot of a stopped primary: {rows:?}");
    ensure!(notices.iter().any(|n| n.contains(&format!("pg_drop_replication_slot('{slot}')"))), "no NOTICE about the slot: {notices:?}");
    ensure!(!host.data_dir().join("pageserver").join("tenants").join(&tenant).exists(), "the tenant's directory is still there");
    primary.start_again()?;
    ensure!(slots(&primary)? == vec![slot], "the slot of the stopped primary");
    e2e::ensure_log_clean_but(&host, &["not found", "drop them first", "invalid timeline id"])
}

#[test]
fn a_dropped_timeline_leaves_object_storage() -> Result<()> {
    let bucket = tempfile::tempdir()?;
    pageserver_harness::as_postgres::chown_to_postgres(bucket.path())?;
    let root = bucket.path().join("bucket");
    let url = format!("file://{}", root.display());
    let primary = e2e::start_primary(false, &[])?;
    let host = e2e::start_host(false, &e2e::remote_host_settings(&url, ""))?;
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", "1", "-q", "postgres"])?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    let other = host
        .sql_one(&format!("SELECT pageserver.create_timeline('{tenant}', '{}')", primary.connstr("postgres")))?
        .context("a second timeline")?;
    let remote = |timeline: &str| root.join("tenants").join(&tenant).join("timelines").join(timeline);
    let objects = |timeline: &str| std::fs::read_dir(remote(timeline)).map(|d| d.count()).unwrap_or(0);
    for tl in [&timeline, &other] {
        host.wait_for("an index and layers in the bucket", Duration::from_secs(120), || (objects(tl) > 1).then_some(()))?;
    }
    // pageserver.layers says which files the remote index names: in time, all.
    let remote_sql = format!("SELECT count(*) FILTER (WHERE remote), count(*) FROM pageserver.layers('{tenant}', '{timeline}')");
    host.wait_for("every layer to be in the remote index", Duration::from_secs(120), || {
        let row = host.sql(&remote_sql).ok()?;
        (row[0][0] == row[0][1] && row[0][0].as_deref() != Some("0")).then_some(())
    })?;
    let (result, _) = run(&host, &format!("pageserver.drop_timeline('{tenant}', '{timeline}')"))?;
    let rows = result.map_err(|e| anyhow::anyhow!("drop timeline: {e}"))?;
    ensure!(rows.len() == 1 && rows[0][3].as_deref() == Some("t"), "drop: {rows:?}");
    ensure!(objects(&timeline) == 0, "{} objects of the dropped timeline are left in the bucket", objects(&timeline));
    ensure!(objects(&other) > 1, "the other timeline's objects went too");
    let marker = host.data_dir().join("pageserver").join("backup").join(format!("{tenant}_{timeline}.dropped"));
    ensure!(!marker.exists(), "the drop marker is left");
    e2e::ensure_log_clean(&host)
}

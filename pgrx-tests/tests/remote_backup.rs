//! The backup worker copies a streaming timeline to object storage: the
//! same test against a local directory and a real S3-compatible server
//! (moto) on loopback.
//!
//! While pgbench writes (small layers, a layers-worker pass every second so
//! that compaction replaces uploaded layers), the timeline's
//! `remote_consistent_lsn` must follow: once ingest is idle it reaches the
//! `disk_consistent_lsn`, and then the bucket holds exactly the layer
//! objects the remote index names (the ones compaction dropped were
//! deleted), each with the size and CRC32C the index records, and the index
//! names the same layers as the local one. The primary's slot is told
//! `remote_consistent_lsn` as flushed, so its `restart_lsn` never passes it.
//! The options (credentials) are hidden from non-superusers, and a
//! malformed `pageserver.remote_storage` stops the host at start with a
//! message naming it.

use anyhow::{ensure, Context, Result};
use pageserver_harness::s3::S3Server;
use pageserver_harness::PgCluster;
use remote::layout::{self, Generation, ObjectKind};
use remote::{RemoteIndex, RemoteStorageConfig, Transferred};
use std::collections::BTreeSet;
use std::time::Duration;
use storage::lsn::Lsn;
use storage::repo::index::IndexFile;
use storage::repo::{TenantId, TimelineId};

mod common;
use common::e2e;

/// The secret the S3 options carry: it must never show up for a non-superuser or in the log.
const SECRET: &str = "s3cr3t-never-shown";

fn remote_lsn(host: &PgCluster, timeline: &str) -> Result<Option<Lsn>> {
    let value = host.sql_one(&format!("SELECT remote_consistent_lsn FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"))?;
    value.map(|v| v.parse().map_err(|_| anyhow::anyhow!("bad LSN {v}"))).transpose()
}

fn back_up_a_streaming_timeline(url: &str, options: &str) -> Result<()> {
    let primary = e2e::start_primary(true, &[])?;
    let host = e2e::start_host(true, &e2e::remote_host_settings_with_gc(url, options))?;
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", "2", "-q", "postgres"])?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    primary.run_as_postgres_checked("pgbench", &["-c", "2", "-j", "2", "-T", "6", "postgres"])?;
    let target = e2e::lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    e2e::wait_ingested(&host, &timeline, target)?;

    // Idle ingest: the open layer is flushed, then uploaded with its index.
    let caught_up = host.wait_for("remote_consistent_lsn to reach the ingested WAL", Duration::from_secs(120), || {
        remote_lsn(&host, &timeline).ok().flatten().filter(|lsn| *lsn >= target)
    })?;
    let slot_lsn = e2e::lsn_of(&primary, "SELECT restart_lsn FROM pg_replication_slots")?;
    ensure!(slot_lsn <= caught_up, "the slot's restart_lsn {slot_lsn} passed remote_consistent_lsn {caught_up}");
    // Status replies go out every few seconds: the slot follows the bucket.
    host.wait_for("the slot to advance past the imported WAL", Duration::from_secs(60), || {
        e2e::lsn_of(&primary, "SELECT restart_lsn FROM pg_replication_slots")
            .ok()
            .filter(|lsn| *lsn > Lsn(0) && *lsn >= caught_up.min(target))
    })
    .context("the primary's slot did not advance to the remote_consistent_lsn")?;

    // The bucket against the local index, once both stopped changing.
    let storage = RemoteStorageConfig::parse(url, options)?.open()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (tenant_id, timeline_id): (TenantId, TimelineId) =
        (tenant.parse().map_err(anyhow::Error::msg)?, timeline.parse().map_err(|e| anyhow::anyhow!("{e}"))?);
    let timeline_dir = host.data_dir().join("pageserver/tenants").join(&tenant).join("timelines").join(&timeline);
    let index_path = layout::index_path(tenant_id, timeline_id, Generation::FIRST);
    let index = host.wait_for("the remote index to name the local index's layers", Duration::from_secs(120), || {
        let local = IndexFile::read(&timeline_dir).ok()?;
        let bytes = rt.block_on(storage.get_bytes(&index_path)).ok()?;
        let remote = RemoteIndex::from_json(&bytes, index_path.as_ref()).ok()?;
        let local_names: BTreeSet<String> = local.layers.iter().map(|(n, _)| n.file_name()).collect();
        let remote_names: BTreeSet<String> = remote.layers.keys().cloned().collect();
        (local_names == remote_names && remote.disk_consistent_lsn == local.disk_consistent_lsn).then_some(remote)
    })?;
    ensure!(index.disk_consistent_lsn >= target, "the remote index stops at {}", index.disk_consistent_lsn);
    ensure!(index.source.as_ref().is_some_and(|s| !s.conninfo.contains("password")), "source: {:?}", index.source);
    let work = tempfile::tempdir()?;
    for (name, layer) in &index.layers {
        let parsed = storage::repo::LayerName::parse(name).context("layer name")?;
        let path = layout::layer_path(tenant_id, timeline_id, &parsed, layer.generation);
        rt.block_on(storage.download_file(&path, &work.path().join(name), Some(Transferred { size: layer.size, crc32c: layer.crc32c })))
            .with_context(|| format!("layer {name}"))?;
    }
    // No object the index does not name: compaction's dropped layers were
    // deleted. Ingest and the layers worker go on (autovacuum writes WAL),
    // so a layer may be uploaded just before the index that names it: an
    // object is an orphan only if no index comes to name it.
    let orphans_now = || -> Result<Vec<String>> {
        let listed = rt.block_on(storage.list(&layout::timeline_prefix(tenant_id, timeline_id)))?;
        let bytes = rt.block_on(storage.get_bytes(&index_path))?;
        let index = RemoteIndex::from_json(&bytes, index_path.as_ref())?;
        let mut orphans = Vec::new();
        for object in &listed {
            match layout::parse_object_name(object.path.filename().unwrap_or("")) {
                Some(ObjectKind::Layer(name, _)) if index.layers.contains_key(&name.file_name()) => {}
                Some(ObjectKind::Index(Generation::FIRST)) => {}
                _ => orphans.push(object.path.to_string()),
            }
        }
        Ok(orphans)
    };
    if host
        .wait_for("every object to be named by the remote index", Duration::from_secs(60), || orphans_now().ok().filter(Vec::is_empty))
        .is_err()
    {
        anyhow::bail!("objects no index names: {:?}", orphans_now()?);
    }

    let row = host.sql(&format!(
        "SELECT uploaded_objects, deleted_objects, failed_tries, last_error, queued_objects \
         FROM pageserver.remote_timelines() WHERE timeline_id = '{timeline}'"
    ))?;
    let row = row.first().context("the timeline is not in pageserver.remote_timelines()")?;
    let count = |i: usize| row[i].as_deref().unwrap_or("0").parse::<i64>();
    ensure!(count(0)? >= index.layers.len() as i64, "uploaded_objects {row:?}");
    ensure!(count(1)? > 0, "compaction dropped layers, but none was deleted: {row:?}");
    ensure!(row[3].is_none(), "last_error: {row:?}");
    eprintln!(
        "{url}: remote_consistent_lsn {caught_up} (target {target}), {} layers in the index, {} objects uploaded, {} deleted",
        index.layers.len(),
        count(0)?,
        count(1)?
    );

    e2e::ensure_log_clean(&host)?;
    // Credentials stay hidden from non-superusers and out of the log.
    host.sql("CREATE ROLE reader LOGIN")?;
    let as_reader = |sql: &str| host.sql(&format!("SET ROLE reader; {sql}"));
    let visible = as_reader("SELECT count(*) FROM pg_settings WHERE name = 'pageserver.remote_storage_options'")?;
    ensure!(visible[0][0].as_deref() == Some("0"), "pg_settings shows the options to a non-superuser");
    ensure!(as_reader("SHOW pageserver.remote_storage_options").is_err(), "SHOW works for a non-superuser");
    ensure!(!host.log().contains(SECRET), "the secret is in the log");
    Ok(())
}

#[test]
fn a_local_directory_holds_the_timeline_and_follows_compaction() -> Result<()> {
    let bucket = tempfile::tempdir()?;
    pageserver_harness::as_postgres::chown_to_postgres(bucket.path())?;
    back_up_a_streaming_timeline(&format!("file://{}/bucket", bucket.path().display()), "")
}

#[test]
fn an_s3_server_holds_the_timeline_and_follows_compaction() -> Result<()> {
    let s3 = S3Server::start()?;
    s3.create_bucket("backups")?;
    let options = format!("endpoint={},region=us-east-1,access_key_id=test,secret_access_key={SECRET}", s3.endpoint());
    back_up_a_streaming_timeline(&s3.url("backups", "hosts/one"), &options)
}

#[test]
fn a_malformed_remote_storage_url_stops_the_host_at_start() -> Result<()> {
    for (url, options, expected) in [
        ("ftp://example/x", "", "unsupported scheme \"ftp\""),
        ("s3://bucket/p", "no_such_option=1", "is not an option of the S3 backend"),
        ("s3://bucket/p", &format!("secret_access_key={SECRET},region"), "is not key=value"),
    ] {
        let err = match e2e::start_host(false, &[("pageserver.remote_storage", url), ("pageserver.remote_storage_options", options)]) {
            Ok(_) => anyhow::bail!("the host started with remote_storage = {url:?}, options {options:?}"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(err.contains("invalid remote storage setting") && err.contains(expected), "{url}: {err}");
        ensure!(!err.contains(SECRET), "the error shows an option's value: {err}");
    }
    Ok(())
}

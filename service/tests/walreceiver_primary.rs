//! The tenant manager and its WAL receiver against a real PostgreSQL 15
//! primary, under plain `cargo test` (no host, no extension): a timeline is
//! created from the primary (checks, slot, `BASE_BACKUP` import), streams
//! its WAL, reconnects after the primary drops the replication connection
//! without losing or repeating a record (the relation sizes after both
//! batches say so, and ingest refuses an LSN that goes backwards), and every
//! task ends when the manager is stopped.
//!
//! Redo is never needed on this path (import writes images, the workload
//! changes no directory through redo), so the test's redo refuses every call:
//! a call would fail the test.

use anyhow::{bail, Context, Result};
use pageserver_harness::PgCluster;
use service::tenants::{HostSettings, Manager};
use service::timeline_handle::TimelineState;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use storage::key::RelTag;
use storage::lsn::Lsn;
use storage::repo::RepoConfig;

mod common;
use common::{wait_for, NoRedo};

fn lsn(primary: &PgCluster) -> Result<Lsn> {
    primary.sql_one("SELECT pg_current_wal_lsn()")?.context("no LSN")?.parse().map_err(|_| anyhow::anyhow!("bad LSN"))
}

#[test]
fn a_timeline_streams_from_a_real_primary_reconnects_and_stops() -> Result<()> {
    let primary = PgCluster::start_primary(&[])?;
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, v text)")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let data_dir = tempfile::tempdir()?;
    let conf = RepoConfig { fsync: false, checkpoint_distance: 4 << 20, ..RepoConfig::default() };
    let host = HostSettings {
        data_checksums: primary.sql_one("SHOW data_checksums")?.context("data_checksums")?,
        wal_log_hints: primary.sql_one("SHOW wal_log_hints")?.context("wal_log_hints")?,
        remote: None,
    };
    let manager = Manager::start(data_dir.path(), conf, Arc::new(NoRedo), host, runtime.handle().clone())?;
    let tenant = manager.create_tenant(None)?;
    let id = manager.create_timeline(tenant, None, &primary.connstr("postgres"), None, None)?;
    let handle = manager.timeline(tenant, id)?;
    wait_for("the import", || {
        let state = *handle.status.state.lock();
        if state == TimelineState::Broken {
            bail!("import failed: {:?}", handle.status.error.lock());
        }
        Ok(state == TimelineState::Active)
    })?;

    let db: u32 = primary.sql_one("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.context("db")?.parse()?;
    let node: u32 = primary.sql_one("SELECT pg_relation_filenode('t')")?.context("filenode")?.parse()?;
    let rel = RelTag::new(1663, db, node, 0);
    let blocks =
        |primary: &PgCluster| -> Result<u32> { Ok(primary.sql_one("SELECT pg_relation_size('t') / 8192")?.context("size")?.parse()?) };
    let ingested = |target: Lsn| {
        let timeline = handle.timeline.clone();
        move || Ok(timeline.last_record_lsn() >= target)
    };

    primary.sql("INSERT INTO t SELECT i, repeat('x', 200) FROM generate_series(1, 20000) i")?;
    let first = lsn(&primary)?;
    wait_for("the first batch", ingested(first))?;
    let first_blocks = blocks(&primary)?;
    assert_eq!(handle.timeline.get_rel_size(rel, first)?, Some(first_blocks));
    assert!(handle.status.receiver.connected.load(Ordering::Relaxed));

    // The primary drops the replication connection: the receiver reconnects
    // through the slot and goes on from where ingest is.
    let killed = primary.sql_one("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication")?;
    assert_eq!(killed.as_deref(), Some("1"), "no walsender to terminate");
    primary.sql("INSERT INTO t SELECT i, repeat('y', 200) FROM generate_series(20001, 40000) i")?;
    let second = lsn(&primary)?;
    wait_for("the second batch after the reconnect", ingested(second))?;
    let second_blocks = blocks(&primary)?;
    assert!(second_blocks > first_blocks);
    assert_eq!(handle.timeline.get_rel_size(rel, second)?, Some(second_blocks));
    // The history before the reconnect is unchanged.
    assert_eq!(handle.timeline.get_rel_size(rel, first)?, Some(first_blocks));
    assert!(handle.status.receiver.connected.load(Ordering::Relaxed), "not reconnected");

    // Stopping ends every task of the manager (the receiver included).
    manager.stop();
    assert_eq!(manager.wait_tasks(Duration::from_secs(10)), 0, "tasks still running after stop");
    Ok(())
}

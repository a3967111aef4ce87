//! SQL functions of schema `pageserver` (management and inspection).

use pgrx::prelude::*;
use shared_mem::process_exists;
use shared_mem::{WorkerKind, WorkerState};

/// One row per background worker of the page server: its kind (`main`,
/// `redo`, `layers`, `backup`), its number among workers of that kind, pid,
/// state, last heartbeat, how often it was restarted (crash restarts of
/// the host included), for redo workers how many redo requests it has
/// served since the host started, and its activity: what it says it is doing
/// now (e.g. `compacting tenant … timeline …` for the layers worker). A
/// worker whose process is gone without saying so is shown as `dead`.
#[pg_extern(parallel_safe)]
#[allow(clippy::type_complexity)] // pgrx derives the SQL columns from this type
fn status() -> TableIterator<
    'static,
    (
        name!(kind, String),
        name!(number, i32),
        name!(pid, Option<i32>),
        name!(state, String),
        name!(last_heartbeat, Option<TimestampWithTimeZone>),
        name!(restarts, i64),
        name!(requests, Option<i64>),
        name!(activity, String),
    ),
> {
    let state = crate::shmem::state();
    let rows: Vec<_> = state
        .workers
        .statuses()
        .into_iter()
        .map(|w| {
            let alive = w.pid > 0 && process_exists(w.pid);
            let shown_state = match w.state {
                WorkerState::Starting | WorkerState::Running | WorkerState::Stopping if !alive => "dead",
                s => s.name(),
            };
            (
                w.kind.name().to_string(),
                w.number as i32,
                (w.pid > 0).then_some(w.pid),
                shown_state.to_string(),
                (w.heartbeat_us > 0).then(|| unix_us_to_timestamptz(w.heartbeat_us)),
                w.restarts as i64,
                (w.kind == WorkerKind::Redo).then(|| state.redo.served_by(w.number as usize) as i64),
                if alive { w.activity } else { String::new() },
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// One row per redo worker (`pageserver.redo_workers`): its `number`,
/// `pid` (NULL when not running), and since the host started (over the
/// worker's restarts): `requests` (round trips through the redo queue; a
/// batch is one), `pages` (pages rebuilt, a batch counting its pages),
/// `records` (WAL records applied), `failed` (pages whose redo failed or
/// was rejected) and `busy_ms` (time spent serving them). The counters are
/// kept in shared memory by the workers themselves.
#[pg_extern(parallel_safe)]
#[allow(clippy::type_complexity)] // pgrx derives the SQL columns from this type
fn stat_redo() -> TableIterator<
    'static,
    (
        name!(number, i32),
        name!(pid, Option<i32>),
        name!(requests, i64),
        name!(pages, i64),
        name!(records, i64),
        name!(failed, i64),
        name!(busy_ms, f64),
    ),
> {
    let state = crate::shmem::state();
    let rows: Vec<_> = state
        .workers
        .statuses()
        .into_iter()
        .filter(|w| w.kind == WorkerKind::Redo)
        .map(|w| {
            let stats = state.redo.worker_stats(w.number as usize);
            let alive = w.pid > 0 && process_exists(w.pid);
            (
                w.number as i32,
                alive.then_some(w.pid),
                stats.requests as i64,
                stats.pages as i64,
                stats.records as i64,
                stats.failed as i64,
                stats.busy_us as f64 / 1000.0,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// One row per timeline the backup worker copies to object storage
/// (`pageserver.remote_storage`; no rows without it): its
/// `remote_consistent_lsn` (the `disk_consistent_lsn` of the newest index
/// durable in the bucket, also what its primary is told is flushed), the
/// objects and bytes waiting to go up now (layers plus the index), what was
/// uploaded since the worker started and at what rate while uploads were in
/// flight, the layer objects deleted after a newer index stopped naming
/// them, when the last index became durable, and failed tries with the last
/// error (empty once a try succeeds; tries repeat with a growing backoff).
#[pg_extern(parallel_safe)]
#[allow(clippy::type_complexity)]
fn remote_timelines() -> TableIterator<
    'static,
    (
        name!(tenant_id, String),
        name!(timeline_id, String),
        name!(remote_consistent_lsn, Option<String>),
        name!(queued_objects, i64),
        name!(queued_bytes, i64),
        name!(uploaded_objects, i64),
        name!(uploaded_bytes, i64),
        name!(upload_mb_s, Option<f64>),
        name!(deleted_objects, i64),
        name!(last_index_upload, Option<TimestampWithTimeZone>),
        name!(failed_tries, i64),
        name!(last_error, Option<String>),
    ),
> {
    let table = &crate::shmem::state().remote;
    let rows: Vec<_> = if !table.enabled() {
        Vec::new()
    } else {
        table
            .statuses()
            .into_iter()
            .map(|r| {
                (
                    format!("{:032x}", r.tenant),
                    format!("{:032x}", r.timeline),
                    (r.remote_consistent_lsn != 0).then(|| storage::lsn::Lsn(r.remote_consistent_lsn).to_string()),
                    r.queued_objects as i64,
                    r.queued_bytes as i64,
                    r.uploaded_objects as i64,
                    r.uploaded_bytes as i64,
                    (r.upload_micros > 0).then(|| r.uploaded_bytes as f64 / r.upload_micros as f64),
                    r.deleted_objects as i64,
                    (r.last_index_unix_ms > 0).then(|| unix_us_to_timestamptz(r.last_index_unix_ms as i64 * 1000)),
                    r.errors as i64,
                    (!r.last_error.is_empty()).then_some(r.last_error),
                )
            })
            .collect()
    };
    TableIterator::new(rows)
}

pub(crate) fn unix_us_to_timestamptz(us: i64) -> TimestampWithTimeZone {
    // PostgreSQL counts from 2000-01-01; Unix from 1970-01-01.
    const PG_EPOCH_OFFSET_US: i64 = 946_684_800 * 1_000_000;
    TimestampWithTimeZone::try_from(us - PG_EPOCH_OFFSET_US).expect("a heartbeat is a valid timestamp")
}

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

fn unix_us_to_timestamptz(us: i64) -> TimestampWithTimeZone {
    // PostgreSQL counts from 2000-01-01; Unix from 1970-01-01.
    const PG_EPOCH_OFFSET_US: i64 = 946_684_800 * 1_000_000;
    TimestampWithTimeZone::try_from(us - PG_EPOCH_OFFSET_US).expect("a heartbeat is a valid timestamp")
}

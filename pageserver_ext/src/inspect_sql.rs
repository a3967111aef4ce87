//! SQL functions of schema `pageserver` for looking into a timeline: its
//! layer files, a checkpoint on demand, the LSN of a point in time, and
//! its past:
//! a page, a relation fork's size and the list of relation forks, as of
//! any LSN the timeline retains (from its GC cutoff, or its branch point,
//! up to what it has ingested). Relations are named by the primary's
//! oids (tablespace, database, relfilenode: on the primary,
//! `pg_relation_filenode('t')` and `pg_database.oid`), since the host's
//! catalog is not the primary's. The main worker reads (module
//! `service::inspect`); each call is one command through the queue.

use crate::mgmt_sql::{call, raise};
use pgrx::prelude::*;
use service::inspect::LsnForTimeRow;
use service::mgmt::{Command, RelationArg, Reply};

fn relation(
    tenant_id: String,
    timeline_id: String,
    spcnode: pg_sys::Oid,
    dbnode: pg_sys::Oid,
    relnode: pg_sys::Oid,
    fork: String,
    lsn: Option<String>,
) -> RelationArg {
    RelationArg {
        tenant: tenant_id,
        timeline: timeline_id,
        spc_node: spcnode.into(),
        db_node: dbnode.into(),
        rel_node: relnode.into(),
        fork,
        lsn,
    }
}

/// The 8 KiB page `blkno` of fork `fork` (`main`, `fsm`, `vm` or `init`)
/// of relation `spcnode`/`dbnode`/`relnode` as it was at `lsn` (text, e.g.
/// `'0/3000060'`; default: the last ingested LSN), with its checksum as
/// the primary would have written it. Feed it to `pageinspect`
/// (`page_header`, `heap_page_items`, `bt_page_items`, ...) to see a page
/// as it was at any retained LSN. `22023` for a block past the fork's end,
/// an unknown fork name or an LSN outside the retained history; `42704`
/// for a relation fork that did not exist at that LSN.
#[pg_extern]
#[allow(clippy::too_many_arguments)]
fn get_page(
    tenant_id: String,
    timeline_id: String,
    spcnode: pg_sys::Oid,
    dbnode: pg_sys::Oid,
    relnode: pg_sys::Oid,
    fork: String,
    blkno: i64,
    lsn: default!(Option<String>, "NULL"),
) -> Vec<u8> {
    let Some(blkno) = u32::try_from(blkno).ok().filter(|b| *b != u32::MAX) else {
        raise("22023", &format!("invalid block number {blkno}: expected 0 to 4294967294"))
    };
    let relation = relation(tenant_id, timeline_id, spcnode, dbnode, relnode, fork, lsn);
    match call(&Command::GetPage { relation, blkno }) {
        Reply::Page { page, .. } => page,
        other => error!("unexpected reply from the main worker: {other:?}"),
    }
}

/// The size in blocks of fork `fork` of relation `spcnode`/`dbnode`/`relnode`
/// at `lsn` (default: the last ingested LSN). `42704` if the fork did not
/// exist then; `22023` for an LSN outside the retained history.
#[pg_extern]
fn rel_size(
    tenant_id: String,
    timeline_id: String,
    spcnode: pg_sys::Oid,
    dbnode: pg_sys::Oid,
    relnode: pg_sys::Oid,
    fork: default!(String, "'main'"),
    lsn: default!(Option<String>, "NULL"),
) -> i64 {
    let relation = relation(tenant_id, timeline_id, spcnode, dbnode, relnode, fork, lsn);
    match call(&Command::RelSize { relation }) {
        Reply::Count { n, .. } => n as i64,
        other => error!("unexpected reply from the main worker: {other:?}"),
    }
}

/// Every relation fork of every database of the timeline at `lsn`
/// (default: the last ingested LSN), with its size in blocks.
#[pg_extern]
fn list_relations(
    tenant_id: String,
    timeline_id: String,
    lsn: default!(Option<String>, "NULL"),
) -> TableIterator<
    'static,
    (name!(spcnode, pg_sys::Oid), name!(dbnode, pg_sys::Oid), name!(relnode, pg_sys::Oid), name!(fork, String), name!(blocks, i64)),
> {
    let mut rows = Vec::new();
    let mut after = None;
    // Later pages read at the LSN the first one was read at.
    let mut lsn = lsn;
    loop {
        let command = Command::ListRelations { tenant: tenant_id.clone(), timeline: timeline_id.clone(), lsn: lsn.clone(), after };
        let Reply::Relations { rows: page, lsn: read_at } = call(&command) else { error!("unexpected reply from the main worker") };
        lsn = Some(read_at);
        let Some(last) = page.last() else { break };
        after = Some((last.spc_node, last.db_node, last.rel_node, last.fork));
        let full = page.len() == service::inspect::RELATIONS_PER_PAGE;
        rows.extend(page.into_iter().map(|r| {
            (
                pg_sys::Oid::from(r.spc_node),
                pg_sys::Oid::from(r.db_node),
                pg_sys::Oid::from(r.rel_node),
                service::inspect::fork_name(r.fork).to_string(),
                i64::from(r.blocks),
            )
        }));
        if !full {
            break;
        }
    }
    TableIterator::new(rows)
}

/// The timeline's own layer files (its ancestors' are theirs): `file_name`,
/// `kind` (`image`, `delta L0` flushed from memory, `delta L1` written by
/// compaction), the key range (`key_start` inclusive, `key_end` exclusive,
/// as hexadecimal keys), the LSN range (`lsn_start` inclusive, `lsn_end`
/// exclusive; an image at L has [L, L+1)), `bytes` on disk, and with
/// object storage `remote`: whether the durable remote index names the
/// file (as the backup worker last recorded it; NULL without object storage).
/// Its C symbol is `layers_with_remote_wrapper`: `layers_wrapper` keeps the
/// 0.1.0 columns (below).
#[pg_extern(name = "layers")]
#[allow(clippy::type_complexity)] // pgrx derives the SQL columns from this type
fn layers_with_remote(
    tenant_id: String,
    timeline_id: String,
) -> TableIterator<
    'static,
    (
        name!(file_name, String),
        name!(kind, String),
        name!(key_start, String),
        name!(key_end, String),
        name!(lsn_start, String),
        name!(lsn_end, String),
        name!(bytes, i64),
        name!(remote, Option<bool>),
    ),
> {
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let command = Command::ListLayers { tenant: tenant_id.clone(), timeline: timeline_id.clone(), after: after.clone() };
        let Reply::Layers(page) = call(&command) else { error!("unexpected reply from the main worker") };
        let Some(last) = page.last() else { break };
        after = Some(last.file_name.clone());
        let full = page.len() == service::inspect::LAYERS_PER_PAGE;
        rows.extend(
            page.into_iter().map(|l| (l.file_name, l.kind, l.key_start, l.key_end, l.lsn_start, l.lsn_end, l.bytes as i64, l.remote)),
        );
        if !full {
            break;
        }
    }
    TableIterator::new(rows)
}

/// `pageserver.layers` as 0.1.0 declared it (without `remote`), so that
/// a host restarted on this library lists layers before `ALTER EXTENSION
/// pageserver_ext UPDATE` replaces the declaration. No SQL of its own.
#[pg_extern(sql = false)]
#[allow(clippy::type_complexity)] // pgrx derives the SQL columns from this type
fn layers(
    tenant_id: String,
    timeline_id: String,
) -> TableIterator<
    'static,
    (
        name!(file_name, String),
        name!(kind, String),
        name!(key_start, String),
        name!(key_end, String),
        name!(lsn_start, String),
        name!(lsn_end, String),
        name!(bytes, i64),
    ),
> {
    TableIterator::new(layers_with_remote(tenant_id, timeline_id).map(|(f, k, ks, ke, ls, le, b, _)| (f, k, ks, ke, ls, le, b)))
}

/// How often `checkpoint` looks at the flush, and says how far it is.
const CHECKPOINT_POLL: std::time::Duration = std::time::Duration::from_millis(50);
const CHECKPOINT_NOTICE: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes everything the timeline has ingested to layer files now (its
/// in-memory layer is frozen and flushed) and returns the timeline's
/// `disk_consistent_lsn`, at least the last ingested LSN at the call:
/// after a host crash nothing up to there is streamed again. Waits for the
/// flush (a NOTICE every 5 s, with the timeline's last error if a flush
/// fails; `statement_timeout` and a cancel end the wait).
#[pg_extern]
fn checkpoint(tenant_id: String, timeline_id: String) -> String {
    let step = |until: Option<String>| match call(&Command::Checkpoint { tenant: tenant_id.clone(), timeline: timeline_id.clone(), until })
    {
        Reply::Checkpoint { target, disk_consistent_lsn, error } => (target, disk_consistent_lsn, error),
        other => error!("unexpected reply from the main worker: {other:?}"),
    };
    let parse = |text: &str| text.parse::<storage::lsn::Lsn>().unwrap_or_else(|_| error!("bad LSN {text:?} from the main worker"));
    let (target, mut disk, _) = step(None);
    let mut last_notice = std::time::Instant::now();
    while parse(&disk) < parse(&target) {
        std::thread::sleep(CHECKPOINT_POLL);
        pg_sys::check_for_interrupts!();
        let (_, now, error) = step(Some(target.clone()));
        disk = now;
        if last_notice.elapsed() >= CHECKPOINT_NOTICE {
            notice!(
                "checkpoint of timeline {timeline_id}: on disk up to {disk} of {target}{}",
                error.map(|e| format!("; last error: {e}")).unwrap_or_default()
            );
            last_notice = std::time::Instant::now();
        }
    }
    disk
}

/// How long `lsn_for_time` and `branch_timeline(at_time => ...)` wait for a
/// streaming timeline to show that it holds everything its primary wrote
/// up to the time.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// The LSN of `at` on a timeline (see `lsn_for_time`), once settled.
pub(crate) fn resolve_time(tenant_id: &str, timeline_id: &str, at: TimestampWithTimeZone) -> LsnForTimeRow {
    let time = pg_sys::TimestampTz::from(at);
    let started = std::time::Instant::now();
    let mut last_notice = started;
    loop {
        let command = Command::LsnForTime { tenant: tenant_id.to_string(), timeline: timeline_id.to_string(), time };
        let row = match call(&command) {
            Reply::LsnForTime(row) => row,
            other => error!("unexpected reply from the main worker: {other:?}"),
        };
        if row.settled {
            return row;
        }
        if started.elapsed() >= SETTLE_TIMEOUT {
            raise(
                "55000",
                &format!(
                    "timeline {timeline_id} has not yet shown that it holds the WAL its primary wrote up to that time \
                     (see pageserver.stat_wal_receiver)"
                ),
            );
        }
        if last_notice.elapsed() >= std::time::Duration::from_secs(5) {
            notice!("waiting for timeline {timeline_id} to catch up with its primary up to that time");
            last_notice = std::time::Instant::now();
        }
        std::thread::sleep(SETTLE_POLL);
        pg_sys::check_for_interrupts!();
    }
}

/// The LSN that a branch or `fullbackup` needs to show the database as of
/// time `at`: every transaction the primary committed at or before `at`,
/// none after (PostgreSQL's `recovery_target_time` rule, from the commit
/// times in the WAL). `position` says where `at` falls:
/// `in_history` (the answer is the last commit at or before `at`:
/// `commit_lsn`, `commit_time`), `after_last_commit` (the last ingested
/// LSN; on a streaming timeline this waits up to 30 s until the timeline
/// is known to hold what its primary wrote up to `at`), `before_history`
/// (before the oldest retained LSN, or before the first commit ingested:
/// the commits of the imported base backup carry no time) or `no_commits`.
/// `22023` for a time in the future; `42704` for an unknown timeline.
#[pg_extern]
fn lsn_for_time(
    tenant_id: String,
    timeline_id: String,
    at: TimestampWithTimeZone,
) -> TableIterator<
    'static,
    (name!(lsn, String), name!(position, String), name!(commit_lsn, Option<String>), name!(commit_time, Option<TimestampWithTimeZone>)),
> {
    let row = resolve_time(&tenant_id, &timeline_id, at);
    let commit_time =
        row.commit_time.map(|t| TimestampWithTimeZone::try_from(t).unwrap_or_else(|e| error!("commit time {t} out of range: {e:?}")));
    TableIterator::new(vec![(row.lsn, row.position, row.commit_lsn, commit_time)])
}

/// The timeline's row of `pageserver.timelines()`: `22023` for a malformed
/// id, `42704` for an unknown timeline.
fn timeline_row(tenant_id: &str, timeline_id: &str) -> service::tenants::TimelineRow {
    for (what, id) in [("tenant id", tenant_id), ("timeline id", timeline_id)] {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            raise("22023", &format!("invalid {what} \"{id}\": expected 32 hexadecimal digits"));
        }
    }
    let Reply::Timelines(rows) = call(&Command::ListTimelines) else { error!("unexpected reply from the main worker") };
    let row = rows.into_iter().find(|r| r.tenant.eq_ignore_ascii_case(tenant_id) && r.timeline.eq_ignore_ascii_case(timeline_id));
    row.unwrap_or_else(|| raise("42704", &format!("timeline {timeline_id} not found in tenant {tenant_id}")))
}

/// Asks the layers worker for a pass now and waits until a whole pass has
/// run after the request; returns what it did on the timeline.
fn layer_pass(tenant_id: &str, timeline_id: &str, force: bool) -> String {
    use service::timeline_handle::TimelineState;
    let row = timeline_row(tenant_id, timeline_id);
    if !matches!(row.state, TimelineState::Active | TimelineState::Branch) {
        raise(
            "55000",
            &format!("timeline {timeline_id} is {}: the layers worker works only on active timelines and branches", row.state.as_str()),
        );
    }
    let requests = &crate::shmem::state().layer_pass_requests;
    let request = requests.request(force);
    let mut last_notice = std::time::Instant::now();
    while !requests.served(request) {
        std::thread::sleep(SETTLE_POLL);
        pg_sys::check_for_interrupts!();
        if last_notice.elapsed() >= std::time::Duration::from_secs(5) {
            notice!("waiting for a pass of the layers worker over timeline {timeline_id} (see pageserver.status())");
            last_notice = std::time::Instant::now();
        }
    }
    let row = timeline_row(tenant_id, timeline_id);
    row.last_compaction.unwrap_or_else(|| "the layers worker has not reported a pass on this timeline".into())
}

/// Compacts a timeline now: the layers worker runs a pass at once (over
/// every timeline, as its periodic pass does) that merges the timeline's
/// L0 layers into L1 layers however few there are, writes image layers
/// where the delta depth calls for them, and runs GC. Waits for the pass
/// (a NOTICE every 5 s; `statement_timeout` and a cancel end the wait) and
/// returns what it did on the timeline, as `last_compaction` of
/// `pageserver.timelines()` shows it. `55000` for a timeline that is not
/// active or a branch.
#[pg_extern]
fn compact(tenant_id: String, timeline_id: String) -> String {
    layer_pass(&tenant_id, &timeline_id, true)
}

/// Runs garbage collection now: the layers worker runs its usual pass at
/// once (compaction as its thresholds call for it, then GC, which removes
/// the layers that images cover below the GC cutoff and the branch
/// points). Waits for it and returns what it did on the timeline, as
/// `compact` does.
#[pg_extern]
fn gc(tenant_id: String, timeline_id: String) -> String {
    layer_pass(&tenant_id, &timeline_id, false)
}

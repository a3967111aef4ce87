//! SQL functions of schema `pageserver` that manage tenants and timelines.
//! Each sends a command through the shared-memory command queue to the main
//! worker (see `mgmt`) and waits for the reply; a query cancel ends the wait.

use pgrx::prelude::*;
use service::mgmt::{Command, Reply};
use service::tenants::{DetachStep, DropStep, DroppedTimeline, TimelineRow};
use service::timeline_handle::TimelineState;
use std::time::{Duration, Instant};

/// How long a command may wait for the main worker.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How often `create_timeline` reports import progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

pub(crate) fn call(command: &Command) -> Reply {
    let request = serde_json::to_vec(command).expect("commands serialize");
    let queue = &crate::shmem::state().commands;
    // SAFETY: reading a sig_atomic_t flag that signal handlers set.
    let result = queue.call(&request, COMMAND_TIMEOUT, &mut || unsafe { pg_sys::InterruptPending != 0 });
    pg_sys::check_for_interrupts!();
    let reply = result.unwrap_or_else(|e| error!("{e}"));
    match serde_json::from_slice::<Reply>(&reply) {
        Ok(Reply::Error { sqlstate, message }) => raise(&sqlstate, &message),
        Ok(reply) => reply,
        Err(e) => error!("malformed reply from the main worker: {e}"),
    }
}

/// Raises an ERROR with the SQLSTATE the main worker chose (the service's
/// one mapping from error kinds to codes, `service::error`).
pub(crate) fn raise(sqlstate: &str, message: &str) -> ! {
    ereport!(ERROR, PgSqlErrorCode::from(make_sqlstate(sqlstate)), message);
}

/// `MAKE_SQLSTATE`: PostgreSQL's integer form of a five-character SQLSTATE
/// (six bits per character); anything that is not one is an internal error.
fn make_sqlstate(code: &str) -> i32 {
    let bytes = code.as_bytes();
    if bytes.len() != 5 || !bytes.iter().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()) {
        return make_sqlstate("XX000");
    }
    bytes.iter().enumerate().map(|(i, b)| ((i32::from(*b) - i32::from(b'0')) & 0x3F) << (6 * i)).sum()
}

fn expect_id(reply: Reply) -> String {
    match reply {
        Reply::Id(id) => id,
        other => error!("unexpected reply from the main worker: {other:?}"),
    }
}

/// Creates a tenant (an empty repository) and returns its id: `tenant_id`
/// if given (32 hexadecimal digits), a random one otherwise.
#[pg_extern]
fn create_tenant(tenant_id: default!(Option<String>, "NULL")) -> String {
    expect_id(call(&Command::CreateTenant { tenant: tenant_id }))
}

/// How long an attach may take to download (a query cancel ends it sooner).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Attaches a tenant from object storage (`pageserver.remote_storage`) to
/// this host, which must not have it: the backup worker downloads every
/// timeline's remote index and the layer files it names (each checked by
/// size and CRC32C; its activity in `pageserver.status()` shows progress),
/// writes the tenant directory and moves it into place whole; the main
/// worker then loads it, and each timeline with a WAL source streams on
/// from the index's `disk_consistent_lsn` through the slot it names (the
/// primary kept that WAL: it was told that LSN as flushed).
/// `primary_conninfo`, if given, replaces the stored connection string,
/// which never holds a password: a primary that wants one gets it from
/// this argument or from the host's password file (`PGPASSFILE`, else
/// `~/.pgpass` of the server's OS user, with database `replication`). Returns the timelines attached, how many
/// stream, and the layer files and bytes downloaded.
#[pg_extern]
fn attach_tenant(
    tenant_id: String,
    primary_conninfo: default!(Option<String>, "NULL"),
) -> TableIterator<'static, (name!(timelines, i32), name!(streaming, i32), name!(layer_files, i64), name!(downloaded_bytes, i64))> {
    if crate::guc::string(&crate::guc::REMOTE_STORAGE).is_empty() {
        raise("55000", "pageserver.remote_storage is not set: there is no object storage to attach from");
    }
    let queue = &crate::shmem::state().backup_commands;
    // SAFETY: reading a sig_atomic_t flag that signal handlers set.
    let result = service::attach::call_download(queue, &tenant_id, primary_conninfo.as_deref(), ATTACH_TIMEOUT, &mut || unsafe {
        pg_sys::InterruptPending != 0
    });
    pg_sys::check_for_interrupts!();
    let report = result.unwrap_or_else(|(sqlstate, message)| raise(&sqlstate, &message));
    let Reply::Attached { timelines, streaming } = call(&Command::AttachTenant { tenant: tenant_id }) else {
        error!("unexpected reply from the main worker")
    };
    TableIterator::once((timelines as i32, streaming as i32, report.layers as i64, report.bytes as i64))
}

/// How often `detach_tenant` asks the main worker how far the detach is.
const DETACH_POLL: Duration = Duration::from_millis(200);

/// Detaches a tenant from this host, handing it over to object storage
/// (`pageserver.remote_storage`): stops its WAL receivers, refuses new
/// timelines, branches and layer work, waits until every timeline's
/// in-memory layers are on disk and a backup pass has uploaded each one's
/// layers and index (NOTICEs every few seconds say what it waits for, with
/// the bytes still queued and the backup's last error), then removes the
/// local copy. Returns each timeline with its `remote_consistent_lsn`: the
/// bucket holds it whole up to there, and `attach_tenant` on any host
/// resumes it from that LSN. The primaries' replication slots stay and
/// keep the WAL from that LSN on; drop them on the primary if the tenant
/// is not coming back. If the call is cancelled or fails before the end,
/// the tenant resumes streaming on this host and nothing is lost.
#[pg_extern]
fn detach_tenant(tenant_id: String) -> TableIterator<'static, (name!(timeline_id, String), name!(remote_consistent_lsn, String))> {
    if crate::guc::string(&crate::guc::REMOTE_STORAGE).is_empty() {
        raise("55000", "pageserver.remote_storage is not set: a detached tenant would be lost; there is nowhere to hand it over to");
    }
    // Ending early (an ERROR or a cancel) abandons the detach: the tenant
    // streams again (a host restart resumes it too).
    let mut guard = UndoUnlessDone { undo: Some(Command::ResumeTenant { tenant: tenant_id.clone() }) };
    let mut last_notice: Option<(Instant, String)> = None;
    loop {
        match call(&Command::DetachTenant { tenant: tenant_id.clone() }) {
            Reply::Detach(DetachStep::Detached(timelines)) => {
                guard.undo = None;
                let rows: Vec<_> = timelines.into_iter().map(|t| (t.timeline, t.remote_consistent_lsn)).collect();
                return TableIterator::new(rows);
            }
            Reply::Detach(DetachStep::Waiting(wait)) => {
                let due = last_notice.as_ref().is_none_or(|(at, what)| at.elapsed() >= PROGRESS_INTERVAL || *what != wait.waiting_for);
                if due {
                    let mut text = format!("detaching tenant {tenant_id}: waiting for {}", wait.waiting_for);
                    if wait.queued_bytes > 0 {
                        text.push_str(&format!(" ({} MiB queued)", wait.queued_bytes.div_ceil(1 << 20)));
                    }
                    if let Some(e) = &wait.last_error {
                        text.push_str(&format!("; last error: {e}"));
                    }
                    notice!("{text}");
                    last_notice = Some((Instant::now(), wait.waiting_for));
                }
            }
            other => error!("unexpected reply from the main worker: {other:?}"),
        }
        std::thread::sleep(DETACH_POLL);
        pg_sys::check_for_interrupts!();
    }
}

/// How long a drop waits for the backup worker to delete the timeline's
/// objects before it returns (the deletion goes on in the background).
const REMOTE_REMOVAL_WAIT: Duration = Duration::from_secs(30);

/// Sends `command` when dropped unless disarmed: an abandoned step-by-step
/// operation (an ERROR or a cancel unwinding through the SQL function)
/// leaves the object as it was. Best effort, without PostgreSQL calls.
struct UndoUnlessDone {
    undo: Option<Command>,
}

impl Drop for UndoUnlessDone {
    fn drop(&mut self) {
        if let Some(command) = self.undo.take() {
            let request = serde_json::to_vec(&command).expect("commands serialize");
            let _ = crate::shmem::state().commands.call(&request, COMMAND_TIMEOUT, &mut || false);
        }
    }
}

/// Drops one timeline step by step; NOTICEs say what it waits for and what
/// became of the slot and the remote copy.
fn drop_one_timeline(tenant_id: &str, timeline_id: &str) -> DroppedTimeline {
    let mut guard =
        UndoUnlessDone { undo: Some(Command::ResumeTimeline { tenant: tenant_id.to_string(), timeline: timeline_id.to_string() }) };
    let mut last_notice: Option<(Instant, String)> = None;
    let dropped = loop {
        match call(&Command::DropTimeline { tenant: tenant_id.to_string(), timeline: timeline_id.to_string() }) {
            Reply::Drop(DropStep::Dropped(dropped)) => break dropped,
            Reply::Drop(DropStep::Waiting(what)) => {
                if last_notice.as_ref().is_none_or(|(at, seen)| at.elapsed() >= PROGRESS_INTERVAL || *seen != what) {
                    notice!("dropping timeline {timeline_id}: waiting for {what}");
                    last_notice = Some((Instant::now(), what));
                }
            }
            other => error!("unexpected reply from the main worker: {other:?}"),
        }
        std::thread::sleep(DETACH_POLL);
        pg_sys::check_for_interrupts!();
    };
    guard.undo = None;
    if let (Some(slot), Some(why)) = (&dropped.slot, &dropped.slot_error) {
        notice!(
            "timeline {timeline_id} is dropped, but its replication slot \"{slot}\" on the primary was not: {why}; \
             drop it there (SELECT pg_drop_replication_slot('{slot}')) or it keeps WAL forever"
        );
    }
    if dropped.remote_pending {
        let started = Instant::now();
        let pending = || match call(&Command::RemovalPending { tenant: tenant_id.to_string(), timeline: timeline_id.to_string() }) {
            Reply::Pending(pending) => pending,
            other => error!("unexpected reply from the main worker: {other:?}"),
        };
        while pending() {
            if started.elapsed() >= REMOTE_REMOVAL_WAIT {
                notice!(
                    "timeline {timeline_id}: the backup worker has not yet deleted its objects from object storage; \
                     it goes on in the background (see the backup worker's log)"
                );
                return dropped;
            }
            std::thread::sleep(DETACH_POLL);
            pg_sys::check_for_interrupts!();
        }
    }
    DroppedTimeline { remote_pending: false, ..dropped }
}

/// A row of `drop_timeline` and `drop_tenant`: timeline, slot, slot dropped, remote copy deleted.
type DroppedRow = (String, Option<String>, bool, Option<bool>);

fn dropped_row(timeline_id: String, dropped: DroppedTimeline, remote: bool) -> DroppedRow {
    (timeline_id, dropped.slot, dropped.slot_dropped, remote.then_some(!dropped.remote_pending))
}

fn remote_storage_set() -> bool {
    !crate::guc::string(&crate::guc::REMOTE_STORAGE).is_empty()
}

/// Drops a timeline: stops its WAL receiver, deletes its layer files, drops
/// its replication slot on the primary (a NOTICE says so when the primary
/// cannot be reached: the slot then keeps WAL until dropped there) and,
/// with object storage, has the backup worker delete its objects (waiting
/// up to 30 s). Refused with `2BP01` while it has branches (drop them
/// first) and `55000` while it imports its base backup or its tenant is
/// being detached. Cancelled before the files are deleted, it leaves the
/// timeline streaming. Returns `timeline_id`, `slot_name` (NULL for a
/// branch), `slot_dropped`, `remote_deleted` (NULL without object storage).
#[pg_extern]
fn drop_timeline(
    tenant_id: String,
    timeline_id: String,
) -> TableIterator<
    'static,
    (name!(timeline_id, String), name!(slot_name, Option<String>), name!(slot_dropped, bool), name!(remote_deleted, Option<bool>)),
> {
    let dropped = drop_one_timeline(&tenant_id, &timeline_id);
    TableIterator::new(vec![dropped_row(timeline_id, dropped, remote_storage_set())])
}

/// Drops a tenant. With timelines left it is refused (`2BP01`) unless
/// `cascade`: then every timeline is dropped first, branches before their
/// parents, each as `drop_timeline` does. Returns a row per dropped
/// timeline, as `drop_timeline`.
#[pg_extern]
fn drop_tenant(
    tenant_id: String,
    cascade: default!(bool, false),
) -> TableIterator<
    'static,
    (name!(timeline_id, String), name!(slot_name, Option<String>), name!(slot_dropped, bool), name!(remote_deleted, Option<bool>)),
> {
    let mut rows = Vec::new();
    if cascade {
        loop {
            let timelines: Vec<TimelineRow> = match call(&Command::ListTimelines) {
                Reply::Timelines(rows) => rows.into_iter().filter(|r| r.tenant == tenant_id).collect(),
                other => error!("unexpected reply from the main worker: {other:?}"),
            };
            // A leaf: no other timeline branches from it.
            let Some(leaf) = timelines.iter().find(|t| !timelines.iter().any(|c| c.ancestor.as_deref() == Some(t.timeline.as_str())))
            else {
                break;
            };
            let id = leaf.timeline.clone();
            let dropped = drop_one_timeline(&tenant_id, &id);
            rows.push(dropped_row(id, dropped, remote_storage_set()));
        }
    }
    match call(&Command::DropTenant { tenant: tenant_id }) {
        Reply::Done => TableIterator::new(rows),
        other => error!("unexpected reply from the main worker: {other:?}"),
    }
}

/// Creates a timeline of `tenant_id` fed by the stock PostgreSQL 15 primary
/// at `primary_conninfo` (a libpq connection string for a user with the
/// REPLICATION attribute; without a password in it, the host's password
/// file is read as libpq reads it, with database `replication`): checks the primary's system and settings,
/// creates the physical replication slot `slot_name` (default
/// `pageserver_<first 16 digits of the timeline id>`), imports a base
/// backup (progress is reported as NOTICEs and in `pageserver.timelines()`),
/// then streams WAL from the slot. Returns the timeline id once the import
/// is done. With `basebackup_tar` (a path the host can read: the base.tar
/// of `pg_basebackup -Ft`), that file is imported at its `backup_label` LSN
/// instead, and `slot_name` must name an existing slot that has kept WAL
/// since before the backup (`pg_create_physical_replication_slot(name,
/// true)` first, or `pg_basebackup -X stream -C -S name`).
#[pg_extern]
fn create_timeline(
    tenant_id: String,
    primary_conninfo: String,
    timeline_id: default!(Option<String>, "NULL"),
    slot_name: default!(Option<String>, "NULL"),
    basebackup_tar: default!(Option<String>, "NULL"),
) -> String {
    let id = expect_id(call(&Command::CreateTimeline {
        tenant: tenant_id.clone(),
        timeline: timeline_id,
        conninfo: primary_conninfo,
        slot: slot_name,
        basebackup_tar,
    }));
    let mut last_report = Instant::now();
    loop {
        let Reply::Timelines(rows) = call(&Command::ListTimelines) else { error!("unexpected reply from the main worker") };
        let Some(row) = rows.into_iter().find(|r| r.timeline == id && r.tenant == tenant_id.to_lowercase()) else {
            error!("timeline {id} disappeared during its import")
        };
        match row.state {
            TimelineState::Importing => {
                if last_report.elapsed() >= PROGRESS_INTERVAL {
                    notice!(
                        "importing the base backup of timeline {id}: {} of about {} MiB",
                        row.import_bytes_done >> 20,
                        row.import_bytes_total >> 20
                    );
                    last_report = Instant::now();
                }
            }
            TimelineState::Broken => error!("timeline {id}: {}", row.error.unwrap_or_default()),
            _ => return id,
        }
        std::thread::sleep(Duration::from_millis(200));
        pg_sys::check_for_interrupts!();
    }
}

/// Creates a branch of `parent_timeline_id` at `lsn` (text such as
/// '0/16B3748') or as of time `at_time` (the LSN `lsn_for_time` gives:
/// every transaction committed at or before `at_time`, none after; `22023`
/// if that time is before the parent's retained history or the parent has
/// no commit to date it by); default: the parent's last ingested LSN.
/// Metadata only, whatever the parent's size. Returns the new timeline id
/// and its branch LSN. Its C symbol is `branch_timeline_at_wrapper`:
/// `branch_timeline_wrapper` keeps the 0.1.0 arguments (below).
#[pg_extern(name = "branch_timeline")]
fn branch_timeline_at(
    tenant_id: String,
    parent_timeline_id: String,
    lsn: default!(Option<String>, "NULL"),
    timeline_id: default!(Option<String>, "NULL"),
    at_time: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> TableIterator<'static, (name!(timeline_id, String), name!(branch_lsn, String))> {
    let lsn = match (lsn, at_time) {
        (Some(_), Some(_)) => raise("22023", "give either lsn or at_time, not both"),
        (lsn, None) => lsn,
        (None, Some(at)) => {
            let row = crate::inspect_sql::resolve_time(&tenant_id, &parent_timeline_id, at);
            match row.position.as_str() {
                "in_history" | "after_last_commit" => Some(row.lsn),
                "no_commits" => raise(
                    "22023",
                    &format!("timeline {parent_timeline_id} has ingested no commit in its retained history to date at_time by"),
                ),
                _ => raise(
                    "22023",
                    &format!(
                        "at_time is before the retained history of timeline {parent_timeline_id}, which starts at LSN {} \
                         (commits of an imported base backup carry no time)",
                        row.lsn
                    ),
                ),
            }
        }
    };
    match call(&Command::Branch { tenant: tenant_id, parent: parent_timeline_id, lsn, timeline: timeline_id }) {
        Reply::Branch { timeline, lsn } => TableIterator::new(vec![(timeline, lsn)]),
        other => error!("unexpected reply from the main worker: {other:?}"),
    }
}

/// `branch_timeline` as version 0.1.0 of the extension declares it (no
/// `at_time`; its SQL calls the symbol `branch_timeline_wrapper`), so that a
/// host restarted on this library still branches before
/// `ALTER EXTENSION pageserver_ext UPDATE` replaces the declaration. No SQL
/// of its own.
#[pg_extern(sql = false)]
fn branch_timeline(
    tenant_id: String,
    parent_timeline_id: String,
    lsn: Option<String>,
    timeline_id: Option<String>,
) -> TableIterator<'static, (name!(timeline_id, String), name!(branch_lsn, String))> {
    branch_timeline_at(tenant_id, parent_timeline_id, lsn, timeline_id, None)
}

/// The tenants of this page server.
#[pg_extern]
fn tenants() -> TableIterator<'static, (name!(tenant_id, String),)> {
    match call(&Command::ListTenants) {
        Reply::Tenants(ids) => TableIterator::new(ids.into_iter().map(|t| (t,)).collect::<Vec<_>>()),
        other => error!("unexpected reply from the main worker: {other:?}"),
    }
}

/// One row per timeline with a WAL source: the receiver's `status`
/// (`streaming`; `connecting` between sessions, backing off 0.1 to 10 s
/// after a failure; `importing` the base backup; `stopped` by a detach),
/// its replication `slot_name`, `last_record_lsn` (ingested) and
/// `primary_lsn` (the primary's WAL end as last announced), the lag in
/// bytes and in seconds (0 once ingest has what the primary announced,
/// else the age of the oldest announced position not yet ingested), the
/// time of the last message from the primary, `reconnects` and
/// `wal_bytes` received since the main worker started, and the last error.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn stat_wal_receiver() -> TableIterator<
    'static,
    (
        name!(tenant_id, String),
        name!(timeline_id, String),
        name!(status, String),
        name!(slot_name, String),
        name!(last_record_lsn, String),
        name!(primary_lsn, Option<String>),
        name!(lag_bytes, Option<i64>),
        name!(lag_seconds, f64),
        name!(last_message, Option<TimestampWithTimeZone>),
        name!(reconnects, i64),
        name!(wal_bytes, i64),
        name!(last_error, Option<String>),
    ),
> {
    let Reply::WalReceivers(rows) = call(&Command::WalReceivers) else { error!("unexpected reply from the main worker") };
    TableIterator::new(rows.into_iter().map(|r| {
        (
            r.tenant,
            r.timeline,
            r.status,
            r.slot,
            r.last_record_lsn,
            r.primary_lsn,
            r.lag_bytes,
            r.lag_seconds,
            r.last_message_unix_ms.map(|ms| crate::sql::unix_us_to_timestamptz(ms as i64 * 1000)),
            r.reconnects as i64,
            r.wal_bytes as i64,
            r.last_error,
        )
    }))
}

/// Changes tenant `tenant_id`'s own settings, overriding the host's
/// `pageserver.<setting>` for this tenant only, at once and durably:
/// `settings` is a JSON object of setting names and whole numbers in the
/// units of those settings, `null` going back to the host's value:
/// `checkpoint_distance` (MB), `checkpoint_timeout` (s),
/// `compaction_threshold`, `image_creation_threshold`,
/// `image_layer_distance` (MB), `gc_horizon` (MB), `pitr_interval` (s).
/// Returns every setting in force for the tenant (`setting`, `value`,
/// `unit`, `source`: `tenant` or `host`); `'{}'` (the default) only shows
/// them. `22023` for an unknown setting or a value outside the range the
/// host's setting allows (nothing changes then), `42704` for an unknown
/// tenant, `55000` while it is being detached.
#[pg_extern]
fn tenant_config(
    tenant_id: String,
    settings: default!(pgrx::JsonB, "'{}'"),
) -> TableIterator<'static, (name!(setting, String), name!(value, i64), name!(unit, String), name!(source, String))> {
    let Reply::Settings(rows) = call(&Command::TenantConfig { tenant: tenant_id, changes: settings.0 }) else {
        error!("unexpected reply from the main worker")
    };
    TableIterator::new(rows.into_iter().map(|(_, r)| (r.setting, r.value as i64, r.unit, r.source)))
}

/// Every tenant's settings in force, as `tenant_config` shows them; the
/// view `pageserver.tenant_settings` reads it.
#[pg_extern]
fn all_tenant_settings(
) -> TableIterator<'static, (name!(tenant_id, String), name!(setting, String), name!(value, i64), name!(unit, String), name!(source, String))>
{
    let Reply::Settings(rows) = call(&Command::TenantSettings) else { error!("unexpected reply from the main worker") };
    TableIterator::new(rows.into_iter().map(|(tenant, r)| (tenant, r.setting, r.value as i64, r.unit, r.source)))
}

/// One row per timeline (not those importing their base backup): at its
/// last ingested `lsn`, `logical_size` (bytes of every relation fork of
/// every database, as `pg_database_size` would sum them on the primary
/// then) and `physical_size` (bytes of the timeline's own layer files;
/// a branch shares its ancestor's up to the branch point).
#[pg_extern]
fn timeline_sizes() -> TableIterator<
    'static,
    (name!(tenant_id, String), name!(timeline_id, String), name!(lsn, String), name!(logical_size, i64), name!(physical_size, i64)),
> {
    let Reply::Sizes(rows) = call(&Command::TimelineSizes) else { error!("unexpected reply from the main worker") };
    TableIterator::new(rows.into_iter().map(|r| (r.tenant, r.timeline, r.lsn, r.logical_size as i64, r.physical_size as i64)))
}

/// The page service's traffic since the main worker started: a row
/// `connections` (`requests` = connections accepted, `errors` = those that
/// ended before a session started: refused by TLS or authentication,
/// broken, or cancel requests; `open_connections` now), then a row per
/// request kind (`exists`, `nblocks`, `getpage`, `dbsize`, `getslru` of
/// pagestream, `basebackup`, `fullbackup`): requests answered, `errors`
/// (answered with an error), `bytes` of the answers, `total_ms` spent, and
/// `latency_buckets`: how many took at most each of `latency_bounds_us`
/// microseconds (the last bucket takes the rest).
#[pg_extern]
#[allow(clippy::type_complexity)]
fn stat_page_service() -> TableIterator<
    'static,
    (
        name!(kind, String),
        name!(requests, i64),
        name!(errors, i64),
        name!(bytes, Option<i64>),
        name!(open_connections, Option<i64>),
        name!(total_ms, Option<f64>),
        name!(latency_bounds_us, Option<Vec<i64>>),
        name!(latency_buckets, Option<Vec<i64>>),
    ),
> {
    let Reply::PageServiceStats(rows) = call(&Command::PageServiceStats) else { error!("unexpected reply from the main worker") };
    let bounds: Vec<i64> = service::page_service::stats::LATENCY_BOUNDS_US.iter().map(|b| i64::try_from(*b).unwrap_or(i64::MAX)).collect();
    TableIterator::new(rows.into_iter().map(move |r| {
        let buckets = r.latency_buckets.map(|b| b.into_iter().map(|n| n as i64).collect::<Vec<_>>());
        (
            r.kind,
            r.requests as i64,
            r.errors as i64,
            r.bytes.map(|b| b as i64),
            r.open.map(|n| n as i64),
            r.total_us.map(|us| us as f64 / 1000.0),
            buckets.as_ref().map(|_| bounds.clone()),
            buckets,
        )
    }))
}

/// One row per timeline: its state (`importing`, `active`, `branch`,
/// `broken`), ancestor and branch LSN, LSNs (last ingested, durable on
/// disk, the primary's latest), lag in bytes, import progress, layer files
/// and the last error (import, flush, or WAL receiver); whether compaction
/// is running on it, how many passes have finished since the main worker
/// started, and what the last one did; with object storage configured, its
/// `remote_consistent_lsn` (see `pageserver.remote_timelines()`).
#[pg_extern]
#[allow(clippy::type_complexity)]
fn timelines() -> TableIterator<
    'static,
    (
        name!(tenant_id, String),
        name!(timeline_id, String),
        name!(state, String),
        name!(ancestor_timeline_id, Option<String>),
        name!(branch_lsn, Option<String>),
        name!(last_record_lsn, String),
        name!(disk_consistent_lsn, String),
        name!(primary_lsn, Option<String>),
        name!(lag_bytes, Option<i64>),
        name!(import_bytes_done, i64),
        name!(import_bytes_total, i64),
        name!(layer_files, i64),
        name!(layer_bytes, i64),
        name!(last_error, Option<String>),
        name!(compacting, bool),
        name!(compaction_passes, i64),
        name!(last_compaction, Option<String>),
        name!(remote_consistent_lsn, Option<String>),
    ),
> {
    let Reply::Timelines(rows) = call(&Command::ListTimelines) else { error!("unexpected reply from the main worker") };
    TableIterator::new(
        rows.into_iter()
            .map(|r| {
                (
                    r.tenant,
                    r.timeline,
                    r.state.to_string(),
                    r.ancestor,
                    r.branch_lsn,
                    r.last_record_lsn,
                    r.disk_consistent_lsn,
                    r.primary_lsn,
                    r.lag_bytes,
                    r.import_bytes_done,
                    r.import_bytes_total,
                    r.layers,
                    r.layer_bytes,
                    r.error,
                    r.compacting,
                    r.compaction_passes,
                    r.last_compaction,
                    r.remote_consistent_lsn,
                )
            })
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_become_postgres_error_codes() {
        assert_eq!(PgSqlErrorCode::from(make_sqlstate("42704")), PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT);
        assert_eq!(PgSqlErrorCode::from(make_sqlstate("55000")), PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE);
        assert_eq!(PgSqlErrorCode::from(make_sqlstate("XX000")), PgSqlErrorCode::ERRCODE_INTERNAL_ERROR);
        assert_eq!(make_sqlstate("bad"), make_sqlstate("XX000"));
    }
}

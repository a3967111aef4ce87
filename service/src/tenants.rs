//! Tenants and timelines as the main worker runs them.
//!
//! The [`Manager`] owns one [`Repository`] per tenant, under
//! `<pageserver.data_dir>/tenants/<tenant id>/`, plus what the storage crate
//! does not know: where a timeline's WAL comes from. That is kept per
//! timeline in `<tenant dir>/sources/<timeline id>.json` ([`SourceMeta`]:
//! the primary's connection string, replication slot, system identifier,
//! the base backup LSN, and whether the import finished).
//!
//! Life of a timeline with a source:
//! 1. `create_timeline` checks the primary (system identifier, settings that
//!    change what redo writes on pages), creates the replication slot,
//!    creates an empty timeline and writes its source file (state
//!    `importing`), and returns;
//! 2. an import task streams `BASE_BACKUP` into the timeline at its start
//!    LSN, flushes it to disk, and marks the source `active`;
//! 3. a WAL receiver ([`crate::walreceiver`]) streams from the slot forever.
//!
//! After a crash, an `importing` timeline is deleted and imported again
//! (nothing was promised about it yet); an `active` one resumes streaming
//! from its `disk_consistent_lsn`. A background thread flushes frozen
//! in-memory layers. Compaction, image layers and GC are the layers
//! worker's ([`crate::layers`]): the manager is the owner side of its
//! protocol (grants, swaps, pass summaries for `pageserver.timelines()`).
//!
//! Nothing here calls PostgreSQL: it runs on the main worker's tokio
//! runtime and plain threads, and logs through `tracing`.
//!
//! Background work has one owner and one way to stop: the manager's
//! [`CancellationToken`] ends the WAL receivers, imports, the page service
//! (spawned through [`Manager::spawn`]), the flush thread and the command
//! thread; its [`TaskTracker`] tracks the tasks, so the main worker can wait
//! for them on exit ([`Manager::stop`], then [`Manager::wait_tasks`]).

mod detach;
mod dropping;
pub mod settings;
pub use detach::{DetachStep, DetachWait, DetachedTimeline};
pub use dropping::{DropStep, DroppedTimeline};

use crate::error::ServiceError;
use crate::timeline_handle::{CompactionPass, SourceMeta, SourceState, TenantId, TimelineHandle, TimelineState, TimelineStatus};
use crate::walreceiver::replication::{ReplError, ReplicationConn};
use crate::walreceiver::{self, backup_label_lsn};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use storage::lsn::Lsn;
use storage::repo::{LayerSwap, LayerWorkGrant, Redo, RepoConfig, RepoError, Repository, TimelineId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the flusher looks for frozen layers.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Ingest idle this long freezes the open in-memory layer for flushing.
const IDLE_FLUSH: Duration = Duration::from_secs(1);
/// Bytes of in-memory layers flushed between two [`release_freed_heap`] calls.
const TRIM_AFTER_FLUSHED_BYTES: u64 = 64 << 20;

impl crate::page_service::commands::TimelineLookup for Manager {
    fn timeline(&self, tenant: TenantId, timeline: TimelineId) -> Result<Arc<storage::repo::Timeline>, ServiceError> {
        Manager::timeline(self, tenant, timeline).map(|handle| handle.timeline.clone())
    }
}

/// Settings of the host the manager works with: those a primary must share
/// (they change what redo writes on pages), and where durability ends.
#[derive(Clone, Default)]
pub struct HostSettings {
    pub data_checksums: String,
    pub wal_log_hints: String,
    /// With object storage configured, the backup worker's table: each
    /// timeline then tells its primary that WAL up to its
    /// `remote_consistent_lsn` is flushed (not its `disk_consistent_lsn`),
    /// so the primary's slot keeps WAL until it is safe in the bucket.
    pub remote: Option<&'static shared_mem::RemoteTable>,
}

impl Tenant {
    /// For a change that a detach must not meet (a new timeline, a branch,
    /// layer work): refused once a detach has begun; otherwise the guard,
    /// held during the change, keeps a detach from beginning meanwhile.
    fn change_guard(&self) -> Result<parking_lot::MutexGuard<'_, TenantRun>, ServiceError> {
        let run = self.run.lock();
        match run.detach {
            DetachState::Attached => Ok(run),
            _ => Err(ServiceError::NotInPrerequisiteState(format!(
                "tenant {} is being detached (pageserver.detach_tenant); it takes no changes",
                self.id
            ))),
        }
    }
}

impl std::fmt::Debug for HostSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSettings")
            .field("data_checksums", &self.data_checksums)
            .field("wal_log_hints", &self.wal_log_hints)
            .field("remote", &self.remote.is_some())
            .finish()
    }
}

pub struct Tenant {
    pub id: TenantId,
    pub(crate) dir: PathBuf,
    pub repo: Arc<Repository>,
    pub(crate) timelines: RwLock<BTreeMap<TimelineId, Arc<TimelineHandle>>>,
    /// Its WAL receivers and imports, and whether a detach stopped them.
    pub(crate) run: Mutex<TenantRun>,
}

/// The tenant's running tasks: cancelled together when a detach stops
/// ingest (see `crate::detach`), started afresh if the detach is abandoned.
pub(crate) struct TenantRun {
    pub(crate) detach: DetachState,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

/// How far a detach of the tenant has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DetachState {
    /// No detach: ingest and layer work run.
    Attached,
    /// Receivers cancelled, no new layer work; waiting for the tasks and
    /// running layer work to end and for memory to reach disk.
    Stopping,
    /// Nothing changes on disk any more; waiting for a backup pass numbered
    /// above `pass` to find every timeline in sync with the bucket.
    Quiet { pass: u64 },
}

/// All tenants of this host.
pub struct Manager {
    pub(crate) root: PathBuf,
    conf: RepoConfig,
    redo: Arc<dyn Redo>,
    pub(crate) host: HostSettings,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) tenants: RwLock<BTreeMap<TenantId, Arc<Tenant>>>,
    /// Cancelled by [`Manager::stop`]: every task and thread of the manager ends.
    cancel: CancellationToken,
    /// The tasks started on the runtime (receivers, imports, the page service).
    tasks: TaskTracker,
    /// The page service's counters (`pageserver.stat_page_service`).
    pub page_service_stats: Arc<crate::page_service::stats::PageServiceStats>,
}

/// One row of `pageserver.timelines`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimelineRow {
    pub tenant: String,
    pub timeline: String,
    pub state: TimelineState,
    pub ancestor: Option<String>,
    pub branch_lsn: Option<String>,
    pub last_record_lsn: String,
    pub disk_consistent_lsn: String,
    pub primary_lsn: Option<String>,
    pub lag_bytes: Option<i64>,
    pub import_bytes_done: i64,
    pub import_bytes_total: i64,
    pub layer_bytes: i64,
    pub layers: i64,
    pub error: Option<String>,
    pub compacting: bool,
    pub compaction_passes: i64,
    pub last_compaction: Option<String>,
    /// With object storage configured: the `disk_consistent_lsn` of the
    /// newest index durable in the bucket (`None` until the backup worker
    /// has published one, and without object storage).
    pub remote_consistent_lsn: Option<String>,
}

/// One row of `pageserver.stat_wal_receiver`: a timeline with a WAL source.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceiverRow {
    pub tenant: String,
    pub timeline: String,
    /// `streaming`, `connecting` (between sessions, or before the first),
    /// `importing` (the base backup) or `stopped` (a detach stopped it).
    pub status: String,
    pub slot: String,
    pub last_record_lsn: String,
    pub primary_lsn: Option<String>,
    pub lag_bytes: Option<i64>,
    pub lag_seconds: f64,
    pub last_message_unix_ms: Option<u64>,
    pub reconnects: u64,
    pub wal_bytes: u64,
    pub last_error: Option<String>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A failure talking to the primary: a malformed connection string is the
/// caller's argument; anything else is the connection's.
fn connection(e: ReplError) -> ServiceError {
    match e {
        ReplError::Conninfo(_) => ServiceError::InvalidArgument(e.to_string()),
        ReplError::Tls(ref tls) if tls.is_configuration() => ServiceError::InvalidArgument(e.to_string()),
        _ => ServiceError::Connection(e.to_string()),
    }
}

impl Manager {
    /// Loads every tenant under `<data_dir>/tenants`, restarts interrupted
    /// imports and the WAL receivers, and starts the background threads.
    pub fn start(
        data_dir: &Path,
        conf: RepoConfig,
        redo: Arc<dyn Redo>,
        host: HostSettings,
        runtime: tokio::runtime::Handle,
    ) -> Result<Arc<Manager>, ServiceError> {
        let root = data_dir.join("tenants");
        let io = |e: std::io::Error| ServiceError::Io(format!("cannot read {}: {e}", root.display()));
        std::fs::create_dir_all(&root).map_err(|e| ServiceError::Io(format!("cannot create {}: {e}", root.display())))?;
        detach::remove_unfinished(data_dir)?;
        let manager = Arc::new(Manager {
            root: root.clone(),
            conf,
            redo,
            host,
            runtime,
            tenants: RwLock::new(BTreeMap::new()),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            page_service_stats: Arc::default(),
        });
        for entry in std::fs::read_dir(&root).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(id) = name.parse::<TenantId>() else {
                tracing::warn!("ignoring {} in the tenants directory", entry.path().display());
                continue;
            };
            let tenant = manager.load_tenant(id)?;
            manager.tenants.write().insert(id, tenant.clone());
            manager.resume_timelines(&tenant);
        }
        match crate::backup::removal::unmark_existing(&manager.backup_state_dir(), &root) {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} timelines whose drop did not finish stay; their objects in object storage stay too"),
            Err(e) => return Err(ServiceError::Io(format!("withdrawing unfinished drops: {e}"))),
        }
        let flusher = manager.clone();
        let spawn_failed = |e: std::io::Error| ServiceError::Internal(format!("cannot start a thread: {e}"));
        std::thread::Builder::new().name("pageserver-flush".into()).spawn(move || flusher.flush_loop()).map_err(spawn_failed)?;
        Ok(manager)
    }

    /// Starts `task` on the manager's runtime, owned by the manager: it
    /// gets the manager's cancellation token and [`wait_tasks`](Self::wait_tasks) waits for it.
    pub fn spawn<F, T>(&self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.tasks.spawn_on(task(self.cancel.clone()), &self.runtime);
    }

    /// Tells every task and thread of the manager to end.
    pub fn stop(&self) {
        self.cancel.cancel();
        self.tasks.close();
    }

    pub fn is_stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// After [`stop`](Self::stop): waits up to `timeout` for the tasks to
    /// end; returns how many are still running.
    pub fn wait_tasks(&self, timeout: Duration) -> usize {
        let tasks = self.tasks.clone();
        let _ = self.runtime.block_on(async move { tokio::time::timeout(timeout, tasks.wait()).await });
        self.tasks.len()
    }

    fn load_tenant(&self, id: TenantId) -> Result<Arc<Tenant>, ServiceError> {
        let dir = self.root.join(id.to_string());
        let conf = crate::tenant_settings::TenantSettings::read(&dir).map_err(|e| e.context(format!("tenant {id}")))?.apply(&self.conf);
        let repo = Repository::open(&dir, conf, self.redo.clone()).map_err(|e| ServiceError::from(e).context(format!("tenant {id}")))?;
        std::fs::create_dir_all(dir.join("sources"))
            .map_err(|e| ServiceError::Io(format!("tenant {id}: cannot create its sources directory: {e}")))?;
        let run = TenantRun { detach: DetachState::Attached, cancel: self.cancel.child_token(), tasks: TaskTracker::new() };
        let tenant = Arc::new(Tenant { id, dir, repo: Arc::new(repo), timelines: RwLock::new(BTreeMap::new()), run: Mutex::new(run) });
        for tl in tenant.repo.timeline_ids() {
            let timeline = tenant.repo.get_timeline(tl)?;
            let source = read_source(&tenant.dir, tl).map_err(ServiceError::Corrupt)?;
            let state = source.as_ref().map_or(TimelineState::Branch, |s| s.state.into());
            let status = Arc::new(TimelineStatus::default());
            *status.state.lock() = state;
            tenant.timelines.write().insert(tl, Arc::new(TimelineHandle { timeline, status, source: Mutex::new(source) }));
        }
        Ok(tenant)
    }

    pub(crate) fn resume_timelines(self: &Arc<Self>, tenant: &Arc<Tenant>) {
        let entries: Vec<_> = tenant.timelines.read().values().cloned().collect();
        for entry in entries {
            let source = entry.source.lock().clone();
            match source {
                Some(s) if s.state == SourceState::Importing => {
                    tracing::info!("timeline {}/{}: import was interrupted, starting it again", tenant.id, entry.timeline.id());
                    let id = entry.timeline.id();
                    tenant.timelines.write().remove(&id);
                    if let Err(e) = tenant.repo.delete_timeline(id) {
                        tracing::warn!("timeline {}/{id}: cannot delete the interrupted import: {e}", tenant.id);
                        continue;
                    }
                    match tenant.repo.create_timeline(id) {
                        Ok(timeline) => {
                            let status = Arc::new(TimelineStatus::default());
                            *status.state.lock() = TimelineState::Importing;
                            let entry = Arc::new(TimelineHandle { timeline, status, source: Mutex::new(Some(s)) });
                            tenant.timelines.write().insert(id, entry.clone());
                            self.spawn_import(tenant.clone(), entry);
                        }
                        Err(e) => tracing::warn!("timeline {}/{id}: cannot recreate it: {e}", tenant.id),
                    }
                }
                Some(_) => self.spawn_receiver(tenant.clone(), entry),
                None => {}
            }
        }
    }

    pub fn create_tenant(&self, id: Option<TenantId>) -> Result<TenantId, ServiceError> {
        let id = id.unwrap_or_else(|| TenantId(random_u128()));
        let mut tenants = self.tenants.write();
        if tenants.contains_key(&id) {
            return Err(ServiceError::AlreadyExists(format!("tenant {id} already exists")));
        }
        let tenant = self.load_tenant(id)?;
        tenants.insert(id, tenant);
        Ok(id)
    }

    /// Loads a tenant directory that appeared under `tenants/` after start
    /// (an attach downloaded it) and resumes its timelines as at start:
    /// each with a source streams from its `disk_consistent_lsn`. Returns
    /// the timelines and how many of them stream.
    pub fn attach_tenant(self: &Arc<Self>, id: TenantId) -> Result<(usize, usize), ServiceError> {
        let tenant = {
            let mut tenants = self.tenants.write();
            if tenants.contains_key(&id) {
                return Err(ServiceError::AlreadyExists(format!("tenant {id} is loaded already")));
            }
            if !self.root.join(id.to_string()).is_dir() {
                return Err(ServiceError::NotFound(format!("tenant {id} has no directory under {}", self.root.display())));
            }
            let tenant = self.load_tenant(id)?;
            tenants.insert(id, tenant.clone());
            tenant
        };
        self.resume_timelines(&tenant);
        let timelines = tenant.timelines.read();
        let streaming = timelines.values().filter(|t| t.source.lock().is_some()).count();
        tracing::info!("attached tenant {id}: {} timelines, {streaming} streaming from a primary", timelines.len());
        Ok((timelines.len(), streaming))
    }

    pub fn tenant_ids(&self) -> Vec<TenantId> {
        self.tenants.read().keys().copied().collect()
    }

    pub fn tenant(&self, id: TenantId) -> Result<Arc<Tenant>, ServiceError> {
        self.tenants.read().get(&id).cloned().ok_or_else(|| ServiceError::NotFound(format!("tenant {id} not found")))
    }

    pub fn timeline(&self, tenant: TenantId, timeline: TimelineId) -> Result<Arc<TimelineHandle>, ServiceError> {
        let t = self.tenant(tenant)?;
        let entry = t.timelines.read().get(&timeline).cloned();
        entry.ok_or_else(|| ServiceError::NotFound(format!("timeline {timeline} not found in tenant {tenant}")))
    }

    /// Checks the primary, creates the slot and the timeline, and starts the
    /// import in the background. Returns the new timeline's id.
    pub fn create_timeline(
        self: &Arc<Self>,
        tenant_id: TenantId,
        timeline_id: Option<TimelineId>,
        conninfo: &str,
        slot: Option<String>,
        basebackup_tar: Option<String>,
    ) -> Result<TimelineId, ServiceError> {
        let tar_start = match &basebackup_tar {
            None => None,
            Some(path) => {
                if slot.is_none() {
                    return Err(ServiceError::InvalidArgument(
                        "with basebackup_tar, slot_name must name the slot that kept WAL since the backup \
                         (create it with pg_create_physical_replication_slot(name, true) before the backup)"
                            .into(),
                    ));
                }
                Some(backup_label_lsn(Path::new(path)).map_err(ServiceError::InvalidArgument)?)
            }
        };
        let tenant = self.tenant(tenant_id)?;
        let id = timeline_id.unwrap_or_else(|| TimelineId(random_u128()));
        if tenant.timelines.read().contains_key(&id) {
            return Err(ServiceError::AlreadyExists(format!("timeline {id} already exists in tenant {tenant_id}")));
        }
        let slot = slot.unwrap_or_else(|| format!("pageserver_{}", &id.to_string()[..16]));
        if slot.is_empty() || slot.len() > 63 || !slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(ServiceError::InvalidArgument(format!(
                "invalid slot name \"{slot}\": use up to 63 lower-case letters, digits and underscores"
            )));
        }
        let host = self.host.clone();
        let (system, _) = self.runtime.block_on(async {
            let mut conn = ReplicationConn::connect(conninfo).await.map_err(connection)?;
            let system = conn.identify_system().await.map_err(connection)?;
            for (name, ours) in [("data_checksums", &host.data_checksums), ("wal_log_hints", &host.wal_log_hints)] {
                let theirs = conn.show(name).await.map_err(connection)?;
                if &theirs != ours {
                    return Err(ServiceError::NotInPrerequisiteState(format!(
                        "the primary has {name} = {theirs} but this host has {name} = {ours}; redo stamps pages \
                         differently, so the host must match: {}",
                        if name == "data_checksums" {
                            "initdb the host with the same --data-checksums setting, or run pg_checksums on one of them"
                        } else {
                            "set wal_log_hints to the same value on both and restart"
                        }
                    )));
                }
            }
            let fpw = conn.show("full_page_writes").await.map_err(connection)?;
            if fpw != "on" {
                return Err(ServiceError::NotInPrerequisiteState(
                    "the primary has full_page_writes = off; a base backup needs it on".into(),
                ));
            }
            let seg = conn.show("wal_segment_size").await.map_err(connection)?;
            if seg != "16MB" {
                return Err(ServiceError::NotInPrerequisiteState(format!(
                    "the primary has wal_segment_size = {seg}; only 16MB is supported"
                )));
            }
            if let Some(start) = tar_start {
                let rows = conn.query(&format!("READ_REPLICATION_SLOT {slot}")).await.map_err(connection)?;
                let restart = rows.first().and_then(|r| r.get(1).cloned().flatten());
                let Some(restart) = restart else {
                    return Err(ServiceError::NotFound(format!(
                        "replication slot \"{slot}\" does not exist on the primary (or holds no WAL); \
                         create it before taking the backup: SELECT pg_create_physical_replication_slot('{slot}', true)"
                    )));
                };
                let restart: Lsn =
                    restart.parse().map_err(|_| ServiceError::Connection(format!("the primary sent a bad restart_lsn {restart:?}")))?;
                if restart > start {
                    return Err(ServiceError::NotInPrerequisiteState(format!(
                        "replication slot \"{slot}\" keeps WAL only from {restart}, after the backup's start {start}: \
                         the WAL needed after the backup is gone"
                    )));
                }
                return Ok::<_, ServiceError>((system, ()));
            }
            match conn.query(&format!("CREATE_REPLICATION_SLOT {slot} PHYSICAL RESERVE_WAL")).await {
                Ok(_) => {}
                Err(e) if e.code() == Some("42710") => {
                    return Err(ServiceError::AlreadyExists(format!(
                        "replication slot \"{slot}\" already exists on the primary: drop it there \
                         (SELECT pg_drop_replication_slot('{slot}')) or pass another slot name"
                    )))
                }
                Err(e) => return Err(ServiceError::NotInPrerequisiteState(format!("cannot create replication slot \"{slot}\": {e}"))),
            }
            Ok::<_, ServiceError>((system, ()))
        })?;
        let change = tenant.change_guard()?;
        let timeline = tenant.repo.create_timeline(id)?;
        let source = SourceMeta {
            conninfo: conninfo.to_string(),
            slot,
            system_id: system.system_id,
            pg_timeline: system.timeline,
            start_lsn: 0,
            basebackup_tar,
            state: SourceState::Importing,
        };
        write_source(&tenant.dir, id, &source).map_err(ServiceError::Io)?;
        let status = Arc::new(TimelineStatus::default());
        *status.state.lock() = TimelineState::Importing;
        let entry = Arc::new(TimelineHandle { timeline, status, source: Mutex::new(Some(source)) });
        tenant.timelines.write().insert(id, entry.clone());
        drop(change);
        self.spawn_import(tenant, entry);
        Ok(id)
    }

    /// Starts `task` as one of the tenant's: it gets the tenant's
    /// cancellation token (a child of the manager's) and both trackers
    /// follow it.
    fn spawn_for_tenant<F, T>(&self, tenant: &Tenant, task: impl FnOnce(CancellationToken) -> F)
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let run = tenant.run.lock();
        self.tasks.spawn_on(run.tasks.track_future(task(run.cancel.clone())), &self.runtime);
    }

    fn spawn_import(self: &Arc<Self>, tenant: Arc<Tenant>, entry: Arc<TimelineHandle>) {
        let manager = self.clone();
        self.spawn_for_tenant(&tenant.clone(), |cancel| async move {
            let id = entry.timeline.id();
            let imported = tokio::select! {
                _ = cancel.cancelled() => return,
                imported = walreceiver::import_base_backup(&entry) => imported,
            };
            match imported {
                Ok(start_lsn) => {
                    let mut source = entry.source.lock().clone().expect("a timeline being imported has a source");
                    source.start_lsn = start_lsn.0;
                    source.state = SourceState::Active;
                    if let Err(e) = write_source(&tenant.dir, id, &source) {
                        entry.status.error.lock().replace(e.clone());
                        *entry.status.state.lock() = TimelineState::Broken;
                        return;
                    }
                    *entry.source.lock() = Some(source);
                    *entry.status.state.lock() = TimelineState::Active;
                    tracing::info!("timeline {}/{id}: imported the base backup at {start_lsn}", tenant.id);
                    manager.spawn_receiver(tenant, entry);
                }
                Err(e) => {
                    tracing::warn!("timeline {}/{id}: import failed: {e}", tenant.id);
                    entry.status.error.lock().replace(format!("import failed: {e}"));
                    *entry.status.state.lock() = TimelineState::Broken;
                }
            }
        });
    }

    /// Starts the timeline's WAL receiver: it ends when the tenant's tasks
    /// are cancelled or the timeline's own `stop` token is (a drop).
    fn spawn_receiver(self: &Arc<Self>, tenant: Arc<Tenant>, entry: Arc<TimelineHandle>) {
        let remote = self.host.remote;
        let id = tenant.id;
        entry.status.receiving.store(true, Ordering::SeqCst);
        self.spawn_for_tenant(&tenant, move |cancel| async move {
            let cancel = cancel.child_token();
            let stop = entry.status.stop.lock().clone();
            let run = walreceiver::run(cancel.clone(), id, entry.clone(), remote);
            tokio::pin!(run);
            tokio::select! {
                _ = &mut run => {}
                _ = stop.cancelled() => {
                    cancel.cancel();
                    run.await;
                }
            }
            entry.status.receiving.store(false, Ordering::SeqCst);
        });
    }

    /// Creates `child` as a branch of `parent` at `lsn` (its `last_record_lsn` if none).
    pub fn branch(
        &self,
        tenant_id: TenantId,
        parent: TimelineId,
        lsn: Option<Lsn>,
        child: Option<TimelineId>,
    ) -> Result<(TimelineId, Lsn), ServiceError> {
        let tenant = self.tenant(tenant_id)?;
        let parent_entry = self.timeline(tenant_id, parent)?;
        let lsn = lsn.unwrap_or_else(|| parent_entry.timeline.last_record_lsn());
        let child = child.unwrap_or_else(|| TimelineId(random_u128()));
        if tenant.timelines.read().contains_key(&child) {
            return Err(ServiceError::AlreadyExists(format!("timeline {child} already exists in tenant {tenant_id}")));
        }
        let _change = tenant.change_guard()?;
        let timeline = tenant.repo.branch_timeline(parent, child, lsn)?;
        let status = Arc::new(TimelineStatus::default());
        *status.state.lock() = TimelineState::Branch;
        tenant.timelines.write().insert(child, Arc::new(TimelineHandle { timeline, status, source: Mutex::new(None) }));
        Ok((child, lsn))
    }

    pub fn list(&self) -> Vec<TimelineRow> {
        let mut rows = Vec::new();
        for tenant in self.tenants.read().values() {
            let detaching = tenant.run.lock().detach != DetachState::Attached;
            for entry in tenant.timelines.read().values() {
                let tl = &entry.timeline;
                let primary = entry.status.receiver.primary_lsn.load(Ordering::Relaxed);
                let last = tl.last_record_lsn();
                rows.push(TimelineRow {
                    tenant: tenant.id.to_string(),
                    timeline: tl.id().to_string(),
                    state: if detaching { TimelineState::Detaching } else { *entry.status.state.lock() },
                    ancestor: tl.ancestor().map(|(a, _)| a.id().to_string()),
                    branch_lsn: tl.ancestor().map(|(_, lsn)| lsn.to_string()),
                    last_record_lsn: last.to_string(),
                    disk_consistent_lsn: tl.disk_consistent_lsn().to_string(),
                    primary_lsn: (primary != 0).then(|| Lsn(primary).to_string()),
                    lag_bytes: (primary != 0).then(|| primary.saturating_sub(last.0) as i64),
                    import_bytes_done: entry.status.import.bytes_done.load(Ordering::Relaxed) as i64,
                    import_bytes_total: entry.status.import.bytes_total.load(Ordering::Relaxed) as i64,
                    layer_bytes: tl.layer_bytes() as i64,
                    layers: tl.layer_names().len() as i64,
                    error: entry.status.error.lock().clone().or_else(|| entry.status.receiver.last_error.lock().clone()),
                    compacting: entry.status.compaction.running.load(Ordering::Relaxed),
                    compaction_passes: entry.status.compaction.passes.load(Ordering::Relaxed) as i64,
                    last_compaction: entry.status.compaction.last.lock().as_ref().map(CompactionPass::describe),
                    remote_consistent_lsn: self
                        .host
                        .remote
                        .and_then(|table| table.find(tenant.id.0, tl.id().0))
                        .map(|slot| slot.remote_consistent_lsn())
                        .filter(|lsn| *lsn != 0)
                        .map(|lsn| Lsn(lsn).to_string()),
                });
            }
        }
        rows
    }

    /// The WAL receivers of every timeline with a source.
    pub fn wal_receivers(&self) -> Vec<ReceiverRow> {
        let mut rows = Vec::new();
        for tenant in self.tenants.read().values() {
            let stopped = tenant.run.lock().detach != DetachState::Attached;
            for entry in tenant.timelines.read().values() {
                let Some(source) = entry.source.lock().clone() else { continue };
                let receiver = &entry.status.receiver;
                let last = entry.timeline.last_record_lsn().0;
                let primary = receiver.primary_lsn.load(Ordering::Relaxed);
                let status = if stopped {
                    "stopped"
                } else if source.state == SourceState::Importing {
                    "importing"
                } else if receiver.connected.load(Ordering::Relaxed) {
                    "streaming"
                } else {
                    "connecting"
                };
                let last_message = receiver.last_message_unix_ms.load(Ordering::Relaxed);
                rows.push(ReceiverRow {
                    tenant: tenant.id.to_string(),
                    timeline: entry.timeline.id().to_string(),
                    status: status.to_string(),
                    slot: source.slot,
                    last_record_lsn: Lsn(last).to_string(),
                    primary_lsn: (primary != 0).then(|| Lsn(primary).to_string()),
                    lag_bytes: (primary != 0).then(|| primary.saturating_sub(last) as i64),
                    lag_seconds: receiver.lag_seconds(last),
                    last_message_unix_ms: (last_message != 0).then_some(last_message),
                    reconnects: receiver.reconnects.load(Ordering::Relaxed),
                    wal_bytes: receiver.wal_bytes.load(Ordering::Relaxed),
                    last_error: receiver.last_error.lock().clone(),
                });
            }
        }
        rows
    }

    /// Every timeline with its tenant's id, in (tenant, timeline) order.
    pub fn all_timelines_by_tenant(&self) -> Vec<(TenantId, Arc<TimelineHandle>)> {
        self.tenants.read().values().flat_map(|t| t.timelines.read().values().map(|h| (t.id, h.clone())).collect::<Vec<_>>()).collect()
    }

    fn all_timelines(&self) -> Vec<Arc<TimelineHandle>> {
        self.tenants.read().values().flat_map(|t| t.timelines.read().values().cloned().collect::<Vec<_>>()).collect()
    }

    /// Writes frozen in-memory layers as L0 files as soon as they appear,
    /// and freezes the open layer of a timeline whose ingest has been idle
    /// for [`IDLE_FLUSH`]: the primary learns that everything is durable (a
    /// primary shutting down waits for that) and a restart re-streams nothing.
    fn flush_loop(&self) {
        let mut idle_since: std::collections::HashMap<TimelineId, (Lsn, std::time::Instant)> = Default::default();
        let mut flushed_since_trim = 0u64;
        while !self.is_stopping() {
            for entry in self.all_timelines() {
                // A drop takes this lock before it deletes the directory.
                let _flushing = entry.status.flushing.lock();
                if *entry.status.state.lock() == TimelineState::Dropping {
                    continue;
                }
                let tl = &entry.timeline;
                let last = tl.last_record_lsn();
                let seen = idle_since.entry(tl.id()).or_insert((last, std::time::Instant::now()));
                if seen.0 != last {
                    *seen = (last, std::time::Instant::now());
                } else if tl.disk_consistent_lsn() < last && seen.1.elapsed() >= IDLE_FLUSH {
                    if let Err(e) = tl.writer().freeze() {
                        tracing::warn!("timeline {}: freeze failed: {e}", tl.id());
                    }
                }
                if entry.timeline.frozen_layer_count() > 0 {
                    let bytes = entry.timeline.frozen_bytes();
                    match entry.timeline.flush_frozen_layers() {
                        Ok(()) => flushed_since_trim += bytes,
                        Err(e) => {
                            tracing::warn!("timeline {}: flush failed: {e}", entry.timeline.id());
                            entry.status.error.lock().replace(format!("flush failed: {e}"));
                        }
                    }
                }
            }
            if flushed_since_trim >= TRIM_AFTER_FLUSHED_BYTES {
                release_freed_heap();
                flushed_since_trim = 0;
            }
            std::thread::sleep(FLUSH_INTERVAL);
        }
    }

    /// Owner side of layer work: a grant for a pass of the layers worker
    /// on a timeline, which `pageserver.timelines()` shows as compacting.
    pub fn begin_layer_work(&self, tenant: TenantId, timeline: TimelineId) -> Result<LayerWorkGrant, ServiceError> {
        let t = self.tenant(tenant)?;
        let entry = self.timeline(tenant, timeline)?;
        let _change = t.change_guard()?;
        if *entry.status.state.lock() == TimelineState::Dropping {
            return Err(ServiceError::NotInPrerequisiteState(format!("timeline {timeline} is being dropped")));
        }
        let grant = t.repo.begin_layer_work(timeline, SystemTime::now())?;
        entry.status.compaction.running.store(true, Ordering::Relaxed);
        Ok(grant)
    }

    /// Owner side: applies a swap the layers worker planned. The inner
    /// result is the repository's answer (a refusal included).
    pub fn swap_layers(&self, tenant: TenantId, timeline: TimelineId, swap: &LayerSwap) -> Result<u64, RepoError> {
        let t = self.tenant(tenant).map_err(|e| RepoError::SwapRefused(e.to_string()))?;
        let _change = t.change_guard().map_err(|e| RepoError::SwapRefused(e.to_string()))?;
        t.repo.apply_layer_swap(timeline, swap)
    }

    /// Owner side: the layers worker finished a pass on a timeline.
    pub fn finish_layer_work(&self, tenant: TenantId, timeline: TimelineId, summary: String) -> Result<(), ServiceError> {
        let entry = self.timeline(tenant, timeline)?;
        let status = &entry.status.compaction;
        *status.last.lock() = Some(CompactionPass { finished: Instant::now(), summary });
        status.passes.fetch_add(1, Ordering::Relaxed);
        status.running.store(false, Ordering::Relaxed);
        Ok(())
    }
}

/// Returns the heap that flushed in-memory layers freed to the OS. glibc
/// keeps freed memory in its arenas otherwise, so after a bulk load the
/// main worker would stay at its peak resident size (hundreds of MiB of
/// in-memory layers) for good.
#[allow(unsafe_code)] // the crate's one FFI call: glibc has no safe wrapper for it
fn release_freed_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks;
    // any thread may call it, and it calls no PostgreSQL code.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A random 128-bit id (from the kernel; ids only need to be unique).
fn random_u128() -> u128 {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        bytes = (nanos ^ ((std::process::id() as u128) << 64)).to_le_bytes();
    }
    u128::from_le_bytes(bytes)
}

fn source_path(tenant_dir: &Path, id: TimelineId) -> PathBuf {
    tenant_dir.join("sources").join(format!("{id}.json"))
}

fn read_source(tenant_dir: &Path, id: TimelineId) -> Result<Option<SourceMeta>, String> {
    let path = source_path(tenant_dir, id);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("corrupt {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Replaces the source file atomically (temp file, fsync, rename, fsync dir).
fn write_source(tenant_dir: &Path, id: TimelineId, source: &SourceMeta) -> Result<(), String> {
    let path = source_path(tenant_dir, id);
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(source).map_err(err)?;
    let io = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(path.parent().expect("sources dir")).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

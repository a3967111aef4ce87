//! What the backup worker runs: passes that copy every timeline's layer
//! files and index to object storage (crate `remote`), in this order per
//! timeline:
//!
//! 1. read the local index (`<timeline dir>/index`, replaced atomically by
//!    the main worker) and, once per run, the remote index of this
//!    generation;
//! 2. upload the layers the local index names and the remote one does not
//!    ([`UPLOAD_CONCURRENCY`] at a time); a layer gone locally means a newer
//!    local index exists, so the timeline waits for the next pass;
//! 3. if the new index drops layers the remote one names, write their names
//!    to a deletion queue file (`<data_dir>/backup/<tenant>_<timeline>.deletions`,
//!    fsynced) before anything else;
//! 4. upload the new index; only then publish its `disk_consistent_lsn` as
//!    the timeline's `remote_consistent_lsn` in shared memory;
//! 5. delete the dropped layer objects, then the queue file;
//! 6. mark the timeline's slot in sync with this pass's number (passes
//!    number themselves before they read anything): a tenant being
//!    detached waits for a pass that started after its last local change.
//!
//! Each pass first deletes the objects of timelines that were dropped
//! ([`removal`]).
//!
//! A crash anywhere leaves: layer objects no index names (the next run
//! lists the timeline once, before uploading anything, and deletes the
//! layer objects of its generation that its index does not name), or a
//! queue file whose entries the next run deletes once it has checked that
//! the remote index does not name them. Layers are never deleted before an
//! index without them is durable, and an index is never uploaded before
//! every layer it names. Timelines fail alone: an error is recorded in the
//! timeline's slot and the timeline is retried after a backoff.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use remote::backoff::Backoff;
use remote::index::{conninfo_without_password, RemoteSource};
use remote::layout::{self, Generation};
use remote::{RemoteError, RemoteIndex, RemoteLayer, RemoteStorage};
use shared_mem::{RemoteSlot, RemoteTable};
use storage::repo::index::IndexFile;
use storage::repo::{LayerName, TimelineId};

use crate::timeline_handle::{SourceMeta, TenantId};

pub mod removal;

/// Layer uploads of one timeline in flight at once (together they hold
/// at most `remote::transfer::UPLOAD_MEMORY_BUDGET`).
pub const UPLOAD_CONCURRENCY: usize = 4;
/// Waits before retrying a failed timeline: from this ...
const RETRY_BASE: Duration = Duration::from_millis(500);
/// ... doubling up to this (with jitter).
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The backup worker's state across passes.
pub struct BackupWorker {
    pub tenants_dir: PathBuf,
    /// Deletion queues: `<data_dir>/backup`.
    pub state_dir: PathBuf,
    pub storage: RemoteStorage,
    pub generation: Generation,
    pub table: &'static RemoteTable,
    /// Stored in every index (`tenant_config`).
    pub tenant_config: BTreeMap<String, String>,
    timelines: HashMap<(TenantId, TimelineId), TimelineBackup>,
    /// Retries of deleting dropped timelines ([`removal`]).
    removal_backoff: Backoff,
    removal_retry_at: Option<Instant>,
}

/// What the worker knows of one timeline.
struct TimelineBackup {
    /// The newest index this run uploaded or found (`None`: the bucket has none).
    remote: Option<RemoteIndex>,
    /// Whether the remote index was read (once per run).
    remote_known: bool,
    backoff: Backoff,
    retry_at: Option<Instant>,
}

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassSummary {
    pub timelines: usize,
    pub uploaded_indexes: usize,
    pub uploaded_layers: usize,
    pub uploaded_bytes: u64,
    pub deleted: usize,
    pub failed: usize,
}

/// Why one timeline's backup stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("cannot read the local index of {dir}: {reason}")]
    LocalIndex { dir: PathBuf, reason: String },
    #[error("layer {0} left the local index during its upload; the next pass uploads the newer index")]
    LayerGone(String),
    #[error("{0}")]
    Inconsistent(String),
    #[error("the remote table is full ({} timelines)", shared_mem::remote_table::MAX_REMOTE_TIMELINES)]
    TableFull,
    #[error("deletion queue {path}: {reason}")]
    DeletionQueue { path: PathBuf, reason: String },
}

/// One entry of a deletion queue file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct DoomedLayer {
    name: String,
    generation: Generation,
}

impl BackupWorker {
    pub fn new(
        tenants_dir: PathBuf,
        state_dir: PathBuf,
        storage: RemoteStorage,
        generation: Generation,
        table: &'static RemoteTable,
        tenant_config: BTreeMap<String, String>,
    ) -> BackupWorker {
        BackupWorker {
            tenants_dir,
            state_dir,
            storage,
            generation,
            table,
            tenant_config,
            timelines: HashMap::new(),
            removal_backoff: Backoff::new(RETRY_BASE, RETRY_MAX),
            removal_retry_at: None,
        }
    }

    /// One pass over every timeline on disk. `activity` hears what is being
    /// done; `stopping` is polled between timelines.
    pub async fn pass(&mut self, activity: &dyn Fn(&str), stopping: &dyn Fn() -> bool) -> Result<PassSummary, BackupError> {
        let pass = self.table.begin_pass();
        let on_disk = timelines_on_disk(&self.tenants_dir)
            .map_err(|e| BackupError::LocalIndex { dir: self.tenants_dir.clone(), reason: e.to_string() })?;
        self.table.retain(&|tenant, timeline| on_disk.iter().any(|(t, l, _)| t.0 == tenant && l.0 == timeline));
        self.timelines.retain(|key, _| on_disk.iter().any(|(t, l, _)| (*t, *l) == *key));
        let mut summary = PassSummary { timelines: on_disk.len(), ..PassSummary::default() };
        summary.deleted += self.remove_dropped(&on_disk).await;
        for (tenant, timeline, dir) in on_disk {
            if stopping() {
                break;
            }
            let state = self.timelines.entry((tenant, timeline)).or_insert_with(|| TimelineBackup {
                remote: None,
                remote_known: false,
                backoff: Backoff::new(RETRY_BASE, RETRY_MAX),
                retry_at: None,
            });
            if state.retry_at.is_some_and(|at| Instant::now() < at) {
                continue;
            }
            let Some(slot) = self.table.claim(tenant.0, timeline.0) else {
                summary.failed += 1;
                tracing::warn!("backup of timeline {timeline}: {}", BackupError::TableFull);
                continue;
            };
            activity(&format!("backing up tenant {tenant} timeline {timeline}"));
            let mut state = self.timelines.remove(&(tenant, timeline)).expect("inserted above");
            let result = self.back_up_timeline(tenant, timeline, &dir, &mut state, slot, &mut summary).await;
            match result {
                Ok(()) => {
                    state.backoff.succeeded();
                    state.retry_at = None;
                    slot.clear_error();
                    slot.set_synced(pass);
                }
                Err(e) => {
                    summary.failed += 1;
                    let wait = state.backoff.failed();
                    state.retry_at = Some(Instant::now() + wait);
                    let text = format!("{e} (try {} failed; next in {:.1} s)", state.backoff.failures(), wait.as_secs_f64());
                    slot.set_error(&text);
                    if !matches!(e, BackupError::LayerGone(_)) {
                        tracing::warn!("backup of tenant {tenant} timeline {timeline}: {text}");
                    }
                }
            }
            self.timelines.insert((tenant, timeline), state);
        }
        Ok(summary)
    }

    async fn back_up_timeline(
        &self,
        tenant: TenantId,
        timeline: TimelineId,
        dir: &Path,
        state: &mut TimelineBackup,
        slot: &RemoteSlot,
        summary: &mut PassSummary,
    ) -> Result<(), BackupError> {
        let local = IndexFile::read(dir).map_err(|e| BackupError::LocalIndex { dir: dir.to_path_buf(), reason: e.to_string() })?;
        let index_path = layout::index_path(tenant, timeline, self.generation);
        if !state.remote_known {
            state.remote = match self.storage.get_bytes(&index_path).await {
                Ok(bytes) => Some(RemoteIndex::from_json(&bytes, index_path.as_ref())?),
                Err(RemoteError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            state.remote_known = true;
            if let Some(remote) = &state.remote {
                slot.set_remote_consistent_lsn(remote.disk_consistent_lsn.0);
                self.record_remote_layers(tenant, timeline, remote);
            }
            // Layers a previous run of this generation uploaded and no index
            // came to name (it stopped in between): nothing of ours is in
            // flight now, so they are orphans.
            summary.deleted += self.remove_orphans(tenant, timeline, slot).await?;
        }
        // Deletions a previous run queued and did not finish.
        summary.deleted += self.finish_deletions(tenant, timeline, state.remote.as_ref(), slot).await?;

        let source = read_source(&self.tenants_dir, tenant, timeline);
        let mut uploaded: BTreeMap<String, RemoteLayer> = state.remote.as_ref().map(|r| r.layers.clone()).unwrap_or_default();
        let missing: Vec<(LayerName, u64)> = local
            .layers
            .iter()
            .filter(|(name, size)| uploaded.get(&name.file_name()).is_none_or(|remote| remote.size != *size))
            .cloned()
            .collect();
        let candidate = |uploaded: &BTreeMap<String, RemoteLayer>| {
            RemoteIndex::from_local(tenant, &local, self.generation, uploaded, self.tenant_config.clone(), source.clone())
        };
        if missing.is_empty() {
            let index = candidate(&uploaded).map_err(BackupError::Inconsistent)?;
            if state.remote.as_ref() == Some(&index) {
                slot.set_queue(0, 0);
                return Ok(());
            }
        }

        slot.set_queue(missing.len() as u64 + 1, missing.iter().map(|(_, size)| size).sum());
        let mut mark = Instant::now();
        let uploads = futures::stream::iter(missing.iter().map(|(name, size)| {
            let file_name = name.file_name();
            let local_path = dir.join(&file_name);
            let remote_path = layout::layer_path(tenant, timeline, name, self.generation);
            async move {
                let sent = match self.storage.upload_file(&local_path, &remote_path).await {
                    Ok(sent) => sent,
                    Err(RemoteError::Local { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                        return Err(BackupError::LayerGone(file_name));
                    }
                    Err(e) => return Err(e.into()),
                };
                if sent.size != *size {
                    return Err(BackupError::Inconsistent(format!("layer {file_name} has {} bytes, its index says {size}", sent.size)));
                }
                Ok((file_name, RemoteLayer { size: sent.size, crc32c: sent.crc32c, generation: self.generation }))
            }
        }))
        .buffer_unordered(UPLOAD_CONCURRENCY);
        let mut uploads = std::pin::pin!(uploads);
        let mut left = (missing.len() as u64, missing.iter().map(|(_, size)| size).sum::<u64>());
        while let Some(result) = uploads.next().await {
            let (file_name, layer) = result?;
            left = (left.0 - 1, left.1.saturating_sub(layer.size));
            slot.set_queue(left.0 + 1, left.1);
            // Wall time with uploads in flight, counted once.
            slot.add_uploaded(1, layer.size, mark.elapsed().as_micros() as u64);
            mark = Instant::now();
            summary.uploaded_layers += 1;
            summary.uploaded_bytes += layer.size;
            uploaded.insert(file_name, layer);
        }
        let index = candidate(&uploaded).map_err(BackupError::Inconsistent)?;

        // Layers the remote index names and the new one does not: queued
        // durably before the index that drops them goes up.
        let doomed: Vec<DoomedLayer> = state
            .remote
            .iter()
            .flat_map(|remote| remote.layers.iter())
            .filter(|(name, layer)| index.layers.get(*name) != Some(layer))
            .map(|(name, layer)| DoomedLayer { name: name.clone(), generation: layer.generation })
            .collect();
        if !doomed.is_empty() {
            self.write_deletion_queue(tenant, timeline, &doomed)?;
        }
        self.storage.put_bytes(&index_path, Bytes::from(index.to_json())).await?;
        slot.set_remote_consistent_lsn(index.disk_consistent_lsn.0);
        slot.index_durable(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64);
        slot.set_queue(0, 0);
        summary.uploaded_indexes += 1;
        self.record_remote_layers(tenant, timeline, &index);
        state.remote = Some(index);
        summary.deleted += self.finish_deletions(tenant, timeline, state.remote.as_ref(), slot).await?;
        Ok(())
    }

    async fn remove_orphans(&self, tenant: TenantId, timeline: TimelineId, slot: &RemoteSlot) -> Result<usize, BackupError> {
        let check = remote::check::check_timeline(&self.storage, tenant, timeline, false).await?;
        let mut removed = 0;
        for orphan in check.orphans {
            let ours = matches!(
                layout::parse_object_name(orphan.path.filename().unwrap_or_default()),
                Some(layout::ObjectKind::Layer(_, generation)) if generation == self.generation
            );
            if ours {
                self.storage.delete(&orphan.path).await?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(
                "backup of tenant {tenant} timeline {timeline}: removed {removed} layer objects no index names (left by a stop)"
            );
            slot.add_deleted(removed as u64);
        }
        Ok(removed)
    }

    /// Notes which layers the timeline's durable remote index names, for
    /// `pageserver.layers` (its `remote` column): `<data_dir>/backup/
    /// <tenant>_<timeline>.remote-layers`, a JSON object of names and sizes,
    /// replaced whole. Informational: a failure is only logged.
    fn record_remote_layers(&self, tenant: TenantId, timeline: TimelineId, index: &RemoteIndex) {
        let layers: BTreeMap<&String, u64> = index.layers.iter().map(|(name, layer)| (name, layer.size)).collect();
        let path = remote_layers_path(&self.state_dir, tenant, timeline);
        let tmp = path.with_extension("remote-layers.tmp");
        let written = std::fs::create_dir_all(&self.state_dir)
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(&layers).expect("names and sizes serialize")))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!("backup of timeline {timeline}: cannot write {}: {e}", path.display());
        }
    }

    fn queue_path(&self, tenant: TenantId, timeline: TimelineId) -> PathBuf {
        self.state_dir.join(format!("{tenant}_{timeline}.deletions"))
    }

    fn write_deletion_queue(&self, tenant: TenantId, timeline: TimelineId, doomed: &[DoomedLayer]) -> Result<(), BackupError> {
        let path = self.queue_path(tenant, timeline);
        let fail = |e: std::io::Error| BackupError::DeletionQueue { path: path.clone(), reason: e.to_string() };
        // Entries a previous, unfinished queue holds stay queued too.
        let mut all = read_deletion_queue(&path)?;
        for entry in doomed {
            if !all.contains(entry) {
                all.push(entry.clone());
            }
        }
        std::fs::create_dir_all(&self.state_dir).map_err(fail)?;
        let tmp = path.with_extension("deletions.tmp");
        let text = serde_json::to_vec_pretty(&all).expect("a list of names serializes");
        std::fs::write(&tmp, text).map_err(fail)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)?;
        std::fs::File::open(&self.state_dir).and_then(|d| d.sync_all()).map_err(fail)?;
        Ok(())
    }

    /// Deletes what the timeline's queue file lists and `remote` (the
    /// durable remote index) does not name, then removes the file.
    async fn finish_deletions(
        &self,
        tenant: TenantId,
        timeline: TimelineId,
        remote: Option<&RemoteIndex>,
        slot: &RemoteSlot,
    ) -> Result<usize, BackupError> {
        let path = self.queue_path(tenant, timeline);
        let queued = read_deletion_queue(&path)?;
        if queued.is_empty() {
            return Ok(0);
        }
        let mut deleted = 0;
        for entry in &queued {
            let still_named = remote.is_some_and(|r| r.layers.get(&entry.name).is_some_and(|l| l.generation == entry.generation));
            if still_named {
                continue;
            }
            let Some(name) = LayerName::parse(&entry.name) else {
                tracing::warn!("deletion queue {}: {:?} is not a layer name; skipped", path.display(), entry.name);
                continue;
            };
            self.storage.delete(&layout::layer_path(tenant, timeline, &name, entry.generation)).await?;
            deleted += 1;
        }
        slot.add_deleted(deleted as u64);
        std::fs::remove_file(&path).map_err(|e| BackupError::DeletionQueue { path: path.clone(), reason: e.to_string() })?;
        Ok(deleted)
    }
}

fn remote_layers_path(state_dir: &Path, tenant: TenantId, timeline: TimelineId) -> PathBuf {
    state_dir.join(format!("{tenant}_{timeline}.remote-layers"))
}

/// The layers (name and size) the timeline's durable remote index names,
/// as the backup worker last recorded them (None: it has recorded none).
pub fn remote_layers(state_dir: &Path, tenant: TenantId, timeline: TimelineId) -> Option<BTreeMap<String, u64>> {
    serde_json::from_slice(&std::fs::read(remote_layers_path(state_dir, tenant, timeline)).ok()?).ok()
}

fn read_deletion_queue(path: &Path) -> Result<Vec<DoomedLayer>, BackupError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| BackupError::DeletionQueue { path: path.to_path_buf(), reason: e.to_string() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(BackupError::DeletionQueue { path: path.to_path_buf(), reason: e.to_string() }),
    }
}

/// The timeline's WAL source for the index, without its password.
fn read_source(tenants_dir: &Path, tenant: TenantId, timeline: TimelineId) -> Option<RemoteSource> {
    let path = tenants_dir.join(tenant.to_string()).join("sources").join(format!("{timeline}.json"));
    let meta: SourceMeta = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(RemoteSource {
        conninfo: conninfo_without_password(&meta.conninfo),
        slot: meta.slot,
        system_id: meta.system_id,
        pg_timeline: meta.pg_timeline,
    })
}

/// `(tenant, timeline, directory)` of every timeline with an index on disk
/// (directories being created or deleted, `<id>.new`, are skipped).
fn timelines_on_disk(tenants_dir: &Path) -> std::io::Result<Vec<(TenantId, TimelineId, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(tenants_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for tenant_entry in entries {
        let tenant_entry = tenant_entry?;
        let Ok(tenant) = tenant_entry.file_name().to_string_lossy().parse::<TenantId>() else { continue };
        let Ok(timelines) = std::fs::read_dir(tenant_entry.path().join("timelines")) else { continue };
        for entry in timelines {
            let entry = entry?;
            let Ok(timeline) = entry.file_name().to_string_lossy().parse::<TimelineId>() else { continue };
            if entry.path().join(storage::repo::index::INDEX_FILE_NAME).exists() {
                out.push((tenant, timeline, entry.path()));
            }
        }
    }
    out.sort_by_key(|(t, l, _)| (*t, *l));
    Ok(out)
}

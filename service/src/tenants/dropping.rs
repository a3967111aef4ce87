//! Dropping timelines and tenants (`pageserver.drop_timeline`,
//! `pageserver.drop_tenant`). Driven step by step like a detach, so the
//! command thread never waits on a receiver or the layers worker:
//!
//! 1. **stop** (first call): refused while the timeline has branches, imports
//!    its base backup, or its tenant is being detached; otherwise it is
//!    marked `dropping` (the layers worker takes no new pass on it, the
//!    flusher leaves it alone) and its WAL receiver is cancelled;
//! 2. **remove** (a later call), once the receiver has ended and no layers
//!    pass runs on it: with object storage, a marker asks the backup worker
//!    to delete the timeline's objects (`crate::backup::removal`); then the
//!    timeline leaves the tenant, its directory is renamed to `<id>.new`
//!    and deleted (`Repository::delete_timeline`), and its source file is
//!    removed. A crash after the rename leaves a `<id>.new` directory that
//!    the next start removes; before it, the timeline is back, streaming;
//! 3. the primary's replication slot is dropped (`DROP_REPLICATION_SLOT
//!    ... WAIT`, at most [`SLOT_DROP_TIMEOUT`]); if that fails, the answer
//!    says why, and the slot stays for the DBA to drop.
//!
//! An abandoned drop (the SQL call cancelled or failed before step 2) ends
//! with `Manager::resume_timeline`: the timeline streams again.
//!
//! A tenant is dropped once it has no timelines left: it leaves the
//! manager and its directory is removed the way a detach removes it.

use super::{source_path, Manager};
use crate::error::ServiceError;
use crate::timeline_handle::{TenantId, TimelineState};
use crate::walreceiver::replication::ReplicationConn;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use storage::repo::TimelineId;

/// How long a resume waits for the stopped receiver to end.
const RESUME_WAIT: Duration = Duration::from_secs(30);
/// How long dropping a replication slot on the primary may take.
pub const SLOT_DROP_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to one step of dropping a timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropStep {
    /// Not yet: what the drop waits for, in words.
    Waiting(String),
    Dropped(DroppedTimeline),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedTimeline {
    /// The primary's replication slot the timeline streamed from (None for a branch).
    pub slot: Option<String>,
    pub slot_dropped: bool,
    /// Why the slot is still there.
    pub slot_error: Option<String>,
    /// The backup worker is to delete the timeline's objects.
    pub remote_pending: bool,
}

impl Manager {
    /// `<data_dir>/backup`: the backup worker's state, where drop markers go.
    pub fn backup_state_dir(&self) -> std::path::PathBuf {
        self.root.parent().unwrap_or(&self.root).join("backup")
    }

    /// One step of dropping timeline `timeline_id` (see the module docs).
    pub fn drop_timeline_step(&self, tenant_id: TenantId, timeline_id: TimelineId) -> Result<DropStep, ServiceError> {
        let tenant = self.tenant(tenant_id)?;
        let entry = self.timeline(tenant_id, timeline_id)?;
        {
            // The guard: no detach begins, no branch or layer work starts meanwhile.
            let _change = tenant.change_guard()?;
            let mut state = entry.status.state.lock();
            if *state != TimelineState::Dropping {
                let mut children: Vec<String> = tenant
                    .timelines
                    .read()
                    .values()
                    .filter(|e| e.timeline.ancestor().is_some_and(|(a, _)| a.id() == timeline_id))
                    .map(|e| e.timeline.id().to_string())
                    .collect();
                if !children.is_empty() {
                    children.sort();
                    return Err(ServiceError::HasDependents(format!(
                        "timeline {timeline_id} of tenant {tenant_id} has branches ({}); drop them first",
                        children.join(", ")
                    )));
                }
                if *state == TimelineState::Importing {
                    return Err(ServiceError::NotInPrerequisiteState(format!(
                        "timeline {timeline_id} of tenant {tenant_id} is still importing its base backup; drop it once it is active"
                    )));
                }
                *state = TimelineState::Dropping;
                entry.status.stop.lock().cancel();
                tracing::info!("dropping timeline {tenant_id}/{timeline_id}: its WAL receiver is stopping");
            }
        }
        if entry.status.receiving.load(Ordering::SeqCst) {
            return Ok(DropStep::Waiting("its WAL receiver to stop".into()));
        }
        if entry.status.compaction.running.load(Ordering::SeqCst) {
            return Ok(DropStep::Waiting("the layers worker to finish its pass on it".into()));
        }
        // Held until the directory is gone: the flusher writes nothing into it.
        let flush = entry.status.flushing.lock();
        let remote_pending = self.host.remote.is_some_and(|table| table.enabled());
        if remote_pending {
            crate::backup::removal::mark_dropped(&self.backup_state_dir(), tenant_id, timeline_id)
                .map_err(|e| ServiceError::Io(format!("cannot mark timeline {timeline_id} for deletion from object storage: {e}")))?;
        }
        tenant.timelines.write().remove(&timeline_id);
        if let Err(e) = tenant.repo.delete_timeline(timeline_id) {
            // Still whole (the rename did not happen): it stays, to drop again.
            tenant.timelines.write().insert(timeline_id, entry.clone());
            if remote_pending {
                if let Err(e) = crate::backup::removal::unmark_dropped(&self.backup_state_dir(), tenant_id, timeline_id) {
                    tracing::warn!("timeline {tenant_id}/{timeline_id}: cannot withdraw its deletion from object storage: {e}");
                }
            }
            return Err(ServiceError::from(e).context(format!("dropping timeline {timeline_id}")));
        }
        let source = entry.source.lock().clone();
        let sources = tenant.dir.join("sources");
        match std::fs::remove_file(source_path(&tenant.dir, timeline_id)) {
            Ok(()) => std::fs::File::open(&sources)
                .and_then(|d| d.sync_all())
                .map_err(|e| ServiceError::Io(format!("syncing {}: {e}", sources.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ServiceError::Io(format!("removing the source of timeline {timeline_id}: {e}"))),
        }
        drop(flush);
        tracing::info!("dropped timeline {tenant_id}/{timeline_id}");
        let mut dropped = DroppedTimeline { slot: None, slot_dropped: false, slot_error: None, remote_pending };
        if let Some(source) = source {
            dropped.slot = Some(source.slot.clone());
            match self.runtime.block_on(async {
                tokio::time::timeout(SLOT_DROP_TIMEOUT, async {
                    let mut conn = ReplicationConn::connect(&source.conninfo).await?;
                    conn.query(&format!("DROP_REPLICATION_SLOT {} WAIT", source.slot)).await
                })
                .await
            }) {
                Ok(Ok(_)) => dropped.slot_dropped = true,
                Ok(Err(e)) if e.code() == Some("42704") => dropped.slot_error = Some("it no longer exists on the primary".into()),
                Ok(Err(e)) => dropped.slot_error = Some(e.to_string()),
                Err(_) => dropped.slot_error = Some(format!("the primary did not answer within {} s", SLOT_DROP_TIMEOUT.as_secs())),
            }
            if let Some(e) = &dropped.slot_error {
                tracing::warn!("dropped timeline {tenant_id}/{timeline_id}: replication slot \"{}\" not dropped: {e}", source.slot);
            }
        }
        Ok(DropStep::Dropped(dropped))
    }

    /// Ends an abandoned drop of a timeline that is still there: it takes
    /// layer work again and streams from its primary. Returns whether a drop
    /// was under way.
    pub fn resume_timeline(self: &Arc<Self>, tenant_id: TenantId, timeline_id: TimelineId) -> Result<bool, ServiceError> {
        let tenant = self.tenant(tenant_id)?;
        let entry = self.timeline(tenant_id, timeline_id)?;
        if *entry.status.state.lock() != TimelineState::Dropping {
            return Ok(false);
        }
        // Two receivers must never write one timeline: the stopped one ends first.
        let deadline = std::time::Instant::now() + RESUME_WAIT;
        while entry.status.receiving.load(Ordering::SeqCst) {
            if std::time::Instant::now() > deadline {
                return Err(ServiceError::Unavailable(format!("the WAL receiver of timeline {timeline_id} is still stopping; try again")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _change = tenant.change_guard()?;
        let source = entry.source.lock().clone();
        *entry.status.stop.lock() = tokio_util::sync::CancellationToken::new();
        *entry.status.state.lock() = if source.is_some() { TimelineState::Active } else { TimelineState::Branch };
        if source.is_some() {
            self.spawn_receiver(tenant.clone(), entry.clone());
        }
        tracing::info!("timeline {tenant_id}/{timeline_id}: the drop was abandoned; it streams again");
        Ok(true)
    }

    /// Whether the backup worker has yet to delete a dropped timeline's objects.
    pub fn removal_pending(&self, tenant: TenantId, timeline: TimelineId) -> bool {
        crate::backup::removal::removal_pending(&self.backup_state_dir(), tenant, timeline)
    }

    /// Drops a tenant with no timelines left.
    pub fn drop_tenant(&self, id: TenantId) -> Result<(), ServiceError> {
        let tenant = self.tenant(id)?;
        let _change = tenant.change_guard()?;
        let mut left: Vec<String> = tenant.timelines.read().keys().map(|t| t.to_string()).collect();
        if !left.is_empty() {
            left.sort();
            return Err(ServiceError::HasDependents(format!(
                "tenant {id} has {} timelines ({}); drop them first, or pass cascade => true",
                left.len(),
                left.join(", ")
            )));
        }
        self.tenants.write().remove(&id);
        let data_dir = self.root.parent().unwrap_or(&self.root);
        super::detach::remove_tenant_dir(data_dir, &tenant.dir, id)?;
        tracing::info!("dropped tenant {id}");
        Ok(())
    }
}

//! Detaching a tenant: the host hands it over to object storage and keeps
//! nothing of it. Driven step by step (`Manager::detach_step`, called again
//! by `pageserver.detach_tenant` until it answers `Detached`), so the
//! command thread never blocks on it:
//!
//! 1. **stop** (from `Attached`): refused while a timeline imports its base
//!    backup or is broken; otherwise the tenant's WAL receivers are
//!    cancelled and new timelines, branches, layer work and swaps are
//!    refused;
//! 2. **quiet** (from `Stopping`): once the receivers have ended, the
//!    layers worker holds no grant on the tenant, and every timeline's
//!    in-memory layers are on disk, nothing under the tenant's directory
//!    changes any more; the number of the newest backup pass is noted;
//! 3. **in the bucket** (from `Quiet`): once a backup pass numbered above it
//!    (so it read the final local indexes) has found every timeline in
//!    sync — its index uploaded, no deletion pending — the tenant leaves
//!    the manager and its directory is renamed under `<data_dir>/detached/`
//!    (one atomic step) and removed. A crash before the rename leaves the
//!    tenant attached and streaming after restart; after it, the start
//!    removes what is left.
//!
//! An abandoned detach (the SQL call cancelled or failed) ends with
//! `Manager::resume_tenant`: receivers start again on the same timelines.
//! The primary's replication slots stay: they keep the WAL from each
//! timeline's `remote_consistent_lsn`, where an attach resumes.

use super::{DetachState, Manager, TenantRun};
use crate::error::ServiceError;
use crate::timeline_handle::{TenantId, TimelineState};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use storage::lsn::Lsn;
use tokio_util::task::TaskTracker;

/// Where detached tenant directories go before they are removed.
const DETACHED_DIR: &str = "detached";
/// How long a resume waits for the stopped receivers to end.
const RESUME_WAIT: Duration = Duration::from_secs(30);

/// The answer to one detach step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetachStep {
    /// Not yet: what the detach waits for.
    Waiting(DetachWait),
    /// Done: each timeline with the LSN up to which the bucket holds it.
    Detached(Vec<DetachedTimeline>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachWait {
    /// What is awaited, in words (`pageserver.detach_tenant` shows it).
    pub waiting_for: String,
    /// Timelines not yet in the bucket, and the bytes queued for them.
    pub timelines_left: usize,
    pub queued_bytes: u64,
    /// The backup worker's last error on one of them, if any.
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachedTimeline {
    pub timeline: String,
    pub remote_consistent_lsn: String,
}

fn waiting(waiting_for: String) -> DetachStep {
    DetachStep::Waiting(DetachWait { waiting_for, timelines_left: 0, queued_bytes: 0, last_error: None })
}

impl Manager {
    /// One step of detaching tenant `id` (see the module documentation).
    pub fn detach_step(&self, id: TenantId) -> Result<DetachStep, ServiceError> {
        let Some(table) = self.host.remote.filter(|table| table.enabled()) else {
            return Err(ServiceError::NotInPrerequisiteState(
                "pageserver.remote_storage is not set: a detached tenant would be lost; there is nowhere to hand it over to".into(),
            ));
        };
        let tenant = self.tenant(id)?;
        let timelines: Vec<_> = tenant.timelines.read().values().cloned().collect();
        let mut run = tenant.run.lock();
        if run.detach == DetachState::Attached {
            for entry in &timelines {
                let timeline = entry.timeline.id();
                match *entry.status.state.lock() {
                    TimelineState::Importing => {
                        return Err(ServiceError::NotInPrerequisiteState(format!(
                            "timeline {timeline} of tenant {id} is still importing its base backup; detach it once it is active"
                        )))
                    }
                    TimelineState::Dropping => {
                        return Err(ServiceError::NotInPrerequisiteState(format!(
                            "timeline {timeline} of tenant {id} is being dropped; detach the tenant once the drop is done"
                        )))
                    }
                    TimelineState::Broken => {
                        return Err(ServiceError::NotInPrerequisiteState(format!(
                            "timeline {timeline} of tenant {id} is broken ({}); it cannot be handed over",
                            entry.status.error.lock().clone().unwrap_or_default()
                        )))
                    }
                    _ => {}
                }
            }
            run.detach = DetachState::Stopping;
            run.cancel.cancel();
            run.tasks.close();
            tracing::info!("detaching tenant {id}: ingest stopped, waiting for the last changes to reach object storage");
        }
        if run.detach == DetachState::Stopping {
            if !run.tasks.is_empty() {
                return Ok(waiting(format!("the tenant's WAL receivers to stop ({} running)", run.tasks.len())));
            }
            for entry in &timelines {
                let tl = &entry.timeline;
                if entry.status.compaction.running.load(Ordering::Relaxed) {
                    return Ok(waiting(format!("the layers worker to finish its pass on timeline {}", tl.id())));
                }
                if tl.disk_consistent_lsn() < tl.last_record_lsn() {
                    if tl.frozen_layer_count() == 0 {
                        tl.writer().freeze().map_err(|e| ServiceError::from(e).context(format!("timeline {}", tl.id())))?;
                    }
                    return Ok(waiting(format!("timeline {} to reach disk up to {}", tl.id(), tl.last_record_lsn())));
                }
            }
            run.detach = DetachState::Quiet { pass: table.passes_started() };
        }
        let DetachState::Quiet { pass } = run.detach else { unreachable!("the steps above end in Quiet") };
        let mut wait = DetachWait { waiting_for: String::new(), timelines_left: 0, queued_bytes: 0, last_error: None };
        let mut done = Vec::new();
        for entry in &timelines {
            let timeline = entry.timeline.id();
            match table.find(id.0, timeline.0).map(|slot| slot.status()) {
                Some(status) if status.synced_pass > pass => done.push(DetachedTimeline {
                    timeline: timeline.to_string(),
                    remote_consistent_lsn: Lsn(status.remote_consistent_lsn).to_string(),
                }),
                status => {
                    wait.timelines_left += 1;
                    if let Some(status) = status {
                        wait.queued_bytes += status.queued_bytes;
                        if !status.last_error.is_empty() {
                            wait.last_error = Some(format!("timeline {timeline}: {}", status.last_error));
                        }
                    }
                }
            }
        }
        if wait.timelines_left > 0 {
            wait.waiting_for = format!("the backup worker to upload {} of {} timelines", wait.timelines_left, timelines.len());
            return Ok(DetachStep::Waiting(wait));
        }
        self.tenants.write().remove(&id);
        drop(run);
        let data_dir = self.root.parent().unwrap_or(&self.root);
        remove_tenant_dir(data_dir, &tenant.dir, id)?;
        tracing::info!("detached tenant {id}: {} timelines, all in object storage; the local copy is removed", done.len());
        Ok(DetachStep::Detached(done))
    }

    /// Ends an abandoned detach: the tenant takes changes again and its
    /// timelines stream from their primaries. Returns whether a detach was
    /// under way.
    pub fn resume_tenant(self: &Arc<Self>, id: TenantId) -> Result<bool, ServiceError> {
        let tenant = self.tenant(id)?;
        let tasks = {
            let run = tenant.run.lock();
            if run.detach == DetachState::Attached {
                return Ok(false);
            }
            run.tasks.clone()
        };
        // Two receivers must never write one timeline: the stopped ones end first.
        let ended = self.runtime.block_on(async { tokio::time::timeout(RESUME_WAIT, tasks.wait()).await.is_ok() });
        if !ended {
            return Err(ServiceError::Unavailable(format!("the WAL receivers of tenant {id} are still stopping; try again")));
        }
        *tenant.run.lock() = TenantRun { detach: DetachState::Attached, cancel: self.cancel.child_token(), tasks: TaskTracker::new() };
        self.resume_timelines(&tenant);
        tracing::info!("tenant {id}: the detach was abandoned; its timelines stream again");
        Ok(true)
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> ServiceError {
    move |e| ServiceError::Io(format!("{what}: {e}"))
}

/// Moves the tenant's directory out of `tenants/` in one rename (durable
/// before anything is deleted), then deletes it.
pub(super) fn remove_tenant_dir(data_dir: &Path, dir: &Path, id: TenantId) -> Result<(), ServiceError> {
    let detached = data_dir.join(DETACHED_DIR);
    std::fs::create_dir_all(&detached).map_err(io(format!("creating {}", detached.display())))?;
    let target = detached.join(id.to_string());
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(io(format!("removing {}", target.display())))?;
    }
    std::fs::rename(dir, &target).map_err(io(format!("moving {} to {}", dir.display(), target.display())))?;
    for parent in [dir.parent().unwrap_or(data_dir), detached.as_path()] {
        std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io(format!("syncing {}", parent.display())))?;
    }
    if let Err(e) = std::fs::remove_dir_all(&target) {
        tracing::warn!("detached tenant {id}: cannot remove {} ({e}); the next start removes it", target.display());
    }
    Ok(())
}

/// At start: removes what a detach moved out and did not finish deleting.
pub(crate) fn remove_unfinished(data_dir: &Path) -> Result<(), ServiceError> {
    let detached = data_dir.join(DETACHED_DIR);
    match std::fs::remove_dir_all(&detached) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ServiceError::Io(format!("removing {}: {e}", detached.display()))),
    }
}

//! Deleting dropped timelines from object storage.
//!
//! `pageserver.drop_timeline` (in the main worker) marks a timeline with
//! an empty file `<data_dir>/backup/<tenant>_<timeline>.dropped`, made
//! durable before the timeline's directory is deleted. Each backup pass
//! then deletes every object under the prefix of each marked timeline that
//! is gone from disk, its deletion queue file, and last the marker. A
//! crash or an unreachable store leaves the marker, and a later pass
//! finishes; deleting an object twice is not an error. A marker whose
//! timeline is still on disk when the main worker starts (it crashed
//! between marking and deleting) is withdrawn ([`unmark_existing`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use remote::layout;
use storage::repo::TimelineId;

use super::{BackupError, BackupWorker};
use crate::timeline_handle::TenantId;

const MARKER_SUFFIX: &str = ".dropped";

fn marker_path(state_dir: &Path, tenant: TenantId, timeline: TimelineId) -> PathBuf {
    state_dir.join(format!("{tenant}_{timeline}{MARKER_SUFFIX}"))
}

/// Asks the backup worker to delete the timeline's objects once its
/// directory is gone (durable when this returns).
pub fn mark_dropped(state_dir: &Path, tenant: TenantId, timeline: TimelineId) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    std::fs::File::create(marker_path(state_dir, tenant, timeline))?.sync_all()?;
    std::fs::File::open(state_dir)?.sync_all()
}

/// Withdraws the request (the timeline stays after all); durable when this returns.
pub fn unmark_dropped(state_dir: &Path, tenant: TenantId, timeline: TimelineId) -> std::io::Result<()> {
    match std::fs::remove_file(marker_path(state_dir, tenant, timeline)) {
        Ok(()) => std::fs::File::open(state_dir)?.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// At the main worker's start: withdraws the requests of timelines that
/// are still on disk (a crash between marking and deleting). Otherwise a
/// later detach, which removes the directory, would have the backup
/// worker delete a timeline that lives on.
pub fn unmark_existing(state_dir: &Path, tenants_dir: &Path) -> std::io::Result<usize> {
    let mut withdrawn = 0;
    for (tenant, timeline) in marked(state_dir)? {
        if tenants_dir.join(tenant.to_string()).join("timelines").join(timeline.to_string()).exists() {
            unmark_dropped(state_dir, tenant, timeline)?;
            withdrawn += 1;
        }
    }
    Ok(withdrawn)
}

/// Whether the timeline's objects are still to be deleted.
pub fn removal_pending(state_dir: &Path, tenant: TenantId, timeline: TimelineId) -> bool {
    marker_path(state_dir, tenant, timeline).exists()
}

/// The marked timelines.
fn marked(state_dir: &Path) -> std::io::Result<Vec<(TenantId, TimelineId)>> {
    let entries = match std::fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some((tenant, timeline)) = name.strip_suffix(MARKER_SUFFIX).and_then(|ids| ids.split_once('_')) else { continue };
        if let (Ok(tenant), Ok(timeline)) = (tenant.parse(), timeline.parse()) {
            out.push((tenant, timeline));
        }
    }
    Ok(out)
}

impl BackupWorker {
    /// Deletes the objects of every marked timeline that is no longer on
    /// disk (`on_disk`); returns how many objects went. A failure stops
    /// this part of the pass and is retried after a backoff.
    pub(super) async fn remove_dropped(&mut self, on_disk: &[(TenantId, TimelineId, PathBuf)]) -> usize {
        if self.removal_retry_at.is_some_and(|at| Instant::now() < at) {
            return 0;
        }
        let mut deleted = 0;
        let result: Result<(), BackupError> = async {
            let fail = |e: std::io::Error| BackupError::DeletionQueue { path: self.state_dir.clone(), reason: e.to_string() };
            for (tenant, timeline) in marked(&self.state_dir).map_err(fail)? {
                if on_disk.iter().any(|(t, l, _)| (*t, *l) == (tenant, timeline)) {
                    continue; // the main worker has not deleted it yet
                }
                let objects = self.storage.list(&layout::timeline_prefix(tenant, timeline)).await?;
                for object in &objects {
                    self.storage.delete(&object.path).await?;
                    deleted += 1;
                }
                for path in [self.queue_path(tenant, timeline), super::remote_layers_path(&self.state_dir, tenant, timeline)] {
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(fail(e)),
                    }
                }
                std::fs::remove_file(marker_path(&self.state_dir, tenant, timeline)).map_err(fail)?;
                std::fs::File::open(&self.state_dir).and_then(|d| d.sync_all()).map_err(fail)?;
                tracing::info!("dropped timeline {tenant}/{timeline}: deleted its {} objects from object storage", objects.len());
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                self.removal_backoff.succeeded();
                self.removal_retry_at = None;
            }
            Err(e) => {
                let wait = self.removal_backoff.failed();
                self.removal_retry_at = Some(Instant::now() + wait);
                tracing::warn!("deleting dropped timelines from object storage: {e} (next try in {:.1} s)", wait.as_secs_f64());
            }
        }
        deleted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_of_timelines_still_on_disk_are_withdrawn_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (state, tenants) = (dir.path().join("backup"), dir.path().join("tenants"));
        let tenant: TenantId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let (kept, gone) = (TimelineId(7), TimelineId(8));
        std::fs::create_dir_all(tenants.join(tenant.to_string()).join("timelines").join(kept.to_string())).unwrap();
        for timeline in [kept, gone] {
            mark_dropped(&state, tenant, timeline).unwrap();
            assert!(removal_pending(&state, tenant, timeline));
        }
        std::fs::write(state.join("not-a-marker.dropped"), b"").unwrap();
        assert_eq!(marked(&state).unwrap().len(), 2);
        assert_eq!(unmark_existing(&state, &tenants).unwrap(), 1);
        assert!(!removal_pending(&state, tenant, kept));
        assert!(removal_pending(&state, tenant, gone));
        unmark_dropped(&state, tenant, gone).unwrap();
        unmark_dropped(&state, tenant, gone).unwrap();
        assert!(marked(&state).unwrap().is_empty());
    }
}

//! A timeline as the main worker's tasks share it: the storage timeline,
//! where its WAL comes from, and its live status. The WAL receiver and the
//! page service work on a [`TimelineHandle`]; the manager (module `tenants`)
//! owns the handles and the tasks.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::repo::{CompactionStats, GcStats, Timeline, TimelineId};

/// A tenant's identifier: 32 hexadecimal digits, like a timeline's.
pub type TenantId = TimelineId;

/// Where a timeline's WAL comes from, persisted next to the repository.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceMeta {
    pub conninfo: String,
    pub slot: String,
    pub system_id: u64,
    pub pg_timeline: u32,
    /// The base backup's start LSN (0 until known).
    pub start_lsn: u64,
    /// Import this tar file (a `pg_basebackup -Ft` base.tar) instead of
    /// streaming `BASE_BACKUP`.
    #[serde(default)]
    pub basebackup_tar: Option<String>,
    /// `importing` or `active`.
    pub state: String,
}

/// Live state of one timeline, for `pageserver.timelines`.
#[derive(Default)]
pub struct TimelineStatus {
    /// `importing`, `active`, `broken`, or `branch` (no source).
    pub state: Mutex<String>,
    pub import: storage::import::ImportProgress,
    pub error: Mutex<Option<String>>,
    pub receiver: ReceiverStatus,
    pub compaction: CompactionStatus,
}

/// What the compaction thread has done on one timeline.
#[derive(Default)]
pub struct CompactionStatus {
    /// A pass (L0 → L1, image layers, then GC) is running now.
    pub running: AtomicBool,
    /// Passes finished since the main worker started.
    pub passes: AtomicU64,
    pub last: Mutex<Option<CompactionPass>>,
}

/// One finished pass of compaction and GC.
pub struct CompactionPass {
    pub finished: Instant,
    pub took: Duration,
    pub compaction: Result<CompactionStats, String>,
    pub gc: Result<GcStats, String>,
}

impl CompactionPass {
    /// One line for `pageserver.timelines()`.
    pub fn describe(&self) -> String {
        let compaction = match &self.compaction {
            Err(e) => format!("compaction failed: {e}"),
            Ok(s) if s.l0_merged == 0 && s.images_written == 0 => "nothing to compact".to_string(),
            Ok(s) => format!(
                "merged {} L0 layers ({} MiB) into {} L1 layers, wrote {} image layers",
                s.l0_merged,
                s.l0_bytes >> 20,
                s.l1_written,
                s.images_written
            ),
        };
        let gc = match &self.gc {
            Err(e) => format!("GC failed: {e}"),
            Ok(s) if s.layers_removed == 0 => "nothing to remove".to_string(),
            Ok(s) => format!("GC removed {} layers ({} MiB)", s.layers_removed, s.bytes_removed >> 20),
        };
        format!("{compaction}; {gc}; took {:.1} s, finished {} s ago", self.took.as_secs_f64(), self.finished.elapsed().as_secs())
    }
}

/// What `pageserver.timelines` shows about the receiver.
#[derive(Default)]
pub struct ReceiverStatus {
    pub connected: AtomicBool,
    /// The primary's WAL end, from its last message.
    pub primary_lsn: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// One timeline of a tenant, shared by its tasks.
pub struct TimelineHandle {
    pub timeline: Arc<Timeline>,
    pub status: Arc<TimelineStatus>,
    pub source: Mutex<Option<SourceMeta>>,
}

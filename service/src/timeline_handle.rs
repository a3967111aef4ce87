//! A timeline as the main worker's tasks share it: the storage timeline,
//! where its WAL comes from, and its live status. The WAL receiver and the
//! page service work on a [`TimelineHandle`]; the manager (module `tenants`)
//! owns the handles and the tasks.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use storage::repo::Timeline;

pub use storage::repo::TenantId;

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
    pub state: SourceState,
}

/// How far a timeline with a source has come, as its source file records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// The base backup is being imported; after a crash it starts again.
    Importing,
    /// The import is durable; WAL streams from the slot.
    Active,
}

/// A timeline's state as `pageserver.timelines()` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimelineState {
    #[default]
    Importing,
    Active,
    /// The import or a flush failed (see the timeline's last error).
    Broken,
    /// A branch: no source of its own.
    Branch,
    /// Its tenant is being detached (`pageserver.detach_tenant`): ingest
    /// stopped, the last changes going to object storage.
    Detaching,
    /// `pageserver.drop_timeline` or `drop_tenant` is removing it.
    Dropping,
}

impl TimelineState {
    pub fn as_str(self) -> &'static str {
        match self {
            TimelineState::Importing => "importing",
            TimelineState::Active => "active",
            TimelineState::Broken => "broken",
            TimelineState::Branch => "branch",
            TimelineState::Detaching => "detaching",
            TimelineState::Dropping => "dropping",
        }
    }
}

impl std::fmt::Display for TimelineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<SourceState> for TimelineState {
    fn from(s: SourceState) -> TimelineState {
        match s {
            SourceState::Importing => TimelineState::Importing,
            SourceState::Active => TimelineState::Active,
        }
    }
}

/// Live state of one timeline, for `pageserver.timelines`.
#[derive(Default)]
pub struct TimelineStatus {
    pub state: Mutex<TimelineState>,
    pub import: storage::import::ImportProgress,
    pub error: Mutex<Option<String>>,
    pub receiver: ReceiverStatus,
    pub compaction: CompactionStatus,
    /// Cancelled to stop this timeline's WAL receiver alone (a drop); a
    /// fresh one when an abandoned drop resumes the timeline.
    pub stop: Mutex<tokio_util::sync::CancellationToken>,
    /// Its WAL receiver task is running (set before it is spawned).
    pub receiving: AtomicBool,
    /// Held by the flusher while it works on the timeline, and by a drop
    /// while it deletes the timeline's directory.
    pub flushing: Mutex<()>,
}

/// What the layers worker has done on one timeline, as it reported it.
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
    /// What the pass did, in the layers worker's words.
    pub summary: String,
}

impl CompactionPass {
    /// One line for `pageserver.timelines()`.
    pub fn describe(&self) -> String {
        format!("{}, finished {} s ago", self.summary, self.finished.elapsed().as_secs())
    }
}

/// What `pageserver.timelines` and `pageserver.stat_wal_receiver` show
/// about the receiver.
#[derive(Default)]
pub struct ReceiverStatus {
    pub connected: AtomicBool,
    /// The primary's WAL end, from its last message.
    pub primary_lsn: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Unix milliseconds of the last message from the primary (0: none).
    pub last_message_unix_ms: AtomicU64,
    /// A WAL position the primary announced that ingest had not reached
    /// then (0: none), and since when: once ingest passes it, a newer one
    /// is taken. The time since is the lag in time.
    pub pending_lsn: AtomicU64,
    pub pending_since_unix_ms: AtomicU64,
    /// Unix milliseconds by which ingest is known to have held everything
    /// the primary had sent (0: never shown).
    pub caught_up_unix_ms: AtomicU64,
    /// Sessions started after the first (each after a failure or an end).
    pub reconnects: AtomicU64,
    /// WAL bytes received since the main worker started.
    pub wal_bytes: AtomicU64,
}

impl ReceiverStatus {
    /// Notes a message from the primary (after `primary_lsn` took what it
    /// announced); `ingested` is the timeline's `last_record_lsn` now.
    pub fn heard(&self, ingested: u64) {
        let now = unix_ms();
        self.last_message_unix_ms.store(now, Ordering::Relaxed);
        let primary = self.primary_lsn.load(Ordering::Relaxed);
        let pending = self.pending_lsn.load(Ordering::Relaxed);
        if pending != 0 && ingested >= pending {
            self.caught_up_unix_ms.fetch_max(self.pending_since_unix_ms.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        if ingested >= primary {
            self.caught_up_unix_ms.fetch_max(now, Ordering::Relaxed);
        }
        if pending == 0 || ingested >= pending {
            if ingested < primary {
                self.pending_lsn.store(primary, Ordering::Relaxed);
                self.pending_since_unix_ms.store(now, Ordering::Relaxed);
            } else {
                self.pending_lsn.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Unix milliseconds by which ingest held everything the primary had
    /// sent, as far as messages show (None: not shown yet). `ingested` is
    /// the timeline's `last_record_lsn` now.
    pub fn caught_up_unix_ms(&self, ingested: u64) -> Option<u64> {
        let mut caught_up = self.caught_up_unix_ms.load(Ordering::Relaxed);
        if ingested >= self.primary_lsn.load(Ordering::Relaxed) {
            caught_up = caught_up.max(self.last_message_unix_ms.load(Ordering::Relaxed));
        }
        let pending = self.pending_lsn.load(Ordering::Relaxed);
        if pending != 0 && ingested >= pending {
            caught_up = caught_up.max(self.pending_since_unix_ms.load(Ordering::Relaxed));
        }
        (caught_up != 0).then_some(caught_up)
    }

    /// Seconds the timeline's ingest is behind the primary: 0 once it has
    /// what the primary announced, else the age of the oldest announced
    /// position not yet ingested.
    pub fn lag_seconds(&self, ingested: u64) -> f64 {
        let pending = self.pending_lsn.load(Ordering::Relaxed);
        if ingested >= self.primary_lsn.load(Ordering::Relaxed) || pending == 0 {
            return 0.0;
        }
        unix_ms().saturating_sub(self.pending_since_unix_ms.load(Ordering::Relaxed)) as f64 / 1000.0
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// One timeline of a tenant, shared by its tasks.
pub struct TimelineHandle {
    pub timeline: Arc<Timeline>,
    pub status: Arc<TimelineStatus>,
    pub source: Mutex<Option<SourceMeta>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_print_and_parse_as_32_hex_digits() {
        let id: TenantId = "000000000000000000000000000000ab".parse().unwrap();
        assert_eq!(id, TenantId(0xab));
        assert_eq!(id.to_string(), "000000000000000000000000000000ab");
        assert!("ab".parse::<TenantId>().is_err());
        assert!("zz000000000000000000000000000000".parse::<TenantId>().is_err());
    }

    #[test]
    fn source_files_keep_their_format_and_states_show_as_before() {
        // A source file as earlier versions wrote it.
        let old = r#"{"conninfo":"host=x","slot":"s","system_id":1,"pg_timeline":1,"start_lsn":0,"state":"active"}"#;
        let source: SourceMeta = serde_json::from_str(old).unwrap();
        assert_eq!(source.state, SourceState::Active);
        assert_eq!(source.basebackup_tar, None);
        let again = serde_json::to_string(&source).unwrap();
        assert!(again.contains(r#""state":"active""#), "{again}");
        assert!(serde_json::from_str::<SourceMeta>(&old.replace("active", "finished")).is_err());
        let shown: Vec<String> =
            [TimelineState::Importing, TimelineState::Active, TimelineState::Broken, TimelineState::Branch].map(|s| s.to_string()).into();
        assert_eq!(shown, ["importing", "active", "broken", "branch"]);
        assert_eq!(TimelineState::from(SourceState::Importing), TimelineState::Importing);
    }
}

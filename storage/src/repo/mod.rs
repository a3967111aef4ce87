//! The layered repository: timelines, branches, layer files, compaction, GC.
//!
//! A [`Repository`] owns the timelines of one tenant in a directory:
//!
//! ```text
//! <root>/timelines/<timeline id, 32 hex digits>/index        the timeline's index (see `index`)
//! <root>/timelines/<timeline id>/<layer file name>           immutable layer files (see `layer_file`)
//! ```
//!
//! Versions of a key (`crate::key::Key`) live in layers:
//!
//! - the **open in-memory layer** of a timeline receives ingest
//!   ([`TimelineWriter::put`]); when [`RepoConfig::checkpoint_distance`] bytes
//!   of WAL or [`RepoConfig::checkpoint_timeout`] have passed since it was
//!   opened it is **frozen** (immutable, still readable) and a new one opened;
//! - [`Timeline::flush_frozen_layers`] writes frozen layers as **L0 delta layer
//!   files**, then advances `disk_consistent_lsn` by replacing the index;
//! - [`Timeline::compact`] rewrites L0 deltas into **L1 deltas** partitioned by
//!   key range and materializes **image layers** where the delta depth is high;
//! - [`Repository::gc`] removes layers that no read inside the retention
//!   window, and no branch point, needs.
//!
//! Compaction, image creation and GC are planned on a view of the timeline
//! and applied by its owner as a [`LayerSwap`] ([`layer_work`]): in-process
//! on the timeline itself, or from another process on a read-only view
//! ([`Repository::open_read_only`]), which is how the layers worker runs them.
//!
//! Reading ([`Timeline::get`]) walks the layer map downward from the requested
//! LSN, collecting records until an image or a will-init record, crosses into
//! the ancestor timeline at the branch LSN, and hands the records to a
//! [`Redo`] implementation. Pages rebuilt by redo are kept in a page cache
//! keyed by (timeline, key, LSN) and serve as the base of later reads.
//! Directory-like keys (relation and database lists, sizes) have value
//! formats of their own, in [`dirs`], with the reads built on them
//! (`get_rel_size`, `rel_exists`, `list_rels`, `db_size`, SLRU segments).
//!
//! Known limits (to lift when tenants grow): every layer file read since
//! start-up keeps one open file descriptor and its block index in memory
//! (48 bytes per block of about 8 KiB, ~0.6 % of the file); the layer map is
//! searched linearly (fine for hundreds of layers per timeline); image
//! creation lists keys by reading the layers not yet covered by images.
//! Flushing is the caller's job: `TimelineWriter::finish_lsn` says when it
//! froze a layer, and the caller should run [`Timeline::flush_frozen_layers`]
//! on another thread. Memory stays bounded either way: when a timeline's
//! in-memory layers exceed [`RepoConfig::max_inmem_bytes`], `finish_lsn`
//! waits for that flush, or flushes itself when none is running
//! (back-pressure; ingest slows down instead of growing without bound).
//! Resident memory is then about `page_cache_bytes` plus, per timeline being
//! ingested, `max_inmem_bytes` (2 × `checkpoint_distance` by default) plus
//! one record, plus the layer index blocks mentioned above.
//!
//! File formats: layer files in [`layer_file`], the timeline index in
//! [`index`], values in [`crate::value`], keys in [`crate::key`].
//!
//! Concurrency: one writer per timeline, any number of readers. Readers take an
//! `Arc` snapshot of the layer map and never block the writer; layer files that
//! compaction or GC replaced are unlinked when the last snapshot holding them is
//! dropped. Every change to the set of layer files is made durable by writing
//! new files first, then replacing the index atomically; files that no index
//! references (left by a crash) are removed when the repository is opened.

mod bulk_read;
mod compaction;
pub mod dirs;
mod gc;
mod image_import;
pub mod index;
mod inmem_layer;
pub mod layer_file;
mod layer_map;
pub mod layer_work;
mod page_cache;
mod reconstruct;
mod repository;
mod timeline;

pub use bulk_read::BulkReadStats;
pub use compaction::CompactionStats;
pub use gc::GcStats;
pub use image_import::ImageImport;
pub use layer_file::{LayerKind, LayerName, LsnRange};
pub use layer_work::{GcChange, LayerSwap, LayerWork, LayerWorkGrant};
pub use reconstruct::{Redo, RedoError, RedoFailure, RedoItem};
pub use repository::Repository;
pub use timeline::{BackpressureStats, Timeline, TimelineWriter};

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use crate::key::Key;
use crate::lsn::Lsn;

/// Settings of a repository (one tenant); they apply to all its timelines.
#[derive(Clone, Debug)]
pub struct RepoConfig {
    /// Freeze the open in-memory layer after this many bytes of WAL.
    pub checkpoint_distance: u64,
    /// Freeze the open in-memory layer after it has been open this long.
    pub checkpoint_timeout: Duration,
    /// Bound on the bytes held by one timeline's in-memory layers, the open
    /// one and the frozen ones not yet flushed together (values as counted by
    /// the layers: page bytes plus a small per-version overhead); `None`
    /// (the default) means 2 × `checkpoint_distance`, which lets one layer be
    /// flushed while the next one fills. Once frozen layers exist and the
    /// total is above it, `TimelineWriter::finish_lsn` waits for a flush
    /// running on another thread, or flushes frozen layers itself when none
    /// is running, until it is not. The open layer alone is never held back
    /// (it is frozen at `checkpoint_distance`), so the in-memory layers hold
    /// at most `max(limit, checkpoint_distance)` plus the versions of one
    /// record. See [`RepoConfig::inmem_limit`].
    pub max_inmem_bytes: Option<u64>,
    /// Target size of L1 delta and image layer files.
    pub target_file_size: u64,
    /// Compact once this many L0 delta layers exist.
    pub compaction_threshold: usize,
    /// Create an image layer for a key range once this many delta layers lie above its latest image.
    pub image_creation_threshold: usize,
    /// ... or once this much WAL (bytes of LSN; 0 = never) lies between its
    /// latest image (or its oldest delta, if it has none) and the
    /// `disk_consistent_lsn` where the new image would go, and some delta
    /// above the image holds one of its keys. This bounds what a read
    /// replays: a read at LSN L of a retained history finds an image of its
    /// key range no further below L than this distance plus the WAL not yet
    /// flushed and ingested since the last pass of the layers worker.
    pub image_layer_distance: u64,
    /// GC keeps what reads at `last_record_lsn - gc_horizon` and later need ...
    pub gc_horizon: u64,
    /// ... and what reads at the LSN of `now - pitr_interval` and later need (the older of the two wins).
    pub pitr_interval: Duration,
    /// Bytes of pages rebuilt by redo kept for later reads (0 disables).
    pub page_cache_bytes: u64,
    /// How long a read that continues into an ancestor timeline waits for the
    /// ancestor to reach the branch LSN (after a restart it re-ingests first).
    pub ancestor_wait_timeout: Duration,
    /// Call fsync on layer files, index files and directories. Only tests turn this off.
    pub fsync: bool,
    /// The tenant's clusters run with `data_checksums = on`: every relation
    /// page a read returns carries a valid `pd_checksum`
    /// ([`crate::checksum`]); pages in WAL records and pages rebuilt by redo
    /// do not have one by themselves.
    pub data_checksums: bool,
    /// Threads of one bulk read ([`Timeline::read_in_order`], used by
    /// `fullbackup`): each has one batch of redo in flight, so about twice
    /// the number of redo workers keeps them all busy.
    pub read_parallelism: usize,
}

impl RepoConfig {
    /// The effective [`max_inmem_bytes`](Self::max_inmem_bytes).
    pub fn inmem_limit(&self) -> u64 {
        self.max_inmem_bytes.unwrap_or(self.checkpoint_distance.saturating_mul(2))
    }
}

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            checkpoint_distance: 256 * 1024 * 1024,
            checkpoint_timeout: Duration::from_secs(600),
            max_inmem_bytes: None,
            target_file_size: 128 * 1024 * 1024,
            compaction_threshold: 10,
            image_creation_threshold: 3,
            image_layer_distance: 1024 * 1024 * 1024,
            gc_horizon: 64 * 1024 * 1024,
            pitr_interval: Duration::from_secs(7 * 24 * 3600),
            page_cache_bytes: 64 * 1024 * 1024,
            ancestor_wait_timeout: Duration::from_secs(60),
            fsync: true,
            data_checksums: false,
            read_parallelism: 4,
        }
    }
}

/// A tenant's identifier: 128 bits printed as 32 hexadecimal digits, like
/// a timeline's, but a type of its own so that the two cannot be mixed up.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(pub u128);

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for TenantId {
    type Err = String;
    fn from_str(s: &str) -> Result<TenantId, String> {
        let bad = || format!("tenant id \"{s}\" is not 32 hexadecimal digits");
        if s.len() != 32 {
            return Err(bad());
        }
        u128::from_str_radix(s, 16).map(TenantId).map_err(|_| bad())
    }
}

/// A timeline's identifier: 128 bits, printed as 32 hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(pub u128);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for TimelineId {
    type Err = RepoError;
    fn from_str(s: &str) -> Result<TimelineId> {
        if s.len() != 32 {
            return Err(RepoError::Invalid(format!("timeline id {s:?} is not 32 hexadecimal digits")));
        }
        u128::from_str_radix(s, 16)
            .map(TimelineId)
            .map_err(|_| RepoError::Invalid(format!("timeline id {s:?} is not 32 hexadecimal digits")))
    }
}

/// Errors of the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A layer or index file failed a check: its path is named.
    #[error("corrupt file {}: {msg}", path.display())]
    Corrupt { path: PathBuf, msg: String },
    #[error("I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The read is below the GC cutoff: the versions it needs may be gone.
    #[error("read of {key} at {lsn} on timeline {timeline} is too old: below the GC cutoff {cutoff}")]
    TooOld { timeline: TimelineId, key: Key, lsn: Lsn, cutoff: Lsn },
    #[error("timed out waiting for timeline {timeline} to reach {lsn}; it is at {last_record_lsn}")]
    WaitTimeout { timeline: TimelineId, lsn: Lsn, last_record_lsn: Lsn },
    #[error("redo of {key} at {lsn} failed: {error}")]
    Redo { key: Key, lsn: Lsn, error: RedoError },
    #[error("timeline {0} not found")]
    TimelineNotFound(TimelineId),
    #[error("timeline {0} already exists")]
    TimelineExists(TimelineId),
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The owner of a timeline refused a layer swap that no longer fits
    /// ([`layer_work`]); the worker starts over from fresh state.
    #[error("layer swap refused: {0}")]
    SwapRefused(String),
    /// The timeline's owner, asked from another process, failed to answer
    /// or to apply a layer swap.
    #[error("the timeline's owner failed: {0}")]
    Owner(String),
    /// A crash simulated by [`CrashPoints`]; the repository must be reopened.
    #[error("simulated crash at {0}")]
    SimulatedCrash(&'static str),
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RepoError {
    let path = path.into();
    move |source| RepoError::Io { path, source }
}

/// Simulated crashes for tests: the n-th crash point reached fails with
/// [`RepoError::SimulatedCrash`], and so does everything after it, until the
/// repository is dropped and reopened from disk. Deferred file removals are
/// not carried out after a crash, as a killed process would not.
#[derive(Default, Debug)]
pub struct CrashPoints {
    countdown: AtomicI64,
    crashed: AtomicBool,
}

impl CrashPoints {
    /// Crash at the `n`-th crash point from now (1 = the next one); `None` disarms.
    pub fn arm(&self, n: Option<u64>) {
        self.countdown.store(n.map(|n| n as i64).unwrap_or(0), Ordering::SeqCst);
    }

    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// A point where the process could die.
    pub(crate) fn hit(&self, name: &'static str) -> Result<()> {
        if self.crashed() {
            return Err(RepoError::SimulatedCrash(name));
        }
        if self.countdown.load(Ordering::SeqCst) > 0 && self.countdown.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.crashed.store(true, Ordering::SeqCst);
            return Err(RepoError::SimulatedCrash(name));
        }
        Ok(())
    }
}

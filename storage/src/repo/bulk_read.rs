//! Bulk reads: many keys at one LSN (the relation files of `fullbackup`, the
//! pages of a new image layer), rebuilt in batches on several threads and
//! handed over in key order.
//!
//! Each batch is one [`Timeline::get_many`]: its keys share one pass over
//! the layer-file blocks, and its redo requests go out one after another.
//! With `read_parallelism` batches in flight at once, every redo worker has
//! work while the caller consumes finished batches in order (streaming a tar
//! as pages are rebuilt); a batch is started only while fewer than two per
//! thread wait to be consumed, so memory stays bounded whatever the size of
//! the read.

use std::collections::BTreeMap;
use std::ops::AddAssign;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use super::timeline::Timeline;
use super::{RepoError, Result};
use crate::key::Key;
use crate::lsn::Lsn;

/// Keys per batch: large enough that a batch reads each layer-file block it
/// touches once, small enough that the first pages go out at once.
pub const BULK_READ_BATCH_KEYS: usize = 64;

/// What a bulk read did (for logs and benchmarks). Times of the reading
/// threads are summed over the threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BulkReadStats {
    /// Keys read.
    pub keys: u64,
    /// Keys whose value needed redo.
    pub redone: u64,
    /// WAL records those redos applied.
    pub records: u64,
    /// Time spent gathering versions from the layers.
    pub gather: Duration,
    /// Time spent in redo (waiting for the redo workers included).
    pub redo: Duration,
    /// Time the consumer waited for the next batch.
    pub waited: Duration,
}

impl AddAssign for BulkReadStats {
    fn add_assign(&mut self, other: BulkReadStats) {
        self.keys += other.keys;
        self.redone += other.redone;
        self.records += other.records;
        self.gather += other.gather;
        self.redo += other.redo;
        self.waited += other.waited;
    }
}

/// A batch's values, in key order, and what reading them took.
type Batch = (Vec<Option<Bytes>>, BulkReadStats);

/// The batches of one bulk read, shared by its threads.
struct Progress {
    /// The next batch a thread may take.
    next: usize,
    /// Batches handed to the consumer so far.
    consumed: usize,
    /// Finished batches not yet consumed.
    finished: BTreeMap<usize, Result<Batch>>,
    /// The consumer gave up: take no more batches.
    stop: bool,
}

impl Timeline {
    /// Reads `keys` (ascending) as of `lsn` and calls `consume` with each
    /// key's value, in the order of `keys`, while later batches are still
    /// being rebuilt on [`RepoConfig::read_parallelism`](super::RepoConfig::read_parallelism)
    /// threads. The first error (a read's or `consume`'s) ends the read.
    pub fn read_in_order<E: From<RepoError>>(
        &self,
        keys: &[Key],
        lsn: Lsn,
        consume: impl FnMut(Key, Option<Bytes>) -> std::result::Result<(), E>,
    ) -> std::result::Result<BulkReadStats, E> {
        self.read_in_batches(keys, lsn, BULK_READ_BATCH_KEYS, consume)
    }

    /// [`read_in_order`](Self::read_in_order) with `batch_keys` keys per batch.
    pub fn read_in_batches<E: From<RepoError>>(
        &self,
        keys: &[Key],
        lsn: Lsn,
        batch_keys: usize,
        consume: impl FnMut(Key, Option<Bytes>) -> std::result::Result<(), E>,
    ) -> std::result::Result<BulkReadStats, E> {
        self.bulk_read(keys, lsn, batch_keys, true, consume)
    }

    /// The bulk read; with `check_cutoff` false, without the GC cutoff check
    /// (image creation at `disk_consistent_lsn`, which stays readable).
    pub(crate) fn bulk_read<E: From<RepoError>>(
        &self,
        keys: &[Key],
        lsn: Lsn,
        batch_keys: usize,
        check_cutoff: bool,
        mut consume: impl FnMut(Key, Option<Bytes>) -> std::result::Result<(), E>,
    ) -> std::result::Result<BulkReadStats, E> {
        let mut stats = BulkReadStats::default();
        let batches: Vec<&[Key]> = keys.chunks(batch_keys.max(1)).collect();
        let threads = self.shared.conf.read_parallelism.clamp(1, batches.len().max(1));
        if threads == 1 {
            for batch in batches {
                let (values, batch_stats) = self.get_batch(batch, lsn, check_cutoff)?;
                stats += batch_stats;
                for (key, value) in batch.iter().zip(values) {
                    consume(*key, value)?;
                }
            }
            return Ok(stats);
        }
        let window = threads * 2;
        let progress = Mutex::new(Progress { next: 0, consumed: 0, finished: BTreeMap::new(), stop: false });
        let changed = Condvar::new();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let index = {
                        let mut p = progress.lock();
                        loop {
                            if p.stop || p.next >= batches.len() {
                                return;
                            }
                            if p.next < p.consumed + window {
                                break;
                            }
                            changed.wait(&mut p);
                        }
                        p.next += 1;
                        p.next - 1
                    };
                    let values = catch_unwind(AssertUnwindSafe(|| self.get_batch(batches[index], lsn, check_cutoff)))
                        .unwrap_or_else(|_| Err(RepoError::Invalid(format!("a bulk read at {lsn} panicked"))));
                    progress.lock().finished.insert(index, values);
                    changed.notify_all();
                });
            }
            let outcome = (|| {
                for (index, batch) in batches.iter().enumerate() {
                    let waiting = Instant::now();
                    let finished = {
                        let mut p = progress.lock();
                        loop {
                            if let Some(finished) = p.finished.remove(&index) {
                                p.consumed = index + 1;
                                break finished;
                            }
                            changed.wait(&mut p);
                        }
                    };
                    changed.notify_all();
                    stats.waited += waiting.elapsed();
                    let (values, batch_stats) = finished?;
                    stats += batch_stats;
                    for (key, value) in batch.iter().zip(values) {
                        consume(*key, value)?;
                    }
                }
                Ok(stats)
            })();
            if outcome.is_err() {
                progress.lock().stop = true;
                changed.notify_all();
            }
            outcome
        })
    }
}

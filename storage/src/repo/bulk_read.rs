//! Bulk reads: many keys at one LSN (the relation files of `fullbackup`),
//! rebuilt in batches on several threads and handed over in key order.
//!
//! Each batch is one [`Timeline::get_many`]: its keys share one pass over
//! the layer-file blocks, and its redo requests go out one after another.
//! With `read_parallelism` batches in flight at once, every redo worker has
//! work while the caller consumes finished batches in order (streaming a tar
//! as pages are rebuilt); a batch is started only while fewer than two per
//! thread wait to be consumed, so memory stays bounded whatever the size of
//! the read.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use super::timeline::Timeline;
use super::{RepoError, Result};
use crate::key::Key;
use crate::lsn::Lsn;

/// Keys per batch: large enough that a batch reads each layer-file block it
/// touches once, small enough that the first pages go out at once.
pub const BULK_READ_BATCH_KEYS: usize = 64;

/// The batches of one bulk read, shared by its threads.
struct Progress {
    /// The next batch a thread may take.
    next: usize,
    /// Batches handed to the consumer so far.
    consumed: usize,
    /// Finished batches not yet consumed.
    finished: BTreeMap<usize, Result<Vec<Option<Bytes>>>>,
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
    ) -> std::result::Result<(), E> {
        self.read_in_batches(keys, lsn, BULK_READ_BATCH_KEYS, consume)
    }

    /// [`read_in_order`](Self::read_in_order) with `batch_keys` keys per batch.
    pub fn read_in_batches<E: From<RepoError>>(
        &self,
        keys: &[Key],
        lsn: Lsn,
        batch_keys: usize,
        mut consume: impl FnMut(Key, Option<Bytes>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let batches: Vec<&[Key]> = keys.chunks(batch_keys.max(1)).collect();
        let threads = self.shared.conf.read_parallelism.clamp(1, batches.len().max(1));
        if threads == 1 {
            for batch in batches {
                for (key, value) in batch.iter().zip(self.get_many(batch, lsn)?) {
                    consume(*key, value)?;
                }
            }
            return Ok(());
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
                    let values = catch_unwind(AssertUnwindSafe(|| self.get_many(batches[index], lsn)))
                        .unwrap_or_else(|_| Err(RepoError::Invalid(format!("a bulk read at {lsn} panicked"))));
                    progress.lock().finished.insert(index, values);
                    changed.notify_all();
                });
            }
            let outcome = (|| {
                for (index, batch) in batches.iter().enumerate() {
                    let values = {
                        let mut p = progress.lock();
                        loop {
                            if let Some(values) = p.finished.remove(&index) {
                                p.consumed = index + 1;
                                break values;
                            }
                            changed.wait(&mut p);
                        }
                    };
                    changed.notify_all();
                    for (key, value) in batch.iter().zip(values?) {
                        consume(*key, value)?;
                    }
                }
                Ok(())
            })();
            if outcome.is_err() {
                progress.lock().stop = true;
                changed.notify_all();
            }
            outcome
        })
    }
}

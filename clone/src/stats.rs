//! Counters of a serving clone, written to `stats.json` every second and
//! printed by `pageserver-clone status`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Live counters (relaxed atomics: each is exact, the set is not a snapshot).
#[derive(Debug, Default)]
pub struct Stats {
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
    /// Reads of relation files that needed no fetch.
    pub lazy_reads_local: AtomicU64,
    /// Reads of relation files that fetched at least one block.
    pub lazy_reads_fetched: AtomicU64,
    pub blocks_fetched: AtomicU64,
    /// Of those, fetched ahead of the reader (sequential read-ahead).
    pub blocks_read_ahead: AtomicU64,
    pub fetch_batches: AtomicU64,
    pub fetch_retries: AtomicU64,
    /// Reads or writes answered with EIO because the page server did not answer in time.
    pub fetch_failures: AtomicU64,
    pub writes: AtomicU64,
    pub write_bytes: AtomicU64,
}

/// What `stats.json` holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatsReport {
    pub reads: u64,
    pub read_bytes: u64,
    pub blocks_fetched: u64,
    pub bytes_fetched: u64,
    pub blocks_read_ahead: u64,
    pub fetch_batches: u64,
    pub fetch_retries: u64,
    pub fetch_failures: u64,
    /// Of the reads of relation files, the share served without a fetch.
    pub hit_ratio: f64,
    pub writes: u64,
    pub write_bytes: u64,
    /// Relation blocks still only on the page server.
    pub blocks_remote: u64,
    /// Relation blocks at the first mount.
    pub blocks_total: u64,
}

impl Stats {
    pub fn report(&self, blocks_remote: u64, blocks_total: u64) -> StatsReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (local, fetched) = (get(&self.lazy_reads_local), get(&self.lazy_reads_fetched));
        StatsReport {
            reads: get(&self.reads),
            read_bytes: get(&self.read_bytes),
            blocks_fetched: get(&self.blocks_fetched),
            bytes_fetched: get(&self.blocks_fetched) * 8192,
            blocks_read_ahead: get(&self.blocks_read_ahead),
            fetch_batches: get(&self.fetch_batches),
            fetch_retries: get(&self.fetch_retries),
            fetch_failures: get(&self.fetch_failures),
            hit_ratio: if local + fetched == 0 { 1.0 } else { local as f64 / (local + fetched) as f64 },
            writes: get(&self.writes),
            write_bytes: get(&self.write_bytes),
            blocks_remote,
            blocks_total,
        }
    }
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

//! The in-memory layer: receives ingest, readable while written.
//!
//! Versions are kept in a `BTreeMap` from key to the key's versions in
//! increasing LSN order, behind a read-write lock held only for one insert or
//! one lookup. A layer is *open* (its LSN range is `[start, ∞)`) until it is
//! frozen with an end LSN; after that it never changes and is written out as an
//! L0 delta layer file.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use parking_lot::RwLock;

use crate::key::{Key, KeyRange};
use crate::lsn::Lsn;
use crate::value::Value;

pub struct InMemoryLayer {
    start_lsn: Lsn,
    end_lsn: OnceLock<Lsn>,
    opened_at: Instant,
    versions: RwLock<BTreeMap<Key, Vec<(Lsn, Value)>>>,
    bytes: AtomicU64,
}

impl InMemoryLayer {
    pub fn new(start_lsn: Lsn) -> InMemoryLayer {
        InMemoryLayer {
            start_lsn,
            end_lsn: OnceLock::new(),
            opened_at: Instant::now(),
            versions: RwLock::new(BTreeMap::new()),
            bytes: AtomicU64::new(0),
        }
    }

    pub fn start_lsn(&self) -> Lsn {
        self.start_lsn
    }

    /// `[start, end)`; `[start, MAX)` while open.
    pub fn lsn_range(&self) -> Range<Lsn> {
        self.start_lsn..self.end_lsn.get().copied().unwrap_or(Lsn::MAX)
    }

    pub fn opened_at(&self) -> Instant {
        self.opened_at
    }

    /// Approximate bytes of values held.
    pub fn size(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Records a version; a second value at the same (key, LSN) replaces the first.
    pub fn put(&self, key: Key, lsn: Lsn, value: Value) {
        debug_assert!(self.end_lsn.get().is_none(), "put into a frozen layer");
        let size = value_memory(&value) + 32;
        let mut versions = self.versions.write();
        let list = versions.entry(key).or_default();
        match list.last_mut() {
            Some(last) if last.0 == lsn => last.1 = value,
            Some(last) if last.0 > lsn => {
                let at = list.partition_point(|(l, _)| *l < lsn);
                if list[at].0 == lsn {
                    list[at].1 = value;
                } else {
                    list.insert(at, (lsn, value));
                }
            }
            _ => list.push((lsn, value)),
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
    }

    /// Freezes the layer at `end` (exclusive). No more puts.
    pub fn freeze(&self, end: Lsn) {
        self.end_lsn.set(end).expect("layer frozen twice");
    }

    /// Appends the versions of `key` with LSN in `lsns`, in increasing LSN order.
    pub fn get_versions(&self, key: Key, lsns: Range<Lsn>, out: &mut Vec<(Lsn, Value)>) {
        let versions = self.versions.read();
        if let Some(list) = versions.get(&key) {
            let from = list.partition_point(|(l, _)| *l < lsns.start);
            out.extend(list[from..].iter().take_while(|(l, _)| *l < lsns.end).cloned());
        }
    }

    /// The range from the smallest to just past the largest key held, if any.
    pub fn key_range(&self) -> Option<KeyRange> {
        let versions = self.versions.read();
        let first = *versions.keys().next()?;
        let last = *versions.keys().next_back()?;
        Some(KeyRange::new(first, last.next()))
    }

    /// Visits every version in (key, LSN) order (the layer must be frozen, or the writer paused).
    pub fn for_each(&self, mut visit: impl FnMut(Key, Lsn, &Value) -> crate::repo::Result<()>) -> crate::repo::Result<()> {
        let versions = self.versions.read();
        for (key, list) in versions.iter() {
            for (lsn, value) in list {
                visit(*key, *lsn, value)?;
            }
        }
        Ok(())
    }

    /// Keys with a version below `lsn_end`.
    pub fn keys_below(&self, lsn_end: Lsn, range: &KeyRange, out: &mut std::collections::BTreeSet<Key>) {
        let versions = self.versions.read();
        for (key, list) in versions.range(range.as_range()) {
            if list.first().is_some_and(|(l, _)| *l < lsn_end) {
                out.insert(*key);
            }
        }
    }
}

/// Bytes a value holds on the heap, for the layer's size: images and raw
/// records by their length (a record that touches several blocks is counted
/// once per block, an overestimate that keeps the memory bound safe), plus
/// the value's own overhead.
fn value_memory(value: &Value) -> u64 {
    const OVERHEAD: usize = 64;
    (match value {
        Value::Image(page) => page.len(),
        Value::WalRecord(record) => match &record.rec {
            crate::value::RecordPayload::Postgres { raw, .. } => raw.len() + OVERHEAD,
            crate::value::RecordPayload::Project(_) => OVERHEAD,
        },
    }) as u64
}

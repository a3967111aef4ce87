//! The materialized page cache: values rebuilt by redo, keyed by (timeline, key, LSN).
//!
//! A version of a key at an LSN never changes, so entries need no
//! invalidation. An entry is stored at the LSN of the newest record applied
//! and at the LSN read (once that LSN is ingested, so final); a read at `L`
//! returns an entry at exactly `L` at once, and otherwise uses the newest
//! entry below `L` as its base and walks the layers only for versions above it. Eviction is first-in first-out within
//! a byte budget ([`RepoConfig::page_cache_bytes`](super::RepoConfig::page_cache_bytes)).

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use parking_lot::Mutex;

use super::TimelineId;
use crate::key::Key;
use crate::lsn::Lsn;

pub(crate) struct PageCache {
    capacity: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    pages: HashMap<(TimelineId, Key), BTreeMap<Lsn, Bytes>>,
    order: VecDeque<(TimelineId, Key, Lsn)>,
    bytes: u64,
}

impl PageCache {
    pub fn new(capacity: u64) -> PageCache {
        PageCache { capacity, inner: Mutex::new(Inner::default()) }
    }

    /// The newest cached value of `key` on `timeline` at or below `lsn`.
    pub fn lookup(&self, timeline: TimelineId, key: Key, lsn: Lsn) -> Option<(Lsn, Bytes)> {
        if self.capacity == 0 {
            return None;
        }
        let inner = self.inner.lock();
        let (lsn, page) = inner.pages.get(&(timeline, key))?.range(..=lsn).next_back()?;
        Some((*lsn, page.clone()))
    }

    pub fn insert(&self, timeline: TimelineId, key: Key, lsn: Lsn, page: Bytes) {
        let size = page.len() as u64 + 64;
        if size > self.capacity {
            return;
        }
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if inner.pages.entry((timeline, key)).or_default().insert(lsn, page).is_some() {
            return;
        }
        inner.order.push_back((timeline, key, lsn));
        inner.bytes += size;
        while inner.bytes > self.capacity {
            let Some((timeline, key, lsn)) = inner.order.pop_front() else { break };
            if let Some(versions) = inner.pages.get_mut(&(timeline, key)) {
                if let Some(page) = versions.remove(&lsn) {
                    inner.bytes -= page.len() as u64 + 64;
                }
                if versions.is_empty() {
                    inner.pages.remove(&(timeline, key));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_at_or_below_and_eviction() {
        let cache = PageCache::new(3 * (100 + 64));
        let key = Key::db_dir();
        let tl = TimelineId(1);
        for lsn in [10u64, 20, 30] {
            cache.insert(tl, key, Lsn(lsn), Bytes::from(vec![lsn as u8; 100]));
        }
        assert_eq!(cache.lookup(tl, key, Lsn(9)), None);
        assert_eq!(cache.lookup(tl, key, Lsn(25)).unwrap().0, Lsn(20));
        assert_eq!(cache.lookup(TimelineId(2), key, Lsn(25)), None);
        cache.insert(tl, key, Lsn(40), Bytes::from(vec![40; 100]));
        // The oldest entry went.
        assert_eq!(cache.lookup(tl, key, Lsn(15)), None);
        assert_eq!(cache.lookup(tl, key, Lsn(45)).unwrap(), (Lsn(40), Bytes::from(vec![40; 100])));
    }
}

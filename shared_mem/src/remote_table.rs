//! What the backup worker publishes per timeline: its
//! `remote_consistent_lsn` (the `disk_consistent_lsn` of the newest index
//! that is durable in object storage), its upload queue and totals, and its
//! last error. The backup worker is the only writer: it claims a slot per
//! timeline it backs up. The main worker reads `remote_consistent_lsn` to
//! tell the primary what is safe; SQL functions read everything.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::workers::ActivityText;

/// Timelines the table can follow at once.
pub const MAX_REMOTE_TIMELINES: usize = 256;

#[repr(C)]
#[derive(Default)]
pub struct RemoteSlot {
    /// 1 once the ids below are written; 0 when free.
    in_use: AtomicU32,
    tenant: [AtomicU64; 2],
    timeline: [AtomicU64; 2],
    remote_consistent_lsn: AtomicU64,
    queued_objects: AtomicU64,
    queued_bytes: AtomicU64,
    uploaded_objects: AtomicU64,
    uploaded_bytes: AtomicU64,
    /// Microseconds spent with uploads in flight (for a rate).
    upload_micros: AtomicU64,
    deleted_objects: AtomicU64,
    /// Unix milliseconds when the last index became durable (0: never).
    last_index_unix_ms: AtomicU64,
    errors: AtomicU64,
    /// The number of the last backup pass that found this timeline in sync
    /// (see [`RemoteTable::begin_pass`]).
    synced_pass: AtomicU64,
    last_error: ActivityText,
}

/// A copy of one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteStatus {
    pub tenant: u128,
    pub timeline: u128,
    pub remote_consistent_lsn: u64,
    pub queued_objects: u64,
    pub queued_bytes: u64,
    pub uploaded_objects: u64,
    pub uploaded_bytes: u64,
    pub upload_micros: u64,
    pub deleted_objects: u64,
    pub last_index_unix_ms: u64,
    pub errors: u64,
    pub synced_pass: u64,
    pub last_error: String,
}

fn split(id: u128) -> [u64; 2] {
    [(id >> 64) as u64, id as u64]
}

fn join(parts: &[AtomicU64; 2]) -> u128 {
    (u128::from(parts[0].load(Ordering::Acquire)) << 64) | u128::from(parts[1].load(Ordering::Acquire))
}

impl RemoteSlot {
    fn is(&self, tenant: u128, timeline: u128) -> bool {
        self.in_use.load(Ordering::Acquire) == 1 && join(&self.tenant) == tenant && join(&self.timeline) == timeline
    }

    pub fn remote_consistent_lsn(&self) -> u64 {
        self.remote_consistent_lsn.load(Ordering::Acquire)
    }

    /// Only moves forward.
    pub fn set_remote_consistent_lsn(&self, lsn: u64) {
        self.remote_consistent_lsn.fetch_max(lsn, Ordering::AcqRel);
    }

    pub fn set_queue(&self, objects: u64, bytes: u64) {
        self.queued_objects.store(objects, Ordering::Release);
        self.queued_bytes.store(bytes, Ordering::Release);
    }

    pub fn add_uploaded(&self, objects: u64, bytes: u64, micros: u64) {
        self.uploaded_objects.fetch_add(objects, Ordering::AcqRel);
        self.uploaded_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.upload_micros.fetch_add(micros, Ordering::AcqRel);
    }

    pub fn add_deleted(&self, objects: u64) {
        self.deleted_objects.fetch_add(objects, Ordering::AcqRel);
    }

    pub fn index_durable(&self, unix_ms: u64) {
        self.last_index_unix_ms.store(unix_ms, Ordering::Release);
    }

    pub fn set_error(&self, text: &str) {
        self.errors.fetch_add(1, Ordering::AcqRel);
        self.last_error.set(text);
    }

    pub fn clear_error(&self) {
        self.last_error.set("");
    }

    /// Records that pass `pass` read the timeline's local index and left
    /// the bucket in step with it: the remote index names exactly what the
    /// local one does, and no deletion is pending.
    pub fn set_synced(&self, pass: u64) {
        self.synced_pass.fetch_max(pass, Ordering::AcqRel);
    }

    /// The number of the last pass that found the timeline in sync (0: none).
    pub fn synced_pass(&self) -> u64 {
        self.synced_pass.load(Ordering::Acquire)
    }

    pub fn status(&self) -> RemoteStatus {
        RemoteStatus {
            tenant: join(&self.tenant),
            timeline: join(&self.timeline),
            remote_consistent_lsn: self.remote_consistent_lsn(),
            queued_objects: self.queued_objects.load(Ordering::Acquire),
            queued_bytes: self.queued_bytes.load(Ordering::Acquire),
            uploaded_objects: self.uploaded_objects.load(Ordering::Acquire),
            uploaded_bytes: self.uploaded_bytes.load(Ordering::Acquire),
            upload_micros: self.upload_micros.load(Ordering::Acquire),
            deleted_objects: self.deleted_objects.load(Ordering::Acquire),
            last_index_unix_ms: self.last_index_unix_ms.load(Ordering::Acquire),
            errors: self.errors.load(Ordering::Acquire),
            synced_pass: self.synced_pass(),
            last_error: self.last_error.get(),
        }
    }
}

#[repr(C)]
pub struct RemoteTable {
    /// 1 while the backup worker runs with object storage configured.
    enabled: AtomicU32,
    /// Backup passes started since the host started; a pass numbers itself
    /// with this before it reads any local index.
    passes_started: AtomicU64,
    slots: [RemoteSlot; MAX_REMOTE_TIMELINES],
}

impl Default for RemoteTable {
    /// An empty table outside shared memory (tests and tools).
    fn default() -> RemoteTable {
        RemoteTable { enabled: AtomicU32::new(0), passes_started: AtomicU64::new(0), slots: std::array::from_fn(|_| RemoteSlot::default()) }
    }
}

impl RemoteTable {
    /// Set by the backup worker once its storage is open (and cleared when
    /// it has none); while it is 0 nothing here is meaningful.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled as u32, Ordering::Release);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire) == 1
    }

    /// The backup worker starts a pass: returns its number (from 1).
    pub fn begin_pass(&self) -> u64 {
        self.passes_started.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The number of the newest pass started (0: none). A timeline whose
    /// [`RemoteSlot::synced_pass`] is above the value read at some moment
    /// was found in sync by a pass that read its local index after it.
    pub fn passes_started(&self) -> u64 {
        self.passes_started.load(Ordering::Acquire)
    }

    /// The slot of a timeline, if the backup worker follows it.
    pub fn find(&self, tenant: u128, timeline: u128) -> Option<&RemoteSlot> {
        self.slots.iter().find(|s| s.is(tenant, timeline))
    }

    /// The timeline's slot, claiming a free one (zeroed) if it has none.
    /// Only the backup worker calls this. `None` when the table is full.
    pub fn claim(&self, tenant: u128, timeline: u128) -> Option<&RemoteSlot> {
        if let Some(slot) = self.find(tenant, timeline) {
            return Some(slot);
        }
        let slot = self.slots.iter().find(|s| s.in_use.load(Ordering::Acquire) == 0)?;
        for counter in [
            &slot.remote_consistent_lsn,
            &slot.queued_objects,
            &slot.queued_bytes,
            &slot.uploaded_objects,
            &slot.uploaded_bytes,
            &slot.upload_micros,
            &slot.deleted_objects,
            &slot.last_index_unix_ms,
            &slot.errors,
            &slot.synced_pass,
        ] {
            counter.store(0, Ordering::Release);
        }
        slot.last_error.set("");
        for (part, value) in slot.tenant.iter().zip(split(tenant)) {
            part.store(value, Ordering::Release);
        }
        for (part, value) in slot.timeline.iter().zip(split(timeline)) {
            part.store(value, Ordering::Release);
        }
        slot.in_use.store(1, Ordering::Release);
        Some(slot)
    }

    /// Frees the slots of timelines not in `keep` (the backup worker, after
    /// a timeline went away).
    pub fn retain(&self, keep: &dyn Fn(u128, u128) -> bool) {
        for slot in &self.slots {
            if slot.in_use.load(Ordering::Acquire) == 1 && !keep(join(&slot.tenant), join(&slot.timeline)) {
                slot.in_use.store(0, Ordering::Release);
            }
        }
    }

    /// Every followed timeline.
    pub fn statuses(&self) -> Vec<RemoteStatus> {
        self.slots.iter().filter(|s| s.in_use.load(Ordering::Acquire) == 1).map(RemoteSlot::status).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SharedState;

    #[test]
    fn slots_are_claimed_found_counted_and_freed() {
        let mut mem = Box::<SharedState>::new_uninit();
        // SAFETY: the box is ours, big and aligned, and outlives the test.
        let shm = unsafe { SharedState::init_in_place(mem.as_mut_ptr()) };
        let table = &shm.remote;
        assert!(!table.enabled());
        table.set_enabled(true);
        assert!(table.enabled());
        let (t1, l1, l2) = (u128::MAX - 5, 1u128 << 100, 7u128);
        assert!(table.find(t1, l1).is_none());
        let slot = table.claim(t1, l1).unwrap();
        slot.set_remote_consistent_lsn(100);
        slot.set_remote_consistent_lsn(50);
        slot.add_uploaded(2, 4096, 1000);
        slot.set_queue(3, 30);
        slot.set_error("S3 said 503");
        assert_eq!((table.passes_started(), table.begin_pass(), table.begin_pass(), table.passes_started()), (0, 1, 2, 2));
        slot.set_synced(2);
        slot.set_synced(1);
        assert_eq!(slot.synced_pass(), 2, "only moves forward");
        assert_eq!(table.find(t1, l1).unwrap().remote_consistent_lsn(), 100);
        assert!(table.find(t1, l2).is_none());
        table.claim(t1, l2).unwrap();
        let statuses = table.statuses();
        assert_eq!(statuses.len(), 2);
        let first = statuses.iter().find(|s| s.timeline == l1).unwrap();
        assert_eq!((first.tenant, first.uploaded_objects, first.uploaded_bytes, first.queued_objects), (t1, 2, 4096, 3));
        assert_eq!((first.errors, first.last_error.as_str()), (1, "S3 said 503"));
        table.retain(&|_, timeline| timeline == l2);
        assert!(table.find(t1, l1).is_none());
        // A freed slot comes back zeroed for the next timeline.
        let again = table.claim(3, 4).unwrap();
        assert_eq!((again.remote_consistent_lsn(), again.synced_pass()), (0, 0));
        assert_eq!(table.statuses().iter().find(|s| s.timeline == 4).unwrap().last_error, "");
        for i in 0..MAX_REMOTE_TIMELINES as u128 {
            table.claim(9, 100 + i);
        }
        assert!(table.claim(9, 10_000).is_none(), "the table is full");
    }
}

//! The worker status table: one slot per background worker of the extension.
//!
//! The postmaster assigns slots when shared memory is created (it knows from
//! the GUCs how many workers of each kind there are) and passes each worker
//! its slot number. A worker publishes its pid, state and a heartbeat in its
//! slot, and a line of text saying what it is doing now (its *activity*,
//! e.g. `compacting tenant … timeline …`); `pageserver.status()` reads them.
//! Start counts survive a crash
//! restart of the host: the postmaster copies them out of the old segment
//! ([`WorkerTable::start_counts`]) and into the new one
//! ([`WorkerTable::carry_over_start_counts`]).

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Room for the main, layers and backup workers and up to 61 redo workers.
pub const MAX_WORKERS: usize = 64;

/// What a worker is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum WorkerKind {
    Unused = 0,
    Main = 1,
    Redo = 2,
    Layers = 3,
    Backup = 4,
}

impl WorkerKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkerKind::Unused => "unused",
            WorkerKind::Main => "main",
            WorkerKind::Redo => "redo",
            WorkerKind::Layers => "layers",
            WorkerKind::Backup => "backup",
        }
    }

    fn from_u32(v: u32) -> WorkerKind {
        match v {
            1 => WorkerKind::Main,
            2 => WorkerKind::Redo,
            3 => WorkerKind::Layers,
            4 => WorkerKind::Backup,
            _ => WorkerKind::Unused,
        }
    }
}

/// Life cycle of a worker as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum WorkerState {
    /// Registered with the postmaster, not started yet.
    NotStarted = 0,
    Starting = 1,
    Running = 2,
    Stopping = 3,
    /// Exited cleanly (SIGTERM or shutdown).
    Stopped = 4,
}

impl WorkerState {
    pub fn name(self) -> &'static str {
        match self {
            WorkerState::NotStarted => "not started",
            WorkerState::Starting => "starting",
            WorkerState::Running => "running",
            WorkerState::Stopping => "stopping",
            WorkerState::Stopped => "stopped",
        }
    }

    fn from_u32(v: u32) -> WorkerState {
        match v {
            1 => WorkerState::Starting,
            2 => WorkerState::Running,
            3 => WorkerState::Stopping,
            4 => WorkerState::Stopped,
            _ => WorkerState::NotStarted,
        }
    }
}

/// One worker's published status. All fields are atomics: the worker writes,
/// anyone reads, nobody locks.
#[repr(C)]
#[derive(Default)]
pub struct WorkerSlot {
    kind: AtomicU32,
    /// Number among workers of the same kind (redo worker 0, 1, ...).
    number: AtomicU32,
    pid: AtomicI32,
    state: AtomicU32,
    /// Microseconds since the Unix epoch of the last heartbeat; 0 = never.
    heartbeat_us: AtomicI64,
    /// How many times a process started in this slot, across crash restarts.
    starts: AtomicU64,
    activity: ActivityText,
}

/// Bytes of activity text kept (longer text is cut at a character boundary).
pub const ACTIVITY_BYTES: usize = 256;
const ACTIVITY_WORDS: usize = ACTIVITY_BYTES / 8;

/// A short UTF-8 text with one writer and any number of readers, under a
/// sequence counter: odd while a write is under way; a reader retries until
/// it read the same even count before and after copying.
#[repr(C)]
#[derive(Default)]
pub(crate) struct ActivityText {
    seq: AtomicU64,
    len: AtomicU64,
    words: [AtomicU64; ACTIVITY_WORDS],
}

impl ActivityText {
    pub(crate) fn set(&self, text: &str) {
        let mut end = text.len().min(ACTIVITY_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; ACTIVITY_BYTES];
        bytes[..end].copy_from_slice(&text.as_bytes()[..end]);
        self.seq.fetch_add(1, Ordering::AcqRel);
        self.len.store(end as u64, Ordering::Release);
        for (word, chunk) in self.words.iter().zip(bytes.chunks_exact(8)) {
            word.store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Ordering::Release);
        }
        self.seq.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn get(&self) -> String {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let len = (self.len.load(Ordering::Acquire) as usize).min(ACTIVITY_BYTES);
            let mut bytes = [0u8; ACTIVITY_BYTES];
            for (chunk, word) in bytes.chunks_exact_mut(8).zip(&self.words) {
                chunk.copy_from_slice(&word.load(Ordering::Acquire).to_le_bytes());
            }
            if self.seq.load(Ordering::Acquire) == before {
                return String::from_utf8_lossy(&bytes[..len]).into_owned();
            }
        }
    }
}

/// A consistent-enough copy of a slot for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    pub slot: usize,
    pub kind: WorkerKind,
    pub number: u32,
    pub pid: i32,
    pub state: WorkerState,
    pub heartbeat_us: i64,
    /// Starts after the first one: restarts by the postmaster, crash restarts included.
    pub restarts: u64,
    /// What the worker says it is doing (empty if it never said).
    pub activity: String,
}

impl WorkerSlot {
    /// Called by the worker as its first act.
    pub fn on_start(&self, pid: i32, now_us: i64) {
        self.starts.fetch_add(1, Ordering::AcqRel);
        self.pid.store(pid, Ordering::Release);
        self.heartbeat_us.store(now_us, Ordering::Release);
        self.activity.set("starting");
        self.state.store(WorkerState::Starting as u32, Ordering::Release);
    }

    pub fn set_state(&self, state: WorkerState) {
        self.state.store(state as u32, Ordering::Release);
    }

    /// Says what the worker is doing now (one writer: the worker).
    pub fn set_activity(&self, text: &str) {
        self.activity.set(text);
    }

    pub fn heartbeat(&self, now_us: i64) {
        self.heartbeat_us.store(now_us, Ordering::Release);
    }

    /// Called by the worker when it exits cleanly.
    pub fn on_clean_exit(&self) {
        self.state.store(WorkerState::Stopped as u32, Ordering::Release);
        self.activity.set("");
        self.pid.store(0, Ordering::Release);
    }

    pub fn kind(&self) -> WorkerKind {
        WorkerKind::from_u32(self.kind.load(Ordering::Acquire))
    }

    pub fn number(&self) -> u32 {
        self.number.load(Ordering::Acquire)
    }
}

/// The table of worker slots.
#[repr(C)]
pub struct WorkerTable {
    slots: [WorkerSlot; MAX_WORKERS],
}

impl WorkerTable {
    /// Assigns `slot` to a worker of `kind`; done by the postmaster when the
    /// segment is created, before any worker starts.
    pub fn assign(&self, slot: usize, kind: WorkerKind, number: u32) {
        let s = &self.slots[slot];
        s.kind.store(kind as u32, Ordering::Release);
        s.number.store(number, Ordering::Release);
        s.state.store(WorkerState::NotStarted as u32, Ordering::Release);
    }

    /// The slot of a worker, or `None` if `slot` is out of range.
    pub fn slot(&self, slot: usize) -> Option<&WorkerSlot> {
        self.slots.get(slot)
    }

    /// Status of every assigned slot, in slot order.
    pub fn statuses(&self) -> Vec<WorkerStatus> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind() != WorkerKind::Unused)
            .map(|(i, s)| WorkerStatus {
                slot: i,
                kind: s.kind(),
                number: s.number(),
                pid: s.pid.load(Ordering::Acquire),
                state: WorkerState::from_u32(s.state.load(Ordering::Acquire)),
                heartbeat_us: s.heartbeat_us.load(Ordering::Acquire),
                restarts: s.starts.load(Ordering::Acquire).saturating_sub(1),
                activity: s.activity.get(),
            })
            .collect()
    }

    /// Start counts of all slots, to carry across a crash restart.
    pub fn start_counts(&self) -> [u64; MAX_WORKERS] {
        std::array::from_fn(|i| self.slots[i].starts.load(Ordering::Acquire))
    }

    /// Puts start counts saved from the previous segment into a fresh one.
    pub fn carry_over_start_counts(&self, counts: &[u64; MAX_WORKERS]) {
        for (slot, count) in self.slots.iter().zip(counts) {
            slot.starts.store(*count, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SharedState;

    fn fresh() -> Box<SharedState> {
        // On the heap directly: the segment is megabytes, too big for a test thread's stack.
        let mut mem = Box::<SharedState>::new_uninit();
        // SAFETY: the box is ours, big and aligned.
        unsafe { SharedState::init_in_place(mem.as_mut_ptr()) };
        // SAFETY: fully initialised by init_in_place.
        unsafe { mem.assume_init() }
    }

    #[test]
    fn lists_only_assigned_slots_with_their_state() {
        let shm = fresh();
        shm.workers.assign(0, WorkerKind::Main, 0);
        shm.workers.assign(1, WorkerKind::Redo, 0);
        shm.workers.assign(2, WorkerKind::Redo, 1);
        let slot = shm.workers.slot(1).unwrap();
        slot.on_start(4242, 10);
        slot.set_state(WorkerState::Running);
        slot.heartbeat(20);
        let st = shm.workers.statuses();
        assert_eq!(st.len(), 3);
        assert_eq!(st[0].state, WorkerState::NotStarted);
        assert_eq!(st[1].kind, WorkerKind::Redo);
        assert_eq!(st[1].number, 0);
        assert_eq!(st[1].pid, 4242);
        assert_eq!(st[1].state, WorkerState::Running);
        assert_eq!(st[1].heartbeat_us, 20);
        assert_eq!(st[1].restarts, 0);
        assert_eq!(st[2].number, 1);
    }

    #[test]
    fn restarts_count_starts_after_the_first_and_survive_a_new_segment() {
        let old = fresh();
        old.workers.assign(0, WorkerKind::Layers, 0);
        let s = old.workers.slot(0).unwrap();
        s.on_start(1, 1);
        s.on_start(2, 2);
        assert_eq!(old.workers.statuses()[0].restarts, 1);
        s.on_clean_exit();
        assert_eq!(old.workers.statuses()[0].state, WorkerState::Stopped);
        assert_eq!(old.workers.statuses()[0].pid, 0);

        let saved = old.workers.start_counts();
        let new = fresh();
        new.workers.assign(0, WorkerKind::Layers, 0);
        new.workers.carry_over_start_counts(&saved);
        new.workers.slot(0).unwrap().on_start(3, 3);
        assert_eq!(new.workers.statuses()[0].restarts, 2);
    }

    #[test]
    fn activity_text_is_kept_whole_or_cut_at_a_character_boundary() {
        let shm = fresh();
        shm.workers.assign(0, WorkerKind::Layers, 0);
        let slot = shm.workers.slot(0).unwrap();
        assert_eq!(shm.workers.statuses()[0].activity, "");
        slot.on_start(1, 1);
        assert_eq!(shm.workers.statuses()[0].activity, "starting");
        slot.set_activity("compacting tenant a timeline b");
        assert_eq!(shm.workers.statuses()[0].activity, "compacting tenant a timeline b");
        let long = "é".repeat(ACTIVITY_BYTES);
        slot.set_activity(&long);
        let shown = shm.workers.statuses()[0].activity.clone();
        assert_eq!(shown, "é".repeat(ACTIVITY_BYTES / 2));
        slot.set_activity("idle");
        assert_eq!(shm.workers.statuses()[0].activity, "idle");
        // Readers racing a writer never see a torn text.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for i in 0..20_000 {
                    slot.set_activity(if i % 2 == 0 { "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" } else { "bbbbbbbbbbbbbbbbbbbb" });
                }
            });
            for _ in 0..20_000 {
                let seen = shm.workers.statuses()[0].activity.clone();
                assert!(seen == "idle" || seen.chars().all(|c| c == 'a') && seen.len() == 40 || seen == "b".repeat(20), "torn: {seen}");
            }
        });
    }

    #[test]
    fn out_of_range_slot_is_none() {
        let shm = fresh();
        assert!(shm.workers.slot(MAX_WORKERS).is_none());
    }
}

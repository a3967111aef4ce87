//! Shared-memory layout of pageserver_ext.
//!
//! The host PostgreSQL gives the extension one fixed-size segment at start-up
//! (`RequestAddinShmemSpace` + `ShmemInitStruct`). This crate owns what lives
//! in it and how processes use it; it never calls PostgreSQL. Everything is
//! `#[repr(C)]`, made of atomics, position-independent (no pointers), and
//! tested here on plain memory.
//!
//! The segment holds the worker status table ([`workers`]), the redo request
//! queue ([`redo_queue`], 8 MiB: 32 slots of 256 KiB) and the command queue
//! from SQL functions to the main worker ([`command_queue`], 8 slots of 64 KiB)
//! and what the backup worker publishes per timeline ([`remote_table`]), and
//! a second command queue, from SQL functions to the backup worker.

pub mod command_queue;
pub(crate) mod futex;
pub mod process;
pub mod redo_queue;
pub mod remote_table;
pub mod workers;

pub use command_queue::CommandQueue;
pub use process::process_exists;
pub use redo_queue::RedoQueue;
pub use remote_table::{RemoteSlot, RemoteStatus, RemoteTable};
pub use workers::{WorkerKind, WorkerSlot, WorkerState, WorkerStatus, WorkerTable, MAX_WORKERS};

/// The whole segment. Its address differs per process; only offsets matter.
#[repr(C)]
pub struct SharedState {
    /// Layout check: a process that maps a segment of another layout refuses it.
    magic: u64,
    pub workers: WorkerTable,
    /// Redo requests from callers to redo workers. The startup hook sets its
    /// worker count ([`RedoQueue::set_worker_count`]) after `init_in_place`.
    pub redo: RedoQueue,
    /// Management commands from SQL functions to the main worker.
    pub commands: CommandQueue,
    /// Per-timeline state of the backups to object storage.
    pub remote: RemoteTable,
    /// Commands from SQL functions to the backup worker (attach downloads).
    pub backup_commands: CommandQueue,
    /// Passes of the layers worker asked for by SQL functions.
    pub layer_pass_requests: LayerPassRequests,
}

/// Requests for an immediate pass of the layers worker (`pageserver.compact`,
/// `pageserver.gc`): counters the SQL functions bump and the worker compares
/// with what it last saw. `forced` asks for compaction below the usual
/// threshold; `completed` is the request count a finished pass had seen
/// when it started, so a caller knows when a whole pass followed its request.
#[repr(C)]
#[derive(Default)]
pub struct LayerPassRequests {
    requested: std::sync::atomic::AtomicU64,
    forced: std::sync::atomic::AtomicU64,
    completed: std::sync::atomic::AtomicU64,
}

impl LayerPassRequests {
    /// Asks for a pass now (`force`: merge L0 layers whatever their number);
    /// returns the request's number.
    pub fn request(&self, force: bool) -> u64 {
        use std::sync::atomic::Ordering;
        if force {
            self.forced.fetch_add(1, Ordering::SeqCst);
        }
        self.requested.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The counters (requested, forced), to compare with those last seen.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (self.requested.load(Ordering::SeqCst), self.forced.load(Ordering::SeqCst))
    }

    /// A pass that started when `requested` was `seen` has finished.
    pub fn pass_completed(&self, seen: u64) {
        self.completed.fetch_max(seen, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a whole pass started after request number `request`.
    pub fn served(&self, request: u64) -> bool {
        self.completed.load(std::sync::atomic::Ordering::SeqCst) >= request
    }
}

const MAGIC: u64 = 0x7061_6765_7376_0009; // "pagesv" + layout version 9

impl SharedState {
    /// Bytes to request from the host.
    pub const fn size() -> usize {
        std::mem::size_of::<SharedState>()
    }

    /// Initialises a fresh segment in place.
    ///
    /// # Safety
    /// `ptr` must point to at least [`SharedState::size`] writable bytes,
    /// aligned for `SharedState`, that no other process uses yet.
    pub unsafe fn init_in_place(ptr: *mut SharedState) -> &'static SharedState {
        // SAFETY: the caller guarantees the memory is ours, big and aligned;
        // an all-zero bit pattern is a valid SharedState (atomics and integers).
        unsafe {
            std::ptr::write_bytes(ptr as *mut u8, 0, Self::size());
            (*ptr).magic = MAGIC;
            &*ptr
        }
    }

    /// Attaches to a segment initialised by [`SharedState::init_in_place`].
    ///
    /// # Safety
    /// `ptr` must point to a segment initialised by `init_in_place` that stays
    /// mapped for the life of the process.
    pub unsafe fn attach(ptr: *const SharedState) -> Result<&'static SharedState, String> {
        // SAFETY: the caller guarantees the pointer refers to a live segment.
        let state = unsafe { &*ptr };
        if state.magic != MAGIC {
            return Err(format!(
                "pageserver_ext shared memory has layout {:#x}, expected {:#x}: \
                 restart the host after upgrading the extension",
                state.magic, MAGIC
            ));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn layer_pass_requests_are_served_by_a_pass_that_started_after_them() {
        let requests = LayerPassRequests::default();
        let seen_at_start = requests.counts();
        let first = requests.request(false);
        assert_eq!(first, 1);
        requests.pass_completed(seen_at_start.0);
        assert!(!requests.served(first), "a pass that began before the request does not serve it");
        let forced = requests.request(true);
        assert_eq!(requests.counts(), (2, 1));
        requests.pass_completed(requests.counts().0);
        assert!(requests.served(first) && requests.served(forced));
    }

    use super::*;

    #[test]
    fn attach_refuses_foreign_layout() {
        // Built on the heap directly: the segment is megabytes, too big for a test thread's stack.
        let mut mem = Box::<SharedState>::new_uninit();
        let ptr = mem.as_mut_ptr();
        // SAFETY: the box is ours, big and aligned.
        unsafe { std::ptr::write_bytes(ptr as *mut u8, 0xAB, SharedState::size()) };
        // SAFETY: the box stays alive for the test.
        assert!(unsafe { SharedState::attach(ptr) }.is_err());
        // SAFETY: as above.
        unsafe { SharedState::init_in_place(ptr) };
        // SAFETY: initialised just above.
        assert!(unsafe { SharedState::attach(ptr) }.is_ok());
    }

    #[test]
    fn segment_size_stays_reasonable() {
        assert!(SharedState::size() < 10 * 1024 * 1024, "{} bytes", SharedState::size());
    }
}

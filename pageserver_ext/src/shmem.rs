//! Glue between PostgreSQL's shared-memory start-up and `shared_mem`.
//!
//! `_PG_init` installs two hooks: the request hook reserves
//! [`SharedState::size`] bytes, the startup hook (run by the postmaster at
//! start and after every crash restart) creates or attaches the segment and
//! assigns the worker slots. Start counts are carried across crash restarts
//! through postmaster-private memory, so `pageserver.status()` can say how
//! often a worker was restarted.

use pgrx::pg_sys;
use shared_mem::{SharedState, WorkerKind, MAX_WORKERS};
use std::sync::atomic::{AtomicPtr, Ordering};

static SHARED: AtomicPtr<SharedState> = AtomicPtr::new(std::ptr::null_mut());
static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;
/// Postmaster-private: start counts of the segment that a crash restart is
/// about to throw away.
static mut SAVED_START_COUNTS: [u64; MAX_WORKERS] = [0; MAX_WORKERS];

/// Worker slots in the order they are registered: main, layers, backup, redo 0..n.
pub fn slot_layout(redo_workers: usize) -> Vec<(WorkerKind, u32)> {
    let mut v = vec![(WorkerKind::Main, 0), (WorkerKind::Layers, 0), (WorkerKind::Backup, 0)];
    v.extend((0..redo_workers as u32).map(|n| (WorkerKind::Redo, n)));
    v
}

/// Installs the hooks; called from `_PG_init` in the postmaster.
pub fn install_hooks() {
    // SAFETY: _PG_init runs single-threaded in the postmaster while
    // shared_preload_libraries are loaded; hooks are plain globals then.
    unsafe {
        PREV_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: called by the postmaster in its request phase; chaining to the
    // previous hook and reserving space is what the hook is for.
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(SharedState::size());
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: called in the postmaster (and, under EXEC_BACKEND, in each
    // child) with shared memory mapped; AddinShmemInitLock serialises the
    // creation of add-in structures as PostgreSQL requires.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP_HOOK {
            prev();
        }
        let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let ptr = pg_sys::ShmemInitStruct(c"pageserver_ext".as_ptr(), SharedState::size(), &mut found) as *mut SharedState;
        if !found {
            let state = SharedState::init_in_place(ptr);
            let redo = crate::guc::REDO_WORKERS.get().max(0) as usize;
            for (slot, (kind, number)) in slot_layout(redo).into_iter().enumerate() {
                state.workers.assign(slot, kind, number);
            }
            state.workers.carry_over_start_counts(&(&raw const SAVED_START_COUNTS).read());
            state.redo.set_worker_count(redo);
        }
        SHARED.store(ptr, Ordering::Release);
        pg_sys::LWLockRelease(lock);
        if !pg_sys::IsUnderPostmaster {
            // Runs when the postmaster tears this segment down for a crash restart.
            pg_sys::on_shmem_exit(Some(save_start_counts), pg_sys::Datum::from(0));
        }
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn save_start_counts(_code: i32, _arg: pg_sys::Datum) {
    if let Some(state) = try_state() {
        // SAFETY: only the postmaster runs this callback, single-threaded.
        unsafe { SAVED_START_COUNTS = state.workers.start_counts() };
    }
}

/// The shared state, if this process has it (not in a backend of a host that
/// did not preload the library).
pub fn try_state() -> Option<&'static SharedState> {
    let ptr = SHARED.load(Ordering::Acquire);
    if ptr.is_null() {
        return None;
    }
    // SAFETY: set by shmem_startup to a segment initialised by
    // init_in_place, which stays mapped for the life of the process.
    unsafe { SharedState::attach(ptr) }.ok()
}

/// The shared state; raises an ERROR when the library was not preloaded.
pub fn state() -> &'static SharedState {
    try_state().unwrap_or_else(|| {
        pgrx::error!("pageserver_ext shared memory is not set up: add pageserver_ext to shared_preload_libraries and restart")
    })
}

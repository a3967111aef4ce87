//! Background workers: registration with the postmaster and the loop every
//! worker shares (signals, latch, heartbeat, state in shared memory).
//!
//! Kinds: one main worker (tenants, page service, WAL receivers, flushes),
//! `pageserver.redo_workers` redo workers, one layers worker (compaction,
//! image layers, GC) and one backup worker (copies to object storage when
//! `pageserver.remote_storage` is set, idle otherwise).
//! Each entry point below is an `extern "C"` symbol the postmaster calls in a
//! new process; its argument is the worker's slot in the status table.

mod backup_worker;
mod layers_worker;
mod main_worker;
mod redo_worker;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use shared_mem::{WorkerKind, WorkerSlot, WorkerState};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often an idle worker wakes to publish its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How soon the postmaster restarts a worker that exited with an error.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Registers every worker; called from `_PG_init` in the postmaster.
pub fn register_all() {
    let redo = crate::guc::REDO_WORKERS.get().max(0) as usize;
    for (slot, (kind, number)) in crate::shmem::slot_layout(redo).into_iter().enumerate() {
        let (name, function) = match kind {
            WorkerKind::Main => ("pageserver main".to_string(), "pageserver_main_worker"),
            WorkerKind::Layers => ("pageserver layers".to_string(), "pageserver_layers_worker"),
            WorkerKind::Backup => ("pageserver backup".to_string(), "pageserver_backup_worker"),
            WorkerKind::Redo => (format!("pageserver redo {number}"), "pageserver_redo_worker"),
            WorkerKind::Unused => unreachable!("slot_layout assigns no unused slots"),
        };
        BackgroundWorkerBuilder::new(&name)
            .set_type(&format!("pageserver {}", kind.name()))
            .set_library("pageserver_ext")
            .set_function(function)
            .set_argument(Some(pg_sys::Datum::from(slot)))
            .enable_shmem_access(None)
            .set_start_time(pgrx::bgworkers::BgWorkerStartTime::ConsistentState)
            .set_restart_time(Some(RESTART_DELAY))
            .load();
    }
}

pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// A running worker's view of itself.
pub struct WorkerContext {
    pub slot: &'static WorkerSlot,
    pub kind: WorkerKind,
    /// Reloads applied so far (see [`WorkerContext::reloads`]).
    reloads: std::cell::Cell<u64>,
}

impl WorkerContext {
    /// Sets up signals and announces the worker in its slot.
    fn start(arg: pg_sys::Datum, expected: WorkerKind) -> WorkerContext {
        BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
        let slot_no = arg.value();
        let state = crate::shmem::state();
        let slot = state.workers.slot(slot_no).unwrap_or_else(|| error!("pageserver worker started with slot {slot_no} out of range"));
        if slot.kind() != expected {
            error!("pageserver worker slot {slot_no} is {:?}, expected {:?}", slot.kind(), expected);
        }
        // SAFETY: MyProcPid is set for every backend before its main function runs.
        let pid = unsafe { pg_sys::MyProcPid };
        slot.on_start(pid, now_us());
        WorkerContext { slot, kind: expected, reloads: std::cell::Cell::new(0) }
    }

    /// Waits on the latch for at most `timeout`; publishes a heartbeat and
    /// applies a reload on SIGHUP. Returns false when the worker must exit.
    pub fn wait(&self, timeout: Duration) -> bool {
        let keep_going = BackgroundWorker::wait_latch(Some(timeout));
        if BackgroundWorker::sighup_received() {
            // SAFETY: the worker's main thread, outside any critical section:
            // the documented way to apply a reload in a background worker.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            self.reloads.set(self.reloads.get() + 1);
        }
        self.slot.heartbeat(now_us());
        keep_going
    }

    /// How many reloads [`WorkerContext::wait`] has applied: a worker that
    /// rereads files on reload (as PostgreSQL rereads its certificate)
    /// compares it with the count it last acted on.
    pub fn reloads(&self) -> u64 {
        self.reloads.get()
    }

    /// Leaves the slot saying "stopped" and exits with status 1, so the
    /// postmaster starts the worker again after [`RESTART_DELAY`] unless the
    /// host is shutting down (status 0 would unregister it for good).
    fn finish(self) -> ! {
        self.slot.on_clean_exit();
        log!("pageserver {} worker exiting", self.kind.name());
        // SAFETY: the worker's main thread, all its work done; proc_exit runs
        // PostgreSQL's exit callbacks and never returns.
        unsafe { pg_sys::proc_exit(1) }
    }
}

/// The loop of a worker that so far only keeps its heartbeat (the backup
/// worker, until object storage arrives), saying why in its activity.
/// Writes the log lines a worker's threads handed over (they must not call
/// PostgreSQL themselves).
fn write_log_lines(lines: &std::sync::mpsc::Receiver<service::log::LogLine>) {
    for line in lines.try_iter() {
        match line {
            service::log::LogLine::Log(m) => log!("{m}"),
            service::log::LogLine::Warning(m) => warning!("{m}"),
        }
    }
}

/// Why a worker's thread ended: its panic message, or "it ended".
fn thread_end(thread: std::thread::JoinHandle<()>) -> String {
    match thread.join() {
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into()),
        Ok(()) => "it ended".into(),
    }
}

/// Keeps a worker with nothing to do alive: heartbeats until SIGTERM.
fn idle_loop(ctx: &WorkerContext, activity: &str) {
    ctx.slot.set_activity(activity);
    ctx.slot.set_state(WorkerState::Running);
    while ctx.wait(HEARTBEAT_INTERVAL) {}
    ctx.slot.set_state(WorkerState::Stopping);
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pageserver_main_worker(arg: pg_sys::Datum) {
    let ctx = WorkerContext::start(arg, WorkerKind::Main);
    main_worker::run(&ctx);
    ctx.finish();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pageserver_redo_worker(arg: pg_sys::Datum) {
    let ctx = WorkerContext::start(arg, WorkerKind::Redo);
    redo_worker::run(&ctx);
    ctx.finish();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pageserver_layers_worker(arg: pg_sys::Datum) {
    let ctx = WorkerContext::start(arg, WorkerKind::Layers);
    layers_worker::run(&ctx);
    ctx.finish();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pageserver_backup_worker(arg: pg_sys::Datum) {
    let ctx = WorkerContext::start(arg, WorkerKind::Backup);
    backup_worker::run(&ctx);
    ctx.finish();
}

/// PostgreSQL's signal handlers must run on the main thread. Threads started
/// inside `f` inherit a mask that blocks every signal (and so do the threads
/// they start), so the kernel delivers signals to the main thread only.
fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigfillset initialises the set; pthread_sigmask changes only
    // this thread's mask and we restore the previous one right after `f`.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        let result = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        result
    }
}

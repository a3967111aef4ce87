//! The main worker: owns the tokio runtime (page service today; WAL
//! receivers and layer flushes later). Its PostgreSQL main thread stays in
//! the latch loop, writes log lines that tokio tasks hand it, and is the only
//! thread of this process that calls PostgreSQL.

use super::WorkerContext;
use crate::page_service::{self, LogLine, LogSink};
use pgrx::prelude::*;
use shared_mem::WorkerState;
use std::time::Duration;

/// The main thread wakes this often to flush log lines from tokio threads.
const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// Tokio worker threads: page service connections are I/O bound.
const RUNTIME_THREADS: usize = 2;

pub fn run(ctx: &WorkerContext) {
    let listen_addr = crate::guc::string(&crate::guc::LISTEN_ADDR);
    if let Err(e) = page_service::parse_listen_addr(&listen_addr) {
        // A configuration error: stay alive (status shows it) but do not serve.
        warning!("{e}; the page service is not started");
    }
    let data_dir = crate::guc::data_dir();
    if let Err(e) = std::fs::create_dir_all(&data_dir) {
        error!("cannot create pageserver.data_dir \"{}\": {e}", data_dir.display());
    }

    let runtime = with_signals_blocked(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("pageserver-tokio")
            .enable_all()
            .build()
    })
    .unwrap_or_else(|e| error!("cannot start the tokio runtime: {e}"));
    let (log, log_lines) = LogSink::new();
    if page_service::parse_listen_addr(&listen_addr).is_ok() {
        runtime.spawn(page_service::run(listen_addr, log));
    }
    ctx.slot.set_state(WorkerState::Running);

    while ctx.wait(LOG_FLUSH_INTERVAL) {
        for line in log_lines.try_iter() {
            match line {
                LogLine::Log(m) => log!("{m}"),
                LogLine::Warning(m) => warning!("{m}"),
            }
        }
    }
    ctx.slot.set_state(WorkerState::Stopping);
    runtime.shutdown_timeout(Duration::from_secs(2));
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

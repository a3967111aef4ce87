//! The layers worker: compaction, image layers and GC in a process of their
//! own, at a lower CPU priority than the main worker. A thread of this
//! process (`pageserver-layers`) runs `service::layers::LayersWorker` passes
//! every `pageserver.compaction_period`, and at once when `pageserver.compact`
//! or `pageserver.gc` ask for one (counters in shared memory; `compact`
//! forces L0 merges below `compaction_threshold`): it reads the layer files and
//! indexes from disk, writes new files, and has the main worker swap them in
//! through the command queue (`service::mgmt::QueueOwner`). Redo for image
//! layers goes through the shared redo queue. The PostgreSQL main thread
//! waits on the latch, applies reloads, writes the log lines the pass thread
//! hands it, and leaves (the postmaster starts the worker again) on SIGTERM
//! or when the pass thread panicked. Stopping in the middle of a pass is
//! safe: the main worker removes what an unfinished pass wrote when it
//! grants the next one.

use super::{with_signals_blocked, WorkerContext};
use pgrx::prelude::*;
use service::layers::{LayersWorker, FAULT_POINTS};
use service::mgmt::QueueOwner;
use shared_mem::WorkerState;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The main thread wakes this often (log lines, settings, the pass thread).
const WAKE_INTERVAL: Duration = Duration::from_millis(250);
/// Nice value of the process: below the main worker's (0) for the CPU.
const NICENESS: i32 = 10;

/// Settings the pass thread takes from the main thread (which reads GUCs).
struct PassSettings {
    period: Duration,
    fault: Option<String>,
}

fn current_settings() -> PassSettings {
    let fault = crate::guc::string(&crate::guc::LAYERS_FAULT);
    PassSettings {
        period: Duration::from_secs(crate::guc::COMPACTION_PERIOD_S.get().max(1) as u64),
        fault: FAULT_POINTS.contains(&fault.as_str()).then_some(fault),
    }
}

pub fn run(ctx: &WorkerContext) {
    lower_cpu_priority();
    let tenants_dir = crate::guc::data_dir().join("tenants");
    let conf = crate::guc::repo_config();
    let shared = crate::shmem::state();
    let redo_timeout = Duration::from_millis(crate::guc::REDO_TIMEOUT_MS.get() as u64);
    let redo = Arc::new(service::redo_client::QueueRedo::new(&shared.redo, redo_timeout));
    let cancel = tokio_util::sync::CancellationToken::new();
    let settings = Arc::new(std::sync::Mutex::new(current_settings()));
    let log_lines = service::log::install().unwrap_or_else(|e| error!("{e}"));
    let slot = ctx.slot;

    let thread_cancel = cancel.clone();
    let thread_settings = settings.clone();
    let pass_thread = with_signals_blocked(|| {
        std::thread::Builder::new().name("pageserver-layers".into()).spawn(move || {
            let owner = QueueOwner::new(&shared.commands, thread_cancel.clone());
            let stopping = || thread_cancel.is_cancelled();
            let mut last = String::from("none yet");
            let mut last_end = Instant::now();
            let requests = &shared.layer_pass_requests;
            let mut requests_seen = requests.counts();
            loop {
                // The period is looked at again while waiting, so that a
                // reload that shortens it takes effect at once; a request
                // of pageserver.compact or pageserver.gc starts a pass now.
                let (fault, forced) = loop {
                    let (period, fault) = {
                        let s = thread_settings.lock().unwrap_or_else(|e| e.into_inner());
                        (s.period, s.fault.clone())
                    };
                    let left = period.saturating_sub(last_end.elapsed());
                    let asked = requests.counts();
                    if stopping() || left.is_zero() || asked != requests_seen {
                        let forced = asked.1 != requests_seen.1;
                        requests_seen = asked;
                        break (fault, forced);
                    }
                    slot.set_activity(&format!("idle: next pass in {} s (last pass: {last})", left.as_secs_f64().ceil() as u64));
                    std::thread::sleep(left.min(Duration::from_millis(100)));
                };
                if stopping() {
                    break;
                }
                let worker = LayersWorker {
                    tenants_dir: tenants_dir.clone(),
                    conf: conf.clone(),
                    // A forced pass merges L0 layers however few there are.
                    force_l0: forced,
                    redo: redo.clone(),
                    owner: &owner,
                    activity: &|text| slot.set_activity(text),
                    fault,
                };
                let started = Instant::now();
                let pass_result = worker.pass(&stopping);
                if !stopping() {
                    requests.pass_completed(requests_seen.0);
                }
                last = match pass_result {
                    Ok((timelines, errors)) => {
                        for e in &errors {
                            tracing::warn!("{e}");
                        }
                        format!("{timelines} timelines in {:.1} s, {} failed", started.elapsed().as_secs_f64(), errors.len())
                    }
                    Err(e) => {
                        tracing::warn!("layers worker: cannot list the timelines: {e}");
                        format!("failed: {e}")
                    }
                };
                last_end = Instant::now();
            }
        })
    })
    .unwrap_or_else(|e| error!("cannot start the layers worker's pass thread: {e}"));
    ctx.slot.set_state(WorkerState::Running);

    let mut fault_setting = String::new();
    while ctx.wait(WAKE_INTERVAL) {
        let fault = crate::guc::string(&crate::guc::LAYERS_FAULT);
        if fault != fault_setting && !fault.is_empty() && !FAULT_POINTS.contains(&fault.as_str()) {
            warning!("pageserver.layers_fault = '{fault}' is not one of {FAULT_POINTS:?}; ignored");
        }
        fault_setting = fault;
        *settings.lock().unwrap_or_else(|e| e.into_inner()) = current_settings();
        super::write_log_lines(&log_lines);
        if pass_thread.is_finished() {
            let why = super::thread_end(pass_thread);
            warning!("pageserver layers worker: the pass thread stopped ({why}); the worker restarts");
            break;
        }
    }
    // A pass still running is cut short by the exit; calls it has in flight
    // notice the cancel or are reclaimed by the queues.
    cancel.cancel();
    ctx.slot.set_state(WorkerState::Stopping);
}

/// Makes this process (the threads started from now on inherit it) nicer
/// than the main worker, so compaction yields the CPU to reads and ingest.
fn lower_cpu_priority() {
    // SAFETY: setpriority only changes the scheduling priority of the
    // calling thread (Linux: PRIO_PROCESS with 0 is the caller); it touches
    // no memory of ours.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICENESS) };
    if rc != 0 {
        warning!("pageserver layers worker: cannot lower its CPU priority: {}", std::io::Error::last_os_error());
    }
}

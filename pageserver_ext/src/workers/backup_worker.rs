//! The backup worker: copies layer files and timeline indexes to the object
//! storage `pageserver.remote_storage` names, in a process of its own. With
//! no storage configured it only keeps a heartbeat. Otherwise a thread
//! (`pageserver-backup`) runs `service::backup::BackupWorker` passes every
//! [`PASS_INTERVAL`] on a tokio runtime of the process; it publishes each
//! timeline's `remote_consistent_lsn`, queue, totals and last error in the
//! shared remote table. Another thread (`pageserver-backup-commands`)
//! serves the backup worker's command queue: the downloads of
//! `pageserver.attach_tenant` (`service::attach`), on the same runtime. The PostgreSQL main thread waits
//! on the latch, writes the log lines the thread hands it, and leaves (the
//! postmaster starts the worker again) on SIGTERM or when the thread
//! panicked. Leaving mid-pass is safe: see `service::backup`.

use super::{with_signals_blocked, WorkerContext};
use pgrx::prelude::*;
use remote::{Generation, RemoteStorageConfig};
use service::backup::BackupWorker;
use shared_mem::WorkerState;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often a pass starts (each reads every timeline's local index).
const PASS_INTERVAL: Duration = Duration::from_secs(1);
/// The main thread wakes this often (log lines, the pass thread).
const WAKE_INTERVAL: Duration = Duration::from_millis(250);

pub fn run(ctx: &WorkerContext) {
    let shared = crate::shmem::state();
    let url = crate::guc::string(&crate::guc::REMOTE_STORAGE);
    if url.is_empty() {
        shared.remote.set_enabled(false);
        super::idle_loop(ctx, "idle: pageserver.remote_storage is not set");
        return;
    }
    // _PG_init checked the setting at start; a failure here (e.g. the
    // directory cannot be created) is shown and retried by a restart.
    let storage = match RemoteStorageConfig::parse(&url, &crate::guc::string(&crate::guc::REMOTE_STORAGE_OPTIONS)).and_then(|c| c.open()) {
        Ok(storage) => storage,
        Err(e) => {
            ctx.slot.set_activity(&format!("failed: {e}"));
            warning!("pageserver backup worker: {e}");
            std::thread::sleep(Duration::from_secs(5));
            return;
        }
    };
    let data_dir = crate::guc::data_dir();
    let log_lines = service::log::install().unwrap_or_else(|e| error!("{e}"));
    let cancel = tokio_util::sync::CancellationToken::new();
    let runtime = with_signals_blocked(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("pageserver-backup-io").enable_all().build()
    })
    .unwrap_or_else(|e| error!("cannot start the backup worker's runtime: {e}"));
    let command_thread = {
        let (handle, storage, data_dir, cancel) = (runtime.handle().clone(), storage.clone(), data_dir.clone(), cancel.clone());
        let slot = ctx.slot;
        with_signals_blocked(|| {
            std::thread::Builder::new().name("pageserver-backup-commands".into()).spawn(move || {
                service::attach::serve(&shared.backup_commands, handle, storage, data_dir, &|text| slot.set_activity(text), cancel)
            })
        })
        .unwrap_or_else(|e| error!("cannot start the backup worker's command thread: {e}"))
    };
    let mut worker =
        BackupWorker::new(data_dir.join("tenants"), data_dir.join("backup"), storage, Generation::FIRST, &shared.remote, tenant_config());
    shared.remote.set_enabled(true);
    let slot = ctx.slot;
    let thread_cancel = cancel.clone();
    let handle = runtime.handle().clone();
    let pass_thread = with_signals_blocked(|| {
        std::thread::Builder::new().name("pageserver-backup".into()).spawn(move || {
            let runtime = handle;
            let stopping = || thread_cancel.is_cancelled();
            let mut last = String::from("none yet");
            while !stopping() {
                let started = Instant::now();
                let result = runtime.block_on(worker.pass(&|text| slot.set_activity(text), &stopping));
                last = match result {
                    Ok(s) if s.failed > 0 => format!(
                        "{} timelines, {} failed (see pageserver.remote_timelines()), {} layers ({} bytes) and {} indexes uploaded, {} deleted",
                        s.timelines, s.failed, s.uploaded_layers, s.uploaded_bytes, s.uploaded_indexes, s.deleted
                    ),
                    Ok(s) if s.uploaded_indexes > 0 || s.deleted > 0 => format!(
                        "{} timelines, {} layers ({} bytes) and {} indexes uploaded, {} deleted in {:.1} s",
                        s.timelines,
                        s.uploaded_layers,
                        s.uploaded_bytes,
                        s.uploaded_indexes,
                        s.deleted,
                        started.elapsed().as_secs_f64()
                    ),
                    Ok(_) => last,
                    Err(e) => {
                        tracing::warn!("backup worker: {e}");
                        format!("failed: {e}")
                    }
                };
                slot.set_activity(&format!("idle (last change: {last})"));
                let next = started + PASS_INTERVAL;
                while !stopping() && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
    })
    .unwrap_or_else(|e| error!("cannot start the backup worker's thread: {e}"));
    ctx.slot.set_state(WorkerState::Running);

    while ctx.wait(WAKE_INTERVAL) {
        super::write_log_lines(&log_lines);
        if command_thread.is_finished() {
            warning!("pageserver backup worker: the command thread stopped; the worker restarts");
            break;
        }
        if pass_thread.is_finished() {
            let why = super::thread_end(pass_thread);
            warning!("pageserver backup worker: the pass thread stopped ({why}); the worker restarts");
            break;
        }
    }
    cancel.cancel();
    ctx.slot.set_state(WorkerState::Stopping);
    runtime.shutdown_timeout(Duration::from_secs(1));
}

/// The settings that shape a tenant's history, stored in every remote index
/// so that a host attaching from the bucket sees what the writer used.
fn tenant_config() -> BTreeMap<String, String> {
    let conf = crate::guc::repo_config();
    BTreeMap::from([
        ("checkpoint_distance".into(), conf.checkpoint_distance.to_string()),
        ("compaction_threshold".into(), conf.compaction_threshold.to_string()),
        ("gc_horizon".into(), conf.gc_horizon.to_string()),
        ("image_creation_threshold".into(), conf.image_creation_threshold.to_string()),
        ("image_layer_distance".into(), conf.image_layer_distance.to_string()),
        ("pitr_interval_s".into(), conf.pitr_interval.as_secs().to_string()),
        ("target_file_size".into(), conf.target_file_size.to_string()),
    ])
}

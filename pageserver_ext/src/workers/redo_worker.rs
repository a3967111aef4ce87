//! The redo worker's loop: takes requests (one page, or a batch of pages)
//! from the shared-memory queue, applies them with the redo engine and
//! replies. Between requests (at least
//! every [`SERVE_SLICE`]) it looks at its latch: signals, postmaster death,
//! heartbeat.

use super::WorkerContext;
use redo_bgworker::{BlockTag, Record, RedoEngine, BLCKSZ};
use shared_mem::redo_queue::{wire, wire::FLAG_MASK_RESULT, BatchItemReply, Job, RedoRequestView};
use shared_mem::WorkerState;
use std::time::{Duration, Instant};

/// How long the worker serves requests before it checks its latch again.
const SERVE_SLICE: Duration = Duration::from_millis(100);

pub fn run(ctx: &WorkerContext) {
    let number = ctx.slot.number() as usize;
    let queue = &crate::shmem::state().redo;
    // SAFETY: the worker's main thread, once per process.
    let mut engine = unsafe { RedoEngine::new(number as u32) };
    // Fails whatever an earlier incarnation of this worker left in flight.
    let port = queue.attach_worker(number);
    ctx.slot.set_activity("serving redo requests");
    ctx.slot.set_state(WorkerState::Running);
    while ctx.wait(Duration::ZERO) {
        let slice_end = Instant::now() + SERVE_SLICE;
        while let Some(job) = port.next(slice_end.saturating_duration_since(Instant::now())) {
            let started = Instant::now();
            let (pages, records, failed) = serve(&mut engine, job);
            port.account(pages, records, failed, started.elapsed());
            if Instant::now() >= slice_end {
                break;
            }
        }
    }
    ctx.slot.set_state(WorkerState::Stopping);
}

/// Serves one job; returns the pages it asked for, the records applied and
/// the pages that failed (for `pageserver.stat_redo`).
fn serve(engine: &mut RedoEngine, job: Job<'_>) -> (u64, u64, u64) {
    if wire::is_batch(job.request_bytes()) {
        return serve_batch(engine, job);
    }
    let (reply, records) = match job.request() {
        Err(e) => (Err((0, 0, format!("malformed redo request: {e}"), true)), 0),
        Ok(request) => (apply(engine, &request), request.records().count() as u64),
    };
    let failed = reply.is_err() as u64;
    // A stale job (the caller gave up) just drops the reply.
    let _ = match reply {
        Ok(page) => job.reply_ok(&page),
        Err((lsn, rmgr, message, rejected)) => job.reply_err(lsn, rmgr, &message, rejected),
    };
    (1, records, failed)
}

/// A batch: each item applied in turn, every outcome replied in order (an
/// item's failure does not stop the others).
fn serve_batch(engine: &mut RedoEngine, job: Job<'_>) -> (u64, u64, u64) {
    let outcomes = match wire::decode_batch(job.request_bytes()) {
        Err(e) => Err(format!("malformed redo batch: {e}")),
        Ok(items) => {
            let records = items.iter().map(|request| request.records().count() as u64).sum::<u64>();
            Ok((items.iter().map(|request| apply(engine, request)).collect::<Vec<_>>(), records))
        }
    };
    let counts = match &outcomes {
        Err(_) => (1, 0, 1),
        Ok((outcomes, records)) => (outcomes.len() as u64, *records, outcomes.iter().filter(|o| o.is_err()).count() as u64),
    };
    let _ = match outcomes.map(|(outcomes, _)| outcomes) {
        Err(message) => job.reply_err(0, 0, &message, true),
        Ok(outcomes) => {
            let replies: Vec<BatchItemReply<'_>> = outcomes
                .iter()
                .map(|outcome| match outcome {
                    Ok(page) => Ok(page),
                    Err((lsn, rmgr, message, rejected)) => Err((*lsn, *rmgr, message.as_str(), *rejected)),
                })
                .collect();
            job.reply_batch(&replies)
        }
    };
    counts
}

/// One request through the redo engine: the page, or (LSN, resource
/// manager, message, rejected before redo).
fn apply(engine: &mut RedoEngine, request: &RedoRequestView<'_>) -> Result<[u8; BLCKSZ], (u64, u8, String, bool)> {
    let t = request.target;
    let target = BlockTag { spc: t.spc_node, db: t.db_node, rel: t.rel_node, fork: t.fork, blkno: t.blkno };
    let recs: Vec<Record<'_>> = request.records().map(|r| Record { start_lsn: r.start_lsn, end_lsn: r.end_lsn, raw: r.raw }).collect();
    let mask = request.flags & FLAG_MASK_RESULT != 0;
    engine.apply(target, request.base_image, &recs, mask).map_err(|f| (f.lsn, f.rmgr, f.message, f.rejected))
}

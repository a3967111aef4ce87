//! SQL access to WAL redo, for tests and debugging: apply records to a page
//! (the request goes through the shared-memory queue to a redo worker) and
//! mask pages as PostgreSQL's consistency check does.

use pgrx::prelude::*;
use redo_bgworker::BLCKSZ;
use shared_mem::redo_queue::{wire::FLAG_MASK_RESULT, RedoCallError, RedoRecord, RedoRequest, RelBlock};
use std::time::Duration;

fn page_arg(name: &str, bytes: &[u8]) -> [u8; BLCKSZ] {
    bytes.try_into().unwrap_or_else(|_| error!("{name} must be exactly {BLCKSZ} bytes, got {}", bytes.len()))
}

fn lsn_arg(name: &str, v: i64) -> u64 {
    if v < 0 {
        error!("{name} must not be negative, got {v}");
    }
    v as u64
}

/// Applies WAL records to one block and returns the page after the last one.
///
/// `spcnode/dbnode/relnode/fork/blkno` name the block as the records refer to
/// it; `base` is the page before the first record (NULL when the first
/// record initialises the block or carries its image); `records` are raw WAL
/// records (as in the WAL, page headers removed) with their start and end
/// LSNs. With `mask`, the result is masked by the last record's `rm_mask`.
/// Errors name the record's LSN and resource manager; nothing a request can
/// contain that is checkable in Rust reaches PostgreSQL's redo code.
#[pg_extern]
#[allow(clippy::too_many_arguments)]
fn redo_apply(
    spcnode: pg_sys::Oid,
    dbnode: pg_sys::Oid,
    relnode: pg_sys::Oid,
    fork: i32,
    blkno: i64,
    base: Option<&[u8]>,
    records: Array<'_, &[u8]>,
    start_lsns: Vec<i64>,
    end_lsns: Vec<i64>,
    mask: default!(bool, false),
) -> Vec<u8> {
    let records: Vec<&[u8]> = records.iter().map(|r| r.unwrap_or_else(|| error!("records must not contain NULL"))).collect();
    let request = build_request(spcnode, dbnode, relnode, fork, blkno, base, &records, &start_lsns, &end_lsns, mask);
    let timeout = Duration::from_millis(crate::guc::REDO_TIMEOUT_MS.get() as u64);
    let queue = &crate::shmem::state().redo;
    // The wait polls InterruptPending (a plain flag) so a query cancel ends
    // it; the interrupt itself is handled after the call, on this thread.
    // SAFETY: reading a sig_atomic_t flag that signal handlers set.
    let result = queue.call_cancellable(&request, timeout, &mut || unsafe { pg_sys::InterruptPending != 0 });
    match result {
        Ok(page) => page.to_vec(),
        Err(RedoCallError::Cancelled) => {
            pg_sys::check_for_interrupts!();
            error!("redo request cancelled")
        }
        // Timeouts, dead workers, rejected records and failed redo each get
        // their SQLSTATE from the service's one mapping.
        Err(e) => {
            let e = service::error::ServiceError::from(service::redo_client::redo_error(e));
            crate::mgmt_sql::raise(e.sqlstate(), &e.to_string())
        }
    }
}

/// Checks `redo_apply`'s arguments and builds the queue request.
#[allow(clippy::too_many_arguments)]
fn build_request<'r>(
    spcnode: pg_sys::Oid,
    dbnode: pg_sys::Oid,
    relnode: pg_sys::Oid,
    fork: i32,
    blkno: i64,
    base: Option<&[u8]>,
    records: &[&'r [u8]],
    start_lsns: &[i64],
    end_lsns: &[i64],
    mask: bool,
) -> RedoRequest<&'r [u8]> {
    if records.len() != start_lsns.len() || records.len() != end_lsns.len() {
        error!("records, start_lsns and end_lsns must have the same length ({}, {}, {})", records.len(), start_lsns.len(), end_lsns.len());
    }
    if !(0..=3).contains(&fork) {
        error!("fork must be 0 (main), 1 (fsm), 2 (vm) or 3 (init), got {fork}");
    }
    let blkno = u32::try_from(blkno).ok().filter(|b| *b != u32::MAX).unwrap_or_else(|| error!("invalid block number {blkno}"));
    RedoRequest {
        target: RelBlock { spc_node: spcnode.into(), db_node: dbnode.into(), rel_node: relnode.into(), fork: fork as u8, blkno },
        base_image: base.map(|b| Box::new(page_arg("base", b))),
        records: records
            .iter()
            .zip(start_lsns.iter().zip(end_lsns))
            .map(|(raw, (s, e))| RedoRecord { start_lsn: lsn_arg("start_lsn", *s), end_lsn: lsn_arg("end_lsn", *e), raw: *raw })
            .collect(),
        flags: if mask { FLAG_MASK_RESULT } else { 0 },
    }
}

/// Masks an 8 KiB page with resource manager `rmgr`'s `rm_mask` (hint bits,
/// unused space, LSN, checksum), as `wal_consistency_checking` compares pages.
#[pg_extern]
fn mask_page(rmgr: i32, page: &[u8], blkno: i64) -> Vec<u8> {
    let mut page = page_arg("page", page);
    let rmgr = u8::try_from(rmgr).ok().filter(|r| *r <= 21).unwrap_or_else(|| error!("unknown resource manager {rmgr}"));
    let blkno = u32::try_from(blkno).unwrap_or_else(|_| error!("invalid block number {blkno}"));
    // SAFETY: a backend's main thread.
    unsafe { redo_bgworker::mask_page(rmgr, &mut page, blkno) };
    page.to_vec()
}

/// Measures redo through the queue: sends `requests` copies of the request
/// (built like [`redo_apply`]'s) from `threads` threads of this backend and
/// returns the mean latency per request (µs) and the throughput
/// (requests/s). The threads call only the queue, never PostgreSQL. For
/// benchmarks (`tools/src/bin/redo_bench.rs`).
#[pg_extern]
#[allow(clippy::too_many_arguments)]
fn redo_bench(
    spcnode: pg_sys::Oid,
    dbnode: pg_sys::Oid,
    relnode: pg_sys::Oid,
    fork: i32,
    blkno: i64,
    base: Option<&[u8]>,
    records: Array<'_, &[u8]>,
    start_lsns: Vec<i64>,
    end_lsns: Vec<i64>,
    requests: i32,
    threads: i32,
) -> TableIterator<'static, (name!(latency_us, f64), name!(requests_per_s, f64))> {
    if requests < 1 || !(1..=64).contains(&threads) {
        error!("requests must be positive and threads between 1 and 64");
    }
    let records: Vec<&[u8]> = records.iter().map(|r| r.unwrap_or_else(|| error!("records must not contain NULL"))).collect();
    let request = build_request(spcnode, dbnode, relnode, fork, blkno, base, &records, &start_lsns, &end_lsns, false);
    let queue = &crate::shmem::state().redo;
    let timeout = Duration::from_millis(crate::guc::REDO_TIMEOUT_MS.get() as u64);
    // Warm up every worker's buffers and caches.
    for _ in 0..(threads * 4) {
        queue.call(&request, timeout).unwrap_or_else(|e| error!("{e}"));
    }
    let per_thread = (requests as usize).div_ceil(threads as usize);
    let started = std::time::Instant::now();
    let outcome: Result<Vec<Duration>, RedoCallError> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let t0 = std::time::Instant::now();
                    for _ in 0..per_thread {
                        queue.call(&request, timeout)?;
                    }
                    Ok(t0.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread panicked")).collect()
    });
    let wall = started.elapsed();
    let busy = outcome.unwrap_or_else(|e| error!("{e}"));
    let total = per_thread * threads as usize;
    let latency_us = busy.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e6 / total as f64;
    TableIterator::once((latency_us, total as f64 / wall.as_secs_f64()))
}

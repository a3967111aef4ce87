//! SQL access to WAL redo, for tests and debugging: apply records to a page
//! and mask pages as PostgreSQL's consistency check does.
//!
//! Today the calling backend runs the redo engine itself, on scratch
//! relations of its own (slot 64 + its backend id); with the shared-memory
//! queue the same functions hand the request to a redo worker.

use pgrx::prelude::*;
use redo_bgworker::{BlockTag, Record, RedoEngine, BLCKSZ};
use std::cell::RefCell;

/// Scratch slots 0..64 belong to redo workers; backends use 64 + backend id.
const BACKEND_SCRATCH_SLOT_BASE: u32 = 64;

thread_local! {
    static BACKEND_ENGINE: RefCell<Option<RedoEngine>> = const { RefCell::new(None) };
}

fn page_arg(name: &str, bytes: &[u8]) -> [u8; BLCKSZ] {
    bytes
        .try_into()
        .unwrap_or_else(|_| error!("{name} must be exactly {BLCKSZ} bytes, got {}", bytes.len()))
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
    let records: Vec<&[u8]> = records
        .iter()
        .map(|r| r.unwrap_or_else(|| error!("records must not contain NULL")))
        .collect();
    if records.len() != start_lsns.len() || records.len() != end_lsns.len() {
        error!(
            "records, start_lsns and end_lsns must have the same length ({}, {}, {})",
            records.len(),
            start_lsns.len(),
            end_lsns.len()
        );
    }
    if !(0..=3).contains(&fork) {
        error!("fork must be 0 (main), 1 (fsm), 2 (vm) or 3 (init), got {fork}");
    }
    let blkno = u32::try_from(blkno).ok().filter(|b| *b != u32::MAX).unwrap_or_else(|| error!("invalid block number {blkno}"));
    let target = BlockTag { spc: spcnode.into(), db: dbnode.into(), rel: relnode.into(), fork: fork as u8, blkno };
    let base = base.map(|b| page_arg("base", b));
    let recs: Vec<Record<'_>> = records
        .iter()
        .zip(start_lsns.iter().zip(&end_lsns))
        .map(|(raw, (s, e))| Record { start_lsn: lsn_arg("start_lsn", *s), end_lsn: lsn_arg("end_lsn", *e), raw })
        .collect();
    let result = BACKEND_ENGINE.with(|cell| {
        let mut engine = cell.borrow_mut();
        let engine = engine.get_or_insert_with(|| {
            // SAFETY: a backend's main thread; one engine per backend process.
            unsafe { RedoEngine::new(BACKEND_SCRATCH_SLOT_BASE + pg_sys::MyBackendId as u32) }
        });
        engine.apply(target, base.as_ref(), &recs, mask)
    });
    match result {
        Ok(page) => page.to_vec(),
        Err(e) => error!("{e}"),
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

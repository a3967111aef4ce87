//! The redo engine: applies a tenant's WAL records to one page by calling
//! the host's own resource-manager redo routines (`rm_redo`) on private
//! scratch buffers. This is the recipe of DESIGN.md, "Redo in a host
//! backend", step by step:
//!
//! * every block reference of a record is pointed at a scratch relfilenode
//!   of this engine (database [`SCRATCH_DB`], which no real database uses);
//!   the block number stays as it was, because redo derives links from it;
//! * with `InRecovery = true`, `smgrnblocks` trusts the cached relation size,
//!   so blocks "exist" without file contents;
//! * pages are pre-placed in shared buffers as non-permanent buffers (so a
//!   checkpoint never flushes them): the target gets the base image, every
//!   other reference a page with `pd_lsn = FFFFFFFF/FFFFFFFF` so redo skips
//!   it, heap records get zero FSM and VM pages to update;
//! * blocks of an init fork are redone in the scratch relation's **main**
//!   fork: PostgreSQL gives init-fork buffers `BM_PERMANENT` whatever the
//!   caller asks and flushes them at once during redo (`FlushOneBuffer` in
//!   `XLogReadBufferForRedoExtended` and hash redo), which would ask the
//!   host's WAL to be flushed up to the tenant's LSN and fail; the page
//!   contents do not depend on the fork;
//! * no pin is held across `rm_redo`; afterwards the target is read back (a
//!   buffer hit), copied out, and every scratch buffer is dropped by lookup;
//! * an `ERROR` inside redo is caught: locks and pins are released through
//!   the engine's own resource owner, every scratch buffer is dropped, and
//!   the caller gets a [`RedoFailure`] naming the record.
//!
//! All of this runs on a PostgreSQL process's main thread only.

use crate::validate::{self, rmgr, BLCKSZ};
use pgrx::pg_sys;
use pgrx::PgTryBuilder;
use std::cell::Cell;
use std::ffi::CStr;
use std::panic::AssertUnwindSafe;
use std::ptr::null_mut;

/// Database OID of scratch relfilenodes: above any OID a real database gets.
pub const SCRATCH_DB: u32 = 4_000_000_000;
/// First relfilenode number of scratch relations.
const SCRATCH_REL_BASE: u32 = 1_000_000;
/// Scratch relations per engine: one for the target, one per block id.
const SCRATCH_RELS_PER_ENGINE: u32 = 64;
/// PostgreSQL's `XLR_MAX_BLOCK_ID`.
const MAX_BLOCK_ID: usize = 32;
const N_SCRATCH: usize = MAX_BLOCK_ID + 2;

use storage::wal::ingest::{HEAPBLOCKS_PER_VM_PAGE, SLOTS_PER_FSM_PAGE as FSM_SLOTS_PER_PAGE};
const BKPBLOCK_WILL_INIT: u8 = 0x40;
/// Fork numbers as `ForkNumber` (`c_int`) values.
const MAIN_FORKNUM: i32 = pg_constants::MAIN_FORKNUM as i32;
const FSM_FORKNUM: i32 = pg_constants::FSM_FORKNUM as i32;
const VISIBILITYMAP_FORKNUM: i32 = pg_constants::VISIBILITYMAP_FORKNUM as i32;
const INIT_FORKNUM: i32 = pg_constants::INIT_FORKNUM as i32;

/// The fork a block of `fork` is redone in, in its scratch relation: the
/// main fork for an init fork (see the module docs), the fork itself otherwise.
fn scratch_fork(fork: i32) -> i32 {
    if fork == INIT_FORKNUM {
        MAIN_FORKNUM
    } else {
        fork
    }
}

/// A block of a relation of the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockTag {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
    pub fork: u8,
    pub blkno: u32,
}

/// One WAL record as it was in the WAL (page headers removed), with its LSNs.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub start_lsn: u64,
    pub end_lsn: u64,
    pub raw: &'a [u8],
}

/// Why a request failed, naming the record (shared with the redo client).
pub use storage::repo::RedoFailure;

/// A scratch page placed in shared buffers during a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placed {
    scratch: usize,
    fork: i32,
    blkno: u32,
}

/// Applies records to pages; one per process (it owns scratch relations).
pub struct RedoEngine {
    reader: *mut pg_sys::XLogReaderState,
    /// Which range of scratch relfilenodes this engine owns.
    scratch_slot: u32,
    /// `smgrsetowner` targets: each scratch SMgrRelation, once opened, stays
    /// open for good and is found here without a hash lookup (null = not yet).
    smgr_owners: Box<[pg_sys::SMgrRelation; N_SCRATCH]>,
    /// Forks already created per scratch relation (bit per fork).
    created_forks: [u8; N_SCRATCH],
    resource_owner: pg_sys::ResourceOwner,
    request_context: pg_sys::MemoryContext,
    placed: Vec<Placed>,
    /// The record being decoded, copied to MAXALIGNed memory reused across records.
    raw_buf: Vec<u64>,
    /// Where DecodeXLogRecord puts its result; reused across records.
    decoded_buf: Vec<u64>,
}

impl RedoEngine {
    /// Sets up the engine: an XLogReader for decoding, the private memory
    /// contexts of the resource managers that need `rm_startup`, a resource
    /// owner for buffer pins.
    ///
    /// # Safety
    /// Call once per process, on its main thread, with shared memory attached.
    pub unsafe fn new(scratch_slot: u32) -> RedoEngine {
        // SAFETY: the caller runs us on the main thread of a PostgreSQL process.
        unsafe {
            let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
            let mut routine: pg_sys::XLogReaderRoutine = std::mem::zeroed();
            let reader = pg_sys::XLogReaderAllocate(pg_sys::wal_segment_size, std::ptr::null(), &mut routine, null_mut());
            if reader.is_null() {
                pgrx::error!("out of memory allocating a WAL reader for redo");
            }
            // btree, GIN, GiST and SP-GiST redo allocate in contexts their startup creates.
            for rmid in [rmgr::BTREE, rmgr::GIN, rmgr::GIST, rmgr::SPGIST] {
                if let Some(startup) = pg_sys::GetRmgr(rmid).rm_startup {
                    pg_sys::ffi::pg_guard_ffi_boundary(|| startup());
                }
            }
            let request_context = pg_sys::AllocSetContextCreateInternal(
                pg_sys::TopMemoryContext,
                c"pageserver redo request".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            );
            let resource_owner = pg_sys::ResourceOwnerCreate(null_mut(), c"pageserver redo".as_ptr());
            pg_sys::MemoryContextSwitchTo(old);
            RedoEngine {
                reader,
                scratch_slot,
                smgr_owners: Box::new([null_mut(); N_SCRATCH]),
                created_forks: [0; N_SCRATCH],
                resource_owner,
                request_context,
                placed: Vec::with_capacity(16),
                raw_buf: Vec::new(),
                decoded_buf: Vec::new(),
            }
        }
    }

    fn scratch_node(&self, scratch: usize) -> pg_sys::RelFileNode {
        pg_sys::RelFileNode {
            spcNode: pg_sys::DEFAULTTABLESPACE_OID,
            dbNode: pg_sys::Oid::from(SCRATCH_DB),
            relNode: pg_sys::Oid::from(SCRATCH_REL_BASE + self.scratch_slot * SCRATCH_RELS_PER_ENGINE + scratch as u32),
        }
    }

    /// Applies `records` in order to `target`, starting from `base` (or from
    /// nothing, when the first record initialises the page or carries its
    /// image). With `mask`, the result is masked with the last record's
    /// `rm_mask`, as PostgreSQL's consistency check does.
    pub fn apply(
        &mut self,
        target: BlockTag,
        base: Option<&[u8; BLCKSZ]>,
        records: &[Record<'_>],
        mask: bool,
    ) -> Result<[u8; BLCKSZ], RedoFailure> {
        let Some(first) = records.first() else {
            return base.copied().ok_or_else(|| RedoFailure {
                lsn: 0,
                rmgr: 0,
                message: "no records and no base image".into(),
                rejected: true,
            });
        };
        // Everything that can be checked in Rust is checked before PostgreSQL sees it.
        let mut headers = Vec::with_capacity(records.len());
        for r in records {
            let fail =
                |rmid: u8, e: validate::Invalid| RedoFailure { lsn: r.start_lsn, rmgr: rmid, message: e.to_string(), rejected: true };
            let h = validate::check_record(r.raw).map_err(|e| fail(r.raw.get(17).copied().unwrap_or(0), e))?;
            validate::check_rmgr(&h).map_err(|e| fail(h.xl_rmid, e))?;
            validate::check_lsns(r.start_lsn, r.end_lsn).map_err(|e| fail(h.xl_rmid, e))?;
            headers.push(h);
        }
        for pair in records.windows(2) {
            if pair[1].start_lsn < pair[0].end_lsn {
                return Err(RedoFailure {
                    lsn: pair[1].start_lsn,
                    rmgr: 0,
                    message: format!(
                        "records out of order: this one starts before the previous one ends ({})",
                        validate::Lsn(pair[0].end_lsn)
                    ),
                    rejected: true,
                });
            }
        }
        if let Some(page) = base {
            validate::check_base_page(page, headers[0].xl_rmid, target.fork, first.end_lsn).map_err(|e| RedoFailure {
                lsn: first.start_lsn,
                rmgr: headers[0].xl_rmid,
                message: e.to_string(),
                rejected: true,
            })?;
        }

        let current = Cell::new(0usize);
        // SAFETY: main thread of a PostgreSQL process (see `new`); globals
        // changed here (resource owner, memory context, InRecovery) are
        // restored below on both paths.
        let result = unsafe {
            let saved_owner = pg_sys::CurrentResourceOwner;
            let saved_context = pg_sys::MemoryContextSwitchTo(self.request_context);
            let saved_in_recovery = pg_sys::InRecovery;
            pg_sys::CurrentResourceOwner = self.resource_owner;
            pg_sys::InRecovery = true;
            let this = &mut *self;
            let outcome = PgTryBuilder::new(AssertUnwindSafe(|| this.apply_in_postgres(target, base, records, &current)))
                .catch_others(|caught| Err(caught_message(caught)))
                .execute();
            let outcome = match outcome {
                Ok(page) => Ok(page),
                Err(message) => {
                    self.recover_after_error();
                    let r = &records[current.get().min(records.len() - 1)];
                    Err(RedoFailure {
                        lsn: r.start_lsn,
                        rmgr: headers[current.get().min(headers.len() - 1)].xl_rmid,
                        message,
                        rejected: false,
                    })
                }
            };
            pg_sys::InRecovery = saved_in_recovery;
            pg_sys::MemoryContextSwitchTo(saved_context);
            pg_sys::MemoryContextReset(self.request_context);
            pg_sys::CurrentResourceOwner = saved_owner;
            outcome
        };
        let mut page = result?;
        // Redo stamps each page it changes with the record's end LSN; some
        // records reference a block without changing it (hash redo takes a
        // cleanup lock on a bucket page it leaves alone; heap VISIBLE leaves
        // the heap page's LSN unless hints are WAL-logged). So the result's
        // LSN must be the base page's or the end of one of the records:
        // anything else means the page is not what these records produce.
        let lsn = validate::page_lsn(&page);
        let base_lsn = base.map(validate::page_lsn).unwrap_or(0);
        if lsn != base_lsn && !records.iter().any(|r| r.end_lsn == lsn) {
            let last = records.last().expect("non-empty");
            return Err(RedoFailure {
                lsn: last.start_lsn,
                rmgr: headers.last().expect("non-empty").xl_rmid,
                message: format!(
                    "after redo the page LSN is {}: neither the base page's nor the end of a record applied",
                    validate::Lsn(lsn)
                ),
                rejected: false,
            });
        }
        if mask {
            let last_rmid = headers.last().expect("non-empty").xl_rmid;
            // SAFETY: rm_mask only reads and writes the 8 KiB page it is given.
            unsafe { mask_page(last_rmid, &mut page, target.blkno) };
        }
        Ok(page)
    }

    /// The PostgreSQL part of [`apply`](Self::apply); may raise ERROR.
    ///
    /// # Safety
    /// The redo worker's PostgreSQL main thread, with this engine's resource
    /// owner and request memory context current (as `apply` sets them up),
    /// `InRecovery` set, and inside a `PgTryBuilder` that catches the ERROR.
    unsafe fn apply_in_postgres(
        &mut self,
        target: BlockTag,
        base: Option<&[u8; BLCKSZ]>,
        records: &[Record<'_>],
        current: &Cell<usize>,
    ) -> Result<[u8; BLCKSZ], String> {
        // SAFETY: called by `apply` with the globals set up for redo.
        unsafe {
            self.placed.clear();
            for (i, rec) in records.iter().enumerate() {
                current.set(i);
                let reader = self.decode(rec)?;
                let record = (*reader).record;
                let rmid = (*record).header.xl_rmid;
                let target_id = find_block(record, target).ok_or_else(|| {
                    format!(
                        "record does not reference the requested block {}/{}/{} fork {} block {}",
                        target.spc, target.db, target.rel, target.fork, target.blkno
                    )
                })?;
                let tb = block(record, target_id);
                if i == 0 {
                    let page_is_new = base.is_none_or(validate::page_is_new);
                    let initialises = (*tb).flags & BKPBLOCK_WILL_INIT != 0 || ((*tb).has_image && (*tb).apply_image);
                    if page_is_new && !initialises {
                        return Err("no base page (or a new one) and the record neither initialises the block nor carries its image".into());
                    }
                }
                let is_heap = rmid == rmgr::HEAP || rmid == rmgr::HEAP2;
                for id in 0..=((*record).max_block_id.max(-1)) {
                    let b = block(record, id as usize);
                    if !(*b).in_use {
                        continue;
                    }
                    let scratch = if id as usize == target_id { 0 } else { 1 + id as usize };
                    let node = self.scratch_node(scratch);
                    (*b).rnode = node;
                    let smgr = self.open_scratch(scratch);
                    (*b).forknum = scratch_fork((*b).forknum);
                    let (fork, blkno) = ((*b).forknum, (*b).blkno);
                    (*smgr).smgr_cached_nblocks[fork as usize] = blkno + 1;
                    if is_heap && fork == MAIN_FORKNUM {
                        // Heap redo updates the FSM and VM of the relation it rewrites.
                        let (fsm, vm) = (fsm_leaf_block(blkno), blkno / HEAPBLOCKS_PER_VM_PAGE);
                        (*smgr).smgr_cached_nblocks[FSM_FORKNUM as usize] = fsm + 1;
                        (*smgr).smgr_cached_nblocks[VISIBILITYMAP_FORKNUM as usize] = vm + 1;
                        self.place_once(node, scratch, FSM_FORKNUM, fsm, PageContent::Zero);
                        self.place_once(node, scratch, VISIBILITYMAP_FORKNUM, vm, PageContent::Zero);
                    }
                    if scratch == 0 {
                        if i == 0 {
                            let content = match base {
                                Some(p) => PageContent::Image(p),
                                None => PageContent::Zero,
                            };
                            self.place(node, scratch, fork, blkno, content);
                        }
                    } else {
                        self.place(node, scratch, fork, blkno, PageContent::AlreadyNewer);
                    }
                }
                let redo = pg_sys::GetRmgr(rmid).rm_redo.ok_or("resource manager has no redo routine")?;
                pg_sys::ffi::pg_guard_ffi_boundary(|| redo(reader));
            }
            let out = self.read_target(target)?;
            self.drop_placed();
            Ok(out)
        }
    }

    /// Decodes a raw record into the reader, in buffers reused across records.
    ///
    /// # Safety
    /// The redo worker's PostgreSQL main thread, with this engine's resource
    /// owner and request memory context current (as `apply` sets them up);
    /// `rec.raw` passed `validate::check_record`. The returned reader is
    /// valid until the next call.
    unsafe fn decode(&mut self, rec: &Record<'_>) -> Result<*mut pg_sys::XLogReaderState, String> {
        // SAFETY: both buffers are 8-byte aligned (MAXALIGN) and sized as
        // DecodeXLogRecord requires; the reader and the decoded record are
        // used only until the next decode.
        unsafe {
            let len = rec.raw.len();
            grow(&mut self.raw_buf, len);
            std::ptr::copy_nonoverlapping(rec.raw.as_ptr(), self.raw_buf.as_mut_ptr() as *mut u8, len);
            grow(&mut self.decoded_buf, pg_sys::DecodeXLogRecordRequiredSpace(len));
            let decoded = self.decoded_buf.as_mut_ptr() as *mut pg_sys::DecodedXLogRecord;
            (*decoded).oversized = false;
            let r = self.reader;
            (*r).ReadRecPtr = rec.start_lsn;
            (*r).EndRecPtr = rec.end_lsn;
            (*r).DecodeRecPtr = rec.start_lsn;
            (*r).NextRecPtr = rec.end_lsn;
            let mut err: *mut std::ffi::c_char = null_mut();
            let raw = self.raw_buf.as_mut_ptr() as *mut pg_sys::XLogRecord;
            if !pg_sys::DecodeXLogRecord(r, decoded, raw, rec.start_lsn, &mut err) {
                let msg = if err.is_null() { "unknown".into() } else { CStr::from_ptr(err).to_string_lossy().into_owned() };
                return Err(format!("cannot decode record: {msg}"));
            }
            (*decoded).next_lsn = rec.end_lsn;
            (*r).record = decoded;
            Ok(r)
        }
    }

    /// Opens (once) the scratch relation `scratch` and creates its forks.
    ///
    /// # Safety
    /// The redo worker's PostgreSQL main thread, with this engine's resource
    /// owner and request memory context current (as `apply` sets them up);
    /// `scratch` is below the engine's scratch count.
    unsafe fn open_scratch(&mut self, scratch: usize) -> pg_sys::SMgrRelation {
        // SAFETY: smgr calls on the main thread; owner slots live in a Box
        // that the engine keeps for the life of the process.
        unsafe {
            let owned = self.smgr_owners[scratch];
            if !owned.is_null() && self.created_forks[scratch] == 0b111 {
                return owned;
            }
            let smgr = pg_sys::smgropen(self.scratch_node(scratch), pg_sys::InvalidBackendId);
            let owner = &raw mut self.smgr_owners[scratch];
            if (*smgr).smgr_owner != owner {
                pg_sys::smgrsetowner(owner, smgr); // survives the end of transactions
            }
            if self.created_forks[scratch] != 0b111 {
                for fork in [MAIN_FORKNUM, FSM_FORKNUM, VISIBILITYMAP_FORKNUM] {
                    pg_sys::smgrcreate(smgr, fork, true);
                }
                self.created_forks[scratch] = 0b111;
            }
            smgr
        }
    }

    /// [`place`](Self::place), unless this request already placed that block.
    ///
    /// # Safety
    /// As for [`place`](Self::place).
    unsafe fn place_once(&mut self, node: pg_sys::RelFileNode, scratch: usize, fork: i32, blkno: u32, content: PageContent<'_>) {
        if !self.placed.contains(&Placed { scratch, fork, blkno }) {
            // SAFETY: as for place.
            unsafe { self.place(node, scratch, fork, blkno, content) };
        }
    }

    /// Puts a page into a non-permanent shared buffer and releases the pin.
    ///
    /// # Safety
    /// The redo worker's PostgreSQL main thread, with this engine's resource
    /// owner and request memory context current (as `apply` sets them up);
    /// `node` is this engine's scratch relation `scratch`.
    unsafe fn place(&mut self, node: pg_sys::RelFileNode, scratch: usize, fork: i32, blkno: u32, content: PageContent<'_>) {
        // SAFETY: the buffer is pinned and exclusively locked between
        // ReadBufferWithoutRelcache(RBM_ZERO_AND_LOCK) and the unlock.
        unsafe {
            let buf = pg_sys::ReadBufferWithoutRelcache(
                node,
                fork,
                blkno,
                pg_sys::ReadBufferMode::RBM_ZERO_AND_LOCK,
                null_mut(),
                false, // not permanent: checkpoints never write it
            );
            let page = pg_sys::BufferGetPage(buf) as *mut u8;
            match content {
                PageContent::Zero => {} // RBM_ZERO_AND_LOCK zeroed it
                PageContent::Image(img) => {
                    std::ptr::copy_nonoverlapping(img.as_ptr(), page, BLCKSZ);
                    pg_sys::MarkBufferDirty(buf);
                }
                PageContent::AlreadyNewer => {
                    pg_sys::PageInit(page as pg_sys::Page, BLCKSZ, 0);
                    std::ptr::write_bytes(page, 0xFF, 8); // pd_lsn = FFFFFFFF/FFFFFFFF: redo skips it
                }
            }
            pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_UNLOCK as i32);
            pg_sys::ReleaseBuffer(buf);
            let p = Placed { scratch, fork, blkno };
            if !self.placed.contains(&p) {
                self.placed.push(p);
            }
        }
    }

    /// Copies the target page out of its scratch buffer (a buffer hit).
    ///
    /// # Safety
    /// The redo worker's PostgreSQL main thread, with this engine's resource
    /// owner and request memory context current (as `apply` sets them up); the target was placed by this request.
    unsafe fn read_target(&mut self, target: BlockTag) -> Result<[u8; BLCKSZ], String> {
        // SAFETY: pin + share lock while copying.
        unsafe {
            let buf = pg_sys::ReadBufferWithoutRelcache(
                self.scratch_node(0),
                scratch_fork(target.fork as i32),
                target.blkno,
                pg_sys::ReadBufferMode::RBM_NORMAL,
                null_mut(),
                false,
            );
            pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_SHARE as i32);
            let mut out = [0u8; BLCKSZ];
            std::ptr::copy_nonoverlapping(pg_sys::BufferGetPage(buf) as *const u8, out.as_mut_ptr(), BLCKSZ);
            pg_sys::UnlockReleaseBuffer(buf);
            Ok(out)
        }
    }

    /// Drops every page placed by this request, by lookup (InRecovery is on,
    /// so the cached size `blkno + 1` makes it one hash probe, not a scan).
    ///
    /// # Safety
    /// The redo worker's PostgreSQL main thread, with this engine's resource
    /// owner and request memory context current (as `apply` sets them up); no buffer of this request is pinned.
    unsafe fn drop_placed(&mut self) {
        // SAFETY: no pins are held on scratch buffers here.
        unsafe {
            let mut placed = std::mem::take(&mut self.placed);
            for p in placed.drain(..) {
                let smgr = self.open_scratch(p.scratch);
                (*smgr).smgr_cached_nblocks[p.fork as usize] = p.blkno + 1;
                let mut fork = p.fork;
                let mut first = p.blkno;
                pg_sys::DropRelFileNodeBuffers(smgr, &mut fork, 1, &mut first);
            }
            self.placed = placed; // keeps its capacity for the next request
        }
    }

    /// After an ERROR in redo: release what the error left held (LWLocks,
    /// buffer pins), then drop every scratch buffer of this engine.
    ///
    /// # Safety
    /// The redo worker's PostgreSQL main thread, right after a caught ERROR
    /// of [`apply_in_postgres`](Self::apply_in_postgres), before anything else runs.
    unsafe fn recover_after_error(&mut self) {
        // SAFETY: main thread, outside any critical section (an error in one
        // is a PANIC, which never gets here).
        unsafe {
            pg_sys::LWLockReleaseAll();
            pg_sys::UnlockBuffers();
            for phase in [
                pg_sys::ResourceReleasePhase::RESOURCE_RELEASE_BEFORE_LOCKS,
                pg_sys::ResourceReleasePhase::RESOURCE_RELEASE_LOCKS,
                pg_sys::ResourceReleasePhase::RESOURCE_RELEASE_AFTER_LOCKS,
            ] {
                pg_sys::ResourceOwnerRelease(self.resource_owner, phase, false, true);
            }
            self.placed.clear();
            let mut rels: Vec<pg_sys::SMgrRelation> =
                (0..N_SCRATCH).map(|s| pg_sys::smgropen(self.scratch_node(s), pg_sys::InvalidBackendId)).collect();
            pg_sys::DropRelFileNodesAllBuffers(rels.as_mut_ptr(), rels.len() as i32);
        }
    }
}

/// Makes `buf` hold at least `bytes` bytes.
fn grow(buf: &mut Vec<u64>, bytes: usize) {
    let words = bytes.div_ceil(8);
    if buf.len() < words {
        buf.resize(words, 0);
    }
}

enum PageContent<'a> {
    Zero,
    Image(&'a [u8; BLCKSZ]),
    /// An initialised page with the highest LSN: redo leaves it alone.
    AlreadyNewer,
}

/// Block `id` of a decoded record.
///
/// # Safety
/// `record` points to a decoded record and `id <= (*record).max_block_id`.
unsafe fn block(record: *mut pg_sys::DecodedXLogRecord, id: usize) -> *mut pg_sys::DecodedBkpBlock {
    // SAFETY: id <= max_block_id, checked by callers; blocks is a flexible array.
    unsafe { (*record).blocks.as_mut_ptr().add(id) }
}

/// The block id of `record` that refers to `target`.
///
/// # Safety
/// `record` points to a decoded record.
unsafe fn find_block(record: *mut pg_sys::DecodedXLogRecord, target: BlockTag) -> Option<usize> {
    // SAFETY: reads of a decoded record.
    unsafe {
        (0..=(*record).max_block_id).filter(|id| *id >= 0).map(|id| id as usize).find(|id| {
            let b = block(record, *id);
            (*b).in_use
                && u32::from((*b).rnode.spcNode) == target.spc
                && u32::from((*b).rnode.dbNode) == target.db
                && u32::from((*b).rnode.relNode) == target.rel
                && (*b).forknum == target.fork as i32
                && (*b).blkno == target.blkno
        })
    }
}

/// `fsm_logical_to_physical(fsm_get_location(heapblk))` of freespace.c, for
/// the leaf level: the FSM block heap redo updates.
fn fsm_leaf_block(heap_block: u32) -> u32 {
    let mut leaf = heap_block / FSM_SLOTS_PER_PAGE;
    let mut pages = 0u32;
    for _ in 0..3 {
        pages += leaf + 1;
        leaf /= FSM_SLOTS_PER_PAGE;
    }
    pages - 1
}

fn caught_message(caught: pg_sys::panic::CaughtError) -> String {
    match caught {
        pg_sys::panic::CaughtError::PostgresError(e)
        | pg_sys::panic::CaughtError::ErrorReport(e)
        | pg_sys::panic::CaughtError::RustPanic { ereport: e, .. } => e.message().to_string(),
    }
}

/// Masks `page` with resource manager `rmid`'s `rm_mask` (hint bits, unused
/// space, LSN and checksum), as PostgreSQL's consistency check does.
///
/// # Safety
/// Main thread of a PostgreSQL process.
pub unsafe fn mask_page(rmid: u8, page: &mut [u8; BLCKSZ], blkno: u32) {
    // SAFETY: GetRmgr returns the static rmgr table entry; rm_mask writes
    // only inside the page.
    unsafe {
        if let Some(mask) = pg_sys::GetRmgr(rmid).rm_mask {
            pg_sys::ffi::pg_guard_ffi_boundary(|| mask(page.as_mut_ptr() as *mut std::ffi::c_char, blkno));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsm_leaf_block_matches_freespace_c() {
        // Heap block 0 lives in FSM leaf page 2 (after root and level-1 pages).
        assert_eq!(fsm_leaf_block(0), 2);
        assert_eq!(fsm_leaf_block(FSM_SLOTS_PER_PAGE - 1), 2);
        // The next leaf follows directly under the same level-1 page.
        assert_eq!(fsm_leaf_block(FSM_SLOTS_PER_PAGE), 3);
    }
}

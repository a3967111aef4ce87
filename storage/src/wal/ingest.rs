//! Ingest rules: what one decoded WAL record changes in the key space.
//!
//! [`ingest_record`] is pure: it maps a [`DecodedRecord`] to a list of
//! [`IngestChange`]s, all taking effect at the record's end LSN (a read at
//! LSN `L` sees every record whose end is `<= L`). Changes that need the
//! timeline's current state to be turned into key/value versions (relation
//! sizes, relation and database directories, the checkpoint's next OID) are
//! returned as such, and the timeline applies them:
//!
//! - page-level records (heap, heap2, btree, hash, GIN, GiST, SP-GiST, BRIN,
//!   sequence, generic, XLOG FPI) → a value on every block referenced: the
//!   page image if `BKPIMAGE_APPLY` (pd_lsn set to the end LSN, as redo
//!   does), else the raw record with its target block id; plus relation
//!   growth to `blkno + 1`;
//! - heap records that clear `ALL_VISIBLE` / `ALL_FROZEN` → a `VmClearBits`
//!   project record on the visibility-map page (heap redo would clear it on
//!   a page the record does not reference);
//! - XACT commit / abort (also prepared) → `ClogSetStatus` project records on
//!   the CLOG pages of the xid and its subtransactions, relation drops, and
//!   the two-phase state file written at PREPARE, removed at the end; a
//!   commit's `xact_time` too (for [`crate::commit_time`]);
//! - SMGR create / truncate (FSM and VM truncated like PostgreSQL does, the
//!   partial last page zeroed), DBASE create / drop, RELMAP update;
//! - XLOG checkpoint (the `CheckPoint` struct) and NEXTOID;
//! - CLOG and MULTIXACT zero-page records (zero images, SLRU growth) and
//!   multixact creation (offsets and members project records).
//!
//! Records of STANDBY, TBLSPC, LOGICALMSG, REPLORIGIN, COMMIT_TS change no
//! page the page server keeps. CLOG / MULTIXACT truncation is left to GC.

use bytes::Bytes;

use super::record::{u32_at, DecodedRecord};
use super::*;
use crate::key::{Key, RelTag, SlruKind, FSM_FORKNUM, MAIN_FORKNUM, VISIBILITYMAP_FORKNUM};
use crate::lsn::Lsn;
use crate::pg_control::{SIZE_OF_CHECKPOINT, XLOG_CHECKPOINT_ONLINE, XLOG_CHECKPOINT_SHUTDOWN, XLOG_NEXTOID};
use crate::value::{
    MultiXactMember, ProjectRecord, RecordPayload, Value, WalRecordValue, TRANSACTION_STATUS_ABORTED, TRANSACTION_STATUS_COMMITTED,
};

/// One effect of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngestChange {
    /// A new version of `key`.
    Put { key: Key, value: Value },
    /// The fork exists with at least `nblocks` blocks (creating it if needed).
    RelExtend { rel: RelTag, nblocks: u32 },
    /// The fork is created (`smgrcreate`), empty unless it already exists.
    RelCreate { rel: RelTag },
    /// The fork is truncated to `nblocks` (no-op if already shorter).
    RelTruncate { rel: RelTag, nblocks: u32 },
    /// Every fork of the relation is dropped.
    RelDrop { spc_node: u32, db_node: u32, rel_node: u32 },
    /// A database directory is created, as a copy of `src` (FILE_COPY
    /// strategy) or empty (WAL_LOG strategy, its pages follow in the WAL).
    DbCreate { spc_node: u32, db_node: u32, src: Option<(u32, u32)> },
    /// The database's directories in these tablespaces are removed.
    DbDrop { db_node: u32, spc_nodes: Vec<u32> },
    /// The SLRU segment has at least `nblocks` blocks.
    SlruExtend { kind: SlruKind, segno: u32, nblocks: u32 },
    /// The two-phase state file of `xid` is removed.
    TwoPhaseDrop { xid: u32 },
    /// The checkpoint's next OID advances to `oid` (`XLOG_NEXTOID`).
    NextOid { oid: u32 },
    /// A transaction committed at `time` (`xact_time`, a `TimestampTz`).
    Commit { time: i64 },
}

/// The effects of one record at `lsn` (its end).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestBatch {
    pub lsn: Lsn,
    pub changes: Vec<IngestChange>,
}

/// A record whose contents do not fit its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot ingest {rmgr} record at {lsn}: {reason}")]
pub struct IngestError {
    pub lsn: Lsn,
    pub rmgr: &'static str,
    pub reason: String,
}

// Record types (info & XLR_RMGR_INFO_MASK) used here.
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_PREPARE: u8 = 0x10;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_HAS_INFO: u8 = 0x80;
const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;

const XLOG_SMGR_CREATE: u8 = 0x10;
const XLOG_SMGR_TRUNCATE: u8 = 0x20;
const SMGR_TRUNCATE_HEAP: u32 = 0x0001;
const SMGR_TRUNCATE_VM: u32 = 0x0002;
const SMGR_TRUNCATE_FSM: u32 = 0x0004;

const XLOG_DBASE_CREATE_FILE_COPY: u8 = 0x00;
const XLOG_DBASE_CREATE_WAL_LOG: u8 = 0x10;
const XLOG_DBASE_DROP: u8 = 0x20;

const XLOG_RELMAP_UPDATE: u8 = 0x00;

const CLOG_ZEROPAGE: u8 = 0x00;
const XLOG_MULTIXACT_ZERO_OFF_PAGE: u8 = 0x00;
const XLOG_MULTIXACT_ZERO_MEM_PAGE: u8 = 0x10;
const XLOG_MULTIXACT_CREATE_ID: u8 = 0x20;

const XLOG_HEAP_INSERT: u8 = 0x00;
const XLOG_HEAP_DELETE: u8 = 0x10;
const XLOG_HEAP_UPDATE: u8 = 0x20;
const XLOG_HEAP_HOT_UPDATE: u8 = 0x40;
const XLOG_HEAP_LOCK: u8 = 0x60;
const XLOG_HEAP_OPMASK: u8 = 0x70;
const XLOG_HEAP2_MULTI_INSERT: u8 = 0x50;
const XLOG_HEAP2_LOCK_UPDATED: u8 = 0x60;
const XLH_INSERT_ALL_VISIBLE_CLEARED: u8 = 1 << 0;
const XLH_DELETE_ALL_VISIBLE_CLEARED: u8 = 1 << 0;
const XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED: u8 = 1 << 0;
const XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED: u8 = 1 << 1;
const XLH_LOCK_ALL_FROZEN_CLEARED: u8 = 1 << 0;
const VISIBILITYMAP_ALL_FROZEN: u8 = 0x02;
const VISIBILITYMAP_VALID_BITS: u8 = 0x03;

/// Heap blocks covered by one visibility-map page (2 bits each).
pub const HEAPBLOCKS_PER_VM_PAGE: u32 = (BLCKSZ - SIZE_OF_PAGE_HEADER) as u32 * 4;
/// Leaf slots of one FSM page (`SlotsPerFSMPage`).
pub const SLOTS_PER_FSM_PAGE: u32 = (BLCKSZ - SIZE_OF_PAGE_HEADER - 4) as u32 - (BLCKSZ as u32 / 2 - 1);
const FSM_TREE_DEPTH: u32 = 3;
pub use pg_constants::{SIZE_OF_PAGE_HEADER, SLRU_PAGES_PER_SEGMENT};
pub const CLOG_XACTS_PER_PAGE: u32 = BLCKSZ as u32 * 4;
pub const MULTIXACT_OFFSETS_PER_PAGE: u32 = BLCKSZ as u32 / 4;
pub const MULTIXACT_MEMBERS_PER_PAGE: u32 = (BLCKSZ as u32 / 20) * 4;

/// Physical FSM block holding the leaf for heap FSM slot page `logical`
/// (`fsm_logical_to_physical` at level 0).
pub fn fsm_logical_to_physical(logical: u32) -> u32 {
    let mut pages: u64 = 0;
    let mut leafno = u64::from(logical);
    for _ in 0..FSM_TREE_DEPTH {
        pages += leafno + 1;
        leafno /= u64::from(SLOTS_PER_FSM_PAGE);
    }
    (pages - 1) as u32
}

/// Whether records of this resource manager are page-level (applied by the
/// host's redo on the blocks they reference).
pub fn is_page_rmgr(rmid: u8) -> bool {
    matches!(
        rmid,
        rmgr::HEAP
            | rmgr::HEAP2
            | rmgr::BTREE
            | rmgr::HASH
            | rmgr::GIN
            | rmgr::GIST
            | rmgr::SEQ
            | rmgr::SPGIST
            | rmgr::BRIN
            | rmgr::GENERIC
    )
}

struct Ctx<'a> {
    rec: &'a DecodedRecord,
    out: Vec<IngestChange>,
}

impl Ctx<'_> {
    fn err(&self, reason: impl Into<String>) -> IngestError {
        IngestError { lsn: self.rec.start_lsn, rmgr: rmgr::name(self.rec.xl_rmid), reason: reason.into() }
    }
    fn data(&self, at: usize, len: usize, what: &str) -> Result<&[u8], IngestError> {
        let d = self.rec.main_data();
        d.get(at..at.checked_add(len).ok_or_else(|| self.err(format!("{what}: length overflow")))?)
            .ok_or_else(|| self.err(format!("main data of {} bytes too short for {what} at {at}+{len}", d.len())))
    }
    fn u32(&self, at: usize, what: &str) -> Result<u32, IngestError> {
        Ok(u32_at(self.data(at, 4, what)?, 0))
    }
    fn put(&mut self, key: Key, value: Value) {
        self.out.push(IngestChange::Put { key, value });
    }
    fn project(&mut self, key: Key, rec: ProjectRecord) {
        self.put(key, Value::WalRecord(WalRecordValue { will_init: false, rec: RecordPayload::Project(rec) }));
    }
}

fn zero_page() -> Bytes {
    Bytes::from_static(&[0u8; BLCKSZ])
}

/// The changes `rec` makes. Fails only if the record's main data does not
/// fit its type (which a CRC-checked record from PostgreSQL never does).
pub fn ingest_record(rec: &DecodedRecord) -> Result<IngestBatch, IngestError> {
    let mut cx = Ctx { rec, out: Vec::with_capacity(rec.blocks.len() * 2) };
    let info = rec.rmgr_info();
    // Block references first: every page a record touches gets a version.
    if !rec.blocks.is_empty() {
        ingest_blocks(&mut cx)?;
    }
    match rec.xl_rmid {
        rmgr::HEAP | rmgr::HEAP2 => heap_vm_clears(&mut cx)?,
        rmgr::XLOG => match info {
            XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE => {
                let cp = cx.data(0, SIZE_OF_CHECKPOINT, "CheckPoint")?;
                let cp = Bytes::copy_from_slice(cp);
                cx.put(Key::checkpoint(), Value::Image(cp));
            }
            XLOG_NEXTOID => {
                let oid = cx.u32(0, "next OID")?;
                cx.out.push(IngestChange::NextOid { oid });
            }
            _ => {}
        },
        rmgr::XACT => ingest_xact(&mut cx, info)?,
        rmgr::SMGR => ingest_smgr(&mut cx, info)?,
        rmgr::DBASE => match info {
            XLOG_DBASE_CREATE_FILE_COPY => {
                let (db, spc) = (cx.u32(0, "db_id")?, cx.u32(4, "tablespace_id")?);
                let (src_db, src_spc) = (cx.u32(8, "src_db_id")?, cx.u32(12, "src_tablespace_id")?);
                cx.out.push(IngestChange::DbCreate { spc_node: spc, db_node: db, src: Some((src_spc, src_db)) });
            }
            XLOG_DBASE_CREATE_WAL_LOG => {
                let (db, spc) = (cx.u32(0, "db_id")?, cx.u32(4, "tablespace_id")?);
                cx.out.push(IngestChange::DbCreate { spc_node: spc, db_node: db, src: None });
            }
            XLOG_DBASE_DROP => {
                let db = cx.u32(0, "db_id")?;
                let n = cx.u32(4, "ntablespaces")? as usize;
                let ids = cx.data(8, n.checked_mul(4).ok_or_else(|| cx.err("ntablespaces"))?, "tablespace_ids")?;
                let spc_nodes = ids.chunks_exact(4).map(|c| u32_at(c, 0)).collect();
                cx.out.push(IngestChange::DbDrop { db_node: db, spc_nodes });
            }
            _ => {}
        },
        rmgr::RELMAP if info == XLOG_RELMAP_UPDATE => {
            let (db, spc) = (cx.u32(0, "dbid")?, cx.u32(4, "tsid")?);
            let n = cx.u32(8, "nbytes")? as usize;
            let bytes = Bytes::copy_from_slice(cx.data(12, n, "relmap data")?);
            cx.put(Key::relmap_file(spc, db), Value::Image(bytes));
        }
        rmgr::CLOG if info == CLOG_ZEROPAGE => {
            let pageno = cx.u32(0, "pageno")?;
            zero_slru_page(&mut cx, SlruKind::Clog, pageno);
        }
        rmgr::MULTIXACT => match info {
            XLOG_MULTIXACT_ZERO_OFF_PAGE => {
                let pageno = cx.u32(0, "pageno")?;
                zero_slru_page(&mut cx, SlruKind::MultiXactOffsets, pageno);
            }
            XLOG_MULTIXACT_ZERO_MEM_PAGE => {
                let pageno = cx.u32(0, "pageno")?;
                zero_slru_page(&mut cx, SlruKind::MultiXactMembers, pageno);
            }
            XLOG_MULTIXACT_CREATE_ID => ingest_multixact_create(&mut cx)?,
            _ => {}
        },
        _ => {}
    }
    // A key keeps one version per LSN: a second version of a key from the
    // same record would replace the first, silently.
    let puts: Vec<Key> = cx.out.iter().filter_map(|c| if let IngestChange::Put { key, .. } = c { Some(*key) } else { None }).collect();
    if let Some((i, key)) = puts.iter().enumerate().find(|(i, key)| puts[..*i].contains(key)) {
        return Err(cx.err(format!("internal: the record gives key {key} two versions (change {i})")));
    }
    Ok(IngestBatch { lsn: rec.end_lsn, changes: cx.out })
}

fn ingest_blocks(cx: &mut Ctx<'_>) -> Result<(), IngestError> {
    let rec = cx.rec;
    let page_rmgr = is_page_rmgr(rec.xl_rmid);
    // Stored records get their own copy, made once per record: `rec.raw` may
    // share the decoder's input chunk, which a stored slice would keep
    // allocated whole for as long as the layer lives.
    let mut stored_raw: Option<Bytes> = None;
    for b in &rec.blocks {
        if b.blkno == u32::MAX {
            return Err(cx.err(format!("block #{} refers to InvalidBlockNumber", b.id)));
        }
        let key = Key::rel_block(b.rel, b.blkno);
        if b.apply_image() {
            let mut page = [0u8; BLCKSZ];
            rec.restore_image(b, &mut page).map_err(|e| cx.err(e.to_string()))?;
            // Redo stamps the record's end LSN on a restored page unless it is new.
            if !page_is_new(&page) {
                page[0..4].copy_from_slice(&((rec.end_lsn.0 >> 32) as u32).to_le_bytes());
                page[4..8].copy_from_slice(&(rec.end_lsn.0 as u32).to_le_bytes());
            }
            cx.put(key, Value::Image(Bytes::copy_from_slice(&page)));
        } else if page_rmgr {
            cx.put(
                key,
                Value::WalRecord(WalRecordValue {
                    will_init: b.will_init(),
                    rec: RecordPayload::Postgres {
                        target_block_id: b.id,
                        raw: stored_raw.get_or_insert_with(|| Bytes::copy_from_slice(&rec.raw)).clone(),
                    },
                }),
            );
        } else {
            return Err(cx.err(format!("block #{} without an image in a record of a non-page resource manager", b.id)));
        }
        cx.out.push(IngestChange::RelExtend { rel: b.rel, nblocks: b.blkno + 1 });
    }
    Ok(())
}

/// `PageIsNew`: pd_upper == 0.
pub fn page_is_new(page: &[u8]) -> bool {
    page.len() >= 16 && page[14] == 0 && page[15] == 0
}

fn heap_vm_clears(cx: &mut Ctx<'_>) -> Result<(), IngestError> {
    let rec = cx.rec;
    let info = rec.rmgr_info();
    // (flags cleared, new heap block, old heap block)
    let (bits, new, old): (u8, Option<u32>, Option<u32>) = if rec.xl_rmid == rmgr::HEAP {
        match info & XLOG_HEAP_OPMASK {
            XLOG_HEAP_INSERT => {
                let flags = cx.data(2, 1, "xl_heap_insert.flags")?[0];
                if flags & XLH_INSERT_ALL_VISIBLE_CLEARED == 0 {
                    return Ok(());
                }
                (VISIBILITYMAP_VALID_BITS, block_no(cx, 0), None)
            }
            XLOG_HEAP_DELETE => {
                let flags = cx.data(7, 1, "xl_heap_delete.flags")?[0];
                if flags & XLH_DELETE_ALL_VISIBLE_CLEARED == 0 {
                    return Ok(());
                }
                (VISIBILITYMAP_VALID_BITS, block_no(cx, 0), None)
            }
            XLOG_HEAP_UPDATE | XLOG_HEAP_HOT_UPDATE => {
                let flags = cx.data(7, 1, "xl_heap_update.flags")?[0];
                let new = (flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED != 0).then(|| block_no(cx, 0)).flatten();
                // The old page is block 1, or block 0 when both are the same page.
                let old = (flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED != 0).then(|| block_no(cx, 1).or_else(|| block_no(cx, 0))).flatten();
                (VISIBILITYMAP_VALID_BITS, new, old)
            }
            XLOG_HEAP_LOCK => {
                let flags = cx.data(7, 1, "xl_heap_lock.flags")?[0];
                if flags & XLH_LOCK_ALL_FROZEN_CLEARED == 0 {
                    return Ok(());
                }
                (VISIBILITYMAP_ALL_FROZEN, None, block_no(cx, 0))
            }
            _ => return Ok(()),
        }
    } else {
        match info & XLOG_HEAP_OPMASK {
            XLOG_HEAP2_MULTI_INSERT => {
                let flags = cx.data(0, 1, "xl_heap_multi_insert.flags")?[0];
                if flags & XLH_INSERT_ALL_VISIBLE_CLEARED == 0 {
                    return Ok(());
                }
                (VISIBILITYMAP_VALID_BITS, block_no(cx, 0), None)
            }
            XLOG_HEAP2_LOCK_UPDATED => {
                let flags = cx.data(7, 1, "xl_heap_lock_updated.flags")?[0];
                if flags & XLH_LOCK_ALL_FROZEN_CLEARED == 0 {
                    return Ok(());
                }
                (VISIBILITYMAP_ALL_FROZEN, None, block_no(cx, 0))
            }
            _ => return Ok(()),
        }
    };
    let Some(heap) = rec.block(0).or_else(|| rec.blocks.first()) else {
        return Err(cx.err("heap record clearing visibility bits has no block reference"));
    };
    let vm = heap.rel.with_fork(VISIBILITYMAP_FORKNUM);
    let vm_page = |blk: u32| blk / HEAPBLOCKS_PER_VM_PAGE;
    match (new, old) {
        (Some(n), Some(o)) if vm_page(n) == vm_page(o) => {
            cx.project(
                Key::rel_block(vm, vm_page(n)),
                ProjectRecord::VmClearBits { flags: bits, new_heap_blkno: Some(n), old_heap_blkno: Some(o) },
            );
        }
        _ => {
            if let Some(n) = new {
                cx.project(
                    Key::rel_block(vm, vm_page(n)),
                    ProjectRecord::VmClearBits { flags: bits, new_heap_blkno: Some(n), old_heap_blkno: None },
                );
            }
            if let Some(o) = old {
                cx.project(
                    Key::rel_block(vm, vm_page(o)),
                    ProjectRecord::VmClearBits { flags: bits, new_heap_blkno: None, old_heap_blkno: Some(o) },
                );
            }
        }
    }
    Ok(())
}

fn block_no(cx: &Ctx<'_>, id: u8) -> Option<u32> {
    cx.rec.block(id).map(|b| b.blkno)
}

fn clog_status(cx: &mut Ctx<'_>, status: u8, xids: impl IntoIterator<Item = u32>) {
    let mut by_page: std::collections::BTreeMap<u32, Vec<u32>> = std::collections::BTreeMap::new();
    for xid in xids {
        by_page.entry(xid / CLOG_XACTS_PER_PAGE).or_default().push(xid);
    }
    for (pageno, xids) in by_page {
        let key = Key::slru_block(SlruKind::Clog, pageno / SLRU_PAGES_PER_SEGMENT, pageno % SLRU_PAGES_PER_SEGMENT);
        cx.project(key, ProjectRecord::ClogSetStatus { status, xids });
    }
}

fn ingest_xact(cx: &mut Ctx<'_>, info: u8) -> Result<(), IngestError> {
    let op = info & XLOG_XACT_OPMASK;
    if op == XLOG_XACT_PREPARE {
        // The record's data is the two-phase state file, written at checkpoint.
        let xid = cx.rec.xl_xid;
        let state = Bytes::copy_from_slice(cx.rec.main_data());
        cx.put(Key::twophase_file(xid), Value::Image(state));
        return Ok(());
    }
    let commit = match op {
        XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED => true,
        XLOG_XACT_ABORT | XLOG_XACT_ABORT_PREPARED => false,
        _ => return Ok(()),
    };
    // ParseCommitRecord / ParseAbortRecord: xact_time, then the xinfo parts.
    let xact_time = i64::from_le_bytes(cx.data(0, 8, "xact_time")?.try_into().expect("8 bytes"));
    let mut at = 8usize;
    let xinfo = if info & XLOG_XACT_HAS_INFO != 0 {
        let x = cx.u32(at, "xinfo")?;
        at += 4;
        x
    } else {
        0
    };
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        at += 8;
    }
    let mut subxacts = Vec::new();
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let n = cx.u32(at, "nsubxacts")? as usize;
        let ids = cx.data(at + 4, n.saturating_mul(4), "subxacts")?;
        subxacts = ids.chunks_exact(4).map(|c| u32_at(c, 0)).collect();
        at += 4 + n * 4;
    }
    let mut drops = Vec::new();
    if xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
        let n = cx.u32(at, "nrels")? as usize;
        let nodes = cx.data(at + 4, n.saturating_mul(12), "relfilenodes")?;
        drops = nodes.chunks_exact(12).map(|c| (u32_at(c, 0), u32_at(c, 4), u32_at(c, 8))).collect();
        at += 4 + n * 12;
    }
    if xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        let n = cx.u32(at, "nstats")? as usize;
        at += 4 + n.saturating_mul(12);
    }
    if commit && xinfo & XACT_XINFO_HAS_INVALS != 0 {
        let n = cx.u32(at, "nmsgs")? as usize;
        at += 4 + n.saturating_mul(16);
    }
    let xid = if xinfo & XACT_XINFO_HAS_TWOPHASE != 0 { cx.u32(at, "twophase xid")? } else { cx.rec.xl_xid };
    let status = if commit { TRANSACTION_STATUS_COMMITTED } else { TRANSACTION_STATUS_ABORTED };
    let mut xids = Vec::with_capacity(1 + subxacts.len());
    if xid != 0 {
        xids.push(xid);
    }
    xids.extend(subxacts);
    clog_status(cx, status, xids);
    for (spc, db, rel) in drops {
        cx.out.push(IngestChange::RelDrop { spc_node: spc, db_node: db, rel_node: rel });
    }
    if op == XLOG_XACT_COMMIT_PREPARED || op == XLOG_XACT_ABORT_PREPARED {
        cx.out.push(IngestChange::TwoPhaseDrop { xid });
    }
    if commit {
        cx.out.push(IngestChange::Commit { time: xact_time });
    }
    Ok(())
}

fn ingest_smgr(cx: &mut Ctx<'_>, info: u8) -> Result<(), IngestError> {
    match info {
        XLOG_SMGR_CREATE => {
            let (spc, db, rel) = (cx.u32(0, "rnode")?, cx.u32(4, "rnode")?, cx.u32(8, "rnode")?);
            let fork = cx.u32(12, "forkNum")?;
            if fork > u32::from(crate::key::INIT_FORKNUM) {
                return Err(cx.err(format!("invalid fork {fork}")));
            }
            cx.out.push(IngestChange::RelCreate { rel: RelTag::new(spc, db, rel, fork as u8) });
        }
        XLOG_SMGR_TRUNCATE => {
            let blkno = cx.u32(0, "blkno")?;
            let (spc, db, rel) = (cx.u32(4, "rnode")?, cx.u32(8, "rnode")?, cx.u32(12, "rnode")?);
            let flags = cx.u32(16, "flags")?;
            let tag = |fork| RelTag::new(spc, db, rel, fork);
            if flags & SMGR_TRUNCATE_HEAP != 0 {
                cx.out.push(IngestChange::RelTruncate { rel: tag(MAIN_FORKNUM), nblocks: blkno });
            }
            if flags & SMGR_TRUNCATE_FSM != 0 {
                let fsm = tag(FSM_FORKNUM);
                let mut first_removed = fsm_logical_to_physical(blkno / SLOTS_PER_FSM_PAGE);
                if blkno % SLOTS_PER_FSM_PAGE != 0 {
                    // The last kept FSM page loses its tail: zero it (the FSM is a hint).
                    cx.put(Key::rel_block(fsm, first_removed), Value::Image(zero_page()));
                    first_removed += 1;
                }
                cx.out.push(IngestChange::RelTruncate { rel: fsm, nblocks: first_removed });
            }
            if flags & SMGR_TRUNCATE_VM != 0 {
                let vm = tag(VISIBILITYMAP_FORKNUM);
                let mut first_removed = blkno / HEAPBLOCKS_PER_VM_PAGE;
                if blkno % HEAPBLOCKS_PER_VM_PAGE != 0 {
                    // The last kept map page loses the bits past the new end only.
                    cx.project(Key::rel_block(vm, first_removed), ProjectRecord::VmTruncate { heap_blocks: blkno });
                    first_removed += 1;
                }
                cx.out.push(IngestChange::RelTruncate { rel: vm, nblocks: first_removed });
            }
        }
        _ => {}
    }
    Ok(())
}

fn zero_slru_page(cx: &mut Ctx<'_>, kind: SlruKind, pageno: u32) {
    let (segno, blkno) = (pageno / SLRU_PAGES_PER_SEGMENT, pageno % SLRU_PAGES_PER_SEGMENT);
    cx.put(Key::slru_block(kind, segno, blkno), Value::Image(zero_page()));
    cx.out.push(IngestChange::SlruExtend { kind, segno, nblocks: blkno + 1 });
}

fn ingest_multixact_create(cx: &mut Ctx<'_>) -> Result<(), IngestError> {
    let mid = cx.u32(0, "mid")?;
    let moff = cx.u32(4, "moff")?;
    let n = cx.u32(8, "nmembers")? as usize;
    let raw = cx.data(12, n.saturating_mul(8), "members")?.to_vec();
    // RecordNewMultiXact writes the multixact's own starting offset and, in
    // PostgreSQL 15.15 and later (also in redo), the next one's, so that a
    // reader never sees a zero there; offset 0 and multixact 0 are skipped
    // as the primary skips them. Entries on one page go in one record: a
    // key has one version per LSN.
    let next = if mid.wrapping_add(1) < 1 { 1 } else { mid.wrapping_add(1) };
    let next_offset = match moff.wrapping_add(n as u32) {
        0 => 1,
        o => o,
    };
    let offsets_key =
        |pageno: u32| Key::slru_block(SlruKind::MultiXactOffsets, pageno / SLRU_PAGES_PER_SEGMENT, pageno % SLRU_PAGES_PER_SEGMENT);
    let (own_page, next_page) = (mid / MULTIXACT_OFFSETS_PER_PAGE, next / MULTIXACT_OFFSETS_PER_PAGE);
    if own_page == next_page {
        cx.project(offsets_key(own_page), ProjectRecord::MultixactOffsets { entries: vec![(mid, moff), (next, next_offset)] });
    } else {
        cx.project(offsets_key(own_page), ProjectRecord::MultixactOffsets { entries: vec![(mid, moff)] });
        cx.project(offsets_key(next_page), ProjectRecord::MultixactOffsets { entries: vec![(next, next_offset)] });
    }
    // Members, split at page boundaries of pg_multixact/members.
    let mut i = 0usize;
    while i < n {
        let offset = moff.wrapping_add(i as u32);
        let page = offset / MULTIXACT_MEMBERS_PER_PAGE;
        let mut members = Vec::new();
        while i < n && moff.wrapping_add(i as u32) / MULTIXACT_MEMBERS_PER_PAGE == page {
            let c = &raw[i * 8..i * 8 + 8];
            members.push(MultiXactMember { xid: u32_at(c, 0), status: c[4] });
            i += 1;
        }
        cx.project(
            Key::slru_block(SlruKind::MultiXactMembers, page / SLRU_PAGES_PER_SEGMENT, page % SLRU_PAGES_PER_SEGMENT),
            ProjectRecord::MultixactMembers { first_offset: offset, members },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsm_and_vm_geometry_match_postgres() {
        assert_eq!(SLOTS_PER_FSM_PAGE, 4069);
        assert_eq!(HEAPBLOCKS_PER_VM_PAGE, 32672);
        // First leaf page is physical block 2 (root, one level-1 page, leaf).
        assert_eq!(fsm_logical_to_physical(0), 2);
        assert_eq!(fsm_logical_to_physical(1), 3);
        // After SLOTS_PER_FSM_PAGE leaves comes the next level-1 page.
        assert_eq!(fsm_logical_to_physical(SLOTS_PER_FSM_PAGE), SLOTS_PER_FSM_PAGE + 3);
        assert_eq!(MULTIXACT_MEMBERS_PER_PAGE, 1636);
    }

    fn record(rb: super::super::encode::RecordBuilder) -> DecodedRecord {
        let mut raw = rb.build();
        raw[8..16].copy_from_slice(&1u64.to_le_bytes());
        let crc = super::super::record::record_crc(&raw);
        raw[20..24].copy_from_slice(&crc.to_le_bytes());
        super::super::decode_record(Bytes::from(raw), Lsn(0x1000_0000), Lsn(0x1000_0100)).unwrap()
    }

    fn builder(rmid: u8, info: u8, main: Vec<u8>) -> super::super::encode::RecordBuilder {
        super::super::encode::RecordBuilder { rmid, info, xid: 77, main_data: main, ..Default::default() }
    }

    fn le(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn commit_sets_clog_for_xid_and_subxacts_per_page_and_drops_rels() {
        // xact_time, xinfo (subxacts + relfilenodes), 2 subxacts (one on the next CLOG page), 1 rel.
        let mut main = 820_000_000_123_456i64.to_le_bytes().to_vec();
        main.extend(le(&[XACT_XINFO_HAS_SUBXACTS | XACT_XINFO_HAS_RELFILENODES, 2, 78, CLOG_XACTS_PER_PAGE + 5, 1, 1663, 5, 4242]));
        let rec = record(builder(rmgr::XACT, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, main));
        let batch = ingest_record(&rec).unwrap();
        assert_eq!(batch.lsn, Lsn(0x1000_0100));
        let clog = |pageno: u32, xids: Vec<u32>| IngestChange::Put {
            key: Key::slru_block(SlruKind::Clog, 0, pageno),
            value: Value::WalRecord(WalRecordValue {
                will_init: false,
                rec: RecordPayload::Project(ProjectRecord::ClogSetStatus { status: TRANSACTION_STATUS_COMMITTED, xids }),
            }),
        };
        assert_eq!(
            batch.changes,
            vec![
                clog(0, vec![77, 78]),
                clog(1, vec![CLOG_XACTS_PER_PAGE + 5]),
                IngestChange::RelDrop { spc_node: 1663, db_node: 5, rel_node: 4242 },
                IngestChange::Commit { time: 820_000_000_123_456 },
            ]
        );
        // Truncated main data is an error, not a panic.
        let mut short = vec![0u8; 8];
        short.extend(le(&[XACT_XINFO_HAS_SUBXACTS, 1000]));
        assert!(ingest_record(&record(builder(rmgr::XACT, XLOG_XACT_ABORT | XLOG_XACT_HAS_INFO, short))).is_err());
    }

    #[test]
    fn smgr_truncate_shrinks_all_three_forks() {
        let blkno = SLOTS_PER_FSM_PAGE + 10; // partial FSM leaf and VM page
        let rec = record(builder(rmgr::SMGR, XLOG_SMGR_TRUNCATE, le(&[blkno, 1663, 5, 99, 7])));
        let c = ingest_record(&rec).unwrap().changes;
        let rel = |f| RelTag::new(1663, 5, 99, f);
        assert!(c.contains(&IngestChange::RelTruncate { rel: rel(MAIN_FORKNUM), nblocks: blkno }));
        assert!(c.contains(&IngestChange::RelTruncate { rel: rel(FSM_FORKNUM), nblocks: fsm_logical_to_physical(1) + 1 }));
        assert!(c.contains(&IngestChange::RelTruncate { rel: rel(VISIBILITYMAP_FORKNUM), nblocks: 1 }));
        let vm_truncate = ProjectRecord::VmTruncate { heap_blocks: blkno };
        let vm_truncate = Value::WalRecord(WalRecordValue { will_init: false, rec: RecordPayload::Project(vm_truncate) });
        assert!(c.contains(&IngestChange::Put { key: Key::rel_block(rel(VISIBILITYMAP_FORKNUM), 0), value: vm_truncate }));
    }

    #[test]
    fn heap_update_clears_vm_bits_of_both_pages_and_logs_both_blocks() {
        use super::super::encode::BlockSpec;
        let mut rb = builder(
            rmgr::HEAP,
            XLOG_HEAP_UPDATE,
            vec![0, 0, 0, 0, 1, 0, 0, XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED | XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED, 0, 0, 0, 0, 2, 0],
        );
        rb.blocks = vec![
            BlockSpec { id: 0, fork_flags: 0, rel: (1663, 5, 10), blkno: HEAPBLOCKS_PER_VM_PAGE + 1, data: vec![1, 2, 3], image: None },
            BlockSpec { id: 1, fork_flags: 0, rel: (1663, 5, 10), blkno: 3, data: vec![], image: None },
        ];
        let rec = record(rb);
        let c = ingest_record(&rec).unwrap().changes;
        let heap = RelTag::new(1663, 5, 10, MAIN_FORKNUM);
        let vm = heap.with_fork(VISIBILITYMAP_FORKNUM);
        let vm_clear = |page: u32, new, old| IngestChange::Put {
            key: Key::rel_block(vm, page),
            value: Value::WalRecord(WalRecordValue {
                will_init: false,
                rec: RecordPayload::Project(ProjectRecord::VmClearBits {
                    flags: VISIBILITYMAP_VALID_BITS,
                    new_heap_blkno: new,
                    old_heap_blkno: old,
                }),
            }),
        };
        assert!(c.contains(&vm_clear(1, Some(HEAPBLOCKS_PER_VM_PAGE + 1), None)));
        assert!(c.contains(&vm_clear(0, None, Some(3))));
        assert!(c.contains(&IngestChange::RelExtend { rel: heap, nblocks: HEAPBLOCKS_PER_VM_PAGE + 2 }));
        let targets: Vec<u8> = c
            .iter()
            .filter_map(|x| match x {
                IngestChange::Put {
                    value: Value::WalRecord(WalRecordValue { rec: RecordPayload::Postgres { target_block_id, .. }, .. }),
                    ..
                } => Some(*target_block_id),
                _ => None,
            })
            .collect();
        assert_eq!(targets, vec![0, 1]);
    }

    #[test]
    fn multixact_members_split_at_page_boundary() {
        let moff = MULTIXACT_MEMBERS_PER_PAGE - 1;
        let rec = record(builder(rmgr::MULTIXACT, XLOG_MULTIXACT_CREATE_ID, le(&[5, moff, 2, 100, 1, 101, 2])));
        let c = ingest_record(&rec).unwrap().changes;
        // The offsets of 5 and 6 (one record: same page), members on two pages.
        assert_eq!(c.len(), 3);
        let offsets = ProjectRecord::MultixactOffsets { entries: vec![(5, moff), (6, moff + 2)] };
        let offsets = Value::WalRecord(WalRecordValue { will_init: false, rec: RecordPayload::Project(offsets) });
        assert_eq!(c[0], IngestChange::Put { key: Key::slru_block(SlruKind::MultiXactOffsets, 0, 0), value: offsets });
        match &c[2] {
            IngestChange::Put {
                key,
                value:
                    Value::WalRecord(WalRecordValue {
                        rec: RecordPayload::Project(ProjectRecord::MultixactMembers { first_offset, members }),
                        ..
                    }),
            } => {
                assert_eq!(*key, Key::slru_block(SlruKind::MultiXactMembers, 0, 1));
                assert_eq!(*first_offset, MULTIXACT_MEMBERS_PER_PAGE);
                assert_eq!(members, &vec![MultiXactMember { xid: 101, status: 2 }]);
            }
            other => panic!("{other:?}"),
        }
        // The last multixact of an offsets page: the next one's offset goes on the next page.
        let last = MULTIXACT_OFFSETS_PER_PAGE - 1;
        let c = ingest_record(&record(builder(rmgr::MULTIXACT, XLOG_MULTIXACT_CREATE_ID, le(&[last, 9, 1, 100, 1])))).unwrap().changes;
        let keys: Vec<Key> = c.iter().filter_map(|x| if let IngestChange::Put { key, .. } = x { Some(*key) } else { None }).collect();
        assert_eq!(keys[..2], [Key::slru_block(SlruKind::MultiXactOffsets, 0, 0), Key::slru_block(SlruKind::MultiXactOffsets, 0, 1)]);
    }
}

//! Applying decoded WAL records to a timeline.
//!
//! [`crate::wal::ingest::ingest_record`] says what one record changes, as
//! [`IngestChange`]s; [`WalIngest`] turns those into versions of keys on a
//! timeline, keeping the state that needs the timeline's history in memory:
//!
//! - **relation sizes** (`rel_size` keys): a page put on a block at or past
//!   the end extends the fork (and creates it), as PostgreSQL's redo does
//!   with `XLogReadBufferExtended`; `RelTruncate` shrinks (a missing main
//!   fork is created first, as `smgr_redo` does; a missing FSM or VM fork
//!   stays missing, and the zeroed tail page of an FSM / VM truncation is
//!   stored only if that page exists). Blocks at or past a fork's size are
//!   left behind: readers must not serve them;
//! - **relation directories** (`rel_dir` keys) and the **database
//!   directory**: `RelDrop` removes every fork of the relation and writes
//!   their sizes as 0 (the tombstone: size keys never disappear, and
//!   [`crate::repo::dirs`] reads sizes only of forks in the directory);
//!   `DbCreate` with a source (FILE_COPY strategy) copies the source's
//!   relation directory, sizes, relmapper file and every block as of the
//!   record, replacing what the target had (as `dbase_redo` removes and
//!   re-copies the directory); without a source (WAL_LOG strategy) it
//!   creates an empty directory; `DbDrop` removes the database and empties
//!   its relation directory (sizes tombstoned);
//! - **SLRU segment sizes and directories**, the **two-phase directory**;
//! - the **checkpoint** (`Key::checkpoint()`, the raw 88-byte `CheckPoint`
//!   struct, [`CheckPoint`]) as PostgreSQL's startup process keeps its
//!   counters during redo: `nextXid` advances past every record's `xl_xid`,
//!   the xids of commit / abort records (with subtransactions) and the
//!   members of new multixacts (`AdvanceNextFullTransactionIdPastXid`, epoch
//!   wrap included); `nextOid` is set by `XLOG_NEXTOID` and shutdown
//!   checkpoints; `nextMulti` / `nextMultiOffset` advance past every created
//!   multixact (`MultiXactAdvanceNextMXact`); a shutdown checkpoint record
//!   sets everything (but `oldestMulti` only advances); an online one takes
//!   the redo pointer, time line, time and commit-timestamp / active xids,
//!   and advances `nextXid`, `nextMulti`, `nextMultiOffset`, `oldestXid`
//!   and `oldestMulti` (its `nextOid` is ignored, as `xlog_redo` does). The
//!   key is written when it changed, at most once per record;
//! - the **latest commit** (`Key::latest_commit()`, a
//!   [`crate::commit_time::CommitMark`]), written at every commit record.
//!
//! Every version of a record is put at its end LSN, then
//! [`TimelineWriter::finish_lsn`] publishes it.
//!
//! Caches: sizes and relation directories are read from the timeline once
//! (lazily) and then kept, so a heap insert costs no repository read. They
//! are only right while this `WalIngest` is the timeline's only writer: make
//! a new one after anything else wrote to the timeline. After a failed
//! [`WalIngest::ingest`] the caches and the writer's pending versions may be
//! half-applied: the `WalIngest` refuses further records; drop the writer
//! without finishing, and start again from the timeline's `last_record_lsn`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::commit_time::CommitMark;
use crate::key::{Key, KeyClass, RelTag, SlruKind, INIT_FORKNUM, MAIN_FORKNUM};
use crate::lsn::Lsn;
use crate::pg_control::{
    multixact_id_precedes, transaction_id_precedes, CheckPoint, SIZE_OF_CHECKPOINT, XLOG_CHECKPOINT_ONLINE, XLOG_CHECKPOINT_SHUTDOWN,
};
use crate::repo::dirs::{
    decode_db_dir, decode_nblocks, decode_rel_dir, decode_u32_dir, encode_db_dir, encode_nblocks, encode_rel_dir, encode_u32_dir,
};
use crate::repo::{RepoError, Timeline, TimelineId, TimelineWriter};
use crate::value::{ProjectRecord, RecordPayload, Value, WalRecordValue};
use crate::wal::ingest::{ingest_record, IngestChange, IngestError};
use crate::wal::{rmgr, DecodedRecord};

/// Why a record could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum IngestApplyError {
    /// The record's contents do not fit its type.
    #[error(transparent)]
    Record(#[from] IngestError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The record does not end above what the timeline has ingested.
    #[error("record at {start} ends at {end}, not above last_record_lsn {last} of timeline {timeline}")]
    Behind { timeline: TimelineId, start: Lsn, end: Lsn, last: Lsn },
    /// Wrong timeline, an earlier failure, or a checkpoint value that is not a `CheckPoint`.
    #[error("{0}")]
    Invalid(String),
}

/// What one record changed beyond plain puts, written before `finish_lsn`.
#[derive(Default)]
struct Pending {
    db_dir: bool,
    rel_dirs: BTreeSet<(u32, u32)>,
    rel_sizes: BTreeMap<RelTag, u32>,
    slru_dirs: BTreeSet<SlruKind>,
    slru_sizes: BTreeMap<(SlruKind, u32), u32>,
    twophase: bool,
}

/// Multixact creation seen in one record's changes.
#[derive(Default)]
struct MultiSeen {
    offset: Option<(u32, u32)>,
    members: u32,
}

/// Applies decoded WAL records to one timeline; see the module docs.
pub struct WalIngest {
    timeline: TimelineId,
    checkpoint: CheckPoint,
    /// The checkpoint bytes last stored (or loaded).
    checkpoint_stored: [u8; SIZE_OF_CHECKPOINT],
    db_dir: BTreeSet<(u32, u32)>,
    /// Relation directories read so far, by (spc, db).
    rel_dirs: HashMap<(u32, u32), BTreeSet<(u32, u8)>>,
    /// Sizes of existing forks read or set so far.
    rel_sizes: HashMap<RelTag, u32>,
    slru_dirs: BTreeMap<SlruKind, BTreeSet<u32>>,
    slru_sizes: HashMap<(SlruKind, u32), u32>,
    twophase: BTreeSet<u32>,
    latest_commit: Option<CommitMark>,
    pending: Pending,
    failed: Option<String>,
}

impl std::fmt::Debug for WalIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalIngest")
            .field("timeline", &self.timeline)
            .field("checkpoint", &self.checkpoint)
            .field("databases", &self.db_dir.len())
            .field("cached_rel_dirs", &self.rel_dirs.len())
            .field("cached_rel_sizes", &self.rel_sizes.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl WalIngest {
    /// Loads the state at the timeline's `last_record_lsn`: the checkpoint
    /// (which must exist: bootstrap the timeline with
    /// [`crate::import::import_basebackup_tar`] first, or branch it), the
    /// database, SLRU and two-phase directories. Relation directories and
    /// sizes are read when first needed.
    pub fn new(timeline: &Timeline) -> Result<WalIngest, RepoError> {
        let lsn = timeline.last_record_lsn();
        let id = timeline.id();
        let bytes = timeline
            .get(Key::checkpoint(), lsn)?
            .ok_or_else(|| RepoError::Invalid(format!("timeline {id} has no checkpoint at {lsn}: import a base backup first")))?;
        let checkpoint =
            CheckPoint::decode(&bytes).map_err(|e| RepoError::Invalid(format!("checkpoint of timeline {id} at {lsn}: {e}")))?;
        let db_dir = match timeline.get(Key::db_dir(), lsn)? {
            Some(v) => decode_db_dir(&v)?,
            None => BTreeSet::new(),
        };
        let mut slru_dirs = BTreeMap::new();
        for kind in SlruKind::ALL {
            let segments = match timeline.get(Key::slru_dir(kind), lsn)? {
                Some(v) => decode_u32_dir(&v)?,
                None => BTreeSet::new(),
            };
            slru_dirs.insert(kind, segments);
        }
        let twophase = match timeline.get(Key::twophase_dir(), lsn)? {
            Some(v) => decode_u32_dir(&v)?,
            None => BTreeSet::new(),
        };
        let latest_commit = match timeline.get(Key::latest_commit(), lsn)? {
            Some(v) => Some(CommitMark::decode(&v).map_err(|e| RepoError::Invalid(format!("timeline {id} at {lsn}: {e}")))?),
            None => None,
        };
        Ok(WalIngest {
            timeline: id,
            checkpoint,
            checkpoint_stored: bytes.as_ref().try_into().expect("length checked by decode"),
            db_dir,
            rel_dirs: HashMap::new(),
            rel_sizes: HashMap::new(),
            slru_dirs,
            slru_sizes: HashMap::new(),
            twophase,
            latest_commit,
            pending: Pending::default(),
            failed: None,
        })
    }

    /// The checkpoint as of the last record applied.
    pub fn checkpoint(&self) -> &CheckPoint {
        &self.checkpoint
    }

    /// Applies one record: puts its versions at `rec.end_lsn` (the record's
    /// end), maintains sizes, directories and the checkpoint, then calls
    /// `writer.finish_lsn(rec.end_lsn)`. Returns whether a layer was frozen
    /// (`finish_lsn`'s result): then the caller should have
    /// [`Timeline::flush_frozen_layers`] run.
    pub fn ingest(&mut self, writer: &mut TimelineWriter<'_>, rec: &DecodedRecord) -> Result<bool, IngestApplyError> {
        if let Some(why) = &self.failed {
            return Err(IngestApplyError::Invalid(format!(
                "an earlier record failed to apply ({why}); make a new WalIngest from the timeline"
            )));
        }
        let timeline = writer.timeline();
        if timeline.id() != self.timeline {
            return Err(IngestApplyError::Invalid(format!(
                "WalIngest of timeline {} given a writer of timeline {}",
                self.timeline,
                timeline.id()
            )));
        }
        let last = timeline.last_record_lsn();
        if rec.end_lsn <= last {
            return Err(IngestApplyError::Behind { timeline: self.timeline, start: rec.start_lsn, end: rec.end_lsn, last });
        }
        let batch = ingest_record(rec)?;
        match self.apply(writer, rec, batch.changes, batch.lsn) {
            Ok(frozen) => Ok(frozen),
            Err(e) => {
                self.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn apply(
        &mut self,
        writer: &mut TimelineWriter<'_>,
        rec: &DecodedRecord,
        changes: Vec<IngestChange>,
        lsn: Lsn,
    ) -> Result<bool, IngestApplyError> {
        // ApplyWalRecord: nextXid past the record's xid before its redo.
        self.checkpoint.advance_next_xid_past(rec.xl_xid);
        let mut multi = MultiSeen::default();
        for change in changes {
            match change {
                IngestChange::Put { key, value } => self.put(writer, rec, key, value, lsn, &mut multi)?,
                IngestChange::RelExtend { rel, nblocks } => self.extend_rel(writer, rel, nblocks)?,
                IngestChange::RelCreate { rel } => self.extend_rel(writer, rel, 0)?,
                IngestChange::RelTruncate { rel, nblocks } => self.truncate_rel(writer, rel, nblocks)?,
                IngestChange::RelDrop { spc_node, db_node, rel_node } => self.drop_rel(writer, spc_node, db_node, rel_node)?,
                IngestChange::DbCreate { spc_node, db_node, src } => self.create_db(writer, spc_node, db_node, src, lsn)?,
                IngestChange::DbDrop { db_node, spc_nodes } => {
                    for spc_node in spc_nodes {
                        self.drop_db(writer, spc_node, db_node)?;
                    }
                }
                IngestChange::SlruExtend { kind, segno, nblocks } => self.extend_slru(writer, kind, segno, nblocks)?,
                IngestChange::TwoPhaseDrop { xid } => {
                    if self.twophase.remove(&xid) {
                        self.pending.twophase = true;
                    }
                }
                IngestChange::NextOid { oid } => self.checkpoint.next_oid = oid,
                IngestChange::Commit { time } => {
                    let mark = CommitMark::next(self.latest_commit, lsn, time);
                    writer.put(Key::latest_commit(), lsn, Value::Image(bytes::Bytes::copy_from_slice(&mark.encode())))?;
                    self.latest_commit = Some(mark);
                }
            }
        }
        if let Some((mid, moff)) = multi.offset {
            // multixact_redo: MultiXactAdvanceNextMXact(mid + 1, moff + nmembers).
            self.checkpoint.advance_next_multi(mid.wrapping_add(1), moff.wrapping_add(multi.members));
        }
        self.write_pending(writer, lsn)?;
        Ok(writer.finish_lsn(lsn)?)
    }

    fn put(
        &mut self,
        writer: &mut TimelineWriter<'_>,
        rec: &DecodedRecord,
        key: Key,
        value: Value,
        lsn: Lsn,
        multi: &mut MultiSeen,
    ) -> Result<(), IngestApplyError> {
        match key.classify() {
            Some(KeyClass::RelBlock { rel, blkno }) => {
                if rec.xl_rmid == rmgr::SMGR {
                    // The zeroed last page of an FSM / VM truncation: PostgreSQL
                    // touches it only if the fork reaches that far.
                    if self.rel_size(writer, rel)?.is_none_or(|n| blkno >= n) {
                        return Ok(());
                    }
                } else {
                    self.extend_rel(writer, rel, blkno + 1)?;
                }
            }
            Some(KeyClass::SlruBlock { kind, segno, blkno }) => {
                if let Value::WalRecord(WalRecordValue { rec: RecordPayload::Project(project), .. }) = &value {
                    match project {
                        ProjectRecord::ClogSetStatus { xids, .. } if rec.xl_rmid == rmgr::XACT => {
                            // xact_redo_commit / _abort: nextXid past the xid and its subtransactions.
                            for xid in xids {
                                self.checkpoint.advance_next_xid_past(*xid);
                            }
                        }
                        ProjectRecord::MultixactOffsets { entries } if rec.xl_rmid == rmgr::MULTIXACT => {
                            // The record's own multixact comes first; the next
                            // one's starting offset (stored since 15.15) follows
                            // and does not move the counters.
                            if let Some(own) = entries.first() {
                                multi.offset.get_or_insert(*own);
                            }
                        }
                        ProjectRecord::MultixactMembers { members, .. } if rec.xl_rmid == rmgr::MULTIXACT => {
                            multi.members = multi.members.wrapping_add(members.len() as u32);
                            for member in members {
                                self.checkpoint.advance_next_xid_past(member.xid);
                            }
                        }
                        _ => {}
                    }
                }
                self.extend_slru(writer, kind, segno, blkno + 1)?;
            }
            Some(KeyClass::TwoPhaseFile { xid }) if self.twophase.insert(xid) => self.pending.twophase = true,
            Some(KeyClass::Checkpoint) => {
                let Value::Image(bytes) = value else {
                    return Err(IngestApplyError::Invalid(format!("record at {}: checkpoint value is not an image", rec.start_lsn)));
                };
                let record =
                    CheckPoint::decode(&bytes).map_err(|e| IngestApplyError::Invalid(format!("record at {}: {e}", rec.start_lsn)))?;
                self.merge_checkpoint_record(rec.rmgr_info(), record);
                return Ok(());
            }
            _ => {}
        }
        writer.put(key, lsn, value)?;
        Ok(())
    }

    /// What `xlog_redo` does with the counters of a checkpoint record.
    fn merge_checkpoint_record(&mut self, info: u8, record: CheckPoint) {
        let cur = &mut self.checkpoint;
        // MultiXactAdvanceOldest, for both kinds.
        let (oldest_multi, oldest_multi_db) = if multixact_id_precedes(cur.oldest_multi, record.oldest_multi) {
            (record.oldest_multi, record.oldest_multi_db)
        } else {
            (cur.oldest_multi, cur.oldest_multi_db)
        };
        if info == XLOG_CHECKPOINT_SHUTDOWN {
            // Believe the counters exactly.
            *cur = record;
        } else {
            debug_assert_eq!(info, XLOG_CHECKPOINT_ONLINE);
            // The XID counter is a minimum; nextOid is ignored (NEXTOID records track it).
            cur.next_xid = cur.next_xid.max(record.next_xid);
            cur.advance_next_multi(record.next_multi, record.next_multi_offset);
            if transaction_id_precedes(cur.oldest_xid, record.oldest_xid) {
                cur.oldest_xid = record.oldest_xid;
                cur.oldest_xid_db = record.oldest_xid_db;
            }
            cur.redo = record.redo;
            cur.this_timeline_id = record.this_timeline_id;
            cur.prev_timeline_id = record.prev_timeline_id;
            cur.full_page_writes = record.full_page_writes;
            cur.time = record.time;
            cur.oldest_commit_ts_xid = record.oldest_commit_ts_xid;
            cur.newest_commit_ts_xid = record.newest_commit_ts_xid;
            cur.oldest_active_xid = record.oldest_active_xid;
        }
        cur.oldest_multi = oldest_multi;
        cur.oldest_multi_db = oldest_multi_db;
    }

    /// The relation directory of (spc, db), read once.
    fn rel_dir(&mut self, writer: &TimelineWriter<'_>, spc: u32, db: u32) -> Result<&mut BTreeSet<(u32, u8)>, RepoError> {
        Ok(match self.rel_dirs.entry((spc, db)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(match writer.get_latest(Key::rel_dir(spc, db))? {
                Some(v) => decode_rel_dir(&v)?,
                None => BTreeSet::new(),
            }),
        })
    }

    /// The size of a fork, `None` if it does not exist.
    fn rel_size(&mut self, writer: &TimelineWriter<'_>, rel: RelTag) -> Result<Option<u32>, RepoError> {
        if let Some(n) = self.rel_sizes.get(&rel) {
            return Ok(Some(*n));
        }
        if !self.rel_dir(writer, rel.spc_node, rel.db_node)?.contains(&(rel.rel_node, rel.fork)) {
            return Ok(None);
        }
        let key = Key::rel_size(rel);
        let n = match writer.get_latest(key)? {
            Some(v) => decode_nblocks(key, &v)?,
            None => 0,
        };
        self.rel_sizes.insert(rel, n);
        Ok(Some(n))
    }

    fn set_rel_size(&mut self, rel: RelTag, nblocks: u32) {
        self.rel_sizes.insert(rel, nblocks);
        self.pending.rel_sizes.insert(rel, nblocks);
    }

    /// Adds a fork to its database's directory (and the database to the database directory).
    fn add_rel(&mut self, writer: &TimelineWriter<'_>, rel: RelTag) -> Result<(), RepoError> {
        if self.db_dir.insert((rel.spc_node, rel.db_node)) {
            self.pending.db_dir = true;
        }
        self.rel_dir(writer, rel.spc_node, rel.db_node)?.insert((rel.rel_node, rel.fork));
        self.pending.rel_dirs.insert((rel.spc_node, rel.db_node));
        Ok(())
    }

    /// The fork exists with at least `nblocks` blocks.
    fn extend_rel(&mut self, writer: &TimelineWriter<'_>, rel: RelTag, nblocks: u32) -> Result<(), RepoError> {
        match self.rel_size(writer, rel)? {
            Some(n) if n >= nblocks => {}
            Some(_) => self.set_rel_size(rel, nblocks),
            None => {
                self.add_rel(writer, rel)?;
                self.set_rel_size(rel, nblocks);
            }
        }
        Ok(())
    }

    fn truncate_rel(&mut self, writer: &TimelineWriter<'_>, rel: RelTag, nblocks: u32) -> Result<(), RepoError> {
        match self.rel_size(writer, rel)? {
            Some(n) if n > nblocks => self.set_rel_size(rel, nblocks),
            Some(_) => {}
            // smgr_redo creates the main fork before truncating it.
            None if rel.fork == MAIN_FORKNUM => {
                self.add_rel(writer, rel)?;
                self.set_rel_size(rel, 0);
            }
            None => {}
        }
        Ok(())
    }

    /// Forgets a fork that is no longer in its directory; its size becomes 0.
    fn tombstone(&mut self, rel: RelTag) {
        self.rel_sizes.remove(&rel);
        self.pending.rel_sizes.insert(rel, 0);
    }

    fn drop_rel(&mut self, writer: &TimelineWriter<'_>, spc: u32, db: u32, rel_node: u32) -> Result<(), RepoError> {
        let dir = self.rel_dir(writer, spc, db)?;
        let dropped: Vec<u8> = (MAIN_FORKNUM..=INIT_FORKNUM).filter(|fork| dir.remove(&(rel_node, *fork))).collect();
        if !dropped.is_empty() {
            self.pending.rel_dirs.insert((spc, db));
        }
        for fork in dropped {
            self.tombstone(RelTag::new(spc, db, rel_node, fork));
        }
        Ok(())
    }

    fn create_db(
        &mut self,
        writer: &mut TimelineWriter<'_>,
        spc: u32,
        db: u32,
        src: Option<(u32, u32)>,
        lsn: Lsn,
    ) -> Result<(), RepoError> {
        if self.db_dir.insert((spc, db)) {
            self.pending.db_dir = true;
        }
        self.pending.rel_dirs.insert((spc, db));
        let Some((src_spc, src_db)) = src else {
            // WAL_LOG strategy: the directory is created (kept if it exists);
            // its relations arrive as SMGR creates and page images.
            self.rel_dir(writer, spc, db)?;
            return Ok(());
        };
        // FILE_COPY strategy: the target directory is removed, then copied from the source.
        let old = std::mem::take(self.rel_dir(writer, spc, db)?);
        for (rel_node, fork) in old {
            self.tombstone(RelTag::new(spc, db, rel_node, fork));
        }
        let src_rels: Vec<(u32, u8)> = self.rel_dir(writer, src_spc, src_db)?.iter().copied().collect();
        for (rel_node, fork) in src_rels {
            let from = RelTag::new(src_spc, src_db, rel_node, fork);
            let to = RelTag::new(spc, db, rel_node, fork);
            let nblocks = self.rel_size(writer, from)?.unwrap_or(0);
            for blkno in 0..nblocks {
                if let Some(page) = writer.get_latest(Key::rel_block(from, blkno))? {
                    writer.put(Key::rel_block(to, blkno), lsn, Value::Image(page))?;
                }
            }
            self.rel_dir(writer, spc, db)?.insert((rel_node, fork));
            self.set_rel_size(to, nblocks);
        }
        if let Some(map) = writer.get_latest(Key::relmap_file(src_spc, src_db))? {
            writer.put(Key::relmap_file(spc, db), lsn, Value::Image(map))?;
        }
        Ok(())
    }

    fn drop_db(&mut self, writer: &TimelineWriter<'_>, spc: u32, db: u32) -> Result<(), RepoError> {
        let existed = self.db_dir.remove(&(spc, db));
        if existed {
            self.pending.db_dir = true;
        }
        let rels = std::mem::take(self.rel_dir(writer, spc, db)?);
        if existed || !rels.is_empty() {
            self.pending.rel_dirs.insert((spc, db));
        }
        for (rel_node, fork) in rels {
            self.tombstone(RelTag::new(spc, db, rel_node, fork));
        }
        Ok(())
    }

    /// The SLRU segment exists with at least `nblocks` blocks.
    fn extend_slru(&mut self, writer: &TimelineWriter<'_>, kind: SlruKind, segno: u32, nblocks: u32) -> Result<(), RepoError> {
        let current = match self.slru_sizes.get(&(kind, segno)) {
            Some(n) => Some(*n),
            None if self.slru_dirs.get(&kind).is_some_and(|d| d.contains(&segno)) => {
                let key = Key::slru_segment_size(kind, segno);
                let n = match writer.get_latest(key)? {
                    Some(v) => decode_nblocks(key, &v)?,
                    None => 0,
                };
                self.slru_sizes.insert((kind, segno), n);
                Some(n)
            }
            None => None,
        };
        match current {
            Some(n) if n >= nblocks => return Ok(()),
            Some(_) => {}
            None => {
                self.slru_dirs.entry(kind).or_default().insert(segno);
                self.pending.slru_dirs.insert(kind);
            }
        }
        self.slru_sizes.insert((kind, segno), nblocks);
        self.pending.slru_sizes.insert((kind, segno), nblocks);
        Ok(())
    }

    /// Writes what the record changed in sizes, directories and the checkpoint.
    fn write_pending(&mut self, writer: &mut TimelineWriter<'_>, lsn: Lsn) -> Result<(), RepoError> {
        let pending = std::mem::take(&mut self.pending);
        let image = Value::Image;
        for (rel, nblocks) in pending.rel_sizes {
            writer.put(Key::rel_size(rel), lsn, image(encode_nblocks(nblocks)))?;
        }
        for (spc, db) in pending.rel_dirs {
            let rels = self.rel_dirs.get(&(spc, db)).expect("a changed directory is cached");
            writer.put(Key::rel_dir(spc, db), lsn, image(encode_rel_dir(rels)))?;
        }
        if pending.db_dir {
            writer.put(Key::db_dir(), lsn, image(encode_db_dir(&self.db_dir)))?;
        }
        for ((kind, segno), nblocks) in pending.slru_sizes {
            writer.put(Key::slru_segment_size(kind, segno), lsn, image(encode_nblocks(nblocks)))?;
        }
        for kind in pending.slru_dirs {
            writer.put(Key::slru_dir(kind), lsn, image(encode_u32_dir(&self.slru_dirs[&kind])))?;
        }
        if pending.twophase {
            writer.put(Key::twophase_dir(), lsn, image(encode_u32_dir(&self.twophase)))?;
        }
        let checkpoint = self.checkpoint.encode();
        if checkpoint != self.checkpoint_stored {
            writer.put(Key::checkpoint(), lsn, image(bytes::Bytes::copy_from_slice(&checkpoint)))?;
            self.checkpoint_stored = checkpoint;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::key::{FSM_FORKNUM, VISIBILITYMAP_FORKNUM};
    use crate::repo::{Redo, RepoConfig, Repository, TimelineId};
    use crate::wal::encode::{BlockSpec, RecordBuilder};
    use crate::wal::record::record_crc;

    /// Returns the base page: tests here never need a record applied.
    struct BaseRedo;

    impl Redo for BaseRedo {
        fn apply(&self, _key: Key, base: Option<Bytes>, _records: &[(Lsn, WalRecordValue)]) -> Result<Bytes, crate::repo::RedoError> {
            Ok(base.unwrap_or_else(|| Bytes::from(vec![0u8; 8192])))
        }
    }

    const START: Lsn = Lsn(0x100_0000);

    fn checkpoint() -> CheckPoint {
        CheckPoint {
            redo: START,
            this_timeline_id: 1,
            full_page_writes: true,
            next_xid: 740,
            next_oid: 16384,
            next_multi: 1,
            oldest_xid: 716,
            oldest_xid_db: 1,
            oldest_multi: 1,
            oldest_multi_db: 1,
            time: 1_700_000_000,
            ..CheckPoint::default()
        }
    }

    fn rel(db: u32, rel: u32, fork: u8) -> RelTag {
        RelTag::new(1663, db, rel, fork)
    }

    fn page(seed: u8) -> Bytes {
        Bytes::from(vec![seed; 8192])
    }

    /// A timeline with db 1 holding 16384 (main 10 blocks, FSM 3) and 16390 (main 2).
    fn setup() -> (tempfile::TempDir, Repository, Arc<Timeline>) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(dir.path(), RepoConfig { fsync: false, ..RepoConfig::default() }, Arc::new(BaseRedo)).unwrap();
        let tl = repo.create_timeline(TimelineId(1)).unwrap();
        let mut w = tl.writer();
        let img = |b: Bytes| Value::Image(b);
        w.put(Key::checkpoint(), START, img(Bytes::copy_from_slice(&checkpoint().encode()))).unwrap();
        w.put(Key::db_dir(), START, img(encode_db_dir(&[(1663, 1), (1664, 0)].into()))).unwrap();
        w.put(Key::rel_dir(1663, 1), START, img(encode_rel_dir(&[(16384, 0), (16384, 1), (16390, 0)].into()))).unwrap();
        w.put(Key::rel_dir(1664, 0), START, img(encode_rel_dir(&BTreeSet::new()))).unwrap();
        for (r, n) in [(rel(1, 16384, 0), 10u32), (rel(1, 16384, 1), 3), (rel(1, 16390, 0), 2)] {
            w.put(Key::rel_size(r), START, img(encode_nblocks(n))).unwrap();
            for blkno in 0..n {
                w.put(Key::rel_block(r, blkno), START, img(page(blkno as u8 + r.fork * 100))).unwrap();
            }
        }
        w.put(Key::relmap_file(1663, 1), START, img(Bytes::from(vec![7u8; 512]))).unwrap();
        w.put(Key::slru_dir(SlruKind::Clog), START, img(encode_u32_dir(&[0].into()))).unwrap();
        w.put(Key::slru_segment_size(SlruKind::Clog, 0), START, img(encode_nblocks(1))).unwrap();
        w.finish_lsn(START).unwrap();
        drop(w);
        (dir, repo, tl)
    }

    fn le(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Feeds records one after another, each 0x100 bytes after the previous.
    struct Feeder {
        ingest: WalIngest,
        lsn: Lsn,
    }

    impl Feeder {
        fn new(tl: &Timeline) -> Feeder {
            Feeder { ingest: WalIngest::new(tl).unwrap(), lsn: tl.last_record_lsn() }
        }
        fn feed(&mut self, tl: &Timeline, rb: RecordBuilder) -> Lsn {
            let mut raw = rb.build();
            raw[8..16].copy_from_slice(&1u64.to_le_bytes());
            let crc = record_crc(&raw);
            raw[20..24].copy_from_slice(&crc.to_le_bytes());
            let rec = crate::wal::decode_record(Bytes::from(raw), self.lsn, self.lsn + 0x100).unwrap();
            self.lsn = rec.end_lsn;
            self.ingest.ingest(&mut tl.writer(), &rec).unwrap();
            assert_eq!(tl.last_record_lsn(), self.lsn);
            self.lsn
        }
    }

    fn rb(rmid: u8, info: u8, xid: u32, main_data: Vec<u8>) -> RecordBuilder {
        RecordBuilder { rmid, info, xid, main_data, ..Default::default() }
    }

    fn heap_insert(xid: u32, r: RelTag, blkno: u32) -> RecordBuilder {
        let mut b = rb(rmgr::HEAP, 0x00, xid, vec![1, 0, 0]);
        b.blocks =
            vec![BlockSpec { id: 0, fork_flags: r.fork, rel: (r.spc_node, r.db_node, r.rel_node), blkno, data: vec![1; 30], image: None }];
        b
    }

    fn stored_checkpoint(tl: &Timeline, lsn: Lsn) -> CheckPoint {
        CheckPoint::decode(&tl.get(Key::checkpoint(), lsn).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn heap_records_extend_relations_and_advance_next_xid() {
        let (_d, _repo, tl) = setup();
        let mut f = Feeder::new(&tl);
        let main = rel(1, 16384, 0);
        let l1 = f.feed(&tl, heap_insert(745, main, 14));
        assert_eq!(tl.get_rel_size(main, l1).unwrap(), Some(15));
        assert_eq!(tl.get_rel_size(main, START).unwrap(), Some(10));
        assert_eq!(stored_checkpoint(&tl, l1).next_xid, 746);
        // Lower block, older xid: no change.
        let l2 = f.feed(&tl, heap_insert(741, main, 3));
        assert_eq!(tl.get_rel_size(main, l2).unwrap(), Some(15));
        assert_eq!(stored_checkpoint(&tl, l2).next_xid, 746);
        // A new relation in a new database appears in both directories.
        let other = rel(7, 20000, 0);
        let l3 = f.feed(&tl, heap_insert(746, other, 0));
        assert_eq!(tl.list_rels(1663, 7, l3).unwrap(), vec![other]);
        assert!(tl.list_dbs(l3).unwrap().contains(&(1663, 7)));
        assert_eq!(tl.get_rel_size(other, l3).unwrap(), Some(1));
        // A record must end above last_record_lsn.
        let mut raw = heap_insert(1, main, 0).build();
        raw[8..16].copy_from_slice(&1u64.to_le_bytes());
        let crc = record_crc(&raw);
        raw[20..24].copy_from_slice(&crc.to_le_bytes());
        let old = crate::wal::decode_record(Bytes::from(raw), START, l3).unwrap();
        assert!(matches!(f.ingest.ingest(&mut tl.writer(), &old), Err(IngestApplyError::Behind { .. })));
    }

    #[test]
    fn smgr_truncate_shrinks_but_never_creates_fsm_or_vm() {
        let (_d, _repo, tl) = setup();
        let mut f = Feeder::new(&tl);
        // 16384: main 10, FSM 3, no VM. Truncate everything to 5 heap blocks:
        // FSM leaf 0 is block 2 (kept, zeroed), VM page 0 does not exist.
        let l = f.feed(&tl, rb(rmgr::SMGR, 0x20, 0, le(&[5, 1663, 1, 16384, 7])));
        assert_eq!(tl.get_rel_size(rel(1, 16384, 0), l).unwrap(), Some(5));
        assert_eq!(tl.get_rel_size(rel(1, 16384, FSM_FORKNUM), l).unwrap(), Some(3));
        assert_eq!(tl.get(Key::rel_block(rel(1, 16384, FSM_FORKNUM), 2), l).unwrap().unwrap(), vec![0u8; 8192]);
        assert_eq!(tl.get_rel_size(rel(1, 16384, VISIBILITYMAP_FORKNUM), l).unwrap(), None);
        assert_eq!(tl.list_rels(1663, 1, l).unwrap().len(), 3);
        // 16390 has no FSM: a truncation leaves it without one; a missing main fork is created.
        let l = f.feed(&tl, rb(rmgr::SMGR, 0x20, 0, le(&[1, 1663, 1, 16390, 7])));
        assert_eq!(tl.get_rel_size(rel(1, 16390, 0), l).unwrap(), Some(1));
        assert_eq!(tl.get_rel_size(rel(1, 16390, FSM_FORKNUM), l).unwrap(), None);
        let l = f.feed(&tl, rb(rmgr::SMGR, 0x20, 0, le(&[0, 1663, 1, 16500, 1])));
        assert_eq!(tl.get_rel_size(rel(1, 16500, 0), l).unwrap(), Some(0));
        // SMGR create, then a truncate above the size changes nothing.
        let l = f.feed(&tl, rb(rmgr::SMGR, 0x10, 0, le(&[1663, 1, 16390, 2])));
        assert_eq!(tl.get_rel_size(rel(1, 16390, VISIBILITYMAP_FORKNUM), l).unwrap(), Some(0));
        let l = f.feed(&tl, rb(rmgr::SMGR, 0x20, 0, le(&[100, 1663, 1, 16384, 1])));
        assert_eq!(tl.get_rel_size(rel(1, 16384, 0), l).unwrap(), Some(5));
    }

    fn commit_dropping(xid: u32, rels: &[(u32, u32, u32)]) -> RecordBuilder {
        let mut main = vec![0u8; 8];
        main.extend(le(&[4, rels.len() as u32])); // XACT_XINFO_HAS_RELFILENODES
        for (spc, db, rel) in rels {
            main.extend(le(&[*spc, *db, *rel]));
        }
        rb(rmgr::XACT, 0x80, xid, main)
    }

    #[test]
    fn commits_leave_marks_whose_latest_time_never_goes_back() {
        let (_d, _repo, tl) = setup();
        let mut f = Feeder::new(&tl);
        let commit_at = |time: i64| rb(rmgr::XACT, 0x00, 0, time.to_le_bytes().to_vec());
        let mark = |lsn| tl.get(Key::latest_commit(), lsn).unwrap().map(|v| CommitMark::decode(&v).unwrap());
        assert_eq!(mark(f.lsn), None);
        let first = f.feed(&tl, commit_at(1_000));
        // An abort and a heap record leave the mark as it was.
        let abort = f.feed(&tl, rb(rmgr::XACT, 0x20, 0, 5_000i64.to_le_bytes().to_vec()));
        let heap = f.feed(&tl, heap_insert(800, rel(1, 16384, 0), 0));
        assert_eq!(mark(heap), Some(CommitMark { lsn: first, time: 1_000, max_time: 1_000 }));
        assert_eq!(mark(abort), mark(first));
        let second = f.feed(&tl, commit_at(3_000));
        // A new WalIngest (a restart) carries the latest time on.
        let mut f = Feeder { ingest: WalIngest::new(&tl).unwrap(), lsn: f.lsn };
        let third = f.feed(&tl, commit_at(2_000));
        assert_eq!(mark(second), Some(CommitMark { lsn: second, time: 3_000, max_time: 3_000 }));
        assert_eq!(mark(third), Some(CommitMark { lsn: third, time: 2_000, max_time: 3_000 }));
    }

    #[test]
    fn drops_and_file_copy_database_creation() {
        let (_d, _repo, tl) = setup();
        let mut f = Feeder::new(&tl);
        let before = f.lsn;
        // CREATE DATABASE 5 from 1 (FILE_COPY): directory, sizes, blocks, relmapper file.
        let l = f.feed(&tl, rb(rmgr::DBASE, 0x00, 750, le(&[5, 1663, 1, 1663])));
        assert!(tl.list_dbs(l).unwrap().contains(&(1663, 5)));
        let copied: Vec<(u32, u8)> = tl.list_rels(1663, 5, l).unwrap().iter().map(|r| (r.rel_node, r.fork)).collect();
        let source: Vec<(u32, u8)> = tl.list_rels(1663, 1, l).unwrap().iter().map(|r| (r.rel_node, r.fork)).collect();
        assert_eq!(copied, source);
        for r in tl.list_rels(1663, 1, l).unwrap() {
            let to = RelTag { db_node: 5, ..r };
            let n = tl.get_rel_size(r, l).unwrap().unwrap();
            assert_eq!(tl.get_rel_size(to, l).unwrap(), Some(n));
            for blkno in 0..n {
                assert_eq!(tl.get(Key::rel_block(to, blkno), l).unwrap(), tl.get(Key::rel_block(r, blkno), l).unwrap());
            }
        }
        assert_eq!(tl.get(Key::relmap_file(1663, 5), l).unwrap().unwrap(), vec![7u8; 512]);
        assert_eq!(tl.list_rels(1663, 5, before).unwrap(), vec![]);
        // A commit dropping 16384 removes all its forks.
        let l = f.feed(&tl, commit_dropping(751, &[(1663, 5, 16384)]));
        assert_eq!(tl.list_rels(1663, 5, l).unwrap(), vec![rel(5, 16390, 0)]);
        assert_eq!(tl.get_rel_size(rel(5, 16384, 0), l).unwrap(), None);
        assert_eq!(tl.get(Key::rel_size(rel(5, 16384, 0)), l).unwrap().unwrap(), encode_nblocks(0));
        assert_eq!(tl.list_rels(1663, 1, l).unwrap().len(), 3, "the source is untouched");
        // Re-created after the drop: starts empty.
        let l = f.feed(&tl, rb(rmgr::SMGR, 0x10, 0, le(&[1663, 5, 16384, 0])));
        assert_eq!(tl.get_rel_size(rel(5, 16384, 0), l).unwrap(), Some(0));
        // DROP DATABASE 5.
        let l = f.feed(&tl, rb(rmgr::DBASE, 0x20, 752, le(&[5, 1, 1663])));
        assert!(!tl.list_dbs(l).unwrap().contains(&(1663, 5)));
        assert_eq!(tl.list_rels(1663, 5, l).unwrap(), vec![]);
        // CREATE DATABASE 6 (WAL_LOG): an empty directory.
        let l = f.feed(&tl, rb(rmgr::DBASE, 0x10, 753, le(&[6, 1663])));
        assert!(tl.list_dbs(l).unwrap().contains(&(1663, 6)));
        assert_eq!(tl.list_rels(1663, 6, l).unwrap(), vec![]);
        assert_eq!(tl.get(Key::rel_dir(1663, 6), l).unwrap().unwrap(), encode_rel_dir(&BTreeSet::new()));
        assert_eq!(stored_checkpoint(&tl, l).next_xid, 754);
    }

    #[test]
    fn checkpoint_follows_postgres_redo() {
        let (_d, _repo, tl) = setup();
        let mut f = Feeder::new(&tl);
        // NEXTOID sets nextOid exactly.
        let l = f.feed(&tl, rb(rmgr::XLOG, 0x30, 0, le(&[24576])));
        assert_eq!(stored_checkpoint(&tl, l).next_oid, 24576);
        // A commit with subtransactions moves nextXid past the newest of them.
        let mut main = vec![0u8; 8];
        main.extend(le(&[2, 2, 760, 770])); // XACT_XINFO_HAS_SUBXACTS, two of them
        let l = f.feed(&tl, rb(rmgr::XACT, 0x80, 745, main));
        assert_eq!(stored_checkpoint(&tl, l).next_xid, 771);
        // A multixact: nextMulti / nextMultiOffset past it, nextXid past its members.
        let l = f.feed(&tl, rb(rmgr::MULTIXACT, 0x20, 0, le(&[1, 0, 2, 780, 1, 790, 2])));
        let cp = stored_checkpoint(&tl, l);
        assert_eq!((cp.next_multi, cp.next_multi_offset, cp.next_xid), (2, 2, 791));
        assert_eq!(tl.list_slru_segments(SlruKind::MultiXactOffsets, l).unwrap(), vec![0]);
        // An online checkpoint: older counters do not move back, nextOid is
        // ignored, redo / time / oldestXid are taken.
        let online = CheckPoint {
            redo: Lsn(0x200_0000),
            next_xid: 775,
            next_oid: 99999,
            next_multi: 2,
            next_multi_offset: 2,
            oldest_xid: 720,
            time: 1_700_000_100,
            oldest_active_xid: 776,
            ..checkpoint()
        };
        let l = f.feed(&tl, rb(rmgr::XLOG, 0x10, 0, online.encode().to_vec()));
        let cp = stored_checkpoint(&tl, l);
        assert_eq!((cp.redo, cp.next_xid, cp.next_oid, cp.oldest_xid, cp.time), (Lsn(0x200_0000), 791, 24576, 720, 1_700_000_100));
        assert_eq!(cp.oldest_active_xid, 776);
        // An online checkpoint ahead of us wins.
        let l = f.feed(&tl, rb(rmgr::XLOG, 0x10, 0, CheckPoint { next_xid: (1 << 32) | 5, ..online }.encode().to_vec()));
        assert_eq!(stored_checkpoint(&tl, l).next_xid, (1 << 32) | 5);
        // A shutdown checkpoint is believed exactly (oldestMulti only advances).
        let shutdown = CheckPoint { next_xid: 800, next_oid: 30000, oldest_multi: 0, ..online };
        let l = f.feed(&tl, rb(rmgr::XLOG, 0x00, 0, shutdown.encode().to_vec()));
        assert_eq!(stored_checkpoint(&tl, l), CheckPoint { oldest_multi: 1, ..shutdown });
        assert_eq!(f.ingest.checkpoint(), &CheckPoint { oldest_multi: 1, ..shutdown });
        // A fresh WalIngest picks the state up from the timeline.
        assert_eq!(WalIngest::new(&tl).unwrap().checkpoint(), f.ingest.checkpoint());
    }

    #[test]
    fn two_phase_and_slru_directories() {
        let (_d, _repo, tl) = setup();
        let mut f = Feeder::new(&tl);
        let l = f.feed(&tl, rb(rmgr::XACT, 0x10, 755, vec![9; 40])); // PREPARE
        assert_eq!(tl.list_twophase(l).unwrap(), vec![755]);
        assert_eq!(tl.get(Key::twophase_file(755), l).unwrap().unwrap(), vec![9; 40]);
        // COMMIT PREPARED of 755 (xinfo HAS_TWOPHASE, the xid after the fixed parts).
        let mut main = vec![0u8; 8];
        main.extend(le(&[16, 755]));
        let l = f.feed(&tl, rb(rmgr::XACT, 0x30 | 0x80, 0, main));
        assert_eq!(tl.list_twophase(l).unwrap(), vec![]);
        // CLOG zero page 33: segment 1 appears with 2 blocks.
        let l = f.feed(&tl, rb(rmgr::CLOG, 0x00, 0, le(&[33])));
        assert_eq!(tl.list_slru_segments(SlruKind::Clog, l).unwrap(), vec![0, 1]);
        assert_eq!(tl.get_slru_segment(SlruKind::Clog, 1, l).unwrap().unwrap().len(), 2 * 8192);
    }

    #[test]
    fn needs_a_checkpoint_and_its_own_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(dir.path(), RepoConfig { fsync: false, ..RepoConfig::default() }, Arc::new(BaseRedo)).unwrap();
        let empty = repo.create_timeline(TimelineId(9)).unwrap();
        assert!(WalIngest::new(&empty).unwrap_err().to_string().contains("no checkpoint"));
        let (_d, _repo, tl) = setup();
        let mut ingest = WalIngest::new(&tl).unwrap();
        let mut raw = heap_insert(1, rel(1, 16384, 0), 0).build();
        raw[8..16].copy_from_slice(&1u64.to_le_bytes());
        let crc = record_crc(&raw);
        raw[20..24].copy_from_slice(&crc.to_le_bytes());
        let rec = crate::wal::decode_record(Bytes::from(raw), START, START + 0x100).unwrap();
        let err = ingest.ingest(&mut empty.writer(), &rec).unwrap_err();
        assert!(err.to_string().contains("given a writer of timeline"), "{err}");
    }
}

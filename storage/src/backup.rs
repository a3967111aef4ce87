//! Backups: a tar of a timeline as of an LSN, in the layout of a PostgreSQL 15
//! data directory.
//!
//! [`write_backup_tar`] writes one uncompressed ustar archive (the format of
//! `pg_basebackup -Ft`). Untarred into an empty directory (mode 0700, owned
//! by the server's user), a [`BackupKind::Fullbackup`] is a data directory
//! that a **stock** PostgreSQL 15 starts from without recovery: its
//! `pg_control` says "shut down" and points at a real
//! `XLOG_CHECKPOINT_SHUTDOWN` record in `pg_wal`, the same state
//! `pg_resetwal` leaves behind. Transactions in progress at the LSN read as
//! aborted (the CLOG has no commit for them).
//!
//! ## Tar layout, in the order written
//!
//! | entry | contents |
//! |---|---|
//! | `PG_VERSION` | `15\n` |
//! | `postgresql.conf` | comments only (every setting at its default), plus `max_prepared_transactions` when prepared transactions exist (PostgreSQL refuses to start otherwise) |
//! | `postgresql.auto.conf` | the empty `ALTER SYSTEM` file |
//! | `pg_hba.conf` | `trust` for `local` and loopback (127.0.0.1/32, ::1/128), databases and `replication` |
//! | `pg_ident.conf` | empty |
//! | skeleton directories | `global`, `base`, `pg_wal`, `pg_wal/archive_status`, `pg_xact`, `pg_multixact{,/offsets,/members}`, `pg_subtrans`, `pg_commit_ts`, `pg_twophase`, `pg_notify`, `pg_serial`, `pg_snapshots`, `pg_stat`, `pg_stat_tmp`, `pg_replslot`, `pg_tblspc`, `pg_dynshmem`, `pg_logical{,/snapshots,/mappings}` (as `initdb` makes them) |
//! | `global/pg_filenode.map` | the shared relmapper file (key `relmap_file(1664, 0)`) |
//! | `global/<relfilenode>[_fsm\|_vm\|_init][.<segno>]` | shared relations (Fullbackup) |
//! | `base/<db>/`, `base/<db>/PG_VERSION`, `base/<db>/pg_filenode.map` | each database of the default tablespace |
//! | `base/<db>/<relfilenode>[_fork][.<segno>]` | its relation files (Fullbackup) |
//! | `pg_tblspc/<spc>/PG_15_<catversion>/<db>/...` | the same for other tablespaces, as real directories ("in-place" tablespaces) instead of symlinks to a location |
//! | `pg_xact/XXXX`, `pg_multixact/offsets/XXXX`, `pg_multixact/members/XXXX` | SLRU segments (4 hex digits, as PostgreSQL 15 names them) |
//! | `pg_twophase/XXXXXXXX` | two-phase state files (8 hex digits of the xid): the stored state data (as the `PREPARE` record carries it) plus the CRC-32C trailer the file has |
//! | `pg_wal/<timeline><segment>` | the WAL segment(s) holding the new checkpoint record, full segment size, zeros elsewhere |
//! | `global/pg_control` | the rewritten control file, last (as `basebackup.c` sends it) |
//!
//! A database directory gets `PG_VERSION` only if it has a relmapper file:
//! `CREATE DATABASE` writes both, while a directory that only holds tables
//! of another database's tablespace (`CREATE TABLE ... TABLESPACE`) has
//! neither. Directories are mode 0700, files 0600, owner name `postgres`.
//!
//! ## Relation files
//!
//! [`BackupKind::Fullbackup`] writes every fork of every relation of every
//! database in the database directory, the blocks of a fork read together
//! with [`Timeline::read_in_order`] (parallel batches, streamed in block
//! order as they are rebuilt; a block with no version is written as zeros, as an
//! extension without data leaves it), split into segments of `relseg_size`
//! blocks (from `pg_control`; 1 GiB by default) named as `md.c` names them.
//! A fork with zero blocks is an empty file. **Unlogged relations** (those
//! with an init fork) are written the way PostgreSQL resets them after a
//! crash: the init fork, plus a main fork that is a copy of it; their other
//! forks and any stored main-fork contents are left out. (A server starting
//! from a shut-down state does not reset them itself.)
//!
//! [`BackupKind::Basebackup`] is for Neon-style computes, whose storage
//! manager asks the page server for relation sizes and pages: it writes
//! everything above **except relation files**, init forks included, and no
//! empty placeholders (a local file would only be a second, wrong answer to
//! "how big is this relation"). Its `pg_control` and WAL are the same as a
//! full backup's, so a stock server would start from it and then fail on the
//! first missing relation file.
//!
//! [`BackupKind::Clonebackup`] is for live clones (the `pageserver-clone`
//! tool), which fetch relation blocks on first read: it writes what a
//! full backup writes except the relation files' contents, and adds the
//! entry [`CLONE_MANIFEST`] (before `global/pg_control`): a header line,
//! then one line per relation segment file of the full backup, in its
//! order, `path<TAB>spc db rel fork<TAB>first_block<TAB>nblocks`, where
//! `spc db rel fork` is the fork its blocks are read from (the init fork
//! for an unlogged relation's main fork) and `nblocks` is the file's size
//! in blocks as of the LSN.
//!
//! ## The checkpoint record
//!
//! The stored `CheckPoint` (key [`Key::checkpoint`], kept current by WAL
//! ingest) becomes a new `XLOG_CHECKPOINT_SHUTDOWN` record, as
//! `pg_resetwal`'s `WriteEmptyXLOG` writes one: `redo` = the record's own
//! position, `time` = now, `oldestActiveXid` = 0 (as PostgreSQL writes it in
//! shutdown checkpoints), `xl_prev` = 0, `xl_xid` = 0, one short main-data
//! block of 88 bytes, CRC-32C. The record starts at the requested LSN,
//! which must be a record boundary (the end of the last record included):
//! a multiple of 8, not inside a page header. At a page boundary it starts
//! at the page's first usable byte instead (after the 24-byte header, or the
//! 40-byte long header at a segment start), as PostgreSQL's own inserts do.
//!
//! The segment file is named after the checkpoint's `ThisTimeLineID` and is
//! `xlog_seg_size` bytes (from `pg_control`). Its first page carries a long
//! header (system identifier, segment and block size): PostgreSQL checks it
//! whenever it opens a segment. The page holding the record gets a header
//! too; when the record does not start at the page's first usable byte, the
//! header says the bytes before it are the tail of a record continued from
//! the previous page (`XLP_FIRST_IS_CONTRECORD`, `xlp_rem_len` = their
//! length). That is what the original WAL had there in substance — older
//! records, already reflected in the pages — and it lets readers that scan
//! from the page start (`pg_waldump`) find the record; the server itself
//! reads it directly at the checkpoint location. A record crossing a page
//! or segment boundary gets continuation headers, and the next segment file
//! then comes too. Other pages are zeros; the server writes its new WAL
//! right after the record.
//!
//! ## pg_control
//!
//! The stored control file, rewritten as `pg_resetwal`'s
//! `RewriteControlFile` does: `checkPoint` = `checkPointCopy.redo` = the
//! record's position, `checkPointCopy` = the checkpoint written, state
//! `DB_SHUTDOWNED`, `time` = now, `minRecoveryPoint`/TLI,
//! `backupStartPoint`, `backupEndPoint` and `backupEndRequired` cleared, CRC
//! recomputed. Unlike `pg_resetwal` it keeps the recorded settings
//! (`wal_level`, `max_connections`, ...): a server that is not in recovery
//! rewrites them at start-up anyway, and they stay truthful meanwhile. The
//! layouts of `ControlFileData` and `CheckPoint` are [`crate::pg_control`]'s.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::key::{
    Key, RelTag, SlruKind, DEFAULTTABLESPACE_OID, FSM_FORKNUM, GLOBALTABLESPACE_OID, INIT_FORKNUM, MAIN_FORKNUM, VISIBILITYMAP_FORKNUM,
};
use crate::lsn::Lsn;
use crate::pg_control::{CheckPoint, ControlFile, DB_SHUTDOWNED, PG_CONTROL_FILE_SIZE, SIZE_OF_CHECKPOINT, XLOG_CHECKPOINT_SHUTDOWN};
use crate::repo::{BulkReadStats, RepoError, Timeline};
use crate::wal::encode::{RecordBuilder, WalWriter};
use crate::wal::record::record_crc;
use crate::wal::{page_header_size, rmgr, segment_file_name, BLCKSZ, XLOG_BLCKSZ, XLP_FIRST_IS_CONTRECORD};

/// `xl_tot_len` of a checkpoint record: header, short data header, CheckPoint.
pub const CHECKPOINT_RECORD_LEN: usize = crate::wal::SIZE_OF_XLOG_RECORD + 2 + SIZE_OF_CHECKPOINT;

/// Which backup to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupKind {
    /// Everything except relation files: for computes that read relation
    /// pages from the page server.
    Basebackup,
    /// Every relation file too: a stock PostgreSQL 15 starts from it.
    Fullbackup,
    /// A full backup whose relation files are named, not sent: the
    /// [`CLONE_MANIFEST`] entry lists each segment file with the fork its
    /// blocks come from, for a clone that fetches them on first read.
    Clonebackup,
}

/// The tar entry of a [`BackupKind::Clonebackup`] that lists its relation
/// files (see the module docs); not a file of the data directory.
pub const CLONE_MANIFEST: &str = "pageserver_clone.manifest";

/// The first line of [`CLONE_MANIFEST`].
pub const CLONE_MANIFEST_HEADER: &str = "# pageserver_ext clone manifest v1: path spc db rel fork first_block nblocks";

/// One relation segment file of a [`BackupKind::Clonebackup`]: the file at
/// `path` holds blocks `first_block .. first_block + nblocks` of fork `source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneFile {
    pub path: String,
    pub source: RelTag,
    pub first_block: u32,
    pub nblocks: u32,
}

impl CloneFile {
    /// The manifest line (without its newline).
    pub fn to_line(&self) -> String {
        let r = self.source;
        format!("{}\t{} {} {} {}\t{}\t{}", self.path, r.spc_node, r.db_node, r.rel_node, r.fork, self.first_block, self.nblocks)
    }

    /// Parses a manifest line written by [`CloneFile::to_line`].
    pub fn parse_line(line: &str) -> Result<CloneFile, String> {
        let bad = || format!("bad clone manifest line \"{line}\"");
        let mut parts = line.split('\t');
        let (Some(path), Some(rel), Some(first), Some(n), None) = (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let nums: Vec<u32> = rel.split(' ').map(str::parse).collect::<Result<_, _>>().map_err(|_| bad())?;
        let [spc, db, rel, fork] = nums[..] else { return Err(bad()) };
        let fork = u8::try_from(fork).ok().filter(|f| *f <= INIT_FORKNUM).ok_or_else(bad)?;
        if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
            return Err(bad());
        }
        Ok(CloneFile {
            path: path.to_string(),
            source: RelTag::new(spc, db, rel, fork),
            first_block: first.parse().map_err(|_| bad())?,
            nblocks: n.parse().map_err(|_| bad())?,
        })
    }
}

/// What [`write_backup_tar`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupStats {
    /// Where the new checkpoint record starts (`pg_control`'s checkpoint and redo).
    pub checkpoint_lsn: Lsn,
    /// Where it ends: the started server writes its next WAL here.
    pub end_lsn: Lsn,
    /// Names of the WAL segment files written.
    pub wal_segments: Vec<String>,
    /// Regular files in the tar (all kinds).
    pub files: u64,
    /// Directory entries in the tar.
    pub dirs: u64,
    /// Relation segment files.
    pub rel_files: u64,
    /// Relation blocks written (8 KiB each).
    pub rel_blocks: u64,
    /// Bytes of the tar stream.
    pub tar_bytes: u64,
    /// The bulk reads of the relation files, summed.
    pub reads: BulkReadStats,
}

/// Why a backup could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("reading the timeline: {0}")]
    Repo(#[from] RepoError),
    #[error("writing the backup: {0}")]
    Io(#[from] std::io::Error),
    /// A key every backup needs has no value at the LSN.
    #[error("the timeline has no {what} at {lsn}")]
    Missing { what: &'static str, lsn: Lsn },
    /// A stored value, or the request, is not what PostgreSQL 15 would accept.
    #[error("invalid {what}: {msg}")]
    Invalid { what: &'static str, msg: String },
}

fn invalid(what: &'static str, msg: impl Into<String>) -> BackupError {
    BackupError::Invalid { what, msg: msg.into() }
}

/// Parses and checks the stored control file.
fn parse_control_file(bytes: &[u8]) -> Result<ControlFile, BackupError> {
    ControlFile::parse(bytes).map_err(|msg| invalid("pg_control", msg))
}

/// Where the checkpoint record for a backup at `lsn` starts: `lsn` itself,
/// or the first usable byte of the page if `lsn` is a page boundary. Fails
/// for an LSN that cannot be a record boundary (not MAXALIGNed, inside a
/// page header, or 0).
pub fn checkpoint_position(lsn: Lsn, seg_size: u64) -> Result<Lsn, BackupError> {
    const WHAT: &str = "backup LSN";
    if !lsn.is_valid() {
        return Err(invalid(WHAT, "0/0 is not a WAL position"));
    }
    if lsn.0 & 7 != 0 {
        return Err(invalid(WHAT, format!("{lsn} is not a record boundary (not a multiple of 8)")));
    }
    let in_page = lsn.0 % XLOG_BLCKSZ;
    let page = lsn.0 - in_page;
    let header = page_header_size(Lsn(page), seg_size) as u64;
    if in_page == 0 {
        Ok(Lsn(page + header))
    } else if in_page < header {
        Err(invalid(WHAT, format!("{lsn} is inside the page header of the page at {}", Lsn(page))))
    } else {
        Ok(lsn)
    }
}

/// One WAL segment file: `size` bytes, zeros except `chunks` (offset, bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalSegmentFile {
    pub name: String,
    pub size: u64,
    pub chunks: Vec<(u64, Vec<u8>)>,
}

impl WalSegmentFile {
    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.size as usize];
        for (offset, bytes) in &self.chunks {
            out[*offset as usize..*offset as usize + bytes.len()].copy_from_slice(bytes);
        }
        out
    }
}

/// A new shut-down state: the control file and the WAL that goes with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownCheckpoint {
    /// The new `global/pg_control` ([`PG_CONTROL_FILE_SIZE`] bytes).
    pub control_file: Vec<u8>,
    /// The checkpoint written (redo = `checkpoint_lsn`).
    pub checkpoint: CheckPoint,
    /// Where the record starts.
    pub checkpoint_lsn: Lsn,
    /// Where it ends (MAXALIGNed): the server's next WAL goes here.
    pub end_lsn: Lsn,
    /// The segment holding the record's start, and the next one if the record crosses into it.
    pub wal_segments: Vec<WalSegmentFile>,
}

/// Builds `pg_control` and the WAL for a shutdown checkpoint at `lsn` (see
/// the module docs): `control_file` is the stored control file, `checkpoint`
/// the checkpoint to continue from (next XID, OID, multixact, ...), `now`
/// the time to stamp.
pub fn shutdown_checkpoint(
    control_file: &[u8],
    checkpoint: &CheckPoint,
    lsn: Lsn,
    now: SystemTime,
) -> Result<ShutdownCheckpoint, BackupError> {
    let control = parse_control_file(control_file)?;
    let seg_size = u64::from(control.xlog_seg_size);
    let pos = checkpoint_position(lsn, seg_size)?;
    let tli = checkpoint.this_timeline_id;
    if tli == 0 {
        return Err(invalid("checkpoint", "ThisTimeLineID is 0"));
    }
    let now_secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let cp = CheckPoint { redo: pos, time: now_secs, oldest_active_xid: 0, ..*checkpoint };

    // The record, as WriteEmptyXLOG builds it: xl_xid 0, xl_prev 0.
    let mut record =
        RecordBuilder { rmid: rmgr::XLOG, info: XLOG_CHECKPOINT_SHUTDOWN, main_data: cp.encode().to_vec(), ..Default::default() }.build();
    debug_assert_eq!(record.len(), CHECKPOINT_RECORD_LEN);
    let crc = record_crc(&record);
    record[20..24].copy_from_slice(&crc.to_le_bytes());

    // The record's page from its start; bytes before the record are declared
    // the tail of a continued record (see the module docs).
    let page = pos.0 - pos.0 % XLOG_BLCKSZ;
    let gap = pos.0 - page - page_header_size(Lsn(page), seg_size) as u64;
    let mut writer = WalWriter::new(Lsn(page), Lsn::INVALID, control.system_identifier, tli, seg_size);
    if gap > 0 {
        writer.append_raw(&vec![0u8; gap as usize]);
    }
    let (start, end) = writer.append_raw(&record);
    debug_assert_eq!(start, pos);
    let mut wal = writer.into_bytes();
    if gap > 0 {
        let info = u16::from_le_bytes([wal[2], wal[3]]) | XLP_FIRST_IS_CONTRECORD;
        wal[2..4].copy_from_slice(&info.to_le_bytes());
        wal[16..20].copy_from_slice(&(gap as u32).to_le_bytes());
    }

    // Cut into segment files; a segment whose first page is not ours gets a
    // long header alone there.
    let mut wal_segments: Vec<WalSegmentFile> = Vec::new();
    let mut at = page;
    let mut rest = &wal[..];
    while !rest.is_empty() {
        let segno = at / seg_size;
        let offset = at % seg_size;
        let n = rest.len().min((seg_size - offset) as usize);
        let mut chunks = Vec::new();
        if offset != 0 {
            let mut first = WalWriter::new(Lsn(segno * seg_size), Lsn::INVALID, control.system_identifier, tli, seg_size);
            first.append_raw(&[]);
            chunks.push((0, first.into_bytes()));
        }
        chunks.push((offset, rest[..n].to_vec()));
        wal_segments.push(WalSegmentFile { name: segment_file_name(tli, segno, seg_size), size: seg_size, chunks });
        rest = &rest[n..];
        at += n as u64;
    }

    // RewriteControlFile: every other field as stored.
    let shut_down = ControlFile {
        state: DB_SHUTDOWNED,
        time: now_secs,
        checkpoint: pos,
        checkpoint_copy: cp,
        min_recovery_point: Lsn::INVALID,
        min_recovery_point_tli: 0,
        backup_start_point: Lsn::INVALID,
        backup_end_point: Lsn::INVALID,
        backup_end_required: false,
        ..control
    };
    let mut out = control_file.to_vec();
    out.resize(PG_CONTROL_FILE_SIZE, 0);
    shut_down.write_to(&mut out);

    Ok(ShutdownCheckpoint { control_file: out, checkpoint: cp, checkpoint_lsn: pos, end_lsn: end, wal_segments })
}

// ---------------------------------------------------------------------------
// tar

const TAR_BLOCK: usize = 512;

/// A ustar writer that streams file contents.
struct TarWriter<W: Write> {
    out: W,
    mtime: u64,
    bytes: u64,
    /// Bytes still owed to the file being written.
    pending: u64,
    /// Its size, for the padding.
    current_size: u64,
}

fn octal(field: &mut [u8], value: u64) -> std::io::Result<()> {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    if text.len() > digits {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{value} does not fit a tar header field")));
    }
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
    Ok(())
}

impl<W: Write> TarWriter<W> {
    fn new(out: W, mtime: u64) -> TarWriter<W> {
        TarWriter { out, mtime, bytes: 0, pending: 0, current_size: 0 }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.out.write_all(data)?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    fn header(&mut self, path: &str, size: u64, typeflag: u8, mode: u32) -> std::io::Result<()> {
        debug_assert_eq!(self.pending, 0, "previous file not finished");
        let mut h = [0u8; TAR_BLOCK];
        let (prefix, name) = if path.len() <= 100 {
            ("", path)
        } else {
            // Split at a '/' so that the name fits 100 bytes and the prefix 155.
            let split = path
                .char_indices()
                .filter(|&(i, c)| c == '/' && i <= 155 && path.len() - i - 1 <= 100 && i > 0)
                .map(|(i, _)| i)
                .next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("path {path:?} too long for ustar")))?;
            (&path[..split], &path[split + 1..])
        };
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], u64::from(mode))?;
        octal(&mut h[108..116], 0)?;
        octal(&mut h[116..124], 0)?;
        octal(&mut h[124..136], size)?;
        octal(&mut h[136..148], self.mtime)?;
        h[148..156].fill(b' ');
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..273].copy_from_slice(b"postgres");
        h[297..305].copy_from_slice(b"postgres");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        let text = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(text.as_bytes());
        self.write(&h)
    }

    fn dir(&mut self, path: &str) -> std::io::Result<()> {
        self.header(&format!("{path}/"), 0, b'5', 0o700)
    }

    /// Starts a file of `size` bytes; follow with [`data`](Self::data) calls totalling `size`.
    fn begin_file(&mut self, path: &str, size: u64) -> std::io::Result<()> {
        self.header(path, size, b'0', 0o600)?;
        self.pending = size;
        self.current_size = size;
        self.end_file_if_done()
    }

    fn data(&mut self, data: &[u8]) -> std::io::Result<()> {
        assert!(data.len() as u64 <= self.pending, "more file data than announced");
        self.write(data)?;
        self.pending -= data.len() as u64;
        self.end_file_if_done()
    }

    fn zeros(&mut self, mut n: u64) -> std::io::Result<()> {
        const ZEROS: [u8; BLCKSZ] = [0u8; BLCKSZ];
        while n > 0 {
            let k = n.min(ZEROS.len() as u64);
            self.data(&ZEROS[..k as usize])?;
            n -= k;
        }
        Ok(())
    }

    fn end_file_if_done(&mut self) -> std::io::Result<()> {
        if self.pending == 0 {
            let pad = (TAR_BLOCK - (self.current_size % TAR_BLOCK as u64) as usize) % TAR_BLOCK;
            self.write(&[0u8; TAR_BLOCK][..pad])?;
            self.current_size = 0;
        }
        Ok(())
    }

    fn file(&mut self, path: &str, data: &[u8]) -> std::io::Result<()> {
        self.begin_file(path, data.len() as u64)?;
        if !data.is_empty() {
            self.data(data)?;
        }
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<u64> {
        self.write(&[0u8; 2 * TAR_BLOCK])?;
        self.out.flush()?;
        Ok(self.bytes)
    }
}

// ---------------------------------------------------------------------------
// the backup

const PG_VERSION: &[u8] = b"15\n";

/// Directories of an empty data directory, parents first (initdb's `subdirs`).
const SKELETON: &[&str] = &[
    "global",
    "base",
    "pg_wal",
    "pg_wal/archive_status",
    "pg_commit_ts",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
    "pg_twophase",
    "pg_multixact",
    "pg_multixact/members",
    "pg_multixact/offsets",
    "pg_replslot",
    "pg_tblspc",
    "pg_stat",
    "pg_stat_tmp",
    "pg_xact",
    "pg_logical",
    "pg_logical/snapshots",
    "pg_logical/mappings",
];

const PG_HBA_CONF: &str = "\
# Written by pageserver_ext's backup: trust for local and loopback connections.
# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
host    all             all             ::1/128                 trust
local   replication     all                                     trust
host    replication     all             127.0.0.1/32            trust
host    replication     all             ::1/128                 trust
";

const POSTGRESQL_AUTO_CONF: &str = "\
# Do not edit this file manually!
# It will be overwritten by the ALTER SYSTEM command.
";

/// The directory of database `db` in tablespace `spc`, relative to the data directory.
fn db_path(spc: u32, db: u32, catalog_version: u32) -> String {
    match spc {
        GLOBALTABLESPACE_OID => "global".to_string(),
        DEFAULTTABLESPACE_OID => format!("base/{db}"),
        _ => format!("pg_tblspc/{spc}/PG_15_{catalog_version}/{db}"),
    }
}

/// The file of segment `segno` of a relation fork (`md.c`'s naming).
fn rel_file_name(dir: &str, rel: RelTag, segno: u32) -> String {
    let fork = match rel.fork {
        MAIN_FORKNUM => "",
        FSM_FORKNUM => "_fsm",
        VISIBILITYMAP_FORKNUM => "_vm",
        INIT_FORKNUM => "_init",
        // Not a PostgreSQL 15 fork: caught before naming.
        _ => "_invalid",
    };
    if segno == 0 {
        format!("{dir}/{}{fork}", rel.rel_node)
    } else {
        format!("{dir}/{}{fork}.{segno}", rel.rel_node)
    }
}

struct Backup<'a, W: Write> {
    timeline: &'a Timeline,
    lsn: Lsn,
    tar: TarWriter<W>,
    dirs: BTreeSet<String>,
    stats: BackupStats,
    relseg_size: u32,
    catalog_version: u32,
    /// Clonebackup: the relation files named instead of written.
    clone_files: Option<Vec<CloneFile>>,
}

impl<W: Write> Backup<'_, W> {
    /// Emits `path` and its parents unless already emitted.
    fn ensure_dir(&mut self, path: &str) -> Result<(), BackupError> {
        if self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.ensure_dir(parent)?;
        }
        self.tar.dir(path)?;
        self.dirs.insert(path.to_string());
        self.stats.dirs += 1;
        Ok(())
    }

    fn file(&mut self, path: &str, data: &[u8]) -> Result<(), BackupError> {
        self.tar.file(path, data)?;
        self.stats.files += 1;
        Ok(())
    }

    /// Writes fork `source`'s blocks as the files of fork `target`: a bulk
    /// read ([`Timeline::read_in_order`]), so pages are rebuilt in parallel
    /// batches while the tar streams the ones before them.
    fn rel_files(&mut self, dir: &str, source: RelTag, target: RelTag) -> Result<(), BackupError> {
        let nblocks = self.timeline.get_rel_size(source, self.lsn)?.unwrap_or(0);
        if let Some(files) = &mut self.clone_files {
            let relseg_size = self.relseg_size;
            let segments = nblocks.div_ceil(relseg_size).max(1);
            for segno in 0..segments {
                let first_block = segno * relseg_size;
                let path = rel_file_name(dir, target, segno);
                files.push(CloneFile { path, source, first_block, nblocks: (nblocks - first_block).min(relseg_size) });
            }
            self.stats.rel_files += u64::from(segments);
            return Ok(());
        }
        if nblocks == 0 {
            self.tar.begin_file(&rel_file_name(dir, target, 0), 0)?;
            self.stats.files += 1;
            self.stats.rel_files += 1;
            return Ok(());
        }
        let keys: Vec<Key> = (0..nblocks).map(|blkno| Key::rel_block(source, blkno)).collect();
        let (timeline, lsn, relseg_size) = (self.timeline, self.lsn, self.relseg_size);
        let mut blkno = 0u32;
        let mut files = 0u64;
        let reads = timeline.read_in_order(&keys, lsn, |key, page| {
            if blkno.is_multiple_of(relseg_size) {
                let segment_blocks = (nblocks - blkno).min(relseg_size);
                self.tar.begin_file(&rel_file_name(dir, target, blkno / relseg_size), u64::from(segment_blocks) * BLCKSZ as u64)?;
                files += 1;
            }
            match page {
                Some(page) if page.len() != BLCKSZ => {
                    return Err(invalid("page", format!("{key:?} at {lsn} is {} bytes, not {BLCKSZ}", page.len())));
                }
                Some(page) => self.tar.data(&page)?,
                None => self.tar.zeros(BLCKSZ as u64)?,
            }
            blkno += 1;
            Ok(())
        })?;
        self.stats.files += files;
        self.stats.rel_files += files;
        self.stats.rel_blocks += u64::from(nblocks);
        self.stats.reads += reads;
        Ok(())
    }

    /// One database directory: PG_VERSION and the relmapper file if it has
    /// one, then (Fullbackup) its relation files.
    fn database(&mut self, spc: u32, db: u32, kind: BackupKind) -> Result<(), BackupError> {
        let dir = db_path(spc, db, self.catalog_version);
        self.ensure_dir(&dir)?;
        if let Some(map) = self.timeline.get(Key::relmap_file(spc, db), self.lsn)? {
            if spc != GLOBALTABLESPACE_OID {
                self.file(&format!("{dir}/PG_VERSION"), PG_VERSION)?;
            }
            self.file(&format!("{dir}/pg_filenode.map"), &map)?;
        }
        if kind == BackupKind::Basebackup {
            return Ok(());
        }
        let rels = self.timeline.list_rels(spc, db, self.lsn)?;
        let unlogged: BTreeSet<u32> = rels.iter().filter(|r| r.fork == INIT_FORKNUM).map(|r| r.rel_node).collect();
        for rel in rels {
            if rel.fork > INIT_FORKNUM {
                return Err(invalid("relation directory", format!("{rel} has fork number {}", rel.fork)));
            }
            if unlogged.contains(&rel.rel_node) {
                // As ResetUnloggedRelations leaves it: the init fork and a copy as the main fork.
                if rel.fork == INIT_FORKNUM {
                    self.rel_files(&dir, rel, rel)?;
                    self.rel_files(&dir, rel, rel.with_fork(MAIN_FORKNUM))?;
                }
                continue;
            }
            self.rel_files(&dir, rel, rel)?;
        }
        Ok(())
    }
}

/// Writes a tar of `timeline` as of `lsn` (see the module docs for the
/// layout). `lsn` must be a record boundary at or below the timeline's
/// `last_record_lsn` (wait for it first) and not below its GC cutoff.
pub fn write_backup_tar<W: Write>(timeline: &Timeline, lsn: Lsn, kind: BackupKind, out: W) -> Result<BackupStats, BackupError> {
    let control_bytes = timeline.get(Key::control_file(), lsn)?.ok_or(BackupError::Missing { what: "pg_control", lsn })?;
    let control = parse_control_file(&control_bytes)?;
    let checkpoint = match timeline.get(Key::checkpoint(), lsn)? {
        Some(bytes) => CheckPoint::decode(&bytes).map_err(|msg| invalid("checkpoint", msg))?,
        // Only pg_control at hand: its copy of the last checkpoint.
        None => control.checkpoint_copy,
    };
    let now = SystemTime::now();
    let shutdown = shutdown_checkpoint(&control_bytes, &checkpoint, lsn, now)?;
    let twophase = timeline.list_twophase(lsn)?;

    let mtime = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut b = Backup {
        timeline,
        lsn,
        tar: TarWriter::new(out, mtime),
        dirs: BTreeSet::new(),
        stats: BackupStats {
            checkpoint_lsn: shutdown.checkpoint_lsn,
            end_lsn: shutdown.end_lsn,
            wal_segments: shutdown.wal_segments.iter().map(|s| s.name.clone()).collect(),
            ..Default::default()
        },
        relseg_size: control.relseg_size,
        catalog_version: control.catalog_version_no,
        clone_files: (kind == BackupKind::Clonebackup).then(Vec::new),
    };

    b.file("PG_VERSION", PG_VERSION)?;
    let mut conf = String::from(
        "# Written by pageserver_ext's backup. Every setting is at its default;\n\
         # add your own below (port, listen_addresses, shared_buffers, ...).\n",
    );
    if !twophase.is_empty() {
        let n = (twophase.len() as u32).max(control.max_prepared_xacts);
        conf.push_str(&format!("# {} prepared transactions are in the backup:\nmax_prepared_transactions = {n}\n", twophase.len()));
    }
    b.file("postgresql.conf", conf.as_bytes())?;
    b.file("postgresql.auto.conf", POSTGRESQL_AUTO_CONF.as_bytes())?;
    b.file("pg_hba.conf", PG_HBA_CONF.as_bytes())?;
    b.file("pg_ident.conf", b"")?;
    for dir in SKELETON {
        b.ensure_dir(dir)?;
    }

    // Shared catalogs first, then the databases.
    let mut dbs: BTreeSet<(u32, u32)> = timeline.list_dbs(lsn)?.into_iter().collect();
    dbs.remove(&(GLOBALTABLESPACE_OID, 0));
    b.database(GLOBALTABLESPACE_OID, 0, kind)?;
    for (spc, db) in dbs {
        if spc == GLOBALTABLESPACE_OID {
            return Err(invalid("database directory", format!("database {db} in the global tablespace")));
        }
        b.database(spc, db, kind)?;
    }

    for slru in SlruKind::ALL {
        for segno in timeline.list_slru_segments(slru, lsn)? {
            let Some(segment) = timeline.get_slru_segment(slru, segno, lsn)? else { continue };
            b.file(&format!("{}/{segno:04X}", slru.dir_name()), &segment)?;
        }
    }
    for xid in twophase {
        let state = timeline.get(Key::twophase_file(xid), lsn)?.ok_or(BackupError::Missing { what: "two-phase state file", lsn })?;
        // Stored as the PREPARE record carries it; the file adds a CRC-32C trailer.
        let mut file = state.to_vec();
        file.extend_from_slice(&crc32c::crc32c(&state).to_le_bytes());
        b.file(&format!("pg_twophase/{xid:08X}"), &file)?;
    }
    for segment in &shutdown.wal_segments {
        b.tar.begin_file(&format!("pg_wal/{}", segment.name), segment.size)?;
        let mut at = 0;
        for (offset, bytes) in &segment.chunks {
            b.tar.zeros(offset - at)?;
            b.tar.data(bytes)?;
            at = offset + bytes.len() as u64;
        }
        b.tar.zeros(segment.size - at)?;
        b.stats.files += 1;
    }
    if let Some(files) = b.clone_files.take() {
        let mut manifest = String::from(CLONE_MANIFEST_HEADER);
        manifest.push('\n');
        for file in &files {
            manifest.push_str(&file.to_line());
            manifest.push('\n');
        }
        b.file(CLONE_MANIFEST, manifest.as_bytes())?;
    }
    b.file("global/pg_control", &shutdown.control_file)?;

    let Backup { tar, mut stats, .. } = b;
    stats.tar_bytes = tar.finish()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control_file(seg_size: u32) -> Vec<u8> {
        ControlFile {
            system_identifier: 0x1234_5678_9abc_def0,
            pg_control_version: crate::pg_control::PG_CONTROL_VERSION,
            catalog_version_no: 202209061,
            state: crate::pg_control::DB_IN_ARCHIVE_RECOVERY,
            blcksz: 8192,
            relseg_size: 131072,
            xlog_blcksz: 8192,
            xlog_seg_size: seg_size,
            backup_start_point: Lsn(0x100),
            ..ControlFile::default()
        }
        .encode()
    }

    fn checkpoint() -> CheckPoint {
        CheckPoint {
            this_timeline_id: 1,
            prev_timeline_id: 1,
            full_page_writes: true,
            next_xid: 740,
            next_oid: 16400,
            oldest_active_xid: 739,
            ..Default::default()
        }
    }

    #[test]
    fn positions() {
        let seg = 16 << 20;
        assert_eq!(checkpoint_position(Lsn(0x0100_0000), seg).unwrap(), Lsn(0x0100_0028));
        assert_eq!(checkpoint_position(Lsn(0x0100_2000), seg).unwrap(), Lsn(0x0100_2018));
        assert_eq!(checkpoint_position(Lsn(0x0100_2018), seg).unwrap(), Lsn(0x0100_2018));
        assert_eq!(checkpoint_position(Lsn(0x0100_0028), seg).unwrap(), Lsn(0x0100_0028));
        assert!(checkpoint_position(Lsn(0x0100_0020), seg).is_err());
        assert!(checkpoint_position(Lsn(0x0100_2010), seg).is_err());
        assert!(checkpoint_position(Lsn(0x0100_2404), seg).is_err());
        assert!(checkpoint_position(Lsn(0), seg).is_err());
    }

    /// The record decodes with the crate's own decoder, at every kind of position.
    #[test]
    fn record_decodes_and_control_file_is_rewritten() {
        let seg: u64 = 16 << 20;
        let control = control_file(seg as u32);
        for lsn in [0x0300_0000u64, 0x0300_0028, 0x0300_2000, 0x0300_2f00, 0x0300_4000 - 56, 0x0400_0000 - 64] {
            let s =
                shutdown_checkpoint(&control, &checkpoint(), Lsn(lsn), UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)).unwrap();
            let parsed = ControlFile::parse(&s.control_file).unwrap();
            let rewritten = ControlFile {
                state: DB_SHUTDOWNED,
                time: 1_700_000_000,
                checkpoint: s.checkpoint_lsn,
                checkpoint_copy: s.checkpoint,
                backup_start_point: Lsn(0),
                ..ControlFile::parse(&control).unwrap()
            };
            assert_eq!(parsed, rewritten);
            assert_eq!(parsed.checkpoint_copy.redo, s.checkpoint_lsn);
            assert_eq!(parsed.checkpoint_copy.next_oid, 16400);
            assert_eq!(parsed.checkpoint_copy.oldest_active_xid, 0);
            // Decode from the record's start with the stream decoder.
            let mut bytes = Vec::new();
            for segment in &s.wal_segments {
                bytes.extend_from_slice(&segment.to_bytes());
            }
            // From the page start, as pg_waldump reads: the header's
            // continuation length must lead to the record.
            let file_start = s.checkpoint_lsn.0 / seg * seg;
            let page = s.checkpoint_lsn.0 - s.checkpoint_lsn.0 % XLOG_BLCKSZ;
            let mut decoder = crate::wal::WalStreamDecoder::with_segment_size(Lsn(page), seg);
            decoder.feed(&bytes[(page - file_start) as usize..]);
            let rec = decoder.next_record().unwrap().expect("a record");
            assert_eq!(rec.start_lsn, s.checkpoint_lsn);
            assert_eq!(rec.end_lsn, s.end_lsn);
            assert_eq!(rec.xl_rmid, rmgr::XLOG);
            assert_eq!(CheckPoint::decode(rec.main_data()).unwrap(), s.checkpoint);
            let crosses_segment = lsn == 0x0400_0000 - 64;
            assert_eq!(s.wal_segments.len(), if crosses_segment { 2 } else { 1 }, "{lsn:X}");
        }
    }
}

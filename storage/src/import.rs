//! Bootstrapping a timeline from a PostgreSQL 15 base backup tar.
//!
//! This module owns the mapping from the files of a data directory, as a
//! base backup carries them, onto the key space ([`crate::key`]), and the
//! parsing of the few files whose contents it must understand
//! (`backup_label`, two-phase state files, and `global/pg_control` through
//! [`crate::pg_control`]).
//! [`import_basebackup_tar`] reads the tar that `pg_basebackup -Ft -X none`
//! writes as `base.tar` (and that `BASE_BACKUP` streams for the main
//! tablespace) and puts every version at one LSN, the backup's start LSN:
//!
//! | file | keys |
//! |---|---|
//! | `base/<db>/<relnode>[_fsm\|_vm\|_init][.<segno>]` | one page image per block (all of them, zero pages too), the fork's size, the fork in `rel_dir(1663, db)` |
//! | `global/<relnode>…` | the same with spcnode 1664, db 0 |
//! | `base/<db>/` (any entry) | `(1663, db)` in the database directory |
//! | `global/` (any entry, `pg_control` included) | `(1664, 0)` in the database directory: it lists every (spc, db) that has a relation directory, the shared catalogs included |
//! | `base/<db>/pg_filenode.map`, `global/pg_filenode.map` | `relmap_file(1663, db)`, `relmap_file(1664, 0)` (512 bytes) |
//! | `pg_xact/XXXX`, `pg_multixact/offsets/XXXX`, `pg_multixact/members/XXXX` | SLRU blocks, segment sizes, SLRU directories |
//! | `pg_twophase/XXXXXXXX` | `twophase_file(xid)` and the two-phase directory; the value is the state data without the file's CRC-32C trailer (checked), as the `PREPARE` record carries it, so WAL ingest and import store the same thing |
//! | `global/pg_control` | `control_file()` (the whole 8192-byte file) and `checkpoint()` (the 88-byte `CheckPoint` at `checkPointCopy`); its CRC is checked |
//!
//! Directory-like values use the formats of [`crate::repo::dirs`]. Every
//! directory value is written, empty ones too, so a timeline that was
//! imported answers "no relations" rather than "never heard of it".
//!
//! `backup_label`, when present, must start at the LSN given (`START WAL
//! LOCATION`). Tablespaces other than `pg_default` and `pg_global` are
//! refused (`pg_tblspc/<oid>` entries, a non-empty `tablespace_map`). Files
//! that are not data (configuration, logs, `pg_wal`, `pg_replslot`,
//! `pg_stat_tmp`, `pg_commit_ts`, `pg_subtrans`, ...) are skipped, and so
//! are those the server re-creates (`pg_internal.init`, temporary relations,
//! `pgsql_tmp`). Anything else under `base/` or `global/`, and every data
//! file of a wrong size, is an error naming the file.
//!
//! A tar stream cut at an entry boundary reads like a shorter archive (the
//! `tar` format has no length up front); since `BASE_BACKUP` sends
//! `global/pg_control` last, such a cut shows as "pg_control is missing".
//!
//! Relation files of 1 MiB or more, nearly all of a large backup, are
//! written straight to image layer files as they are read
//! ([`crate::repo::ImageImport`]) and published when the whole tar has been
//! checked; everything else goes into the timeline's open in-memory layer.
//! So an import needs memory for the small files only, whatever the size
//! of the database.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::key::{
    Key, RelTag, SlruKind, DEFAULTTABLESPACE_OID, FSM_FORKNUM, GLOBALTABLESPACE_OID, INIT_FORKNUM, MAIN_FORKNUM, VISIBILITYMAP_FORKNUM,
};
use crate::lsn::Lsn;
use crate::pg_control::{offsets, ControlFile, PG_CONTROL_FILE_SIZE, SIZE_OF_CHECKPOINT};
use crate::repo::dirs::{encode_db_dir, encode_nblocks, encode_rel_dir, encode_u32_dir};
use crate::repo::{RepoError, TimelineWriter};
use crate::value::Value;
use crate::wal::ingest::SLRU_PAGES_PER_SEGMENT;
use crate::wal::record::u32_at;
use crate::wal::BLCKSZ;

/// Blocks per relation segment file (`RELSEG_SIZE`, 1 GiB of 8 KiB blocks):
/// the only segment size an import accepts.
pub const RELSEG_SIZE: u32 = 131_072;
/// Size of `pg_filenode.map` (`RELMAPPER_FILESIZE`).
pub const RELMAPPER_FILESIZE: usize = 512;
/// `TWOPHASE_MAGIC`.
const TWOPHASE_MAGIC: u32 = 0x57F9_4534;

/// Progress of an import, readable from another thread while it runs.
#[derive(Debug, Default)]
pub struct ImportProgress {
    /// Bytes of the tar stream read so far.
    pub bytes_done: AtomicU64,
    /// Size of the whole tar stream, if the caller knows it (never set here).
    pub bytes_total: AtomicU64,
}

/// What an import stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportStats {
    /// Files mapped onto keys (skipped files are not counted).
    pub files: u64,
    /// Bytes of the tar stream read.
    pub bytes: u64,
    /// Relation forks.
    pub relations: u64,
    /// Relation blocks (SLRU pages not included).
    pub blocks: u64,
    /// Image layer files the relation blocks were written to.
    pub image_layers: usize,
}

/// Why an import failed. Errors about one file name it (its path in the tar).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The tar stream itself could not be read (I/O error, not a tar, truncated).
    #[error("reading the base backup tar{}: {source}", at.as_deref().map(|p| format!(" at {p}")).unwrap_or_default())]
    Read { at: Option<String>, source: std::io::Error },
    /// A file in the backup is not what its name says it is.
    #[error("invalid file {path} in the base backup: {msg}")]
    InvalidFile { path: String, msg: String },
    /// Something the page server does not support (tablespaces).
    #[error("unsupported content {path} in the base backup: {msg}")]
    Unsupported { path: String, msg: String },
    /// The backup as a whole does not fit the request (missing pg_control, LSN mismatch, non-empty timeline).
    #[error("cannot import the base backup: {0}")]
    Backup(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

fn invalid(path: &str, msg: impl Into<String>) -> ImportError {
    ImportError::InvalidFile { path: path.to_string(), msg: msg.into() }
}

/// Parses and checks `global/pg_control` ([`ControlFile::parse`]); an
/// import also needs 1 GiB relation segments ([`RELSEG_SIZE`]).
fn parse_control_file(bytes: &[u8]) -> Result<ControlFile, String> {
    let control = ControlFile::parse(bytes)?;
    if control.relseg_size != RELSEG_SIZE {
        return Err(format!("segment size {} blocks is not {RELSEG_SIZE}", control.relseg_size));
    }
    Ok(control)
}

/// The `START WAL LOCATION` of a `backup_label`.
pub fn parse_backup_label(text: &str) -> Result<Lsn, String> {
    let line = text.lines().find_map(|l| l.strip_prefix("START WAL LOCATION:")).ok_or("no START WAL LOCATION line")?;
    let lsn = line.split_whitespace().next().ok_or("START WAL LOCATION is empty")?;
    lsn.parse::<Lsn>().map_err(|e| format!("START WAL LOCATION {lsn:?}: {e}"))
}

/// What a path in the tar is.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    /// A segment of a relation fork.
    Rel {
        rel: RelTag,
        segno: u32,
    },
    /// The directory of a database, or a file in it that is not a relation.
    DbMarker {
        spc: u32,
        db: u32,
    },
    RelMap {
        spc: u32,
        db: u32,
    },
    Control,
    Slru {
        kind: SlruKind,
        segno: u32,
    },
    TwoPhase {
        xid: u32,
    },
    BackupLabel,
    TablespaceMap,
    Tablespace,
    Skip,
}

/// `<relnode>[_fsm|_vm|_init][.<segno>]`; `None` if the name is not that.
fn parse_rel_file_name(name: &str) -> Option<(u32, u8, u32)> {
    fn number(s: &str) -> Option<u32> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
            return None;
        }
        s.parse().ok()
    }
    let (stem, segno) = match name.split_once('.') {
        Some((stem, seg)) => (stem, number(seg).filter(|s| *s > 0)?),
        None => (name, 0),
    };
    let (rel, fork) = match stem.split_once('_') {
        Some((rel, "fsm")) => (rel, FSM_FORKNUM),
        Some((rel, "vm")) => (rel, VISIBILITYMAP_FORKNUM),
        Some((rel, "init")) => (rel, INIT_FORKNUM),
        Some(_) => return None,
        None => (stem, MAIN_FORKNUM),
    };
    Some((number(rel).filter(|r| *r > 0)?, fork, segno))
}

/// `t<backend>_<relnode>...`: a temporary relation's file.
fn is_temp_rel_file(name: &str) -> bool {
    name.strip_prefix('t').and_then(|rest| rest.split_once('_')).is_some_and(|(backend, rest)| {
        !backend.is_empty() && backend.bytes().all(|b| b.is_ascii_digit()) && parse_rel_file_name(rest).is_some()
    })
}

fn hex_name(name: &str, min: usize, max: usize) -> Option<u32> {
    if name.len() < min || name.len() > max || !name.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)) {
        return None;
    }
    u32::from_str_radix(name, 16).ok()
}

fn classify(path: &str, is_dir: bool) -> Result<Entry, ImportError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    let db_number = |s: &str| parse_rel_file_name(s).filter(|(_, fork, seg)| *fork == MAIN_FORKNUM && *seg == 0).map(|(n, ..)| n);
    Ok(match parts.as_slice() {
        ["global"] => Entry::DbMarker { spc: GLOBALTABLESPACE_OID, db: 0 },
        ["global", "pg_control"] => Entry::Control,
        ["global", "pg_filenode.map"] => Entry::RelMap { spc: GLOBALTABLESPACE_OID, db: 0 },
        ["global", name] if name.starts_with("pg_internal.init") => Entry::Skip,
        ["global", name] => match parse_rel_file_name(name) {
            Some((rel, fork, segno)) if !is_dir => Entry::Rel { rel: RelTag::new(GLOBALTABLESPACE_OID, 0, rel, fork), segno },
            _ => return Err(invalid(path, "not a relation file, pg_control or pg_filenode.map")),
        },
        ["global", ..] => return Err(invalid(path, "unexpected entry under global/")),
        ["base"] | ["base", "pgsql_tmp", ..] => Entry::Skip,
        ["base", db] => match db_number(db) {
            Some(db) if is_dir => Entry::DbMarker { spc: DEFAULTTABLESPACE_OID, db },
            _ => return Err(invalid(path, "not a database directory (base/<oid>/)")),
        },
        ["base", db, name] => {
            let db = db_number(db).ok_or_else(|| invalid(path, "not in a database directory (base/<oid>/)"))?;
            match *name {
                "PG_VERSION" => Entry::DbMarker { spc: DEFAULTTABLESPACE_OID, db },
                "pg_filenode.map" => Entry::RelMap { spc: DEFAULTTABLESPACE_OID, db },
                _ if name.starts_with("pg_internal.init") || is_temp_rel_file(name) => Entry::Skip,
                _ => match parse_rel_file_name(name) {
                    Some((rel, fork, segno)) if !is_dir => Entry::Rel { rel: RelTag::new(DEFAULTTABLESPACE_OID, db, rel, fork), segno },
                    _ => return Err(invalid(path, "unknown file in a database directory (expected <relnode>[_fsm|_vm|_init][.<segno>])")),
                },
            }
        }
        ["base", ..] => return Err(invalid(path, "unexpected entry under base/")),
        ["pg_xact"] | ["pg_multixact"] | ["pg_multixact", "offsets"] | ["pg_multixact", "members"] | ["pg_twophase"] => Entry::Skip,
        ["pg_xact", seg] => {
            Entry::Slru { kind: SlruKind::Clog, segno: hex_name(seg, 4, 6).ok_or_else(|| invalid(path, "not an SLRU segment name"))? }
        }
        ["pg_multixact", "offsets", seg] => Entry::Slru {
            kind: SlruKind::MultiXactOffsets,
            segno: hex_name(seg, 4, 6).ok_or_else(|| invalid(path, "not an SLRU segment name"))?,
        },
        ["pg_multixact", "members", seg] => Entry::Slru {
            kind: SlruKind::MultiXactMembers,
            segno: hex_name(seg, 4, 6).ok_or_else(|| invalid(path, "not an SLRU segment name"))?,
        },
        ["pg_twophase", name] => {
            Entry::TwoPhase { xid: hex_name(name, 8, 8).ok_or_else(|| invalid(path, "not a two-phase state file name"))? }
        }
        ["backup_label"] => Entry::BackupLabel,
        ["tablespace_map"] => Entry::TablespaceMap,
        ["pg_tblspc"] => Entry::Skip,
        ["pg_tblspc", ..] => Entry::Tablespace,
        _ => Entry::Skip,
    })
}

fn read_all(entry: &mut impl Read, path: &str, size: u64, limit: usize) -> Result<Vec<u8>, ImportError> {
    if size > limit as u64 {
        return Err(invalid(path, format!("{size} bytes, larger than the {limit} expected")));
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry.read_to_end(&mut buf).map_err(|source| ImportError::Read { at: Some(path.to_string()), source })?;
    if buf.len() as u64 != size {
        return Err(invalid(path, format!("read {} bytes, the tar header says {size}", buf.len())));
    }
    Ok(buf)
}

/// Counts the bytes read into the progress.
struct Counting<'a, R> {
    inner: R,
    progress: &'a ImportProgress,
    count: u64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        self.progress.bytes_done.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// State gathered over the tar.
#[derive(Default)]
struct Gathered {
    dbs: BTreeSet<(u32, u32)>,
    /// Per fork: segment number → (blocks, path).
    rels: BTreeMap<RelTag, BTreeMap<u32, (u32, String)>>,
    slru: BTreeMap<SlruKind, BTreeSet<u32>>,
    twophase: BTreeSet<u32>,
    control: Option<ControlFile>,
}

/// Imports every file of a PostgreSQL 15 base backup tar (the format of
/// `pg_basebackup -Ft -X none`'s `base.tar`, which is also what
/// `BASE_BACKUP` streams for the main tablespace) into `writer` at `lsn`
/// (the backup's start LSN), then calls `finish_lsn(lsn)`.
///
/// The timeline must be empty (no ancestor, nothing ingested). On error
/// nothing is published (`finish_lsn` is not called), but versions may have
/// been put: drop the timeline rather than reuse it.
pub fn import_basebackup_tar<R: Read>(
    writer: &mut TimelineWriter<'_>,
    tar: R,
    lsn: Lsn,
    progress: &ImportProgress,
) -> Result<ImportStats, ImportError> {
    let timeline = writer.timeline();
    if !lsn.is_valid() {
        return Err(ImportError::Backup("the start LSN is 0/0".into()));
    }
    if timeline.ancestor().is_some() || timeline.last_record_lsn().is_valid() {
        return Err(ImportError::Backup(format!(
            "timeline {} is not empty (last_record_lsn {}{})",
            timeline.id(),
            timeline.last_record_lsn(),
            if timeline.ancestor().is_some() { ", a branch" } else { "" }
        )));
    }
    let mut stats = ImportStats::default();
    // Relation files of some size go straight to image layer files.
    let mut images = timeline.import_images(lsn);
    let mut g = Gathered::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut archive = tar::Archive::new(Counting { inner: tar, progress, count: 0 });
    let entries = archive.entries().map_err(|source| ImportError::Read { at: None, source })?;
    let mut last_path: Option<String> = None;
    for entry in entries {
        let mut entry =
            entry.map_err(|source| ImportError::Read { at: last_path.as_ref().map(|p| format!("the entry after {p}")), source })?;
        let path = match std::str::from_utf8(&entry.path_bytes()) {
            Ok(p) => p.to_string(),
            Err(_) => return Err(invalid(&String::from_utf8_lossy(&entry.path_bytes()), "path is not UTF-8")),
        };
        last_path = Some(path.clone());
        let kind = entry.header().entry_type();
        let is_dir = kind.is_dir();
        let what = classify(&path, is_dir)?;
        let size = entry.size();
        match what {
            Entry::Skip => continue,
            Entry::Tablespace => {
                return Err(ImportError::Unsupported {
                    path,
                    msg: "tablespaces other than pg_default and pg_global are not supported".into(),
                })
            }
            Entry::DbMarker { spc, db } => {
                g.dbs.insert((spc, db));
                continue;
            }
            _ => {}
        }
        if !kind.is_file() {
            return Err(invalid(&path, format!("expected a regular file, found tar entry type {:?}", kind)));
        }
        if !seen.insert(path.trim_start_matches("./").to_string()) {
            return Err(invalid(&path, "appears twice in the tar"));
        }
        match what {
            Entry::Rel { rel, segno } => {
                if size % BLCKSZ as u64 != 0 {
                    return Err(invalid(&path, format!("size {size} is not a multiple of {BLCKSZ}")));
                }
                let nblocks = size / BLCKSZ as u64;
                if nblocks > u64::from(RELSEG_SIZE) {
                    return Err(invalid(&path, format!("{nblocks} blocks, more than a segment holds ({RELSEG_SIZE})")));
                }
                let nblocks = nblocks as u32;
                let first = segno
                    .checked_mul(RELSEG_SIZE)
                    .filter(|f| f.checked_add(nblocks).is_some_and(|end| end < u32::MAX))
                    .ok_or_else(|| invalid(&path, "segment number beyond the largest relation"))?;
                g.dbs.insert((rel.spc_node, rel.db_node));
                let direct = images.takes(size);
                for i in 0..nblocks {
                    let mut page = vec![0u8; BLCKSZ];
                    entry.read_exact(&mut page).map_err(|source| ImportError::Read { at: Some(path.clone()), source })?;
                    if direct {
                        images.put_block(rel, first + i, Bytes::from(page))?;
                    } else {
                        writer.put(Key::rel_block(rel, first + i), lsn, Value::Image(Bytes::from(page)))?;
                    }
                }
                stats.blocks += u64::from(nblocks);
                g.rels.entry(rel).or_default().insert(segno, (nblocks, path));
            }
            Entry::RelMap { spc, db } => {
                let bytes = read_all(&mut entry, &path, size, RELMAPPER_FILESIZE)?;
                if bytes.len() != RELMAPPER_FILESIZE {
                    return Err(invalid(&path, format!("{} bytes, not {RELMAPPER_FILESIZE}", bytes.len())));
                }
                g.dbs.insert((spc, db));
                writer.put(Key::relmap_file(spc, db), lsn, Value::Image(Bytes::from(bytes)))?;
            }
            Entry::Control => {
                let bytes = read_all(&mut entry, &path, size, PG_CONTROL_FILE_SIZE)?;
                if bytes.len() != PG_CONTROL_FILE_SIZE {
                    return Err(invalid(&path, format!("{} bytes, not {PG_CONTROL_FILE_SIZE}", bytes.len())));
                }
                let info = parse_control_file(&bytes).map_err(|msg| invalid(&path, msg))?;
                g.dbs.insert((GLOBALTABLESPACE_OID, 0));
                // checkPointCopy as stored, not re-encoded.
                let checkpoint = &bytes[offsets::CHECKPOINT_COPY..offsets::CHECKPOINT_COPY + SIZE_OF_CHECKPOINT];
                writer.put(Key::checkpoint(), lsn, Value::Image(Bytes::copy_from_slice(checkpoint)))?;
                writer.put(Key::control_file(), lsn, Value::Image(Bytes::from(bytes)))?;
                g.control = Some(info);
            }
            Entry::Slru { kind, segno } => {
                let max = (SLRU_PAGES_PER_SEGMENT as usize) * BLCKSZ;
                let bytes = read_all(&mut entry, &path, size, max)?;
                if bytes.len() % BLCKSZ != 0 {
                    return Err(invalid(&path, format!("size {} is not a multiple of {BLCKSZ}", bytes.len())));
                }
                let bytes = Bytes::from(bytes);
                let nblocks = (bytes.len() / BLCKSZ) as u32;
                for blkno in 0..nblocks {
                    let at = blkno as usize * BLCKSZ;
                    writer.put(Key::slru_block(kind, segno, blkno), lsn, Value::Image(bytes.slice(at..at + BLCKSZ)))?;
                }
                writer.put(Key::slru_segment_size(kind, segno), lsn, Value::Image(encode_nblocks(nblocks)))?;
                g.slru.entry(kind).or_default().insert(segno);
            }
            Entry::TwoPhase { xid } => {
                // A state file is small: the header, subtransactions, relations, invalidations.
                let bytes = read_all(&mut entry, &path, size, 64 * 1024 * 1024)?;
                let data = check_twophase_file(&bytes).map_err(|msg| invalid(&path, msg))?;
                writer.put(Key::twophase_file(xid), lsn, Value::Image(Bytes::copy_from_slice(data)))?;
                g.twophase.insert(xid);
            }
            Entry::BackupLabel => {
                let bytes = read_all(&mut entry, &path, size, 64 * 1024)?;
                let text = String::from_utf8(bytes).map_err(|_| invalid(&path, "not UTF-8 text"))?;
                let start = parse_backup_label(&text).map_err(|msg| invalid(&path, msg))?;
                if start != lsn {
                    return Err(ImportError::Backup(format!(
                        "backup_label says the backup starts at {start}, but the import was asked for {lsn}"
                    )));
                }
                continue;
            }
            Entry::TablespaceMap => {
                let bytes = read_all(&mut entry, &path, size, 1024 * 1024)?;
                if bytes.iter().any(|b| !b.is_ascii_whitespace()) {
                    return Err(ImportError::Unsupported {
                        path,
                        msg: "tablespaces other than pg_default and pg_global are not supported".into(),
                    });
                }
                continue;
            }
            Entry::Skip | Entry::Tablespace | Entry::DbMarker { .. } => unreachable!("handled above"),
        }
        stats.files += 1;
    }
    stats.bytes = archive.into_inner().count;

    if g.control.is_none() {
        return Err(ImportError::Backup("global/pg_control is missing".into()));
    }
    // Relation forks: contiguous segments, all full but the last.
    let mut rel_dirs: BTreeMap<(u32, u32), BTreeSet<(u32, u8)>> = g.dbs.iter().map(|db| (*db, BTreeSet::new())).collect();
    for (rel, segments) in &g.rels {
        let mut nblocks = 0u32;
        let last = *segments.keys().next_back().expect("a fork has a segment");
        for segno in 0..=last {
            let Some((blocks, path)) = segments.get(&segno) else {
                let (_, path) = &segments[&last];
                return Err(invalid(path, format!("segment {segno} of relation {rel} is missing")));
            };
            if segno < last && *blocks != RELSEG_SIZE {
                return Err(invalid(path, format!("{blocks} blocks in a segment that is not the last (expected {RELSEG_SIZE})")));
            }
            nblocks = segno * RELSEG_SIZE + blocks;
        }
        writer.put(Key::rel_size(*rel), lsn, Value::Image(encode_nblocks(nblocks)))?;
        rel_dirs.entry((rel.spc_node, rel.db_node)).or_default().insert((rel.rel_node, rel.fork));
        stats.relations += 1;
    }
    for ((spc, db), rels) in &rel_dirs {
        writer.put(Key::rel_dir(*spc, *db), lsn, Value::Image(encode_rel_dir(rels)))?;
    }
    writer.put(Key::db_dir(), lsn, Value::Image(encode_db_dir(&g.dbs)))?;
    for kind in SlruKind::ALL {
        let segments = g.slru.remove(&kind).unwrap_or_default();
        writer.put(Key::slru_dir(kind), lsn, Value::Image(encode_u32_dir(&segments)))?;
    }
    writer.put(Key::twophase_dir(), lsn, Value::Image(encode_u32_dir(&g.twophase)))?;
    stats.image_layers = images.finish()?;
    writer.finish_lsn(lsn)?;
    Ok(stats)
}

/// Checks a two-phase state file (magic, `total_len`, CRC-32C trailer) and
/// returns its data without the trailer.
pub fn check_twophase_file(bytes: &[u8]) -> Result<&[u8], String> {
    // TwoPhaseFileHeader starts with magic u32, total_len u32.
    if bytes.len() < 8 + 4 {
        return Err(format!("{} bytes, too short for a two-phase state file", bytes.len()));
    }
    let magic = u32_at(bytes, 0);
    if magic != TWOPHASE_MAGIC {
        return Err(format!("magic {magic:08X} is not {TWOPHASE_MAGIC:08X}"));
    }
    let total_len = u32_at(bytes, 4) as usize;
    if total_len != bytes.len() {
        return Err(format!("header says {total_len} bytes, the file has {}", bytes.len()));
    }
    let (data, trailer) = bytes.split_at(bytes.len() - 4);
    let stored = u32_at(trailer, 0);
    let computed = crc32c::crc32c(data);
    if stored != computed {
        return Err(format!("incorrect CRC: stored {stored:08X}, computed {computed:08X}"));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::{Redo, RepoConfig, Repository, Timeline, TimelineId};
    use crate::value::WalRecordValue;

    /// Import stores only images: redo is never needed.
    struct NoRedo;

    impl Redo for NoRedo {
        fn apply(&self, key: Key, _base: Option<Bytes>, _records: &[(Lsn, WalRecordValue)]) -> Result<Bytes, crate::repo::RedoError> {
            Err(format!("no redo expected for {key:?}").into())
        }
    }

    const LSN: Lsn = Lsn(0x0300_0028);

    fn repo() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        // One page per image layer file (runs are split at the file size),
        // and every relation file is large enough to go to image layers.
        let conf = RepoConfig { fsync: false, target_file_size: 1, ..RepoConfig::default() };
        let repo = Repository::open(dir.path(), conf, Arc::new(NoRedo)).unwrap();
        (dir, repo)
    }

    /// A pg_control with a valid CRC whose checkpoint bytes are 1, 2, 3, ...
    fn control_file() -> Vec<u8> {
        use crate::pg_control::{control_file_crc, DB_IN_PRODUCTION, PG_CONTROL_VERSION};
        let mut b = ControlFile {
            system_identifier: 7_000_000_000_000_000_001,
            pg_control_version: PG_CONTROL_VERSION,
            state: DB_IN_PRODUCTION,
            checkpoint: Lsn(LSN.0 + 0x60),
            blcksz: 8192,
            relseg_size: RELSEG_SIZE,
            xlog_blcksz: 8192,
            xlog_seg_size: 16 << 20,
            ..ControlFile::default()
        }
        .encode();
        // Padding included: the import must store the bytes as they are.
        for (i, byte) in b[offsets::CHECKPOINT_COPY..offsets::CHECKPOINT_COPY + SIZE_OF_CHECKPOINT].iter_mut().enumerate() {
            *byte = i as u8 + 1;
        }
        let crc = control_file_crc(&b);
        b[offsets::CRC..offsets::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn pages(n: usize, seed: u8) -> Vec<u8> {
        (0..n * BLCKSZ).map(|i| seed.wrapping_add((i / 97) as u8)).collect()
    }

    fn twophase_file(xid: u32) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&TWOPHASE_MAGIC.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes()); // total_len, below
        data.extend_from_slice(&xid.to_le_bytes());
        data.resize(64, 0xAB);
        let total = (data.len() + 4) as u32;
        data[4..8].copy_from_slice(&total.to_le_bytes());
        let crc = crc32c::crc32c(&data);
        data.extend_from_slice(&crc.to_le_bytes());
        data
    }

    enum E {
        File(&'static str, Vec<u8>),
        Dir(&'static str),
        Symlink(&'static str, &'static str),
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_ustar();
            match e {
                E::File(path, data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    h.set_mode(0o600);
                    b.append_data(&mut h, path, data.as_slice()).unwrap();
                }
                E::Dir(path) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o700);
                    b.append_data(&mut h, path, std::io::empty()).unwrap();
                }
                E::Symlink(path, target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    h.set_mode(0o777);
                    b.append_link(&mut h, path, target).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn label(lsn: Lsn) -> Vec<u8> {
        format!(
            "START WAL LOCATION: {lsn} (file 000000010000000000000003)\nCHECKPOINT LOCATION: 0/3000060\nBACKUP METHOD: streamed\n\
             BACKUP FROM: primary\nSTART TIME: 2024-01-01 00:00:00 UTC\nLABEL: pg_basebackup base backup\nSTART TIMELINE: 1\n"
        )
        .into_bytes()
    }

    fn good_entries() -> Vec<E> {
        vec![
            E::File("backup_label", label(LSN)),
            E::Dir("base/"),
            E::Dir("base/1/"),
            E::File("base/1/PG_VERSION", b"15\n".to_vec()),
            E::File("base/1/pg_filenode.map", vec![3u8; RELMAPPER_FILESIZE]),
            // Segment order as readdir may give it: the fork's blocks still line up.
            E::File("base/1/16384", pages(2, 10)),
            E::File("base/1/16384_fsm", pages(3, 20)),
            E::File("base/1/16384_vm", pages(1, 30)),
            E::File("base/1/16390_init", Vec::new()),
            E::File("base/1/pg_internal.init", vec![1, 2, 3]),
            E::File("base/1/t3_16400", pages(1, 0)),
            E::Dir("base/5/"),
            E::File("base/5/PG_VERSION", b"15\n".to_vec()),
            E::Dir("base/pgsql_tmp/"),
            E::File("base/pgsql_tmp/pgsql_tmp123.0", vec![9; 100]),
            E::Dir("global/"),
            E::File("global/1262", pages(1, 40)),
            E::File("global/pg_filenode.map", vec![4u8; RELMAPPER_FILESIZE]),
            E::File("global/pg_internal.init", vec![1]),
            E::File("pg_xact/0000", pages(2, 50)),
            E::File("pg_multixact/offsets/0000", pages(1, 60)),
            E::File("pg_multixact/members/0000", pages(1, 70)),
            E::File("pg_twophase/000002E4", twophase_file(0x2E4)),
            E::Dir("pg_wal/"),
            E::File("pg_wal/000000010000000000000003", vec![0; 1000]),
            E::File("postgresql.conf", b"shared_buffers = 1MB\n".to_vec()),
            E::File("pg_hba.conf", b"local all all trust\n".to_vec()),
            E::Dir("pg_tblspc/"),
            E::File("PG_VERSION", b"15\n".to_vec()),
            E::File("global/pg_control", control_file()),
        ]
    }

    fn import(entries: &[E]) -> Result<(ImportStats, Arc<Timeline>, Repository, tempfile::TempDir), ImportError> {
        let (dir, repo) = repo();
        let timeline = repo.create_timeline(TimelineId(1)).unwrap();
        let tar = tar_of(entries);
        let progress = ImportProgress::default();
        let stats = import_basebackup_tar(&mut timeline.writer(), tar.as_slice(), LSN, &progress)?;
        assert_eq!(progress.bytes_done.load(Ordering::Relaxed), stats.bytes);
        assert!(stats.bytes > 0 && stats.bytes <= tar.len() as u64);
        Ok((stats, timeline, repo, dir))
    }

    fn import_err(entries: &[E]) -> String {
        match import(entries) {
            Ok(_) => panic!("import succeeded"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn maps_every_file_of_a_backup() {
        let (stats, tl, _repo, _dir) = import(&good_entries()).unwrap();
        assert_eq!(tl.last_record_lsn(), LSN);
        assert_eq!(tl.list_dbs(LSN).unwrap(), vec![(1663, 1), (1663, 5), (1664, 0)]);
        let rel = |db, rel, fork| RelTag::new(if db == 0 { 1664 } else { 1663 }, db, rel, fork);
        assert_eq!(
            tl.list_rels(1663, 1, LSN).unwrap(),
            vec![
                rel(1, 16384, MAIN_FORKNUM),
                rel(1, 16384, FSM_FORKNUM),
                rel(1, 16384, VISIBILITYMAP_FORKNUM),
                rel(1, 16390, INIT_FORKNUM)
            ]
        );
        assert_eq!(tl.list_rels(1663, 5, LSN).unwrap(), vec![]);
        assert_eq!(tl.list_rels(1664, 0, LSN).unwrap(), vec![rel(0, 1262, MAIN_FORKNUM)]);
        for (r, n) in [(rel(1, 16384, 0), 2), (rel(1, 16384, 1), 3), (rel(1, 16384, 2), 1), (rel(1, 16390, 3), 0), (rel(0, 1262, 0), 1)] {
            assert_eq!(tl.get_rel_size(r, LSN).unwrap(), Some(n), "{r}");
        }
        let main = pages(2, 10);
        assert_eq!(tl.get(Key::rel_block(rel(1, 16384, 0), 1), LSN).unwrap().unwrap(), &main[BLCKSZ..]);
        assert_eq!(tl.get(Key::rel_block(rel(1, 16384, 1), 2), LSN).unwrap().unwrap(), &pages(3, 20)[2 * BLCKSZ..]);
        assert_eq!(tl.get(Key::relmap_file(1663, 1), LSN).unwrap().unwrap(), vec![3u8; 512]);
        assert_eq!(tl.get(Key::relmap_file(1664, 0), LSN).unwrap().unwrap(), vec![4u8; 512]);
        let control = control_file();
        assert_eq!(tl.get(Key::control_file(), LSN).unwrap().unwrap(), control);
        assert_eq!(tl.get(Key::checkpoint(), LSN).unwrap().unwrap(), &control[40..128]);
        assert_eq!(tl.list_slru_segments(SlruKind::Clog, LSN).unwrap(), vec![0]);
        assert_eq!(tl.get_slru_segment(SlruKind::Clog, 0, LSN).unwrap().unwrap(), pages(2, 50));
        assert_eq!(tl.list_slru_segments(SlruKind::MultiXactMembers, LSN).unwrap(), vec![0]);
        assert_eq!(tl.list_twophase(LSN).unwrap(), vec![0x2E4]);
        let state = twophase_file(0x2E4);
        assert_eq!(tl.get(Key::twophase_file(0x2E4), LSN).unwrap().unwrap(), &state[..state.len() - 4]);
        assert_eq!(stats.relations, 5);
        assert_eq!(stats.blocks, 7);
        // Every block went to an image layer of its own key alone; the
        // in-memory layer holds none.
        assert_eq!(stats.image_layers, 7);
        let mut image_ranges: Vec<_> =
            tl.layer_names().into_iter().filter(|n| n.is_image()).map(|n| (n.key_range.start, n.key_range.end, n.image_lsn())).collect();
        image_ranges.sort();
        let mut expected = Vec::new();
        for (r, n) in [(rel(1, 16384, 0), 2), (rel(1, 16384, 1), 3), (rel(1, 16384, 2), 1), (rel(0, 1262, 0), 1)] {
            expected.extend((0..n).map(|b| (Key::rel_block(r, b), Key::rel_block(r, b + 1), LSN)));
        }
        expected.sort();
        assert_eq!(image_ranges, expected);
        assert!(tl.inmem_bytes().0 < 8 * BLCKSZ as u64, "in-memory layer holds {} bytes", tl.inmem_bytes().0);
        // 5 forks + 2 relmaps + pg_control + 3 SLRU segments + 1 state file.
        assert_eq!(stats.files, 12);
        let info = parse_control_file(&control).unwrap();
        assert_eq!(info.checkpoint, Lsn(LSN.0 + 0x60));
        assert_eq!(info.system_identifier, 7_000_000_000_000_000_001);
    }

    #[test]
    fn without_backup_label_any_lsn_goes() {
        let entries: Vec<E> = good_entries().into_iter().filter(|e| !matches!(e, E::File("backup_label", _))).collect();
        import(&entries).unwrap();
    }

    fn with(replace: &'static str, new: Option<E>) -> Vec<E> {
        let mut entries: Vec<E> =
            good_entries().into_iter().filter(|e| !matches!(e, E::File(p, _) | E::Dir(p) | E::Symlink(p, _) if *p == replace)).collect();
        entries.extend(new);
        entries
    }

    #[test]
    fn malformed_files_are_named() {
        let cases: Vec<(Vec<E>, &str, &str)> = vec![
            (with("", Some(E::File("base/1/16500", vec![0; 8000]))), "base/1/16500", "not a multiple of 8192"),
            (with("", Some(E::File("base/1/16500_xyz", vec![0; 8192]))), "base/1/16500_xyz", "unknown file"),
            (with("", Some(E::File("base/1/notes.txt", vec![0; 10]))), "base/1/notes.txt", "unknown file"),
            (with("", Some(E::File("base/abc/16500", vec![0; 8192]))), "base/abc/16500", "database directory"),
            (with("", Some(E::File("base/1/sub/16500", vec![0; 8192]))), "base/1/sub/16500", "unexpected entry"),
            (with("", Some(E::File("global/whatever", vec![0; 10]))), "global/whatever", "not a relation file"),
            (with("", Some(E::File("pg_xact/0001", vec![0; 10]))), "pg_xact/0001", "not a multiple of 8192"),
            (with("", Some(E::File("pg_xact/0002", vec![0; 33 * 8192]))), "pg_xact/0002", "larger than"),
            (with("", Some(E::File("pg_xact/zz", vec![0; 8192]))), "pg_xact/zz", "not an SLRU segment name"),
            (with("", Some(E::File("pg_twophase/1234", vec![0; 8192]))), "pg_twophase/1234", "not a two-phase state file name"),
            (with("base/1/pg_filenode.map", Some(E::File("base/1/pg_filenode.map", vec![0; 500]))), "base/1/pg_filenode.map", "not 512"),
            (with("", Some(E::File("base/1/16384_vm", pages(1, 1)))), "base/1/16384_vm", "appears twice"),
            (with("", Some(E::File("base/1/16600.1", pages(1, 1)))), "base/1/16600.1", "segment 0 of relation 1663/1/16600 is missing"),
            (with("", Some(E::File("base/1/16384.1", pages(1, 1)))), "base/1/16384", "not the last"),
            (with("", Some(E::Symlink("base/1/16700", "/elsewhere"))), "base/1/16700", "expected a regular file"),
        ];
        for (entries, path, msg) in cases {
            let err = import_err(&entries);
            assert!(err.contains(path) && err.contains(msg), "expected {path:?} and {msg:?} in: {err}");
        }
    }

    #[test]
    fn bad_control_file_and_two_phase_file_are_refused() {
        let mut control = control_file();
        control[40] ^= 1;
        let err = import_err(&with("global/pg_control", Some(E::File("global/pg_control", control))));
        assert!(err.contains("global/pg_control") && err.contains("incorrect CRC"), "{err}");
        let err = import_err(&with("global/pg_control", Some(E::File("global/pg_control", control_file()[..4096].to_vec()))));
        assert!(err.contains("global/pg_control") && err.contains("not 8192"), "{err}");
        let err = import_err(&with("global/pg_control", None));
        assert!(err.contains("pg_control is missing"), "{err}");
        let mut state = twophase_file(0x2E4);
        state[20] ^= 1;
        let err = import_err(&with("pg_twophase/000002E4", Some(E::File("pg_twophase/000002E4", state))));
        assert!(err.contains("pg_twophase/000002E4") && err.contains("incorrect CRC"), "{err}");
    }

    #[test]
    fn backup_label_must_match_the_lsn() {
        let err = import_err(&with("backup_label", Some(E::File("backup_label", label(Lsn(LSN.0 + 8))))));
        assert!(err.contains("backup_label says the backup starts at 0/3000030") && err.contains("0/3000028"), "{err}");
        let err = import_err(&with("backup_label", Some(E::File("backup_label", b"LABEL: x\n".to_vec()))));
        assert!(err.contains("backup_label") && err.contains("no START WAL LOCATION"), "{err}");
    }

    #[test]
    fn tablespaces_are_refused() {
        let err = import_err(&with("", Some(E::Symlink("pg_tblspc/16400", "/srv/ts"))));
        assert!(err.contains("pg_tblspc/16400") && err.contains("not supported"), "{err}");
        let err = import_err(&with("", Some(E::File("tablespace_map", b"16400 /srv/ts\n".to_vec()))));
        assert!(err.contains("tablespace_map") && err.contains("not supported"), "{err}");
        import(&with("", Some(E::File("tablespace_map", Vec::new())))).unwrap();
    }

    #[test]
    fn broken_streams_fail_cleanly() {
        let (_dir, repo) = repo();
        let tar = tar_of(&good_entries());
        // Cut inside the data of a relation file, and just after a header.
        let at = tar.windows(12).position(|w| w == b"base/1/16384").unwrap() + 512 + 100;
        for (i, cut) in [at, at - 100, tar.len() / 2].into_iter().enumerate() {
            let tl = repo.create_timeline(TimelineId(10 + i as u128)).unwrap();
            let err = import_basebackup_tar(&mut tl.writer(), &tar[..cut], LSN, &ImportProgress::default()).unwrap_err();
            // A cut at an entry boundary reads as a shorter archive: without
            // pg_control, which BASE_BACKUP sends last.
            assert!(
                matches!(err, ImportError::Read { .. } | ImportError::InvalidFile { .. })
                    || err.to_string().contains("pg_control is missing"),
                "cut at {cut}: {err}"
            );
            assert_eq!(tl.last_record_lsn(), Lsn(0), "nothing published");
        }
        let tl = repo.create_timeline(TimelineId(20)).unwrap();
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        let err = import_basebackup_tar(&mut tl.writer(), garbage.as_slice(), LSN, &ImportProgress::default()).unwrap_err();
        assert!(matches!(err, ImportError::Read { .. }), "{err}");
        let err = import_basebackup_tar(&mut tl.writer(), &[][..], LSN, &ImportProgress::default()).unwrap_err();
        assert!(err.to_string().contains("pg_control is missing"), "{err}");
    }

    #[test]
    fn only_into_an_empty_timeline() {
        let (_stats, tl, _repo, _dir) = import(&good_entries()).unwrap();
        let err =
            import_basebackup_tar(&mut tl.writer(), tar_of(&good_entries()).as_slice(), Lsn(LSN.0 + 0x1000), &ImportProgress::default())
                .unwrap_err();
        assert!(err.to_string().contains("is not empty"), "{err}");
    }

    #[test]
    fn file_names() {
        assert_eq!(parse_rel_file_name("16384"), Some((16384, MAIN_FORKNUM, 0)));
        assert_eq!(parse_rel_file_name("16384_vm.3"), Some((16384, VISIBILITYMAP_FORKNUM, 3)));
        assert_eq!(parse_rel_file_name("16384_init"), Some((16384, INIT_FORKNUM, 0)));
        for bad in ["", "0", "016384", "16384.0", "16384.", "16384_xx", "_fsm", "16384_fsm_vm", "4294967296", "1a"] {
            assert_eq!(parse_rel_file_name(bad), None, "{bad}");
        }
        assert!(is_temp_rel_file("t3_16384_fsm.1"));
        assert!(!is_temp_rel_file("t_16384") && !is_temp_rel_file("16384"));
        assert_eq!(parse_backup_label("START WAL LOCATION: 1/2000028 (file x)\n"), Ok(Lsn(0x1_0200_0028)));
    }
}

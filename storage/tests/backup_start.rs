//! Backups that a stock PostgreSQL 15 starts from (oracle 4 of the design).
//!
//! - `layout_of_a_synthetic_timeline`: the tar layout on a hand-made
//!   timeline (no PostgreSQL): names, segment splits at `relseg_size`,
//!   unlogged relations, tablespace and global paths, SLRU and two-phase
//!   files, what a Basebackup leaves out.
//! - `checkpoint_passes_pg_controldata_pg_waldump_and_starts_postgres`: the
//!   rewritten `pg_control` and the checkpoint record, at every kind of
//!   position (segment start, page boundary, mid-page, crossing a page,
//!   crossing a segment), read by `pg_controldata` and `pg_waldump`, then
//!   started by a stock server on a copy of a real cluster, crashed, and
//!   recovered from our record. Corrupted copies must make the tools fail.
//! - `fullbackup_of_imported_basebackup_starts_stock_postgres`: a primary
//!   with tables, indexes, TOAST, sequences, a second database, an unlogged
//!   table, a prepared and an open transaction; `pg_basebackup -Ft -X none`;
//!   import; Fullbackup at the import LSN; a stock server starts on it,
//!   `pg_amcheck --heapallindexed` is clean and `pg_dump` of every database
//!   equals the primary's.

mod repo_common;

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use pageserver_harness::{pg_bin, run_checked, ClusterConfig, PgCluster};
use repo_common::*;
use storage::backup::{shutdown_checkpoint, write_backup_tar, BackupKind, ShutdownCheckpoint};
use storage::key::{Key, RelTag, SlruKind};
use storage::lsn::Lsn;
use storage::pg_control::{CheckPoint, ControlFile, DB_IN_PRODUCTION, PG_CONTROL_VERSION};
use storage::repo::dirs::{encode_db_dir, encode_nblocks, encode_rel_dir, encode_u32_dir};
use storage::repo::{RepoConfig, Repository, TimelineId};
use storage::value::Value;

const SEG: u64 = 16 << 20;

// ---------------------------------------------------------------------------
// helpers

/// (path, typeflag, contents) of every entry of a ustar archive.
fn read_tar(bytes: &[u8]) -> Vec<(String, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let h = &bytes[at..at + 512];
        if h.iter().all(|&b| b == 0) {
            assert!(bytes[at + 512..].iter().all(|&b| b == 0), "data after the end-of-archive block");
            return out;
        }
        let field = |r: std::ops::Range<usize>| {
            let f = &h[r];
            let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
            String::from_utf8(f[..end].to_vec()).unwrap()
        };
        let sum: u64 = h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) }).sum();
        assert_eq!(u64::from_str_radix(field(148..154).trim(), 8).unwrap(), sum, "header checksum at {at}");
        assert_eq!(&h[257..263], b"ustar\0");
        let size = u64::from_str_radix(field(124..135).trim(), 8).unwrap() as usize;
        let (name, prefix) = (field(0..100), field(345..500));
        let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let data = bytes[at + 512..at + 512 + size].to_vec();
        out.push((path, h[156], data));
        at += 512 + size.div_ceil(512) * 512;
    }
}

fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `pg_controldata` of a directory holding `global/pg_control`: (fields, whole output).
fn pg_controldata(dir: &Path) -> anyhow::Result<(BTreeMap<String, String>, String)> {
    let out = run_checked(Command::new(pg_bin("pg_controldata")).arg("-D").arg(dir), "pg_controldata")?;
    let text = output_text(&out);
    let fields = text.lines().filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    Ok((fields, text))
}

/// Writes `global/pg_control` and `pg_wal/<segments>` of `s` under `dir`.
fn write_checkpoint_files(dir: &Path, s: &ShutdownCheckpoint) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("global"))?;
    std::fs::create_dir_all(dir.join("pg_wal"))?;
    std::fs::write(dir.join("global/pg_control"), &s.control_file)?;
    for segment in &s.wal_segments {
        std::fs::write(dir.join("pg_wal").join(&segment.name), segment.to_bytes())?;
    }
    Ok(())
}

/// What pg_waldump prints as the description of our record.
fn waldump_desc(cp: &CheckPoint) -> String {
    format!(
        "CHECKPOINT_SHUTDOWN redo {}; tli {}; prev tli {}; fpw {}; xid {}:{}; oid {}; multi {}; offset {}; \
         oldest xid {} in DB {}; oldest multi {} in DB {}; oldest/newest commit timestamp xid: {}/{}; \
         oldest running xid {}; shutdown",
        cp.redo,
        cp.this_timeline_id,
        cp.prev_timeline_id,
        cp.full_page_writes,
        cp.next_xid >> 32,
        cp.next_xid as u32,
        cp.next_oid,
        cp.next_multi,
        cp.next_multi_offset,
        cp.oldest_xid,
        cp.oldest_xid_db,
        cp.oldest_multi,
        cp.oldest_multi_db,
        cp.oldest_commit_ts_xid,
        cp.newest_commit_ts_xid,
        cp.oldest_active_xid
    )
}

fn pg_waldump_one(wal_dir: &Path, lsn: Lsn) -> std::process::Output {
    Command::new(pg_bin("pg_waldump"))
        .arg("-p")
        .arg(wal_dir)
        .args(["-s", &lsn.to_string(), "-n", "1"])
        .output()
        .expect("running pg_waldump")
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    run_checked(Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to), "copying a data directory")?;
    Ok(())
}

fn untar(tar: &Path, into: &Path) -> anyhow::Result<()> {
    run_checked(Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(into), "untarring the backup")?;
    Ok(())
}

fn one(pg: &PgCluster, db: &str, query: &str) -> anyhow::Result<String> {
    let rows = pg.sql_db(db, query)?;
    rows.into_iter().next().and_then(|r| r.into_iter().next().flatten()).with_context(|| format!("no value from {query}"))
}

// ---------------------------------------------------------------------------
// 0. layout

fn synthetic_control_file(relseg_size: u32) -> Vec<u8> {
    ControlFile {
        system_identifier: 0x7000_0000_0000_0042,
        pg_control_version: PG_CONTROL_VERSION,
        catalog_version_no: 202209061,
        state: DB_IN_PRODUCTION,
        max_prepared_xacts: 0,
        blcksz: 8192,
        relseg_size,
        xlog_blcksz: 8192,
        xlog_seg_size: SEG as u32,
        ..ControlFile::default()
    }
    .encode()
}

fn page(tag: u8, blkno: u32) -> Bytes {
    let mut p = vec![tag; 8192];
    p[..4].copy_from_slice(&blkno.to_le_bytes());
    Bytes::from(p)
}

#[test]
fn layout_of_a_synthetic_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let repo = open(dir.path(), small_config());
    let timeline = repo.create_timeline(TimelineId(1)).unwrap();
    let lsn = Lsn(0x0300_1238);
    let cp = CheckPoint {
        redo: Lsn(0x0300_0028),
        this_timeline_id: 1,
        prev_timeline_id: 1,
        full_page_writes: true,
        next_xid: 800,
        next_oid: 20000,
        next_multi: 1,
        oldest_xid: 700,
        oldest_xid_db: 1,
        oldest_multi: 1,
        oldest_multi_db: 1,
        ..Default::default()
    };

    let mut v: Vec<(Key, Value)> = Vec::new();
    let mut img = |k: Key, b: Bytes| v.push((k, Value::Image(b)));
    img(Key::control_file(), Bytes::from(synthetic_control_file(4)));
    img(Key::checkpoint(), Bytes::copy_from_slice(&cp.encode()));
    img(Key::db_dir(), encode_db_dir(&[(1664, 0), (1663, 1), (1663, 5), (1700, 5)].into()));
    img(Key::relmap_file(1664, 0), Bytes::from(vec![1u8; 512]));
    img(Key::relmap_file(1663, 1), Bytes::from(vec![2u8; 512]));
    img(Key::relmap_file(1663, 5), Bytes::from(vec![3u8; 512]));
    img(Key::rel_dir(1664, 0), encode_rel_dir(&[(1262, 0)].into()));
    img(Key::rel_dir(1663, 1), encode_rel_dir(&[].into()));
    // 16384: 10 blocks (3 segments of 4), fsm 1 block; 16390 unlogged (init 1
    // block, a stale main fork of 3 and a vm); 16400 empty.
    img(Key::rel_dir(1663, 5), encode_rel_dir(&[(16384, 0), (16384, 1), (16390, 0), (16390, 2), (16390, 3), (16400, 0)].into()));
    img(Key::rel_dir(1700, 5), encode_rel_dir(&[(16500, 0)].into()));
    let sized = [
        (RelTag::new(1664, 0, 1262, 0), 1u32, 1u8),
        (RelTag::new(1663, 5, 16384, 0), 10, 2),
        (RelTag::new(1663, 5, 16384, 1), 1, 3),
        (RelTag::new(1663, 5, 16390, 0), 3, 4),
        (RelTag::new(1663, 5, 16390, 2), 1, 5),
        (RelTag::new(1663, 5, 16390, 3), 1, 6),
        (RelTag::new(1663, 5, 16400, 0), 0, 7),
        (RelTag::new(1700, 5, 16500, 0), 2, 8),
    ];
    for (rel, nblocks, tag) in sized {
        img(Key::rel_size(rel), encode_nblocks(nblocks));
        for blkno in 0..nblocks {
            // Block 7 of 16384 has no version: written as zeros.
            if !(rel.rel_node == 16384 && rel.fork == 0 && blkno == 7) {
                img(Key::rel_block(rel, blkno), page(tag, blkno));
            }
        }
    }
    img(Key::slru_dir(SlruKind::Clog), encode_u32_dir(&[0].into()));
    img(Key::slru_segment_size(SlruKind::Clog, 0), encode_nblocks(2));
    img(Key::slru_block(SlruKind::Clog, 0, 0), page(9, 0));
    img(Key::slru_block(SlruKind::Clog, 0, 1), page(10, 1));
    img(Key::slru_dir(SlruKind::MultiXactOffsets), encode_u32_dir(&[0x1A].into()));
    img(Key::slru_segment_size(SlruKind::MultiXactOffsets, 0x1A), encode_nblocks(1));
    img(Key::slru_block(SlruKind::MultiXactOffsets, 0x1A, 0), page(11, 0));
    img(Key::slru_dir(SlruKind::MultiXactMembers), encode_u32_dir(&[].into()));
    img(Key::twophase_dir(), encode_u32_dir(&[0xABC].into()));
    img(Key::twophase_file(0xABC), Bytes::from_static(b"state data of a prepared transaction"));
    ingest(&timeline, lsn, &v).unwrap();

    let mut full = Vec::new();
    let stats = write_backup_tar(&timeline, lsn, BackupKind::Fullbackup, &mut full).unwrap();
    let entries = read_tar(&full);
    assert_eq!(stats.tar_bytes, full.len() as u64);
    let files: BTreeMap<&str, &[u8]> = entries.iter().filter(|e| e.1 == b'0').map(|e| (e.0.as_str(), e.2.as_slice())).collect();
    let dirs: Vec<&str> = entries.iter().filter(|e| e.1 == b'5').map(|e| e.0.as_str()).collect();
    assert_eq!(stats.files as usize, files.len());
    assert_eq!(stats.dirs as usize, dirs.len());
    for d in [
        "global/",
        "base/",
        "base/1/",
        "base/5/",
        "pg_wal/",
        "pg_wal/archive_status/",
        "pg_xact/",
        "pg_multixact/offsets/",
        "pg_twophase/",
        "pg_tblspc/1700/",
        "pg_tblspc/1700/PG_15_202209061/",
        "pg_tblspc/1700/PG_15_202209061/5/",
        "pg_logical/snapshots/",
        "pg_replslot/",
        "pg_subtrans/",
    ] {
        assert!(dirs.contains(&d), "{d} missing from {dirs:?}");
    }
    // Every entry's parent directory comes before it.
    for (i, (path, _, _)) in entries.iter().enumerate() {
        if let Some((parent, _)) = path.trim_end_matches('/').rsplit_once('/') {
            let p = format!("{parent}/");
            assert!(entries[..i].iter().any(|e| e.0 == p), "{path} before its directory");
        }
    }
    assert_eq!(entries.last().unwrap().0, "global/pg_control");
    let expect_pages = |path: &str, tag: u8, blocks: std::ops::Range<u32>| {
        let data = files.get(path).unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(data.len(), blocks.len() * 8192, "{path}");
        for (i, blkno) in blocks.enumerate() {
            let want = if tag == 2 && blkno == 7 { Bytes::from(vec![0u8; 8192]) } else { page(tag, blkno) };
            assert!(data[i * 8192..(i + 1) * 8192] == want[..], "{path} block {blkno}");
        }
    };
    assert_eq!(files["PG_VERSION"], b"15\n");
    assert_eq!(files["base/5/PG_VERSION"], b"15\n");
    assert_eq!(files["base/1/PG_VERSION"], b"15\n");
    assert!(!files.contains_key("global/PG_VERSION"));
    assert!(!files.contains_key("pg_tblspc/1700/PG_15_202209061/5/PG_VERSION"), "no relmap, no PG_VERSION");
    assert_eq!(files["global/pg_filenode.map"], &[1u8; 512][..]);
    assert_eq!(files["base/5/pg_filenode.map"], &[3u8; 512][..]);
    expect_pages("global/1262", 1, 0..1);
    expect_pages("base/5/16384", 2, 0..4);
    expect_pages("base/5/16384.1", 2, 4..8);
    expect_pages("base/5/16384.2", 2, 8..10);
    assert!(!files.contains_key("base/5/16384.3"));
    expect_pages("base/5/16384_fsm", 3, 0..1);
    expect_pages("base/5/16390_init", 6, 0..1);
    expect_pages("base/5/16390", 6, 0..1);
    assert!(!files.contains_key("base/5/16390_vm"), "unlogged relations keep only init and main");
    assert_eq!(files["base/5/16400"].len(), 0);
    expect_pages("pg_tblspc/1700/PG_15_202209061/5/16500", 8, 0..2);
    assert_eq!(stats.rel_files, 9);
    assert_eq!(stats.rel_blocks, 1 + 10 + 1 + 1 + 1 + 2);
    assert_eq!(files["pg_xact/0000"].len(), 2 * 8192);
    assert!(files["pg_xact/0000"][8192..] == page(10, 1)[..]);
    expect_pages("pg_multixact/offsets/001A", 11, 0..1);
    let twophase = files["pg_twophase/00000ABC"];
    assert_eq!(&twophase[..twophase.len() - 4], b"state data of a prepared transaction");
    assert_eq!(twophase[twophase.len() - 4..], crc32c::crc32c(b"state data of a prepared transaction").to_le_bytes());
    assert!(String::from_utf8_lossy(files["postgresql.conf"]).contains("max_prepared_transactions = 1"));
    assert!(String::from_utf8_lossy(files["pg_hba.conf"]).contains("host    all             all             127.0.0.1/32            trust"));
    // The checkpoint: at the LSN, mid-page, in segment 3 of timeline 1.
    assert_eq!(stats.checkpoint_lsn, lsn);
    assert_eq!(stats.end_lsn, Lsn(lsn.0 + 120));
    assert_eq!(stats.wal_segments, vec!["000000010000000000000003".to_string()]);
    let wal = files["pg_wal/000000010000000000000003"];
    assert_eq!(wal.len() as u64, SEG);
    let control = ControlFile::parse(files["global/pg_control"]).unwrap();
    assert_eq!((control.state, control.checkpoint, control.checkpoint_copy.redo), (1, lsn, lsn));
    assert_eq!(control.checkpoint_copy.next_oid, 20000);

    // Basebackup: the same without relation files.
    let mut base = Vec::new();
    let bstats = write_backup_tar(&timeline, lsn, BackupKind::Basebackup, &mut base).unwrap();
    let bentries = read_tar(&base);
    let bfiles: Vec<&str> = bentries.iter().filter(|e| e.1 == b'0').map(|e| e.0.as_str()).collect();
    assert_eq!((bstats.rel_files, bstats.rel_blocks), (0, 0));
    let is_rel_file = |p: &str| {
        ["base/", "global/", "pg_tblspc/"].iter().any(|d| p.starts_with(d))
            && p.rsplit('/').next().unwrap().starts_with(|c: char| c.is_ascii_digit())
    };
    let non_rel: Vec<&str> = files.keys().copied().filter(|p| !is_rel_file(p)).collect();
    assert_eq!(bfiles.iter().copied().collect::<std::collections::BTreeSet<_>>(), non_rel.into_iter().collect());
    assert!(bfiles.contains(&"base/5/pg_filenode.map") && !bfiles.contains(&"base/5/16384"));

    // Clonebackup: the basebackup's files plus a manifest naming each
    // relation segment file of the full backup, with its size and source.
    let mut clone = Vec::new();
    let cstats = write_backup_tar(&timeline, lsn, BackupKind::Clonebackup, &mut clone).unwrap();
    let centries = read_tar(&clone);
    let cfiles: BTreeMap<&str, &[u8]> = centries.iter().filter(|e| e.1 == b'0').map(|e| (e.0.as_str(), e.2.as_slice())).collect();
    let manifest = std::str::from_utf8(cfiles[storage::backup::CLONE_MANIFEST]).unwrap();
    let mut lines = manifest.lines();
    assert_eq!(lines.next(), Some(storage::backup::CLONE_MANIFEST_HEADER));
    let listed: Vec<storage::backup::CloneFile> = lines.map(|l| storage::backup::CloneFile::parse_line(l).unwrap()).collect();
    let rel_files: Vec<&str> = files.keys().copied().filter(|p| is_rel_file(p)).collect();
    assert_eq!(listed.iter().map(|f| f.path.as_str()).collect::<std::collections::BTreeSet<_>>(), rel_files.iter().copied().collect());
    assert_eq!(cstats.rel_files as usize, listed.len());
    for f in &listed {
        assert_eq!(u64::from(f.nblocks) * 8192, files[f.path.as_str()].len() as u64, "{}", f.path);
        assert!(!cfiles.contains_key(f.path.as_str()), "{} sent whole", f.path);
    }
    let seg2 = listed.iter().find(|f| f.path == "base/5/16384.2").unwrap();
    assert_eq!((seg2.source, seg2.first_block, seg2.nblocks), (RelTag::new(1663, 5, 16384, 0), 8, 2));
    // The unlogged relation's main fork is read from its init fork.
    let unlogged_main = listed.iter().find(|f| f.path == "base/5/16390").unwrap();
    assert_eq!(unlogged_main.source, RelTag::new(1663, 5, 16390, 3));
    let mut without_manifest: Vec<&str> = cfiles.keys().copied().filter(|p| *p != storage::backup::CLONE_MANIFEST).collect();
    without_manifest.sort();
    assert_eq!(without_manifest, bfiles.iter().copied().collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>());
    assert_eq!(centries.last().unwrap().0, "global/pg_control");
    for bad in ["", "a\t1 2 3 0\t0", "/abs\t1 2 3 0\t0\t1", "x/../y\t1 2 3 0\t0\t1", "x\t1 2 3 9\t0\t1", "x\t1 2 3\t0\t1"] {
        assert!(storage::backup::CloneFile::parse_line(bad).is_err(), "{bad:?}");
    }

    // Bad requests: not a record boundary, ahead of the timeline.
    assert!(write_backup_tar(&timeline, Lsn(lsn.0 + 4), BackupKind::Fullbackup, std::io::sink()).is_err());
    assert!(write_backup_tar(&timeline, Lsn(0x0300_2008), BackupKind::Fullbackup, std::io::sink()).is_err());
    assert!(write_backup_tar(&timeline, Lsn(0x0300_0008), BackupKind::Fullbackup, std::io::sink()).is_err());
}

// ---------------------------------------------------------------------------
// 1. pg_control and the record against pg_controldata, pg_waldump, postgres

#[test]
fn checkpoint_passes_pg_controldata_pg_waldump_and_starts_postgres() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut source = PgCluster::start_primary(&[("autovacuum", "off")])?;
    source.sql("CREATE TABLE before_reset (a int); INSERT INTO before_reset SELECT generate_series(1, 10)")?;
    source.stop()?;
    let control_bytes = std::fs::read(source.data_dir().join("global/pg_control"))?;
    let control = ControlFile::parse(&control_bytes).map_err(anyhow::Error::msg)?;
    ensure!(control.state == 1, "the stopped source is not shut down: state {}", control.state);
    let old = control.checkpoint_copy;
    // New values PostgreSQL must take from us: next OID far ahead, next XID
    // a little ahead (still on the same CLOG page, as pg_resetwal -x needs).
    let cp = CheckPoint { next_oid: 123_456, next_xid: old.next_xid + 100, ..old };
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);

    let base = 10 * SEG;
    let cases: [(&str, u64, u64); 6] = [
        ("segment start", base, base + 40),
        ("after the long header", base + 40, base + 40),
        ("page boundary", base + 5 * 8192, base + 5 * 8192 + 24),
        ("mid-page", base + 5 * 8192 + 0x1a8, base + 5 * 8192 + 0x1a8),
        ("crossing a page", base + 7 * 8192 - 56, base + 7 * 8192 - 56),
        ("crossing a segment", base + SEG - 64, base + SEG - 64),
    ];
    let tmp = tempfile::tempdir()?;
    for (i, (what, lsn, expect_pos)) in cases.iter().enumerate() {
        let s = shutdown_checkpoint(&control_bytes, &cp, Lsn(*lsn), now)?;
        ensure!(s.checkpoint_lsn == Lsn(*expect_pos), "{what}: record at {}, expected {}", s.checkpoint_lsn, Lsn(*expect_pos));
        let dir = tmp.path().join(format!("case{i}"));
        write_checkpoint_files(&dir, &s)?;

        let (f, text) = pg_controldata(&dir)?;
        ensure!(!text.contains("CRC"), "{what}: pg_controldata complains:\n{text}");
        let pos = s.checkpoint_lsn.to_string();
        let expect = [
            ("Database cluster state", "shut down".to_string()),
            ("Latest checkpoint location", pos.clone()),
            ("Latest checkpoint's REDO location", pos.clone()),
            ("Latest checkpoint's REDO WAL file", s.wal_segments[0].name.clone()),
            ("Latest checkpoint's TimeLineID", old.this_timeline_id.to_string()),
            ("Latest checkpoint's NextXID", format!("{}:{}", cp.next_xid >> 32, cp.next_xid as u32)),
            ("Latest checkpoint's NextOID", "123456".to_string()),
            ("Latest checkpoint's NextMultiXactId", cp.next_multi.to_string()),
            ("Latest checkpoint's NextMultiOffset", cp.next_multi_offset.to_string()),
            ("Latest checkpoint's oldestXID", cp.oldest_xid.to_string()),
            ("Latest checkpoint's oldestActiveXID", "0".to_string()),
            ("Minimum recovery ending location", "0/0".to_string()),
            ("Backup start location", "0/0".to_string()),
            ("End-of-backup record required", "no".to_string()),
            ("Database system identifier", control.system_identifier.to_string()),
        ];
        for (key, want) in expect {
            ensure!(f.get(key) == Some(&want), "{what}: pg_controldata {key:?} = {:?}, expected {want:?}\n{text}", f.get(key));
        }

        let out = pg_waldump_one(&dir.join("pg_wal"), Lsn(*lsn));
        let text = output_text(&out);
        ensure!(out.status.success(), "{what}: pg_waldump failed:\n{text}");
        let line = text.lines().find(|l| l.starts_with("rmgr:")).with_context(|| format!("{what}: no record in\n{text}"))?;
        let words = line.split_whitespace().collect::<Vec<_>>().join(" ");
        ensure!(words.starts_with("rmgr: XLOG len (rec/tot): 114/ 114, tx: 0,"), "{what}: {line}");
        ensure!(line.contains(&format!("lsn: {:X}/{:08X}", s.checkpoint_lsn.0 >> 32, s.checkpoint_lsn.0 as u32)), "{what}: {line}");
        ensure!(
            line.contains(&format!("desc: {}", waldump_desc(&s.checkpoint))),
            "{what}:\n{line}\nexpected desc: {}",
            waldump_desc(&s.checkpoint)
        );
    }

    // The oracles can fail: a flipped byte in pg_control, a flipped byte in the record.
    {
        let s = shutdown_checkpoint(&control_bytes, &cp, Lsn(cases[3].1), now)?;
        let dir = tmp.path().join("corrupt");
        let mut bad = s.clone();
        bad.control_file[100] ^= 0x40;
        let offset = (s.checkpoint_lsn.0 % SEG) as usize + 60;
        let mut seg = s.wal_segments[0].to_bytes();
        seg[offset] ^= 0x01;
        bad.wal_segments.clear();
        write_checkpoint_files(&dir, &bad)?;
        std::fs::write(dir.join("pg_wal").join(&s.wal_segments[0].name), seg)?;
        let (_, text) = pg_controldata(&dir)?;
        ensure!(text.contains("CRC"), "pg_controldata did not notice a corrupt control file:\n{text}");
        let out = pg_waldump_one(&dir.join("pg_wal"), s.checkpoint_lsn);
        ensure!(!out.status.success(), "pg_waldump accepted a corrupt record:\n{}", output_text(&out));
    }
    eprintln!("pg_controldata and pg_waldump checks: {:.1?}", started.elapsed());

    // A stock server starts from each, writes, crashes, and recovers from our record.
    for (what, lsn, _) in cases {
        let s = shutdown_checkpoint(&control_bytes, &cp, Lsn(lsn), now)?;
        let mut pg = PgCluster::start_on_data_dir(ClusterConfig::default().setting("autovacuum", "off"), |data| {
            copy_dir(source.data_dir(), data)?;
            for e in std::fs::read_dir(data.join("pg_wal"))? {
                let e = e?;
                if e.file_type()?.is_file() {
                    std::fs::remove_file(e.path())?;
                }
            }
            write_checkpoint_files(data, &s)
        })
        .with_context(|| format!("{what}: starting from the checkpoint at {}", s.checkpoint_lsn))?;
        ensure!(pg.log().contains("database system was shut down at"), "{what}: log:\n{}", pg.log());
        let insert = one(&pg, "postgres", "SELECT pg_current_wal_insert_lsn()")?.parse::<Lsn>()?;
        ensure!(insert >= s.end_lsn, "{what}: WAL insert position {insert} before our record's end {}", s.end_lsn);
        let xid: u64 = one(&pg, "postgres", "SELECT txid_current()")?.parse()?;
        ensure!(xid >= cp.next_xid, "{what}: first xid {xid} below our next XID {}", cp.next_xid);
        pg.sql("CREATE TABLE after_reset (a int PRIMARY KEY, b text); INSERT INTO after_reset SELECT g, repeat('x', g % 100) FROM generate_series(1, 5000) g")?;
        let oid: u32 = one(&pg, "postgres", "SELECT 'after_reset'::regclass::oid")?.parse()?;
        ensure!(oid >= 123_456, "{what}: new OID {oid} below our next OID");
        ensure!(one(&pg, "postgres", "SELECT count(*) FROM before_reset")? == "10");
        // Crash before any checkpoint: recovery starts at our record and
        // reads on through the pages the server wrote after it.
        pg.kill_postmaster()?;
        pg.start_again().with_context(|| format!("{what}: crash recovery from our checkpoint"))?;
        let log = pg.log();
        // Redo starts with the record after the checkpoint record.
        let next = match s.end_lsn.0 % 8192 {
            0 if s.end_lsn.0 % SEG == 0 => Lsn(s.end_lsn.0 + 40),
            0 => Lsn(s.end_lsn.0 + 24),
            _ => s.end_lsn,
        };
        ensure!(log.contains(&format!("redo starts at {next}")), "{what}: recovery did not start after our record:\n{log}");
        ensure!(one(&pg, "postgres", "SELECT count(*) FROM after_reset")? == "5000", "{what}: rows lost in recovery");
        pg.stop()?;
    }
    eprintln!("total: {:.1?}", started.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. end to end

/// (database, statements); VACUUM and CREATE DATABASE alone, as they refuse transaction blocks.
const SETUP: &[(&str, &str)] = &[
    ("postgres", "CREATE ROLE app LOGIN; CREATE SCHEMA app AUTHORIZATION app"),
    (
        "postgres",
        "CREATE TABLE app.items (id int PRIMARY KEY, name text NOT NULL, qty numeric, created timestamptz DEFAULT '2024-01-01');
         CREATE INDEX items_name ON app.items (name);
         CREATE INDEX items_qty ON app.items USING hash (qty);
         INSERT INTO app.items SELECT g, md5(g::text), g % 97 FROM generate_series(1, 20000) g;
         UPDATE app.items SET qty = qty + 1 WHERE id % 5 = 0;
         DELETE FROM app.items WHERE id % 11 = 0",
    ),
    ("postgres", "VACUUM app.items"),
    (
        "postgres",
        "CREATE TABLE docs (id serial PRIMARY KEY, body text, meta jsonb);
         INSERT INTO docs (body, meta) SELECT (SELECT string_agg(md5(g::text || ':' || i::text), '') FROM generate_series(1, 1500) i),
                jsonb_build_object('n', g, 'tags', jsonb_build_array('a' || g % 3, 'b'))
         FROM generate_series(1, 40) g;
         CREATE INDEX docs_meta ON docs USING gin (meta)",
    ),
    ("postgres", "CREATE SEQUENCE ticket START 1000 INCREMENT 7; SELECT count(nextval('ticket')) FROM generate_series(1, 77)"),
    (
        "postgres",
        "CREATE UNLOGGED TABLE scratch (a int PRIMARY KEY, b text); INSERT INTO scratch SELECT g, 'u' FROM generate_series(1, 500) g",
    ),
    ("postgres", "CREATE MATERIALIZED VIEW item_counts AS SELECT qty, count(*) FROM app.items GROUP BY qty"),
    ("postgres", "CREATE DATABASE second"),
    (
        "second",
        "CREATE TABLE events (id bigserial PRIMARY KEY, at int, payload text);
         INSERT INTO events (at, payload) SELECT g, repeat(chr(65 + g % 26), g % 300) FROM generate_series(1, 8000) g;
         CREATE INDEX events_at ON events (at) WHERE at % 2 = 0;
         CREATE INDEX events_brin ON events USING brin (at);
         DELETE FROM events WHERE id % 3 = 0",
    ),
    ("second", "VACUUM events"),
    ("postgres", "BEGIN; INSERT INTO app.items VALUES (-1, 'prepared', 1); PREPARE TRANSACTION 'p1'"),
];

/// pg_dump with a fixed `\restrict` key (PostgreSQL 15.14+ picks a random one).
fn dump(pg: &PgCluster, db: &str) -> anyhow::Result<String> {
    let out = pg.run_as_postgres_checked("pg_dump", &["--no-unlogged-table-data", "--restrict-key=backupstart", "-d", db])?;
    Ok(String::from_utf8(out.stdout)?)
}

fn dump_all(pg: &PgCluster, dbs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let globals = pg.run_as_postgres_checked("pg_dumpall", &["--globals-only", "--no-role-passwords", "--restrict-key=backupstart"])?;
    out.insert("(globals)".to_string(), String::from_utf8(globals.stdout)?);
    for db in dbs {
        out.insert(db.clone(), dump(pg, db)?);
    }
    Ok(out)
}

/// Fails naming the first line that differs between two sets of dumps.
fn compare_dumps(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>) -> anyhow::Result<()> {
    for (db, want) in want {
        let got = got.get(db).with_context(|| format!("no dump of {db}"))?;
        if got != want {
            let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
            let i = w.iter().zip(&g).position(|(a, b)| a != b).unwrap_or(w.len().min(g.len()));
            bail!(
                "pg_dump of {db} differs at line {} ({} lines expected, {} got):\n  expected: {:?}\n  got:      {:?}",
                i + 1,
                w.len(),
                g.len(),
                w.get(i),
                g.get(i)
            );
        }
    }
    Ok(())
}

#[test]
fn fullbackup_of_imported_basebackup_starts_stock_postgres() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let primary = PgCluster::start_primary(&[("autovacuum", "off"), ("max_prepared_transactions", "5")])?;
    for (db, sql) in SETUP {
        primary.sql_db(db, sql)?;
    }
    // Open during the backup: must read as aborted in the restored cluster.
    let mut open_tx = primary.client("postgres")?;
    open_tx.batch_execute("BEGIN; INSERT INTO app.items VALUES (-2, 'in progress', 2); INSERT INTO docs (body) VALUES ('in progress')")?;
    let dbs: Vec<String> =
        primary.sql("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")?.into_iter().map(|r| r[0].clone().unwrap()).collect();
    let before = dump_all(&primary, &dbs)?;
    let backup_dir = primary.root_dir().join("backup");
    let backup_arg = backup_dir.display().to_string();
    primary.run_as_postgres_checked("pg_basebackup", &["-D", &backup_arg, "-Ft", "-X", "none", "-c", "fast", "--no-sync"])?;
    let after = dump_all(&primary, &dbs)?;
    compare_dumps(&before, &after).context("the primary changed during the backup")?;
    drop(open_tx);
    let t_primary = t0.elapsed();

    // Import at the backup's start LSN.
    let base_tar = backup_dir.join("base.tar");
    let label = run_checked(Command::new("tar").arg("-xOf").arg(&base_tar).arg("backup_label"), "reading backup_label")?;
    let lsn = storage::import::parse_backup_label(&String::from_utf8(label.stdout)?).map_err(anyhow::Error::msg)?;
    let repo_dir = tempfile::tempdir()?;
    let conf = RepoConfig { fsync: false, ..RepoConfig::default() };
    let repo = Repository::open(repo_dir.path(), conf, Arc::new(TestRedo))?;
    let timeline = repo.create_timeline(TimelineId(7))?;
    {
        let mut writer = timeline.writer();
        let progress = storage::import::ImportProgress::default();
        storage::import::import_basebackup_tar(&mut writer, std::fs::File::open(&base_tar)?, lsn, &progress)?;
    }
    let t_import = t0.elapsed();

    let work = tempfile::tempdir()?;
    let full_tar = work.path().join("full.tar");
    let stats = write_backup_tar(&timeline, lsn, BackupKind::Fullbackup, BufWriter::new(std::fs::File::create(&full_tar)?))?;
    eprintln!("import at {lsn}; fullbackup: {stats:?}");
    ensure!(stats.checkpoint_lsn == lsn || lsn.0 % 8192 == 0, "checkpoint at {} for a backup at {lsn}", stats.checkpoint_lsn);
    let mut base_only = Vec::new();
    let bstats = write_backup_tar(&timeline, lsn, BackupKind::Basebackup, &mut base_only)?;
    ensure!(bstats.rel_files == 0 && bstats.files > 0);
    ensure!(read_tar(&base_only).iter().all(|(p, _, _)| !p.starts_with("base/1/1259")), "pg_class in a Basebackup");
    let t_backup = t0.elapsed();

    let mut restored = PgCluster::start_on_data_dir(ClusterConfig::default().setting("autovacuum", "off"), |data| untar(&full_tar, data))
        .context("starting a stock PostgreSQL 15 on the fullbackup")?;
    let log = restored.log();
    ensure!(log.contains("database system was shut down at") && !log.contains("redo starts"), "unexpected start-up:\n{log}");
    let t_start = t0.elapsed();

    // pg_dump first: pg_amcheck installs its extension.
    let restored_dumps = dump_all(&restored, &dbs)?;
    compare_dumps(&before, &restored_dumps).context("restored cluster against the primary")?;
    let amcheck = restored.run_as_postgres("pg_amcheck", &["--all", "--heapallindexed", "--install-missing"])?;
    let amcheck_out = String::from_utf8_lossy(&amcheck.stdout).to_string();
    ensure!(
        amcheck.status.success() && amcheck_out.trim().is_empty(),
        "pg_amcheck: {}\n{amcheck_out}\n{}",
        amcheck.status,
        String::from_utf8_lossy(&amcheck.stderr)
    );
    let t_check = t0.elapsed();

    // What the dump does not show.
    ensure!(one(&restored, "postgres", "SELECT count(*) FROM app.items WHERE id < 0")? == "0");
    ensure!(one(&restored, "postgres", "SELECT count(*) FROM docs WHERE body = 'in progress'")? == "0");
    ensure!(one(&restored, "postgres", "SELECT count(*) FROM scratch")? == "0", "unlogged table not reset");
    restored.sql("INSERT INTO scratch VALUES (1, 'again')")?;
    ensure!(one(&restored, "postgres", "SET enable_seqscan = off; SELECT b FROM scratch WHERE a = 1")? == "again");
    ensure!(one(&restored, "postgres", "SELECT string_agg(gid, ',') FROM pg_prepared_xacts")? == "p1");
    restored.sql("COMMIT PREPARED 'p1'")?;
    ensure!(one(&restored, "postgres", "SELECT name FROM app.items WHERE id = -1")? == "prepared");
    let next = one(&restored, "postgres", "SELECT nextval('ticket')")?;
    ensure!(next == (1000 + 77 * 7).to_string(), "sequence continues at {next}");
    // It keeps working across a checkpoint and a clean restart.
    restored.sql("INSERT INTO app.items SELECT g, 'new', 0 FROM generate_series(100001, 101000) g; CHECKPOINT")?;
    restored.sql_db("second", "CREATE TABLE more AS SELECT * FROM events")?;
    restored.stop()?;
    restored.start_again()?;
    ensure!(one(&restored, "postgres", "SELECT count(*) FROM app.items WHERE name = 'new'")? == "1000");
    ensure!(one(&restored, "second", "SELECT count(*) = (SELECT count(*) FROM events) FROM more")? == "t");
    let amcheck = restored.run_as_postgres("pg_amcheck", &["--all", "--heapallindexed"])?;
    ensure!(amcheck.status.success() && amcheck.stdout.is_empty(), "pg_amcheck after restart: {}", output_text(&amcheck));

    eprintln!(
        "timings: primary+basebackup {:.1?}, import {:.1?}, backups {:.1?}, start {:.1?}, dump+amcheck {:.1?}, total {:.1?}",
        t_primary,
        t_import - t_primary,
        t_backup - t_import,
        t_start - t_backup,
        t_check - t_start,
        t0.elapsed()
    );
    std::io::stderr().flush().ok();
    Ok(())
}

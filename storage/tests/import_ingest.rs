//! Bootstrap from a real base backup, then WAL ingest on top of it, against
//! a real PostgreSQL 15 primary.
//!
//! 1. `pg_basebackup -Ft -X none` of a primary with tables, indexes (btree,
//!    hash, GIN), a sequence, an unlogged table, a second database and a
//!    prepared transaction is imported at its start LSN. The timeline must
//!    list the databases and relation forks that `base/` and `global/` of
//!    the backup hold, with the same sizes (and so must the primary's data
//!    directory, quiet since the backup); every block of a few relations
//!    must equal the file; `pg_control` must be the file and the checkpoint
//!    must say what `pg_controldata` says of the backup; SLRU segments and
//!    prepared transactions must match.
//! 2. A workload runs on the primary (tables created, extended, truncated,
//!    dropped; `CREATE DATABASE` with both strategies, `DROP DATABASE`,
//!    `VACUUM` that truncates, `VACUUM FULL pg_class`, thousands of
//!    transactions, multixacts, OIDs past a prefetch), then `CHECKPOINT`.
//!    The WAL from the backup's start to that checkpoint record is read
//!    from `pg_wal`, decoded and applied with `WalIngest`. At the
//!    checkpoint record's end the timeline must list the databases and
//!    forks the primary's files show, with the same sizes (FSM forks: see
//!    [`compare_rels`]), SLRU segment sizes equal to the files, the prepared
//!    transactions PostgreSQL lists, the blocks of the FILE_COPY database
//!    equal to its files, and a checkpoint that agrees with `pg_controldata`
//!    on next XID (with epoch), next OID, next multixact and offset, oldest
//!    XID / multixact, redo pointer and time line.

#[path = "wal_common.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, ensure, Context};
use bytes::Bytes;
use common::*;
use pageserver_harness::{pg_bin, PgCluster};
use storage::import::{import_basebackup_tar, ImportProgress};
use storage::key::{Key, RelTag, SlruKind, FSM_FORKNUM, INIT_FORKNUM, MAIN_FORKNUM, VISIBILITYMAP_FORKNUM};
use storage::lsn::Lsn;
use storage::pg_control::CheckPoint;
use storage::repo::dirs::decode_nblocks;
use storage::repo::{Redo, RepoConfig, Repository, Timeline, TimelineId};
use storage::value::WalRecordValue;
use storage::walingest::WalIngest;

/// Every read these tests make is of an image (imported pages, directories,
/// sizes, FILE_COPY copies of imported pages): any redo request is a bug.
struct NoRedo;

impl Redo for NoRedo {
    fn apply(&self, key: Key, _base: Option<Bytes>, records: &[(Lsn, WalRecordValue)]) -> Result<Bytes, storage::repo::RedoError> {
        Err(format!("unexpected redo of {key:?} ({} records): the test reads only images", records.len()).into())
    }
}

const SETUP: &[&str] = &[
    "CREATE TABLE big (id int PRIMARY KEY, v text, arr int[])",
    "INSERT INTO big SELECT g, md5(g::text), ARRAY[g % 10, g % 7] FROM generate_series(1, 40000) g",
    "CREATE INDEX big_hash ON big USING hash (v)",
    "CREATE INDEX big_gin ON big USING gin (arr)",
    "CREATE TABLE toasty (id int, doc text)",
    "INSERT INTO toasty SELECT g, repeat(md5(g::text), 300) FROM generate_series(1, 200) g",
    "CREATE SEQUENCE seq",
    "SELECT count(nextval('seq')) FROM generate_series(1, 100)",
    "CREATE UNLOGGED TABLE unlogged_t (a int PRIMARY KEY)",
    "INSERT INTO unlogged_t SELECT generate_series(1, 1000)",
    "VACUUM big",
    "CREATE DATABASE db2",
    "BEGIN; INSERT INTO big VALUES (-1, 'prepared'); PREPARE TRANSACTION 'before_backup'",
];

const SETUP_DB2: &str =
    "CREATE TABLE t2 (a int PRIMARY KEY, b text); INSERT INTO t2 SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g";

/// After the backup. Statements run one at a time (CREATE DATABASE, VACUUM refuse blocks).
const WORKLOAD: &[&str] = &[
    "COMMIT PREPARED 'before_backup'",
    "CREATE TABLE w_new (id int PRIMARY KEY, pad text)",
    "INSERT INTO w_new SELECT g, repeat('n', 200) FROM generate_series(1, 20000) g",
    "INSERT INTO big SELECT g, md5(g::text), ARRAY[g % 3] FROM generate_series(40001, 50000) g",
    "CREATE TABLE w_trunc AS SELECT g, repeat('t', 100) AS pad FROM generate_series(1, 5000) g",
    "TRUNCATE w_trunc",
    "INSERT INTO w_trunc SELECT g, 'again' FROM generate_series(1, 10) g",
    "CREATE TABLE w_drop AS SELECT g, repeat('d', 100) AS pad FROM generate_series(1, 3000) g",
    "DROP TABLE w_drop",
    "CREATE TABLE w_vac (id int, pad text) WITH (autovacuum_enabled = off)",
    "INSERT INTO w_vac SELECT g, repeat('v', 200) FROM generate_series(1, 20000) g",
    "DELETE FROM w_vac WHERE id > 2000",
    "VACUUM w_vac",
    "CREATE DATABASE db_fc STRATEGY FILE_COPY",
    "CREATE DATABASE db_wl STRATEGY WAL_LOG",
    "CREATE DATABASE db_gone",
    "DROP DATABASE db_gone",
    "CREATE UNLOGGED TABLE w_unlogged (a int PRIMARY KEY)",
    "INSERT INTO w_unlogged SELECT generate_series(1, 100)",
    // Thousands of transactions, one xid each.
    "DO $$ BEGIN FOR i IN 1..3000 LOOP INSERT INTO w_new VALUES (100000 + i, 'tx'); COMMIT; END LOOP; END $$",
    // More than one OID prefetch (8192): at least one XLOG_NEXTOID.
    "SELECT count(lo_create(0)) FROM generate_series(1, 9000)",
    "VACUUM FULL pg_class",
    "UPDATE big SET v = 'updated' WHERE id % 100 = 0",
    "BEGIN; INSERT INTO w_new VALUES (-5, 'prepared'); PREPARE TRANSACTION 'at_checkpoint'",
];

const WORKLOAD_DB_WL: &str = "CREATE TABLE t_wl (a int PRIMARY KEY); INSERT INTO t_wl SELECT generate_series(1, 3000)";
const WORKLOAD_DB2: &str = "INSERT INTO t2 SELECT g, 'more' FROM generate_series(5001, 9000) g; DELETE FROM t2 WHERE a < 100";

/// Databases and relation forks with their sizes in blocks.
type RelSet = (BTreeSet<(u32, u32)>, BTreeMap<RelTag, u32>);

/// Relation forks as a base backup carries them: `global/` and `base/<db>/`,
/// without temporary relations and, for unlogged relations (those with an
/// init fork), only the init fork. Sizes in blocks.
fn rel_files(datadir: &Path) -> anyhow::Result<RelSet> {
    let mut dbs = BTreeSet::new();
    let mut forks: BTreeMap<RelTag, u32> = BTreeMap::new();
    let mut dirs = vec![(1664u32, 0u32, datadir.join("global"))];
    for entry in std::fs::read_dir(datadir.join("base"))? {
        let entry = entry?;
        if let Ok(db) = entry.file_name().to_string_lossy().parse::<u32>() {
            dirs.push((1663, db, entry.path()));
        }
    }
    for (spc, db, dir) in dirs {
        dbs.insert((spc, db));
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let (stem, segno) = match name.split_once('.') {
                Some((stem, seg)) => match seg.parse::<u32>() {
                    Ok(seg) => (stem.to_string(), seg),
                    Err(_) => continue,
                },
                None => (name.clone(), 0),
            };
            let (rel, fork) = match stem.split_once('_') {
                Some((rel, "fsm")) => (rel, FSM_FORKNUM),
                Some((rel, "vm")) => (rel, VISIBILITYMAP_FORKNUM),
                Some((rel, "init")) => (rel, INIT_FORKNUM),
                Some(_) => continue,
                None => (stem.as_str(), MAIN_FORKNUM),
            };
            let Ok(rel) = rel.parse::<u32>() else { continue };
            let len = entry.metadata()?.len();
            ensure!(len % 8192 == 0, "{}: {len} bytes", entry.path().display());
            let end = segno * 131_072 + (len / 8192) as u32;
            let size = forks.entry(RelTag::new(spc, db, rel, fork)).or_insert(0);
            *size = (*size).max(end);
        }
    }
    let unlogged: BTreeSet<(u32, u32, u32)> =
        forks.keys().filter(|r| r.fork == INIT_FORKNUM).map(|r| (r.spc_node, r.db_node, r.rel_node)).collect();
    forks.retain(|r, _| r.fork == INIT_FORKNUM || !unlogged.contains(&(r.spc_node, r.db_node, r.rel_node)));
    Ok((dbs, forks))
}

/// The timeline's databases and forks with sizes at `lsn`.
fn timeline_rels(tl: &Timeline, lsn: Lsn) -> anyhow::Result<RelSet> {
    let dbs: BTreeSet<(u32, u32)> = tl.list_dbs(lsn)?.into_iter().collect();
    let mut forks = BTreeMap::new();
    for (spc, db) in &dbs {
        for rel in tl.list_rels(*spc, *db, lsn)? {
            let size = tl.get_rel_size(rel, lsn)?.ok_or_else(|| anyhow!("{rel} listed without a size"))?;
            forks.insert(rel, size);
        }
    }
    Ok((dbs, forks))
}

fn fork_name(rel: &RelTag) -> String {
    format!("{rel}")
}

/// Compares forks and sizes. `fsm_may_lag`: PostgreSQL creates and extends
/// FSM forks without WAL (`fsm_extend` writes zero pages; an FSM page that
/// gets no new value is never logged, not even with `wal_log_hints`), so
/// after WAL replay an FSM fork may be missing or shorter than the primary's
/// file, exactly as on a PostgreSQL standby; it must never be longer, nor
/// exist without the file. Every other fork must match exactly.
fn compare_rels(
    what: &str,
    ours: &BTreeMap<RelTag, u32>,
    theirs: &BTreeMap<RelTag, u32>,
    fsm_may_lag: bool,
) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut lagging = Vec::new();
    let all: BTreeSet<&RelTag> = ours.keys().chain(theirs.keys()).collect();
    for rel in all {
        match (ours.get(rel), theirs.get(rel)) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) if fsm_may_lag && rel.fork == FSM_FORKNUM && a.unwrap_or(&0) <= b.unwrap_or(&0) && b.is_some() => {
                lagging.push(format!("{}: {a:?}/{b:?}", fork_name(rel)))
            }
            (a, b) => problems.push(format!("{}: timeline {a:?} blocks, files {b:?}", fork_name(rel))),
        }
    }
    ensure!(problems.is_empty(), "{what}: {} forks differ:\n{}", problems.len(), problems.join("\n"));
    Ok(lagging)
}

fn controldata(dir: &Path) -> anyhow::Result<HashMap<String, String>> {
    let out = Command::new(pg_bin("pg_controldata")).arg(dir).env("LC_ALL", "C").output()?;
    ensure!(out.status.success(), "pg_controldata {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect())
}

/// The checkpoint fields pg_controldata prints, compared with `cp`.
fn compare_checkpoint(what: &str, cp: &CheckPoint, cd: &HashMap<String, String>) -> anyhow::Result<()> {
    let get = |k: &str| cd.get(k).cloned().ok_or_else(|| anyhow!("pg_controldata has no {k:?}"));
    let next_xid = get("Latest checkpoint's NextXID")?;
    let (epoch, xid) = next_xid.split_once(':').ok_or_else(|| anyhow!("NextXID {next_xid:?}"))?;
    let pairs: Vec<(&str, String, String)> = vec![
        ("NextXID", format!("{}:{}", cp.next_xid >> 32, cp.next_xid as u32), format!("{}:{}", epoch.parse::<u32>()?, xid.parse::<u32>()?)),
        ("NextOID", cp.next_oid.to_string(), get("Latest checkpoint's NextOID")?),
        ("NextMultiXactId", cp.next_multi.to_string(), get("Latest checkpoint's NextMultiXactId")?),
        ("NextMultiOffset", cp.next_multi_offset.to_string(), get("Latest checkpoint's NextMultiOffset")?),
        ("oldestXID", cp.oldest_xid.to_string(), get("Latest checkpoint's oldestXID")?),
        ("oldestXID's DB", cp.oldest_xid_db.to_string(), get("Latest checkpoint's oldestXID's DB")?),
        ("oldestMultiXid", cp.oldest_multi.to_string(), get("Latest checkpoint's oldestMultiXid")?),
        ("oldestMulti's DB", cp.oldest_multi_db.to_string(), get("Latest checkpoint's oldestMulti's DB")?),
        ("oldestActiveXID", cp.oldest_active_xid.to_string(), get("Latest checkpoint's oldestActiveXID")?),
        ("REDO location", cp.redo.to_string(), get("Latest checkpoint's REDO location")?),
        ("TimeLineID", cp.this_timeline_id.to_string(), get("Latest checkpoint's TimeLineID")?),
        ("full_page_writes", if cp.full_page_writes { "on" } else { "off" }.to_string(), get("Latest checkpoint's full_page_writes")?),
    ];
    let wrong: Vec<String> =
        pairs.iter().filter(|(_, a, b)| a != b).map(|(k, a, b)| format!("{k}: timeline {a}, pg_controldata {b}")).collect();
    ensure!(wrong.is_empty(), "{what}: checkpoint differs from pg_controldata:\n{}", wrong.join("\n"));
    Ok(())
}

/// SLRU segments and their sizes in blocks, from the files.
fn slru_files(datadir: &Path) -> anyhow::Result<BTreeMap<(SlruKind, u32), u32>> {
    let mut out = BTreeMap::new();
    for kind in SlruKind::ALL {
        for entry in std::fs::read_dir(datadir.join(kind.dir_name()))? {
            let entry = entry?;
            let segno = u32::from_str_radix(&entry.file_name().to_string_lossy(), 16)?;
            out.insert((kind, segno), (entry.metadata()?.len() / 8192) as u32);
        }
    }
    Ok(out)
}

fn timeline_slru(tl: &Timeline, lsn: Lsn) -> anyhow::Result<BTreeMap<(SlruKind, u32), u32>> {
    let mut out = BTreeMap::new();
    for kind in SlruKind::ALL {
        for segno in tl.list_slru_segments(kind, lsn)? {
            let key = Key::slru_segment_size(kind, segno);
            let size = tl.get(key, lsn)?.ok_or_else(|| anyhow!("{key:?} missing"))?;
            out.insert((kind, segno), decode_nblocks(key, &size)?);
        }
    }
    Ok(out)
}

fn prepared_xids(pg: &PgCluster) -> anyhow::Result<Vec<u32>> {
    let mut xids: Vec<u32> =
        pg.sql("SELECT transaction FROM pg_prepared_xacts")?.into_iter().map(|r| r[0].clone().unwrap().parse().unwrap()).collect();
    xids.sort_unstable();
    Ok(xids)
}

/// Every block of `rel` on the timeline equals the file(s) in `dir`.
fn compare_blocks(tl: &Timeline, lsn: Lsn, rel: RelTag, dir: &Path) -> anyhow::Result<u32> {
    let suffix = match rel.fork {
        MAIN_FORKNUM => "",
        FSM_FORKNUM => "_fsm",
        VISIBILITYMAP_FORKNUM => "_vm",
        _ => "_init",
    };
    let bytes = std::fs::read(dir.join(format!("{}{suffix}", rel.rel_node))).with_context(|| format!("{rel} in {}", dir.display()))?;
    let nblocks = tl.get_rel_size(rel, lsn)?.ok_or_else(|| anyhow!("{rel} missing on the timeline"))?;
    ensure!(bytes.len() == nblocks as usize * 8192, "{rel}: file {} bytes, timeline {nblocks} blocks", bytes.len());
    for blkno in 0..nblocks {
        let page = tl.get(Key::rel_block(rel, blkno), lsn)?.ok_or_else(|| anyhow!("{rel} block {blkno} missing"))?;
        let at = blkno as usize * 8192;
        ensure!(page == bytes[at..at + 8192], "{rel} block {blkno} differs from {}", dir.display());
    }
    Ok(nblocks)
}

fn filenode(pg: &PgCluster, db: &str, relname: &str) -> anyhow::Result<u32> {
    let rows = pg.sql_db(db, &format!("SELECT pg_relation_filenode('{relname}')"))?;
    Ok(rows[0][0].clone().ok_or_else(|| anyhow!("{relname} has no filenode"))?.parse()?)
}

fn db_oid(pg: &PgCluster, name: &str) -> anyhow::Result<u32> {
    Ok(pg.sql_one(&format!("SELECT oid FROM pg_database WHERE datname = '{name}'"))?.ok_or_else(|| anyhow!("no {name}"))?.parse()?)
}

#[test]
fn import_base_backup_then_ingest_wal() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let pg = PgCluster::start_primary(&[
        ("max_prepared_transactions", "5"),
        // Nothing may change the files behind the test's back.
        ("autovacuum", "off"),
        ("checkpoint_timeout", "1h"),
        ("max_wal_size", "4GB"),
        // FSM and VM pages changed without WAL get full-page images: more of
        // the FSM is visible in the WAL (it passes without, with more FSM lag).
        ("wal_log_hints", "on"),
    ])?;
    // The slot keeps the WAL from before the backup on.
    pg.sql("SELECT pg_create_physical_replication_slot('import_test', true)")?;
    for stmt in SETUP {
        pg.sql(stmt)?;
    }
    pg.sql_db("db2", SETUP_DB2)?;
    // Two sessions share-locking rows: a multixact.
    {
        let mut a = pg.client("postgres")?;
        let mut b = pg.client("postgres")?;
        a.batch_execute("BEGIN; SELECT * FROM big WHERE id < 5 FOR SHARE")?;
        b.batch_execute("BEGIN; SELECT * FROM big WHERE id < 5 FOR SHARE")?;
        a.batch_execute("COMMIT")?;
        b.batch_execute("COMMIT")?;
    }

    // ---- 1. the base backup --------------------------------------------
    let tar_path = pg.base_backup_tar("backup")?;
    let extracted = tempfile::tempdir()?;
    let status = Command::new("tar").arg("-xf").arg(&tar_path).arg("-C").arg(extracted.path()).status()?;
    ensure!(status.success(), "tar -xf {}", tar_path.display());
    let label = std::fs::read_to_string(extracted.path().join("backup_label"))?;
    let start = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .and_then(|l| l.split_whitespace().next())
        .map(lsn_of)
        .ok_or_else(|| anyhow!("no start in backup_label:\n{label}"))?;
    eprintln!("base backup of {} MiB starts at {start} ({:?})", std::fs::metadata(&tar_path)?.len() >> 20, t0.elapsed());

    let repo_dir = tempfile::tempdir()?;
    let conf = RepoConfig { fsync: false, checkpoint_distance: 16 << 20, ..RepoConfig::default() };
    let repo = Repository::open(repo_dir.path(), conf, Arc::new(NoRedo))?;
    let tl = repo.create_timeline(TimelineId(0x1234))?;
    let progress = ImportProgress::default();
    let tar_len = std::fs::metadata(&tar_path)?.len();
    progress.bytes_total.store(tar_len, std::sync::atomic::Ordering::Relaxed);
    let t = Instant::now();
    let stats = {
        let mut writer = tl.writer();
        import_basebackup_tar(&mut writer, std::io::BufReader::new(std::fs::File::open(&tar_path)?), start, &progress)?
    };
    tl.flush_frozen_layers()?;
    eprintln!("imported {stats:?} in {:?}", t.elapsed());
    ensure!(tl.last_record_lsn() == start);
    ensure!(progress.bytes_done.load(std::sync::atomic::Ordering::Relaxed) == stats.bytes && stats.bytes <= tar_len);
    ensure!(stats.bytes + 10240 >= tar_len, "read {} of {tar_len} bytes", stats.bytes);

    // Databases and relation forks, against the backup and the (quiet) primary.
    let (dbs, forks) = timeline_rels(&tl, start)?;
    let (backup_dbs, backup_forks) = rel_files(extracted.path())?;
    ensure!(dbs == backup_dbs, "databases: timeline {dbs:?}, backup {backup_dbs:?}");
    compare_rels("import vs backup files", &forks, &backup_forks, false)?;
    let (primary_dbs, primary_forks) = rel_files(pg.data_dir())?;
    ensure!(dbs == primary_dbs, "databases: timeline {dbs:?}, primary {primary_dbs:?}");
    compare_rels("import vs primary files", &forks, &primary_forks, false)?;
    let sql_dbs: BTreeSet<(u32, u32)> = pg
        .sql("SELECT oid FROM pg_database")?
        .into_iter()
        .map(|r| (1663, r[0].clone().unwrap().parse().unwrap()))
        .chain([(1664, 0)])
        .collect();
    ensure!(dbs == sql_dbs, "databases: timeline {dbs:?}, pg_database {sql_dbs:?}");
    ensure!(stats.relations == forks.len() as u64 && stats.blocks == forks.values().map(|n| u64::from(*n)).sum::<u64>());
    ensure!(forks.keys().any(|r| r.fork == INIT_FORKNUM) && forks.keys().any(|r| r.fork == VISIBILITYMAP_FORKNUM));
    eprintln!("{} databases, {} forks, {} blocks match the backup and the primary", dbs.len(), forks.len(), stats.blocks);

    // Every block of a few relations.
    let postgres_db = db_oid(&pg, "postgres")?;
    let db2 = db_oid(&pg, "db2")?;
    let mut blocks = 0;
    for (db, dbname, relname, forks_to_check) in [
        (postgres_db, "postgres", "big", &[MAIN_FORKNUM, FSM_FORKNUM, VISIBILITYMAP_FORKNUM][..]),
        (postgres_db, "postgres", "big_pkey", &[MAIN_FORKNUM][..]),
        (postgres_db, "postgres", "big_gin", &[MAIN_FORKNUM][..]),
        (postgres_db, "postgres", "pg_class", &[MAIN_FORKNUM][..]),
        (postgres_db, "postgres", "unlogged_t", &[INIT_FORKNUM][..]),
        (db2, "db2", "t2", &[MAIN_FORKNUM][..]),
    ] {
        let node = filenode(&pg, dbname, relname)?;
        for fork in forks_to_check {
            blocks += compare_blocks(&tl, start, RelTag::new(1663, db, node, *fork), &extracted.path().join(format!("base/{db}")))?;
        }
    }
    let pg_database = filenode(&pg, "postgres", "pg_database")?;
    blocks += compare_blocks(&tl, start, RelTag::new(1664, 0, pg_database, MAIN_FORKNUM), &extracted.path().join("global"))?;
    eprintln!("{blocks} blocks equal the backup's files");

    // pg_control, the checkpoint, SLRUs, two-phase state.
    let control = std::fs::read(extracted.path().join("global/pg_control"))?;
    ensure!(tl.get(Key::control_file(), start)?.as_deref() == Some(&control[..]), "pg_control differs");
    let cp_bytes = tl.get(Key::checkpoint(), start)?.ok_or_else(|| anyhow!("no checkpoint"))?;
    ensure!(cp_bytes == control[40..128], "checkpoint is not checkPointCopy");
    let cp = CheckPoint::decode(&cp_bytes).map_err(|e| anyhow!(e))?;
    compare_checkpoint("after import", &cp, &controldata(extracted.path())?)?;
    ensure!(cp.redo == start, "checkpoint redo {} is not the backup start {start}", cp.redo);
    let slru = timeline_slru(&tl, start)?;
    ensure!(slru == slru_files(extracted.path())?, "SLRU segments: timeline {slru:?}");
    let prepared = prepared_xids(&pg)?;
    ensure!(prepared.len() == 1 && tl.list_twophase(start)? == prepared, "prepared: {prepared:?} vs {:?}", tl.list_twophase(start)?);
    let state = std::fs::read(extracted.path().join(format!("pg_twophase/{:08X}", prepared[0])))?;
    ensure!(tl.get(Key::twophase_file(prepared[0]), start)?.as_deref() == Some(&state[..state.len() - 4]));
    eprintln!("import checked ({:?}); checkpoint {cp:?}", t0.elapsed());

    // ---- 2. WAL on top --------------------------------------------------
    let t = Instant::now();
    for stmt in WORKLOAD {
        pg.sql(stmt)?;
    }
    pg.sql_db("db_wl", WORKLOAD_DB_WL)?;
    pg.sql_db("db2", WORKLOAD_DB2)?;
    {
        let mut a = pg.client("postgres")?;
        let mut b = pg.client("postgres")?;
        for _ in 0..20 {
            a.batch_execute("BEGIN; SELECT * FROM w_new WHERE id < 50 FOR SHARE")?;
            b.batch_execute("BEGIN; SELECT * FROM w_new WHERE id < 50 FOR SHARE")?;
            a.batch_execute("COMMIT")?;
            b.batch_execute("COMMIT")?;
        }
    }
    // A transaction still open at the checkpoint, holding the newest xid:
    // only its insert record's xl_xid tells WAL ingest about it.
    let mut open = pg.client("postgres")?;
    open.batch_execute("BEGIN; INSERT INTO w_trunc VALUES (-1, 'open at the checkpoint')")?;
    pg.sql("CHECKPOINT")?;
    // What the primary says right after the checkpoint.
    let cd = controldata(pg.data_dir())?;
    let ckpt = lsn_of(&cd["Latest checkpoint location"]);
    let (primary_dbs, primary_forks) = rel_files(pg.data_dir())?;
    let slru_on_disk = slru_files(pg.data_dir())?;
    let prepared = prepared_xids(&pg)?;
    // The WAL after the checkpoint record must exist for the reader to
    // finish it: a segment switch, and a commit in the next segment.
    pg.sql("SELECT pg_switch_wal()")?;
    pg.sql("SELECT txid_current()")?;
    open.batch_execute("ROLLBACK")?;
    eprintln!("workload done in {:?}; WAL {start}..{ckpt} ({} MiB)", t.elapsed(), (ckpt.0 - start.0) >> 20);

    let t = Instant::now();
    let mut ingest = WalIngest::new(&tl)?;
    let mut rng = Rng::from_time();
    let (mut records, mut frozen, mut last_end) = (0u64, 0u64, start);
    let mut rmgrs: BTreeMap<&'static str, u64> = BTreeMap::new();
    decode_wal_dir(&pg.data_dir().join("pg_wal"), start, ckpt + 1, &mut rng, |rec| {
        *rmgrs.entry(storage::wal::rmgr::name(rec.xl_rmid)).or_default() += 1;
        let froze = {
            let mut writer = tl.writer();
            ingest.ingest(&mut writer, &rec).with_context(|| format!("record at {}", rec.start_lsn))?
        };
        if froze {
            frozen += 1;
            tl.flush_frozen_layers()?;
        }
        records += 1;
        last_end = rec.end_lsn;
        Ok(())
    })?;
    let end = tl.last_record_lsn();
    ensure!(end == last_end && end > ckpt, "ingest ended at {end}, checkpoint record at {ckpt}");
    eprintln!("ingested {records} records in {:?} ({} layers frozen); per rmgr {rmgrs:?}", t.elapsed(), frozen);
    for rmgr in ["Database", "Storage", "RelMap", "MultiXact", "Heap", "Heap2", "Btree", "Hash", "Gin", "Transaction", "XLOG"] {
        ensure!(rmgrs.get(rmgr).copied().unwrap_or(0) > 0, "no {rmgr} records: {rmgrs:?}");
    }

    // Databases and forks at the checkpoint, against the primary's files.
    let (dbs, forks) = timeline_rels(&tl, end)?;
    ensure!(dbs == primary_dbs, "databases after ingest: timeline {dbs:?}, primary {primary_dbs:?}");
    let db_fc = db_oid(&pg, "db_fc")?;
    let db_wl = db_oid(&pg, "db_wl")?;
    ensure!(dbs.contains(&(1663, db_fc)) && dbs.contains(&(1663, db_wl)) && dbs.len() == 7, "{dbs:?}");
    let lagging = compare_rels("after ingest vs primary files", &forks, &primary_forks, true)?;
    let fsm = primary_forks.keys().filter(|r| r.fork == FSM_FORKNUM).count();
    eprintln!(
        "after ingest: {} databases, {} forks match; FSM forks behind the files ({} of {fsm}): {lagging:?}",
        dbs.len(),
        forks.len(),
        lagging.len()
    );
    ensure!(lagging.len() * 10 <= fsm, "too many FSM forks behind the files");
    // The workload's own relations must be there with their real sizes.
    let w_vac = RelTag::new(1663, postgres_db, filenode(&pg, "postgres", "w_vac")?, MAIN_FORKNUM);
    ensure!(forks.get(&w_vac) == primary_forks.get(&w_vac) && forks[&w_vac] < 100, "w_vac not truncated: {:?}", forks.get(&w_vac));
    let w_trunc = RelTag::new(1663, postgres_db, filenode(&pg, "postgres", "w_trunc")?, MAIN_FORKNUM);
    ensure!(forks.get(&w_trunc) == Some(&1), "w_trunc: {:?}", forks.get(&w_trunc));
    let pg_class = RelTag::new(1663, postgres_db, filenode(&pg, "postgres", "pg_class")?, MAIN_FORKNUM);
    ensure!(forks.contains_key(&pg_class), "pg_class's new relfilenode after VACUUM FULL is missing");

    // FILE_COPY copied template1's pages: they equal db_fc's files.
    let mut copied = 0;
    for rel in forks.keys().filter(|r| r.db_node == db_fc) {
        copied += compare_blocks(&tl, end, *rel, &pg.data_dir().join(format!("base/{db_fc}")))?;
    }
    ensure!(copied > 100, "only {copied} blocks in db_fc");

    // Just before the checkpoint record, the counters WAL ingest tracked
    // itself must already be what CreateCheckPoint read from shared memory
    // (nothing ran concurrently): the record's own values cannot help yet.
    let before = CheckPoint::decode(&tl.get(Key::checkpoint(), ckpt)?.unwrap()).map_err(|e| anyhow!(e))?;
    let get = |k: &str| cd[&format!("Latest checkpoint's {k}")].clone();
    let counters = |cp: &CheckPoint| {
        (
            format!("{}:{}", cp.next_xid >> 32, cp.next_xid as u32),
            cp.next_oid.to_string(),
            cp.next_multi.to_string(),
            cp.next_multi_offset.to_string(),
        )
    };
    let expected = (get("NextXID"), get("NextOID"), get("NextMultiXactId"), get("NextMultiOffset"));
    ensure!(
        counters(&before) == expected,
        "before the checkpoint record: (next xid, oid, multi, offset) {:?}, pg_controldata {expected:?}",
        counters(&before)
    );
    // The checkpoint, SLRUs and prepared transactions at the checkpoint record.
    let cp = CheckPoint::decode(&tl.get(Key::checkpoint(), end)?.unwrap()).map_err(|e| anyhow!(e))?;
    ensure!(ingest.checkpoint() == &cp);
    compare_checkpoint("after ingest", &cp, &cd)?;
    ensure!(cp.next_multi > 1 && cp.next_oid > 16384 + 8192, "{cp:?}");
    let slru = timeline_slru(&tl, end)?;
    ensure!(slru == slru_on_disk, "SLRU segments after ingest: timeline {slru:?}, files {slru_on_disk:?}");
    ensure!(tl.list_twophase(end)? == prepared, "prepared: {prepared:?} vs {:?}", tl.list_twophase(end)?);
    eprintln!("ingest checked; checkpoint {cp:?}; total {:?}", t0.elapsed());

    // A second WalIngest picks up where the first stopped.
    let again = WalIngest::new(&tl)?;
    ensure!(again.checkpoint() == &cp);
    Ok(())
}

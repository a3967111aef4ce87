//! `project_redo::apply_project_record` against a real PostgreSQL 15 primary.
//!
//! The oracle is the primary's own files: after a `CHECKPOINT` every dirty
//! `pg_xact` / `pg_multixact` page and visibility-map page is on disk. The
//! test copies those files ("before"), notes the checkpoint's redo LSN, runs
//! a workload, checkpoints again and copies them again ("after"). It then
//! decodes the WAL from the redo LSN on with `storage::wal`, runs the ingest
//! rules on every record, applies every value ingest puts on a CLOG,
//! multixact or (one table's) visibility-map key to the "before" pages in LSN
//! order — zero images from page-zeroing records, project records with
//! `apply_project_record` — and requires the result to equal the "after"
//! files byte for byte, on every page of every segment (touched or not).
//!
//! The workload: ~40,000 top-level transactions committing or aborting
//! (a procedure with COMMIT / ROLLBACK), subtransactions that commit, abort,
//! are released or rolled back (exception blocks and explicit SAVEPOINTs),
//! one transaction with 33,000 committed subtransactions (its commit record
//! spans CLOG pages), one aborting with 5,000; multixacts from two and three
//! sessions share- and key-share-locking the same rows (3,000 of them from
//! subtransactions, so they cross offsets and members pages), and heap
//! inserts, updates, deletes and row locks on an all-visible, all-frozen
//! table. Autovacuum is off, so nothing else changes these files.
//!
//! PostgreSQL 15.15 and later also store the starting offset of the *next*
//! multixact when creating one; ingest emits that entry too, so no
//! difference is tolerated.

#[path = "wal_common.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, ensure, Context};
use common::*;
use pageserver_harness::PgCluster;
use storage::key::{Key, KeyClass, RelTag, SlruKind, VISIBILITYMAP_FORKNUM};
use storage::lsn::Lsn;
use storage::project_redo::apply_project_record;
use storage::value::{ProjectRecord, RecordPayload, Value, WalRecordValue};
use storage::wal::ingest::{ingest_record, IngestChange, SLRU_PAGES_PER_SEGMENT};
use storage::wal::{rmgr, BLCKSZ};

type Page = Vec<u8>;

/// Every page of every segment file of an SLRU directory, by page number.
fn read_slru(data_dir: &Path, kind: SlruKind) -> anyhow::Result<BTreeMap<u32, Page>> {
    let dir = data_dir.join(kind.dir_name());
    let mut pages = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(segno) = u32::from_str_radix(&name, 16) else { continue };
        let bytes = std::fs::read(entry.path())?;
        ensure!(bytes.len() % BLCKSZ == 0, "{name}: {} bytes is not a whole number of pages", bytes.len());
        for (i, page) in bytes.chunks_exact(BLCKSZ).enumerate() {
            pages.insert(segno * SLRU_PAGES_PER_SEGMENT + i as u32, page.to_vec());
        }
    }
    Ok(pages)
}

fn read_fork(path: &Path) -> anyhow::Result<BTreeMap<u32, Page>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(bytes.len() % BLCKSZ == 0);
    Ok(bytes.chunks_exact(BLCKSZ).enumerate().map(|(i, p)| (i as u32, p.to_vec())).collect())
}

/// The files compared, as pages. VM pages are keyed by block number.
#[derive(Clone)]
struct Snapshot {
    slru: BTreeMap<SlruKind, BTreeMap<u32, Page>>,
    vm: BTreeMap<u32, Page>,
}

fn snapshot(pg: &PgCluster, vm_path: &Path) -> anyhow::Result<Snapshot> {
    let mut slru = BTreeMap::new();
    for kind in SlruKind::ALL {
        slru.insert(kind, read_slru(pg.data_dir(), kind)?);
    }
    Ok(Snapshot { slru, vm: read_fork(vm_path)? })
}

/// Where a key's page lives in a [`Snapshot`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum PageId {
    Slru(SlruKind, u32),
    Vm(u32),
}

#[derive(Default, Debug)]
struct Counts {
    records: u64,
    per_rmgr: BTreeMap<&'static str, u64>,
    applied: BTreeMap<&'static str, u64>,
    xids_set: BTreeMap<u8, u64>,
    members: u64,
    multis: u64,
}

#[test]
fn project_records_reproduce_the_primarys_slru_and_vm_files() -> anyhow::Result<()> {
    let pg = PgCluster::start_primary(&[
        ("autovacuum", "off"),
        ("max_wal_size", "4GB"),
        ("checkpoint_timeout", "1h"),
        ("shared_buffers", "64MB"),
    ])?;
    pg.sql("SELECT pg_create_physical_replication_slot('project_redo', true)")?;
    pg.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         INSERT INTO t SELECT g, 0 FROM generate_series(1, 5000) g;
         CREATE TABLE sx (i int);
         CREATE TABLE vmt (id int, v int, pad text) WITH (fillfactor = 50);
         INSERT INTO vmt SELECT g, 0, repeat('x', 100) FROM generate_series(1, 20000) g;",
    )?;
    pg.sql("VACUUM (FREEZE) vmt")?;
    pg.sql(
        "CREATE PROCEDURE churn(n int) LANGUAGE plpgsql AS $$
         BEGIN
           FOR i IN 1..n LOOP
             IF i % 10 = 0 THEN
               UPDATE t SET v = v + 1 WHERE id = 1 + i % 5000;
             ELSE
               PERFORM txid_current();
             END IF;
             IF i % 3 = 0 THEN ROLLBACK; ELSE COMMIT; END IF;
           END LOOP;
         END $$;
         CREATE PROCEDURE subs(n int) LANGUAGE plpgsql AS $$
         BEGIN
           FOR i IN 1..n LOOP
             BEGIN
               INSERT INTO sx VALUES (i);
               IF i % 4 = 0 THEN RAISE EXCEPTION 'roll back this subtransaction'; END IF;
             EXCEPTION WHEN others THEN NULL;
             END;
             IF i % 7 = 0 THEN
               IF i % 21 = 0 THEN ROLLBACK; ELSE COMMIT; END IF;
             END IF;
           END LOOP;
         END $$;",
    )?;
    let vm_rel = {
        let row = pg.sql("SELECT d.oid, pg_relation_filenode('vmt'), pg_relation_filepath('vmt') FROM pg_database d WHERE d.datname = current_database()")?;
        let v = |i: usize| row[0][i].clone().unwrap();
        (RelTag::new(1663, v(0).parse()?, v(1).parse()?, VISIBILITYMAP_FORKNUM), pg.data_dir().join(format!("{}_vm", v(2))))
    };

    pg.sql("CHECKPOINT")?;
    let redo = sql_lsn(&pg, "redo_lsn FROM pg_control_checkpoint()")?;
    let next_xid_before = pg.sql_one("SELECT next_xid FROM pg_control_checkpoint()")?.unwrap();
    let before = snapshot(&pg, &vm_rel.1)?;

    run_workload(&pg)?;

    pg.sql("CHECKPOINT")?;
    let after = snapshot(&pg, &vm_rel.1)?;
    let end = sql_lsn(&pg, "pg_current_wal_insert_lsn()")?;
    let cp = pg.sql("SELECT next_xid, next_multixact_id, next_multi_offset FROM pg_control_checkpoint()")?;
    eprintln!("next xid {next_xid_before} -> {:?}, next multixact {:?} (offset {:?})", cp[0][0], cp[0][1], cp[0][2]);
    // The decoder reads into the segment after `end`: make it exist.
    pg.sql("SELECT pg_switch_wal(); CREATE TABLE after_switch (a int); INSERT INTO after_switch VALUES (1)")?;

    // Replay.
    let wal_dir = pg.data_dir().join("pg_wal");
    let mut rng = Rng::from_time();
    let mut pages: BTreeMap<PageId, Page> = BTreeMap::new();
    let mut counts = Counts::default();
    // multixact -> (offset, nmembers), from the CREATE_ID records.
    let mut created: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    let mut problems = Vec::new();
    let start = Lsn(redo.0 / SEG * SEG);
    decode_wal_dir(&wal_dir, start, end, &mut rng, |rec| {
        if rec.start_lsn < redo {
            return Ok(());
        }
        counts.records += 1;
        *counts.per_rmgr.entry(rmgr::name(rec.xl_rmid)).or_default() += 1;
        if rec.xl_rmid == rmgr::MULTIXACT && rec.rmgr_info() == 0x20 {
            let d = rec.main_data();
            let word = |i: usize| u32::from_le_bytes(d[i..i + 4].try_into().unwrap());
            created.insert(word(0), (word(4), word(8)));
        }
        let batch = ingest_record(&rec)?;
        for change in batch.changes {
            let IngestChange::Put { key, value } = change else { continue };
            let Some(id) = page_id(key, vm_rel.0) else { continue };
            let page = pages.entry(id).or_insert_with(|| base_page(&before, id));
            let label = match &value {
                Value::Image(image) => {
                    ensure!(image.len() == BLCKSZ, "{id:?} at {}: image of {} bytes", rec.end_lsn, image.len());
                    page.copy_from_slice(image);
                    match id {
                        PageId::Slru(SlruKind::Clog, _) => "clog zero image",
                        PageId::Slru(SlruKind::MultiXactOffsets, _) => "offsets zero image",
                        PageId::Slru(SlruKind::MultiXactMembers, _) => "members zero image",
                        PageId::Vm(_) => "vm image",
                    }
                }
                Value::WalRecord(WalRecordValue { rec: RecordPayload::Project(p), will_init }) => {
                    if *will_init {
                        page.fill(0);
                    }
                    if let Err(e) = apply_project_record(key, batch.lsn, page, p) {
                        if problems.len() < 20 {
                            problems.push(e);
                        }
                    }
                    match p {
                        ProjectRecord::ClogSetStatus { status, xids } => {
                            *counts.xids_set.entry(*status).or_default() += xids.len() as u64;
                            "ClogSetStatus"
                        }
                        ProjectRecord::VmClearBits { .. } => "VmClearBits",
                        ProjectRecord::MultixactOffsets { entries } => {
                            counts.multis += entries.len() as u64;
                            "MultixactOffsets"
                        }
                        ProjectRecord::VmTruncate { .. } => "VmTruncate",
                        ProjectRecord::MultixactMembers { members, .. } => {
                            counts.members += members.len() as u64;
                            "MultixactMembers"
                        }
                    }
                }
                Value::WalRecord(WalRecordValue { rec: RecordPayload::Postgres { .. }, .. }) => {
                    bail!("{id:?} at {}: ingest put a PostgreSQL record ({}) on it", rec.start_lsn, rmgr::name(rec.xl_rmid))
                }
            };
            *counts.applied.entry(label).or_default() += 1;
        }
        Ok(())
    })?;
    eprintln!("WAL {redo}..{end}: {} records, per rmgr {:?}", counts.records, counts.per_rmgr);
    eprintln!(
        "applied {:?}; xids set per status {:?}; {} multixacts, {} members",
        counts.applied, counts.xids_set, counts.multis, counts.members
    );
    ensure!(problems.is_empty(), "apply_project_record refused records:\n{}", problems.join("\n"));

    // Compare every page of the after files, and every page we touched.
    let mut ids: BTreeSet<PageId> = pages.keys().copied().collect();
    for (kind, map) in &after.slru {
        ids.extend(map.keys().map(|p| PageId::Slru(*kind, *p)));
    }
    ids.extend(after.vm.keys().map(|b| PageId::Vm(*b)));
    // Per file kind: (pages compared, pages the WAL touched, pages the workload changed).
    let mut compared: BTreeMap<&'static str, (u32, u32, u32)> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for id in ids {
        let ours = pages.get(&id).cloned().unwrap_or_else(|| base_page(&before, id));
        let theirs = match id {
            PageId::Slru(kind, p) => after.slru[&kind].get(&p),
            PageId::Vm(b) => after.vm.get(&b),
        };
        let touched = pages.contains_key(&id);
        let name = match id {
            PageId::Slru(kind, _) => kind.dir_name(),
            PageId::Vm(_) => "vmt vm fork",
        };
        let Some(theirs) = theirs else {
            if touched {
                mismatches.push(format!("{id:?}: we changed it, the primary's files do not have it"));
            }
            continue;
        };
        let entry = compared.entry(name).or_default();
        entry.0 += 1;
        entry.1 += u32::from(touched);
        entry.2 += u32::from(*theirs != base_page(&before, id));
        if &ours == theirs {
            continue;
        }
        let first = ours.iter().zip(theirs).position(|(a, b)| a != b).unwrap();
        let differing = ours.iter().zip(theirs).filter(|(a, b)| a != b).count();
        mismatches.push(format!(
            "{id:?} (touched: {touched}): {differing} bytes differ, first at {first}: ours {:02x?} theirs {:02x?}",
            &ours[first..(first + 8).min(BLCKSZ)],
            &theirs[first..(first + 8).min(BLCKSZ)]
        ));
    }
    eprintln!("pages compared (all, touched by the WAL, changed since the first checkpoint): {compared:?}");
    ensure!(mismatches.is_empty(), "{} pages differ from the primary's:\n{}", mismatches.len(), mismatches.join("\n"));

    // The workload covered what it is meant to.
    let applied = |k: &str| counts.applied.get(k).copied().unwrap_or(0);
    ensure!(applied("clog zero image") >= 1, "no CLOG page was zeroed: {:?}", counts.applied);
    ensure!(applied("offsets zero image") >= 1 && applied("members zero image") >= 1, "no multixact page was zeroed: {:?}", counts.applied);
    ensure!(applied("ClogSetStatus") > 40_000 && counts.multis > 3000 && applied("VmClearBits") > 300, "{:?}", counts.applied);
    ensure!(counts.xids_set.get(&2).copied().unwrap_or(0) > 10_000, "too few aborted xids: {:?}", counts.xids_set);
    ensure!(compared.get("pg_xact").map_or(0, |c| c.1) >= 3, "fewer than 3 CLOG pages touched: {compared:?}");
    ensure!(compared.get("pg_multixact/members").map_or(0, |c| c.1) >= 4, "{compared:?}");
    ensure!(compared.get("vmt vm fork").map_or(0, |c| c.2) >= 1, "the workload cleared no visibility-map bit: {compared:?}");
    Ok(())
}

/// The page a key names, if it is one this test compares.
fn page_id(key: Key, vm_rel: RelTag) -> Option<PageId> {
    match key.classify()? {
        KeyClass::SlruBlock { kind, segno, blkno } => Some(PageId::Slru(kind, segno * SLRU_PAGES_PER_SEGMENT + blkno)),
        KeyClass::RelBlock { rel, blkno } if rel == vm_rel => Some(PageId::Vm(blkno)),
        _ => None,
    }
}

fn base_page(before: &Snapshot, id: PageId) -> Page {
    let page = match id {
        PageId::Slru(kind, p) => before.slru[&kind].get(&p),
        PageId::Vm(b) => before.vm.get(&b),
    };
    page.cloned().unwrap_or_else(|| vec![0u8; BLCKSZ])
}

fn run_workload(pg: &PgCluster) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    // Top-level commits and aborts, some with heap changes.
    pg.sql("CALL churn(40000)")?;
    // Subtransactions committing and aborting inside committing and aborting transactions.
    pg.sql("CALL subs(3000)")?;
    // One commit whose subtransactions span CLOG pages; one abort with many.
    pg.sql(
        "DO $$ BEGIN FOR i IN 1..33000 LOOP
           BEGIN INSERT INTO sx VALUES (i); EXCEPTION WHEN others THEN NULL; END;
         END LOOP; END $$",
    )?;
    {
        let mut c = pg.client("postgres")?;
        c.batch_execute(
            "BEGIN;
             DO $$ BEGIN FOR i IN 1..5000 LOOP
               BEGIN INSERT INTO sx VALUES (-i); EXCEPTION WHEN others THEN NULL; END;
             END LOOP; END $$;
             ROLLBACK",
        )?;
        // Explicit savepoints.
        for i in 0..200 {
            let script = match i % 4 {
                0 => "BEGIN; INSERT INTO sx VALUES (1); SAVEPOINT a; INSERT INTO sx VALUES (2); SAVEPOINT b; INSERT INTO sx VALUES (3); ROLLBACK TO b; RELEASE a; COMMIT",
                1 => "BEGIN; INSERT INTO sx VALUES (1); SAVEPOINT a; INSERT INTO sx VALUES (2); RELEASE a; ROLLBACK",
                2 => "BEGIN; SAVEPOINT a; INSERT INTO sx VALUES (2); ROLLBACK TO a; INSERT INTO sx VALUES (4); COMMIT",
                _ => "BEGIN; SAVEPOINT a; SAVEPOINT b; INSERT INTO sx VALUES (5); RELEASE b; ROLLBACK TO a; COMMIT",
            };
            c.batch_execute(script)?;
        }
    }
    // Multixacts. A share-locks rows 1..3000; B share-locks each of them in
    // its own subtransaction: 3,000 multixacts {A, B_i}.
    let mut a = pg.client("postgres")?;
    let mut b = pg.client("postgres")?;
    let mut c = pg.client("postgres")?;
    a.batch_execute("BEGIN; SELECT count(*) FROM (SELECT 1 FROM t WHERE id <= 3000 FOR SHARE) s")?;
    b.batch_execute(
        "DO $$ BEGIN FOR i IN 1..3000 LOOP
           BEGIN PERFORM 1 FROM t WHERE id = i FOR SHARE; EXCEPTION WHEN others THEN NULL; END;
         END LOOP; END $$",
    )?;
    a.batch_execute("COMMIT")?;
    // Key-share + no-key update + a third key-share locker: other member statuses, 3 members.
    a.batch_execute("BEGIN; SELECT count(*) FROM (SELECT 1 FROM t WHERE id BETWEEN 3001 AND 3100 FOR KEY SHARE) s")?;
    b.batch_execute("BEGIN; UPDATE t SET v = v + 1 WHERE id BETWEEN 3001 AND 3100")?;
    c.batch_execute("BEGIN; SELECT count(*) FROM (SELECT 1 FROM t WHERE id BETWEEN 3001 AND 3050 FOR KEY SHARE) s")?;
    a.batch_execute("COMMIT")?;
    b.batch_execute("ROLLBACK")?;
    c.batch_execute("COMMIT")?;
    // Pairs of short transactions.
    for i in 0..200 {
        let row = 3200 + i;
        a.batch_execute(&format!("BEGIN; SELECT * FROM t WHERE id = {row} FOR SHARE"))?;
        b.batch_execute(&format!("BEGIN; SELECT * FROM t WHERE id = {row} FOR SHARE"))?;
        a.batch_execute(if i % 2 == 0 { "COMMIT" } else { "ROLLBACK" })?;
        b.batch_execute("COMMIT")?;
    }
    // Visibility-map clears on the frozen table: insert, update (HOT and
    // not), delete, lock (clears all-frozen only).
    pg.sql("UPDATE vmt SET v = v + 1 WHERE id % 97 = 0")?;
    pg.sql("UPDATE vmt SET pad = repeat('y', 2000) WHERE id % 389 = 0")?;
    pg.sql("DELETE FROM vmt WHERE id % 101 = 0")?;
    pg.sql("BEGIN; SELECT count(*) FROM (SELECT 1 FROM vmt WHERE id % 89 = 0 FOR SHARE) s; COMMIT")?;
    pg.sql("BEGIN; SELECT count(*) FROM (SELECT 1 FROM vmt WHERE id % 83 = 0 FOR KEY SHARE) s; ROLLBACK")?;
    pg.sql("INSERT INTO vmt SELECT g, 1, 'new' FROM generate_series(1, 300) g")?;
    eprintln!("workload ran in {:?}", t.elapsed());
    Ok(())
}

//! The decoder against `pg_waldump` on WAL of a real PostgreSQL 15 primary
//! (acceptance 1 of issue 3): pgbench -i -s 10, a timed pgbench run, and DDL
//! touching every index type, sequences, databases, tablespaces, prepared and
//! sub-transactions, VACUUM and VACUUM FULL, generic WAL (bloom), logical
//! messages and replication origins. Every record must agree with
//! pg_waldump on LSN, prev, lengths, rmgr, xid and every block reference
//! (relation, fork, block, image, apply flag, hole, compression). The ingest
//! rules run on every record too; the relation sizes and transaction status
//! they imply are checked against the primary.
//!
//! `WAL_TEST_PGBENCH_SECS` sets the pgbench duration (default 120).

#[path = "wal_common.rs"]
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use common::*;
use pageserver_harness::PgCluster;
use storage::key::{Key, RelTag};
use storage::lsn::Lsn;
use storage::value::{ProjectRecord, RecordPayload, Value, WalRecordValue, TRANSACTION_STATUS_COMMITTED};
use storage::wal::ingest::{ingest_record, IngestChange};
use storage::wal::DecodedRecord;

/// Statements run one by one (VACUUM, CREATE DATABASE and friends refuse
/// multi-statement strings).
const DDL: &[&str] = &[
    r#"CREATE EXTENSION bloom"#,
    r#"CREATE TABLE ddl_t (id int PRIMARY KEY, v text, arr int[], ts tsvector, p point, r int4range, b int)"#,
    r#"INSERT INTO ddl_t SELECT g, md5(g::text), ARRAY[g % 50, g % 7], to_tsvector('english', 'word' || (g % 100) || ' other ' || (g % 13)),
    point(g % 1000, g / 1000), int4range(g, g + 10), g % 97 FROM generate_series(1, 20000) g"#,
    r#"CREATE INDEX ddl_hash ON ddl_t USING hash (v)"#,
    r#"CREATE INDEX ddl_gin ON ddl_t USING gin (arr)"#,
    r#"CREATE INDEX ddl_gin_ts ON ddl_t USING gin (ts)"#,
    r#"CREATE INDEX ddl_gist ON ddl_t USING gist (p)"#,
    r#"CREATE INDEX ddl_spgist ON ddl_t USING spgist (r)"#,
    r#"CREATE INDEX ddl_brin ON ddl_t USING brin (id) WITH (pages_per_range = 4)"#,
    r#"CREATE INDEX ddl_btree ON ddl_t (v)"#,
    r#"CREATE INDEX ddl_bloom ON ddl_t USING bloom (id, b)"#,
    r#"UPDATE ddl_t SET v = md5(v), arr = arr || 7, p = point(p[0] + 1, p[1]), r = int4range(id, id + 20), b = b + 1 WHERE id % 3 = 0"#,
    r#"INSERT INTO ddl_t SELECT g, md5(g::text), ARRAY[g % 50], to_tsvector('english', 'late' || g), point(g, g), int4range(g, g + 1), g
    FROM generate_series(20001, 30000) g"#,
    r#"DELETE FROM ddl_t WHERE id % 7 = 0"#,
    r#"VACUUM ddl_t"#,
    r#"CREATE TABLE ddl_vt AS SELECT g, repeat('v', 200) AS pad FROM generate_series(1, 20000) g"#,
    r#"DELETE FROM ddl_vt WHERE g > 100"#,
    r#"VACUUM ddl_vt"#,
    r#"CREATE SEQUENCE ddl_seq"#,
    r#"SELECT count(nextval('ddl_seq')) FROM generate_series(1, 500)"#,
    r#"ALTER SEQUENCE ddl_seq RESTART WITH 1000"#,
    r#"CREATE TABLE ddl_drop AS SELECT g, repeat('d', 100) AS pad FROM generate_series(1, 5000) g"#,
    r#"DROP TABLE ddl_drop"#,
    r#"CREATE TABLE ddl_trunc AS SELECT g FROM generate_series(1, 5000) g"#,
    r#"TRUNCATE ddl_trunc"#,
    r#"INSERT INTO ddl_trunc SELECT g FROM generate_series(1, 100) g"#,
    r#"CREATE UNLOGGED TABLE ddl_unlogged (a int PRIMARY KEY)"#,
    r#"INSERT INTO ddl_unlogged SELECT generate_series(1, 100)"#,
    r#"BEGIN; INSERT INTO ddl_trunc VALUES (1); PREPARE TRANSACTION 'p_commit'"#,
    r#"COMMIT PREPARED 'p_commit'"#,
    r#"BEGIN; INSERT INTO ddl_trunc VALUES (2); PREPARE TRANSACTION 'p_abort'"#,
    r#"ROLLBACK PREPARED 'p_abort'"#,
    r#"DO $$ BEGIN
  FOR i IN 1..300 LOOP
    BEGIN
      INSERT INTO ddl_t (id, v) VALUES (100000 + i, 'sub');
      IF i % 3 = 0 THEN RAISE EXCEPTION 'roll back this one'; END IF;
    EXCEPTION WHEN others THEN NULL;
    END;
  END LOOP;
END $$"#,
    r#"BEGIN; SAVEPOINT a; INSERT INTO ddl_trunc VALUES (3); SAVEPOINT b; INSERT INTO ddl_trunc VALUES (4); ROLLBACK TO b; RELEASE a; COMMIT"#,
    r#"BEGIN; INSERT INTO ddl_trunc VALUES (5); ROLLBACK"#,
    r#"SELECT pg_logical_emit_message(true, 'wal_test', 'transactional')"#,
    r#"SELECT pg_logical_emit_message(false, 'wal_test', 'not transactional')"#,
    r#"VACUUM FULL ddl_t"#,
    r#"VACUUM FULL pgbench_branches"#,
    r#"CLUSTER pgbench_tellers USING pgbench_tellers_pkey"#,
    r#"VACUUM (FREEZE, ANALYZE) pgbench_history"#,
    r#"REINDEX TABLE ddl_t"#,
    r#"DROP INDEX ddl_gist"#,
];

#[test]
fn decoder_agrees_with_pg_waldump_on_pgbench_and_ddl() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("WAL_TEST_PGBENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let pg = PgCluster::start_primary(&[
        ("wal_level", "logical"),
        ("max_prepared_transactions", "10"),
        ("max_wal_size", "4GB"),
        ("checkpoint_timeout", "30s"),
        ("shared_buffers", "64MB"),
        // The workload vacuums explicitly; an autovacuum truncating a table
        // after the last LSN compared would race the relation-size check.
        ("autovacuum", "off"),
    ])?;
    // The slot keeps every segment from here on.
    pg.sql("SELECT pg_create_physical_replication_slot('wal_test', true)")?;
    let insert = sql_lsn(&pg, "pg_current_wal_insert_lsn()")?;
    let start = Lsn(insert.0 / SEG * SEG);

    pg.run_as_postgres_checked("pgbench", &["-i", "-s", "10", "-q"])?;
    let ts_dir = pg.root_dir().join("ts_wal_test");
    std::fs::create_dir_all(&ts_dir)?;
    pageserver_harness::as_postgres::chown_to_postgres(&ts_dir)?;
    pg.sql(&format!("CREATE TABLESPACE ts_wal_test LOCATION '{}'", ts_dir.display()))?;
    for stmt in DDL {
        pg.sql(stmt)?;
    }
    pg.sql("ALTER TABLE ddl_trunc SET TABLESPACE ts_wal_test; CREATE TABLE in_ts (a int) TABLESPACE ts_wal_test; INSERT INTO in_ts SELECT generate_series(1, 1000)")?;
    pg.sql("CREATE DATABASE ddl_db")?;
    pg.sql_db("ddl_db", "CREATE TABLE t (a int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)")?;
    pg.sql("DROP DATABASE ddl_db")?;
    pg.sql(
        "SELECT pg_replication_origin_create('wal_test_origin'); \
         SELECT pg_replication_origin_session_setup('wal_test_origin'); \
         INSERT INTO ddl_trunc VALUES (6);",
    )?;
    // Two sessions share-locking the same rows make multixacts.
    {
        let mut a = pg.client("postgres")?;
        let mut b = pg.client("postgres")?;
        a.batch_execute("BEGIN; SELECT * FROM pgbench_branches FOR SHARE")?;
        b.batch_execute("BEGIN; SELECT * FROM pgbench_branches FOR SHARE")?;
        a.batch_execute("COMMIT")?;
        b.batch_execute("COMMIT")?;
    }
    let out = pg.run_as_postgres_checked("pgbench", &["-c", "4", "-j", "2", "-T", &secs.to_string(), "-n"])?;
    eprintln!(
        "{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("tps") || l.contains("processed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    pg.sql("DROP TABLE ddl_trunc; DROP TABLE in_ts")?;
    pg.sql("DROP TABLESPACE ts_wal_test")?;
    let end = sql_lsn(&pg, "pg_current_wal_insert_lsn()")?;
    pg.sql("SELECT pg_switch_wal()")?;
    eprintln!("comparing WAL {start}..{end} ({} MiB)", (end.0 - start.0) >> 20);

    let wal_dir = pg.data_dir().join("pg_wal");
    let mut rng = Rng::from_time();
    let mut page = [0u8; 8192];
    let mut bad_images = Vec::new();
    let mut ingest = IngestCheck::default();
    let t = std::time::Instant::now();
    let stats = compare_with_waldump(&wal_dir, start, end, &mut rng, |rec| {
        ingest.apply(rec)?;
        for b in &rec.blocks {
            if b.has_image() {
                if let Err(e) = rec.restore_image(b, &mut page).map_err(|e| e.to_string()).and_then(|()| check_page_sane(&page, rec)) {
                    if bad_images.len() < 10 {
                        bad_images.push(format!("{} block #{}: {e}", rec.start_lsn, b.id));
                    }
                }
            }
        }
        Ok(())
    })
    .context("comparing with pg_waldump")?;
    eprintln!(
        "{} records, {} MiB fed, {} FPIs, {} multi-page, {} with top-level xid, {} with origin, in {:?}; per rmgr {:?}",
        stats.records,
        stats.bytes >> 20,
        stats.fpis,
        stats.multi_page,
        stats.with_toplevel_xid,
        stats.with_origin,
        t.elapsed(),
        stats.per_rmgr
    );
    assert!(bad_images.is_empty(), "images that do not restore to a sane page:\n{}", bad_images.join("\n"));
    // The workload must have produced what it is meant to cover.
    for rmgr in [
        "XLOG",
        "Transaction",
        "Storage",
        "Database",
        "Tablespace",
        "RelMap",
        "Standby",
        "Heap2",
        "Heap",
        "Btree",
        "Hash",
        "Gin",
        "Gist",
        "Sequence",
        "SPGist",
        "BRIN",
        "Generic",
        "LogicalMessage",
        "MultiXact",
    ] {
        assert!(stats.per_rmgr.get(rmgr).copied().unwrap_or(0) > 0, "no {rmgr} records in {:?}", stats.per_rmgr);
    }
    assert!(stats.records > 100_000, "only {} records", stats.records);
    assert!(stats.fpis > 1000 && stats.multi_page > 1000);
    assert!(stats.with_toplevel_xid > 0, "no record carried a top-level xid");
    assert!(stats.with_origin > 0, "no record carried a replication origin");
    ingest.check_against(&pg)?;
    Ok(())
}

/// Runs the ingest rules on every record and keeps what can be checked
/// against the primary afterwards: relation sizes and transaction status.
#[derive(Default)]
struct IngestCheck {
    sizes: HashMap<RelTag, u32>,
    created: HashSet<RelTag>,
    status: HashMap<u32, u8>,
    counts: BTreeMap<&'static str, u64>,
}

impl IngestCheck {
    fn apply(&mut self, rec: &DecodedRecord) -> anyhow::Result<()> {
        let batch = ingest_record(rec)?;
        assert_eq!(batch.lsn, rec.end_lsn);
        for b in &rec.blocks {
            let put = batch.changes.iter().any(|c| matches!(c, IngestChange::Put { key, .. } if *key == Key::rel_block(b.rel, b.blkno)));
            anyhow::ensure!(put, "record at {}: no value for block #{}", rec.start_lsn, b.id);
        }
        for c in batch.changes {
            let name = match c {
                IngestChange::Put { value: Value::Image(_), .. } => "put image",
                IngestChange::Put { value: Value::WalRecord(WalRecordValue { rec: RecordPayload::Postgres { .. }, .. }), .. } => {
                    "put postgres record"
                }
                IngestChange::Put { value: Value::WalRecord(WalRecordValue { rec: RecordPayload::Project(ref p), .. }), .. } => {
                    if let ProjectRecord::ClogSetStatus { status, xids } = p {
                        for x in xids {
                            self.status.insert(*x, *status);
                        }
                    }
                    match p {
                        ProjectRecord::ClogSetStatus { .. } => "put clog",
                        ProjectRecord::VmClearBits { .. } => "put vm clear",
                        ProjectRecord::MultixactOffsets { .. } => "put multixact offsets",
                        ProjectRecord::VmTruncate { .. } => "put vm truncate",
                        ProjectRecord::MultixactMembers { .. } => "put multixact members",
                    }
                }
                IngestChange::RelExtend { rel, nblocks } => {
                    let s = self.sizes.entry(rel).or_insert(0);
                    *s = (*s).max(nblocks);
                    "rel extend"
                }
                IngestChange::RelCreate { rel } => {
                    self.sizes.entry(rel).or_insert(0);
                    self.created.insert(rel);
                    "rel create"
                }
                IngestChange::RelTruncate { rel, nblocks } => {
                    if let Some(s) = self.sizes.get_mut(&rel) {
                        *s = (*s).min(nblocks);
                    }
                    "rel truncate"
                }
                IngestChange::RelDrop { spc_node, db_node, rel_node } => {
                    self.sizes.retain(|r, _| (r.spc_node, r.db_node, r.rel_node) != (spc_node, db_node, rel_node));
                    "rel drop"
                }
                IngestChange::DbCreate { .. } => "db create",
                IngestChange::DbDrop { db_node, .. } => {
                    self.sizes.retain(|r, _| r.db_node != db_node);
                    "db drop"
                }
                IngestChange::SlruExtend { .. } => "slru extend",
                IngestChange::TwoPhaseDrop { .. } => "twophase drop",
                IngestChange::NextOid { .. } => "next oid",
                IngestChange::Commit { .. } => "commit",
            };
            *self.counts.entry(name).or_default() += 1;
        }
        Ok(())
    }

    fn check_against(&self, pg: &PgCluster) -> anyhow::Result<()> {
        eprintln!("ingest changes: {:?}", self.counts);
        for what in [
            "put image",
            "put postgres record",
            "put clog",
            "put vm clear",
            "put multixact offsets",
            "rel extend",
            "rel create",
            "rel truncate",
            "rel drop",
            "db create",
            "db drop",
            "twophase drop",
        ] {
            anyhow::ensure!(self.counts.get(what).copied().unwrap_or(0) > 0, "no {what} in {:?}", self.counts);
        }
        // Relation sizes: what the WAL says must never exceed the file, and
        // equals it for relations created inside the WAL range (except pages
        // PostgreSQL adds without WAL when extending a heap in bulk).
        let rows = pg.sql(
            "SELECT CASE WHEN c.reltablespace = 0 THEN CASE WHEN c.relisshared THEN 1664 ELSE d.dattablespace END ELSE c.reltablespace END,                     CASE WHEN c.relisshared THEN 0 ELSE d.oid END, pg_relation_filenode(c.oid), pg_relation_size(c.oid, 'main') / 8192, c.relname              FROM pg_class c, pg_database d WHERE d.datname = current_database() AND c.relpersistence = 'p'                AND pg_relation_filenode(c.oid) IS NOT NULL",
        )?;
        let (mut checked, mut equal, mut created_total, mut created_equal) = (0, 0, 0, 0);
        let mut problems = Vec::new();
        let mut differ = Vec::new();
        for r in rows {
            let v = |i: usize| r[i].clone().unwrap_or_default();
            let rel = RelTag::new(v(0).parse()?, v(1).parse()?, v(2).parse()?, 0);
            let actual: u32 = v(3).parse()?;
            let Some(&ours) = self.sizes.get(&rel) else { continue };
            checked += 1;
            if ours > actual {
                problems.push(format!("{} {rel:?}: WAL says {ours} blocks, file has {actual}", v(4)));
            }
            equal += u32::from(ours == actual);
            if self.created.contains(&rel) {
                created_total += 1;
                created_equal += u32::from(ours == actual);
                if ours != actual {
                    differ.push(format!("{} {ours}/{actual}", v(4)));
                }
            }
        }
        eprintln!("relation sizes: {checked} checked, {equal} equal; created in range: {created_total}, {created_equal} equal; differing: {differ:?}");
        anyhow::ensure!(problems.is_empty(), "sizes beyond the files:\n{}", problems.join("\n"));
        anyhow::ensure!(created_total > 20 && created_equal * 10 >= created_total * 8, "too many sizes differ: {differ:?}");
        // Transaction status: pg_xact_status of a sample of xids.
        let mut xids: Vec<(u32, u8)> = self.status.iter().map(|(x, s)| (*x, *s)).collect();
        xids.sort_unstable();
        // Every aborted xid (few: rollbacks and failed subtransactions), a
        // sample of the committed ones.
        let step = (xids.len() / 1500).max(1);
        let mut sample: Vec<(u32, u8)> = xids.iter().copied().filter(|(_, s)| *s != TRANSACTION_STATUS_COMMITTED).take(500).collect();
        sample.extend(xids.iter().copied().filter(|(_, s)| *s == TRANSACTION_STATUS_COMMITTED).step_by(step));
        let list = sample.iter().map(|(x, _)| x.to_string()).collect::<Vec<_>>().join(",");
        let rows = pg.sql(&format!("SELECT x, pg_xact_status(x::text::xid8) FROM unnest(ARRAY[{list}]::bigint[]) x"))?;
        let theirs: HashMap<u32, String> =
            rows.into_iter().map(|r| (r[0].clone().unwrap().parse().unwrap(), r[1].clone().unwrap_or_default())).collect();
        let (mut committed, mut aborted, mut unknown) = (0, 0, 0);
        for (x, s) in &sample {
            let want = if *s == TRANSACTION_STATUS_COMMITTED { "committed" } else { "aborted" };
            match theirs.get(x).map(String::as_str) {
                // NULL: older than the oldest xid PostgreSQL still answers
                // for (initdb's transactions, frozen since).
                Some("") | None => unknown += 1,
                got => {
                    anyhow::ensure!(got == Some(want), "xid {x}: ingest says {want}, PostgreSQL {got:?}");
                    committed += u32::from(*s == TRANSACTION_STATUS_COMMITTED);
                    aborted += u32::from(*s != TRANSACTION_STATUS_COMMITTED);
                }
            }
        }
        eprintln!(
            "transaction status: {} xids sampled: {committed} committed, {aborted} aborted, agree; {unknown} too old to ask",
            sample.len()
        );
        anyhow::ensure!(unknown * 20 < sample.len(), "{unknown} of {} xids have no status", sample.len());
        anyhow::ensure!(committed > 0 && aborted > 0);
        Ok(())
    }
}

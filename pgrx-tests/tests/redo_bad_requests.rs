//! Requests that must not reach PostgreSQL's redo code get clear errors in
//! Rust; an ERROR raised inside redo is caught and reported with the
//! record's LSN and resource manager, and redo keeps serving; a record that
//! drives redo into PANIC restarts the host, which comes back and serves,
//! without losing what a timeline had ingested.

use anyhow::{bail, Context, Result};
use pageserver_harness::PgCluster;
use std::time::Duration;
use storage::wal::{record::record_crc, rmgr, DecodedRecord};

mod common;

/// The block a record refers to, as redo_apply takes it.
#[derive(Clone, Copy, Debug)]
struct Target {
    spc: u32,
    db: u32,
    rel: u32,
    fork: i32,
    blkno: i64,
}

fn target_of(rec: &DecodedRecord) -> Target {
    let b = &rec.blocks[0];
    Target { spc: b.rel.spc_node, db: b.rel.db_node, rel: b.rel.rel_node, fork: b.fork() as i32, blkno: b.blkno as i64 }
}

/// Runs redo_apply on the host; the database error's message on failure.
fn redo(host: &PgCluster, t: Target, base: Option<&[u8]>, raw: &[u8], start: u64, end: u64) -> Result<Result<Vec<u8>, String>> {
    let mut client = host.client("postgres")?;
    let result = client.query_one(
        "SELECT pageserver.redo_apply($1, $2, $3, $4, $5, $6, ARRAY[$7::bytea], ARRAY[$8::int8], ARRAY[$9::int8])",
        &[&t.spc, &t.db, &t.rel, &t.fork, &t.blkno, &base, &raw, &(start as i64), &(end as i64)],
    );
    Ok(match result {
        Ok(row) => Ok(row.get(0)),
        // "SQLSTATE: message", so that checks can look at both.
        Err(e) => Err(e
            .as_db_error()
            .map(|d| format!("{}: {}", d.code().code(), d.message()))
            .with_context(|| format!("not a database error: {e}"))?),
    })
}

fn with_crc(mut raw: Vec<u8>) -> Vec<u8> {
    let crc = record_crc(&raw);
    raw[20..24].copy_from_slice(&crc.to_le_bytes());
    raw
}

fn expect_err(what: &str, r: Result<Vec<u8>, String>, needle: &str) -> Result<()> {
    match r {
        Ok(_) => bail!("{what}: accepted"),
        Err(msg) if msg.contains(needle) => {
            eprintln!("{what}: {msg}");
            Ok(())
        }
        Err(msg) => bail!("{what}: error does not say {needle:?}: {msg}"),
    }
}

fn redo_status(host: &PgCluster) -> Result<(i32, i64)> {
    let row = host.sql("SELECT count(*) FILTER (WHERE state = 'running'), max(restarts) FROM pageserver.status()")?;
    Ok((row[0][0].as_deref().unwrap_or("0").parse()?, row[0][1].as_deref().unwrap_or("0").parse()?))
}

#[test]
fn bad_requests_get_clear_errors_and_redo_survives_errors_and_panics() -> Result<()> {
    let primary = PgCluster::start_primary(&[("wal_compression", "pglz")])?;
    let host = PgCluster::start_host(&[])?;
    host.sql("CREATE EXTENSION pageserver_ext")?;
    primary.sql("CREATE TABLE t (a int, b text)")?;
    let start = common::start_capture(&primary)?;
    primary.sql("INSERT INTO t VALUES (1, 'first')")?; // initialises page 0
    primary.sql("INSERT INTO t VALUES (2, 'second')")?; // a plain insert on it
    primary.sql("CHECKPOINT")?;
    primary.sql("INSERT INTO t VALUES (3, 'third')")?; // first change after a checkpoint: a full-page image
    let end = common::end_capture(&primary)?;
    let all = common::records(&primary, start, end)?;
    let heap_inserts: Vec<&DecodedRecord> = all.iter().filter(|r| r.xl_rmid == rmgr::HEAP && r.rmgr_info() & 0x70 == 0x00).collect();
    let [r1, r2, r3] = heap_inserts[..] else { bail!("expected 3 heap inserts, found {}", heap_inserts.len()) };
    let commit = all.iter().find(|r| r.xl_rmid == rmgr::XACT).context("no commit record")?;
    assert!(r1.blocks[0].will_init() && r3.blocks[0].apply_image(), "workload did not produce the expected records");
    let t = target_of(r1);
    let s = |r: &DecodedRecord| r.start_lsn.0;
    let e = |r: &DecodedRecord| r.end_lsn.0;

    // The good chain works: r1 from nothing, r2 on its result.
    let p1 = redo(&host, t, None, &r1.raw, s(r1), e(r1))?.map_err(anyhow::Error::msg)?;
    let p2 = redo(&host, t, Some(&p1), &r2.raw, s(r2), e(r2))?.map_err(anyhow::Error::msg)?;
    assert_ne!(p1, p2);
    let postmaster = host.postmaster_pid()?;

    // Refused in Rust, before PostgreSQL's redo code sees anything.
    expect_err("truncated record", redo(&host, t, Some(&p1), &r2.raw[..r2.raw.len() - 4], s(r2), e(r2))?, "bytes but")?;
    let mut corrupt = r2.raw.to_vec();
    corrupt[30] ^= 0x10;
    expect_err("corrupt record", redo(&host, t, Some(&p1), &corrupt, s(r2), e(r2))?, "CRC")?;
    let mut as_btree = r2.raw.to_vec();
    as_btree[17] = rmgr::BTREE;
    expect_err("wrong resource manager", redo(&host, t, Some(&p1), &with_crc(as_btree), s(r2), e(r2))?, "not a btree page")?;
    expect_err("non-page resource manager", redo(&host, t, Some(&p1), &commit.raw, s(commit), e(commit))?, "not page-level")?;
    let elsewhere = Target { blkno: 7, ..t };
    expect_err("unreferenced block", redo(&host, elsewhere, Some(&p1), &r2.raw, s(r2), e(r2))?, "does not reference")?;
    expect_err("page newer than record", redo(&host, t, Some(&p2), &r2.raw, s(r2), e(r2))?, "already applied")?;
    expect_err("no base page", redo(&host, t, None, &r2.raw, s(r2), e(r2))?, "no base page")?;
    // Each of those is a rejection, with the SQLSTATE of bad data.
    expect_err("rejection's kind", redo(&host, t, Some(&p2), &r2.raw, s(r2), e(r2))?, "XX001: record rejected before redo: ")?;

    // An ERROR inside PostgreSQL's redo: a compressed image that cannot be
    // decompressed (the first pglz item is a back-reference before the start).
    let image = r3.blocks[0].image.context("r3 has an image")?;
    let mut bad_image = r3.raw.to_vec();
    let at = image.offset as usize;
    bad_image[at..at + 3].copy_from_slice(&[0x01, 0x00, 0x05]);
    let msg = redo(&host, t, None, &with_crc(bad_image), s(r3), e(r3))?;
    expect_err("undecompressible image", msg.clone(), "decompress")?;
    expect_err("error names the record", msg.clone(), &format!("Heap record at {}", r3.start_lsn))?;
    expect_err("an ERROR inside redo is not a rejection", msg, "XX000: redo of Heap record")?;
    // Redo goes on, and the image record itself applies.
    let p3 = redo(&host, t, None, &r3.raw, s(r3), e(r3))?.map_err(anyhow::Error::msg)?;
    assert_eq!(redo(&host, t, Some(&p1), &r2.raw, s(r2), e(r2))?.map_err(anyhow::Error::msg)?, p2);
    assert_ne!(p3, p2);
    assert_eq!(host.postmaster_pid()?, postmaster);
    assert_eq!(redo_status(&host)?.1, 0, "nothing restarted:\n{}", host.log_tail(20));
    let served = host.sql_one("SELECT sum(requests) FROM pageserver.status() WHERE kind = 'redo'")?;
    let served: i64 = served.as_deref().unwrap_or("0").parse()?;
    assert!(served >= 6, "the redo workers served {served} requests; the good ones went elsewhere?");

    // A timeline streaming from the primary, to check that the PANIC below
    // loses nothing it ingested.
    let tenant = host.sql_one("SELECT pageserver.create_tenant()")?.context("tenant")?;
    let timeline =
        host.sql_one(&format!("SELECT pageserver.create_timeline('{tenant}', '{}')", primary.connstr("postgres")))?.context("timeline")?;
    primary.sql("INSERT INTO t SELECT i, repeat('x', 100) FROM generate_series(10, 5000) i")?;
    let ingested = common::lsn(&primary, "pg_current_wal_lsn()")?;
    let last_record_lsn = || -> Result<storage::lsn::Lsn> {
        common::lsn(&host, &format!("(SELECT last_record_lsn::pg_lsn FROM pageserver.timelines() WHERE timeline_id = '{timeline}')"))
    };
    host.wait_for("the timeline to ingest the inserts", Duration::from_secs(120), || last_record_lsn().ok().filter(|l| *l >= ingested))?;
    let relfilenode = primary.sql_one("SELECT pg_relation_filenode('t')")?.context("filenode")?.parse::<u32>()?;
    let db = primary.sql_one("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.context("db")?.parse::<u32>()?;
    let rel = storage::key::RelTag::new(1663, db, relfilenode, 0);
    let addr = host.listener_addr().context("listener")?.to_string();
    let pages_at = |lsn: storage::lsn::Lsn| -> Result<(u32, Vec<bytes::Bytes>)> {
        use storage::pagestream::{ProtocolVersion, Request, RequestHeader, Response};
        let mut client = tools::pagestream_client::BlockingClient::connect(&addr, ProtocolVersion::V3, &tenant, &timeline)?;
        let hdr = RequestHeader { reqid: 1, request_lsn: lsn, not_modified_since: lsn };
        let Response::Nblocks { n, .. } = client.request(Request::Nblocks { hdr, rel })? else { bail!("Nblocks failed") };
        let mut pages = Vec::new();
        for blkno in 0..n {
            match client.request(Request::GetPage { hdr, rel, blkno })? {
                Response::GetPage { page, .. } => pages.push(page),
                other => bail!("GetPage {blkno}: {other:?}"),
            }
        }
        Ok((n, pages))
    };
    let before = pages_at(ingested)?;
    assert!(before.0 > 10, "t has {} blocks", before.0);

    // A record that makes heap redo PANIC (an insert at offset 300 of a
    // one-tuple page): the host restarts and redo serves again.
    let mut panicking = r2.raw.to_vec();
    let main_data = r2.main_data_offset as usize;
    panicking[main_data..main_data + 2].copy_from_slice(&300u16.to_le_bytes());
    let panicked = redo(&host, t, Some(&p1), &with_crc(panicking), s(r2), e(r2));
    assert!(!matches!(panicked, Ok(Ok(_))), "a PANIC-ing record returned a page");
    host.wait_for("the host to restart after the PANIC", Duration::from_secs(120), || {
        redo_status(&host).ok().filter(|(running, restarts)| *running == 5 && *restarts >= 1)
    })?;
    assert!(host.log().contains("invalid max offset number"), "{}", host.log_tail(30));
    assert_eq!(redo(&host, t, Some(&p1), &r2.raw, s(r2), e(r2))?.map_err(anyhow::Error::msg)?, p2);

    // The timeline came back with everything it had ingested, and streams on.
    host.wait_for("the timeline to come back", Duration::from_secs(120), || last_record_lsn().ok().filter(|l| *l >= ingested))?;
    let after = pages_at(ingested)?;
    assert_eq!(after.0, before.0, "relation size changed across the PANIC");
    assert!(after.1 == before.1, "pages at {ingested} changed across the PANIC");
    primary.sql("INSERT INTO t SELECT i, 'after' FROM generate_series(1, 1000) i")?;
    let later = common::lsn(&primary, "pg_current_wal_lsn()")?;
    host.wait_for("ingest after the restart", Duration::from_secs(120), || last_record_lsn().ok().filter(|l| *l >= later))?;
    assert!(pages_at(later)?.0 > before.0);
    Ok(())
}

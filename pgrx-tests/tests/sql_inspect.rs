//! Time-travel inspection: `pageserver.get_page` at a past LSN, fed to
//! `pageinspect` on the host, shows a heap page's tuples as the primary had
//! them then (its own `get_raw_page` at that moment), different from the
//! page at the latest LSN, which equals the primary's page now; B-tree
//! pages read with `bt_page_items`; `rel_size` and `list_relations` agree
//! with the primary; bad arguments get clear errors with their SQLSTATE.

use anyhow::{ensure, Context, Result};
use pageserver_harness::PgCluster;

mod common;
use common::e2e::{self, lsn_of};

/// What pageinspect shows of a heap page's tuples, hint bits left out
/// (they are not WAL-logged).
const TUPLES: &str = "SELECT lp, lp_flags, t_xmin, t_xmax, t_ctid, t_data FROM heap_page_items";

fn sqlstate(host: &PgCluster, sql: &str) -> Result<String> {
    let mut client = host.client("postgres")?;
    match client.simple_query(sql) {
        Ok(_) => anyhow::bail!("{sql} succeeded"),
        Err(e) => Ok(e.code().map(|c| c.code().to_string()).unwrap_or_default()),
    }
}

#[test]
fn get_page_shows_a_page_as_it_was() -> Result<()> {
    let primary = e2e::start_primary(true, &[("autovacuum", "off")])?;
    let host = e2e::start_host(true, &[])?;
    primary.sql("CREATE EXTENSION pageinspect")?;
    host.sql("CREATE EXTENSION pageinspect")?;
    primary.sql(
        "CREATE TABLE inspected (id int PRIMARY KEY, v text); INSERT INTO inspected SELECT g, 'before ' || g FROM generate_series(1, 50) g",
    )?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    let raw = format!("{TUPLES}(get_raw_page('inspected', 0)) ORDER BY lp");
    let then_on_primary = primary.sql(&raw)?;
    let then = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    primary.sql("UPDATE inspected SET v = 'after ' || id WHERE id <= 20; DELETE FROM inspected WHERE id > 45; CHECKPOINT")?;
    let now_on_primary = primary.sql(&raw)?;
    let now = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    e2e::wait_ingested(&host, &timeline, now)?;

    let db = primary.sql_one("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.context("db oid")?;
    let heap = primary.sql_one("SELECT pg_relation_filenode('inspected')")?.context("filenode")?;
    let index = primary.sql_one("SELECT pg_relation_filenode('inspected_pkey')")?.context("filenode")?;
    let page = |rel: &str, blkno: u32, lsn: &str| {
        format!("pageserver.get_page('{tenant}', '{timeline}', 1663, {db}, {rel}, 'main', {blkno}, {lsn})")
    };
    let then_on_host = host.sql(&format!("{TUPLES}({}) ORDER BY lp", page(&heap, 0, &format!("'{then}'"))))?;
    let now_on_host = host.sql(&format!("{TUPLES}({}) ORDER BY lp", page(&heap, 0, "NULL")))?;
    ensure!(then_on_host.len() == 50, "{} tuples at {then}", then_on_host.len());
    ensure!(then_on_host == then_on_primary, "at {then}: host {then_on_host:?}\nprimary then {then_on_primary:?}");
    ensure!(now_on_host == now_on_primary, "now: host {now_on_host:?}\nprimary {now_on_primary:?}");
    ensure!(then_on_host != now_on_host, "the page did not change");
    let header = host.sql_one(&format!("SELECT lsn <= '{then}' FROM page_header({})", page(&heap, 0, &format!("'{then}'"))))?;
    ensure!(header.as_deref() == Some("t"), "page_header at {then}: LSN past it");
    let leaf_items = host.sql_one(&format!("SELECT count(*) FROM bt_page_items({})", page(&index, 1, &format!("'{then}'"))))?;
    ensure!(leaf_items.as_deref() == Some("50"), "bt_page_items at {then}: {leaf_items:?}");

    let blocks = primary.sql_one("SELECT pg_relation_size('inspected') / 8192")?;
    let size = host.sql_one(&format!("SELECT pageserver.rel_size('{tenant}', '{timeline}', 1663, {db}, {heap})"))?;
    ensure!(size == blocks, "rel_size {size:?}, the primary has {blocks:?} blocks");
    let listed = host.sql(&format!(
        "SELECT count(*), count(*) FILTER (WHERE dbnode = {db} AND relnode = {heap} AND fork = 'main' AND blocks = {}) \
         FROM pageserver.list_relations('{tenant}', '{timeline}')",
        blocks.as_deref().unwrap_or("0")
    ))?;
    let count: i64 = listed[0][0].as_deref().unwrap_or("0").parse()?;
    ensure!(count > 400 && listed[0][1].as_deref() == Some("1"), "list_relations: {listed:?}");

    for (sql, code) in [
        (page(&heap, 0, "'FF/0'"), "22023"),
        (page(&heap, 0, "'yesterday'"), "22023"),
        (page(&heap, 99, "NULL"), "22023"),
        (page(&heap, 0, "NULL").replace("'main'", "'heap'"), "22023"),
        (page("4000000000", 0, "NULL"), "42704"),
        (page(&heap, 0, "NULL").replace(&timeline, "0123456789abcdef0123456789abcdef"), "42704"),
        (format!("pageserver.list_relations('{tenant}', 'nope')"), "22023"),
    ] {
        let got = sqlstate(&host, &format!("SELECT {sql}"))?;
        ensure!(got == code, "{sql}: SQLSTATE {got}, expected {code}");
    }
    Ok(())
}

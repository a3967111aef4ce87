//! Time-travel inspection: `pageserver.get_page` at a past LSN, fed to
//! `pageinspect` on the host, shows a heap page's tuples as the primary had
//! them then (its own `get_raw_page` at that moment), different from the
//! page at the latest LSN, which equals the primary's page now; B-tree
//! pages read with `bt_page_items`; `rel_size` and `list_relations` agree
//! with the primary; bad arguments get clear errors with their SQLSTATE.
//! `pageserver.checkpoint` puts everything ingested on disk, and
//! `pageserver.layers` lists the timeline's layer files;
//! `pageserver.stat_wal_receiver` shows the receiver streaming, and
//! reconnecting after the primary restarts. `pageserver.lsn_for_time` dates
//! LSNs by commit times, and a branch made `at_time` holds what the primary
//! had committed by then.

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
    let mut primary = e2e::start_primary(true, &[("autovacuum", "off")])?;
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

    // A checkpoint writes what is in memory; the layers show it.
    primary.sql("INSERT INTO inspected SELECT g, 'late ' || g FROM generate_series(100, 120) g")?;
    let late = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    e2e::wait_ingested(&host, &timeline, late)?;
    let on_disk = lsn_of(&host, &format!("SELECT pageserver.checkpoint('{tenant}', '{timeline}')"))?;
    ensure!(on_disk >= late, "checkpoint returned {on_disk}, before {late}");
    let layers = host.sql(&format!(
        "SELECT count(*), sum(bytes), count(*) FILTER (WHERE kind NOT IN ('image', 'delta L0', 'delta L1')), count(*) FILTER (WHERE kind = 'delta L0'), \
                max(lsn_end::pg_lsn) >= '{late}', bool_and(key_start < key_end AND lsn_start::pg_lsn < lsn_end::pg_lsn), \
                count(remote) \
         FROM pageserver.layers('{tenant}', '{timeline}')"
    ))?;
    let timeline_row = host.sql(&format!(
        "SELECT layer_files, layer_bytes, disk_consistent_lsn FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"
    ))?;
    ensure!(layers[0][0] == timeline_row[0][0] && layers[0][1] == timeline_row[0][1], "layers {layers:?}, timelines() {timeline_row:?}");
    ensure!(layers[0][6].as_deref() == Some("0"), "remote is not NULL without object storage: {layers:?}");
    ensure!(
        layers[0][2].as_deref() == Some("0") && layers[0][3].as_deref() != Some("0") && layers[0][4].as_deref() == Some("t"),
        "layers: {layers:?}"
    );
    ensure!(layers[0][5].as_deref() == Some("t"), "a layer with an empty range: {layers:?}");
    ensure!(timeline_row[0][2].as_deref().map(str::parse::<storage::lsn::Lsn>).transpose().ok().flatten() >= Some(late));

    // The receiver, before and after a restart of the primary.
    let receiver = |host: &PgCluster| -> Result<Vec<Option<String>>> {
        let rows = host.sql(&format!(
            "SELECT status, slot_name, lag_bytes, lag_seconds, reconnects, wal_bytes > 0, last_message IS NOT NULL, last_error \
             FROM pageserver.stat_wal_receiver() WHERE timeline_id = '{timeline}'"
        ))?;
        rows.into_iter().next().context("no receiver row")
    };
    // Caught up (the primary may log a little WAL of its own meanwhile).
    let row = host.wait_for("the receiver to be caught up", std::time::Duration::from_secs(30), || {
        receiver(&host).ok().filter(|row| row[2].as_deref() == Some("0"))
    })?;
    let slot = format!("pageserver_{}", &timeline[..16]);
    ensure!(row[0].as_deref() == Some("streaming") && row[1].as_deref() == Some(slot.as_str()), "receiver: {row:?}");
    ensure!(row[2].as_deref() == Some("0") && row[3].as_deref() == Some("0") && row[4].as_deref() == Some("0"), "receiver: {row:?}");
    ensure!(row[5].as_deref() == Some("t") && row[6].as_deref() == Some("t") && row[7].is_none(), "receiver: {row:?}");
    primary.stop()?;
    primary.start_again()?;
    primary.sql("INSERT INTO inspected VALUES (200, 'after the restart')")?;
    let restarted = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    e2e::wait_ingested(&host, &timeline, restarted)?;
    let row = receiver(&host)?;
    ensure!(row[0].as_deref() == Some("streaming") && row[4].as_deref() != Some("0"), "after the restart: {row:?}");

    for (sql, code) in [
        (page(&heap, 0, "'FF/0'"), "22023"),
        (page(&heap, 0, "'yesterday'"), "22023"),
        (page(&heap, 99, "NULL"), "22023"),
        (page(&heap, 0, "NULL").replace("'main'", "'heap'"), "22023"),
        (page("4000000000", 0, "NULL"), "42704"),
        (page(&heap, 0, "NULL").replace(&timeline, "0123456789abcdef0123456789abcdef"), "42704"),
        (format!("pageserver.list_relations('{tenant}', 'nope')"), "22023"),
        (format!("pageserver.layers('{tenant}', '0123456789abcdef0123456789abcdef')"), "42704"),
        (format!("pageserver.checkpoint('{tenant}', '0123456789abcdef0123456789abcdef')"), "42704"),
    ] {
        let got = sqlstate(&host, &format!("SELECT {sql}"))?;
        ensure!(got == code, "{sql}: SQLSTATE {got}, expected {code}");
    }
    Ok(())
}

/// `lsn_for_time` dates LSNs by the commit times in the WAL, and
/// `branch_timeline(at_time => t)` gives a branch whose `fullbackup`,
/// started as a stock PostgreSQL, holds every row committed before `t`
/// and none committed after (its `pg_dumpall` equals the primary's at `t`).
#[test]
fn a_branch_at_a_time_holds_what_was_committed_by_then() -> Result<()> {
    let primary = e2e::start_primary(true, &[("autovacuum", "off")])?;
    let host = e2e::start_host(true, &[])?;
    primary.sql("CREATE TABLE dated (id int PRIMARY KEY, batch text)")?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    let created = primary.sql_one("SELECT clock_timestamp()")?.context("time")?;
    for id in 1..=3 {
        primary.sql(&format!("INSERT INTO dated VALUES ({id}, 'before')"))?;
    }
    let after_before = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    let expected = e2e::dump_all(&primary)?;
    let t = primary.sql_one("SELECT clock_timestamp()")?.context("time")?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    for id in 4..=6 {
        primary.sql(&format!("INSERT INTO dated VALUES ({id}, 'after')"))?;
    }
    let end = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    e2e::wait_ingested(&host, &timeline, end)?;
    ensure!(expected.contains("3\tbefore") && !expected.contains("\tafter"), "the primary's dump at t: {expected}");

    let at = |time: &str| {
        host.sql(&format!(
            "SELECT lsn, position, commit_lsn, commit_time <= '{time}'::timestamptz \
             FROM pageserver.lsn_for_time('{tenant}', '{timeline}', '{time}')"
        ))
    };
    let row = at(&t)?;
    let (lsn, position) = (row[0][0].clone().context("lsn")?, row[0][1].as_deref());
    ensure!(position == Some("in_history") && row[0][2].as_deref() == Some(lsn.as_str()) && row[0][3].as_deref() == Some("t"), "{row:?}");
    let lsn: storage::lsn::Lsn = lsn.parse().map_err(|_| anyhow::anyhow!("bad LSN"))?;
    ensure!(lsn <= after_before, "lsn_for_time gave {lsn}, after the last commit before t ({after_before})");
    // Before the first commit ingested (the base backup's have no time), and after the last.
    ensure!(at(&created)?[0][1].as_deref() == Some("before_history"), "{:?}", at(&created)?);
    ensure!(at("2001-01-01")?[0][1].as_deref() == Some("before_history"));
    let now = host.sql_one("SELECT now()")?.context("now")?;
    let latest = at(&now)?;
    let ingested = host.sql_one(&format!("SELECT last_record_lsn FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"))?;
    ensure!(latest[0][1].as_deref() == Some("after_last_commit") && latest[0][0] == ingested, "{latest:?} vs {ingested:?}");
    let call = format!("pageserver.lsn_for_time('{tenant}', '{timeline}', now() + interval '1 hour')");
    ensure!(sqlstate(&host, &format!("SELECT * FROM {call}"))? == "22023", "a future time");
    let call = format!("pageserver.lsn_for_time('{tenant}', 'ffffffffffffffffffffffffffffffff', now())");
    ensure!(sqlstate(&host, &format!("SELECT * FROM {call}"))? == "42704", "an unknown timeline");

    let branch = host.sql(&format!("SELECT * FROM pageserver.branch_timeline('{tenant}', '{timeline}', at_time => '{t}')"))?;
    ensure!(branch[0][1].as_deref() == Some(lsn.to_string().as_str()), "branch {branch:?}, lsn_for_time {lsn}");
    let branch_id = branch[0][0].clone().context("branch id")?;
    e2e::check_fullbackup(&host, &tenant, &branch_id, None, &expected, true, "branch at a time")?;

    for (args, what) in
        [(format!("at_time => '{t}', lsn => '{lsn}'"), "lsn and at_time"), (format!("at_time => '{created}'"), "a time before the history")]
    {
        let call = format!("SELECT * FROM pageserver.branch_timeline('{tenant}', '{timeline}', {args})");
        ensure!(sqlstate(&host, &call)? == "22023", "{what}");
    }
    Ok(())
}

//! The monitoring functions against real traffic: `pageserver.progress`
//! shows an import while `create_timeline` runs; after every page of the
//! database is read over pagestream and a `fullbackup` is sent,
//! `stat_page_service` counts the requests, their bytes and latencies and
//! the connection that broke off, `stat_redo` the redo that served them;
//! `timeline_sizes` gives the primary's database sizes and the timeline's
//! layer bytes. Each is refused to a role without the right (see
//! `sql_privileges.rs`).

use anyhow::{ensure, Context, Result};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::e2e;

fn number(value: &Option<String>) -> Result<f64> {
    value.as_deref().context("NULL")?.parse().map_err(|e| anyhow::anyhow!("{value:?}: {e}"))
}

#[test]
fn monitoring_functions_count_real_traffic() -> Result<()> {
    let primary = e2e::start_primary(true, &[("autovacuum", "off")])?;
    let host = e2e::start_host(true, &[])?;
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", "5", "-q", "postgres"])?;
    let tenant = host.sql_one("SELECT pageserver.create_tenant()")?.context("tenant")?;

    // An import shows in pageserver.progress while it runs.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, connstr) = (done.clone(), host.connstr("postgres"));
        std::thread::spawn(move || -> Result<Vec<Vec<Option<String>>>> {
            let mut client = postgres::Client::connect(&connstr, postgres::NoTls)?;
            while !done.load(Ordering::Relaxed) {
                let rows = client.query("SELECT operation, timeline_id, bytes_done, bytes_total FROM pageserver.progress", &[])?;
                let rows: Vec<Vec<Option<String>>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.get::<_, Option<String>>(0),
                            r.get::<_, Option<String>>(1),
                            r.get::<_, Option<i64>>(2).map(|n| n.to_string()),
                            r.get::<_, Option<i64>>(3).map(|n| n.to_string()),
                        ]
                    })
                    .collect();
                // Once the base backup's size is known.
                if rows.iter().any(|r| r[0].as_deref() == Some("import") && r[3].as_deref().is_some_and(|t| t != "0")) {
                    return Ok(rows);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(Vec::new())
        })
    };
    let timeline =
        host.sql_one(&format!("SELECT pageserver.create_timeline('{tenant}', '{}')", primary.connstr("postgres")))?.context("timeline")?;
    done.store(true, Ordering::Relaxed);
    let seen = watcher.join().map_err(|_| anyhow::anyhow!("watcher panicked"))??;
    let import = seen.iter().find(|r| r[0].as_deref() == Some("import")).context("no import row seen in pageserver.progress")?;
    ensure!(import[1].as_deref() == Some(timeline.as_str()) && number(&import[3])? > 50e6, "import row {import:?}");

    // Traffic: writes (so that pages need redo), every page read, a
    // fullbackup, and a connection broken off.
    primary.run_as_postgres_checked("pgbench", &["-t", "300", "postgres"])?;
    let report = e2e::compare_after_checkpoint(&primary, &host, &tenant, &timeline, true)?;
    let addr = host.listener_addr().context("listener")?;
    let conn = format!("host={} port={} user=compute", addr.ip(), addr.port());
    host.run_as_postgres_checked("psql", &["-X", "-w", "-d", &conn, "-c", &format!("fullbackup {tenant} {timeline}")])?;
    std::net::TcpStream::connect(addr)?.write_all(&(1u32 << 30).to_be_bytes())?;
    std::thread::sleep(Duration::from_millis(200));

    let stats = host.sql(
        "SELECT kind, requests, errors, bytes, open_connections, total_ms, \
                (SELECT sum(b) FROM unnest(latency_buckets) b), cardinality(latency_bounds_us) = cardinality(latency_buckets) \
         FROM pageserver.stat_page_service() ORDER BY kind",
    )?;
    let row = |kind: &str| stats.iter().find(|r| r[0].as_deref() == Some(kind)).cloned().with_context(|| format!("no {kind} row"));
    let getpage = row("getpage")?;
    let requests = number(&getpage[1])?;
    ensure!(requests >= report.blocks as f64, "getpage requests {requests}, {} blocks compared", report.blocks);
    ensure!(number(&getpage[3])? >= requests * 8192.0 && number(&getpage[5])? > 0.0, "getpage {getpage:?}");
    ensure!(number(&getpage[6])? == requests && getpage[7].as_deref() == Some("t"), "histogram of getpage {getpage:?}");
    ensure!(number(&row("exists")?[1])? > 0.0 && number(&row("nblocks")?[1])? > 0.0, "{stats:?}");
    let fullbackup = row("fullbackup")?;
    ensure!(number(&fullbackup[1])? == 1.0 && number(&fullbackup[2])? == 0.0 && number(&fullbackup[3])? > 50e6, "{fullbackup:?}");
    let connections = row("connections")?;
    ensure!(number(&connections[1])? >= 3.0 && number(&connections[2])? >= 1.0, "connections {connections:?}");
    ensure!(connections[4].as_deref() == Some("0"), "connections still open {connections:?}");

    let redo = host.sql("SELECT count(*), sum(pages), sum(records), sum(failed), sum(busy_ms) > 0 FROM pageserver.stat_redo()")?;
    let workers = host.sql_one("SHOW pageserver.redo_workers")?;
    ensure!(redo[0][0] == workers, "stat_redo rows {redo:?}, redo_workers {workers:?}");
    ensure!(number(&redo[0][1])? > 0.0 && number(&redo[0][2])? > 0.0, "no redo counted: {redo:?}");
    ensure!(redo[0][3].as_deref() == Some("0") && redo[0][4].as_deref() == Some("t"), "{redo:?}");

    let sizes = host.sql(&format!(
        "SELECT logical_size, physical_size, physical_size = (SELECT layer_bytes FROM pageserver.timelines() WHERE timeline_id = '{timeline}') \
         FROM pageserver.timeline_sizes() WHERE timeline_id = '{timeline}'"
    ))?;
    let on_primary = number(&primary.sql_one("SELECT sum(pg_database_size(oid)) FROM pg_database")?)?;
    let logical = number(&sizes[0][0])?;
    ensure!((logical - on_primary).abs() < on_primary * 0.05, "logical size {logical}, the primary's databases {on_primary}");
    ensure!(number(&sizes[0][1])? > 1e6 && sizes[0][2].as_deref() == Some("t"), "sizes {sizes:?}");
    Ok(())
}

/// `compact` and `gc` run a pass of the layers worker at once (its period
/// here is an hour) and return what it did: `compact` merges the L0
/// layers however few; bad ids get their SQLSTATEs.
#[test]
fn compact_and_gc_run_a_layers_pass_now() -> Result<()> {
    let primary = e2e::start_primary(false, &[])?;
    let host = e2e::start_host(false, &[("pageserver.compaction_period", "1h"), ("pageserver.compaction_threshold", "10")])?;
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", "1", "-q", "postgres"])?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    let l0 = || host.sql_one(&format!("SELECT count(*) FROM pageserver.layers('{tenant}', '{timeline}') WHERE kind = 'delta L0'"));
    for _ in 0..2 {
        primary.run_as_postgres_checked("pgbench", &["-t", "200", "postgres"])?;
        e2e::wait_ingested(&host, &timeline, e2e::lsn_of(&primary, "SELECT pg_current_wal_lsn()")?)?;
        host.sql(&format!("SELECT pageserver.checkpoint('{tenant}', '{timeline}')"))?;
    }
    let before: u32 = l0()?.context("count")?.parse()?;
    ensure!(before >= 2, "{before} L0 layers before compact");
    let did = host.sql_one(&format!("SELECT pageserver.compact('{tenant}', '{timeline}')"))?.context("compact")?;
    ensure!(did.contains(&format!("merged {before} L0 layers")), "compact: {did}");
    ensure!(l0()?.as_deref() == Some("0"), "L0 layers left after compact: {:?}", l0()?);
    let passes = || host.sql_one(&format!("SELECT compaction_passes FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"));
    let passes_before = passes()?;
    let did = host.sql_one(&format!("SELECT pageserver.gc('{tenant}', '{timeline}')"))?.context("gc")?;
    ensure!(did.contains("nothing to compact") && passes()? != passes_before, "gc: {did}");
    for (call, code) in [
        (format!("pageserver.gc('{tenant}', 'nonsense')"), "22023"),
        (format!("pageserver.compact('{tenant}', 'ffffffffffffffffffffffffffffffff')"), "42704"),
    ] {
        let err = host.client("postgres")?.simple_query(&format!("SELECT {call}")).err().with_context(|| format!("{call} succeeded"))?;
        ensure!(err.code().map(|c| c.code()) == Some(code), "{call}: {err}");
    }
    Ok(())
}

//! Benchmark of in-process WAL redo through the shared-memory queue.
//!
//! Starts a stock primary, records 200 single-row heap inserts into one page,
//! then, on hosts with 1, 2 and 4 redo workers, measures with
//! `pageserver.redo_bench` (which times requests inside the host, from
//! threads that touch only the queue):
//! * the floor: an empty round trip (base page in, same page out, no record);
//! * a request of 1 record and of 199 records on the same base page, giving
//!   µs per record (the difference) and the fixed µs per request;
//! * requests/s of 1-record requests, and of empty ones as their floor.
//!
//! Needs the extension installed (release build for meaningful figures):
//! `cargo pgrx install --release -p pageserver_ext -c /usr/lib/postgresql/15/bin/pg_config`.

use anyhow::{bail, Context, Result};
use pageserver_harness::{cluster::check_pageserver_installed, PgCluster};
use storage::lsn::Lsn;
use storage::wal::{rmgr, BlockRef, DecodedRecord, WalStreamDecoder, DEFAULT_WAL_SEG_SIZE as SEG};

const COMMAND: &str = "cargo pgrx install --release -p pageserver_ext -c /usr/lib/postgresql/15/bin/pg_config && cargo run --release -p tools --bin redo_bench";
const INSERTS: usize = 200;

fn lsn(pg: &PgCluster, expr: &str) -> Result<Lsn> {
    let v = pg.sql_one(&format!("SELECT {expr}"))?.context("NULL LSN")?;
    v.parse().map_err(|e| anyhow::anyhow!("{e}"))
}

/// Heap-insert records of `INSERTS` rows going into page 0 of a new table.
fn record_inserts() -> Result<Vec<DecodedRecord>> {
    let primary = PgCluster::start_primary(&[("full_page_writes", "off")])?;
    primary.sql("CREATE TABLE t (a int) WITH (fillfactor = 100)")?;
    primary.sql("SELECT pg_create_physical_replication_slot('bench', true)")?;
    let switched = lsn(&primary, "pg_switch_wal()")?;
    let start = Lsn(switched.0.div_ceil(SEG) * SEG);
    primary.sql(&format!("INSERT INTO t SELECT generate_series(1, {INSERTS})"))?;
    let end = lsn(&primary, "pg_current_wal_insert_lsn()")?;
    primary.sql("SELECT pg_switch_wal()")?;
    primary.sql("CHECKPOINT")?;
    let wal_dir = primary.data_dir().join("pg_wal");
    let mut decoder = WalStreamDecoder::new(start);
    let mut segno = start.0 / SEG;
    let mut inserts = Vec::new();
    'outer: loop {
        while let Some(rec) = decoder.next_record().map_err(|e| anyhow::anyhow!("{e}"))? {
            if rec.start_lsn >= end {
                break 'outer;
            }
            if rec.xl_rmid == rmgr::HEAP && rec.rmgr_info() & 0x70 == 0 && rec.blocks.first().is_some_and(|b| b.blkno == 0) {
                inserts.push(rec);
            }
        }
        let per_id = 0x1_0000_0000 / SEG;
        let path = wal_dir.join(format!("{:08X}{:08X}{:08X}", 1, segno / per_id, segno % per_id));
        decoder.feed(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
        segno += 1;
    }
    if inserts.len() != INSERTS || !inserts[0].blocks[0].will_init() {
        bail!("expected {INSERTS} inserts starting with a page init, got {}", inserts.len());
    }
    Ok(inserts)
}

struct Host {
    cluster: PgCluster,
    client: postgres::Client,
}

impl Host {
    fn start(workers: u32) -> Result<Host> {
        let cluster = PgCluster::start_host(&[("pageserver.redo_workers", &workers.to_string())])?;
        cluster.sql("CREATE EXTENSION pageserver_ext")?;
        let client = cluster.client("postgres")?;
        Ok(Host { cluster, client })
    }

    fn args(recs: &[DecodedRecord]) -> (Vec<&[u8]>, Vec<i64>, Vec<i64>) {
        (
            recs.iter().map(|r| &r.raw[..]).collect(),
            recs.iter().map(|r| r.start_lsn.0 as i64).collect(),
            recs.iter().map(|r| r.end_lsn.0 as i64).collect(),
        )
    }

    fn apply(&mut self, first: &DecodedRecord) -> Result<Vec<u8>> {
        let b = &first.blocks[0];
        let (raws, starts, ends) = Self::args(std::slice::from_ref(first));
        let row = self.client.query_one(
            "SELECT pageserver.redo_apply($1, $2, $3, 0, $4, NULL, $5, $6, $7)",
            &[&b.rel.spc_node, &b.rel.db_node, &b.rel.rel_node, &(b.blkno as i64), &raws, &starts, &ends],
        )?;
        Ok(row.get(0))
    }

    /// (mean µs per request, requests/s)
    fn bench(&mut self, b: &BlockRef, base: &[u8], recs: &[DecodedRecord], requests: i32, threads: i32) -> Result<(f64, f64)> {
        let (raws, starts, ends) = Self::args(recs);
        let row = self.client.query_one(
            "SELECT * FROM pageserver.redo_bench($1, $2, $3, 0, $4, $5, $6, $7, $8, $9, $10)",
            &[&b.rel.spc_node, &b.rel.db_node, &b.rel.rel_node, &(b.blkno as i64), &base, &raws, &starts, &ends, &requests, &threads],
        )?;
        Ok((row.get(0), row.get(1)))
    }
}

fn row(name: &str, value: f64, unit: &str, floor: Option<f64>) {
    tools::print_row(name, value, unit, floor, COMMAND);
}

fn main() -> Result<()> {
    check_pageserver_installed()?;
    let inserts = record_inserts()?;
    let (init, rest) = inserts.split_first().expect("non-empty");
    let empty: &[DecodedRecord] = &[];
    let one = &rest[..1];
    let block = &init.blocks[0];

    let mut host = Host::start(1)?;
    let base = host.apply(init)?;
    // Latency, one caller, one worker: the median of 5 runs each, so one
    // unlucky scheduling of caller and worker on the same core does not count.
    let mut median_us = |recs: &[DecodedRecord], requests: i32| -> Result<f64> {
        let mut runs = (0..5).map(|_| Ok(host.bench(block, &base, recs, requests, 1)?.0)).collect::<Result<Vec<f64>>>()?;
        runs.sort_by(f64::total_cmp);
        Ok(runs[2])
    };
    let empty_us = median_us(empty, 5_000)?;
    let one_us = median_us(one, 5_000)?;
    let many_us = median_us(rest, 500)?;
    let per_record = (many_us - one_us) / (rest.len() - 1) as f64;
    let fixed = one_us - per_record;
    eprintln!("empty round trip {empty_us:.2} µs, 1 record {one_us:.2} µs, {} records {many_us:.2} µs", rest.len());
    row("redo.us_per_record", per_record, "us", None);
    row("redo.us_per_request", fixed, "us", Some(empty_us));

    for workers in [1u32, 2, 4] {
        if workers != 1 {
            drop(host);
            host = Host::start(workers)?;
        }
        let threads = 2 * workers as i32;
        let (_, floor) = host.bench(block, &base, empty, 40_000, threads)?;
        let (_, rate) = host.bench(block, &base, one, 40_000, threads)?;
        row(&format!("redo.requests_s_{workers}w"), rate, "req/s", Some(floor));
        let log = host.cluster.log();
        if log.contains("ERROR") || log.contains("PANIC") {
            bail!("host log has errors:\n{}", host.cluster.log_tail(30));
        }
    }
    Ok(())
}

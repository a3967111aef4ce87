//! Helpers shared by the tests against real servers: capturing a primary's
//! WAL and decoding it with the storage crate's decoder; the end-to-end
//! checks in [`e2e`]; the live-clone tool in [`clone`].
#![allow(dead_code)]

pub mod clone;
pub mod e2e;

use anyhow::{Context, Result};
use pageserver_harness::PgCluster;
use std::path::Path;
use storage::lsn::Lsn;
use storage::wal::{DecodedRecord, WalStreamDecoder, DEFAULT_WAL_SEG_SIZE as SEG};

pub fn lsn(pg: &PgCluster, expr: &str) -> Result<Lsn> {
    let v = pg.sql_one(&format!("SELECT {expr}"))?.context("NULL LSN")?;
    v.parse().map_err(|e| anyhow::anyhow!("{e}"))
}

fn segment_file(wal_dir: &Path, segno: u64) -> std::path::PathBuf {
    let per_id = 0x1_0000_0000 / SEG;
    wal_dir.join(format!("{:08X}{:08X}{:08X}", 1, segno / per_id, segno % per_id))
}

/// Marks where captured WAL starts: a slot keeps WAL from here on, and the
/// capture begins at the next segment start (after a switch).
pub fn start_capture(primary: &PgCluster) -> Result<Lsn> {
    primary.sql("SELECT pg_create_physical_replication_slot('capture', true)")?;
    let switched = lsn(primary, "pg_switch_wal()")?;
    Ok(Lsn(switched.0.div_ceil(SEG) * SEG))
}

/// Ends a capture: returns the end LSN and makes sure the segment holding
/// it is complete on disk.
pub fn end_capture(primary: &PgCluster) -> Result<Lsn> {
    let end = lsn(primary, "pg_current_wal_insert_lsn()")?;
    primary.sql("SELECT pg_switch_wal()")?;
    primary.sql("CHECKPOINT")?;
    Ok(end)
}

/// Decodes every record starting in [start, end) from the primary's pg_wal.
pub fn for_each_record(primary: &PgCluster, start: Lsn, end: Lsn, mut f: impl FnMut(DecodedRecord) -> Result<()>) -> Result<()> {
    let wal_dir = primary.data_dir().join("pg_wal");
    let mut decoder = WalStreamDecoder::new(start);
    let mut segno = start.0 / SEG;
    loop {
        while let Some(rec) = decoder.next_record().map_err(|e| anyhow::anyhow!("decoding WAL: {e}"))? {
            if rec.start_lsn >= end {
                return Ok(());
            }
            f(rec)?;
        }
        let path = segment_file(&wal_dir, segno);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        decoder.feed(&bytes);
        segno += 1;
    }
}

/// All records of [start, end).
pub fn records(primary: &PgCluster, start: Lsn, end: Lsn) -> Result<Vec<DecodedRecord>> {
    let mut all = Vec::new();
    for_each_record(primary, start, end, |r| {
        all.push(r);
        Ok(())
    })?;
    Ok(all)
}

//! WAL ingest throughput: replays at least 256 MiB of recorded PostgreSQL 15
//! WAL through [`storage::wal::WalStreamDecoder`] and the ingest rules
//! ([`storage::wal::ingest::ingest_record`], which also restores every
//! full-page image) into a no-op sink on one thread, next to the floor of
//! just copying the same bytes in the same chunks, and prints BENCHMARKS.md
//! rows (`wal.ingest_mb_s`, `wal.ingest_records_s`). Decoding alone is
//! reported on stderr.
//!
//! The input is recorded once and cached in `target/wal-bench-data` (or
//! `$WAL_BENCH_DATA`): a throwaway primary started through the test harness
//! runs `pgbench -i -s 10` and then pgbench until enough WAL exists, and its
//! segment files are kept with a `range` file naming the LSNs they cover.
//!
//! Usage: `cargo run --release -p tools --bin wal_bench [-- --min-mib N]`

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use pageserver_harness::PgCluster;
use storage::lsn::Lsn;
use storage::wal::ingest::ingest_record;
use storage::wal::{WalStreamDecoder, DEFAULT_WAL_SEG_SIZE};

const SEG: u64 = DEFAULT_WAL_SEG_SIZE;
/// Bytes handed to the decoder per `feed`, like a replication CopyData batch.
const CHUNK: usize = 128 * 1024;
const RUNS: usize = 3;
const COMMAND: &str = "cargo run --release -p tools --bin wal_bench";

fn data_dir() -> PathBuf {
    match std::env::var_os("WAL_BENCH_DATA") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wal-bench-data"),
    }
}

fn segment_name(segno: u64) -> String {
    let per_id = 0x1_0000_0000 / SEG;
    format!("{:08X}{:08X}{:08X}", 1, segno / per_id, segno % per_id)
}

fn sql_lsn(pg: &PgCluster, q: &str) -> anyhow::Result<Lsn> {
    let v = pg.sql_one(q)?.context("NULL LSN")?;
    Ok(v.parse()?)
}

/// Records WAL into `dir`; returns (start, end).
fn record_wal(dir: &Path, min_bytes: u64) -> anyhow::Result<(Lsn, Lsn)> {
    eprintln!("recording at least {} MiB of WAL into {} (once)", min_bytes >> 20, dir.display());
    let pg = PgCluster::start_primary(&[("max_wal_size", "4GB"), ("checkpoint_timeout", "60s"), ("shared_buffers", "128MB")])?;
    pg.sql("SELECT pg_create_physical_replication_slot('wal_bench', true)")?;
    let start = Lsn(sql_lsn(&pg, "SELECT pg_current_wal_insert_lsn()")?.0 / SEG * SEG);
    pg.run_as_postgres_checked("pgbench", &["-i", "-s", "10", "-q"])?;
    loop {
        let now = sql_lsn(&pg, "SELECT pg_current_wal_insert_lsn()")?;
        eprintln!("  {} MiB so far", (now.0 - start.0) >> 20);
        if now.0 - start.0 >= min_bytes + SEG {
            break;
        }
        pg.run_as_postgres_checked("pgbench", &["-n", "-c", "4", "-j", "2", "-T", "20"])?;
    }
    let end = sql_lsn(&pg, "SELECT pg_current_wal_insert_lsn()")?;
    pg.sql("SELECT pg_switch_wal()")?;
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for segno in start.0 / SEG..=end.0 / SEG {
        let name = segment_name(segno);
        std::fs::copy(pg.data_dir().join("pg_wal").join(&name), tmp.join(&name)).with_context(|| format!("copying {name}"))?;
    }
    std::fs::write(tmp.join("range"), format!("{start} {end}\n"))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir)?;
    Ok((start, end))
}

/// The cached WAL from its start to `end` (the end of the last whole record).
fn load(min_bytes: u64) -> anyhow::Result<(Lsn, Vec<u8>)> {
    let dir = data_dir();
    let range = std::fs::read_to_string(dir.join("range")).ok().and_then(|s| {
        let mut it = s.split_whitespace().map(|w| w.parse::<Lsn>());
        Some((it.next()?.ok()?, it.next()?.ok()?))
    });
    let (start, end) = match range {
        Some((s, e)) if e.0 - s.0 >= min_bytes => (s, e),
        _ => record_wal(&dir, min_bytes)?,
    };
    let mut wal = Vec::with_capacity((end.0 - start.0) as usize);
    for segno in start.0 / SEG..=end.0 / SEG {
        let bytes = std::fs::read(dir.join(segment_name(segno)))?;
        if bytes.len() as u64 != SEG {
            bail!("segment {} has {} bytes", segment_name(segno), bytes.len());
        }
        let from = if segno == start.0 / SEG { (start.0 % SEG) as usize } else { 0 };
        let to = if segno == end.0 / SEG { (end.0 % SEG) as usize } else { SEG as usize };
        wal.extend_from_slice(&bytes[from..to]);
    }
    Ok((start, wal))
}

/// Floor: copy every byte once, in the same chunks the decoder is fed.
fn copy_floor(wal: &[u8]) -> f64 {
    let mut dst = vec![0u8; CHUNK];
    let t = Instant::now();
    for c in wal.chunks(CHUNK) {
        dst[..c.len()].copy_from_slice(c);
        black_box(&mut dst);
    }
    t.elapsed().as_secs_f64()
}

/// Decode (and with `ingest`, map) everything; returns (seconds, records, changes).
fn decode(start: Lsn, wal: &[u8], ingest: bool) -> anyhow::Result<(f64, u64, u64)> {
    let t = Instant::now();
    let mut d = WalStreamDecoder::new(start);
    let mut records = 0u64;
    let mut changes = 0u64;
    for c in wal.chunks(CHUNK) {
        d.feed(c);
        while let Some(r) = d.next_record()? {
            records += 1;
            if ingest {
                let batch = ingest_record(&r)?;
                changes += batch.changes.len() as u64;
                black_box(batch);
            } else {
                changes += r.blocks.len() as u64;
                black_box(&r);
            }
        }
    }
    Ok((t.elapsed().as_secs_f64(), records, changes))
}

fn main() -> anyhow::Result<()> {
    let mut min_mib: u64 = 256;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--min-mib") {
        min_mib = args.get(i + 1).context("--min-mib N")?.parse()?;
    }
    let (start, wal) = load(min_mib << 20)?;
    let mb = wal.len() as f64 / 1e6;
    eprintln!("input: {:.1} MB of WAL from {start}, {RUNS} runs each, chunks of {} KiB, one thread", mb, CHUNK >> 10);
    let mut best_copy = f64::MAX;
    let mut best_decode = f64::MAX;
    let mut best_ingest = f64::MAX;
    let mut records = 0;
    for run in 0..RUNS {
        let c = copy_floor(&wal);
        let (d, _, blocks) = decode(start, &wal, false)?;
        let (i, n, changes) = decode(start, &wal, true)?;
        eprintln!(
            "  run {run}: copy {:.0} MB/s, decode {:.0} MB/s ({blocks} block refs), decode+ingest {:.0} MB/s ({n} records, {changes} changes)",
            mb / c,
            mb / d,
            mb / i
        );
        best_copy = best_copy.min(c);
        best_decode = best_decode.min(d);
        best_ingest = best_ingest.min(i);
        records = n;
    }
    eprintln!("decode only: {:.0} MB/s, {:.0} records/s", mb / best_decode, records as f64 / best_decode);
    let best_decode = best_ingest;
    let copy_mb_s = mb / best_copy;
    let decode_mb_s = mb / best_decode;
    let rec_s = records as f64 / best_decode;
    let floor_rec_s = records as f64 / best_copy;
    println!("| name | value | unit | floor | ratio | command |");
    println!("|---|---|---|---|---|---|");
    println!("| wal.ingest_mb_s | {decode_mb_s:.0} | MB/s | {copy_mb_s:.0} | {:.3} | {COMMAND} |", decode_mb_s / copy_mb_s);
    println!("| wal.ingest_records_s | {rec_s:.0} | records/s | {floor_rec_s:.0} | {:.3} | {COMMAND} |", rec_s / floor_rec_s);
    Ok(())
}

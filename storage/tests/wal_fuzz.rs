//! Bounded fuzzing of the WAL decoder (acceptance 3 of issue 3).
//!
//! Seeds are real WAL: a PostgreSQL 15 primary started here runs pgbench and
//! index builds under wal_compression pglz, lz4 and zstd. Each execution
//! takes a piece of it and mutates it in one of several ways:
//! - raw stream mutations (bit flips, byte sets, interesting values, range
//!   deletion / duplication / truncation) fed in random chunks;
//! - one record of a run of records mutated, its CRC and tot_len fixed, and
//!   the run laid out on fresh pages (so the mutation gets past the CRC and
//!   page checks into the body parser and the image decompressors);
//! - a single record's body or image bytes mutated with the CRC fixed,
//!   through `decode_record` and `restore_image`.
//!
//! Every record that decodes also goes through the ingest rules. The decoder
//! and the rules must never panic, never allocate more than 64 MiB at once,
//! and each execution must finish promptly; errors are expected.
//!
//! `WAL_FUZZ_SECS` sets the duration (default 5). A panicking input is
//! written to `target/wal-fuzz-crash-*.bin` before the test fails.

#[path = "wal_common.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use pageserver_harness::PgCluster;
use storage::lsn::Lsn;
use storage::wal::encode::WalWriter;
use storage::wal::{decode_record, DecodedRecord, WalStreamDecoder, BLCKSZ, XLOG_BLCKSZ};

/// Records the largest single allocation request of the process.
struct Tracking;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only reads
// the requested sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

const ALLOC_LIMIT: usize = 64 << 20;

/// What the executions reached: records decoded, images restored or not,
/// errors per variant.
static COUNTS: std::sync::Mutex<std::collections::BTreeMap<String, u64>> = std::sync::Mutex::new(std::collections::BTreeMap::new());

fn count(what: &str) {
    *COUNTS.lock().unwrap().entry(what.to_string()).or_default() += 1;
}

fn count_err(e: &storage::wal::WalDecodeError) {
    let dbg = format!("{e:?}");
    count(&format!("err {}", dbg.split([' ', '{']).next().unwrap_or("")));
}

fn count_images(r: &DecodedRecord, page: &mut [u8; BLCKSZ]) {
    count("record ok");
    match storage::wal::ingest::ingest_record(r) {
        Ok(_) => count("ingest ok"),
        Err(_) => count("ingest err"),
    }
    for b in &r.blocks {
        if b.has_image() {
            match r.restore_image(b, page) {
                Ok(()) => count("image ok"),
                Err(_) => count("image err"),
            }
        }
    }
}

struct Seeds {
    start: Lsn,
    wal: Vec<u8>,
    records: Vec<DecodedRecord>,
}

fn collect_seeds() -> anyhow::Result<Seeds> {
    let pg = PgCluster::start_primary(&[("max_wal_size", "1GB"), ("shared_buffers", "16MB")])?;
    pg.sql("SELECT pg_create_physical_replication_slot('fuzz', true)")?;
    let start = Lsn(sql_lsn(&pg, "pg_current_wal_insert_lsn()")?.0 / SEG * SEG);
    pg.run_as_postgres_checked("pgbench", &["-i", "-s", "1", "-q"])?;
    for method in ["pglz", "lz4", "zstd"] {
        pg.sql(&format!("ALTER SYSTEM SET wal_compression = {method}"))?;
        pg.sql("SELECT pg_reload_conf()")?;
        pg.sql("CHECKPOINT")?;
        pg.run_as_postgres_checked("pgbench", &["-n", "-c", "2", "-t", "100"])?;
        pg.sql(&format!("CREATE TABLE f_{method} AS SELECT g, ARRAY[g % 10] AS a, point(g, g) AS p FROM generate_series(1, 3000) g"))?;
        pg.sql(&format!("CREATE INDEX ON f_{method} USING gin (a)"))?;
        pg.sql(&format!("CREATE INDEX ON f_{method} USING gist (p)"))?;
        pg.sql(&format!("VACUUM FULL f_{method}"))?;
    }
    let end = sql_lsn(&pg, "pg_current_wal_insert_lsn()")?;
    pg.sql("SELECT pg_switch_wal()")?;
    let dir = pg.data_dir().join("pg_wal");
    let mut reader = WalFileReader::new(&dir, start, end);
    let mut wal = Vec::new();
    loop {
        let c = reader.read(1 << 20)?;
        if c.is_empty() {
            break;
        }
        wal.extend_from_slice(&c);
    }
    let mut records = Vec::new();
    let mut rng = Rng::new(1);
    decode_wal_dir(&dir, start, end, &mut rng, |r| {
        records.push(r);
        Ok(())
    })?;
    Ok(Seeds { start, wal, records })
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>, hot: Option<std::ops::Range<usize>>) {
    if data.is_empty() {
        data.push(rng.next_u64() as u8);
        return;
    }
    let n = 1 + rng.below(6);
    for _ in 0..n {
        let len = data.len().max(1);
        let at = match &hot {
            Some(r) if !r.is_empty() && rng.below(3) > 0 => (r.start + rng.below(r.len() as u64) as usize).min(len - 1),
            _ => rng.below(len as u64) as usize,
        };
        match rng.below(9) {
            0 => data[at] ^= 1 << rng.below(8),
            1 => data[at] = rng.next_u64() as u8,
            2 => {
                let v: u16 = [0, 1, 0x7fff, 0x8000, 0xffff, 8192, 8191, 8193, 24, 40][rng.below(10) as usize];
                let b = v.to_le_bytes();
                for (i, x) in b.iter().enumerate() {
                    if at + i < data.len() {
                        data[at + i] = *x;
                    }
                }
            }
            3 => {
                let v: u32 = [0, 1, 0x7fff_ffff, 0xffff_ffff, 0x3fff_ffff, 0x4000_0000, 65536, 8192][rng.below(8) as usize];
                for (i, x) in v.to_le_bytes().iter().enumerate() {
                    if at + i < data.len() {
                        data[at + i] = *x;
                    }
                }
            }
            4 => {
                let end = (at + 1 + rng.below(64) as usize).min(data.len());
                data.drain(at..end);
            }
            5 => {
                let end = (at + 1 + rng.below(64) as usize).min(data.len());
                let piece = data[at..end].to_vec();
                let to = rng.below(data.len() as u64) as usize;
                data.splice(to..to, piece);
            }
            6 => data.truncate(at),
            7 => data[at] = [0, 0xff, 252, 253, 254, 255, 32, 33][rng.below(8) as usize],
            _ => {
                let v = rng.next_u64() as u8;
                let end = (at + rng.below(16) as usize).min(data.len());
                data[at..end].fill(v);
            }
        }
        if data.is_empty() {
            data.push(0);
        }
    }
}

/// Feeds `bytes` from `start` in random chunks; exercises every record and
/// image; checks what comes out stays within what went in.
fn run_stream(rng: &mut Rng, start: Lsn, bytes: &[u8]) {
    let mut d = WalStreamDecoder::new(start);
    let fed_end = start.0 + bytes.len() as u64;
    let mut page = [0u8; BLCKSZ];
    let mut at = 0usize;
    while at < bytes.len() {
        let n = rng.chunk_len().min(bytes.len() - at);
        d.feed(&bytes[at..at + n]);
        at += n;
        loop {
            match d.next_record() {
                Ok(Some(r)) => {
                    assert!(r.start_lsn >= start && r.start_lsn.0 < fed_end, "record at {} outside input", r.start_lsn);
                    assert_eq!(r.raw.len(), r.xl_tot_len as usize);
                    count_images(&r, &mut page);
                    for b in &r.blocks {
                        let _ = r.block_data(b);
                    }
                    let _ = r.main_data();
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(e.lsn() >= start && e.lsn().0 <= fed_end, "error LSN {} outside input: {e}", e.lsn());
                    let _ = e.to_string();
                    count_err(&e);
                    return;
                }
            }
        }
    }
}

fn fix_record(raw: &mut [u8]) {
    if raw.len() >= 24 {
        let len = raw.len() as u32;
        raw[0..4].copy_from_slice(&len.to_le_bytes());
        let crc = storage::wal::record::record_crc(raw);
        raw[20..24].copy_from_slice(&crc.to_le_bytes());
    }
}

fn hot_range(r: &DecodedRecord) -> std::ops::Range<usize> {
    // Mostly the headers; sometimes an image.
    let headers_end = r.blocks.iter().filter_map(|b| b.image.map(|i| i.offset as usize)).min().unwrap_or(r.raw.len()).min(r.raw.len());
    24..headers_end.max(25)
}

struct Input {
    kind: &'static str,
    start: Lsn,
    bytes: Vec<u8>,
}

fn one_execution(rng: &mut Rng, seeds: &Seeds, input: &mut Input) {
    let kind = rng.below(10);
    if kind < 4 {
        // Raw stream mutation from a record start or a page boundary.
        let (start, off) = if rng.below(2) == 0 {
            let r = &seeds.records[rng.below(seeds.records.len() as u64) as usize];
            (r.start_lsn, (r.start_lsn.0 - seeds.start.0) as usize)
        } else {
            let page = rng.below(seeds.wal.len() as u64 / XLOG_BLCKSZ) as usize;
            (Lsn(seeds.start.0 + page as u64 * XLOG_BLCKSZ), page * XLOG_BLCKSZ as usize)
        };
        let len = (1 + rng.below(300_000) as usize).min(seeds.wal.len() - off);
        let mut bytes = seeds.wal[off..off + len].to_vec();
        let hot = 0..bytes.len().min(256);
        mutate(rng, &mut bytes, Some(hot));
        *input = Input { kind: "stream", start, bytes };
        run_stream(rng, input.start, &input.bytes);
    } else if kind < 8 {
        // A run of records, one mutated with CRC fixed, laid out anew.
        let first = rng.below(seeds.records.len() as u64) as usize;
        let count = (1 + rng.below(20) as usize).min(seeds.records.len() - first);
        let victim = first + rng.below(count as u64) as usize;
        let page_start = Lsn(seeds.records[first].start_lsn.0 / XLOG_BLCKSZ * XLOG_BLCKSZ + XLOG_BLCKSZ);
        let mut w = WalWriter::new(page_start, Lsn(page_start.0 - 8), 1, 1, SEG);
        for (i, r) in seeds.records[first..first + count].iter().enumerate() {
            let mut raw = r.raw.to_vec();
            if first + i == victim {
                mutate(rng, &mut raw, Some(hot_range(r)));
                if raw.len() < 24 {
                    raw.resize(24, 0);
                }
                if rng.below(4) == 0 {
                    // Keep the (maybe wrong) tot_len, fix only the CRC.
                    let crc = storage::wal::record::record_crc(&raw);
                    raw[20..24].copy_from_slice(&crc.to_le_bytes());
                    w.append_raw(&raw);
                    continue;
                }
            }
            w.append(&raw);
        }
        *input = Input { kind: "relaid", start: page_start, bytes: w.into_bytes() };
        run_stream(rng, input.start, &input.bytes);
    } else {
        // One record through decode_record and restore_image.
        let r = &seeds.records[rng.below(seeds.records.len() as u64) as usize];
        let mut raw = r.raw.to_vec();
        let hot = if rng.below(2) == 0 {
            r.blocks.iter().find_map(|b| b.image.map(|i| i.offset as usize..i.offset as usize + i.length as usize))
        } else {
            None
        };
        mutate(rng, &mut raw, Some(hot.unwrap_or_else(|| hot_range(r))));
        if rng.below(8) != 0 {
            fix_record(&mut raw);
        }
        *input = Input { kind: "record", start: r.start_lsn, bytes: raw.clone() };
        match decode_record(Bytes::from(raw), r.start_lsn, r.end_lsn) {
            Ok(d) => count_images(&d, &mut [0u8; BLCKSZ]),
            Err(e) => count_err(&e),
        }
    }
}

#[test]
fn fuzz_decoder_with_mutated_real_wal() -> anyhow::Result<()> {
    let secs: f64 = std::env::var("WAL_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let seeds = collect_seeds()?;
    assert!(seeds.records.len() > 1000);
    let images = seeds.records.iter().flat_map(|r| &r.blocks).filter(|b| b.has_image()).count();
    eprintln!("seeds: {} MiB of WAL from {}, {} records, {} images", seeds.wal.len() >> 20, seeds.start, seeds.records.len(), images);
    let mut rng = Rng::from_time();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut executions = 0u64;
    let mut slowest = Duration::ZERO;
    let baseline = LARGEST.load(Ordering::Relaxed);
    let mut input = Input { kind: "", start: Lsn(0), bytes: Vec::new() };
    while Instant::now() < deadline {
        let t = Instant::now();
        LARGEST.store(0, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| one_execution(&mut rng, &seeds, &mut input)));
        let largest = LARGEST.load(Ordering::Relaxed);
        let took = t.elapsed();
        slowest = slowest.max(took);
        executions += 1;
        let failure = match outcome {
            Err(_) => Some("panic".to_string()),
            Ok(()) if largest > ALLOC_LIMIT => Some(format!("allocation of {largest} bytes")),
            Ok(()) if took > Duration::from_secs(10) => Some(format!("execution took {took:?}")),
            Ok(()) => None,
        };
        if let Some(what) = failure {
            let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("wal-fuzz-crash-{}.bin", executions));
            std::fs::write(&path, &input.bytes)?;
            panic!(
                "{what} on a {} input starting at {} ({} bytes), saved to {}",
                input.kind,
                input.start,
                input.bytes.len(),
                path.display()
            );
        }
    }
    eprintln!(
        "fuzz: {executions} executions in {:.1} s ({:.0}/s), slowest {slowest:?}, largest allocation before fuzzing {} KiB",
        started.elapsed().as_secs_f64(),
        executions as f64 / started.elapsed().as_secs_f64(),
        baseline >> 10
    );
    eprintln!("fuzz: reached {:?}", COUNTS.lock().unwrap());
    assert!(executions > 10);
    Ok(())
}

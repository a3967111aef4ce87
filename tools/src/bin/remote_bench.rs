//! Benchmark: moving layer files to and from object storage, against plain
//! `object_store` requests for the same bytes to the same server, in the
//! same run. The server is moto (`pageserver_harness::s3`) on loopback.
//!
//! * `remote.upload_mb_s`: `RemoteStorage::upload_file` of layer-sized
//!   files from disk (as the backup worker sends them: one PUT each up to
//!   128 MiB under a shared memory budget, CRC32C computed, [`CONCURRENCY`]
//!   files at a time); floor:
//!   one plain `put` per file of the same bytes from memory, as many at a
//!   time.
//! * `remote.download_mb_s`: `RemoteStorage::download_file` of the same
//!   objects (as attach fetches them: streamed to disk through a 4 MiB
//!   buffer, CRC32C checked, fsynced, renamed); floor: plain `get`s into
//!   memory.
//!
//! Each figure is the best of [`ROUNDS`] rounds. `REMOTE_BENCH_MIB`
//! (default 256) sets the bytes moved per round; files are incompressible
//! (layer files are compressed) and their sizes cycle through
//! [`FILE_MIB`], the range of layer files (small L0 flushes up to L1 and
//! image layers of `target_file_size`).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use bytes::Bytes;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use pageserver_harness::s3::S3Server;
use remote::{RemoteStorageConfig, Transferred};

const COMMAND: &str = "cargo run --release -p tools --bin remote_bench";
/// Transfers in flight at once, as the backup worker and attach do.
const CONCURRENCY: usize = 4;
const ROUNDS: usize = 5;
const FILE_MIB: [usize; 5] = [4, 16, 32, 64, 128];

fn row(name: &str, value: f64, unit: &str, floor: Option<f64>) {
    tools::print_row(name, value, unit, floor, COMMAND);
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn main() -> Result<()> {
    let total_mib: usize = std::env::var("REMOTE_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let mut sizes = Vec::new();
    while sizes.iter().sum::<usize>() < total_mib << 20 {
        sizes.push(FILE_MIB[sizes.len() % FILE_MIB.len()] << 20);
    }
    let files = sizes.len();
    let s3 = S3Server::start()?;
    s3.create_bucket("bench")?;
    let config = RemoteStorageConfig::parse(&s3.url("bench", "remote-bench"), &s3.options())?;
    let storage = config.open()?;
    let plain: Arc<dyn ObjectStore> = config.open_store()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let work = tempfile::tempdir()?;
    let contents: Vec<Bytes> = sizes.iter().enumerate().map(|(i, size)| Bytes::from(pattern(*size, i as u64 + 1))).collect();
    let locals: Vec<std::path::PathBuf> = (0..files).map(|i| work.path().join(format!("layer-{i}"))).collect();
    for (path, content) in locals.iter().zip(&contents) {
        std::fs::write(path, content)?;
    }
    let total: usize = sizes.iter().sum();
    let bytes = total as f64;
    let mb_s = |secs: f64| bytes / 1e6 / secs;
    let mib: Vec<usize> = sizes.iter().map(|s| s >> 20).collect();
    eprintln!("moto on {}, {files} files of {mib:?} MiB per round, {CONCURRENCY} at a time, best of {ROUNDS}", s3.endpoint());

    let (mut up, mut up_floor, mut down, mut down_floor) = (0f64, 0f64, 0f64, 0f64);
    for round in 0..ROUNDS {
        let ours = |i: usize| object_store::path::Path::from(format!("ours/{round}/layer-{i}"));
        let theirs = |i: usize| object_store::path::Path::from(format!("plain/{round}/layer-{i}"));
        let started = Instant::now();
        let sent: Vec<Transferred> = runtime
            .block_on(
                futures::stream::iter((0..files).map(|i| {
                    let (storage, local, path) = (&storage, &locals[i], ours(i));
                    async move { storage.upload_file(local, &path).await }
                }))
                .buffered(CONCURRENCY)
                .collect::<Vec<_>>(),
            )
            .into_iter()
            .collect::<Result<_, _>>()?;
        let up_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        runtime
            .block_on(
                futures::stream::iter((0..files).map(|i| {
                    let (plain, payload, path) = (&plain, PutPayload::from(contents[i].clone()), theirs(i));
                    async move { plain.put(&path, payload).await }
                }))
                .buffered(CONCURRENCY)
                .collect::<Vec<_>>(),
            )
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let up_floor_s = started.elapsed().as_secs_f64();

        let started = Instant::now();
        runtime
            .block_on(
                futures::stream::iter((0..files).map(|i| {
                    let (storage, target, path, expected) = (&storage, work.path().join(format!("back-{i}")), ours(i), sent[i]);
                    async move { storage.download_file(&path, &target, Some(expected)).await }
                }))
                .buffered(CONCURRENCY)
                .collect::<Vec<_>>(),
            )
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let down_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let got: usize = runtime
            .block_on(
                futures::stream::iter((0..files).map(|i| {
                    let (plain, path) = (&plain, theirs(i));
                    async move { plain.get(&path).await?.bytes().await }
                }))
                .buffered(CONCURRENCY)
                .collect::<Vec<_>>(),
            )
            .into_iter()
            .map(|r| r.map(|b| b.len()))
            .sum::<Result<usize, _>>()?;
        let down_floor_s = started.elapsed().as_secs_f64();
        anyhow::ensure!(got == total, "plain gets returned {got} bytes");
        eprintln!(
            "round {round}: upload {:.0} MB/s (plain put {:.0}), download {:.0} MB/s (plain get {:.0})",
            mb_s(up_s),
            mb_s(up_floor_s),
            mb_s(down_s),
            mb_s(down_floor_s)
        );
        up = up.max(mb_s(up_s));
        up_floor = up_floor.max(mb_s(up_floor_s));
        down = down.max(mb_s(down_s));
        down_floor = down_floor.max(mb_s(down_floor_s));
        for i in 0..files {
            std::fs::remove_file(work.path().join(format!("back-{i}")))?;
        }
    }
    row("remote.upload_mb_s", up, "MB/s", Some(up_floor));
    row("remote.download_mb_s", down, "MB/s", Some(down_floor));
    Ok(())
}

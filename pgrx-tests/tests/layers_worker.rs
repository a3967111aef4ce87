//! The layers worker runs compaction, image layers and GC in its own
//! process, and stopping it anywhere costs nothing.
//!
//! While pgbench writes on a checksummed primary, the layers worker of the
//! host (passes every second, small thresholds so that every pass has L0
//! layers to merge, images to write and layers to collect) is stopped with
//! SIGTERM at random moments, `LAYERS_KILLS` times (default 10; 50 in
//! `scripts/campaign.sh`), and made to panic once through
//! `pageserver.layers_fault`. Meanwhile a reader sends GetPage at the latest
//! LSN without pause: no request may fail, and the host postmaster and the
//! main worker must not restart. Afterwards, once a pass has run since the
//! last stop, every timeline directory holds exactly its index and the
//! layer files the index names (no temporary or orphaned file), the layer
//! files written by compaction are there, the pages equal the primary's
//! (`common::e2e::compare_pages`), and the main worker has no compaction
//! thread while the layers worker runs at a lower CPU priority.

use anyhow::{bail, ensure, Context, Result};
use pageserver_harness::PgCluster;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use storage::key::RelTag;
use storage::lsn::Lsn;
use storage::pagestream::{ProtocolVersion, Request, RequestHeader, Response};
use storage::repo::index::IndexFile;
use storage::repo::LayerName;
use tools::pagestream_client::BlockingClient;

mod common;
use common::e2e;

/// (pid, restarts, activity) of the layers worker.
fn layers_worker(host: &PgCluster) -> Result<(Option<i32>, u64, String)> {
    let row = host.sql("SELECT pid, restarts, activity FROM pageserver.status() WHERE kind = 'layers'")?;
    let row = row.first().context("no layers worker")?;
    Ok((row[0].as_deref().map(str::parse).transpose()?, row[1].as_deref().unwrap_or("0").parse()?, row[2].clone().unwrap_or_default()))
}

/// Passes finished on the timeline and whether one is running.
fn passes(host: &PgCluster, timeline: &str) -> Result<(u64, bool, String)> {
    let row = host.sql(&format!(
        "SELECT compaction_passes, compacting, coalesce(last_compaction, '') FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"
    ))?;
    let row = row.first().context("timeline not listed")?;
    Ok((row[0].as_deref().unwrap_or("0").parse()?, row[1].as_deref() == Some("t"), row[2].clone().unwrap_or_default()))
}

/// Waits until `count` more passes have finished on the timeline.
fn wait_passes(host: &PgCluster, timeline: &str, count: u64) -> Result<String> {
    let (start, _, _) = passes(host, timeline)?;
    host.wait_for("layers worker passes", Duration::from_secs(180), || match passes(host, timeline) {
        Ok((n, _, last)) if n >= start + count => Some(last),
        _ => None,
    })
}

/// Files of a timeline directory that its index does not account for
/// (temporary files, layers no index names), and layers named but missing.
fn leftovers(dir: &Path) -> Result<Vec<String>> {
    // The main worker may flush between reading the index and listing the
    // directory: read the index again and retry a few times.
    for _ in 0..10 {
        let index = IndexFile::read(dir)?;
        let mut expected: BTreeSet<String> = index.layers.iter().map(|(name, _)| name.file_name()).collect();
        expected.insert("index".into());
        let on_disk: BTreeSet<String> =
            std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned())).collect::<Result<_, _>>()?;
        if IndexFile::read(dir)? == index {
            let mut wrong: Vec<String> = on_disk.difference(&expected).map(|f| format!("unreferenced {f}")).collect();
            wrong.extend(expected.difference(&on_disk).map(|f| format!("missing {f}")));
            return Ok(wrong);
        }
    }
    bail!("the index of {} kept changing", dir.display())
}

fn timeline_dirs(host: &PgCluster) -> Result<Vec<PathBuf>> {
    let tenants = host.data_dir().join("pageserver/tenants");
    let mut dirs = Vec::new();
    for tenant in std::fs::read_dir(&tenants)? {
        for timeline in std::fs::read_dir(tenant?.path().join("timelines"))? {
            dirs.push(timeline?.path());
        }
    }
    Ok(dirs)
}

/// Thread names of a process.
fn thread_names(pid: i32) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        names.push(std::fs::read_to_string(task?.path().join("comm"))?.trim().to_string());
    }
    Ok(names)
}

/// The nice value of a process (field 19 of /proc/<pid>/stat).
fn niceness(pid: i32) -> Result<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = &stat[stat.rfind(')').context("stat")? + 2..];
    Ok(after_name.split(' ').nth(16).context("nice field")?.parse()?)
}

/// Reads blocks of `rel` at the newest ingested LSN until `stop`; every
/// answer must be a page. Returns the number of pages read.
fn read_pages_until(host: &PgCluster, tenant: &str, timeline: &str, rel: RelTag, nblocks: u32, stop: &AtomicBool) -> Result<u64> {
    let addr = host.listener_addr().context("listener")?.to_string();
    let mut client = BlockingClient::connect(&addr, ProtocolVersion::V3, tenant, timeline)?;
    let mut reads = 0u64;
    let mut lsn = Lsn(0);
    while !stop.load(Ordering::Relaxed) {
        if reads.is_multiple_of(200) {
            lsn = e2e::lsn_of(host, &format!("SELECT last_record_lsn FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"))?;
        }
        let hdr = RequestHeader { reqid: reads, request_lsn: lsn, not_modified_since: lsn };
        let blkno = (reads.wrapping_mul(7919) % u64::from(nblocks)) as u32;
        match client.request(Request::GetPage { hdr, rel, blkno })? {
            Response::GetPage { .. } => reads += 1,
            other => bail!("GetPage of block {blkno} at {lsn} after {reads} reads: {other:?}"),
        }
    }
    Ok(reads)
}

#[test]
fn layers_worker_survives_stops_and_a_panic_while_pages_stay_equal() -> Result<()> {
    let kills = e2e::env_u64("LAYERS_KILLS", 10);
    let primary = e2e::start_primary(true, &[])?;
    let host = e2e::start_host(
        true,
        &[
            ("pageserver.checkpoint_distance", "2MB"),
            ("pageserver.checkpoint_timeout", "2s"),
            ("pageserver.compaction_threshold", "3"),
            ("pageserver.image_creation_threshold", "1"),
            ("pageserver.gc_horizon", "4MB"),
            ("pageserver.pitr_interval", "0"),
            ("pageserver.compaction_period", "1s"),
            ("pageserver.wait_lsn_timeout", "120s"),
        ],
    )?;
    let postmaster = host.postmaster_pid()?;
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", "5", "-q", "postgres"])?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    let (accounts, _) = e2e::forks_of(&primary, "postgres", "pgbench_accounts")?;
    let nblocks: u32 = primary.sql_one("SELECT pg_relation_size('pgbench_accounts') / 8192")?.context("size")?.parse()?;
    let imported = e2e::lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    e2e::wait_ingested(&host, &timeline, imported)?;

    let stop = AtomicBool::new(false);
    let stopped_in_pass = AtomicU64::new(0);
    let reads = std::thread::scope(|scope| -> Result<u64> {
        let pgbench = scope.spawn(|| {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                primary.run_as_postgres_checked("pgbench", &["-c", "2", "-j", "2", "-T", "5", "postgres"])?;
                runs += 1;
            }
            anyhow::Ok(runs)
        });
        let reader = scope.spawn(|| read_pages_until(&host, &tenant, &timeline, accounts, nblocks, &stop));
        let campaign = (|| -> Result<()> {
            let mut seed = 0x5eed_u64;
            for kill in 0..kills {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                std::thread::sleep(Duration::from_millis(300 + (seed >> 33) % 2500));
                let (pid, restarts, activity) = layers_worker(&host)?;
                let pid = pid.with_context(|| format!("stop {kill}: the layers worker is not running"))?;
                pageserver_harness::process::signal(pid, libc::SIGTERM);
                if activity.starts_with("compacting") {
                    stopped_in_pass.fetch_add(1, Ordering::Relaxed);
                }
                host.wait_for("the layers worker to start again", Duration::from_secs(30), || match layers_worker(&host) {
                    Ok((Some(new), r, _)) if new != pid && r > restarts => Some(()),
                    _ => None,
                })?;
            }
            // A Rust panic in the middle of a pass, after image layers were written.
            let (_, restarts, _) = layers_worker(&host)?;
            host.sql("ALTER SYSTEM SET pageserver.layers_fault = 'images_written'")?;
            host.sql("SELECT pg_reload_conf()")?;
            host.wait_for("the injected panic to restart the layers worker", Duration::from_secs(120), || match layers_worker(&host) {
                Ok((Some(_), r, _)) if r > restarts => Some(()),
                _ => None,
            })?;
            host.sql("ALTER SYSTEM RESET pageserver.layers_fault")?;
            host.sql("SELECT pg_reload_conf()")?;
            ensure!(host.log().contains("fault injected by pageserver.layers_fault at images_written"), "the panic is not in the log");
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let runs = pgbench.join().map_err(|_| anyhow::anyhow!("pgbench thread panicked"))??;
        let reads = reader.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
        campaign?;
        eprintln!(
            "{kills} stops ({} in a pass) and a panic during {runs} pgbench runs; {reads} GetPage answered",
            stopped_in_pass.load(Ordering::Relaxed)
        );
        Ok(reads)
    })?;
    ensure!(reads > 0, "the reader read nothing");
    ensure!(host.postmaster_pid()? == postmaster, "the host postmaster restarted");
    let main_restarts = host.sql_one("SELECT restarts FROM pageserver.status() WHERE kind = 'main'")?;
    ensure!(main_restarts.as_deref() == Some("0"), "the main worker restarted {main_restarts:?} times");

    primary.sql("CHECKPOINT")?;
    let lsn = e2e::lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    e2e::wait_ingested(&host, &timeline, lsn)?;
    let last = wait_passes(&host, &timeline, 2)?;
    eprintln!("last pass: {last}");

    for dir in timeline_dirs(&host)? {
        let wrong = leftovers(&dir)?;
        ensure!(wrong.is_empty(), "{}: {wrong:?}", dir.display());
        let names: Vec<LayerName> = IndexFile::read(&dir)?.layers.iter().map(|(n, _)| *n).collect();
        ensure!(names.iter().any(|n| n.level == 1), "no L1 layer in {}: {names:?}", dir.display());
        ensure!(names.iter().any(|n| n.is_image() && n.image_lsn() > imported), "no image layer written by compaction: {names:?}");
    }

    let main_pid: i32 = host.sql_one("SELECT pid FROM pageserver.status() WHERE kind = 'main'")?.context("main pid")?.parse()?;
    let main_threads = thread_names(main_pid)?;
    ensure!(!main_threads.iter().any(|t| t.contains("compact")), "the main worker has a compaction thread: {main_threads:?}");
    let (layers_pid, _, _) = layers_worker(&host)?;
    let layers_pid = layers_pid.context("layers worker not running")?;
    ensure!(niceness(layers_pid)? > niceness(main_pid)?, "the layers worker does not run at a lower CPU priority");
    ensure!(thread_names(layers_pid)?.contains(&"pageserver-laye".to_string()), "no pass thread in the layers worker");

    let report = e2e::compare_pages(&primary, &host, &tenant, &timeline, lsn, true)?;
    eprintln!("{report:?}");
    report.ensure_clean()?;
    e2e::ensure_log_clean(&host)
}

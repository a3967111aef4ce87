//! End to end, oracle 3 of DESIGN.md: a stock primary streams to the page
//! server while pgbench runs; after `CHECKPOINT` on the primary, every block
//! of every relation file in its data directory must equal GetPage at the
//! checkpoint's LSN over `pagestream_v2`, masked by the resource manager's
//! `rm_mask` where raw bytes differ (hint bits and other unlogged bits).
//! FSM forks are not compared: PostgreSQL does not WAL-log them either.
//!
//! Crash safety rides along: during pgbench the host postmaster is killed
//! with SIGKILL twice and the main worker once; ingest must resume from
//! `disk_consistent_lsn` through the slot with no gap and no record applied
//! twice, which the page comparison afterwards would show.
//!
//! Scale and duration: `E2E_SCALE` (default 20) and `E2E_SECONDS` (default 120).

use anyhow::{bail, Context, Result};
use pageserver_harness::PgCluster;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use storage::key::RelTag;
use storage::lsn::Lsn;
use storage::pagestream::{ProtocolVersion, Request, RequestHeader, Response};
use tools::pagestream_client::BlockingClient;

mod common;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Resource manager ids of `rm_mask` per access method (PostgreSQL 15 rmgrlist.h).
fn rmgr_for_am(am: Option<&str>, relkind: &str) -> i32 {
    match (am, relkind) {
        (_, "S") => 15, // sequence pages are masked like heap pages by seq_mask
        (Some("btree"), _) => 11,
        (Some("hash"), _) => 12,
        (Some("gin"), _) => 13,
        (Some("gist"), _) => 14,
        (Some("spgist"), _) => 16,
        (Some("brin"), _) => 17,
        _ => 10, // heap
    }
}

/// One relation fork file set of the primary.
struct RelFile {
    rel: RelTag,
    nblocks: u32,
    rmgr: i32,
    path_prefix: std::path::PathBuf,
}

/// Every permanent relation fork (not FSM) in the primary's data directory.
fn relation_forks(primary: &PgCluster) -> Result<Vec<RelFile>> {
    let data = primary.data_dir();
    let dbs = primary.sql("SELECT oid, datname FROM pg_database WHERE datallowconn")?;
    // filenode -> (rmgr) per (spc, db)
    let mut kinds: HashMap<(u32, u32, u32), i32> = HashMap::new();
    for db in &dbs {
        let name = db[1].clone().unwrap();
        let rows = primary.sql_db(
            &name,
            "SELECT pg_relation_filenode(c.oid), c.reltablespace, c.relisshared, c.relkind::text, am.amname::text \
             FROM pg_class c LEFT JOIN pg_am am ON am.oid = c.relam \
             WHERE pg_relation_filenode(c.oid) IS NOT NULL",
        )?;
        let db_oid: u32 = db[0].as_ref().unwrap().parse()?;
        for r in rows {
            let node: u32 = r[0].as_ref().unwrap().parse()?;
            let shared = r[2].as_deref() == Some("t");
            let (spc, dbo) = if shared { (1664, 0) } else { (1663, db_oid) };
            kinds.insert((spc, dbo, node), rmgr_for_am(r[4].as_deref(), r[3].as_deref().unwrap_or("r")));
        }
    }
    let mut out = Vec::new();
    let mut dirs = vec![(1664u32, 0u32, data.join("global"))];
    for entry in std::fs::read_dir(data.join("base"))? {
        let entry = entry?;
        if let Ok(db) = entry.file_name().to_string_lossy().parse::<u32>() {
            dirs.push((1663, db, entry.path()));
        }
    }
    for (spc, db, dir) in dirs {
        let mut sizes: HashMap<(u32, u8), u64> = HashMap::new();
        let mut unlogged = std::collections::HashSet::new();
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let base = name.split('.').next().unwrap();
            let (node, fork) = match base.split_once('_') {
                None => (base, 0u8),
                Some((n, "fsm")) => (n, 1),
                Some((n, "vm")) => (n, 2),
                Some((n, "init")) => (n, 3),
                _ => continue,
            };
            let Ok(node) = node.parse::<u32>() else { continue };
            if fork == 3 {
                unlogged.insert(node);
            }
            let len = std::fs::metadata(dir.join(&name))?.len();
            *sizes.entry((node, fork)).or_default() += len;
        }
        for ((node, fork), bytes) in sizes {
            if fork == 1 || fork == 3 || unlogged.contains(&node) {
                continue;
            }
            let suffix = match fork {
                0 => "",
                _ => "_vm",
            };
            out.push(RelFile {
                rel: RelTag::new(spc, db, node, fork),
                nblocks: (bytes / 8192) as u32,
                rmgr: *kinds.get(&(spc, db, node)).unwrap_or(&10),
                path_prefix: dir.join(format!("{node}{suffix}")),
            });
        }
    }
    out.sort_by_key(|f| (f.rel.spc_node, f.rel.db_node, f.rel.rel_node, f.rel.fork));
    Ok(out)
}

fn read_block(prefix: &Path, blkno: u32) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    const BLOCKS_PER_SEGMENT: u32 = 131072;
    let seg = blkno / BLOCKS_PER_SEGMENT;
    let path = if seg == 0 { prefix.to_path_buf() } else { std::path::PathBuf::from(format!("{}.{seg}", prefix.display())) };
    let mut f = std::fs::File::open(&path).with_context(|| path.display().to_string())?;
    f.seek(SeekFrom::Start((blkno % BLOCKS_PER_SEGMENT) as u64 * 8192))?;
    let mut page = vec![0u8; 8192];
    f.read_exact(&mut page)?;
    Ok(page)
}

pub fn timeline_lsn(host: &PgCluster, timeline: &str) -> Result<(Lsn, String)> {
    let row = host.sql(&format!(
        "SELECT last_record_lsn, state, coalesce(last_error, '') FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"
    ))?;
    let row = row.first().context("timeline not listed")?;
    Ok((row[0].as_ref().unwrap().parse().map_err(|_| anyhow::anyhow!("bad lsn"))?, format!("{} {}", row[1].as_deref().unwrap(), row[2].as_deref().unwrap())))
}

#[test]
fn pages_equal_the_primarys_after_checkpoint() -> Result<()> {
    let scale = env_u64("E2E_SCALE", 20);
    let seconds = env_u64("E2E_SECONDS", 120);
    let primary = PgCluster::start_primary(&[("autovacuum", "off"), ("max_wal_size", "1GB")])?;
    // Small in-memory layers and a short timeout, so layers reach disk during
    // the run and the crashes below restart from a recent disk_consistent_lsn.
    let mut host = PgCluster::start_host(&[
        ("pageserver.wait_lsn_timeout", "120s"),
        ("pageserver.checkpoint_distance", "16MB"),
        ("pageserver.checkpoint_timeout", "5s"),
    ])?;
    host.sql("CREATE EXTENSION pageserver_ext")?;
    primary.sql("CREATE DATABASE other")?;
    primary.sql_db("other", "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 5000) i")?;

    let tenant = host.sql_one("SELECT pageserver.create_tenant()")?.unwrap();
    let conninfo = primary.connstr("postgres");
    let started = Instant::now();
    let timeline = host.sql_one(&format!("SELECT pageserver.create_timeline('{tenant}', '{conninfo}')"))?.unwrap();
    eprintln!("timeline {timeline} imported in {:.1}s", started.elapsed().as_secs_f64());

    let pgbench = |args: &[&str]| primary.run_as_postgres_checked("pgbench", args);
    let started = Instant::now();
    pgbench(&["-i", "-s", &scale.to_string(), "-q", "postgres"])?;
    eprintln!("pgbench -i -s {scale}: {:.1}s", started.elapsed().as_secs_f64());
    primary.sql("CREATE INDEX ON pgbench_accounts USING hash (bid)")?;
    primary.sql("CREATE INDEX ON pgbench_history USING brin (mtime)")?;
    let crashes = std::thread::scope(|scope| -> Result<Vec<String>> {
        let run = scope.spawn(|| pgbench(&["-c", "4", "-j", "2", "-T", &seconds.to_string(), "postgres"]));
        let mut done = Vec::new();
        let pause = Duration::from_secs(seconds / 4);
        for kind in ["postmaster", "postmaster", "main worker"] {
            std::thread::sleep(pause);
            if run.is_finished() {
                break;
            }
            let (before, _) = timeline_lsn(&host, &timeline)?;
            if kind == "postmaster" {
                host.kill_postmaster()?;
                host.start_again()?;
            } else {
                let pid = host.sql_one("SELECT pid FROM pageserver.status() WHERE kind = 'main'")?.context("main pid")?;
                let pid: i32 = pid.parse()?;
                pageserver_harness::process::signal(pid, libc::SIGKILL);
                std::thread::sleep(Duration::from_secs(3)); // the postmaster restarts the host
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            let after = loop {
                match timeline_lsn(&host, &timeline) {
                    Ok((lsn, state)) if state.starts_with("active") => break lsn,
                    _ if Instant::now() > deadline => bail!("timeline not back after killing the {kind}\n{}", host.log_tail(40)),
                    _ => std::thread::sleep(Duration::from_millis(300)),
                }
            };
            done.push(format!("killed the {kind} at ingest LSN {before}; back at {after}"));
        }
        run.join().map_err(|_| anyhow::anyhow!("pgbench thread panicked"))??;
        Ok(done)
    })?;
    for c in &crashes {
        eprintln!("{c}");
    }
    if crashes.len() < 3 {
        bail!("pgbench ended before all three crashes: {crashes:?}");
    }
    for step in ["VACUUM pgbench_history", "DELETE FROM pgbench_history WHERE tid % 3 = 0", "VACUUM pgbench_history"] {
        primary.sql(step)?;
    }
    primary.sql("CHECKPOINT")?;
    let lsn: Lsn = primary.sql_one("SELECT pg_current_wal_lsn()")?.unwrap().parse().map_err(|_| anyhow::anyhow!("lsn"))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (at, state) = timeline_lsn(&host, &timeline)?;
        if at >= lsn {
            break;
        }
        if Instant::now() > deadline {
            bail!("timeline at {at} ({state}) did not reach {lsn}\n{}", host.log_tail(40));
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    let addr = host.listener_addr().context("listener")?.to_string();
    let mut client = BlockingClient::connect(&addr, ProtocolVersion::V2, &tenant, &timeline)?;
    let mut masker = host.client("postgres")?;
    let hdr = RequestHeader { reqid: 0, request_lsn: lsn, not_modified_since: lsn };
    let files = relation_forks(&primary)?;
    let (mut blocks, mut raw_equal, mut masked_equal) = (0u64, 0u64, 0u64);
    let mut mismatches = Vec::new();
    const DEPTH: u32 = 32;
    for f in &files {
        let n = match client.request(Request::Nblocks { hdr, rel: f.rel })? {
            Response::Nblocks { n, .. } => n,
            other => bail!("Nblocks of {:?}: {other:?}", f.rel),
        };
        if n != f.nblocks {
            mismatches.push(format!("{:?}: {} blocks on the primary, {n} from the page server", f.rel, f.nblocks));
            continue;
        }
        let mut next = 0u32;
        let mut done = 0u32;
        while done < n {
            while next < n && next - done < DEPTH {
                client.queue(Request::GetPage { hdr, rel: f.rel, blkno: next });
                next += 1;
            }
            client.flush()?;
            let page = match client.recv()? {
                Response::GetPage { page, .. } => page,
                other => bail!("GetPage {:?} {done}: {other:?}", f.rel),
            };
            let blkno = done;
            done += 1;
            blocks += 1;
            let expected = read_block(&f.path_prefix, blkno)?;
            if expected[..] == page[..] {
                raw_equal += 1;
                continue;
            }
            let rmgr = if f.rel.fork == 2 { 10 } else { f.rmgr };
            let row = masker.query_one(
                "SELECT pageserver.mask_page($1, $2, $4) = pageserver.mask_page($1, $3, $4)",
                &[&rmgr, &expected, &page.to_vec(), &(blkno as i64)],
            )?;
            if row.get::<_, bool>(0) && f.rel.fork != 2 {
                masked_equal += 1;
            } else if mismatches.len() < 1000 {
                mismatches.push(format!("{:?} block {blkno} differs (rmgr {rmgr})", f.rel));
            } else {
                break;
            }
        }
    }
    eprintln!(
        "{} relation forks, {blocks} blocks at {lsn}: {raw_equal} equal, {masked_equal} equal after masking, {} mismatches",
        files.len(),
        mismatches.len()
    );
    if !mismatches.is_empty() {
        bail!("{} mismatches:\n{}", mismatches.len(), mismatches.iter().take(30).cloned().collect::<Vec<_>>().join("\n"));
    }
    if blocks < 1000 {
        bail!("only {blocks} blocks compared");
    }
    let log = host.log();
    for bad in ["PANIC", "WAL gap", "ERROR:  "] {
        if let Some(line) = log.lines().find(|l| l.contains(bad)) {
            bail!("host log has \"{line}\"");
        }
    }
    Ok(())
}

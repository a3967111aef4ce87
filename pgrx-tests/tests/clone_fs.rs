//! Live clones (`pageserver-clone`): a stock PostgreSQL 15 on a FUSE view of
//! a timeline at an LSN, relation blocks fetched from the page service on
//! first read.
//!
//! * `a_clone_matches_the_primary_at_three_lsns_and_on_a_branch`: at three
//!   LSNs of a pgbench run on a primary with data checksums on, and on a
//!   branch, a clone starts, its `pg_dumpall` equals the primary's at that
//!   LSN and `pg_amcheck --heapallindexed` is clean, having fetched only part
//!   of the relation blocks. pgbench then writes on the clone; afterwards a
//!   second clone of the same LSN equals the primary's dump again (the page
//!   server's pages, and the first clone's starting state, are untouched).
//!   A clone made by time (`--time`) shows the state of the middle LSN.
//! * `a_killed_tool_gives_io_errors_and_the_clone_resumes`: the tool is
//!   SIGKILLed under a running clone: reads of blocks not fetched yet fail
//!   with an I/O error (never wrong data); `unmount` clears the dead mount;
//!   the remounted clone recovers and keeps what was committed on it.
//! * `reads_stall_and_resume_across_a_page_server_restart`: a read-only
//!   pgbench on a cold clone runs through a restart of the page server's host
//!   without an error.
//!
//! Needs `/dev/fuse` and `fusermount3` (`scripts/setup.sh` installs fuse3):
//! without them the tests fail saying so. `E2E_SCALE` (default 5) and
//! `E2E_SECONDS` (default 10) size the pgbench runs.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::clone::{destroy, start_clone, tool, At};
use common::e2e::{compare_dumps, dump_all, lsn_of, wait_ingested};
use pageserver_harness::{as_postgres, PgCluster};

mod common;

fn check_matches(pg: &PgCluster, expected: &str, what: &str) -> Result<()> {
    let ahead = compare_dumps(&dump_all(pg)?, expected, what)?;
    let amcheck = pg.run_as_postgres("pg_amcheck", &["--all", "--heapallindexed", "--install-missing"])?;
    let report = format!("{}{}", String::from_utf8_lossy(&amcheck.stdout), String::from_utf8_lossy(&amcheck.stderr));
    ensure!(amcheck.status.success() && report.trim().is_empty(), "{what}: pg_amcheck reported: {report}");
    eprintln!("{what}: pg_dumpall equal ({ahead} sequences ahead), amcheck clean");
    Ok(())
}

#[test]
fn a_clone_matches_the_primary_at_three_lsns_and_on_a_branch() -> Result<()> {
    let tool = tool()?;
    let scale = common::e2e::env_u64("E2E_SCALE", 5).to_string();
    let seconds = common::e2e::env_u64("E2E_SECONDS", 10).to_string();
    let primary = common::e2e::start_primary(true, &[])?;
    let host = common::e2e::start_host(true, &[])?;
    let (tenant, timeline) = common::e2e::create_timeline(&host, &primary)?;
    let pgbench = |args: &[&str]| primary.run_as_postgres_checked("pgbench", args);
    pgbench(&["-i", "-s", &scale, "-q", "postgres"])?;
    let mut points = Vec::new();
    let mut middle_time = String::new();
    for round in 0..3 {
        if round > 0 {
            pgbench(&["-c", "4", "-j", "2", "-T", &seconds, "postgres"])?;
        }
        let lsn = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
        points.push((lsn, dump_all(&primary)?));
        if round == 1 {
            middle_time = primary.sql_one("SELECT clock_timestamp()::text")?.context("time")?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    wait_ingested(&host, &timeline, points[2].0)?;

    // By time: the state after the last commit at or before it.
    let (clone, pg) = start_clone(&tool, &host, &tenant, &timeline, At::Time(middle_time.clone()))?;
    check_matches(&pg, &points[1].1, &format!("clone at the time {middle_time}"))?;
    destroy(clone, pg)?;

    for (i, (lsn, expected)) in points.iter().enumerate() {
        let (clone, pg) = start_clone(&tool, &host, &tenant, &timeline, At::Lsn(*lsn))?;
        check_matches(&pg, expected, &format!("clone at LSN {i} ({lsn})"))?;
        let stats = clone.stats()?;
        let (fetched, total) = (stats["blocks_fetched"].as_u64().unwrap_or(0), stats["blocks_total"].as_u64().unwrap_or(0));
        ensure!(fetched > 0 && total > 0, "clone at LSN {i}: no blocks fetched ({stats})");
        eprintln!("clone at LSN {i}: {fetched} of {total} blocks fetched\n{}", clone.status()?);
        if i != 1 {
            destroy(clone, pg)?;
            continue;
        }
        // pgbench writes on the clone; the page server's pages stay as they were.
        pg.run_as_postgres_checked("pgbench", &["-c", "2", "-j", "2", "-T", &seconds, "postgres"])?;
        let changed = dump_all(&pg)?;
        ensure!(compare_dumps(&changed, expected, "after pgbench").is_err(), "pgbench on the clone changed nothing");
        let (second, pg2) = start_clone(&tool, &host, &tenant, &timeline, At::Lsn(*lsn))?;
        check_matches(&pg2, expected, "a second clone of the same LSN")?;
        destroy(second, pg2)?;
        destroy(clone, pg)?;
    }

    // A branch at the middle LSN, cloned at its latest LSN.
    let middle = points[1].0;
    let branch = host
        .sql_one(&format!("SELECT timeline_id FROM pageserver.branch_timeline('{tenant}', '{timeline}', '{middle}')"))?
        .context("branch")?;
    let (clone, pg) = start_clone(&tool, &host, &tenant, &branch, At::Latest)?;
    check_matches(&pg, &points[1].1, &format!("clone of the branch at {middle}"))?;
    destroy(clone, pg)?;
    // Every clone's branch is gone with its clone.
    let left = host.sql_one(&format!("SELECT count(*) FROM pageserver.timelines() WHERE tenant_id = '{tenant}'"))?;
    ensure!(left.as_deref() == Some("2"), "timelines left after the clones were destroyed: {left:?}");
    common::e2e::ensure_log_clean(&host)?;
    Ok(())
}

#[test]
fn a_killed_tool_gives_io_errors_and_the_clone_resumes() -> Result<()> {
    let tool = tool()?;
    let primary = common::e2e::start_primary(false, &[])?;
    let host = common::e2e::start_host(false, &[])?;
    let (tenant, timeline) = common::e2e::create_timeline(&host, &primary)?;
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", "3", "-q", "postgres"])?;
    let lsn = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    let expected = dump_all(&primary)?;
    wait_ingested(&host, &timeline, lsn)?;

    let (clone, mut pg) = start_clone(&tool, &host, &tenant, &timeline, At::Lsn(lsn))?;
    // Committed on the clone (its WAL is fsynced into the local store).
    pg.sql("CREATE TABLE made_on_clone AS SELECT g AS n FROM generate_series(1, 1000) g")?;
    ensure!(pg.sql_one("SELECT count(*) FROM pgbench_branches")?.as_deref() == Some("3"), "branches");

    let server = clone.serving_pid()?;
    pageserver_harness::process::signal(server, libc_sigkill());
    ensure!(pageserver_harness::process::wait_gone(&[server], Duration::from_secs(10)), "the serving process did not die");
    // pgbench_accounts was never read: its blocks are not local.
    match pg.sql("SELECT sum(abalance) FROM pgbench_accounts") {
        Ok(rows) => bail!("a read through the dead mount answered {rows:?}"),
        Err(e) => {
            let text = format!("{e:#}");
            ensure!(
                text.contains("could not")
                    || text.contains("I/O")
                    || text.contains("Transport endpoint")
                    || text.contains("terminat")
                    || text.contains("connection"),
                "unexpected error through the dead mount: {text}"
            );
            eprintln!("read through the dead mount failed as it should: {}", text.lines().next().unwrap_or(""));
        }
    }
    let status = clone.status()?;
    ensure!(status.contains("dead mount"), "status after the kill:\n{status}");
    // The server cannot even read its postmaster.pid now: kill it by its
    // working directory.
    pageserver_harness::process::kill_all_in_dir(pg.data_dir(), Duration::from_secs(10));
    clone.run(&["unmount", &clone.dir_arg()])?;
    clone.run(&["mount", &clone.dir_arg()])?;
    pg.start_again()?;
    ensure!(pg.sql_one("SELECT count(*) FROM made_on_clone")?.as_deref() == Some("1000"), "the clone lost a committed table");
    pg.sql("DROP TABLE made_on_clone")?;
    check_matches(&pg, &expected, "the remounted clone")?;
    // unmount refuses while PostgreSQL runs on the clone.
    let refused = clone.run(&["unmount", &clone.dir_arg()]);
    ensure!(refused.as_ref().is_err_and(|e| e.to_string().contains("still run")), "unmount under a running server: {refused:?}");
    destroy(clone, pg)?;
    Ok(())
}

fn libc_sigkill() -> i32 {
    9
}

#[test]
fn reads_stall_and_resume_across_a_page_server_restart() -> Result<()> {
    let tool = tool()?;
    let primary = common::e2e::start_primary(false, &[])?;
    let mut host = common::e2e::start_host(false, &[])?;
    let (tenant, timeline) = common::e2e::create_timeline(&host, &primary)?;
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", "5", "-q", "postgres"])?;
    // A table pgbench never reads: none of its blocks can have been fetched
    // when the page server stops, so a scan of it started then must wait.
    // (pgbench -S's own working set may all be fetched by then: its reads
    // set off read-ahead, and at scale 5 that can take it all in 2 s.)
    primary.sql("CREATE TABLE untouched AS SELECT g AS id, md5(g::text) AS filler FROM generate_series(1, 100000) g")?;
    let lsn = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    let expected_sum = primary.sql_one("SELECT sum(abalance) + count(*) FROM pgbench_accounts")?;
    let scan_query = "SELECT count(*) || ' ' || sum(id) || ' ' || max(filler) FROM untouched";
    let expected_scan = primary.sql_one(scan_query)?;
    wait_ingested(&host, &timeline, lsn)?;
    let (clone, pg) = start_clone(&tool, &host, &tenant, &timeline, At::Lsn(lsn))?;

    let port = pg.port().to_string();
    let socket = pg.socket_dir().display().to_string();
    let run_on_clone = |program: &'static str, args: Vec<String>| {
        let (port, socket) = (port.clone(), socket.clone());
        std::thread::spawn(move || {
            let cmd = as_postgres::command(pageserver_harness::pg_bin(program), &[])
                .args(&args)
                .args(["-h", &socket, "-p", &port, "postgres"])
                .output();
            cmd.map(|o| (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))))
        })
    };
    let bench = run_on_clone("pgbench", ["-S", "-c", "4", "-j", "2", "-T", "15"].map(String::from).to_vec());
    std::thread::sleep(Duration::from_secs(2));
    let stopping = Instant::now();
    host.stop()?;
    let scan = run_on_clone("psql", vec!["-XAtc".into(), scan_query.into()]);
    std::thread::sleep(Duration::from_secs(3));
    ensure!(!scan.is_finished(), "a scan of a table never read on the clone ended while the page server was down");
    host.start_again()?;
    let restarted = stopping.elapsed();
    let (ok, output) = bench.join().expect("pgbench thread")?;
    ensure!(ok, "read-only pgbench on the clone failed across the restart (the host was back after {restarted:?}):\n{output}");
    let (ok, scanned) = scan.join().expect("scan thread")?;
    ensure!(ok, "the scan started while the page server was down failed (the host was back after {restarted:?}):\n{scanned}");
    ensure!(Some(scanned.trim()) == expected_scan.as_deref(), "the scan across the restart saw {scanned:?}, the primary {expected_scan:?}");
    let stats = clone.stats()?;
    ensure!(stats["fetch_retries"].as_u64().unwrap_or(0) > 0, "no fetch waited for the page server: {stats}");
    ensure!(stats["fetch_failures"].as_u64() == Some(0), "fetches failed: {stats}");
    ensure!(pg.sql_one("SELECT sum(abalance) + count(*) FROM pgbench_accounts")? == expected_sum, "wrong sum after the restart");
    eprintln!(
        "pgbench -S through a page server restart ({restarted:?}): {}; a scan waited through it; {} fetch retries",
        output.lines().filter(|l| l.starts_with("tps")).collect::<Vec<_>>().join("; "),
        stats["fetch_retries"]
    );
    destroy(clone, pg)?;
    Ok(())
}

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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::e2e::{compare_dumps, dump_all, lsn_of, wait_ingested};
use pageserver_harness::{as_postgres, ClusterConfig, PgCluster};
use storage::lsn::Lsn;

mod common;

/// The tool's binary, built for this test run if needed.
fn tool() -> Result<PathBuf> {
    ensure!(
        Path::new("/dev/fuse").exists(),
        "live clone tests need FUSE: /dev/fuse is missing on this machine (load the fuse module, or give the container --device /dev/fuse)"
    );
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").exists()));
    ensure!(found, "live clone tests need fusermount3: install Debian's fuse3 (scripts/setup.sh does)");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace")?.to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", "pageserver_clone", "--bin", "pageserver-clone"])
        .current_dir(&workspace)
        .status()?;
    ensure!(status.success(), "building pageserver-clone failed");
    // This test runs as target/<profile>/deps/clone_fs-<hash>.
    let bin = std::env::current_exe()?.parent().and_then(Path::parent).context("target dir")?.join("pageserver-clone");
    ensure!(bin.exists(), "{} was not built", bin.display());
    Ok(bin)
}

/// A clone directory owned by postgres, with the tool's commands.
struct CloneDir {
    tool: PathBuf,
    dir: tempfile::TempDir,
}

impl CloneDir {
    fn new(tool: &Path) -> Result<CloneDir> {
        let dir = tempfile::Builder::new().prefix("clone-test.").tempdir()?;
        as_postgres::chown_to_postgres(dir.path())?;
        Ok(CloneDir { tool: tool.to_path_buf(), dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.tool).args(args).output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            let log = std::fs::read_to_string(self.path().join("clone.log")).unwrap_or_default();
            bail!("pageserver-clone {}: {text}\nclone.log:\n{log}", args.join(" "));
        }
        Ok(text)
    }

    fn dir_arg(&self) -> String {
        self.path().display().to_string()
    }

    /// The first mount, at `mountpoint`.
    fn create(&self, host: &PgCluster, tenant: &str, timeline: &str, at: &At, mountpoint: &Path) -> Result<String> {
        let mut args = vec![
            "mount".to_string(),
            self.dir_arg(),
            "--admin".into(),
            host.connstr("postgres"),
            "--tenant".into(),
            tenant.into(),
            "--timeline".into(),
            timeline.into(),
            "--mountpoint".into(),
            mountpoint.display().to_string(),
            "--timeout-s".into(),
            "20".into(),
        ];
        match at {
            At::Lsn(lsn) => args.extend(["--lsn".into(), lsn.to_string()]),
            At::Time(t) => args.extend(["--time".into(), t.clone()]),
            At::Latest => {}
        }
        self.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn status(&self) -> Result<String> {
        self.run(&["status", &self.dir_arg()])
    }

    fn stats(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&std::fs::read(self.path().join("stats.json"))?)?)
    }

    fn serving_pid(&self) -> Result<i32> {
        Ok(std::fs::read_to_string(self.path().join("clone.pid"))?.trim().parse()?)
    }
}

/// Which point of a timeline a clone shows.
#[derive(Debug)]
enum At {
    Lsn(Lsn),
    Time(String),
    Latest,
}

/// A stock PostgreSQL 15 on a new clone of `timeline` at `at`.
fn start_clone(tool: &Path, host: &PgCluster, tenant: &str, timeline: &str, at: At) -> Result<(CloneDir, PgCluster)> {
    let clone = CloneDir::new(tool)?;
    let started = Instant::now();
    // fsync on: a killed tool, like a power loss, keeps only what was fsynced.
    let pg = PgCluster::start_on_data_dir(ClusterConfig::default().setting("fsync", "on"), |data| {
        clone.create(host, tenant, timeline, &at, data)?;
        Ok(())
    })?;
    eprintln!("clone of {timeline} at {at:?}: mounted and started in {:.1}s", started.elapsed().as_secs_f64());
    Ok((clone, pg))
}

/// Stops the clone's PostgreSQL and destroys the clone (its branch too).
fn destroy(clone: CloneDir, mut pg: PgCluster) -> Result<()> {
    pg.stop()?;
    clone.run(&["destroy", &clone.dir_arg()])?;
    Ok(())
}

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
    let lsn = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    let expected_sum = primary.sql_one("SELECT sum(abalance) + count(*) FROM pgbench_accounts")?;
    wait_ingested(&host, &timeline, lsn)?;
    let (clone, pg) = start_clone(&tool, &host, &tenant, &timeline, At::Lsn(lsn))?;

    let bench = {
        let port = pg.port().to_string();
        let socket = pg.socket_dir().display().to_string();
        std::thread::spawn(move || {
            let cmd = as_postgres::command(pageserver_harness::pg_bin("pgbench"), &[])
                .args(["-S", "-c", "4", "-j", "2", "-T", "15", "-h", &socket, "-p", &port, "postgres"])
                .output();
            cmd.map(|o| (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))))
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let remote = clone.stats()?["blocks_remote"].as_u64().unwrap_or(0);
    ensure!(remote > 1000, "only {remote} blocks still remote when the page server stops: the test proves nothing");
    host.stop()?;
    std::thread::sleep(Duration::from_secs(3));
    host.start_again()?;
    let (ok, output) = bench.join().expect("pgbench thread")?;
    ensure!(ok, "read-only pgbench on the clone failed across the restart:\n{output}");
    let stats = clone.stats()?;
    ensure!(stats["fetch_retries"].as_u64().unwrap_or(0) > 0, "no fetch waited for the page server: {stats}");
    ensure!(stats["fetch_failures"].as_u64() == Some(0), "fetches failed: {stats}");
    ensure!(pg.sql_one("SELECT sum(abalance) + count(*) FROM pgbench_accounts")? == expected_sum, "wrong sum after the restart");
    eprintln!(
        "pgbench -S through a page server restart: {}",
        output.lines().filter(|l| l.starts_with("tps")).collect::<Vec<_>>().join("; ")
    );
    destroy(clone, pg)?;
    Ok(())
}

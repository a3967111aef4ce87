//! The extension's workers in a host of their own: they start, publish
//! heartbeats, survive SIGHUP, come back after SIGTERM (without a crash
//! restart) and after SIGKILL (through the postmaster's crash restart), and
//! `pageserver.status()` counts the restarts.

use anyhow::{bail, Context, Result};
use pageserver_harness::{process, PgCluster};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Worker {
    kind: String,
    number: i32,
    pid: i32,
    state: String,
    heartbeat_s: f64,
    restarts: i64,
}

fn status(host: &PgCluster) -> Result<Vec<Worker>> {
    let rows = host.sql(
        "SELECT kind, number, coalesce(pid, 0), state, \
                coalesce(extract(epoch from last_heartbeat), 0), restarts \
         FROM pageserver.status() ORDER BY kind, number",
    )?;
    rows.into_iter()
        .map(|r| {
            let col = |i: usize| r[i].clone().with_context(|| format!("NULL in column {i}"));
            Ok(Worker {
                kind: col(0)?,
                number: col(1)?.parse()?,
                pid: col(2)?.parse()?,
                state: col(3)?,
                heartbeat_s: col(4)?.parse()?,
                restarts: col(5)?.parse()?,
            })
        })
        .collect()
}

/// Status once every worker is running (the query itself may fail while the
/// host restarts).
fn wait_all_running(host: &PgCluster, what: &str, extra: impl Fn(&[Worker]) -> bool) -> Result<Vec<Worker>> {
    host.wait_for(what, WAIT, || {
        let workers = status(host).ok()?;
        (workers.iter().all(|w| w.state == "running") && extra(&workers)).then_some(workers)
    })
}

fn find<'a>(workers: &'a [Worker], kind: &str, number: i32) -> &'a Worker {
    workers.iter().find(|w| w.kind == kind && w.number == number).expect("worker listed")
}

fn start_host_with_extension(redo_workers: u32) -> Result<PgCluster> {
    let host = PgCluster::start_host(&[("pageserver.redo_workers", &redo_workers.to_string())])?;
    host.sql("CREATE EXTENSION pageserver_ext")?;
    Ok(host)
}

#[test]
fn every_worker_runs_with_advancing_heartbeats_and_survives_reload() -> Result<()> {
    let host = start_host_with_extension(3)?;
    let first = wait_all_running(&host, "all workers running", |_| true)?;
    let kinds: Vec<(&str, i32)> = first.iter().map(|w| (w.kind.as_str(), w.number)).collect();
    assert_eq!(kinds, [("backup", 0), ("layers", 0), ("main", 0), ("redo", 0), ("redo", 1), ("redo", 2)]);
    assert!(first.iter().all(|w| w.pid > 0 && w.restarts == 0), "{first:?}");

    let advanced =
        wait_all_running(&host, "every heartbeat to advance", |now| now.iter().zip(&first).all(|(n, f)| n.heartbeat_s > f.heartbeat_s))?;

    host.sql("SELECT pg_reload_conf()")?;
    std::thread::sleep(Duration::from_secs(2));
    let after_reload = wait_all_running(&host, "workers after reload", |_| true)?;
    for (a, b) in after_reload.iter().zip(&advanced) {
        assert_eq!(a.pid, b.pid, "a reload must not restart {} {}", a.kind, a.number);
    }
    Ok(())
}

#[test]
fn sigterm_stops_a_worker_cleanly_and_the_postmaster_starts_it_again() -> Result<()> {
    let host = start_host_with_extension(2)?;
    let before = wait_all_running(&host, "all workers running", |_| true)?;
    let redo1 = find(&before, "redo", 1).clone();
    let main = find(&before, "main", 0).clone();
    process::signal(redo1.pid, libc::SIGTERM);

    let after = wait_all_running(&host, "redo worker 1 to come back", |now| {
        let w = find(now, "redo", 1);
        w.pid != redo1.pid && w.restarts == 1
    })?;
    assert_eq!(find(&after, "main", 0).pid, main.pid, "SIGTERM of one worker must not restart the host");
    assert_eq!(find(&after, "redo", 0).restarts, 0);
    if !host.log().contains("pageserver redo worker exiting") {
        bail!("no clean-exit line in the log:\n{}", host.log_tail(30));
    }
    Ok(())
}

#[test]
fn sigkill_of_a_worker_is_survived_and_counted() -> Result<()> {
    let host = start_host_with_extension(2)?;
    let before = wait_all_running(&host, "all workers running", |_| true)?;
    let layers = find(&before, "layers", 0).clone();
    let postmaster = host.postmaster_pid()?;
    process::signal(layers.pid, libc::SIGKILL);

    let after = wait_all_running(&host, "the layers worker to come back after SIGKILL", |now| {
        let w = find(now, "layers", 0);
        w.pid != layers.pid && w.restarts >= 1
    })?;
    assert_eq!(host.postmaster_pid()?, postmaster, "the postmaster itself survives");
    assert!(!process::pid_alive(layers.pid));
    // SIGKILL makes the postmaster reset shared memory and restart every
    // worker; the counts carried across that reset say so.
    for w in &after {
        assert!(w.restarts >= 1, "restart of {} {} not counted: {after:?}", w.kind, w.number);
    }
    // And the page service is back.
    let addr = host.listener_addr().context("host has a listener")?;
    host.wait_for("the listener to accept again", WAIT, || std::net::TcpStream::connect(addr).ok())?;
    Ok(())
}

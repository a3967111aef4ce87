//! What the benchmarks ask of running clusters: LSNs of a primary and of a
//! host's timelines, the host's worker processes, and the CPU time they use
//! (from `/proc`).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pageserver_harness::PgCluster;
use storage::lsn::Lsn;

/// Linux's USER_HZ, the unit of utime/stime in /proc/<pid>/task/<tid>/stat.
pub const CLOCK_TICKS_PER_S: f64 = 100.0;

/// How long a benchmark waits for a timeline to ingest what the primary wrote.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(1800);

pub fn parse_lsn(s: &str) -> Result<Lsn> {
    s.trim().parse().map_err(|e| anyhow!("bad LSN {s:?}: {e}"))
}

pub fn first_text(client: &mut postgres::Client, query: &str) -> Result<Option<String>> {
    for m in client.simple_query(query).with_context(|| format!("running {query}"))? {
        if let postgres::SimpleQueryMessage::Row(row) = m {
            return Ok(row.get(0).map(str::to_string));
        }
    }
    bail!("no row from {query}")
}

pub fn primary_lsn(client: &mut postgres::Client) -> Result<Lsn> {
    parse_lsn(&first_text(client, "SELECT pg_current_wal_lsn()::text")?.context("NULL LSN")?)
}

/// The timeline's last_record_lsn; fails if the timeline is broken or gone.
pub fn timeline_lsn(client: &mut postgres::Client, timeline: &str) -> Result<Lsn> {
    let query =
        format!("SELECT last_record_lsn, state, coalesce(last_error, '') FROM pageserver.timelines() WHERE timeline_id = '{timeline}'");
    for m in client.simple_query(&query)? {
        if let postgres::SimpleQueryMessage::Row(row) = m {
            let state = row.get(1).unwrap_or_default();
            if state == "broken" {
                bail!("timeline {timeline} is broken: {}", row.get(2).unwrap_or_default());
            }
            return parse_lsn(row.get(0).context("NULL last_record_lsn")?);
        }
    }
    bail!("timeline {timeline} not listed by pageserver.timelines()")
}

/// Polls until the timeline has ingested up to `target`.
pub fn wait_caught_up(host: &mut postgres::Client, timeline: &str, target: Lsn, what: &str) -> Result<()> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let lsn = timeline_lsn(host, timeline)?;
        if lsn >= target {
            eprintln!("{what}: timeline at {lsn} >= {target} after {:.1} s", started.elapsed().as_secs_f64());
            return Ok(());
        }
        if started.elapsed() > CATCH_UP_TIMEOUT {
            bail!("{what}: timeline at {lsn}, still short of {target} after {CATCH_UP_TIMEOUT:?}");
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            let behind = target.0.saturating_sub(lsn.0);
            eprintln!("{what}: timeline at {lsn}, {} MiB behind {target}", behind >> 20);
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `pgbench -i -s scale` on the primary (then a checkpoint), a new tenant
/// on the host and a timeline importing the primary; prints how long each
/// took. Returns (tenant, timeline).
pub fn pgbench_timeline(primary: &PgCluster, host: &PgCluster, scale: u64) -> Result<(String, String)> {
    let started = Instant::now();
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", &scale.to_string(), "-q", "postgres"])?;
    primary.sql("CHECKPOINT")?;
    let size = primary.sql_one("SELECT pg_size_pretty(pg_database_size('postgres'))")?.unwrap_or_default();
    eprintln!("pgbench -i -s {scale}: {:.1} s, database {size}", started.elapsed().as_secs_f64());
    let tenant = host.sql_one("SELECT pageserver.create_tenant()")?.context("NULL tenant")?;
    let started = Instant::now();
    let timeline = host
        .sql_one(&format!("SELECT pageserver.create_timeline('{tenant}', '{}')", primary.connstr("postgres")))?
        .context("NULL timeline")?;
    eprintln!("create_timeline (import): {:.1} s", started.elapsed().as_secs_f64());
    Ok((tenant, timeline))
}

/// Pids of the workers of one kind, from `pageserver.status()`.
pub fn worker_pids(host: &PgCluster, kind: &str) -> Result<Vec<u32>> {
    let rows = host.sql(&format!("SELECT pid FROM pageserver.status() WHERE kind = '{kind}' AND pid IS NOT NULL"))?;
    rows.iter().map(|r| Ok(r[0].as_deref().context("pid")?.parse()?)).collect()
}

/// (tid, name, utime + stime in ticks) of every thread of `pid`.
pub fn thread_times(pid: i32) -> Vec<(i32, String, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_string();
        // After ")": state is field 3; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        out.push((tid, name, ticks(14) + ticks(15)));
    }
    out
}

/// Per id (a thread's or a process's), the share of a CPU used between two
/// snapshots of (id, name, ticks), in percent, busiest first.
fn cpu_shares<'a, Id: PartialEq + Copy>(
    before: &[(Id, String, u64)],
    after: &'a [(Id, String, u64)],
    secs: f64,
) -> Vec<(f64, Id, &'a str)> {
    let mut rows: Vec<(f64, Id, &str)> = after
        .iter()
        .map(|(id, name, t)| {
            let t0 = before.iter().find(|(b, _, _)| b == id).map_or(0, |(_, _, t0)| *t0);
            (t.saturating_sub(t0) as f64 / CLOCK_TICKS_PER_S / secs * 100.0, *id, name.as_str())
        })
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    rows
}

/// Prints each thread's CPU use between two snapshots, busiest first.
pub fn print_thread_cpu(what: &str, before: &[(i32, String, u64)], after: &[(i32, String, u64)], secs: f64) {
    let rows = cpu_shares(before, after, secs);
    let total: f64 = rows.iter().map(|r| r.0).sum();
    eprintln!("{what}: {total:.0}% CPU over {secs:.1} s in {} threads; busiest:", rows.len());
    for (pct, tid, name) in rows.iter().take(10).filter(|r| r.0 >= 0.5) {
        eprintln!("  {pct:6.1}%  tid {tid:<8} {name}");
    }
}

/// Total utime + stime of a whole process, in ticks: `/proc/<pid>/stat`,
/// which also counts threads that have exited (summing the live threads
/// would miss the short-lived ones, such as a bulk read's).
pub fn process_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let Some(close) = stat.rfind(')') else { return 0 };
    // After ")": state is field 3; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    ticks(14) + ticks(15)
}

/// Waits until the host's workers have used under 5% of a CPU for a whole
/// second (the layers worker compacting what a workload left, say), so
/// that a measurement after it does not share the CPU with them; gives up
/// after `limit`, saying so.
pub fn wait_host_quiet(host: &PgCluster, limit: Duration) -> Result<()> {
    let mut pids = Vec::new();
    for kind in ["main", "layers", "redo"] {
        pids.extend(worker_pids(host, kind)?);
    }
    let ticks = || pids.iter().map(|p| process_ticks(*p)).sum::<u64>();
    let started = Instant::now();
    let mut before = ticks();
    while started.elapsed() < limit {
        std::thread::sleep(Duration::from_secs(1));
        let now = ticks();
        if (now - before) as f64 / CLOCK_TICKS_PER_S < 0.05 {
            eprintln!("host workers quiet after {:.1} s", started.elapsed().as_secs_f64());
            return Ok(());
        }
        before = now;
    }
    eprintln!("host workers still busy after {limit:?}: measuring anyway");
    Ok(())
}

/// (pid, command line, utime + stime in ticks) of every process on the
/// machine: what took the CPU while a benchmark ran, whichever cluster or
/// tool it belongs to.
pub fn all_process_ticks() -> Vec<(u32, String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let title = String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_string();
        out.push((pid, title, process_ticks(pid)));
    }
    out
}

/// Prints the processes that used at least 1% of a CPU between two
/// [`all_process_ticks`] snapshots, busiest first (one that ended in
/// between, such as a parallel query's worker, is missing or untitled).
pub fn print_process_cpu(what: &str, before: &[(u32, String, u64)], after: &[(u32, String, u64)], secs: f64) {
    let rows = cpu_shares(before, after, secs);
    let total: f64 = rows.iter().map(|r| r.0).sum();
    eprintln!("{what}: {total:.0}% CPU over {secs:.1} s; busiest processes:");
    for (pct, pid, title) in rows.iter().take(12).filter(|r| r.0 >= 1.0) {
        let title: String = title.chars().take(100).collect();
        eprintln!("  {pct:6.1}%  pid {pid:<8} {title}");
    }
}

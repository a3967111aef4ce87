//! End to end, oracle 4 of DESIGN.md: a stock PostgreSQL 15 starts from the
//! page server's `fullbackup` at any LSN. At three LSNs of a streamed
//! primary with data checksums off (after `pgbench -i`, between two pgbench
//! runs, after them; writes paused at each while `pg_dumpall` runs), the
//! fullbackup at that LSN, unpacked into an empty directory, starts; its
//! `pg_dumpall` equals the primary's at that LSN; `pg_amcheck
//! --heapallindexed --all` reports nothing. The same for a branch created at
//! the middle LSN. With checksums on, and on a workload of every WAL-writing
//! feature: `e2e_workload.rs`.
//!
//! Scale and duration: `E2E_SCALE` (default 5) and `E2E_SECONDS` (default 20 per run).

use anyhow::{bail, Result};
use common::e2e::{check_fullbackup, dump_all, lsn_of, wait_ingested};

mod common;

#[test]
fn stock_postgres_starts_from_fullbackup_at_any_lsn_and_on_a_branch() -> Result<()> {
    let scale = common::e2e::env_u64("E2E_SCALE", 5).to_string();
    let seconds = common::e2e::env_u64("E2E_SECONDS", 20).to_string();
    let primary = common::e2e::start_primary(false, &[])?;
    let host = common::e2e::start_host(false, &[])?;
    let (tenant, timeline) = common::e2e::create_timeline(&host, &primary)?;

    let pgbench = |args: &[&str]| primary.run_as_postgres_checked("pgbench", args);
    let mut points = Vec::new();
    pgbench(&["-i", "-s", &scale, "-q", "postgres"])?;
    for round in 0..3 {
        if round > 0 {
            pgbench(&["-c", "4", "-j", "2", "-T", &seconds, "postgres"])?;
        }
        // Writes are paused: the dump shows the data as of this LSN.
        let lsn = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
        points.push((lsn, dump_all(&primary)?));
    }
    let last = points.last().unwrap().0;
    wait_ingested(&host, &timeline, last)?;
    let middle = points[1].0;
    let branch =
        host.sql_one(&format!("SELECT timeline_id FROM pageserver.branch_timeline('{tenant}', '{timeline}', '{middle}')"))?.unwrap();
    for (i, (lsn, expected)) in points.iter().enumerate() {
        check_fullbackup(&host, &tenant, &timeline, Some(*lsn), expected, false, &format!("timeline at LSN {i} ({lsn})"))?;
    }
    check_fullbackup(&host, &tenant, &branch, None, &points[1].1, false, &format!("branch at {middle}"))?;
    let log = host.log();
    if let Some(line) = log.lines().find(|l| l.contains("PANIC") || l.contains("ERROR:  ")) {
        bail!("host log has \"{line}\"");
    }
    Ok(())
}

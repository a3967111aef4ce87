//! End to end on a workload that writes every kind of WAL a PostgreSQL 15
//! primary writes for its data (`workloads/every_wal_feature.sql`: every
//! index access method, unlogged relations and their init forks, sequences,
//! temporary objects, multixacts from concurrent sessions, subtransactions,
//! prepared transactions, VACUUM truncation, TOAST, DDL of many kinds,
//! CREATE / DROP DATABASE with both strategies), with data checksums on and
//! off. After it, and after a second round of writes:
//!
//! - every block of every WAL-logged fork, Exists / Nblocks of every fork and
//!   the SLRU segments equal the primary's after `CHECKPOINT`, and with
//!   checksums on every page carries a valid checksum (`common::e2e::compare_pages`);
//! - a stock PostgreSQL 15 starts from `fullbackup` at both LSNs, passes
//!   `pg_checksums --check` (checksums on), `pg_amcheck --heapallindexed`,
//!   and its `pg_dumpall` equals the primary's at that LSN.

use anyhow::Result;
use common::e2e::{self, check_fullbackup, compare_pages, dump_all, lsn_of, wait_ingested};

mod common;

/// More writes on the workload's objects, for a second LSN.
const SECOND_ROUND: &str = "
UPDATE items SET n = n + 100 WHERE id % 11 = 0;
SELECT nextval('ticks') FROM generate_series(1, 40);
INSERT INTO serials (v) SELECT i FROM generate_series(1, 100) i;
DELETE FROM shrinking WHERE i > 500;
VACUUM shrinking;
\\concurrent_key_share locked 60
INSERT INTO scratch SELECT i, ARRAY['b'], point(0, i), int4range(i, i + 2), i FROM generate_series(1, 100) i;
\\connect db_wal_log
UPDATE t SET v = 'changed' WHERE id < 100;
\\connect postgres
";

fn run(checksums: bool) -> Result<()> {
    let primary = e2e::start_primary(checksums, &[])?;
    let host = e2e::start_host(checksums, &[("pageserver.checkpoint_distance", "16MB"), ("pageserver.checkpoint_timeout", "5s")])?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    let label = if checksums { "checksums on" } else { "checksums off" };

    let statements = e2e::run_workload(&primary, e2e::WORKLOAD)?;
    primary.sql("CHECKPOINT")?;
    let first = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    wait_ingested(&host, &timeline, first)?;
    eprintln!("{label}: {statements} workload statements, compared at {first}");
    compare_pages(&primary, &host, &tenant, &timeline, first, checksums)?.ensure_clean()?;
    let first_dump = dump_all(&primary)?;

    e2e::run_workload(&primary, SECOND_ROUND)?;
    let second = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    let second_dump = dump_all(&primary)?;
    wait_ingested(&host, &timeline, second)?;
    check_fullbackup(&host, &tenant, &timeline, Some(first), &first_dump, checksums, &format!("{label}: after the workload"))?;
    check_fullbackup(&host, &tenant, &timeline, Some(second), &second_dump, checksums, &format!("{label}: after the second round"))?;
    primary.sql("CHECKPOINT")?;
    let third = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    wait_ingested(&host, &timeline, third)?;
    compare_pages(&primary, &host, &tenant, &timeline, third, checksums)?.ensure_clean()?;
    e2e::ensure_log_clean(&host)
}

#[test]
fn every_wal_feature_with_checksums_on() -> Result<()> {
    run(true)
}

#[test]
fn every_wal_feature_with_checksums_off() -> Result<()> {
    run(false)
}

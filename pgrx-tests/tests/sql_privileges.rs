//! Who may call what: nothing is PUBLIC; `pageserver_admin` manages and
//! inspects; `pg_monitor` reads the status functions; the debugging
//! functions are for superusers only. Each role connects for real and gets
//! `permission denied` (42501) wherever it has no right.

use anyhow::{ensure, Result};
use pageserver_harness::PgCluster;

mod common;
use common::e2e;

/// Every function of the extension with arguments of the right types.
const MANAGEMENT: &[&str] = &[
    "pageserver.create_tenant()",
    "pageserver.create_timeline('0123456789abcdef0123456789abcdef', 'host=127.0.0.1')",
    "pageserver.branch_timeline('0123456789abcdef0123456789abcdef', '0123456789abcdef0123456789abcdef')",
    "pageserver.attach_tenant('0123456789abcdef0123456789abcdef')",
    "pageserver.detach_tenant('0123456789abcdef0123456789abcdef')",
    "pageserver.drop_timeline('0123456789abcdef0123456789abcdef', '0123456789abcdef0123456789abcdef')",
    "pageserver.drop_tenant('0123456789abcdef0123456789abcdef')",
    "pageserver.get_page('0123456789abcdef0123456789abcdef', '0123456789abcdef0123456789abcdef', 1663, 5, 1259, 'main', 0)",
    "pageserver.rel_size('0123456789abcdef0123456789abcdef', '0123456789abcdef0123456789abcdef', 1663, 5, 1259)",
    "pageserver.list_relations('0123456789abcdef0123456789abcdef', '0123456789abcdef0123456789abcdef')",
    "pageserver.checkpoint('0123456789abcdef0123456789abcdef', '0123456789abcdef0123456789abcdef')",
    "pageserver.lsn_for_time('0123456789abcdef0123456789abcdef', '0123456789abcdef0123456789abcdef', now())",
    "pageserver.compact('0123456789abcdef0123456789abcdef', '0123456789abcdef0123456789abcdef')",
    "pageserver.gc('0123456789abcdef0123456789abcdef', '0123456789abcdef0123456789abcdef')",
    "pageserver.tenant_config('0123456789abcdef0123456789abcdef')",
];
const MONITORING: &[&str] = &[
    "pageserver.status()",
    "pageserver.tenants()",
    "pageserver.timelines()",
    "pageserver.remote_timelines()",
    "pageserver.stat_wal_receiver()",
    "pageserver.stat_page_service()",
    "pageserver.stat_redo()",
    "pageserver.timeline_sizes()",
    "pageserver.all_tenant_settings()",
    "pageserver.tenant_settings",
    "pageserver.progress",
];
/// Readable by pg_monitor too, but about a timeline (made-up ids fail after the check).
const MONITORING_OF_A_TIMELINE: &[&str] = &["pageserver.layers('0123456789abcdef0123456789abcdef', '0123456789abcdef0123456789abcdef')"];
const DEBUGGING: &[&str] = &[
    "pageserver.mask_page(0, '\\x00'::bytea, 0)",
    "pageserver.redo_apply(1663, 5, 1259, 0, 0, NULL, ARRAY[]::bytea[], ARRAY[]::bigint[], ARRAY[]::bigint[])",
];

/// The SQLSTATE of `SELECT * FROM <call>` as `user` ("" when it succeeds).
fn outcome(host: &PgCluster, user: &str, call: &str) -> Result<String> {
    let mut client =
        postgres::Client::connect(&format!("host=127.0.0.1 port={} user={user} dbname=postgres", host.port()), postgres::NoTls)?;
    Ok(match client.simple_query(&format!("SELECT * FROM {call}")) {
        Ok(_) => String::new(),
        Err(e) => e.code().map(|c| c.code().to_string()).unwrap_or_else(|| e.to_string()),
    })
}

#[test]
fn roles_get_what_they_are_granted_and_nothing_else() -> Result<()> {
    let host = e2e::start_host(false, &[])?;
    host.sql("CREATE ROLE alice LOGIN; CREATE ROLE watcher LOGIN IN ROLE pg_monitor; CREATE ROLE dba LOGIN IN ROLE pageserver_admin")?;
    let denied = "42501";
    for call in MANAGEMENT.iter().chain(MONITORING).chain(MONITORING_OF_A_TIMELINE).chain(DEBUGGING) {
        ensure!(outcome(&host, "alice", call)? == denied, "alice may call {call}");
    }
    for call in MONITORING_OF_A_TIMELINE {
        ensure!(outcome(&host, "watcher", call)? == "42704", "pg_monitor: {call} gave {}", outcome(&host, "watcher", call)?);
    }
    for call in MONITORING {
        ensure!(outcome(&host, "watcher", call)?.is_empty(), "pg_monitor cannot read {call}: {}", outcome(&host, "watcher", call)?);
    }
    for call in MANAGEMENT.iter().chain(DEBUGGING) {
        ensure!(outcome(&host, "watcher", call)? == denied, "pg_monitor may call {call}");
    }
    // The admin's calls pass the privilege check; most then fail on the
    // made-up ids, with their own SQLSTATEs.
    for call in MANAGEMENT.iter().chain(MONITORING) {
        ensure!(outcome(&host, "dba", call)? != denied, "pageserver_admin may not call {call}");
    }
    ensure!(outcome(&host, "dba", "pageserver.create_tenant()")?.is_empty());
    for call in DEBUGGING {
        ensure!(outcome(&host, "dba", call)? == denied, "pageserver_admin may call {call}");
        ensure!(outcome(&host, "postgres", call)? != denied, "a superuser may not call {call}");
    }
    Ok(())
}

/// Every function of schema `pageserver` has a comment (`\df+`) and is in
/// one of the lists above, so a new function cannot ship undocumented or
/// without a decision on who may call it.
#[test]
fn every_function_is_commented_and_classified() -> Result<()> {
    let host = e2e::start_host(false, &[])?;
    let functions = host.sql(
        "SELECT p.proname, coalesce(obj_description(p.oid, 'pg_proc'), '') FROM pg_proc p \
         JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pageserver' ORDER BY 1",
    )?;
    ensure!(functions.len() >= 19, "only {} functions", functions.len());
    let classified: Vec<&str> = MANAGEMENT.iter().chain(MONITORING).chain(MONITORING_OF_A_TIMELINE).chain(DEBUGGING).copied().collect();
    for row in &functions {
        let name = row[0].as_deref().unwrap_or_default();
        ensure!(row[1].as_deref().is_some_and(|c| c.len() > 20), "pageserver.{name} has no comment");
        let listed = classified.iter().any(|call| call.starts_with(&format!("pageserver.{name}(")));
        ensure!(listed || name == "redo_bench", "pageserver.{name} is in none of the privilege lists");
    }
    let schema = host.sql_one("SELECT obj_description('pageserver'::regnamespace, 'pg_namespace')")?;
    ensure!(schema.is_some(), "schema pageserver has no comment");
    Ok(())
}

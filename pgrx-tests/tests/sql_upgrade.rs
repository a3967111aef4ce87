//! `ALTER EXTENSION pageserver_ext UPDATE` from 0.1.0 (its install script
//! kept in `fixtures/`) on a host holding a tenant, a streaming timeline
//! and a branch: they all work on afterwards, a grant made by hand on a
//! function the update replaces is kept, the new functions work, and
//! the catalog then equals a fresh `CREATE EXTENSION` of the current
//! version (every function with its arguments, result, C symbol, comment
//! and ACL; every view with its definition, comment and ACL; the schema;
//! the extension's members; the roles), so a function, view, comment or
//! grant the upgrade script forgets fails this test.

use anyhow::{ensure, Context, Result};
use pageserver_harness::{pg_bin, ClusterConfig, PgCluster};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

mod common;
use common::e2e;

const OLD_VERSION: &str = "0.1.0";
const OLD_INSTALL_SCRIPT: &str = include_str!("../fixtures/pageserver_ext--0.1.0.sql");
/// The version `cargo pgrx install` installed: the workspace's.
const NEW_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Puts the 0.1.0 install script next to the installed extension's files
/// (`cargo pgrx install` only installs the current version's).
fn install_old_script() -> Result<()> {
    let out = Command::new(pg_bin("pg_config")).arg("--sharedir").output().context("running pg_config")?;
    ensure!(out.status.success(), "pg_config --sharedir: {}", String::from_utf8_lossy(&out.stderr));
    let dir = PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("extension");
    let script = dir.join(format!("pageserver_ext--{OLD_VERSION}.sql"));
    let partial = dir.join(format!(".pageserver_ext--{OLD_VERSION}.sql.{}", std::process::id()));
    std::fs::write(&partial, OLD_INSTALL_SCRIPT).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &script).with_context(|| format!("renaming to {}", script.display()))?;
    Ok(())
}

/// What the extension puts into the catalog of database `db`, one line per
/// object, sorted.
fn extension_catalog(host: &PgCluster, db: &str) -> Result<BTreeSet<String>> {
    const FUNCTIONS: &str = "
        SELECT format('function %s(%s) returns %s; kind %s, strict %s, volatile %s, parallel %s, security definer %s, \
                       cost %s, rows %s, config %s, language %s, symbol %s in %s, owner %s, extension member %s; \
                       acl %s; comment %L',
            p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), p.prokind, p.proisstrict,
            p.provolatile, p.proparallel, p.prosecdef, p.procost, p.prorows, p.proconfig, l.lanname, p.prosrc,
            p.probin, p.proowner::regrole,
            EXISTS (SELECT FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                      AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'pageserver_ext'),
            CASE WHEN p.proacl IS NULL THEN 'default (PUBLIC may execute)'
                 ELSE array(SELECT a::text FROM unnest(p.proacl) a ORDER BY 1)::text END,
            obj_description(p.oid, 'pg_proc'))
        FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
        WHERE p.pronamespace = 'pageserver'::regnamespace";
    const SCHEMA: &str = "
        SELECT format('schema %s owner %s; acl %s; comment %L', n.nspname, n.nspowner::regrole,
            CASE WHEN n.nspacl IS NULL THEN 'default' ELSE array(SELECT a::text FROM unnest(n.nspacl) a ORDER BY 1)::text END,
            obj_description(n.oid, 'pg_namespace'))
        FROM pg_namespace n WHERE n.nspname = 'pageserver'";
    const RELATIONS: &str = "
        SELECT format('relation %s kind %s owner %s; acl %s; comment %L; definition %s', c.relname, c.relkind,
            c.relowner::regrole,
            CASE WHEN c.relacl IS NULL THEN 'default' ELSE array(SELECT a::text FROM unnest(c.relacl) a ORDER BY 1)::text END,
            obj_description(c.oid, 'pg_class'), CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END)
        FROM pg_class c WHERE c.relnamespace = 'pageserver'::regnamespace";
    const EXTENSION: &str = "
        SELECT format('extension %s in schema %s, relocatable %s, config tables %s, conditions %s',
            e.extname, e.extnamespace::regnamespace, e.extrelocatable, e.extconfig::regclass[], e.extcondition)
        FROM pg_extension e WHERE e.extname = 'pageserver_ext'";
    const MEMBERS: &str = "
        SELECT format('member %s', pg_describe_object(d.classid, d.objid, d.objsubid))
        FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
        WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'pageserver_ext'";
    let mut lines = BTreeSet::new();
    for query in [FUNCTIONS, RELATIONS, SCHEMA, EXTENSION, MEMBERS] {
        for row in host.sql_db(db, query)? {
            lines.insert(row.into_iter().next().flatten().context("NULL catalog line")?);
        }
    }
    Ok(lines)
}

/// Every role with its attributes, comment and memberships, one line each.
fn roles(host: &PgCluster) -> Result<BTreeSet<String>> {
    let rows = host.sql(
        "SELECT format('role %s: login %s, superuser %s, createrole %s, createdb %s, inherit %s, replication %s, \
                        bypassrls %s, connection limit %s; member of %s; comment %L',
            r.rolname, r.rolcanlogin, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolinherit, r.rolreplication,
            r.rolbypassrls, r.rolconnlimit,
            array(SELECT m.roleid::regrole::text FROM pg_auth_members m WHERE m.member = r.oid ORDER BY 1),
            shobj_description(r.oid, 'pg_authid'))
         FROM pg_roles r",
    )?;
    rows.into_iter().map(|row| row.into_iter().next().flatten().context("NULL role line")).collect()
}

/// Fails naming every line only one side has.
fn ensure_same(what: &str, upgraded: &BTreeSet<String>, fresh: &BTreeSet<String>) -> Result<()> {
    let missing: Vec<_> = fresh.difference(upgraded).collect();
    let extra: Vec<_> = upgraded.difference(fresh).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "{what} after ALTER EXTENSION ... UPDATE differs from a fresh CREATE EXTENSION:\n\
         only in the fresh install:\n  {}\nonly after the update:\n  {}",
        missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
    );
    Ok(())
}

fn extversion(host: &PgCluster, db: &str) -> Result<String> {
    let rows = host.sql_db(db, "SELECT extversion FROM pg_extension WHERE extname = 'pageserver_ext'")?;
    rows.into_iter().next().and_then(|row| row.into_iter().next().flatten()).context("pageserver_ext is not created")
}

fn timeline_ids(host: &PgCluster, tenant: &str) -> Result<BTreeSet<String>> {
    let rows = host.sql(&format!("SELECT timeline_id FROM pageserver.timelines() WHERE tenant_id = '{tenant}'"))?;
    Ok(rows.into_iter().filter_map(|row| row.into_iter().next().flatten()).collect())
}

#[test]
fn update_from_0_1_0_keeps_tenants_and_equals_a_fresh_install() -> Result<()> {
    install_old_script()?;
    let primary = e2e::start_primary(false, &[])?;
    let host = PgCluster::start(ClusterConfig::host(&[]))?;
    host.sql(&format!("CREATE EXTENSION pageserver_ext VERSION '{OLD_VERSION}'"))?;
    ensure!(extversion(&host, "postgres")? == OLD_VERSION);

    // A tenant, a timeline and a branch made through the 0.1.0 functions
    // (branch_timeline's 0.1.0 declaration included) on this library.
    primary.sql("CREATE TABLE kept (id int PRIMARY KEY, phase text)")?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    primary.sql("INSERT INTO kept SELECT g, 'before the update' FROM generate_series(1, 100) g")?;
    let before = e2e::lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    e2e::wait_ingested(&host, &timeline, before)?;
    let branch =
        host.sql_one(&format!("SELECT timeline_id FROM pageserver.branch_timeline('{tenant}', '{timeline}')"))?.context("branch id")?;
    // A grant made by hand on a function the update replaces.
    host.sql("CREATE ROLE brancher; GRANT EXECUTE ON FUNCTION pageserver.branch_timeline TO brancher WITH GRANT OPTION")?;

    host.sql("ALTER EXTENSION pageserver_ext UPDATE")?;
    ensure!(extversion(&host, "postgres")? == NEW_VERSION, "extversion {} after the update", extversion(&host, "postgres")?);
    let kept = host.sql_one(
        "SELECT has_function_privilege('brancher', 'pageserver.branch_timeline(text, text, text, text, timestamptz)', \
                                       'EXECUTE WITH GRANT OPTION')",
    )?;
    ensure!(kept.as_deref() == Some("t"), "brancher lost its grant on branch_timeline: {kept:?}");
    host.sql("REVOKE ALL ON FUNCTION pageserver.branch_timeline FROM brancher CASCADE; DROP ROLE brancher")?;
    let roles_after_update = roles(&host)?;

    // Everything is still there and the timeline streams on.
    let tenants = host.sql("SELECT tenant_id FROM pageserver.tenants()")?;
    ensure!(tenants.iter().any(|row| row[0].as_deref() == Some(tenant.as_str())), "tenant {tenant} not listed: {tenants:?}");
    let listed = timeline_ids(&host, &tenant)?;
    ensure!(listed.contains(&timeline) && listed.contains(&branch), "timelines after the update: {listed:?}");
    let t = primary.sql_one("SELECT clock_timestamp()")?.context("time")?;
    std::thread::sleep(Duration::from_millis(300));
    primary.sql("INSERT INTO kept SELECT g, 'after the update' FROM generate_series(101, 200) g")?;
    let after = e2e::lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    e2e::wait_ingested(&host, &timeline, after)?;

    // The functions 0.2.0 adds or changes work.
    let dated = host.sql(&format!("SELECT lsn, position FROM pageserver.lsn_for_time('{tenant}', '{timeline}', '{t}')"))?;
    ensure!(dated[0][1].as_deref() == Some("in_history"), "lsn_for_time: {dated:?}");
    let at_time = host.sql(&format!("SELECT * FROM pageserver.branch_timeline('{tenant}', '{timeline}', at_time => '{t}')"))?;
    ensure!(at_time[0][1] == dated[0][0], "branch at_time {at_time:?}, lsn_for_time {dated:?}");
    let at_time_branch = at_time[0][0].clone().context("branch id")?;
    host.sql(&format!("SELECT * FROM pageserver.drop_timeline('{tenant}', '{at_time_branch}')"))?;
    let listed = timeline_ids(&host, &tenant)?;
    ensure!(!listed.contains(&at_time_branch) && listed.contains(&branch), "timelines after drop_timeline: {listed:?}");

    // The catalog equals a fresh install's, in another database of this
    // host. Roles are shared: a role the update forgot would be created by
    // the fresh install.
    host.sql("CREATE DATABASE fresh")?;
    host.sql_db("fresh", "CREATE EXTENSION pageserver_ext")?;
    ensure!(extversion(&host, "fresh")? == NEW_VERSION);
    let upgraded = extension_catalog(&host, "postgres")?;
    let fresh = extension_catalog(&host, "fresh")?;
    ensure!(fresh.iter().filter(|line| line.starts_with("function ")).count() >= 20, "{fresh:#?}");
    ensure_same("the catalog", &upgraded, &fresh)?;
    ensure_same("the roles", &roles_after_update, &roles(&host)?)?;
    // No tables or sequences (functions and views only), so nothing for
    // pg_extension_config_dump: pg_dump of the host recreates the
    // extension from its scripts alone.
    ensure!(
        !upgraded.iter().any(|line| line.starts_with("member table ") || line.starts_with("member sequence ")),
        "the extension owns data that pg_dump would lose: {upgraded:#?}"
    );
    Ok(())
}

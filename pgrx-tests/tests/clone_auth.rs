//! Live clones of a host whose page service requires JWT
//! (`pageserver.auth = jwt`): `pageserver-clone` passes the token in
//! `PAGESERVER_CLONE_TOKEN` to the page service. Its `--admin` connection is
//! an ordinary SQL connection to the host, which `pageserver.auth` does not
//! concern.
//!
//! * Without the variable, `mount` fails saying the page service's
//!   authentication failed and that the token is missing; with a token for
//!   another tenant it fails with 42501. Either way it leaves no mount, no
//!   serving process, no branch on the page server and no `clone.json`
//!   behind: the same directory then takes a clean first mount.
//! * A first mount whose serving process fails after that check (made to,
//!   with a stale `store.ready`) is undone the same way, its log kept.
//! * With a token for the tenant, the clone mounts, a stock PostgreSQL 15
//!   starts on it and shows the table as of the clone's LSN (not the rows
//!   inserted after it); `destroy` drops the branch and deletes the clone.
//!   The token is written neither into `clone.json` nor into the host's log.
//!
//! Needs `/dev/fuse` and `fusermount3`, like `clone_fs.rs`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use common::clone::{destroy, is_mount_point, tool, At, CloneDir};
use common::e2e::{create_timeline, ensure_log_clean, lsn_of, start_host, start_primary, wait_ingested};
use pageserver_harness::jwt::{tenant_claims, JwtKey};
use pageserver_harness::PgCluster;

mod common;

/// The timelines of `tenant` on the host (the clones' branches among them).
fn timelines(host: &PgCluster, tenant: &str) -> Result<String> {
    host.sql_one(&format!("SELECT count(*) FROM pageserver.timelines() WHERE tenant_id = '{tenant}'"))?.context("count")
}

/// A first mount that must fail: its output, after checking it left nothing behind.
fn failed_mount(clone: &CloneDir, host: &PgCluster, tenant: &str, timeline: &str, at: &At, what: &str) -> Result<String> {
    let mountpoint = clone.path().join("data");
    let args = clone.mount_args(host, tenant, timeline, at, &mountpoint);
    let out = clone.output(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(!out.status.success(), "{what}: the mount succeeded:\n{text}");
    ensure!(out.status.code() == Some(1), "{what}: exit status {}:\n{text}", out.status);
    ensure!(!is_mount_point(&mountpoint), "{what}: a mount is left at {}", mountpoint.display());
    ensure!(!clone.path().join("clone.json").exists(), "{what}: clone.json is left behind:\n{text}");
    let pid = std::fs::read_to_string(clone.path().join("clone.pid")).unwrap_or_default();
    ensure!(pid.trim().parse::<i32>().map_or(true, |p| !Path::new(&format!("/proc/{p}")).exists()), "{what}: serving process {pid} left");
    ensure!(timelines(host, tenant)? == "1", "{what}: a branch is left on the page server:\n{text}");
    eprintln!("{what}: {}", text.trim());
    Ok(text)
}

#[test]
fn a_clone_of_a_jwt_page_service_needs_its_tenants_token() -> Result<()> {
    let tool = tool()?;
    let keys = tempfile::tempdir()?;
    // The server runs as postgres; the tests may run as root.
    std::fs::set_permissions(keys.path(), std::fs::Permissions::from_mode(0o755))?;
    let key = JwtKey::generate();
    let pem = keys.path().join("issuer.pem");
    std::fs::write(&pem, key.public_pem())?;
    std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o644))?;
    let key_dir = keys.path().to_str().context("key dir path")?;

    let primary = start_primary(false, &[])?;
    let host = start_host(false, &[("pageserver.auth", "jwt"), ("pageserver.auth_public_keys", key_dir)])?;
    let (tenant, timeline) = create_timeline(&host, &primary)?;
    primary.sql("CREATE TABLE t AS SELECT i, 'clone-auth-' || i AS v FROM generate_series(1, 1000) i")?;
    let lsn = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    let expected = primary.sql_one("SELECT count(*) || ' ' || sum(i) || ' ' || max(v) FROM t")?.context("expected")?;
    // Rows after the clone's LSN, which the clone must not show.
    primary.sql("INSERT INTO t SELECT i, 'after' FROM generate_series(1001, 1100) i")?;
    let end = lsn_of(&primary, "SELECT pg_current_wal_lsn()")?;
    wait_ingested(&host, &timeline, end)?;
    let at = At::Lsn(lsn);

    // No token: refused, before any branch is made.
    let none = CloneDir::new(&tool)?;
    let text = failed_mount(&none, &host, &tenant, &timeline, &at, "no token")?;
    ensure!(text.contains("authentication to the page service") && text.contains("failed"), "no token: {text}");
    ensure!(text.contains("PAGESERVER_CLONE_TOKEN is not set"), "no token: {text}");

    // A token for another tenant: 42501.
    let other_tenant = "0123456789abcdef0123456789abcdef";
    ensure!(other_tenant != tenant);
    let wrong = CloneDir::new(&tool)?.with_token(&key.sign(&tenant_claims(other_tenant, 600)));
    let text = failed_mount(&wrong, &host, &tenant, &timeline, &at, "another tenant's token")?;
    ensure!(
        text.contains("42501") && text.contains(&format!("grants access to tenant {other_tenant} only")),
        "another tenant's token: {text}"
    );

    // A first mount that fails after the check, in the serving process
    // (here: a stale store.ready without a store), drops its branch again.
    let token = key.sign(&tenant_claims(&tenant, 600));
    let stale = CloneDir::new(&tool)?.with_token(&token);
    std::fs::write(stale.path().join("store.ready"), "")?;
    let text = failed_mount(&stale, &host, &tenant, &timeline, &at, "a serving process that fails")?;
    ensure!(text.contains("the clone was not created (its branch") && text.contains("is dropped again)"), "{text}");
    ensure!(text.contains("the serving process ended"), "{text}");
    ensure!(!stale.path().join("store.ready").exists() && stale.path().join("clone.log").exists(), "the undone clone's files");

    // The tenant's token, in the directory of the failed mount.
    let (clone, pg) = wrong.with_token(&token).start(&host, &tenant, &timeline, at)?;
    let got = pg.sql_one("SELECT count(*) || ' ' || sum(i) || ' ' || max(v) FROM t")?.context("clone's rows")?;
    ensure!(got == expected, "the clone at {lsn} shows {got}, the primary had {expected}");
    ensure!(timelines(&host, &tenant)? == "2", "the clone's branch is missing");
    let spec = std::fs::read_to_string(clone.path().join("clone.json"))?;
    ensure!(!spec.contains(&token), "the token is in clone.json");
    let root = clone.path().to_path_buf();
    let mountpoint = pg.data_dir().to_path_buf();
    destroy(clone, pg)?;
    ensure!(!root.exists() && !is_mount_point(&mountpoint), "destroy left {} or its mount", root.display());
    ensure!(timelines(&host, &tenant)? == "1", "destroy left the clone's branch");
    ensure!(!host.log().contains(&token), "the token is in the host's log");
    ensure_log_clean(&host)
}

//! Per-tenant settings: `pageserver.tenant_config` overrides the host's
//! settings for one tenant, at once (a 1 MB checkpoint distance makes
//! ingest write an L0 layer per MB) and across a restart; the view
//! `pageserver.tenant_settings` shows them; `null` goes back to the host's
//! value; bad settings are refused with `22023` and change nothing.

use anyhow::{ensure, Context, Result};
use pageserver_harness::PgCluster;

mod common;
use common::e2e;

fn sqlstate(host: &PgCluster, sql: &str) -> Result<String> {
    match host.client("postgres")?.simple_query(sql) {
        Ok(_) => anyhow::bail!("{sql} succeeded"),
        Err(e) => Ok(e.code().map(|c| c.code().to_string()).unwrap_or_default()),
    }
}

#[test]
fn tenant_settings_override_the_host_at_once_and_after_a_restart() -> Result<()> {
    let primary = e2e::start_primary(false, &[])?;
    let mut host = e2e::start_host(false, &[("pageserver.checkpoint_distance", "256MB")])?;
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", "1", "-q", "postgres"])?;
    let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
    let settings = |host: &PgCluster| host.sql(&format!("SELECT setting, value, unit, source FROM pageserver.tenant_config('{tenant}')"));
    let shown = settings(&host)?;
    ensure!(shown.len() == 7 && shown.iter().all(|r| r[3].as_deref() == Some("host")), "{shown:?}");
    ensure!(shown.contains(&vec![Some("checkpoint_distance".into()), Some("256".into()), Some("MB".into()), Some("host".into())]));

    let changed = host.sql(&format!(
        "SELECT setting, value, source FROM pageserver.tenant_config('{tenant}', '{{\"checkpoint_distance\": 1, \"gc_horizon\": 0}}') \
         WHERE source = 'tenant' ORDER BY 1"
    ))?;
    ensure!(
        changed
            == vec![
                vec![Some("checkpoint_distance".into()), Some("1".into()), Some("tenant".into())],
                vec![Some("gc_horizon".into()), Some("0".into()), Some("tenant".into())]
            ],
        "{changed:?}"
    );
    let viewed = host.sql_one(&format!(
        "SELECT value FROM pageserver.tenant_settings WHERE tenant_id = '{tenant}' AND setting = 'checkpoint_distance' AND source = 'tenant'"
    ))?;
    ensure!(viewed.as_deref() == Some("1"), "view: {viewed:?}");

    // Ingest freezes every MB now.
    let l0 = |host: &PgCluster| -> Result<u32> {
        Ok(host
            .sql_one(&format!("SELECT count(*) FROM pageserver.layers('{tenant}', '{timeline}') WHERE kind = 'delta L0'"))?
            .context("count")?
            .parse()?)
    };
    let before = l0(&host)?;
    primary.run_as_postgres_checked("pgbench", &["-t", "3000", "postgres"])?;
    e2e::wait_ingested(&host, &timeline, e2e::lsn_of(&primary, "SELECT pg_current_wal_lsn()")?)?;
    let wal_mb = primary.sql_one("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")?.context("lsn")?;
    ensure!(l0(&host)? >= before + 3, "{} L0 layers after the writes (was {before}; WAL at {wal_mb})", l0(&host)?);

    // Bad input changes nothing.
    for bad in [
        r#"{"checkpoint_distanse": 1}"#,
        r#"{"checkpoint_distance": 0}"#,
        r#"{"compaction_threshold": 1}"#,
        r#"{"gc_horizon": "64MB"}"#,
        r#"[1]"#,
    ] {
        let code = sqlstate(&host, &format!("SELECT * FROM pageserver.tenant_config('{tenant}', '{bad}')"))?;
        ensure!(code == "22023", "{bad}: {code}");
    }
    ensure!(sqlstate(&host, "SELECT * FROM pageserver.tenant_config('ffffffffffffffffffffffffffffffff')")? == "42704");
    let kept = settings(&host)?;

    // Across a restart, and back to the host's value with null.
    host.stop()?;
    host.start_again()?;
    ensure!(settings(&host)? == kept, "after a restart: {:?}", settings(&host)?);
    let reset = host.sql_one(&format!(
        "SELECT value || ' ' || source FROM pageserver.tenant_config('{tenant}', '{{\"checkpoint_distance\": null}}') \
         WHERE setting = 'checkpoint_distance'"
    ))?;
    ensure!(reset.as_deref() == Some("256 host"), "{reset:?}");
    Ok(())
}

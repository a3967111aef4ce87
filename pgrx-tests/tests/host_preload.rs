//! Without `shared_preload_libraries`, the extension refuses to load and
//! says how to fix it.

use anyhow::Result;
use pageserver_harness::{cluster::check_pageserver_installed, ClusterConfig, PgCluster};

#[test]
fn create_extension_without_preload_says_to_add_it_to_shared_preload_libraries() -> Result<()> {
    check_pageserver_installed()?;
    let plain = PgCluster::start(ClusterConfig::default())?;
    for statement in ["CREATE EXTENSION pageserver_ext", "LOAD 'pageserver_ext'"] {
        let err = plain.sql(statement).expect_err("must fail without preload");
        let text = format!("{err:#}");
        assert!(text.contains("add pageserver_ext to shared_preload_libraries"), "{statement}: unclear error: {text}");
    }
    assert!(plain.sql("SELECT 1 FROM pg_extension WHERE extname = 'pageserver_ext'")?.is_empty());
    Ok(())
}

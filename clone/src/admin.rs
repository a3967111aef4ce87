//! The clone's SQL side, on the page server's host: the branch that pins
//! the clone's LSN (so garbage collection keeps its pages) and the page
//! service's address. Run as a role with `pageserver_admin`.

use anyhow::{Context, Result};

/// Which point of the timeline the clone shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Lsn(String),
    /// A timestamp PostgreSQL parses (`timestamptz`): the state after the
    /// last commit at or before it.
    Time(String),
}

fn connect(conninfo: &str) -> Result<postgres::Client> {
    postgres::Client::connect(conninfo, postgres::NoTls).with_context(|| format!("connecting to the page server's host ({conninfo})"))
}

/// Creates the clone's branch; returns its timeline id and LSN.
pub fn create_branch(conninfo: &str, tenant: &str, parent: &str, target: &Target) -> Result<(String, String)> {
    let mut client = connect(conninfo)?;
    let row = match target {
        Target::Lsn(lsn) => {
            client.query_one("SELECT timeline_id, branch_lsn FROM pageserver.branch_timeline($1, $2, lsn => $3)", &[&tenant, &parent, &lsn])
        }
        Target::Time(at) => client.query_one(
            "SELECT timeline_id, branch_lsn FROM pageserver.branch_timeline($1, $2, at_time => $3::text::timestamptz)",
            &[&tenant, &parent, &at],
        ),
    }
    .context("creating the clone's branch (pageserver.branch_timeline)")?;
    Ok((row.get(0), row.get(1)))
}

/// Creates the clone's branch at the parent's last ingested LSN.
pub fn create_branch_at_latest(conninfo: &str, tenant: &str, parent: &str) -> Result<(String, String)> {
    let mut client = connect(conninfo)?;
    let row = client
        .query_one("SELECT timeline_id, branch_lsn FROM pageserver.branch_timeline($1, $2)", &[&tenant, &parent])
        .context("creating the clone's branch (pageserver.branch_timeline)")?;
    Ok((row.get(0), row.get(1)))
}

/// Drops the clone's branch: the page server may collect its pages again.
pub fn drop_branch(conninfo: &str, tenant: &str, branch: &str) -> Result<()> {
    let mut client = connect(conninfo)?;
    client
        .query("SELECT * FROM pageserver.drop_timeline($1, $2)", &[&tenant, &branch])
        .with_context(|| format!("dropping the clone's branch {branch} (pageserver.drop_timeline)"))?;
    Ok(())
}

/// The page service's `host:port` from `pageserver.listen_addr`; an
/// unspecified listen host (`0.0.0.0`, `::`) becomes `fallback_host`.
pub fn page_service_addr(conninfo: &str, fallback_host: &str) -> Result<String> {
    let mut client = connect(conninfo)?;
    let addr: String = client.query_one("SELECT current_setting('pageserver.listen_addr')", &[])?.get(0);
    Ok(resolve_listen_addr(&addr, fallback_host))
}

fn resolve_listen_addr(addr: &str, fallback_host: &str) -> String {
    match addr.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "::" | "*" | "", port)) => format!("{fallback_host}:{port}"),
        _ => addr.to_string(),
    }
}

/// The `host` of a libpq key/value connection string, if it is a name or
/// address (not a socket directory).
pub fn conninfo_host(conninfo: &str) -> Option<String> {
    conninfo.split_whitespace().find_map(|kv| kv.strip_prefix("host=")).filter(|h| !h.starts_with('/')).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_resolve() {
        assert_eq!(resolve_listen_addr("127.0.0.1:6400", "h"), "127.0.0.1:6400");
        assert_eq!(resolve_listen_addr("0.0.0.0:6400", "db1"), "db1:6400");
        assert_eq!(conninfo_host("host=10.0.0.5 port=5432 user=x"), Some("10.0.0.5".into()));
        assert_eq!(conninfo_host("host=/tmp port=5432"), None);
    }
}

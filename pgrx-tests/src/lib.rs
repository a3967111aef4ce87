//! `pageserver_harness`: starts real, throwaway PostgreSQL 15 servers for tests.
//!
//! This crate owns everything a test needs to run stock PostgreSQL next to
//! it: finding the binaries ([`pg_bin`]), picking loopback ports
//! ([`free_port`]), running commands with useful errors ([`run_checked`]),
//! and the [`PgCluster`] drop guard that initdb's, starts, restarts, crashes
//! and finally removes a cluster. It is pure Rust (no pgrx, no `pg_sys`);
//! crates use it as a dev-dependency:
//!
//! ```no_run
//! use pageserver_harness::PgCluster;
//! let primary = PgCluster::start_primary(&[("work_mem", "8MB")]).unwrap();
//! assert_eq!(primary.sql("SELECT 1").unwrap(), vec![vec![Some("1".to_string())]]);
//! // dropped here: stopped (immediate), leftover processes killed, directory removed
//! ```
//!
//! Environment:
//! - PostgreSQL commands run as the `postgres` OS user when the test runs as
//!   root (`runuser -u postgres --`, or `sudo -n -u postgres` if `runuser`
//!   is missing), directly otherwise. See [`as_postgres`].
//! - `PS_KEEP_CLUSTERS=1` keeps cluster directories after the test (the
//!   servers are still stopped) so logs and data can be inspected.
//! - `PS_PG_BIN` overrides the binary directory (default
//!   `/usr/lib/postgresql/15/bin`).
//! - [`s3::S3Server`] runs a real S3-compatible server (moto) on loopback;
//!   `PS_MOTO_SERVER` overrides its program. [`fault_proxy::FaultProxy`]
//!   sits in front of it and fails a share of the requests.
//! - [`jwt::JwtKey`] makes Ed25519 key pairs and the JWTs they sign, for
//!   the page service's authentication tests.
//! - [`tls`] makes test certificates (a CA, server and client
//!   certificates) and writes them where a cluster's server can read them.

pub mod as_postgres;
pub mod cluster;
pub mod fault_proxy;
pub mod jwt;
pub mod process;
pub mod s3;
pub mod tls;

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;

use anyhow::{bail, Context};

pub use cluster::{ClusterConfig, PgCluster};

/// Where the PostgreSQL 15 binaries live unless `PS_PG_BIN` says otherwise.
pub const DEFAULT_PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The directory holding `initdb`, `pg_ctl`, `postgres`, `psql`, `pgbench`...
pub fn pg_bin_dir() -> PathBuf {
    match std::env::var_os("PS_PG_BIN") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_PG_BIN_DIR),
    }
}

/// The path of the PostgreSQL 15 program `name`, e.g. `pg_bin("pg_waldump")`
/// is `/usr/lib/postgresql/15/bin/pg_waldump`. Does not check existence.
pub fn pg_bin(name: &str) -> PathBuf {
    pg_bin_dir().join(name)
}

/// Ports handed out by [`free_port`] in this process, never handed out twice
/// (the kernel would happily return a just-closed port again).
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback TCP port that was free a moment ago and that this process has
/// not handed out before. Another process may still grab it before it is
/// used; [`PgCluster`] start-up retries with a new port when that happens.
pub fn free_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let seen = guard.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let port = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            Err(_) => continue,
        };
        if seen.insert(port) {
            return port;
        }
    }
    panic!("free_port: could not find an unused loopback port");
}

/// Runs `cmd` to completion and returns its output; fails unless it exited
/// with status 0. The error names `what` was being done, the command line,
/// the exit status and the captured stdout and stderr.
pub fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<Output> {
    let output = cmd.output().with_context(|| format!("{what}: could not run {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{what}: {cmd:?} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim_end(),
            String::from_utf8_lossy(&output.stderr).trim_end(),
        );
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_bin_joins_dir() {
        if std::env::var_os("PS_PG_BIN").is_none() {
            assert_eq!(pg_bin("psql"), PathBuf::from("/usr/lib/postgresql/15/bin/psql"));
        }
    }

    #[test]
    fn free_port_is_unique_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let set: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(set.len(), ports.len());
        let p = free_port();
        assert_ne!(p, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, p)).expect("port should be bindable");
    }

    #[test]
    fn run_checked_reports_output() {
        let err =
            run_checked(Command::new("sh").args(["-c", "echo to-stdout; echo to-stderr >&2; exit 3"]), "testing run_checked").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("testing run_checked"), "{msg}");
        assert!(msg.contains("to-stdout"), "{msg}");
        assert!(msg.contains("to-stderr"), "{msg}");
        assert!(msg.contains('3'), "{msg}");
        let ok = run_checked(Command::new("sh").args(["-c", "echo fine"]), "ok").unwrap();
        assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "fine");
    }
}

//! A real S3-compatible server on loopback for tests: moto's `moto_server`
//! (PyPI `moto[server]`), installed by `scripts/setup.sh` into its own
//! virtualenv. moto implements the S3 REST API (multipart uploads,
//! conditional puts, listing, deletes) in one Python process, keeps objects
//! in memory (nothing to clean up), starts in about a second, and is on
//! PyPI, which a fresh machine reaches; MinIO and the cloud emulators are
//! not in any registry the machines reach.
//!
//! ```no_run
//! let s3 = pageserver_harness::s3::S3Server::start().unwrap();
//! s3.create_bucket("tests").unwrap();
//! let url = s3.url("tests", "some/prefix"); // s3://tests/some/prefix
//! let options = s3.options();               // endpoint=http://127.0.0.1:…,region=…,…
//! ```
//!
//! `PS_MOTO_SERVER` overrides the program's path.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::free_port;

/// Where `scripts/setup.sh` installs moto's server.
pub const DEFAULT_MOTO_SERVER: &str = "/opt/pageserver_ext/moto/bin/moto_server";

/// The program to run: `PS_MOTO_SERVER` or [`DEFAULT_MOTO_SERVER`].
pub fn moto_server_path() -> PathBuf {
    match std::env::var_os("PS_MOTO_SERVER") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_MOTO_SERVER),
    }
}

/// A running moto server; killed on drop.
pub struct S3Server {
    child: Child,
    port: u16,
    _log_dir: tempfile::TempDir,
    log_path: PathBuf,
}

impl S3Server {
    /// Starts a server on a free loopback port and waits until it answers.
    pub fn start() -> anyhow::Result<S3Server> {
        let program = moto_server_path();
        if !program.exists() {
            bail!("{} is missing: run `bash scripts/setup.sh` (it installs moto[server] from PyPI)", program.display());
        }
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port();
            let log_dir = tempfile::Builder::new().prefix("pageserver-s3-").tempdir()?;
            let log_path = log_dir.path().join("moto_server.log");
            let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
            let child = Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", program.display()))?;
            let mut server = S3Server { child, port, _log_dir: log_dir, log_path };
            match server.wait_ready(Duration::from_secs(60)) {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("three attempts were made"))
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("moto_server exited with {status} before answering:\n{}", self.log());
            }
            if let Ok((status, _)) = self.http("GET", "/") {
                if status == 200 {
                    return Ok(());
                }
            }
            if started.elapsed() > timeout {
                bail!("moto_server did not answer on port {} within {timeout:?}:\n{}", self.port, self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://<bucket>/<prefix>`
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        format!("s3://{bucket}/{prefix}")
    }

    /// `pageserver.remote_storage_options` for this server (moto accepts
    /// any credentials).
    pub fn options(&self) -> String {
        format!("endpoint={},region=us-east-1,access_key_id=test,secret_access_key=test", self.endpoint())
    }

    /// Creates a bucket (moto checks no signature on this request).
    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let (status, body) = self.http("PUT", &format!("/{bucket}"))?;
        if status != 200 {
            bail!("creating bucket {bucket}: HTTP {status}: {body}");
        }
        Ok(())
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// One HTTP/1.1 request without a body; returns the status and body.
    fn http(&self, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, self.port).into(), Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port)?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP response: {response:?}"))?;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((status, body))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

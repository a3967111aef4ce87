//! The page service's libpq listener, driven by `psql` and by raw sockets
//! that break the protocol: clear errors, no hangs, and it keeps serving.

use anyhow::{Context, Result};
use pageserver_harness::{pg_bin, PgCluster};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::Duration;

fn psql(addr: SocketAddr, extra_conninfo: &str, command: &str) -> Result<Output> {
    let conninfo = format!("host={} port={} user=compute dbname=tenant connect_timeout=10 {extra_conninfo}", addr.ip(), addr.port());
    Command::new(pg_bin("psql")).args(["-X", "-w", "-d", &conninfo, "-c", command]).output().context("running psql")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Sends `bytes`, then reads until the server closes (bounded by a timeout).
fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(40)))?;
    s.write_all(bytes)?;
    let mut reply = Vec::new();
    match s.read_to_end(&mut reply) {
        Ok(_) => Ok(reply),
        // A reset is a closed socket too: the server stopped reading.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(reply),
        Err(e) => Err(e).context("server neither answered nor closed"),
    }
}

fn host() -> Result<(PgCluster, SocketAddr)> {
    let host = PgCluster::start_host(&[])?;
    host.sql("CREATE EXTENSION pageserver_ext")?;
    let addr = host.listener_addr().context("host has pageserver.listen_addr")?;
    host.wait_for("the page service to listen", Duration::from_secs(60), || TcpStream::connect(addr).ok())?;
    Ok((host, addr))
}

fn assert_serving(addr: SocketAddr) -> Result<()> {
    let out = psql(addr, "", "hello")?;
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("unknown page service command \"hello\""), "{err}");
    Ok(())
}

#[test]
fn psql_gets_a_clear_error_for_an_unknown_command() -> Result<()> {
    let (_host, addr) = host()?;
    let out = psql(addr, "", "SELECT 1")?;
    let err = stderr(&out);
    assert!(!out.status.success(), "psql succeeded: {out:?}");
    assert!(err.contains("unknown page service command \"SELECT\""), "{err}");
    assert!(err.contains("not SQL"), "hint missing: {err}");
    // psql's default sslmode=prefer asked for SSL first and fell back; insisting fails clearly.
    let out = psql(addr, "sslmode=require", "SELECT 1")?;
    assert!(stderr(&out).contains("server does not support SSL"), "{}", stderr(&out));
    Ok(())
}

#[test]
fn garbage_and_oversized_startup_packets_are_refused_and_the_listener_keeps_serving() -> Result<()> {
    let (host, addr) = host()?;
    // A client that connects and says nothing must not block others.
    let _idle = TcpStream::connect(addr)?;
    let one_gib = (1u32 << 30).to_be_bytes();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("1 GiB length", one_gib.to_vec()),
        ("HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("length below 8", vec![0, 0, 0, 4]),
        ("protocol 2.0", [&[0u8, 0, 0, 9][..], &[0, 2, 0, 0], &[0]].concat()),
        ("unterminated parameters", [&[0u8, 0, 0, 12][..], &[0, 3, 0, 0], b"user"].concat()),
        ("random bytes", (0..255u8).map(|i| i.wrapping_mul(151).wrapping_add(7)).collect()),
    ];
    for (what, bytes) in cases {
        let reply = send_raw(addr, &bytes).with_context(|| what.to_string())?;
        // Either an ErrorResponse before the close, or just the close.
        assert!(reply.is_empty() || reply[0] == b'E', "{what}: unexpected reply {reply:?}");
        assert_serving(addr).with_context(|| format!("after {what}"))?;
    }
    let running = host.sql_one("SELECT count(*) FROM pageserver.status() WHERE kind = 'main' AND state = 'running' AND restarts = 0")?;
    assert_eq!(running.as_deref(), Some("1"), "the main worker restarted:\n{}", host.log_tail(30));
    Ok(())
}

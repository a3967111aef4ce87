//! A fault-injecting HTTP proxy for object-storage tests: it sits between
//! the page server and an S3 server (moto) on loopback and answers a chosen
//! share of requests with a fault instead of forwarding them: a 503 (S3's
//! "slow down"), a 500, a connection closed without an answer, or a
//! response delayed by [`SLOW_DELAY`]. The first request of each S3
//! operation after the share was set is always faulted, so that even an
//! operation sent once meets a fault; the others are drawn from a seeded
//! generator.
//!
//! Each request is read whole (head and `Content-Length` body), forwarded
//! on a connection of its own with `Connection: close`, and the answer is
//! relayed as it comes; the client's connection is then closed. Counts per
//! S3 operation ([`operation`]) and outcome are kept for the test to check.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};

/// How long a "slow" fault holds the request before forwarding it.
pub const SLOW_DELAY: Duration = Duration::from_millis(1500);

/// What happened to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Forwarded,
    Status503,
    Status500,
    Closed,
    Slow,
}

struct Shared {
    upstream: SocketAddr,
    fault_percent: AtomicU32,
    rng: AtomicU64,
    stop: AtomicBool,
    /// (operation, outcome) → count.
    counts: Mutex<BTreeMap<(String, Outcome), u64>>,
    /// Operations seen since the share was last set.
    seen: Mutex<std::collections::BTreeSet<String>>,
}

impl Shared {
    fn draw(&self) -> u64 {
        // xorshift64*, one step per draw.
        let mut x = self.rng.load(Ordering::Relaxed);
        loop {
            let mut next = x;
            next ^= next >> 12;
            next ^= next << 25;
            next ^= next >> 27;
            match self.rng.compare_exchange(x, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next.wrapping_mul(0x2545_F491_4F6C_DD1D),
                Err(actual) => x = actual,
            }
        }
    }

    fn choose(&self, operation: &str) -> Outcome {
        let percent = u64::from(self.fault_percent.load(Ordering::Relaxed));
        let draw = self.draw();
        let first = percent > 0 && self.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(operation.to_string());
        if !first && draw % 100 >= percent {
            return Outcome::Forwarded;
        }
        match (draw / 100) % 4 {
            0 => Outcome::Status503,
            1 => Outcome::Status500,
            2 => Outcome::Closed,
            _ => Outcome::Slow,
        }
    }
}

/// A running proxy; stopped on drop.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`, faulting
    /// `fault_percent` of the requests (draws seeded by `seed`).
    pub fn start(upstream: SocketAddr, fault_percent: u32, seed: u64) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the fault proxy")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream,
            fault_percent: AtomicU32::new(fault_percent.min(100)),
            rng: AtomicU64::new(seed | 1),
            stop: AtomicBool::new(false),
            counts: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(Default::default()),
        });
        let accept_shared = shared.clone();
        let thread = std::thread::Builder::new().name("fault-proxy".into()).spawn(move || {
            while !accept_shared.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let shared = accept_shared.clone();
                        std::thread::spawn(move || {
                            let _ = serve(&shared, client);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
        Ok(FaultProxy { port, shared, thread: Some(thread) })
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sets the share of faulted requests; the next request of each
    /// operation is faulted (when `percent` > 0).
    pub fn set_fault_percent(&self, percent: u32) {
        self.shared.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.shared.fault_percent.store(percent.min(100), Ordering::Relaxed);
    }

    /// Requests seen so far, by (operation, outcome).
    pub fn counts(&self) -> BTreeMap<(String, Outcome), u64> {
        self.shared.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads up to the end of the head (`\r\n\r\n`); returns the head and any
/// bytes read past it.
fn read_head(stream: &mut TcpStream) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the head ended");
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            bail!("head longer than 1 MiB");
        }
    }
}

/// The S3 operation of a request line: `LIST` (a GET with `list-type`),
/// `DELETE` (a DELETE, or a POST of `?delete`, the bulk delete
/// object_store uses), `MULTIPART` (POSTs that start or complete one),
/// otherwise the method (`PUT`, `GET`, `HEAD`).
pub fn operation(request_line: &str) -> String {
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("?");
    let target = parts.next().unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let has = |name: &str| query.split('&').any(|kv| kv.split('=').next() == Some(name));
    match method {
        "GET" if has("list-type") => "LIST".into(),
        "POST" if has("delete") => "DELETE".into(),
        "POST" if has("uploads") || has("uploadId") => "MULTIPART".into(),
        other => other.into(),
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn serve(shared: &Shared, mut client: TcpStream) -> anyhow::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let (head, mut body) = read_head(&mut client)?;
    let head_text = String::from_utf8_lossy(&head).into_owned();
    let method = operation(head_text.lines().next().unwrap_or(""));
    let length: usize = header(&head_text, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while body.len() < length {
        let mut chunk = vec![0u8; (length - body.len()).min(1 << 20)];
        let n = client.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed in the body");
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let outcome = shared.choose(&method);
    *shared.counts.lock().unwrap_or_else(|e| e.into_inner()).entry((method, outcome)).or_default() += 1;
    let canned = |status: &str, body: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    };
    match outcome {
        Outcome::Status503 => {
            client.write_all(
                canned("503 Service Unavailable", "<Error><Code>SlowDown</Code><Message>injected</Message></Error>").as_bytes(),
            )?;
            return Ok(());
        }
        Outcome::Status500 => {
            client.write_all(
                canned("500 Internal Server Error", "<Error><Code>InternalError</Code><Message>injected</Message></Error>").as_bytes(),
            )?;
            return Ok(());
        }
        Outcome::Closed => return Ok(()),
        Outcome::Slow => std::thread::sleep(SLOW_DELAY),
        Outcome::Forwarded => {}
    }
    // Forward with `Connection: close`, so that the answer ends at EOF.
    let mut upstream = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5))?;
    let mut forwarded = String::new();
    for (i, line) in head_text.trim_end_matches("\r\n\r\n").split("\r\n").enumerate() {
        if i > 0 && line.split_once(':').is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection")) {
            continue;
        }
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    upstream.write_all(forwarded.as_bytes())?;
    upstream.write_all(&body)?;
    let mut answer = [0u8; 64 * 1024];
    loop {
        let n = upstream.read(&mut answer)?;
        if n == 0 {
            return Ok(());
        }
        client.write_all(&answer[..n])?;
    }
}

#[cfg(test)]
mod tests {
    use super::operation;

    #[test]
    fn requests_are_named_by_their_s3_operation() {
        assert_eq!(operation("GET /b?list-type=2&prefix=x HTTP/1.1"), "LIST");
        assert_eq!(operation("GET /b/key HTTP/1.1"), "GET");
        assert_eq!(operation("POST /b?delete HTTP/1.1"), "DELETE");
        assert_eq!(operation("DELETE /b/key HTTP/1.1"), "DELETE");
        assert_eq!(operation("POST /b/key?uploads HTTP/1.1"), "MULTIPART");
        assert_eq!(operation("PUT /b/key?partNumber=1&uploadId=x HTTP/1.1"), "PUT");
    }
}

//! `pagebench` end to end: the floor run, and clients facing broken servers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use storage::key::RelTag;
use storage::lsn::Lsn;
use storage::pagestream::{ProtocolVersion, Request, RequestHeader, Response};
use tools::pagestream_client::{BlockingClient, ClientError};

const PAGEBENCH: &str = env!("CARGO_BIN_EXE_pagebench");

/// Runs pagebench with `args`, killing it if it runs past `limit`.
fn pagebench(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(PAGEBENCH).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("pagebench starts");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("pagebench {args:?} still running after {limit:?}: {:?}", child.wait_with_output().unwrap());
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn json_of(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pagebench failed: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected on stdout, got {stdout:?}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]))
}

#[test]
fn floor_run_reports_pages_and_ordered_percentiles() {
    let out = pagebench(
        &["--floor", "--duration", "2", "--warmup", "0.2", "--connections", "2", "--depth", "4", "--json"],
        Duration::from_secs(60),
    );
    let j = json_of(&out);
    assert_eq!(j["mode"], "floor");
    assert_eq!(j["connections"], 2);
    assert_eq!(j["depth"], 4);
    let pages = j["pages"].as_u64().unwrap();
    assert!(pages > 0, "{j}");
    let rate = j["pages_per_s"].as_f64().unwrap();
    assert!(rate > 0.0, "{j}");
    let (p50, p99, p999, max) =
        (j["p50_us"].as_f64().unwrap(), j["p99_us"].as_f64().unwrap(), j["p999_us"].as_f64().unwrap(), j["max_us"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "{j}");
    let secs = j["duration_s"].as_f64().unwrap();
    assert!((1.5..=2.5).contains(&secs), "{j}");
    // The text goes to stderr.
    assert!(String::from_utf8_lossy(&out.stderr).contains("pages/s"));
}

#[test]
fn max_requests_bounds_a_v2_run() {
    let out = pagebench(
        &[
            "--floor",
            "--protocol",
            "v2",
            "--pattern",
            "sequential",
            "--rel",
            "1663/5/1:10",
            "--rel",
            "1663/5/2_vm:3",
            "--duration",
            "30",
            "--warmup",
            "0",
            "--depth",
            "8",
            "--max-requests",
            "500",
            "--json",
        ],
        Duration::from_secs(30),
    );
    let j = json_of(&out);
    assert_eq!(j["pages"], 500, "{j}");
    assert_eq!(j["protocol"], "v2");
}

#[test]
fn bad_arguments_are_refused() {
    let out = pagebench(&["--floor", "--pattern", "hot:0"], Duration::from_secs(10));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected random, sequential or hot:N"));
    let out = pagebench(&["--floor", "--rel", "1663/5:10"], Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not three OIDs"));
    let out = pagebench(&["--addr", "127.0.0.1:1"], Duration::from_secs(10));
    assert!(!out.status.success(), "--tenant, --timeline, --rel, --request-lsn are required without --floor");
}

/// What the bad server does after the client's startup.
enum Behaviour {
    /// Answers the pagestream query with this ErrorResponse message.
    RejectQuery(&'static str),
    /// Accepts the stream and answers the first request's payload with the
    /// returned CopyData payload.
    Reply(fn(&[u8]) -> Vec<u8>),
}

fn backend_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend((body.len() as u32 + 4).to_be_bytes());
    m.extend(body);
    m
}

fn error_response(message: &str) -> Vec<u8> {
    let body = format!("SERROR\0C42601\0M{message}\0\0");
    backend_message(b'E', body.as_bytes())
}

fn read_frontend_message(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    let len = u32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).unwrap();
    (head[0], body)
}

/// A one-connection libpq server that misbehaves as told; returns its address.
fn bad_server(behaviour: Behaviour) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut startup = vec![0; u32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut startup).unwrap();
        let mut hello = backend_message(b'R', &0u32.to_be_bytes());
        hello.extend(backend_message(b'Z', b"I"));
        s.write_all(&hello).unwrap();
        let (tag, query) = read_frontend_message(&mut s);
        assert_eq!(tag, b'Q');
        assert!(query.starts_with(b"pagestream_v"), "{}", String::from_utf8_lossy(&query));
        match behaviour {
            Behaviour::RejectQuery(message) => {
                let mut reply = error_response(message);
                reply.extend(backend_message(b'Z', b"I"));
                s.write_all(&reply).unwrap();
            }
            Behaviour::Reply(reply) => {
                s.write_all(&backend_message(b'W', &[0, 0, 0])).unwrap();
                let (tag, request) = read_frontend_message(&mut s);
                assert_eq!(tag, b'd');
                s.write_all(&backend_message(b'd', &reply(&request))).unwrap();
            }
        }
        // Hold the connection until the client goes away.
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    addr
}

fn server_args(addr: &str) -> Vec<String> {
    [
        "--addr",
        addr,
        "--tenant",
        "de0a",
        "--timeline",
        "be0b",
        "--rel",
        "1663/5/16384:10",
        "--request-lsn",
        "0/1000",
        "--duration",
        "5",
        "--warmup",
        "0",
        "--timeout",
        "10",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn malformed_response_makes_pagebench_fail_clearly() {
    // A GetPage response tag with 5 bytes where a page and echo belong.
    let addr = bad_server(Behaviour::Reply(|_| b"\x66short".to_vec()));
    let args = server_args(&addr);
    let out = pagebench(&args.iter().map(String::as_str).collect::<Vec<_>>(), Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pagebench: error: connection 0: malformed pagestream response from the server"), "{stderr}");
    assert!(stderr.contains("GetPage response: expected 8234 bytes, got 6"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn pagestream_error_response_makes_pagebench_fail_clearly() {
    let addr = bad_server(Behaviour::Reply(|request| {
        let request = Request::parse(ProtocolVersion::V3, request).unwrap();
        let mut out = BytesMut::new();
        request.error_response("relation 1663/5/16384 does not exist").encode(ProtocolVersion::V3, &mut out);
        out.to_vec()
    }));
    let args = server_args(&addr);
    let out = pagebench(&args.iter().map(String::as_str).collect::<Vec<_>>(), Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("answered a GetPage request with an error: relation 1663/5/16384 does not exist"), "{stderr}");
}

fn get_page(blkno: u32) -> Request {
    let hdr = RequestHeader { reqid: 7, request_lsn: Lsn(0x1000), not_modified_since: Lsn(0x1000) };
    Request::GetPage { hdr, rel: RelTag::new(1663, 5, 16384, 0), blkno }
}

#[test]
fn client_reports_a_rejected_pagestream_query() {
    let addr = bad_server(Behaviour::RejectQuery("tenant de0a not found"));
    let err = BlockingClient::connect(&addr, ProtocolVersion::V3, "de0a", "be0b").unwrap_err();
    assert!(matches!(err, ClientError::Server(..)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("tenant de0a not found") && text.contains("42601"), "{text}");
}

#[test]
fn client_checks_the_v3_echo() {
    // The server answers block 3 when block 4 was asked for.
    let addr = bad_server(Behaviour::Reply(|request| {
        let Request::GetPage { hdr, rel, .. } = Request::parse(ProtocolVersion::V3, request).unwrap() else { panic!("GetPage expected") };
        let mut out = BytesMut::new();
        let page = bytes::Bytes::from(vec![0u8; 8192]);
        Response::GetPage { hdr, rel, blkno: 3, page }.encode(ProtocolVersion::V3, &mut out);
        out.to_vec()
    }));
    let mut client = BlockingClient::connect(&addr, ProtocolVersion::V3, "de0a", "be0b").unwrap();
    client.send(get_page(4)).unwrap();
    let err = client.recv_timeout(Duration::from_secs(10)).unwrap_err();
    assert!(matches!(err, ClientError::Malformed(_)), "{err:?}");
    assert!(err.to_string().contains("echoes block 3, but the request sent 4"), "{err}");
}

#[test]
fn client_pipelines_and_reads_a_v2_answer() {
    let addr = bad_server(Behaviour::Reply(|request| {
        assert_eq!(request.len(), 34, "a v2 GetPage request is 34 bytes");
        let mut reply = vec![0x66];
        reply.extend(vec![0xab; 8192]);
        reply
    }));
    let mut client = BlockingClient::connect(&addr, ProtocolVersion::V2, "de0a", "be0b").unwrap();
    assert!(matches!(client.recv(), Err(ClientError::NothingInFlight)));
    client.queue(get_page(4));
    client.queue(get_page(5));
    assert_eq!(client.in_flight(), 2);
    match client.recv_timeout(Duration::from_secs(10)).unwrap() {
        Response::GetPage { blkno, page, hdr, .. } => {
            assert_eq!(blkno, 4, "v2 answers take their echo from the request");
            assert_eq!(hdr.request_lsn, Lsn(0x1000));
            assert_eq!(page.len(), 8192);
            assert!(page.iter().all(|&b| b == 0xab));
        }
        other => panic!("{other:?}"),
    }
    // The server answers only the first request: the second times out.
    let err = client.recv_timeout(Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, ClientError::Timeout(..)), "{err:?}");
    client.close().unwrap();
}

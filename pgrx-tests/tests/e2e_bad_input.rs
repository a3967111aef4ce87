//! Bad input to the end-to-end service gets a clear message, and the page
//! server keeps serving: a primary whose settings differ from the host's, a
//! replication slot that already exists, an unreachable primary, a primary
//! that goes away mid-stream (and comes back), a timeline whose connection
//! string now points at another cluster (wrong system identifier), garbage
//! on a pagestream, an unknown tenant or timeline, and an LSN far in the
//! future (times out with a message).

use anyhow::{bail, ensure, Context, Result};
use pageserver_harness::PgCluster;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use storage::key::RelTag;
use storage::lsn::Lsn;
use storage::pagestream::{ProtocolVersion, Request, RequestHeader, Response};
use tools::pagestream_client::BlockingClient;

fn sql_error(host: &PgCluster, sql: &str) -> Result<String> {
    Ok(sql_error_code(host, sql)?.1)
}

/// The SQLSTATE and message of the error `sql` raises.
fn sql_error_code(host: &PgCluster, sql: &str) -> Result<(String, String)> {
    match host.client("postgres")?.simple_query(sql) {
        Ok(_) => bail!("accepted: {sql}"),
        Err(e) => match e.as_db_error() {
            Some(d) => Ok((d.code().code().to_string(), d.message().to_string())),
            None => Ok((String::new(), e.to_string())),
        },
    }
}

/// Management errors carry the SQLSTATE of their kind (service::error).
fn expect_code(host: &PgCluster, what: &str, sql: &str, code: &str) -> Result<()> {
    let (got, message) = sql_error_code(host, sql)?;
    ensure!(got == code, "{what}: SQLSTATE {got}, want {code} ({message})");
    Ok(())
}

fn expect(what: &str, message: &str, needle: &str) -> Result<()> {
    ensure!(message.contains(needle), "{what}: message does not say {needle:?}: {message}");
    eprintln!("{what}: {message}");
    Ok(())
}

fn timeline_row(host: &PgCluster, timeline: &str) -> Result<(Lsn, String, String)> {
    let rows = host.sql(&format!(
        "SELECT last_record_lsn, state, coalesce(last_error, '') FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"
    ))?;
    let row = rows.first().context("timeline not listed")?;
    let lsn = row[0].as_deref().unwrap_or_default().parse().map_err(|_| anyhow::anyhow!("bad LSN"))?;
    Ok((lsn, row[1].clone().unwrap_or_default(), row[2].clone().unwrap_or_default()))
}

/// A raw libpq session that opens a pagestream and can send arbitrary CopyData.
struct RawStream(TcpStream);

impl RawStream {
    fn open(addr: &str, tenant: &str, timeline: &str) -> Result<RawStream> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut startup = Vec::new();
        startup.extend_from_slice(&0u32.to_be_bytes());
        startup.extend_from_slice(&(3u32 << 16).to_be_bytes());
        startup.extend_from_slice(b"user\0compute\0\0");
        let len = startup.len() as u32;
        startup[..4].copy_from_slice(&len.to_be_bytes());
        s.write_all(&startup)?;
        let mut raw = RawStream(s);
        while raw.read_message()?.0 != b'Z' {}
        raw.send(b'Q', format!("pagestream_v2 {tenant} {timeline}\0").as_bytes())?;
        let (tag, body) = raw.read_message()?;
        ensure!(tag == b'W', "expected CopyBothResponse, got '{}' {:?}", tag as char, String::from_utf8_lossy(&body));
        Ok(raw)
    }

    fn send(&mut self, tag: u8, body: &[u8]) -> Result<()> {
        let mut msg = vec![tag];
        msg.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        msg.extend_from_slice(body);
        self.0.write_all(&msg)?;
        Ok(())
    }

    fn read_message(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.0.read_exact(&mut head)?;
        let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        self.0.read_exact(&mut body)?;
        Ok((head[0], body))
    }

    fn response(&mut self) -> Result<Response> {
        let (tag, body) = self.read_message()?;
        ensure!(tag == b'd', "expected CopyData, got '{}'", tag as char);
        Ok(Response::parse(ProtocolVersion::V2, &body)?)
    }
}

#[test]
fn bad_input_gets_clear_messages_and_the_page_server_keeps_serving() -> Result<()> {
    let mut primary = PgCluster::start_primary(&[])?;
    let host = PgCluster::start_host(&[("pageserver.wait_lsn_timeout", "2s")])?;
    host.sql("CREATE EXTENSION pageserver_ext")?;
    let tenant = host.sql_one("SELECT pageserver.create_tenant()")?.unwrap();
    let conninfo = primary.connstr("postgres");

    // Refused before anything is created on the primary or here.
    let other = PgCluster::start_primary(&[("wal_log_hints", "on")])?;
    let msg = sql_error(&host, &format!("SELECT pageserver.create_timeline('{tenant}', '{}')", other.connstr("postgres")))?;
    expect("settings differ from the host's", &msg, "wal_log_hints = on but this host has wal_log_hints = off")?;
    primary.sql("SELECT pg_create_physical_replication_slot('taken')")?;
    let msg = sql_error(&host, &format!("SELECT pageserver.create_timeline('{tenant}', '{conninfo}', slot_name => 'taken')"))?;
    expect("slot exists", &msg, "replication slot \"taken\" already exists on the primary")?;
    let msg = sql_error(&host, &format!("SELECT pageserver.create_timeline('{tenant}', 'host=127.0.0.1 port=1 user=postgres')"))?;
    expect("unreachable primary", &msg, "cannot connect to the primary at 127.0.0.1:1")?;
    let msg = sql_error(&host, "SELECT pageserver.create_timeline('nope', 'host=x')")?;
    expect("bad tenant id", &msg, "invalid tenant id \"nope\"")?;
    let msg = sql_error(&host, &format!("SELECT pageserver.create_timeline('{tenant}', 'host=x port=notaport')"))?;
    expect("bad connection string", &msg, "invalid primary connection string")?;
    ensure!(host.sql("SELECT * FROM pageserver.timelines()")?.is_empty(), "a failed creation left a timeline");
    let other_conn = other.connstr("postgres");
    for (what, sql, code) in [
        ("settings differ", format!("SELECT pageserver.create_timeline('{tenant}', '{other_conn}')"), "55000"),
        ("slot exists", format!("SELECT pageserver.create_timeline('{tenant}', '{conninfo}', slot_name => 'taken')"), "42710"),
        ("unreachable primary", format!("SELECT pageserver.create_timeline('{tenant}', 'host=127.0.0.1 port=1 user=postgres')"), "08006"),
        ("bad tenant id", "SELECT pageserver.create_timeline('nope', 'host=x')".to_string(), "22023"),
        ("bad connection string", format!("SELECT pageserver.create_timeline('{tenant}', 'host=x port=notaport')"), "22023"),
        ("unknown tenant", format!("SELECT pageserver.create_timeline('{}', 'host=x')", "0".repeat(31) + "1"), "42704"),
        ("tenant exists", format!("SELECT pageserver.create_tenant('{tenant}')"), "42710"),
        ("unknown parent", format!("SELECT * FROM pageserver.branch_timeline('{tenant}', '{}')", "0".repeat(32)), "42704"),
    ] {
        expect_code(&host, what, &sql, code)?;
    }

    // A good timeline with some data.
    let timeline = host.sql_one(&format!("SELECT pageserver.create_timeline('{tenant}', '{conninfo}')"))?.unwrap();
    primary.sql("CREATE TABLE t (a int); INSERT INTO t SELECT generate_series(1, 10000)")?;
    let lsn: Lsn = primary.sql_one("SELECT pg_current_wal_lsn()")?.unwrap().parse().map_err(|_| anyhow::anyhow!("lsn"))?;
    host.wait_for("ingest", Duration::from_secs(60), || timeline_row(&host, &timeline).ok().filter(|r| r.0 >= lsn))?;
    let node: u32 = primary.sql_one("SELECT pg_relation_filenode('t')")?.unwrap().parse()?;
    let db: u32 = primary.sql_one("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.unwrap().parse()?;
    let rel = RelTag::new(1663, db, node, 0);
    let addr = host.listener_addr().context("listener")?.to_string();
    let hdr = RequestHeader { reqid: 7, request_lsn: lsn, not_modified_since: lsn };

    // Bootstrap from a tar file on disk instead of BASE_BACKUP.
    primary.sql("SELECT pg_create_physical_replication_slot('tarslot', true)")?;
    let tar = primary.base_backup_tar("tarbackup")?.display().to_string();
    let msg = sql_error(&host, &format!("SELECT pageserver.create_timeline('{tenant}', '{conninfo}', basebackup_tar => '{tar}')"))?;
    expect("tar without a slot", &msg, "slot_name must name the slot")?;
    let msg = sql_error(
        &host,
        &format!("SELECT pageserver.create_timeline('{tenant}', '{conninfo}', slot_name => 'nosuch', basebackup_tar => '{tar}')"),
    )?;
    expect("tar with a missing slot", &msg, "replication slot \"nosuch\" does not exist")?;
    let msg = sql_error(
        &host,
        &format!(
            "SELECT pageserver.create_timeline('{tenant}', '{conninfo}', slot_name => 'tarslot', basebackup_tar => '/nonexistent.tar')"
        ),
    )?;
    expect("missing tar", &msg, "cannot open basebackup_tar \"/nonexistent.tar\"")?;
    let from_tar = host
        .sql_one(&format!(
            "SELECT pageserver.create_timeline('{tenant}', '{conninfo}', slot_name => 'tarslot', basebackup_tar => '{tar}')"
        ))?
        .unwrap();
    primary.sql("INSERT INTO t SELECT generate_series(1, 100)")?;
    let after_tar: Lsn = primary.sql_one("SELECT pg_current_wal_lsn()")?.unwrap().parse().map_err(|_| anyhow::anyhow!("lsn"))?;
    host.wait_for("ingest into the timeline imported from a tar", Duration::from_secs(60), || {
        timeline_row(&host, &from_tar).ok().filter(|r| r.0 >= after_tar)
    })?;

    // Garbage on a pagestream: an error response, and the stream goes on.
    let mut raw = RawStream::open(&addr, &tenant, &timeline)?;
    raw.send(b'd', b"\x02garbage")?;
    match raw.response()? {
        Response::Error { message, .. } => expect("garbage request", &message, "malformed pagestream request")?,
        other => bail!("garbage got {other:?}"),
    }
    raw.send(b'd', &[])?;
    ensure!(matches!(raw.response()?, Response::Error { .. }), "empty request not refused");
    let mut good = bytes::BytesMut::new();
    Request::Nblocks { hdr, rel }.encode(ProtocolVersion::V2, &mut good);
    raw.send(b'd', &good)?;
    match raw.response()? {
        Response::Nblocks { n, .. } => ensure!(n >= 40, "t has {n} blocks"),
        other => bail!("Nblocks after garbage got {other:?}"),
    }
    // A query inside the stream is a protocol violation: the connection ends, others go on.
    raw.send(b'Q', b"SELECT 1\0")?;
    let mut rest = Vec::new();
    let _ = raw.0.read_to_end(&mut rest);

    // Unknown tenant or timeline: a plain ERROR before the stream starts.
    let unknown = "00000000000000000000000000000001";
    let err = BlockingClient::connect(&addr, ProtocolVersion::V3, unknown, &timeline).err().context("unknown tenant accepted")?;
    expect("unknown tenant", &err.to_string(), "tenant 00000000000000000000000000000001 not found")?;
    let err = BlockingClient::connect(&addr, ProtocolVersion::V3, &tenant, unknown).err().context("unknown timeline accepted")?;
    expect("unknown timeline", &err.to_string(), "timeline 00000000000000000000000000000001 not found")?;

    // An LSN far in the future times out with a message; the stream stays usable.
    let mut tar_client = BlockingClient::connect(&addr, ProtocolVersion::V2, &tenant, &from_tar)?;
    let tar_hdr = RequestHeader { reqid: 0, request_lsn: after_tar, not_modified_since: after_tar };
    match tar_client.request(Request::Nblocks { hdr: tar_hdr, rel })? {
        Response::Nblocks { n, .. } => ensure!(n >= 40, "t has {n} blocks on the timeline imported from a tar"),
        other => bail!("Nblocks on the tar timeline got {other:?}"),
    }
    let mut client = BlockingClient::connect(&addr, ProtocolVersion::V3, &tenant, &timeline)?;
    let future = RequestHeader { reqid: 8, request_lsn: Lsn(0xFFFF_0000_0000), not_modified_since: Lsn(0xFFFF_0000_0000) };
    match client.request(Request::GetPage { hdr: future, rel, blkno: 0 })? {
        Response::Error { message, .. } => expect("LSN in the future", &message, "timed out waiting for timeline")?,
        other => bail!("future LSN got {other:?}"),
    }
    ensure!(matches!(client.request(Request::GetPage { hdr, rel, blkno: 0 })?, Response::GetPage { .. }));
    ensure!(matches!(
        client.request(Request::Exists { hdr, rel: RelTag::new(1663, db, 999_999, 0) })?,
        Response::Exists { exists: false, .. }
    ));
    match client.request(Request::Nblocks { hdr, rel: RelTag::new(1663, db, 999_999, 0) })? {
        Response::Error { message, .. } => expect("missing relation", &message, "does not exist")?,
        other => bail!("Nblocks of a missing relation got {other:?}"),
    }
    // Many pipelined GetPage requests (answered as one bulk read) get the
    // answers the same requests get one at a time: pages, zero pages past
    // the end, an error for a missing fork and for a bad LSN pair, in order.
    let missing = RelTag::new(1663, db, 999_999, 0);
    let bad_lsns = RequestHeader { reqid: 9, request_lsn: Lsn(lsn.0 - 8), not_modified_since: lsn };
    let mut batch = Vec::new();
    for blkno in 0..60u32 {
        batch.push(Request::GetPage { hdr: RequestHeader { reqid: u64::from(blkno), ..hdr }, rel, blkno: blkno % 45 });
        match blkno {
            10 => batch.push(Request::GetPage { hdr, rel: missing, blkno: 0 }),
            20 => batch.push(Request::GetPage { hdr: bad_lsns, rel, blkno: 1 }),
            30 => batch.push(Request::GetPage { hdr, rel, blkno: 1_000_000 }),
            _ => {}
        }
    }
    for request in &batch {
        client.queue(*request);
    }
    client.flush()?;
    let pipelined: Vec<Response> = batch.iter().map(|_| client.recv()).collect::<Result<_, _>>()?;
    for (request, got) in batch.iter().zip(&pipelined) {
        let alone = client.request(*request)?;
        ensure!(*got == alone, "{request:?}: pipelined {got:?}, alone {alone:?}");
    }
    let errors = pipelined.iter().filter(|r| matches!(r, Response::Error { .. })).count();
    ensure!(errors == 2, "{errors} errors among the pipelined answers, want 2");
    eprintln!("{} pipelined GetPage requests answered as one at a time", batch.len());
    let out = host.run_as_postgres(
        "psql",
        &[
            "-X",
            "-w",
            "-d",
            &format!("host=127.0.0.1 port={} user=c", addr.rsplit(':').next().unwrap()),
            "-c",
            &format!("fullbackup {tenant} {timeline} FFFF/0"),
        ],
    )?;
    expect("fullbackup in the future", &String::from_utf8_lossy(&out.stderr), "timed out waiting for timeline")?;

    // The primary goes away mid-stream: the receiver says so and reconnects when it is back.
    primary.kill_postmaster()?;
    host.wait_for("the receiver to notice", Duration::from_secs(60), || timeline_row(&host, &timeline).ok().filter(|r| !r.2.is_empty()))?;
    let (_, state, error) = timeline_row(&host, &timeline)?;
    ensure!(state == "active", "state {state}");
    eprintln!("primary gone: {error}");
    primary.start_again()?;
    primary.sql("INSERT INTO t SELECT generate_series(1, 1000)")?;
    let later: Lsn = primary.sql_one("SELECT pg_current_wal_lsn()")?.unwrap().parse().map_err(|_| anyhow::anyhow!("lsn"))?;
    host.wait_for("ingest after the primary came back", Duration::from_secs(60), || {
        timeline_row(&host, &timeline).ok().filter(|r| r.0 >= later)
    })?;
    ensure!(matches!(client.request(Request::GetPage { hdr, rel, blkno: 1 })?, Response::GetPage { .. }), "old connection broken");

    // The connection string now points at another cluster: wrong system identifier.
    let source = walk_for_source(host.data_dir(), &timeline)?;
    let text = std::fs::read_to_string(&source)?;
    std::fs::write(&source, text.replace(&format!("port={}", primary.port()), &format!("port={}", other.port())))?;
    host.sql("SELECT 1")?;
    let mut host = host;
    host.stop()?;
    host.start_again()?;
    host.wait_for("the wrong system identifier to be reported", Duration::from_secs(60), || {
        timeline_row(&host, &timeline).ok().filter(|r| r.2.contains("wrong system identifier"))
    })?;
    eprintln!("wrong system: {}", timeline_row(&host, &timeline)?.2);
    // The timeline still serves what it has.
    let mut client = BlockingClient::connect(&host.listener_addr().unwrap().to_string(), ProtocolVersion::V2, &tenant, &timeline)?;
    ensure!(matches!(client.request(Request::GetPage { hdr, rel, blkno: 0 })?, Response::GetPage { .. }));
    let log = host.log();
    ensure!(!log.contains("PANIC"), "host log has a PANIC");
    Ok(())
}

/// The timeline's source file under the host's pageserver data directory.
fn walk_for_source(data: &std::path::Path, timeline: &str) -> Result<std::path::PathBuf> {
    let tenants = data.join("pageserver").join("tenants");
    for t in std::fs::read_dir(&tenants)? {
        let p = t?.path().join("sources").join(format!("{timeline}.json"));
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("no source file for {timeline} under {}", tenants.display())
}

//! Regression tests, one per page-level bug a broader workload found, and
//! the page-service behaviours that must match Neon's. Each runs its
//! reproduction on a fresh stock primary streaming to a fresh host (data
//! checksums on for both, as the bugs showed there), then checks the page
//! server's pages against the primary's own files after `CHECKPOINT`
//! (masked by `rm_mask` where PostgreSQL's consistency checks mask), their
//! checksums, and that a stock PostgreSQL starts from `fullbackup` at that
//! LSN (`pg_checksums --check`, `pg_amcheck`, `pg_dumpall` equal).

use anyhow::{bail, ensure, Context, Result};
use common::e2e::{self, check_fullbackup, dump_all, forks_of, lsn_of, wait_ingested};
use pageserver_harness::PgCluster;
use std::io::{Read, Write};
use storage::checksum::page_checksum_is_valid;
use storage::key::{RelTag, SlruKind};
use storage::lsn::Lsn;
use storage::pagestream::{ProtocolVersion, Request, RequestHeader, Response};
use tools::pagestream_client::BlockingClient;

mod common;

/// A checksummed primary and host, a timeline streaming between them.
struct Setup {
    primary: PgCluster,
    host: PgCluster,
    tenant: String,
    timeline: String,
}

impl Setup {
    fn new() -> Result<Setup> {
        let primary = e2e::start_primary(true, &[])?;
        let host = e2e::start_host(true, &[])?;
        let (tenant, timeline) = e2e::create_timeline(&host, &primary)?;
        Ok(Setup { primary, host, tenant, timeline })
    }

    /// Runs `sql` statement by statement, then CHECKPOINT; returns the LSN
    /// after it, once ingested.
    fn run_and_checkpoint(&self, sql: &[&str]) -> Result<Lsn> {
        for statement in sql {
            self.primary.sql(statement)?;
        }
        self.primary.sql("CHECKPOINT")?;
        let lsn = lsn_of(&self.primary, "SELECT pg_current_wal_lsn()")?;
        wait_ingested(&self.host, &self.timeline, lsn)?;
        Ok(lsn)
    }

    fn client(&self) -> Result<BlockingClient> {
        let addr = self.host.listener_addr().context("listener")?.to_string();
        Ok(BlockingClient::connect(&addr, ProtocolVersion::V3, &self.tenant, &self.timeline)?)
    }

    /// GetPage of `rel` block `blkno` at `lsn` equals the primary's block
    /// (raw, or after `rm_mask` of `rmgr` when given) and has a valid checksum.
    fn check_page(&self, rel: RelTag, blkno: u32, lsn: Lsn, rmgr: Option<i32>, what: &str) -> Result<Vec<u8>> {
        let mut client = self.client()?;
        let hdr = RequestHeader { reqid: 1, request_lsn: lsn, not_modified_since: lsn };
        let page = match client.request(Request::GetPage { hdr, rel, blkno })? {
            Response::GetPage { page, .. } => page.to_vec(),
            other => bail!("{what}: GetPage answered {other:?}"),
        };
        let theirs = read_primary_block(&self.primary, rel, blkno)?;
        let as_page = |p: &[u8]| -> Result<[u8; 8192]> { Ok(p.try_into()?) };
        ensure!(page_checksum_is_valid(&as_page(&theirs)?, blkno), "{what}: the primary's own page fails the checksum check");
        ensure!(
            page_checksum_is_valid(&as_page(&page)?, blkno),
            "{what}: the page server's page has checksum {:#06x}, not valid for its contents",
            u16::from_le_bytes([page[8], page[9]])
        );
        let equal = match rmgr {
            None => page == theirs,
            Some(rmgr) => {
                let row = self.host.client("postgres")?.query_one(
                    "SELECT pageserver.mask_page($1, $2, $4) = pageserver.mask_page($1, $3, $4)",
                    &[&rmgr, &theirs, &page, &(blkno as i64)],
                )?;
                row.get(0)
            }
        };
        let first = page.iter().zip(&theirs).position(|(a, b)| a != b);
        ensure!(equal, "{what}: the page server's block differs from the primary's (first difference at byte {first:?})");
        Ok(page)
    }

    /// A stock PostgreSQL starts from `fullbackup` at `lsn` (checked with
    /// pg_checksums, amcheck, and against the primary's dump now).
    fn check_fullbackup(&self, lsn: Lsn, what: &str) -> Result<()> {
        let expected = dump_all(&self.primary)?;
        check_fullbackup(&self.host, &self.tenant, &self.timeline, Some(lsn), &expected, true, what)?;
        e2e::ensure_log_clean(&self.host)
    }
}

fn read_primary_block(primary: &PgCluster, rel: RelTag, blkno: u32) -> Result<Vec<u8>> {
    let dir =
        if rel.spc_node == 1664 { primary.data_dir().join("global") } else { primary.data_dir().join(format!("base/{}", rel.db_node)) };
    let suffix = ["", "_fsm", "_vm", "_init"][rel.fork as usize];
    let bytes = std::fs::read(dir.join(format!("{}{suffix}", rel.rel_node)))?;
    Ok(bytes.get(blkno as usize * 8192..(blkno as usize + 1) * 8192).context("block past the end of the primary's file")?.to_vec())
}

fn slru_segment(client: &mut BlockingClient, lsn: Lsn, wire_kind: u8) -> Result<(SlruKind, Vec<u8>)> {
    let kind = storage::pagestream::slru_kind_from_wire(wire_kind).context("kind")?;
    let hdr = RequestHeader { reqid: 2, request_lsn: lsn, not_modified_since: lsn };
    match client.request(Request::GetSlruSegment { hdr, kind, segno: 0 })? {
        Response::GetSlruSegment { segment, .. } => Ok((kind, segment.to_vec())),
        other => bail!("GetSlruSegment kind {wire_kind}: {other:?}"),
    }
}

/// Bug 1: pages rebuilt by redo carried stale checksums, so a stock
/// PostgreSQL refused `global/1260` after starting from `fullbackup`.
#[test]
fn redo_output_carries_valid_checksums() -> Result<()> {
    let s = Setup::new()?;
    let lsn = s.run_and_checkpoint(&["CREATE ROLE r", "ALTER ROLE r CONNECTION LIMIT 5"])?;
    s.check_page(RelTag::new(1664, 0, 1260, 0), 0, lsn, Some(10), "pg_authid block 0")?;
    s.check_fullbackup(lsn, "fullbackup after CREATE ROLE")
}

/// Bug 2: redo of init-fork blocks asked the host to flush its WAL up to the
/// tenant's LSN and failed; fullbackup failed from then on.
#[test]
fn init_fork_blocks_are_redone() -> Result<()> {
    let s = Setup::new()?;
    let lsn = s.run_and_checkpoint(&[
        "CREATE UNLOGGED SEQUENCE s",
        "CREATE UNLOGGED TABLE u (i int, p point)",
        "CREATE INDEX u_hash ON u USING hash (i)",
        "CREATE INDEX u_btree ON u (i)",
        "CREATE INDEX u_gist ON u USING gist (p)",
        "INSERT INTO u SELECT i, point(i, i) FROM generate_series(1, 100) i",
    ])?;
    for (relation, rmgr) in [("s", 15), ("u_hash", 12), ("u_btree", 11), ("u_gist", 14)] {
        let (rel, forks) = forks_of(&s.primary, "postgres", relation)?;
        ensure!(forks.contains(&3), "{relation} has no init fork on the primary");
        let init = RelTag::new(rel.spc_node, rel.db_node, rel.rel_node, 3);
        let blocks = std::fs::metadata(s.primary.data_dir().join(format!("base/{}/{}_init", rel.db_node, rel.rel_node)))?.len() / 8192;
        ensure!(blocks > 0, "{relation}'s init fork is empty");
        for blkno in 0..blocks as u32 {
            s.check_page(init, blkno, lsn, Some(rmgr), &format!("{relation} init fork block {blkno}"))?;
        }
    }
    s.check_fullbackup(lsn, "fullbackup after unlogged relations")?;
    // ... and at a later LSN, after more work on the same relations.
    let later = s.run_and_checkpoint(&[
        "SELECT nextval('s')",
        "INSERT INTO u SELECT i, point(i, 0) FROM generate_series(1, 50) i",
        "CREATE TABLE after (i int)",
    ])?;
    s.check_fullbackup(later, "fullbackup at a later LSN")
}

/// Bug 3: a VACUUM truncation emptied the last visibility-map page that
/// stays; only the bits of heap blocks past the new end may be cleared.
#[test]
fn vm_truncation_keeps_the_remaining_bits() -> Result<()> {
    let s = Setup::new()?;
    let lsn = s.run_and_checkpoint(&[
        "CREATE TABLE t (i int, pad text) WITH (autovacuum_enabled = off)",
        "INSERT INTO t SELECT i, repeat('x', 200) FROM generate_series(1, 2000) i",
        "VACUUM (FREEZE) t",
        "DELETE FROM t WHERE i > 1000",
        "VACUUM t",
    ])?;
    let (rel, forks) = forks_of(&s.primary, "postgres", "t")?;
    ensure!(forks.contains(&2), "no visibility map on the primary");
    let vm = RelTag::new(rel.spc_node, rel.db_node, rel.rel_node, 2);
    let page = s.check_page(vm, 0, lsn, None, "visibility-map block 0 after truncation")?;
    let bits: u32 = page[24..].iter().map(|b| b.count_ones()).sum();
    ensure!(bits > 0, "no visibility-map bit left set");
    eprintln!("visibility-map block 0: {bits} bits set, equal to the primary's");
    s.check_fullbackup(lsn, "fullbackup after the truncation")
}

/// Bug 4: a new multixact's own starting offset was lost (the next one's,
/// written by the same record on the same page, replaced it).
#[test]
fn multixact_offsets_hold_their_own_start() -> Result<()> {
    let s = Setup::new()?;
    s.primary.sql("CREATE TABLE m (id int PRIMARY KEY); INSERT INTO m VALUES (1)")?;
    e2e::concurrent_key_share(&s.primary, "postgres", "m", "id = 1")?;
    let lsn = s.run_and_checkpoint(&[])?;
    let mut client = s.client()?;
    let (kind, ours) = slru_segment(&mut client, lsn, 2)?;
    ensure!(kind == SlruKind::MultiXactOffsets);
    let theirs = std::fs::read(s.primary.data_dir().join("pg_multixact/offsets/0000"))?;
    let words = |b: &[u8]| b[..16].chunks(4).map(|w| u32::from_le_bytes(w.try_into().unwrap())).collect::<Vec<_>>();
    ensure!(words(&theirs) == [0, 1, 3, 0], "the primary's offsets are {:?}: not the reproduction", words(&theirs));
    ensure!(words(&ours) == words(&theirs), "offsets words 0-3: page server {:?}, primary {:?}", words(&ours), words(&theirs));
    ensure!(ours == theirs, "pg_multixact/offsets/0000 differs from the primary's");
    s.check_fullbackup(lsn, "fullbackup after a multixact")
}

/// Bug 5: GetSlruSegment numbered the multixact SLRUs the other way round
/// from Neon (0 pg_xact, 1 members, 2 offsets).
#[test]
fn slru_kinds_are_neons() -> Result<()> {
    let s = Setup::new()?;
    s.primary.sql("CREATE TABLE m (id int PRIMARY KEY); INSERT INTO m SELECT generate_series(1, 10)")?;
    e2e::concurrent_key_share(&s.primary, "postgres", "m", "true")?;
    let lsn = s.run_and_checkpoint(&[])?;
    let mut client = s.client()?;
    for (wire, file) in [(0u8, "pg_xact/0000"), (1, "pg_multixact/members/0000"), (2, "pg_multixact/offsets/0000")] {
        let (_, ours) = slru_segment(&mut client, lsn, wire)?;
        let theirs = std::fs::read(s.primary.data_dir().join(file))?;
        ensure!(ours == theirs, "GetSlruSegment kind {wire} does not return the primary's {file}");
    }
    Ok(())
}

/// Nblocks of a missing FSM or VM fork is 0 (a missing main fork stays an
/// error); `request_lsn < not_modified_since` is rejected; CopyDone is
/// answered with CopyDone, CommandComplete and ReadyForQuery.
#[test]
fn page_service_behaves_as_neons() -> Result<()> {
    let s = Setup::new()?;
    let lsn = s.run_and_checkpoint(&["CREATE TABLE fresh (i int)", "INSERT INTO fresh VALUES (1)"])?;
    let (rel, forks) = forks_of(&s.primary, "postgres", "fresh")?;
    ensure!(!forks.contains(&1) && !forks.contains(&2), "the fresh table already has an FSM or VM: {forks:?}");
    let mut client = s.client()?;
    let hdr = RequestHeader { reqid: 3, request_lsn: lsn, not_modified_since: lsn };
    for fork in [1u8, 2] {
        let tag = RelTag::new(rel.spc_node, rel.db_node, rel.rel_node, fork);
        match client.request(Request::Nblocks { hdr, rel: tag })? {
            Response::Nblocks { n: 0, .. } => {}
            other => bail!("Nblocks of missing fork {fork}: {other:?}"),
        }
        match client.request(Request::Exists { hdr, rel: tag })? {
            Response::Exists { exists: false, .. } => {}
            other => bail!("Exists of missing fork {fork}: {other:?}"),
        }
    }
    let missing = RelTag::new(rel.spc_node, rel.db_node, 999_999, 0);
    match client.request(Request::Nblocks { hdr, rel: missing })? {
        Response::Error { message, .. } => ensure!(message.contains("does not exist"), "{message}"),
        other => bail!("Nblocks of a missing main fork: {other:?}"),
    }
    let backwards = RequestHeader { reqid: 4, request_lsn: Lsn(lsn.0 - 8), not_modified_since: lsn };
    match client.request(Request::GetPage { hdr: backwards, rel, blkno: 0 })? {
        Response::Error { message, .. } => ensure!(message.contains("invalid request with request LSN"), "{message}"),
        other => bail!("request_lsn < not_modified_since: {other:?}"),
    }
    // Unchanged since an old LSN, asked at a later one: read without waiting.
    let ahead = RequestHeader { reqid: 5, request_lsn: Lsn(lsn.0 + (1 << 30)), not_modified_since: lsn };
    match client.request(Request::GetPage { hdr: ahead, rel, blkno: 0 })? {
        Response::GetPage { .. } => {}
        other => bail!("request ahead of ingest, not modified since an ingested LSN: {other:?}"),
    }
    copy_done_is_answered_in_kind(&s)
}

/// Raw libpq: startup, `pagestream_v3`, CopyDone; the server must answer
/// CopyDone, CommandComplete, ReadyForQuery, and the session goes on.
fn copy_done_is_answered_in_kind(s: &Setup) -> Result<()> {
    let addr = s.host.listener_addr().context("listener")?;
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut startup = Vec::new();
    startup.extend_from_slice(&196608u32.to_be_bytes());
    startup.extend_from_slice(b"user\0compute\0\0");
    let mut msg = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&startup);
    stream.write_all(&msg)?;
    let read_until = |stream: &mut std::net::TcpStream, last: u8| -> Result<Vec<u8>> {
        let mut tags = Vec::new();
        loop {
            let mut head = [0u8; 5];
            stream.read_exact(&mut head)?;
            let mut body = vec![0u8; u32::from_be_bytes(head[1..5].try_into()?) as usize - 4];
            stream.read_exact(&mut body)?;
            tags.push(head[0]);
            if head[0] == last {
                return Ok(tags);
            }
        }
    };
    read_until(&mut stream, b'Z')?;
    let query = |text: &str| {
        let mut q = vec![b'Q'];
        q.extend_from_slice(&((text.len() + 5) as u32).to_be_bytes());
        q.extend_from_slice(text.as_bytes());
        q.push(0);
        q
    };
    stream.write_all(&query(&format!("pagestream_v3 {} {}", s.tenant, s.timeline)))?;
    ensure!(read_until(&mut stream, b'W')? == [b'W'], "no CopyBothResponse");
    stream.write_all(&[b'c', 0, 0, 0, 4])?;
    let tags = read_until(&mut stream, b'Z')?;
    ensure!(
        tags == [b'c', b'C', b'Z'],
        "CopyDone answered with {:?}, want CopyDone, CommandComplete, ReadyForQuery",
        String::from_utf8_lossy(&tags)
    );
    // The session is still usable.
    stream.write_all(&query("no such command"))?;
    let tags = read_until(&mut stream, b'Z')?;
    ensure!(tags == [b'E', b'Z'], "after the stream: {:?}", String::from_utf8_lossy(&tags));
    Ok(())
}

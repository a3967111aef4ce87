//! The page service commands: `pagestream_v2|v3 <tenant> <timeline>`
//! (a CopyBoth sub-protocol of GetPage@LSN and friends, pipelined) and
//! `basebackup|fullbackup <tenant> <timeline> [lsn]` (a tar over CopyOut).
//! Every command names a tenant, checked against what the connection's
//! token grants before anything is read.
//!
//! A pagestream request at an LSN already ingested is answered on the
//! connection's own task: it needs at most layer reads and a redo request
//! (bounded by `pageserver.redo_timeout`), and handing it to another thread
//! costs more than it takes (measured: a blocking-pool hop per request grew
//! the pool to hundreds of threads and a quarter of the CPU went to
//! switching). A request ahead of ingest waits on tokio's blocking pool
//! (`pageserver.wait_lsn_timeout`), so it never holds up the runtime.
//! Requests are answered in order, a buffer-full at a time; a failed
//! request gets an error response and the stream goes on. A run of at
//! least [`batch::MIN_BATCH`] pipelined GetPage requests for consecutive
//! blocks that can be answered now is read as one batch on the blocking
//! pool instead ([`batch`]). Backups run on
//! the blocking pool.

use super::auth::Session;
use super::batch;
use super::pq::{self, sqlstate, BackendWriter, ProtocolError};
use super::stats::{PageServiceStats, RequestKind};
use super::tls::ClientStream;
use crate::error::ServiceError;
use crate::timeline_handle::TenantId;
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::backup::BackupKind;
use storage::key::{Key, RelTag, FSM_FORKNUM, VISIBILITYMAP_FORKNUM};
use storage::lsn::Lsn;
use storage::pagestream::{ProtocolVersion, Request, RequestHeader, Response};
use storage::repo::{Timeline, TimelineId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes of requests read from a pagestream connection at a time.
const READ_BUFFER: usize = 64 * 1024;
/// Bytes of pagestream responses gathered before they are written.
const WRITE_BATCH: usize = 256 * 1024;
/// Bytes of tar per CopyData message.
const BACKUP_CHUNK: usize = 256 * 1024;
/// `DEFAULTTABLESPACE_OID`: DbSize counts a database's relations there.
const DEFAULT_TABLESPACE: u32 = pg_constants::DEFAULTTABLESPACE_OID;
pub(super) const ZERO_PAGE: [u8; pg_constants::BLCKSZ] = [0; pg_constants::BLCKSZ];

/// Finds a timeline by tenant and timeline id (the manager implements it;
/// the page service needs nothing else of it).
pub trait TimelineLookup: Send + Sync {
    fn timeline(&self, tenant: TenantId, timeline: TimelineId) -> Result<Arc<Timeline>, ServiceError>;
}

/// What the commands need from the main worker.
#[derive(Clone)]
pub struct ServiceContext {
    pub timelines: Arc<dyn TimelineLookup>,
    /// What `pageserver.stat_page_service` shows.
    pub stats: Arc<PageServiceStats>,
    /// `pageserver.wait_lsn_timeout` in milliseconds, kept current by the main thread.
    pub wait_lsn_timeout_ms: Arc<AtomicU64>,
}

impl ServiceContext {
    fn wait_lsn_timeout(&self) -> Duration {
        Duration::from_millis(self.wait_lsn_timeout_ms.load(Ordering::Relaxed))
    }
}

/// A parsed page service command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Pagestream { version: ProtocolVersion, tenant: TenantId, timeline: TimelineId },
    Backup { kind: BackupKind, tenant: TenantId, timeline: TimelineId, lsn: Option<Lsn> },
}

/// Parses a query; `Ok(None)` when it is not a page service command at all.
pub fn parse_command(query: &str) -> Result<Option<Command>, String> {
    let words: Vec<&str> = query.split_whitespace().collect();
    let Some(&name) = words.first() else { return Ok(None) };
    let ids = |usage: &str| -> Result<(TenantId, TimelineId), String> {
        let tenant = words.get(1).ok_or_else(|| format!("missing tenant id; usage: {usage}"))?;
        let timeline = words.get(2).ok_or_else(|| format!("missing timeline id; usage: {usage}"))?;
        let tenant = tenant.parse().map_err(|_| format!("invalid tenant id \"{tenant}\": expected 32 hexadecimal digits"))?;
        let timeline = timeline.parse().map_err(|_| format!("invalid timeline id \"{timeline}\": expected 32 hexadecimal digits"))?;
        Ok((tenant, timeline))
    };
    if let Some(version) = ProtocolVersion::from_command(name) {
        let usage = format!("{name} <tenant id> <timeline id>");
        if words.len() > 3 {
            return Err(format!("too many arguments; usage: {usage}"));
        }
        let (tenant, timeline) = ids(&usage)?;
        return Ok(Some(Command::Pagestream { version, tenant, timeline }));
    }
    let kind = match name {
        "basebackup" => BackupKind::Basebackup,
        "fullbackup" => BackupKind::Fullbackup,
        "clonebackup" => BackupKind::Clonebackup,
        _ => return Ok(None),
    };
    let usage = format!("{name} <tenant id> <timeline id> [lsn]");
    if words.len() > 4 {
        return Err(format!("too many arguments; usage: {usage}"));
    }
    let (tenant, timeline) = ids(&usage)?;
    let lsn = match words.get(3) {
        Some(s) => Some(s.parse().map_err(|_| format!("invalid LSN \"{s}\": expected the form 16/B374D848"))?),
        None => None,
    };
    Ok(Some(Command::Backup { kind, tenant, timeline, lsn }))
}

async fn send(stream: &mut ClientStream, out: &mut BytesMut) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    stream.write_all(out).await?;
    out.clear();
    // A no-op on a plain socket; over TLS it writes out the records rustls holds.
    stream.flush().await
}

impl Command {
    /// The tenant the command reads.
    pub fn tenant(&self) -> TenantId {
        match self {
            Command::Pagestream { tenant, .. } | Command::Backup { tenant, .. } => *tenant,
        }
    }
}

/// Runs a parsed command on the connection; writes everything up to (not
/// including) ReadyForQuery. A command for a tenant the session may not
/// read gets an error and nothing else.
pub async fn run(
    stream: &mut ClientStream,
    out: &mut BytesMut,
    ctx: &ServiceContext,
    session: &Session,
    command: Command,
) -> Result<(), ProtocolError> {
    if let Err(e) = session.check_tenant(command.tenant()) {
        let e = ServiceError::from(e);
        BackendWriter(out).error(e.sqlstate(), &e.to_string(), None);
        return Ok(());
    }
    match command {
        Command::Pagestream { version, tenant, timeline } => {
            let timeline = match ctx.timelines.timeline(tenant, timeline) {
                Ok(t) => t,
                Err(e) => {
                    BackendWriter(out).error(e.sqlstate(), &e.to_string(), None);
                    return Ok(());
                }
            };
            BackendWriter(out).copy_both_response();
            send(stream, out).await?;
            serve_pagestream(stream, version, timeline, ctx).await?;
            BackendWriter(out).command_complete("COPY 0");
            Ok(())
        }
        Command::Backup { kind, tenant, timeline, lsn } => {
            let started = std::time::Instant::now();
            let (bytes, ok) = send_backup(stream, out, ctx, kind, tenant, timeline, lsn).await?;
            let kind = match kind {
                BackupKind::Basebackup => RequestKind::Basebackup,
                BackupKind::Fullbackup => RequestKind::Fullbackup,
                BackupKind::Clonebackup => RequestKind::Clonebackup,
            };
            ctx.stats.request(kind, started.elapsed(), bytes, !ok);
            Ok(())
        }
    }
}

/// Serves pagestream requests until the client sends CopyDone (or leaves).
///
/// One loop per connection: read whatever the client has sent, answer every
/// whole request in it in order, write the answers in one go, read again.
/// At depth 1 that is one read and one write per request and no hand-off
/// between tasks; with many requests in flight answers go out in batches.
async fn serve_pagestream(
    stream: &mut ClientStream,
    version: ProtocolVersion,
    timeline: Arc<Timeline>,
    ctx: &ServiceContext,
) -> Result<(), ProtocolError> {
    let wait_timeout = ctx.wait_lsn_timeout();
    let mut input = BytesMut::with_capacity(READ_BUFFER);
    let mut out = BytesMut::with_capacity(WRITE_BATCH);
    // Pipelined GetPage requests that can be answered now, in order.
    let mut pending: Vec<(Request, Instant)> = Vec::new();
    loop {
        while let Some((tag, body)) = pq::take_message(&mut input)? {
            if tag == b'd' {
                let started = Instant::now();
                let parsed = Request::parse(version, &body);
                if let Ok(request @ Request::GetPage { .. }) = parsed {
                    if is_ingested(&timeline, &request) {
                        pending.push((request, started));
                        if pending.len() >= batch::MAX_BATCH {
                            answer_pending(stream, &mut out, version, &timeline, ctx, &mut pending).await?;
                        }
                        continue;
                    }
                }
                answer_pending(stream, &mut out, version, &timeline, ctx, &mut pending).await?;
                let kind = parsed.as_ref().ok().map(request_kind);
                let response = match parsed {
                    Ok(request) if is_ingested(&timeline, &request) => answer(&timeline, &request, wait_timeout),
                    Ok(request) => {
                        // Ahead of ingest: send what is ready, then wait off the runtime.
                        send(stream, &mut out).await?;
                        let timeline = timeline.clone();
                        tokio::task::spawn_blocking(move || answer(&timeline, &request, wait_timeout))
                            .await
                            .unwrap_or_else(|e| Response::Error { hdr: Default::default(), message: format!("internal error: {e}") })
                    }
                    // Not a request we understand: answer with an error in
                    // order; the stream stays usable.
                    Err(e) => Response::Error { hdr: Default::default(), message: format!("malformed pagestream request: {e}") },
                };
                write_response(stream, &mut out, version, ctx, kind, started, &response).await?;
                continue;
            }
            answer_pending(stream, &mut out, version, &timeline, ctx, &mut pending).await?;
            match tag {
                b'c' => {
                    // CopyBoth ends when both sides have sent CopyDone: ours
                    // follows the last answer; the caller then sends
                    // CommandComplete and ReadyForQuery.
                    BackendWriter(&mut out).copy_done();
                    send(stream, &mut out).await?;
                    // The session goes on without this buffer: a client must
                    // wait for CommandComplete before sending more.
                    if !input.is_empty() {
                        return Err(ProtocolError::Io(std::io::Error::other(
                            "messages sent after CopyDone before the server ended the stream",
                        )));
                    }
                    return Ok(());
                }
                b'X' => {
                    send(stream, &mut out).await?;
                    return Err(ProtocolError::Closed);
                }
                b'f' => return Ok(send(stream, &mut out).await?), // CopyFail
                b'Q' | b'S' => return Err(ProtocolError::Io(std::io::Error::other("query inside a pagestream: send CopyDone first"))),
                tag => {
                    return Err(ProtocolError::Io(std::io::Error::other(format!(
                        "message type '{}' inside a pagestream: only CopyData and CopyDone are allowed",
                        tag.escape_ascii()
                    ))))
                }
            }
        }
        answer_pending(stream, &mut out, version, &timeline, ctx, &mut pending).await?;
        send(stream, &mut out).await?;
        input.reserve(READ_BUFFER / 2);
        if stream.read_buf(&mut input).await? == 0 {
            return Err(ProtocolError::Closed);
        }
    }
}

/// Appends one response (and counts it); writes out a full batch.
async fn write_response(
    stream: &mut ClientStream,
    out: &mut BytesMut,
    version: ProtocolVersion,
    ctx: &ServiceContext,
    kind: Option<RequestKind>,
    started: Instant,
    response: &Response,
) -> Result<(), ProtocolError> {
    let before = out.len();
    BackendWriter(out).copy_data_with(|b| response.encode(version, b));
    if let Some(kind) = kind {
        let error = matches!(response, Response::Error { .. });
        ctx.stats.request(kind, started.elapsed(), (out.len() - before) as u64, error);
    }
    if out.len() >= WRITE_BATCH {
        send(stream, out).await?;
    }
    Ok(())
}

/// Answers the pending GetPage requests, in order: one by one on this task,
/// as always, unless they are a long run of consecutive blocks (a
/// sequential reader's read-ahead), which is one batch read on the
/// blocking pool ([`batch::answer_getpages`]).
async fn answer_pending(
    stream: &mut ClientStream,
    out: &mut BytesMut,
    version: ProtocolVersion,
    timeline: &Arc<Timeline>,
    ctx: &ServiceContext,
    pending: &mut Vec<(Request, Instant)>,
) -> Result<(), ProtocolError> {
    if pending.is_empty() {
        return Ok(());
    }
    let requests: Vec<Request> = pending.iter().map(|(r, _)| *r).collect();
    let responses = if !batch::is_sequential_run(&requests) {
        let wait_timeout = ctx.wait_lsn_timeout();
        requests.iter().map(|r| answer(timeline, r, wait_timeout)).collect()
    } else {
        let (timeline, wait_timeout) = (timeline.clone(), ctx.wait_lsn_timeout());
        tokio::task::spawn_blocking(move || batch::answer_getpages(&timeline, &requests, wait_timeout))
            .await
            .unwrap_or_else(|e| pending.iter().map(|(r, _)| r.error_response(format!("internal error: {e}"))).collect())
    };
    for ((_, started), response) in pending.drain(..).zip(responses) {
        write_response(stream, out, version, ctx, Some(RequestKind::GetPage), started, &response).await?;
    }
    Ok(())
}

fn request_kind(request: &Request) -> RequestKind {
    match request {
        Request::Exists { .. } => RequestKind::Exists,
        Request::Nblocks { .. } => RequestKind::Nblocks,
        Request::GetPage { .. } => RequestKind::GetPage,
        Request::DbSize { .. } => RequestKind::DbSize,
        Request::GetSlruSegment { .. } => RequestKind::GetSlruSegment,
    }
}

/// True if the request can be answered without waiting for WAL (a request
/// that breaks the LSN rules is answered at once too, with an error).
fn is_ingested(timeline: &Timeline, request: &Request) -> bool {
    match read_at(request.header(), timeline.last_record_lsn()) {
        // A branch's read also waits for its ancestors to reach the branch
        // point (they re-ingest after a restart): that wait must not hold a
        // runtime thread, which WAL ingest needs to make the progress waited for.
        Ok(ReadAt::Ingested(lsn)) => timeline.ancestors_caught_up(lsn),
        Ok(ReadAt::After(_)) => false,
        Err(_) => true,
    }
}

/// Where a pagestream request reads, decided as Neon's page service decides
/// it from the request's two LSNs and what the timeline has ingested.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReadAt {
    /// Read at this LSN now.
    Ingested(Lsn),
    /// Wait until this LSN is ingested, then read there.
    After(Lsn),
}

/// The page cannot have changed between `not_modified_since` and
/// `request_lsn`, so: a request whose `request_lsn` is below its
/// `not_modified_since` is invalid; one whose `not_modified_since` is not
/// yet ingested waits for it and reads there; any other reads at
/// `request_lsn` or at what is ingested, whichever is lower (`Lsn::MAX`, the
/// latest, reads at what is ingested).
pub(super) fn read_at(hdr: &RequestHeader, last_record_lsn: Lsn) -> Result<ReadAt, String> {
    if hdr.request_lsn < hdr.not_modified_since {
        return Err(format!("invalid request with request LSN {} and not_modified_since {}", hdr.request_lsn, hdr.not_modified_since));
    }
    let since = normalize_lsn(hdr.not_modified_since);
    if since > last_record_lsn {
        return Ok(ReadAt::After(since));
    }
    let request = if hdr.request_lsn == Lsn::MAX { Lsn::MAX } else { normalize_lsn(hdr.request_lsn) };
    Ok(ReadAt::Ingested(request.min(last_record_lsn)))
}

/// A fork's size for a request: a missing FSM or visibility-map fork has 0
/// blocks (PostgreSQL may create one and ask its size before extending it;
/// Neon answers 0 too), any other missing fork is an error.
pub(super) fn request_rel_size(timeline: &Timeline, rel: RelTag, lsn: Lsn) -> Result<u32, String> {
    match timeline.get_rel_size(rel, lsn).map_err(|e| e.to_string())? {
        Some(n) => Ok(n),
        None if rel.fork == FSM_FORKNUM || rel.fork == VISIBILITYMAP_FORKNUM => Ok(0),
        None => Err(missing(rel, lsn)),
    }
}

/// Serves one request (blocking: may wait for ingest and redo).
pub(super) fn answer(timeline: &Timeline, request: &Request, wait_timeout: Duration) -> Response {
    match try_answer(timeline, request, wait_timeout) {
        Ok(response) => response,
        Err(message) => request.error_response(message),
    }
}

fn try_answer(timeline: &Timeline, request: &Request, wait_timeout: Duration) -> Result<Response, String> {
    let hdr = *request.header();
    let lsn = match read_at(&hdr, timeline.last_record_lsn())? {
        ReadAt::Ingested(lsn) => lsn,
        ReadAt::After(lsn) => {
            timeline.wait_lsn(lsn, wait_timeout).map_err(|e| e.to_string())?;
            lsn
        }
    };
    let e = |e: storage::repo::RepoError| e.to_string();
    Ok(match *request {
        Request::Exists { rel, .. } => Response::Exists { hdr, rel, exists: timeline.rel_exists(rel, lsn).map_err(e)? },
        Request::Nblocks { rel, .. } => Response::Nblocks { hdr, rel, n: request_rel_size(timeline, rel, lsn)? },
        Request::GetPage { rel, blkno, .. } => {
            let nblocks = request_rel_size(timeline, rel, lsn)?;
            let page = if blkno >= nblocks {
                Bytes::from_static(&ZERO_PAGE)
            } else {
                timeline.get(Key::rel_block(rel, blkno), lsn).map_err(e)?.unwrap_or_else(|| Bytes::from_static(&ZERO_PAGE))
            };
            Response::GetPage { hdr, rel, blkno, page }
        }
        Request::DbSize { db_oid, .. } => {
            Response::DbSize { hdr, db_oid, bytes: timeline.db_size(DEFAULT_TABLESPACE, db_oid, lsn).map_err(e)? as i64 }
        }
        Request::GetSlruSegment { kind, segno, .. } => {
            let segment = timeline
                .get_slru_segment(kind, segno, lsn)
                .map_err(e)?
                .ok_or_else(|| format!("SLRU segment {}/{segno:04X} does not exist at {lsn}", kind.dir_name()))?;
            Response::GetSlruSegment { hdr, kind, segno, segment }
        }
    })
}

/// An LSN just after a WAL page header (what `pg_current_wal_lsn()` shows
/// when the last record ended on a page boundary) names the same state as
/// the boundary, which is where ingest stops; read and wait at the boundary.
fn normalize_lsn(lsn: Lsn) -> Lsn {
    use storage::wal::{SIZE_OF_LONG_PAGE_HEADER, SIZE_OF_SHORT_PAGE_HEADER, XLOG_BLCKSZ as PAGE};
    const SEGMENT: u64 = pg_constants::WAL_SEGMENT_SIZE;
    const SHORT_HEADER: u64 = SIZE_OF_SHORT_PAGE_HEADER as u64;
    const LONG_HEADER: u64 = SIZE_OF_LONG_PAGE_HEADER as u64;
    let header = if lsn.0 % SEGMENT == LONG_HEADER { LONG_HEADER } else { SHORT_HEADER };
    if lsn.0 % PAGE == header {
        Lsn(lsn.0 - header)
    } else {
        lsn
    }
}

fn missing(rel: RelTag, lsn: Lsn) -> String {
    format!("relation {}/{}/{} fork {} does not exist at {lsn}", rel.spc_node, rel.db_node, rel.rel_node, rel.fork)
}

/// A `Write` that hands tar bytes to the async side in chunks.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: BytesMut,
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BACKUP_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = self.buf.split().freeze();
            self.tx.blocking_send(chunk).map_err(|_| std::io::Error::other("the client went away"))?;
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_backup(
    stream: &mut ClientStream,
    out: &mut BytesMut,
    ctx: &ServiceContext,
    kind: BackupKind,
    tenant: TenantId,
    timeline: TimelineId,
    lsn: Option<Lsn>,
) -> Result<(u64, bool), ProtocolError> {
    let timeline = match ctx.timelines.timeline(tenant, timeline) {
        Ok(t) => t,
        Err(e) => {
            BackendWriter(out).error(e.sqlstate(), &e.to_string(), None);
            return Ok((0, false));
        }
    };
    let wait_timeout = ctx.wait_lsn_timeout();
    let lsn = match lsn {
        None => timeline.last_record_lsn(),
        Some(lsn) => {
            let lsn = normalize_lsn(lsn);
            let tl = timeline.clone();
            let waited = tokio::task::spawn_blocking(move || tl.wait_lsn(lsn, wait_timeout)).await;
            match waited {
                Ok(Ok(())) => lsn,
                Ok(Err(e)) => {
                    BackendWriter(out).error(sqlstate::INVALID_PARAMETER, &e.to_string(), None);
                    return Ok((0, false));
                }
                Err(e) => {
                    BackendWriter(out).error(sqlstate::INTERNAL_ERROR, &e.to_string(), None);
                    return Ok((0, false));
                }
            }
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let started = std::time::Instant::now();
    let tl = timeline.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut sink = ChunkSender { tx, buf: BytesMut::new() };
        let stats = storage::backup::write_backup_tar(&tl, lsn, kind, &mut sink).map_err(|e| e.to_string())?;
        std::io::Write::flush(&mut sink).map_err(|e| e.to_string())?;
        Ok::<_, String>(stats)
    });
    // The tar is built before CopyOut starts only as far as its first chunk:
    // an error before any byte (a bad LSN, say) is a plain ERROR.
    let first = rx.recv().await;
    let Some(first) = first else {
        let message = match writer.await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => "backup produced no data".into(),
            Err(e) => e.to_string(),
        };
        BackendWriter(out).error(sqlstate::INTERNAL_ERROR, &message, None);
        return Ok((0, false));
    };
    BackendWriter(out).copy_out_response();
    BackendWriter(out).copy_data(&first);
    let mut bytes = first.len() as u64;
    send(stream, out).await?;
    while let Some(chunk) = rx.recv().await {
        bytes += chunk.len() as u64;
        BackendWriter(out).copy_data(&chunk);
        send(stream, out).await?;
    }
    let ok = match writer.await {
        Ok(Ok(stats)) => {
            BackendWriter(out).copy_done();
            BackendWriter(out).command_complete("COPY 0");
            log_backup(timeline.id(), lsn, kind, &stats, started.elapsed());
            true
        }
        Ok(Err(e)) => {
            // Mid-stream: the tar is cut short; the error ends the copy.
            BackendWriter(out).error(sqlstate::INTERNAL_ERROR, &format!("backup failed: {e}"), None);
            false
        }
        Err(e) => {
            BackendWriter(out).error(sqlstate::INTERNAL_ERROR, &e.to_string(), None);
            false
        }
    };
    Ok((bytes, ok))
}

/// One line per backup sent: its size and time, and where the time of its
/// relation pages went (see `storage::repo::BulkReadStats`).
fn log_backup(timeline: TimelineId, lsn: Lsn, kind: BackupKind, stats: &storage::backup::BackupStats, elapsed: Duration) {
    let r = &stats.reads;
    tracing::info!(
        "{kind:?} of timeline {timeline} at {lsn}: {} MB in {:.1} s; {} relation blocks, {} rebuilt by redo ({} records); \
         reading threads: {:.1} s gathering, {:.1} s in redo; the tar waited {:.1} s for pages",
        stats.tar_bytes / 1_000_000,
        elapsed.as_secs_f64(),
        stats.rel_blocks,
        r.redone,
        r.records,
        r.gather.as_secs_f64(),
        r.redo.as_secs_f64(),
        r.waited.as_secs_f64(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_clear_errors() {
        let t = "0123456789abcdef0123456789abcdef";
        assert!(matches!(
            parse_command(&format!("pagestream_v2 {t} {t}")),
            Ok(Some(Command::Pagestream { version: ProtocolVersion::V2, .. }))
        ));
        assert!(matches!(
            parse_command(&format!("fullbackup {t} {t} 0/16B3748")),
            Ok(Some(Command::Backup { kind: BackupKind::Fullbackup, lsn: Some(Lsn(0x16B3748)), .. }))
        ));
        assert!(matches!(
            parse_command(&format!("clonebackup {t} {t} 0/16B3748")),
            Ok(Some(Command::Backup { kind: BackupKind::Clonebackup, lsn: Some(Lsn(0x16B3748)), .. }))
        ));
        assert_eq!(parse_command("SELECT 1"), Ok(None));
        assert!(parse_command(&format!("pagestream_v3 nope {t}")).unwrap_err().contains("invalid tenant id"));
        assert!(parse_command(&format!("basebackup {t}")).unwrap_err().contains("missing timeline id"));
        assert!(parse_command(&format!("basebackup {t} {t} zz")).unwrap_err().contains("invalid LSN"));
        assert!(parse_command(&format!("pagestream_v2 {t} {t} extra")).unwrap_err().contains("too many"));
    }

    #[test]
    fn request_lsns_are_validated_and_read_as_neon_reads_them() {
        let hdr = |request: u64, since: u64| RequestHeader { reqid: 0, request_lsn: Lsn(request), not_modified_since: Lsn(since) };
        let last = Lsn(0x5000);
        let err = read_at(&hdr(0x4000, 0x4800), last).unwrap_err();
        assert_eq!(err, "invalid request with request LSN 0/4000 and not_modified_since 0/4800");
        // Unchanged since an ingested LSN: read now, at the request LSN or what is ingested.
        assert_eq!(read_at(&hdr(0x4000, 0x3000), last), Ok(ReadAt::Ingested(Lsn(0x4000))));
        assert_eq!(read_at(&hdr(0x9000, 0x3000), last), Ok(ReadAt::Ingested(last)));
        assert_eq!(read_at(&hdr(u64::MAX, 0), last), Ok(ReadAt::Ingested(last)));
        // Changed after what is ingested: wait for not_modified_since.
        assert_eq!(read_at(&hdr(0x9000, 0x6000), last), Ok(ReadAt::After(Lsn(0x6000))));
        assert_eq!(read_at(&hdr(u64::MAX, 0x6000), last), Ok(ReadAt::After(Lsn(0x6000))));
    }

    #[test]
    fn lsns_just_after_a_page_header_read_at_the_boundary() {
        assert_eq!(normalize_lsn(Lsn(0x1_0000_2018)), Lsn(0x1_0000_2000));
        assert_eq!(normalize_lsn(Lsn(0x0300_0028)), Lsn(0x0300_0000));
        assert_eq!(normalize_lsn(Lsn(0x0300_2028)), Lsn(0x0300_2028));
        assert_eq!(normalize_lsn(Lsn(0x0300_2040)), Lsn(0x0300_2040));
    }
}

//! The WAL receiver of a timeline: a tokio task that streams WAL from the
//! primary's replication slot and hands it to an ingest thread, which
//! decodes records and applies them to the timeline. Also the base-backup
//! import that bootstraps a timeline.
//!
//! Standby status updates report `write = last_record_lsn` and
//! `flush = disk_consistent_lsn`, so the primary keeps WAL in the slot
//! until it is durable here; after a crash, streaming restarts from
//! `disk_consistent_lsn` (what a restarted timeline's `last_record_lsn` is).
//! Lost connections are retried with exponential backoff (0.1 s to 10 s).

pub mod passfile;
pub mod replication;
pub mod tls;

use crate::timeline_handle::{TenantId, TimelineHandle};
use bytes::Bytes;
use replication::{ReplicationConn, StreamMessage};
use shared_mem::RemoteTable;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::lsn::Lsn;
use storage::repo::Timeline;
use storage::wal::WalStreamDecoder;
use storage::walingest::WalIngest;
use tokio_util::sync::CancellationToken;

/// How often a standby status update is sent while streaming.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// WAL chunks queued for the ingest thread; the receiver waits when it is full.
const INGEST_QUEUE: usize = 256;

/// The start LSN a base backup tar's `backup_label` names.
pub fn backup_label_lsn(path: &Path) -> Result<Lsn, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open basebackup_tar \"{}\": {e}", path.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let bad = |e: std::io::Error| format!("basebackup_tar \"{}\" is not a readable tar: {e}", path.display());
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().trim_start_matches("./").to_string();
        if name == "backup_label" {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(bad)?;
            return storage::import::parse_backup_label(&text).map_err(|e| format!("{}: backup_label: {e}", path.display()));
        }
    }
    Err(format!("basebackup_tar \"{}\" has no backup_label: is it the base.tar of pg_basebackup -Ft?", path.display()))
}

/// Reads chunks of a tar stream from a channel (the import thread's side).
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.current = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Streams `BASE_BACKUP` from the timeline's primary into the timeline at
/// the backup's start LSN, then makes it durable. Returns the start LSN.
pub async fn import_base_backup(entry: &Arc<TimelineHandle>) -> Result<Lsn, String> {
    let source = entry.source.lock().clone().ok_or("timeline has no source")?;
    if let Some(path) = source.basebackup_tar.clone() {
        return import_tar_file(entry, path).await;
    }
    let mut conn = ReplicationConn::connect(&source.conninfo).await.map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(64);
    let mut rx = Some(rx);
    let mut import: Option<std::thread::JoinHandle<Result<(), String>>> = None;
    let timeline = entry.timeline.clone();
    let status = entry.status.clone();
    let label = format!("pageserver_ext {}", timeline.id());
    let result = conn
        .base_backup(
            &label,
            &mut |lsn, total| {
                status.import.bytes_total.store(total, Ordering::Relaxed);
                let rx = rx.take().expect("BASE_BACKUP starts once");
                let timeline = timeline.clone();
                let status = status.clone();
                import = Some(std::thread::spawn(move || {
                    let mut writer = timeline.writer();
                    let reader = ChannelReader { rx, current: Bytes::new() };
                    storage::import::import_basebackup_tar(&mut writer, reader, lsn, &status.import).map_err(|e| e.to_string())?;
                    writer.freeze().map_err(|e| e.to_string())?;
                    Ok(())
                }));
            },
            &mut |chunk| tokio::task::block_in_place(|| tx.send(chunk).map_err(|_| "the import stopped".to_string())),
        )
        .await;
    drop(tx);
    let imported = match import {
        Some(handle) => tokio::task::spawn_blocking(move || handle.join().unwrap_or_else(|_| Err("the import thread panicked".into())))
            .await
            .unwrap_or_else(|e| Err(e.to_string())),
        None => Err("BASE_BACKUP sent no start position".into()),
    };
    let (start, _end) = match (result, imported) {
        (Err(e), _) => return Err(e.to_string()),
        (Ok(_), Err(e)) => return Err(e),
        (Ok(lsns), Ok(())) => lsns,
    };
    let tl = entry.timeline.clone();
    tokio::task::spawn_blocking(move || tl.flush_frozen_layers()).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    Ok(start)
}

/// Imports a base backup tar from a file at its `backup_label` start LSN.
async fn import_tar_file(entry: &Arc<TimelineHandle>, path: String) -> Result<Lsn, String> {
    let timeline = entry.timeline.clone();
    let status = entry.status.clone();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        status.import.bytes_total.store(total, Ordering::Relaxed);
        let label = backup_label_lsn(std::path::Path::new(&path))?;
        {
            let mut writer = timeline.writer();
            storage::import::import_basebackup_tar(&mut writer, std::io::BufReader::new(file), label, &status.import)
                .map_err(|e| e.to_string())?;
            writer.freeze().map_err(|e| e.to_string())?;
        }
        timeline.flush_frozen_layers().map_err(|e| e.to_string())?;
        Ok(label)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Streams WAL for the timeline until `cancel` (a session in progress ends
/// there; its ingest thread finishes the WAL it was given).
pub async fn run(cancel: CancellationToken, tenant: TenantId, entry: Arc<TimelineHandle>, remote: Option<&'static RemoteTable>) {
    let mut backoff = BACKOFF_MIN;
    let mut last_logged: Option<String> = None;
    let id = entry.timeline.id();
    let mut sessions = 0u64;
    while !cancel.is_cancelled() {
        if sessions > 0 {
            entry.status.receiver.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        sessions += 1;
        let started = Instant::now();
        let result = tokio::select! {
            _ = cancel.cancelled() => break,
            result = stream_once(tenant, &entry, remote) => result,
        };
        entry.status.receiver.connected.store(false, Ordering::Relaxed);
        let message = match result {
            Ok(()) => "the primary ended the replication stream".to_string(),
            Err(e) => e,
        };
        if last_logged.as_deref() != Some(message.as_str()) {
            tracing::warn!("timeline {tenant}/{id}: WAL receiver: {message}; reconnecting");
            last_logged = Some(message.clone());
        }
        *entry.status.receiver.last_error.lock() = Some(message);
        if started.elapsed() > Duration::from_secs(30) {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The flush position told to the primary, below which it may drop WAL:
/// what is durable on local disk, or, with object storage configured, what
/// is durable in the bucket (the backup worker's `remote_consistent_lsn`;
/// 0 until it has published one, which the primary takes as "no news" and
/// so keeps its slot where it is).
fn flush_to_report(tenant: TenantId, timeline: &Timeline, remote: Option<&RemoteTable>) -> Lsn {
    let local = timeline.disk_consistent_lsn();
    let Some(table) = remote else { return local };
    let in_bucket = table.find(tenant.0, timeline.id().0).map_or(Lsn(0), |slot| Lsn(slot.remote_consistent_lsn()));
    timeline.set_remote_consistent_lsn(in_bucket);
    in_bucket.min(local)
}

/// One replication session: connect, check, stream until an error.
async fn stream_once(tenant: TenantId, entry: &Arc<TimelineHandle>, remote: Option<&'static RemoteTable>) -> Result<(), String> {
    let source = entry.source.lock().clone().ok_or("timeline has no source")?;
    let mut conn = ReplicationConn::connect(&source.conninfo).await.map_err(|e| e.to_string())?;
    let system = conn.identify_system().await.map_err(|e| e.to_string())?;
    if system.system_id != source.system_id {
        return Err(format!(
            "wrong system identifier: the primary has {} but the timeline was created from system {}; \
             the connection string now points at another cluster",
            system.system_id, source.system_id
        ));
    }
    entry.status.receiver.primary_lsn.fetch_max(system.xlogpos.0, Ordering::Relaxed);
    let timeline = entry.timeline.clone();
    let start = timeline.last_record_lsn();
    conn.start_replication(&source.slot, start, source.pg_timeline).await.map_err(|e| e.to_string())?;
    entry.status.receiver.connected.store(true, Ordering::Relaxed);
    *entry.status.receiver.last_error.lock() = None;

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(INGEST_QUEUE);
    let ingest_timeline = timeline.clone();
    let sysid = source.system_id;
    let mut ingest = tokio::task::spawn_blocking(move || ingest_loop(&ingest_timeline, start, sysid, rx));
    let mut expected = start;
    let mut next_status = Instant::now();
    let result = loop {
        let wait = next_status.saturating_duration_since(Instant::now());
        // next_message only awaits socket reads into its buffer, so a timeout never loses a message.
        match tokio::time::timeout(wait, conn.next_message()).await {
            Err(_) => {
                // Asking for a reply makes an idle primary answer with its
                // WAL end each interval, which dates how far ingest is
                // caught up (`ReceiverStatus::caught_up_unix_ms`).
                let (write, flush) = (timeline.last_record_lsn(), flush_to_report(tenant, &timeline, remote));
                if let Err(e) = conn.send_status(write, flush, write, true).await {
                    break Err(e.to_string());
                }
                next_status = Instant::now() + STATUS_INTERVAL;
            }
            Ok(Err(e)) => break Err(e.to_string()),
            Ok(Ok(None)) => break Ok(()),
            Ok(Ok(Some(StreamMessage::XLogData { start, wal_end, data }))) => {
                if start != expected {
                    break Err(format!("WAL gap: expected data at {expected}, the primary sent {start}"));
                }
                expected = Lsn(start.0 + data.len() as u64);
                entry.status.receiver.primary_lsn.fetch_max(wal_end.0.max(expected.0), Ordering::Relaxed);
                entry.status.receiver.wal_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                entry.status.receiver.heard(timeline.last_record_lsn().0);
                if tx.send(data).await.is_err() {
                    break Err("the ingest thread stopped".into());
                }
            }
            Ok(Ok(Some(StreamMessage::Keepalive { wal_end, reply_requested }))) => {
                entry.status.receiver.primary_lsn.fetch_max(wal_end.0, Ordering::Relaxed);
                entry.status.receiver.heard(timeline.last_record_lsn().0);
                if reply_requested {
                    let (write, flush) = (timeline.last_record_lsn(), flush_to_report(tenant, &timeline, remote));
                    if let Err(e) = conn.send_status(write, flush, write, false).await {
                        break Err(e.to_string());
                    }
                }
            }
        }
        if ingest.is_finished() {
            break Err("the ingest thread stopped".into());
        }
    };
    drop(tx);
    let ingested = (&mut ingest).await.unwrap_or_else(|e| Err(format!("ingest thread failed: {e}")));
    match (result, ingested) {
        (_, Err(e)) => Err(format!("ingest failed: {e}")),
        (r, Ok(())) => r,
    }
}

/// Decodes WAL chunks and applies the records to the timeline.
fn ingest_loop(timeline: &Timeline, start: Lsn, sysid: u64, mut rx: tokio::sync::mpsc::Receiver<Bytes>) -> Result<(), String> {
    let mut decoder = WalStreamDecoder::new(start).with_system_id(sysid);
    let mut ingest = WalIngest::new(timeline).map_err(|e| e.to_string())?;
    while let Some(chunk) = rx.blocking_recv() {
        decoder.feed(&chunk);
        let mut writer = timeline.writer();
        while let Some(record) = decoder.next_record().map_err(|e| e.to_string())? {
            ingest.ingest(&mut writer, &record).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

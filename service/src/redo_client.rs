//! Page reconstruction for the repository ([`storage::repo::Redo`]): runs of
//! PostgreSQL records go through the shared-memory queue to a redo worker
//! (a bulk read's pages in batches, many pages per round trip);
//! project records (CLOG bits, visibility-map clears, multixacts) are
//! applied in Rust on this thread without a round trip.
//!
//! Called from the main worker's threads (page service, ingest): the queue
//! needs no PostgreSQL call, only atomics and futexes on shared memory.

use bytes::Bytes;
use shared_mem::redo_queue::{BatchItem, RedoCallError, RedoRecord, RedoReply, RedoRequest, RelBlock};
use shared_mem::RedoQueue;
use std::time::Duration;
use storage::key::{Key, KeyClass};
use storage::lsn::Lsn;
use storage::repo::{Redo, RedoError, RedoFailure, RedoItem};
use storage::value::{RecordPayload, WalRecordValue};

const PAGE: usize = pg_constants::BLCKSZ;

/// The repository's redo: the host's redo workers plus Rust for project records.
pub struct QueueRedo {
    queue: &'static RedoQueue,
    timeout: Duration,
}

impl QueueRedo {
    pub fn new(queue: &'static RedoQueue, timeout: Duration) -> QueueRedo {
        QueueRedo { queue, timeout }
    }

    fn call_postgres(&self, key: Key, page: Option<[u8; PAGE]>, run: &[(Lsn, WalRecordValue)]) -> Result<[u8; PAGE], RedoError> {
        let Some(target) = target(key) else {
            return Err(RedoError::Invalid(format!("PostgreSQL records on key {key}, which is not a relation block")));
        };
        let request = RedoRequest { target, base_image: page.map(Box::new), records: queue_records(run)?, flags: 0 };
        self.queue.call(&request, self.timeout).map_err(redo_error)
    }
}

/// The kind of a failed redo call, for the repository and its callers.
pub fn redo_error(e: RedoCallError) -> RedoError {
    match e {
        RedoCallError::Timeout { waited } => RedoError::Timeout(waited),
        RedoCallError::WorkerDied { worker, reason } => RedoError::WorkerDied { worker, reason: reason.to_string() },
        RedoCallError::Redo { lsn, rmgr, message, rejected } => RedoFailure { lsn, rmgr, message, rejected }.into(),
        other @ (RedoCallError::TooLarge { .. } | RedoCallError::NoWorkers | RedoCallError::Cancelled | RedoCallError::BadReply { .. }) => {
            RedoError::Unavailable(other.to_string())
        }
    }
}

/// The start LSN of a record that ends at `end`, as far as the page server
/// needs it: layers keep only end LSNs. `end - MAXALIGN(xl_tot_len)` is the
/// start unless the record crossed page headers, in which case it lies a
/// little after the true start, still after the previous record's end (the
/// order the redo worker checks); redo routines use the end LSN.
fn approximate_start(end: Lsn, raw: &Bytes) -> u64 {
    let total = raw.get(0..4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).unwrap_or(0) as u64;
    end.0.saturating_sub((total + 7) & !7)
}

/// A run of PostgreSQL records as the queue takes it.
fn queue_records(run: &[(Lsn, WalRecordValue)]) -> Result<Vec<RedoRecord<Bytes>>, String> {
    run.iter()
        .map(|(end, rec)| match &rec.rec {
            RecordPayload::Postgres { raw, .. } => {
                Ok(RedoRecord { start_lsn: approximate_start(*end, raw), end_lsn: end.0, raw: raw.clone() })
            }
            RecordPayload::Project(_) => Err("internal: project record in a PostgreSQL run".to_string()),
        })
        .collect()
}

/// The queue's target block for `key`, if it is a relation block.
fn target(key: Key) -> Option<RelBlock> {
    match key.classify() {
        Some(KeyClass::RelBlock { rel, blkno }) => {
            Some(RelBlock { spc_node: rel.spc_node, db_node: rel.db_node, rel_node: rel.rel_node, fork: rel.fork, blkno })
        }
        _ => None,
    }
}

/// A page of a batch, prepared: the base borrowed from the item, the
/// records in the queue's form.
struct Prepared<'a> {
    index: usize,
    target: RelBlock,
    base: Option<&'a [u8; PAGE]>,
    records: Vec<RedoRecord<Bytes>>,
}

impl QueueRedo {
    /// Sends `batch` in one round trip and stores each page's outcome.
    fn send_batch(&self, batch: &[Prepared<'_>], results: &mut [Option<Result<Bytes, RedoError>>]) {
        let items: Vec<BatchItem<'_, Bytes>> =
            batch.iter().map(|p| BatchItem { target: p.target, base_image: p.base, records: &p.records }).collect();
        match self.queue.call_batch(&items, self.timeout) {
            Ok(replies) => {
                for (prepared, reply) in batch.iter().zip(replies) {
                    results[prepared.index] = Some(match reply {
                        RedoReply::Ok(page) => Ok(Bytes::from(page as Box<[u8]>)),
                        RedoReply::Err { lsn, rmgr, message, rejected } => Err(RedoFailure { lsn, rmgr, message, rejected }.into()),
                    });
                }
            }
            Err(e) => {
                let error = redo_error(e);
                for prepared in batch {
                    results[prepared.index] = Some(Err(error.clone()));
                }
            }
        }
    }
}

impl Redo for QueueRedo {
    /// Pages whose records are all PostgreSQL records go to the redo
    /// workers in batches, as many pages per round trip as fit in a queue
    /// slot (about 30); the others (project records, a page whose records
    /// alone fill a slot) one by one through [`Redo::apply`].
    fn apply_many(&self, items: &[RedoItem<'_>]) -> Vec<Result<Bytes, RedoError>> {
        let mut results: Vec<Option<Result<Bytes, RedoError>>> = (0..items.len()).map(|_| None).collect();
        let mut batch: Vec<Prepared<'_>> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let base = match item.base {
                Some(b) => match <&[u8; PAGE]>::try_from(b.as_ref()) {
                    Ok(page) => Some(page),
                    Err(_) => continue, // apply() below reports the bad size
                },
                None => None,
            };
            let (Some(target), Ok(records)) = (target(item.key), queue_records(item.records)) else { continue };
            let prepared = Prepared { index, target, base, records };
            let fits = |batch: &[Prepared<'_>], extra: &Prepared<'_>| {
                let mut items: Vec<BatchItem<'_, Bytes>> =
                    batch.iter().map(|p| BatchItem { target: p.target, base_image: p.base, records: &p.records }).collect();
                items.push(BatchItem { target: extra.target, base_image: extra.base, records: &extra.records });
                RedoQueue::batch_fits(&items)
            };
            if !fits(&[], &prepared) {
                continue; // too large to batch: chunked by apply() below
            }
            if !fits(&batch, &prepared) {
                self.send_batch(&batch, &mut results);
                batch.clear();
            }
            batch.push(prepared);
        }
        if !batch.is_empty() {
            self.send_batch(&batch, &mut results);
        }
        results
            .into_iter()
            .zip(items)
            .map(|(result, item)| result.unwrap_or_else(|| self.apply(item.key, item.base.clone(), item.records)))
            .collect()
    }

    fn apply(&self, key: Key, base: Option<Bytes>, records: &[(Lsn, WalRecordValue)]) -> Result<Bytes, RedoError> {
        let mut page: Option<[u8; PAGE]> = match base {
            Some(b) => Some(b.as_ref().try_into().map_err(|_| format!("base image of {key} has {} bytes, not {PAGE}", b.len()))?),
            None => None,
        };
        let mut i = 0;
        while i < records.len() {
            match &records[i].1.rec {
                RecordPayload::Project(project) => {
                    let p = page.get_or_insert([0u8; PAGE]);
                    storage::project_redo::apply_project_record(key, records[i].0, p, project)?;
                    i += 1;
                }
                RecordPayload::Postgres { .. } => {
                    let end =
                        records[i..].iter().position(|(_, r)| matches!(r.rec, RecordPayload::Project(_))).map_or(records.len(), |n| i + n);
                    page = Some(self.call_postgres(key, page, &records[i..end])?);
                    i = end;
                }
            }
        }
        page.map(|p| Bytes::copy_from_slice(&p)).ok_or_else(|| RedoError::Invalid(format!("no base and no records for {key}")))
    }
}

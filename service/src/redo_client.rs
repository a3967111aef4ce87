//! Page reconstruction for the repository ([`storage::repo::Redo`]): runs of
//! PostgreSQL records go through the shared-memory queue to a redo worker;
//! project records (CLOG bits, visibility-map clears, multixacts) are
//! applied in Rust on this thread without a round trip.
//!
//! Called from the main worker's threads (page service, ingest): the queue
//! needs no PostgreSQL call, only atomics and futexes on shared memory.

use bytes::Bytes;
use shared_mem::redo_queue::{RedoCallError, RedoRecord, RedoRequest, RelBlock};
use shared_mem::RedoQueue;
use std::time::Duration;
use storage::key::{Key, KeyClass};
use storage::lsn::Lsn;
use storage::repo::{Redo, RedoError, RedoFailure};
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
        let Some(KeyClass::RelBlock { rel, blkno }) = key.classify() else {
            return Err(RedoError::Invalid(format!("PostgreSQL records on key {key}, which is not a relation block")));
        };
        let records = run
            .iter()
            .map(|(end, rec)| match &rec.rec {
                RecordPayload::Postgres { raw, .. } => {
                    Ok(RedoRecord { start_lsn: approximate_start(*end, raw), end_lsn: end.0, raw: raw.clone() })
                }
                RecordPayload::Project(_) => Err("internal: project record in a PostgreSQL run".to_string()),
            })
            .collect::<Result<Vec<_>, String>>()?;
        let request = RedoRequest {
            target: RelBlock { spc_node: rel.spc_node, db_node: rel.db_node, rel_node: rel.rel_node, fork: rel.fork, blkno },
            base_image: page.map(Box::new),
            records,
            flags: 0,
        };
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

impl Redo for QueueRedo {
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

//! Reconstruction: from the versions a read gathered to one value.
//!
//! A read walks the layers downward from its LSN and hands each version to a
//! [`Collector`] (newest first) until a page image or a will-init record ends
//! the walk. The records above that base are then applied in increasing LSN
//! order by a [`Redo`] implementation: the redo workers for PostgreSQL
//! records, Rust code for project records (implemented outside this module;
//! tests use a Rust-only one).

use bytes::Bytes;

use crate::checksum;
use crate::key::{Key, KeyClass};
use crate::lsn::Lsn;
use crate::value::{Value, WalRecordValue};
use crate::wal::BLCKSZ;

/// Applies WAL records to a base value.
pub trait Redo: Send + Sync {
    /// Applies `records` (increasing LSN) to `base` (`None` when the first
    /// record is will-init, or when no older version exists) and returns the
    /// value of `key` after the last record.
    fn apply(&self, key: Key, base: Option<Bytes>, records: &[(Lsn, WalRecordValue)]) -> Result<Bytes, RedoError>;

    /// [`apply`](Self::apply) for several keys at once (a bulk read's), one
    /// result per item in order. By default one `apply` each; the redo
    /// workers' implementation sends many pages per round trip.
    fn apply_many(&self, items: &[RedoItem<'_>]) -> Vec<Result<Bytes, RedoError>> {
        items.iter().map(|item| self.apply(item.key, item.base.clone(), item.records)).collect()
    }
}

/// One key's redo in [`Redo::apply_many`]: as the arguments of [`Redo::apply`].
#[derive(Clone, Copy, Debug)]
pub struct RedoItem<'a> {
    pub key: Key,
    pub base: &'a Option<Bytes>,
    pub records: &'a [(Lsn, WalRecordValue)],
}

/// Why PostgreSQL's redo of a record failed (in a redo worker), naming the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redo of {} record at {} failed: {message}", crate::wal::rmgr::name(*rmgr), Lsn(*lsn))]
pub struct RedoFailure {
    /// Start LSN of the record.
    pub lsn: u64,
    /// Its resource manager id.
    pub rmgr: u8,
    pub message: String,
    /// The record was refused by the checks before redo (malformed, not a
    /// page-level resource manager, out of order, a base page that cannot
    /// be the record's); otherwise PostgreSQL's redo raised `ERROR`, or its
    /// result failed the check after redo.
    pub rejected: bool,
}

/// Why a [`Redo`] could not produce a value: the kinds a caller may treat
/// differently (retry later, report a dead worker, report bad data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedoError {
    /// No answer within the redo timeout (waiting for a free slot included).
    #[error("redo timed out after {:.1} s", .0.as_secs_f64())]
    Timeout(std::time::Duration),
    /// The redo worker died or gave up on the request (after one retry on another).
    #[error("redo worker {worker} died: {reason}")]
    WorkerDied { worker: usize, reason: String },
    /// A record was refused before redo.
    #[error("record rejected before redo: {0}")]
    Rejected(RedoFailure),
    /// PostgreSQL's redo of a record raised `ERROR` (or its result was wrong).
    #[error("{0}")]
    Failed(RedoFailure),
    /// The request could not be made or its answer read (no redo workers, a
    /// request too large for the queue, a malformed reply, a cancel).
    #[error("{0}")]
    Unavailable(String),
    /// The input cannot be redone (a project record that does not fit its
    /// page, a base image of the wrong size, records of the wrong kind).
    #[error("{0}")]
    Invalid(String),
}

impl From<RedoFailure> for RedoError {
    fn from(f: RedoFailure) -> RedoError {
        if f.rejected {
            RedoError::Rejected(f)
        } else {
            RedoError::Failed(f)
        }
    }
}

impl From<String> for RedoError {
    /// A failure of the caller's own checks: [`RedoError::Invalid`].
    fn from(message: String) -> RedoError {
        RedoError::Invalid(message)
    }
}

impl From<&str> for RedoError {
    fn from(message: &str) -> RedoError {
        RedoError::Invalid(message.to_string())
    }
}

/// A base (if any) and the records to apply to it, in increasing LSN order.
pub(crate) type RedoInput = (Option<Bytes>, Vec<(Lsn, WalRecordValue)>);

/// The versions gathered by one read.
#[derive(Default, Debug)]
pub(crate) struct Collector {
    /// Newest first.
    pub records: Vec<(Lsn, WalRecordValue)>,
    pub base: Option<(Lsn, Bytes)>,
    pub done: bool,
    /// A cached value at this LSN: versions at or below it are not needed.
    pub floor: Option<(Lsn, Bytes)>,
}

impl Collector {
    /// Takes the versions of one layer, given in increasing LSN order; returns
    /// true once the walk can stop.
    pub fn add_ascending(&mut self, versions: Vec<(Lsn, Value)>) -> bool {
        for (lsn, value) in versions.into_iter().rev() {
            if self.done {
                break;
            }
            if self.floor.as_ref().is_some_and(|(floor, _)| lsn <= *floor) {
                self.stop_at_floor();
                break;
            }
            match value {
                Value::Image(page) => {
                    self.base = Some((lsn, page));
                    self.done = true;
                }
                Value::WalRecord(record) => {
                    self.done = record.will_init;
                    self.records.push((lsn, record));
                }
            }
        }
        self.done
    }

    /// True once the walk has nothing left above the floor below `cont` (exclusive).
    pub fn reached_floor(&mut self, cont: Lsn) -> bool {
        if !self.done && self.floor.as_ref().is_some_and(|(floor, _)| cont <= *floor + 1) {
            self.stop_at_floor();
        }
        self.done
    }

    fn stop_at_floor(&mut self) {
        debug_assert!(!self.done);
        if let Some(floor) = self.floor.take() {
            self.base = Some(floor);
            self.done = true;
        }
    }

    /// The walk ran out of layers: a floor not yet reached is the base (no
    /// version lies between it and the records gathered).
    pub fn end_of_walk(&mut self) {
        if !self.done {
            self.stop_at_floor();
        }
    }

    /// What the walk found: the value if no redo is needed (`None` if the
    /// key has no version), otherwise the base and the records in
    /// increasing LSN order.
    pub fn into_redo_input(mut self) -> std::result::Result<Option<Bytes>, RedoInput> {
        if self.records.is_empty() {
            return Ok(self.base.map(|(_, page)| page));
        }
        self.records.reverse();
        Err((self.base.map(|(_, page)| page), self.records))
    }

    /// Runs redo; `None` if the key has no version.
    pub fn reconstruct(mut self, key: Key, redo: &dyn Redo) -> Result<Option<Bytes>, (Lsn, RedoError)> {
        if self.records.is_empty() {
            return Ok(self.base.map(|(_, page)| page));
        }
        self.records.reverse();
        let last_lsn = self.records.last().map(|(lsn, _)| *lsn).unwrap_or_default();
        redo.apply(key, self.base.map(|(_, page)| page), &self.records).map(Some).map_err(|msg| (last_lsn, msg))
    }
}

/// `value` with a valid data-page checksum if `key` is a relation block
/// (other keys, and values that are not 8 KiB pages, are returned as they are).
pub(crate) fn with_checksum(key: Key, value: Bytes) -> Bytes {
    let Some(KeyClass::RelBlock { blkno, .. }) = key.classify() else { return value };
    let Ok(page) = <&[u8; BLCKSZ]>::try_from(value.as_ref()) else { return value };
    if checksum::page_is_new(page) {
        return value;
    }
    let sum = checksum::page_checksum(page, blkno);
    if checksum::stored_checksum(page) == sum {
        return value;
    }
    let mut page = Box::new(*page);
    checksum::store_checksum(&mut page, sum);
    Bytes::from(page as Box<[u8]>)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::RecordPayload;

    fn record(will_init: bool) -> Value {
        Value::WalRecord(WalRecordValue { will_init, rec: RecordPayload::Postgres { target_block_id: 0, raw: Bytes::new() } })
    }

    #[test]
    fn stops_at_image_will_init_or_floor() {
        let mut c = Collector::default();
        assert!(!c.add_ascending(vec![(Lsn(1), record(false)), (Lsn(2), record(false))]));
        assert!(c.add_ascending(vec![(Lsn(0), Value::Image(Bytes::from_static(b"base")))]));
        assert_eq!(c.records.iter().map(|r| r.0).collect::<Vec<_>>(), vec![Lsn(2), Lsn(1)]);

        let mut c = Collector::default();
        assert!(c.add_ascending(vec![(Lsn(1), record(false)), (Lsn(2), record(true)), (Lsn(3), record(false))]));
        assert_eq!(c.records.len(), 2);
        assert!(c.base.is_none());

        // Versions at or below the floor are not taken; the floor becomes the base.
        let mut c = Collector { floor: Some((Lsn(5), Bytes::from_static(b"cached"))), ..Collector::default() };
        assert!(c.add_ascending(vec![(Lsn(4), Value::Image(Bytes::from_static(b"old"))), (Lsn(6), record(false))]));
        assert_eq!(c.base, Some((Lsn(5), Bytes::from_static(b"cached"))));
        assert_eq!(c.records.len(), 1);

        // An image above the floor wins, also when the walk then passes the floor.
        let mut c = Collector { floor: Some((Lsn(5), Bytes::from_static(b"cached"))), ..Collector::default() };
        assert!(c.add_ascending(vec![(Lsn(7), Value::Image(Bytes::from_static(b"new")))]));
        assert!(c.reached_floor(Lsn(3)));
        assert_eq!(c.base, Some((Lsn(7), Bytes::from_static(b"new"))));

        // Out of layers before the floor: the floor is the base.
        let mut c = Collector { floor: Some((Lsn(5), Bytes::from_static(b"cached"))), ..Collector::default() };
        assert!(!c.add_ascending(vec![(Lsn(9), record(false))]));
        assert!(!c.reached_floor(Lsn(9)));
        c.end_of_walk();
        assert_eq!(c.base.map(|b| b.0), Some(Lsn(5)));
    }
}

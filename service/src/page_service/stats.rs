//! Counters of the page service, for `pageserver.stat_page_service`:
//! connections (accepted, open now, ended before a session started), and
//! per kind of request (pagestream's exists, nblocks, getpage, dbsize and
//! getslru; basebackup and fullbackup) how many, how many failed, the bytes
//! answered, the time spent, and a latency histogram. Plain atomics: a
//! request costs a few relaxed increments.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (inclusive, µs) of the latency buckets; the last one takes the rest.
pub const LATENCY_BOUNDS_US: [u64; 12] = [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000, u64::MAX];

/// What a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Exists,
    Nblocks,
    GetPage,
    DbSize,
    GetSlruSegment,
    Basebackup,
    Fullbackup,
    Clonebackup,
}

impl RequestKind {
    pub const ALL: [RequestKind; 8] = [
        RequestKind::Exists,
        RequestKind::Nblocks,
        RequestKind::GetPage,
        RequestKind::DbSize,
        RequestKind::GetSlruSegment,
        RequestKind::Basebackup,
        RequestKind::Fullbackup,
        RequestKind::Clonebackup,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Exists => "exists",
            RequestKind::Nblocks => "nblocks",
            RequestKind::GetPage => "getpage",
            RequestKind::DbSize => "dbsize",
            RequestKind::GetSlruSegment => "getslru",
            RequestKind::Basebackup => "basebackup",
            RequestKind::Fullbackup => "fullbackup",
            RequestKind::Clonebackup => "clonebackup",
        }
    }
}

#[derive(Default)]
struct KindCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    total_us: AtomicU64,
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len()],
}

/// The page service's counters since the main worker started.
#[derive(Default)]
pub struct PageServiceStats {
    accepted: AtomicU64,
    open: AtomicU64,
    no_session: AtomicU64,
    kinds: [KindCounters; RequestKind::ALL.len()],
}

/// One row of `pageserver.stat_page_service`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatRow {
    /// `connections`, or a request kind.
    pub kind: String,
    /// Connections accepted, or requests answered.
    pub requests: u64,
    /// Connections that ended before a session started (refused, broken,
    /// a cancel request), or requests answered with an error.
    pub errors: u64,
    /// Bytes of the answers (None for connections).
    pub bytes: Option<u64>,
    /// Connections open now (None for requests).
    pub open: Option<u64>,
    pub total_us: Option<u64>,
    /// Requests per latency bucket ([`LATENCY_BOUNDS_US`]).
    pub latency_buckets: Option<Vec<u64>>,
}

/// Counts an open connection until dropped.
pub struct OpenConnection<'a>(&'a PageServiceStats);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PageServiceStats {
    /// A connection was accepted; it counts as open while the guard lives.
    pub fn connection(&self) -> OpenConnection<'_> {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }

    /// A connection ended before a session started.
    pub fn no_session(&self) {
        self.no_session.fetch_add(1, Ordering::Relaxed);
    }

    /// One request answered: how long it took, the bytes of its answer, and
    /// whether the answer was an error.
    pub fn request(&self, kind: RequestKind, elapsed: Duration, bytes: u64, error: bool) {
        let c = &self.kinds[kind as usize];
        let us = elapsed.as_micros() as u64;
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.errors.fetch_add(error as u64, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
        c.total_us.fetch_add(us, Ordering::Relaxed);
        let bucket = LATENCY_BOUNDS_US.iter().position(|bound| us <= *bound).unwrap_or(LATENCY_BOUNDS_US.len() - 1);
        c.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rows(&self) -> Vec<StatRow> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut rows = vec![StatRow {
            kind: "connections".into(),
            requests: load(&self.accepted),
            errors: load(&self.no_session),
            bytes: None,
            open: Some(load(&self.open)),
            total_us: None,
            latency_buckets: None,
        }];
        for kind in RequestKind::ALL {
            let c = &self.kinds[kind as usize];
            rows.push(StatRow {
                kind: kind.name().into(),
                requests: load(&c.requests),
                errors: load(&c.errors),
                bytes: Some(load(&c.bytes)),
                open: None,
                total_us: Some(load(&c.total_us)),
                latency_buckets: Some(c.buckets.iter().map(load).collect()),
            });
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_kind_and_bucket_and_connections_close() {
        let stats = PageServiceStats::default();
        {
            let _a = stats.connection();
            let _b = stats.connection();
            assert_eq!(stats.rows()[0].open, Some(2));
        }
        stats.no_session();
        stats.request(RequestKind::GetPage, Duration::from_micros(50), 8192, false);
        stats.request(RequestKind::GetPage, Duration::from_micros(51), 8192, false);
        stats.request(RequestKind::GetPage, Duration::from_secs(5), 40, true);
        let rows = stats.rows();
        assert_eq!((rows[0].requests, rows[0].errors, rows[0].open), (2, 1, Some(0)));
        let getpage = rows.iter().find(|r| r.kind == "getpage").unwrap();
        assert_eq!((getpage.requests, getpage.errors, getpage.bytes), (3, 1, Some(16424)));
        let buckets = getpage.latency_buckets.clone().unwrap();
        assert_eq!((buckets[0], buckets[1], buckets[LATENCY_BOUNDS_US.len() - 1]), (1, 1, 1));
        assert_eq!(rows.iter().find(|r| r.kind == "exists").unwrap().requests, 0);
        assert_eq!(rows.len(), 1 + RequestKind::ALL.len());
    }
}

//! Runs of pipelined GetPage requests answered together.
//!
//! A client that pipelines many GetPage requests (a live clone's
//! read-ahead, a compute's prefetch) gets them answered by one batch read
//! ([`Timeline::get_many`]: exact-LSN hits from the page cache, layer
//! blocks read once per batch, redo requests sent together) on the
//! blocking pool, instead of one `get` after another on the connection's
//! task. One thread per batch: a bulk read's several threads per batch
//! starved WAL ingest under many clients (`ingest.lag_p99_ms` went from 53
//! to 560 ms in `service_bench`). Only runs of consecutive blocks are
//! batched ([`is_sequential_run`]): for random reads at the latest LSN the
//! batch read, which does not fill the page cache, was slower than `get`
//! (`pagebench.pages_s_latest_8x32` 0.64 of its floor instead of 0.78). The answers are the same: a block
//! past the fork's end is a zero page, a missing fork an error, and a
//! request the bulk read cannot serve (an LSN below the GC cutoff, a
//! failed redo) is answered on its own, so each gets its own error.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use storage::key::{Key, RelTag};
use storage::lsn::Lsn;
use storage::pagestream::{Request, Response};
use storage::repo::Timeline;

use super::commands::{answer, read_at, request_rel_size, ReadAt, ZERO_PAGE};

/// Fewer pending GetPage requests than this are answered one by one.
pub const MIN_BATCH: usize = 16;
/// At most this many are answered together.
pub const MAX_BATCH: usize = 1024;

/// Whether pending requests are worth one batch read: at least
/// [`MIN_BATCH`], three quarters of them for the block after the one before
/// (random reads, such as many computes' misses, are served one by one:
/// their pages are cached by `get`, which the batch read does not fill).
pub fn is_sequential_run(requests: &[Request]) -> bool {
    if requests.len() < MIN_BATCH {
        return false;
    }
    let next = requests
        .windows(2)
        .filter(|w| {
            matches!((w[0], w[1]), (Request::GetPage { rel: a, blkno: x, .. }, Request::GetPage { rel: b, blkno: y, .. }) if a == b && Some(y) == x.checked_add(1))
        })
        .count();
    next * 4 >= (requests.len() - 1) * 3
}

/// Answers GetPage `requests` (others are answered one by one), in order.
/// Blocking: run it on the blocking pool.
pub fn answer_getpages(timeline: &Timeline, requests: &[Request], wait_timeout: Duration) -> Vec<Response> {
    let last = timeline.last_record_lsn();
    let mut responses: Vec<Option<Response>> = vec![None; requests.len()];
    let mut by_lsn: BTreeMap<Lsn, Vec<usize>> = BTreeMap::new();
    for (i, request) in requests.iter().enumerate() {
        match (request, read_at(request.header(), last)) {
            (Request::GetPage { .. }, Ok(ReadAt::Ingested(lsn))) => by_lsn.entry(lsn).or_default().push(i),
            _ => responses[i] = Some(answer(timeline, request, wait_timeout)),
        }
    }
    let zero = Bytes::from_static(&ZERO_PAGE);
    for (lsn, indexes) in by_lsn {
        let mut sizes: HashMap<RelTag, Result<u32, String>> = HashMap::new();
        let (mut keys, mut keyed) = (Vec::new(), Vec::new());
        for i in indexes {
            let Request::GetPage { hdr, rel, blkno } = requests[i] else { unreachable!("only GetPage requests are grouped") };
            match sizes.entry(rel).or_insert_with(|| request_rel_size(timeline, rel, lsn)) {
                Err(message) => responses[i] = Some(requests[i].error_response(message.clone())),
                Ok(n) if blkno >= *n => responses[i] = Some(Response::GetPage { hdr, rel, blkno, page: zero.clone() }),
                Ok(_) => {
                    keys.push(Key::rel_block(rel, blkno));
                    keyed.push(i);
                }
            }
        }
        let read = timeline.get_many(&keys, lsn);
        for (n, &i) in keyed.iter().enumerate() {
            let Request::GetPage { hdr, rel, blkno } = requests[i] else { unreachable!("only GetPage requests are keyed") };
            responses[i] = Some(match read.as_ref().map(|pages| pages.get(n)) {
                Ok(Some(page)) => Response::GetPage { hdr, rel, blkno, page: page.clone().unwrap_or_else(|| zero.clone()) },
                // The bulk read failed: each request on its own, with its own error.
                _ => answer(timeline, &requests[i], wait_timeout),
            });
        }
    }
    responses.into_iter().map(|r| r.expect("every request is answered")).collect()
}

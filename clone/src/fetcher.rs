//! Page fetches: GetPage@LSN over pagestream v3, pipelined, on a small pool
//! of connections. A failed connection is dropped and the whole batch is
//! retried on a new one, with growing pauses, until `timeout` has passed
//! since the batch started; then the read fails (the file system answers
//! `EIO`) and the log says why. The page server never sees a write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use storage::key::RelTag;
use storage::lsn::Lsn;
use storage::pagestream::{ProtocolVersion, Request, RequestHeader, Response};

use crate::pagestream_client::{BlockingClient, ClientError, ConnectOptions};
use crate::stats::{add, Stats};

/// Why pages could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the page server did not answer {what} within {timeout:?}; last error: {last}")]
    TimedOut { what: String, timeout: Duration, last: String },
}

/// Where and what to fetch.
#[derive(Clone, Debug)]
pub struct FetchTarget {
    pub addr: String,
    pub tenant: String,
    pub timeline: String,
    pub lsn: Lsn,
    pub options: ConnectOptions,
}

pub struct Fetcher {
    target: FetchTarget,
    idle: Mutex<Vec<BlockingClient>>,
    timeout: Duration,
    stats: Arc<Stats>,
}

/// Idle connections kept; more may be open while many reads fetch at once.
const MAX_IDLE: usize = 8;

impl Fetcher {
    pub fn new(target: FetchTarget, timeout: Duration, stats: Arc<Stats>) -> Fetcher {
        Fetcher { target, idle: Mutex::new(Vec::new()), timeout, stats }
    }

    /// Blocks `blocks` of fork `rel` as of the clone's LSN, in that order.
    pub fn fetch(&self, rel: RelTag, blocks: &[u32]) -> Result<Vec<Bytes>, FetchError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        let mut attempt = 0u32;
        loop {
            match self.try_fetch(rel, blocks) {
                Ok(pages) => {
                    add(&self.stats.fetch_batches, 1);
                    add(&self.stats.blocks_fetched, blocks.len() as u64);
                    if attempt > 0 {
                        eprintln!(
                            "pageserver-clone: page server answered again after {attempt} retries ({:.1}s)",
                            started.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(pages);
                }
                Err(e) => {
                    attempt += 1;
                    add(&self.stats.fetch_retries, 1);
                    if attempt == 1 {
                        eprintln!(
                            "pageserver-clone: fetching {} blocks of {rel} failed, retrying for up to {:?}: {e}",
                            blocks.len(),
                            self.timeout
                        );
                    }
                    if started.elapsed() + pause > self.timeout {
                        add(&self.stats.fetch_failures, 1);
                        let what = format!("{} blocks of {rel} from block {}", blocks.len(), blocks.first().copied().unwrap_or(0));
                        let err = FetchError::TimedOut { what, timeout: self.timeout, last: e.to_string() };
                        eprintln!("pageserver-clone: I/O error returned to the reader: {err}");
                        return Err(err);
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn connection(&self) -> Result<BlockingClient, ClientError> {
        if let Some(c) = self.idle.lock().pop() {
            return Ok(c);
        }
        let t = &self.target;
        let mut options = t.options.clone();
        options.connect_timeout = options.connect_timeout.min(self.timeout);
        BlockingClient::connect_with(&t.addr, ProtocolVersion::V3, &t.tenant, &t.timeline, &options)
    }

    fn try_fetch(&self, rel: RelTag, blocks: &[u32]) -> Result<Vec<Bytes>, ClientError> {
        let mut client = self.connection()?;
        let hdr = RequestHeader { reqid: 0, request_lsn: self.target.lsn, not_modified_since: self.target.lsn };
        for (i, &blkno) in blocks.iter().enumerate() {
            client.queue(Request::GetPage { hdr: RequestHeader { reqid: i as u64, ..hdr }, rel, blkno });
        }
        client.flush()?;
        let mut pages = Vec::with_capacity(blocks.len());
        for _ in blocks {
            match client.recv_timeout(self.timeout)? {
                Response::GetPage { page, .. } => pages.push(page),
                Response::Error { message, .. } => {
                    return Err(ClientError::Protocol(format!("the page server answered GetPage with an error: {message}")));
                }
                other => return Err(ClientError::Protocol(format!("unexpected {} answer to GetPage", other.kind_name()))),
            }
        }
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(client);
        }
        Ok(pages)
    }
}

//! Log lines from threads that must not call PostgreSQL (tokio workers,
//! ingest, flush and compaction threads): they go through a channel, and
//! the main worker's PostgreSQL thread writes them to the server log.

use std::sync::mpsc;

/// Log lines from tokio threads, written to the server log by the main thread.
#[derive(Clone)]
pub struct LogSink(mpsc::Sender<LogLine>);

#[derive(Debug)]
pub enum LogLine {
    Log(String),
    Warning(String),
}

impl LogSink {
    pub fn new() -> (LogSink, mpsc::Receiver<LogLine>) {
        let (tx, rx) = mpsc::channel();
        (LogSink(tx), rx)
    }
    pub fn log(&self, msg: String) {
        let _ = self.0.send(LogLine::Log(msg));
    }
    pub fn warning(&self, msg: String) {
        let _ = self.0.send(LogLine::Warning(msg));
    }
}

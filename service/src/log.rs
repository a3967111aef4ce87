//! Logging from threads that must not call PostgreSQL (tokio workers, the
//! ingest, flush and command threads, the layers worker's pass thread).
//! Code logs with `tracing` (`tracing::info!`, `tracing::warn!`); a worker
//! process installs [`ServerLogLayer`] once ([`install`]), which hands each
//! event as a [`LogLine`] through a channel to the worker's PostgreSQL main
//! thread, and that thread writes it to the server log.
//!
//! Levels: `ERROR` and `WARN` become `WARNING` lines, `INFO` becomes `LOG`;
//! `DEBUG` and `TRACE` are dropped. An event's message comes first, its other
//! fields follow as ` name=value`.

use std::fmt::{self, Write as _};
use std::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// A line for the server log, and its level there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLine {
    Log(String),
    Warning(String),
}

/// A `tracing` layer that sends events to the PostgreSQL main thread.
pub struct ServerLogLayer {
    lines: mpsc::Sender<LogLine>,
}

impl ServerLogLayer {
    /// The layer and the end the main thread drains.
    pub fn new() -> (ServerLogLayer, mpsc::Receiver<LogLine>) {
        let (lines, rx) = mpsc::channel();
        (ServerLogLayer { lines }, rx)
    }
}

impl<S: Subscriber> Layer<S> for ServerLogLayer {
    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        *metadata.level() <= Level::INFO
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::INFO {
            return;
        }
        let mut text = EventText::default();
        event.record(&mut text);
        let line = text.finish();
        // The main thread may be gone while the process exits: nothing to do then.
        let _ = self.lines.send(if level <= Level::WARN { LogLine::Warning(line) } else { LogLine::Log(line) });
    }
}

/// Makes [`ServerLogLayer`] the subscriber of every thread of this process
/// (call once, on the worker's main thread, before starting threads);
/// returns the end the main thread drains.
pub fn install() -> Result<mpsc::Receiver<LogLine>, String> {
    let (layer, lines) = ServerLogLayer::new();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(lines)
}

/// An event's message followed by its other fields.
#[derive(Default)]
struct EventText {
    message: String,
    fields: String,
}

impl EventText {
    fn finish(self) -> String {
        self.message + &self.fields
    }
}

impl Visit for EventText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_server_log_lines_by_level() {
        let (layer, lines) = ServerLogLayer::new();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let addr = "127.0.0.1:6400";
            tracing::info!("page service listening on {addr}");
            tracing::warn!(timeline = "t1", attempt = 3, "flush failed");
            tracing::debug!("not for the server log");
            tracing::error!("redo worker {} died", 2);
        });
        let got: Vec<LogLine> = lines.try_iter().collect();
        assert_eq!(
            got,
            vec![
                LogLine::Log("page service listening on 127.0.0.1:6400".into()),
                LogLine::Warning("flush failed timeline=t1 attempt=3".into()),
                LogLine::Warning("redo worker 2 died".into()),
            ]
        );
    }
}

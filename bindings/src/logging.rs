//! The log sink across the FFI: the core's `tracing` events, delivered to the app's
//! logger (Logcat, Timber, os_log) so a failure in the field leaves a trace.
//!
//! Why it is built this way:
//! - Events are only queued where they happen (a bounded queue, `try_send`), and one
//!   thread of its own calls the app's logger. The core emits events while it holds its
//!   locks; a slow or re-entrant logger must never stall a write or deadlock. When the
//!   logger lags, records are dropped and counted, and the count is delivered as a
//!   record of its own once the queue has room.
//! - Only events of Outpost's own crates pass (targets `outpost_*`). The HTTP and TLS
//!   crates below the core log requests and frames at debug and trace level; what
//!   Outpost logs is audited to carry no record data, token or credentials, theirs is
//!   not.
//! - One subscriber is installed for the process on first use; the logger and level
//!   behind it can be replaced or cleared at any time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock, RwLock};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record as SpanRecord};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

use crate::error::OutpostError;

/// How much a log record matters, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, uniffi::Enum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn of(level: &tracing::Level) -> LogLevel {
        match *level {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }
}

/// Receives Outpost's log records, on a thread of Outpost's own, one at a time.
///
/// `target` names the part of Outpost that logged (e.g. `outpost_core::sync::push`).
/// Messages carry no record data and no token. Throwing is harmless: the record is lost
/// and the next one still arrives.
#[uniffi::export(callback_interface)]
pub trait OutpostLogger: Send + Sync {
    fn log(&self, level: LogLevel, target: String, message: String) -> Result<(), OutpostError>;
}

/// Records waiting for a slow logger; past this many, new ones are dropped and counted.
const QUEUE: usize = 1024;

/// The target of the records the sink writes itself.
const OWN_TARGET: &str = "outpost_ffi::logging";

/// Sends Outpost's log records at `level` and above to `logger`, replacing any logger
/// set before. Fails only when another `tracing` subscriber already owns this process
/// (something else in the app's native code installed one).
#[uniffi::export]
pub fn set_logger(logger: Box<dyn OutpostLogger>, level: LogLevel) -> Result<(), OutpostError> {
    let sink = sink()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let deliver = Delivery {
        logger,
        rx,
        dropped: Arc::clone(&dropped),
    };
    std::thread::Builder::new()
        .name("outpost-log".into())
        .spawn(move || deliver.run())
        .map_err(|e| OutpostError::Internal {
            detail: format!("could not start the log thread: {e}"),
        })?;
    // The old sender goes with the old slot: its thread delivers what it holds and ends.
    *write(&sink.slot) = Some(Slot { tx, dropped });
    sink.level.store(level as usize, Ordering::SeqCst);
    tracing::callsite::rebuild_interest_cache();
    Ok(())
}

/// Stops sending log records; the logger set last gets what was already queued.
#[uniffi::export]
pub fn clear_logger() {
    if let Some(Ok(sink)) = SINK.get() {
        sink.level.store(OFF, Ordering::SeqCst);
        *write(&sink.slot) = None;
        tracing::callsite::rebuild_interest_cache();
    }
}

/// `level` of a sink with no logger.
const OFF: usize = usize::MAX;

static SINK: OnceLock<Result<Arc<Sink>, String>> = OnceLock::new();

fn sink() -> Result<&'static Arc<Sink>, OutpostError> {
    SINK.get_or_init(|| {
        let sink = Arc::new(Sink {
            level: AtomicUsize::new(OFF),
            slot: RwLock::new(None),
            spans: AtomicU64::new(1),
        });
        tracing::subscriber::set_global_default(Shared(Arc::clone(&sink)))
            .map(|()| sink)
            .map_err(|_| "another tracing subscriber is installed in this process".to_owned())
    })
    .as_ref()
    .map_err(|detail| OutpostError::Internal {
        detail: detail.clone(),
    })
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// The process's subscriber: a level, and where records go.
struct Sink {
    /// A `LogLevel` as usize, or [`OFF`].
    level: AtomicUsize,
    slot: RwLock<Option<Slot>>,
    /// Spans are not recorded, but each needs an id.
    spans: AtomicU64,
}

struct Slot {
    tx: SyncSender<Line>,
    dropped: Arc<AtomicU64>,
}

struct Line {
    level: LogLevel,
    target: String,
    message: String,
}

impl Sink {
    fn filter(&self) -> LevelFilter {
        match self.level.load(Ordering::Relaxed) {
            0 => LevelFilter::ERROR,
            1 => LevelFilter::WARN,
            2 => LevelFilter::INFO,
            3 => LevelFilter::DEBUG,
            4 => LevelFilter::TRACE,
            _ => LevelFilter::OFF,
        }
    }

    fn wants(&self, meta: &Metadata<'_>) -> bool {
        meta.target().starts_with("outpost_") && self.filter() >= *meta.level()
    }
}

/// `set_global_default` takes the subscriber by value; the sink stays reachable here.
struct Shared(Arc<Sink>);

impl Subscriber for Shared {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        // Asked again after every `rebuild_interest_cache`, i.e. every level change.
        if self.0.wants(meta) {
            Interest::always()
        } else if meta.target().starts_with("outpost_") {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.0.filter())
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        self.0.wants(meta)
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(self.0.spans.fetch_add(1, Ordering::Relaxed).max(1))
    }

    fn record(&self, _span: &Id, _values: &SpanRecord<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        if !self.0.wants(meta) {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let line = Line {
            level: LogLevel::of(meta.level()),
            target: meta.target().to_owned(),
            message: text.line(),
        };
        let slot = self.0.slot.read().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slot.as_ref() {
            // Never waits: a full queue (or a logger being replaced) costs a count.
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                slot.tx.try_send(line)
            {
                slot.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// An event as one line: its message, then its fields as `name=value`.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn line(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else if self.message.is_empty() {
            self.fields
        } else {
            format!("{} {}", self.message, self.fields)
        }
    }
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // Writing to a String cannot fail.
        let _ = if field.name() == "message" {
            write!(self.message, "{value:?}")
        } else {
            let sep = if self.fields.is_empty() { "" } else { " " };
            write!(self.fields, "{sep}{}={value:?}", field.name())
        };
    }
}

/// One logger's thread: takes records off the queue and hands them to the app.
struct Delivery {
    logger: Box<dyn OutpostLogger>,
    rx: Receiver<Line>,
    dropped: Arc<AtomicU64>,
}

impl Delivery {
    fn run(self) {
        // Ends when the slot (the only sender) is replaced or cleared and drained.
        while let Ok(line) = self.rx.recv() {
            let lost = self.dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                self.send(Line {
                    level: LogLevel::Warn,
                    target: OWN_TARGET.to_owned(),
                    message: format!("{lost} log records dropped: the logger fell behind"),
                });
            }
            self.send(line);
        }
    }

    fn send(&self, line: Line) {
        // A throwing logger is an Err; a panic in Rust must not end the thread either.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.logger.log(line.level, line.target, line.message)
        }));
    }
}

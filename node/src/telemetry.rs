//! Logging set-up: structured tracing to stdout, text or JSON, written off the
//! request path by a background thread.

use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};

/// Keeps the background log writer alive; drop it last so buffered lines are flushed.
pub struct LogGuard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

/// Installs the global subscriber. `RUST_LOG` overrides `log.level` when set.
pub fn init(log: &Log) -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    LogGuard(guard)
}

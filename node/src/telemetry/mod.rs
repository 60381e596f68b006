//! Logging set-up: structured tracing to stdout, text or JSON, written off the
//! request path by a background thread; the access log beside it (`access`), batched
//! per thread, to stdout or its own file.

pub mod access;

use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};

/// Keeps the background log writers alive; drop it last so buffered lines are flushed.
pub struct LogGuard {
    // Declared first: dropped (flushed) before the tracing writer.
    _access: Option<access::AccessGuard>,
    _tracing: tracing_appender::non_blocking::WorkerGuard,
}

/// Installs the global subscriber and, when access lines are on, their writer.
/// `RUST_LOG` overrides `log.level` for the other logs; access lines follow
/// `log.access_log` alone. Fails only when the access-log file cannot be opened.
pub fn init(log: &Log) -> std::io::Result<LogGuard> {
    let access = if log.access_log {
        let to = match &log.access_log_file {
            None => access::Destination::Stdout,
            Some(path) => access::Destination::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("log.access_log_file {}: {e}", path.display()),
                        )
                    })?,
            ),
        };
        access::start(log.format, to)?
    } else {
        None
    };
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
    Ok(LogGuard {
        _access: access,
        _tracing: guard,
    })
}

//! Logging into the host's log.
//!
//! In a plugin the records go to the host, which tags them with the pipeline
//! and transform names and rate-limits them: log what is unusual, not every
//! message. In native builds (unit tests) they are printed to stderr.
//!
//! ```
//! use sluice_sdk::log;
//!
//! log::info("threshold set to 30");
//! log::warn(format!("skipping field `{}`: not a number", "temp"));
//! ```

use std::fmt;

/// Severity of a log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operational messages.
    Info,
    /// Something unexpected that the transform handled.
    Warn,
    /// An error the transform could not handle.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}

/// Writes one log record at `level`.
pub fn log(level: Level, message: impl AsRef<str>) {
    write(level, message.as_ref());
}

#[cfg(target_arch = "wasm32")]
fn write(level: Level, message: &str) {
    use crate::bindings::sluice::transform::log as wit;
    let level = match level {
        Level::Trace => wit::Level::Trace,
        Level::Debug => wit::Level::Debug,
        Level::Info => wit::Level::Info,
        Level::Warn => wit::Level::Warn,
        Level::Error => wit::Level::Error,
    };
    wit::log(level, message);
}

#[cfg(not(target_arch = "wasm32"))]
fn write(level: Level, message: &str) {
    eprintln!("[{level}] {message}");
}

/// Writes a [`Level::Trace`] record.
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message);
}

/// Writes a [`Level::Debug`] record.
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message);
}

/// Writes a [`Level::Info`] record.
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message);
}

/// Writes a [`Level::Warn`] record.
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message);
}

/// Writes a [`Level::Error`] record.
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message);
}

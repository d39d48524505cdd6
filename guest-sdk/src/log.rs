//! Writing to the host's log.
//!
//! Lines go to the host's log tagged with the invocation; they are not part
//! of the output and do not change it. The host drops lines beyond its
//! per-invocation limit, so logging cannot flood it.
//!
//! ```
//! use voidbox_guest::log;
//!
//! let rows = 3;
//! log::info!("read {rows} rows");
//! log::write(log::Level::Debug, "done");
//! ```

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Details for debugging.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the tool worked around.
    Warn,
    /// Something failed.
    Error,
}

/// Writes one line at `level`.
pub fn write(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::bindings::voidbox::tool::types::Level as Wit;
        let level = match level {
            Level::Trace => Wit::Trace,
            Level::Debug => Wit::Debug,
            Level::Info => Wit::Info,
            Level::Warn => Wit::Warn,
            Level::Error => Wit::Error,
        };
        crate::bindings::voidbox::tool::host::log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        // Natively (unit tests of a tool's logic) there is no host: stderr is
        // the closest thing and keeps the test output readable.
        eprintln!("[{level:?}] {message}");
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __voidbox_log {
    ($level:ident, $($arg:tt)+) => {
        $crate::log::write($crate::log::Level::$level, &::std::format!($($arg)+))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __voidbox_log_trace {
    ($($arg:tt)+) => { $crate::__voidbox_log!(Trace, $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __voidbox_log_debug {
    ($($arg:tt)+) => { $crate::__voidbox_log!(Debug, $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __voidbox_log_info {
    ($($arg:tt)+) => { $crate::__voidbox_log!(Info, $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __voidbox_log_warn {
    ($($arg:tt)+) => { $crate::__voidbox_log!(Warn, $($arg)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __voidbox_log_error {
    ($($arg:tt)+) => { $crate::__voidbox_log!(Error, $($arg)+) };
}

/// Logs a `format!`-style line at trace level.
pub use crate::__voidbox_log_trace as trace;

/// Logs a `format!`-style line at debug level.
pub use crate::__voidbox_log_debug as debug;

/// Logs a `format!`-style line at info level.
pub use crate::__voidbox_log_info as info;

/// Logs a `format!`-style line at warn level.
pub use crate::__voidbox_log_warn as warn;

/// Logs a `format!`-style line at error level.
pub use crate::__voidbox_log_error as error;

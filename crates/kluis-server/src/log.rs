//! Logging that can never panic or stop a thread.
//!
//! `eprintln!` panics when standard error cannot be written (a closed pipe, `2>/dev/full`, a
//! log file on a full disk). In a long-running server that killed the audit writer thread for
//! good (issue 14, defect 1). Every log line of the server goes through [`line()`] (or the
//! [`log!`](crate::log!) macro) instead: it writes one line to standard error and ignores every
//! error. A log line that cannot be written is lost; the server goes on.

use std::fmt;
use std::io::Write;

/// Write one line, `kluis-server: ` and `args`, to standard error; ignore every error.
pub fn line(args: fmt::Arguments<'_>) {
    // One buffer and one write, so that lines of different threads do not interleave.
    // Formatted with `fmt::Write` into a `String`: `io::Write::write_fmt` panics when a
    // `Display` implementation fails, `fmt::Write` returns the error (ignored here).
    let mut text = String::with_capacity(128);
    text.push_str("kluis-server: ");
    let _ = fmt::Write::write_fmt(&mut text, args);
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Log one line to standard error like `eprintln!`, but never panic: see [`line()`]. The
/// message is prefixed with `kluis-server: `.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::line(::std::format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    /// A formatting error (a `Display` that fails) is ignored, not a panic.
    #[test]
    fn a_failing_display_does_not_panic() {
        struct Fails;
        impl std::fmt::Display for Fails {
            fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                Err(std::fmt::Error)
            }
        }
        crate::log!("before {} after", Fails);
    }
}

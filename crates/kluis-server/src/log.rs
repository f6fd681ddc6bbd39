//! Logging that can never panic or stop a thread.
//!
//! `eprintln!` panics when standard error cannot be written (a closed pipe, `2>/dev/full`, a
//! log file on a full disk). In a long-running server that killed the audit writer thread for
//! good (issue 14, defect 1). Every log line of the server goes through [`line()`] (or the
//! [`log!`](crate::log!) macro) instead: it has one line written to standard error and ignores
//! every error. A log line that cannot be written is lost; the server goes on.
//!
//! Nor can a log write block the thread that logs: standard error may be a pipe or a
//! journal stream whose reader has stopped reading, and a write to it then waits for ever
//! (that wedged the audit writer after its first failed commit: every later unwrap timed
//! out while `/readyz` said ready). So [`line()`] only hands the line to a logging thread
//! through a bounded queue and returns at once; when the queue is full the line is dropped.
//! [`flush()`] waits, for a bounded time, until the queued lines are written (before the
//! process exits).

use std::fmt;
use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::{Duration, Instant};

/// Lines waiting to be written at most; further lines are dropped until there is room.
const QUEUE: usize = 1024;

/// Lines queued and not yet written.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// The queue to the logging thread, started with the first line (`None` if it could not be
/// started: lines are dropped then).
fn queue() -> Option<&'static SyncSender<String>> {
    static QUEUE_TO_LOG: OnceLock<Option<SyncSender<String>>> = OnceLock::new();
    QUEUE_TO_LOG
        .get_or_init(|| {
            let (tx, rx) = sync_channel::<String>(QUEUE);
            std::thread::Builder::new()
                .name("kluis-log".into())
                .spawn(move || {
                    for text in rx {
                        let _ = std::io::stderr().lock().write_all(text.as_bytes());
                        WAITING.fetch_sub(1, Ordering::SeqCst);
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Log one line, `kluis-server: ` and `args`, to standard error; never panics and never
/// blocks: see the module documentation.
pub fn line(args: fmt::Arguments<'_>) {
    // One buffer and one write, so that lines of different threads do not interleave.
    // Formatted with `fmt::Write` into a `String`: `io::Write::write_fmt` panics when a
    // `Display` implementation fails, `fmt::Write` returns the error (ignored here).
    let mut text = String::with_capacity(128);
    text.push_str("kluis-server: ");
    let _ = fmt::Write::write_fmt(&mut text, args);
    text.push('\n');
    if let Some(queue) = queue() {
        WAITING.fetch_add(1, Ordering::SeqCst);
        if queue.try_send(text).is_err() {
            WAITING.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Wait until every queued line is written, or `within` passed (standard error may not
/// take them). Call it before the process exits.
pub fn flush(within: Duration) {
    let deadline = Instant::now() + within;
    while WAITING.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Log one line to standard error like `eprintln!`, but never panic or block: see
/// [`line()`]. The message is prefixed with `kluis-server: `.
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

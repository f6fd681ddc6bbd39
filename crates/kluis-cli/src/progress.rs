//! Progress bars on standard error, drawn only when it is a terminal.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use kluis_file::{Event, Outcome};

/// A progress bar driven by kluis-file's events, or nothing.
pub struct Bars {
    bar: Option<ProgressBar>,
    verb: &'static str,
    files: AtomicUsize,
    done: AtomicUsize,
}

/// Whether progress should be drawn: standard error is a terminal and `--quiet` is off.
pub fn wanted(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

impl Bars {
    /// A bar for a run of files ("sealing", "opening"), or a silent one.
    pub fn files(enabled: bool, verb: &'static str) -> Bars {
        let bar = enabled.then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        });
        Bars::new(bar, verb)
    }

    /// A byte counter for streaming, or a silent one.
    pub fn stream(enabled: bool, verb: &'static str) -> Bars {
        let bar = enabled.then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} {bytes} {binary_bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_message(verb);
            b
        });
        Bars::new(bar, verb)
    }

    fn new(bar: Option<ProgressBar>, verb: &'static str) -> Bars {
        if let Some(b) = &bar {
            b.enable_steady_tick(Duration::from_millis(200));
        }
        Bars {
            bar,
            verb,
            files: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        }
    }

    /// Count `n` more bytes.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Handle one event from kluis-file.
    pub fn event(&self, e: Event<'_>) {
        let Some(b) = &self.bar else { return };
        match e {
            Event::Planned { files, bytes } => {
                self.files.store(files, Ordering::Relaxed);
                b.set_length(bytes);
                b.set_message(format!("{} 0/{files} files", self.verb));
            }
            Event::Unlocking { documents } => {
                b.set_message(format!("asking the key server for {documents} keys"));
            }
            Event::Read { bytes, .. } => b.inc(bytes),
            Event::Finished(r) if !matches!(r.outcome, Outcome::Skipped(_)) => {
                let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
                let files = self.files.load(Ordering::Relaxed);
                b.set_message(format!("{} {done}/{files} files", self.verb));
            }
            _ => {}
        }
    }

    /// Run `f` (a prompt, a message) with the bar hidden.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}

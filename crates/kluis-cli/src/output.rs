//! What is printed: per-file results (grouped failures, a summary, or JSON), and formatting.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use kluis_file::{Outcome, Report, Skip};
use serde_json::{Value, json};

use crate::error::{Class, describe_file, group_key};

/// Failures shown in full per distinct cause; the rest are counted.
const SHOWN_PER_CAUSE: usize = 3;

/// Print a warning on standard error.
pub fn warn(message: &str) {
    eprintln!("kluis: warning: {message}");
}

/// What a run of files came to.
#[derive(Debug, Default)]
pub struct Summary {
    /// Files sealed or opened.
    pub done: usize,
    /// Originals removed after verification.
    pub removed: usize,
    /// Files left alone on purpose.
    pub skipped: usize,
    /// Files that failed (or whose original was meant to be removed and was kept).
    pub failed: usize,
    /// Plaintext bytes.
    pub bytes: u64,
    /// The exit class of the failures, if any.
    pub class: Option<Class>,
}

/// Print the failures of a run on standard error (each cause shown for at most three files,
/// then counted) and notes on skipped inputs; return the summary and the per-file JSON.
pub fn files(reports: &[Report], quiet: bool) -> (Summary, Vec<Value>) {
    let mut s = Summary::default();
    let mut classes = Vec::new();
    let mut causes: HashMap<String, usize> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut items = Vec::with_capacity(reports.len());
    for r in reports {
        let mut item = json!({
            "input": r.input.to_string_lossy(),
            "output": r.output.as_ref().map(|p| p.to_string_lossy()),
            "bytes": r.bytes,
        });
        let (outcome, error) = match &r.outcome {
            Outcome::Done => {
                s.done += 1;
                s.bytes += r.bytes;
                ("done", None)
            }
            Outcome::OriginalRemoved => {
                s.done += 1;
                s.removed += 1;
                s.bytes += r.bytes;
                ("original_removed", None)
            }
            Outcome::Skipped(skip) => {
                s.skipped += 1;
                item["reason"] = json!(skip.to_string());
                if !quiet
                    && matches!(
                        skip,
                        Skip::Symlink
                            | Skip::Special
                            | Skip::Temporary
                            | Skip::StaleTemporaryRemoved
                    )
                {
                    eprintln!("kluis: skipped {:?}: {skip}", r.input);
                }
                ("skipped", None)
            }
            Outcome::OriginalKept(e) => {
                s.done += 1;
                s.bytes += r.bytes;
                ("original_kept", Some(e))
            }
            Outcome::Superseded(newer) => {
                s.skipped += 1;
                item["newer"] = json!(newer.to_string_lossy());
                if !quiet {
                    warn(&format!(
                        "{:?} and {newer:?} restore to the same file {:?}; the newer, {newer:?}, was opened and {:?} was not",
                        r.input,
                        r.output.as_deref().unwrap_or(std::path::Path::new("")),
                        r.input
                    ));
                }
                ("superseded", None)
            }
            Outcome::Failed(e) => ("failed", Some(e)),
            _ => ("failed", None),
        };
        item["outcome"] = json!(outcome);
        if let Some(e) = error {
            s.failed += 1;
            let (message, class) = describe_file(e);
            classes.push(class);
            item["error"] = json!(message);
            item["exit_code"] = json!(class.code());
            let key = group_key(e).unwrap_or_else(|| message.clone());
            let n = causes.entry(key.clone()).or_insert_with(|| {
                order.push(key.clone());
                0
            });
            *n += 1;
            if *n <= SHOWN_PER_CAUSE {
                eprintln!("kluis: {message}");
            }
        }
        items.push(item);
    }
    for key in order {
        let n = causes[&key];
        if n > SHOWN_PER_CAUSE {
            eprintln!(
                "kluis: … and {} more files failed the same way ({key})",
                n - SHOWN_PER_CAUSE
            );
        }
    }
    s.class = Class::combine(classes);
    (s, items)
}

/// `s` for counts other than one.
pub fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Bytes for people: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for milliseconds since the Unix epoch.
pub fn utc_ms(ms: i64) -> String {
    let t = kluis_core::UtcDateTime::from_unix_ms(ms);
    format!("{} {}", t.date(), t.time())
}

/// Milliseconds since the Unix epoch.
pub fn ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// `utc_ms` of a time.
pub fn utc(t: SystemTime) -> String {
    utc_ms(ms(t))
}

/// Write one line to standard output. When standard output is closed (its reader quit,
/// as `head -1` does) the program ends quietly with exit code 0: there is no one left to
/// tell. Any other write error is reported on standard error, with exit code 1.
pub fn stdout_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let result = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    stdout_result(result);
}

/// Write bytes to standard output, as [`stdout_line`] does.
pub fn stdout_bytes(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let result = out.write_all(bytes).and_then(|()| out.flush());
    stdout_result(result);
}

fn stdout_result(result: std::io::Result<()>) {
    use std::io::Write;
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "kluis: could not write to standard output: {e}"
            );
            std::process::exit(1);
        }
    }
}

/// Warn (once per run) when plaintext is written into, or sealed from, a cloud sync
/// folder: its sync client may upload it (THREAT_MODEL §4.1).
pub fn warn_if_sync_folder<'p>(paths: impl IntoIterator<Item = &'p std::path::Path>, what: &str) {
    for p in paths {
        if let Some(service) = kluis_file::sync_folder(p) {
            warn(&format!(
                "{what} {p:?}, which is inside a {service} sync folder: its sync client may upload the plaintext. Work outside the sync folder (open with -o FOLDER elsewhere; seal from elsewhere with -o into it)"
            ));
            return;
        }
    }
}

/// Print one JSON document on standard output.
pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".into())
    );
}

/// Text from a server or a file, made safe for a terminal (control characters replaced).
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(utc_ms(0), "1970-01-01 00:00:00");
        assert_eq!(utc_ms(951_782_400_000 + 3_723_000), "2000-02-29 01:02:03");
        assert_eq!(utc_ms(-1000), "1969-12-31 23:59:59");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1 << 30), "1.0 GiB");
        assert_eq!(clean("a\x1b[0mb"), "a?[0mb");
    }
}

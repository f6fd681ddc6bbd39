//! `--watch`: passes driven by file-system events, never by a timer while nothing happens.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use crate::Keys;
use crate::engine::{PassReport, Syncer};
use crate::error::SyncError;

/// How long the folders must be quiet (no event) before a pass runs.
pub const QUIET: Duration = Duration::from_millis(300);
/// The longest wait between retries while the key server is away.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why [`watch`] returned.
#[derive(Debug)]
pub enum Stop {
    /// `stop` returned true.
    Asked,
}

/// Keep the pair in sync until `stop` says so (asked at least once a second when given; without
/// it, the loop sleeps in the kernel until an event comes and runs until the process ends).
/// `on_pass` gets every pass that changed something or has something to say. A pass runs once
/// at the start, then after every burst of events once the folders were quiet for [`QUIET`],
/// and again by itself only when a pass asked for it (a file still changing, the key server
/// away: retried with exponential backoff up to 5 minutes).
pub fn watch(
    syncer: &mut Syncer,
    keys: &dyn Keys,
    stop: Option<&dyn Fn() -> bool>,
    on_pass: &mut dyn FnMut(&PassReport),
) -> Result<Stop, SyncError> {
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = &ev {
            // Reading (a pass's own scan, the sync client's upload) changes nothing; events
            // only about ignored names (temporaries) neither.
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            if !ev.paths.is_empty()
                && ev.paths.iter().all(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        crate::scan::ignored(n) && !n.starts_with(crate::FOLDER_KEY_FILE)
                    })
                })
            {
                return;
            }
        }
        // Every other event (and every error, such as an overflow) asks for a pass.
        let _ = tx.send(());
    })
    .map_err(|e| SyncError::Watch(e.to_string()))?;
    watcher
        .watch(syncer.plain(), RecursiveMode::Recursive)
        .map_err(|e| SyncError::Watch(e.to_string()))?;
    watcher
        .watch(syncer.sealed(), RecursiveMode::Recursive)
        .map_err(|e| SyncError::Watch(e.to_string()))?;

    let stop_given = stop.is_some();
    let mut backoff = Duration::from_secs(1);
    let mut wake: Option<Instant> = Some(Instant::now());
    let stop = || stop.is_some_and(|f| f());
    let tick = |d: Duration| {
        if stop_given {
            d.min(Duration::from_secs(1))
        } else {
            d
        }
    };
    loop {
        if stop() {
            return Ok(Stop::Asked);
        }
        // Wait for an event, or for a pass that was asked for; check `stop` every second.
        let got = match wake {
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                rx.recv_timeout(tick(left))
            }
            None if stop_given => rx.recv_timeout(Duration::from_secs(1)),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        let due = match got {
            Ok(()) => true,
            Err(mpsc::RecvTimeoutError::Timeout) => wake.is_some_and(|at| Instant::now() >= at),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(SyncError::Watch("the watcher stopped".into()));
            }
        };
        if !due {
            continue;
        }
        // Debounce: wait until no event came for QUIET (at most 10 s: a file written without
        // end is then left for later by the settle rule, the rest goes on).
        let burst = Instant::now();
        while rx.recv_timeout(QUIET).is_ok() && burst.elapsed() < Duration::from_secs(10) {
            if stop() {
                return Ok(Stop::Asked);
            }
        }
        let report = match syncer.run(keys, 3) {
            Ok(r) => r,
            Err(e) => {
                // The pass could not run (the folder key not openable offline, a folder
                // gone): say so and try again later.
                let mut r = PassReport::default();
                r.failed.push((String::new(), e.to_string()));
                r.retry_after = Some(backoff);
                syncer.write_status(&r);
                r
            }
        };
        let offline = report
            .pending
            .iter()
            .any(|(_, why)| why.contains("could not be reached"))
            || report.failed.iter().any(|(p, _)| p.is_empty());
        if report.changed()
            || !report.pending.is_empty()
            || !report.failed.is_empty()
            || !report.stopped.is_empty()
            || report.guard.is_some()
        {
            on_pass(&report);
        }
        wake = match report.retry_after {
            Some(d) if offline => {
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                Some(Instant::now() + w.max(d))
            }
            Some(d) => {
                backoff = Duration::from_secs(1);
                Some(Instant::now() + d)
            }
            None => {
                backoff = Duration::from_secs(1);
                None
            }
        };
    }
}

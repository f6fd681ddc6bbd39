//! `/metrics` in the Prometheus text format: requests by route and status, latency
//! histograms, unwrapped items by outcome, the audit writer's queue depth and commits, and
//! the scheduler's health (runs by outcome, last success, a pending scrub).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::writer::AuditWriter;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    items: BTreeMap<String, u64>,
    dke: BTreeMap<String, u64>,
}

/// The server's counters.
#[derive(Default)]
pub struct Metrics(Mutex<Inner>);

/// The serving scheduler's health (scheduled rotation, retention and scrubs), for
/// `/metrics`: retention that is not being enforced must show somewhere but the journal.
#[derive(Debug, Default)]
pub struct SchedulerHealth {
    /// Runs that did their work (nothing failed; a scrub may still wait for a reader).
    pub ok: AtomicU64,
    /// Runs that failed: the store unreachable or refusing writes, a label failing, a panic.
    pub failed: AtomicU64,
    /// Runs skipped because another replica leads the scheduler.
    pub standby: AtomicU64,
    /// When a run last succeeded, in ms since the epoch (0: not yet).
    pub last_success_ms: AtomicI64,
    /// Whether an old copy of a destroyed sealed key may still be in the store's files (the
    /// scrub after a destroy is pending; the scheduler retries it every run).
    pub scrub_pending: AtomicBool,
}

/// The route name a path is counted under (a fixed set, so that callers cannot grow it).
pub fn route_name(path: &str) -> &'static str {
    match path {
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/v1/labels" => "labels",
        "/v1/unwrap" => "unwrap",
        "/v1/unwrap/batch" => "unwrap_batch",
        "/v1/me/audit" => "me_audit",
        p if p.starts_with("/v1/labels/") => "label_record",
        _ => "other",
    }
}

impl Metrics {
    /// Count one finished request.
    pub fn observe(&self, route: &'static str, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.requests.entry((route, status)).or_default() += 1;
        let h = m.latency.entry(route).or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Count unwrapped items by outcome (`granted`, `denied`, `destroyed`, ...).
    pub fn items<'a>(&self, outcomes: impl IntoIterator<Item = &'a str>) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for o in outcomes {
            match m.items.get_mut(o) {
                Some(n) => *n += 1,
                None => {
                    m.items.insert(o.to_owned(), 1);
                }
            }
        }
    }

    /// Count one Microsoft DKE decrypt by outcome (`granted`, `denied`, `decrypt_failed`, ...).
    pub fn dke(&self, outcome: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match m.dke.get_mut(outcome) {
            Some(n) => *n += 1,
            None => {
                m.dke.insert(outcome.to_owned(), 1);
            }
        }
    }

    /// The Prometheus text exposition.
    /// `body_bytes` is what request bodies hold in memory now.
    pub fn render(
        &self,
        writer: &AuditWriter,
        scheduler: &SchedulerHealth,
        body_bytes: usize,
    ) -> String {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "# HELP kluis_http_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(w, "# TYPE kluis_http_requests_total counter");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                w,
                "kluis_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            w,
            "# HELP kluis_http_request_duration_seconds Request latency by route."
        );
        let _ = writeln!(w, "# TYPE kluis_http_request_duration_seconds histogram");
        for (route, h) in &m.latency {
            for (le, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    w,
                    "kluis_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                w,
                "kluis_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                w,
                "kluis_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                w,
                "kluis_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            w,
            "# HELP kluis_unwrap_items_total Unwrapped stanzas by outcome."
        );
        let _ = writeln!(w, "# TYPE kluis_unwrap_items_total counter");
        for (outcome, n) in &m.items {
            let _ = writeln!(w, "kluis_unwrap_items_total{{outcome=\"{outcome}\"}} {n}");
        }
        let _ = writeln!(
            w,
            "# HELP kluis_dke_decrypts_total Microsoft DKE decrypts by outcome."
        );
        let _ = writeln!(w, "# TYPE kluis_dke_decrypts_total counter");
        for (outcome, n) in &m.dke {
            let _ = writeln!(w, "kluis_dke_decrypts_total{{outcome=\"{outcome}\"}} {n}");
        }
        let s = writer.stats();
        let load = |c: &std::sync::atomic::AtomicUsize| c.load(Ordering::Relaxed);
        for (name, kind, help, value) in [
            (
                "kluis_audit_queue_depth",
                "gauge",
                "Requests waiting for their audit records to be committed.",
                writer.depth(),
            ),
            (
                "kluis_audit_commits_total",
                "counter",
                "Audit transactions committed (group commits).",
                load(&s.commits),
            ),
            (
                "kluis_audit_records_total",
                "counter",
                "Audit records committed.",
                load(&s.records),
            ),
            (
                "kluis_audit_failures_total",
                "counter",
                "Audit transactions that failed; their requests were refused.",
                load(&s.failures),
            ),
            (
                "kluis_audit_stale_total",
                "counter",
                "Decisions released nothing because access may have changed since they were \
                 authorised (a revocation, policy update, retire or destroy); each is decided \
                 again, up to three times.",
                load(&s.stale),
            ),
            (
                "kluis_audit_failing",
                "gauge",
                "1 while the audit trail cannot be written (the last transaction failed), else 0.",
                usize::from(writer.is_failing()),
            ),
            (
                "kluis_body_bytes_in_flight",
                "gauge",
                "Bytes that request bodies hold in memory now (within max_body_bytes_in_flight).",
                body_bytes,
            ),
            (
                "kluis_scrub_pending",
                "gauge",
                "1 while an old copy of a destroyed sealed key may remain in the store's files \
                 (the scrub waits for a reader or writer to let go), else 0.",
                usize::from(scheduler.scrub_pending.load(Ordering::Relaxed)),
            ),
        ] {
            let _ = writeln!(
                w,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(
            w,
            "# HELP kluis_scheduler_runs_total Scheduled rotation and retention runs by outcome \
             (standby: another replica leads).\n# TYPE kluis_scheduler_runs_total counter"
        );
        for (outcome, n) in [
            ("ok", &scheduler.ok),
            ("failed", &scheduler.failed),
            ("standby", &scheduler.standby),
        ] {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(w, "kluis_scheduler_runs_total{{outcome=\"{outcome}\"}} {n}");
        }
        let last = scheduler.last_success_ms.load(Ordering::Relaxed);
        let _ = writeln!(
            w,
            "# HELP kluis_scheduler_last_success_timestamp_seconds When a scheduled run last \
             succeeded (0: not yet).\n# TYPE kluis_scheduler_last_success_timestamp_seconds \
             gauge\nkluis_scheduler_last_success_timestamp_seconds {}",
            last as f64 / 1000.0
        );
        out
    }
}

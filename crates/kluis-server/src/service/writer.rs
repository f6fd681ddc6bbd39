//! The audit writer: one thread that owns the write connection and commits the audit records
//! of every waiting request in one transaction (group commit), so that one fsync covers many
//! requests and durability does not cost throughput.
//!
//! A request's records are durable when [`AuditWriter::commit`] returns its [`Committed`]
//! receipt; only that receipt releases the request's shares. If the commit fails (disk full,
//! I/O error), every request in the group gets the error and releases nothing, and the writer
//! counts as failing ([`AuditWriter::is_failing`], which `/readyz` reports) until a commit
//! succeeds again: while no request comes, it tries every [`PROBE_EVERY`] to commit one
//! record of its own, `audit.resumed` (actor `scheduler`, the server itself), saying since
//! when the trail could not be written, so that readiness recovers without traffic. Only a
//! commit of a real record says the trail can take records again: an empty write still fits
//! on a disk too full for one (measured), which made `/readyz` say ready while every unwrap
//! was refused. So each outage that ends while the server is idle leaves one such record. The
//! writer works with any [`Store`].
//!
//! A request that releases something was authorised under the access epoch it
//! [observed](AuditWriter::observe) before its first store read; the writer appends its records
//! only if the store's epoch is still that one, in the commit's own transaction, and otherwise
//! answers [`NotCommitted::Stale`]: nothing that could withdraw access committed in between (see
//! [`super::epoch`] for why this suffices). A request that releases nothing is appended as it is.
//!
//! Under load the writer waits up to [`COMMIT_DELAY`] for requests that are already being
//! worked on ([`AuditWriter::arriving`]) to join the group, like PostgreSQL's
//! `commit_delay`: fewer, larger commits cost less CPU per record (an fsync costs far more
//! than the records it carries). A lone request never waits: nothing else is arriving.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kluis_core::reply::{ReplySealer, SealedShare};
use tokio::sync::oneshot;

use super::KeyService;
use super::dke::DkePending;
use super::epoch;
use super::unwrap::{Pending, Refusal};
use crate::audit::AuditEntry;
use crate::store::{Store, meta};

/// At most this many records go into one transaction.
const MAX_GROUP: usize = 8192;
/// The longest the writer waits for arriving requests before it commits a group.
pub const COMMIT_DELAY: Duration = Duration::from_millis(1);
/// While failing and idle, how often the writer tries to commit its `audit.resumed` record.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

struct Job {
    entries: Vec<AuditEntry>,
    /// For a request that releases something: the access epoch it was authorised under; its
    /// records are appended only while the store's epoch is still this one.
    releases_under: Option<u64>,
    /// The request's last decision: if it is stale, its records are appended all the same,
    /// each grant as refused [`STALE_OUTCOME`] (nothing of it is released).
    recorded_when_stale: bool,
    done: oneshot::Sender<Result<(), NotCommitted>>,
}

/// The outcome recorded for a grant of a request's last decision that was stale: nothing was
/// released (the answer is `503 access_changing`).
pub const STALE_OUTCOME: &str = "access_changing";

/// The group to commit: `first`, what is queued behind it, and, while requests are still
/// `coming`, what arrives within `delay`.
fn gather(rx: &mpsc::Receiver<Job>, first: Job, coming: &AtomicUsize, delay: Duration) -> Vec<Job> {
    let mut n = first.entries.len();
    let mut jobs = vec![first];
    let deadline = Instant::now() + delay;
    while n < MAX_GROUP {
        let next = match rx.try_recv() {
            Ok(job) => Ok(job),
            Err(_) if coming.load(Ordering::Relaxed) > 0 => {
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            }
            Err(_) => break,
        };
        match next {
            Ok(job) => {
                n += job.entries.len();
                jobs.push(job);
            }
            Err(_) => break,
        }
    }
    jobs
}

/// In one transaction: the store's access epoch, then the records of every job that releases
/// nothing or was authorised under that epoch, and of every stale job's last decision (its
/// grants recorded as refused). Returns the epoch and, per job, whether it is fresh (the others
/// are stale), and the number of records appended.
fn commit_group<S: Store>(
    store: &mut KeyService<S>,
    jobs: &mut [Job],
    records: usize,
) -> crate::Result<(u64, Vec<bool>, usize)> {
    // Test support only (never in a build that serves): the writer thread dies when it has
    // records to append, so that a test can see a real server process exit when its audit
    // writer thread dies. Nothing else in the writer can panic on purpose.
    #[cfg(feature = "test-support")]
    if records > 0 && std::env::var_os("KLUIS_TEST_AUDIT_APPEND_PANICS").is_some() {
        panic!("KLUIS_TEST_AUDIT_APPEND_PANICS is set (test support)");
    }
    store.write(|keyring, tx| {
        let now = epoch::read(tx)?;
        let fresh: Vec<bool> = jobs
            .iter()
            .map(|j| j.releases_under.is_none_or(|e| e == now))
            .collect();
        let mut all = Vec::with_capacity(records);
        for (job, fresh) in jobs.iter_mut().zip(&fresh) {
            if !fresh && job.recorded_when_stale {
                for e in job.entries.iter_mut().filter(|e| e.outcome == "granted") {
                    e.outcome = STALE_OUTCOME.to_owned();
                }
            }
            if *fresh || job.recorded_when_stale {
                all.append(&mut job.entries);
            }
        }
        if !all.is_empty() {
            keyring.append_audit(tx, &all)?;
        }
        Ok((now, fresh, all.len()))
    })
}

/// Handle to the writer thread.
pub struct AuditWriter {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    /// The access epoch the writer read in its last committed transaction (or at start).
    epoch: Arc<AtomicU64>,
    depth: Arc<AtomicUsize>,
    arriving: Arc<AtomicUsize>,
    stats: Arc<WriterStats>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Counters the writer keeps, for `/metrics`.
#[derive(Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicUsize,
    /// Records committed.
    pub records: AtomicUsize,
    /// Transactions that failed (their requests were refused).
    pub failures: AtomicUsize,
    /// Decisions set aside because access may have changed since they were authorised (each
    /// is decided again; a request's last is recorded without its grants).
    pub stale: AtomicUsize,
    /// Whether the last transaction (a commit or an idle probe) failed.
    pub failing: AtomicBool,
    /// Since when (ms since the epoch) the writer has been failing, while it is.
    pub failing_since_ms: AtomicI64,
}

/// A request on its way to [`AuditWriter::commit`]; counted until it gets there or gives up
/// (dropped).
pub struct Arriving<'a>(&'a AtomicUsize);

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a request's records were not committed; nothing of it may be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCommitted {
    /// The audit trail could not be written.
    Unavailable,
    /// Something that can withdraw access (a revocation, a policy update, a retired or
    /// destroyed version) was committed after the request was authorised: decide it again,
    /// from authentication on, with a new [`Observed`].
    Stale,
}

/// The access epoch a request observed ([`AuditWriter::observe`]) before its first store read
/// for authentication or authorisation; the writer releases nothing of the request unless the
/// store's epoch is still this one when its records are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed(pub(super) u64);

/// The receipt for a [`Pending`] request whose audit records are committed: the only way to
/// its shares. Only [`AuditWriter::commit`] makes one (its field is private to this module).
pub struct Committed(Pending);

impl Committed {
    /// Seal each granted share to the caller's reply key; the refused items keep their
    /// refusal.
    pub fn release(self, sealer: &mut ReplySealer) -> Vec<Result<SealedShare, Refusal>> {
        self.0
            .results
            .into_iter()
            .map(|r| r.map(|(doc_id, share)| sealer.seal(&doc_id, &share)))
            .collect()
    }
}

/// The receipt for a [`DkePending`] decrypt whose audit record is committed: the only way to
/// its plaintext. Only [`AuditWriter::commit_dke`] makes one.
pub struct DkeCommitted(DkePending);

impl DkeCommitted {
    /// The plaintext (wiped on drop), or why the decrypt was refused.
    pub fn release(self) -> Result<zeroize::Zeroizing<Vec<u8>>, Refusal> {
        self.0.result
    }
}

/// The next job; while the writer is failing, a try to commit its `audit.resumed` record every
/// [`PROBE_EVERY`] in which none comes. `None` once the queue is closed (shutdown).
fn next_job<S: Store>(
    rx: &mpsc::Receiver<Job>,
    st: &WriterStats,
    store: &mut KeyService<S>,
    published: &AtomicU64,
) -> Option<Job> {
    loop {
        if !st.failing.load(Ordering::Relaxed) {
            return rx.recv().ok();
        }
        match rx.recv_timeout(PROBE_EVERY) {
            Ok(job) => return Some(job),
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // A commit of one real record, as a request's would be: nothing less says that
                // the trail can take records again.
                let mut probe = [Job {
                    entries: vec![resumed(st.failing_since_ms.load(Ordering::Relaxed))],
                    releases_under: None,
                    recorded_when_stale: false,
                    done: oneshot::channel().0,
                }];
                let result = commit_group(store, &mut probe, 1);
                if let Ok((now, _, appended)) = &result {
                    published.store(*now, Ordering::Release);
                    st.commits.fetch_add(1, Ordering::Relaxed);
                    st.records.fetch_add(*appended, Ordering::Relaxed);
                }
                recovered(st, result.is_ok());
            }
        }
    }
}

/// The record the idle writer commits once the trail can be written again, after failing
/// since `since_ms`.
fn resumed(since_ms: i64) -> AuditEntry {
    AuditEntry {
        time_ms: crate::time::now_ms(),
        actor: "scheduler".into(),
        action: "audit.resumed".into(),
        label: None,
        kid: None,
        doc_id: None,
        outcome: "ok".into(),
        reason: Some(format!(
            "the audit trail could not be written from {} until this record; unwraps were \
             refused meanwhile",
            crate::time::rfc3339(since_ms)
        )),
        client: None,
        credential: Some("server:audit-writer".into()),
    }
}

/// Note the outcome of a transaction; say so when the trail can be written again.
fn recovered(st: &WriterStats, ok: bool) {
    let was = st.failing.swap(!ok, Ordering::Relaxed);
    if !was && !ok {
        st.failing_since_ms
            .store(crate::time::now_ms(), Ordering::Relaxed);
    }
    if was && ok {
        crate::log!("the audit trail can be written again; unwraps are served");
    }
}

impl AuditWriter {
    /// Start the writer thread on its own connection.
    pub fn start<S: Store>(mut store: KeyService<S>) -> crate::Result<Self> {
        let first_epoch = epoch::decode(store.store().meta(meta::ACCESS_EPOCH)?)?;
        let epoch = Arc::new(AtomicU64::new(first_epoch));
        let published = epoch.clone();
        let (tx, rx) = mpsc::channel::<Job>();
        let depth = Arc::new(AtomicUsize::new(0));
        let arriving = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(WriterStats::default());
        let (d, st, coming) = (depth.clone(), stats.clone(), arriving.clone());
        let thread = std::thread::Builder::new()
            .name("kluis-audit".into())
            .spawn(move || {
                while let Some(first) = next_job(&rx, &st, &mut store, &published) {
                    let mut jobs = gather(&rx, first, &coming, COMMIT_DELAY);
                    let n = jobs.iter().map(|j| j.entries.len()).sum();
                    let result = commit_group(&mut store, &mut jobs, n);
                    d.fetch_sub(jobs.len(), Ordering::Relaxed);
                    // A group that appended nothing (every job stale) wrote nothing: it says
                    // nothing about whether the trail can take records.
                    if !matches!(result, Ok((_, _, 0))) {
                        recovered(&st, result.is_ok());
                    }
                    let answers: Vec<_> = match result {
                        Ok((now, fresh, appended)) => {
                            // Published after the commit: a request that reads it from now on
                            // sees, in its own reads, every change up to this epoch.
                            published.store(now, Ordering::Release);
                            st.commits.fetch_add(1, Ordering::Relaxed);
                            st.records.fetch_add(appended, Ordering::Relaxed);
                            let stale = fresh.iter().filter(|f| !**f).count();
                            st.stale.fetch_add(stale, Ordering::Relaxed);
                            fresh
                                .into_iter()
                                .map(|f| if f { Ok(()) } else { Err(NotCommitted::Stale) })
                                .collect()
                        }
                        Err(e) => {
                            st.failures.fetch_add(1, Ordering::Relaxed);
                            // Never `eprintln!`: it panics when standard error cannot be
                            // written, which killed this thread for good (issue 14).
                            crate::log!(
                                "writing the audit trail failed, {} requests refused: {e}",
                                jobs.len()
                            );
                            vec![Err(NotCommitted::Unavailable); jobs.len()]
                        }
                    };
                    for (job, answer) in jobs.into_iter().zip(answers) {
                        // The request may have gone (client disconnected): nothing to do.
                        let _ = job.done.send(answer);
                    }
                }
            })?;
        Ok(AuditWriter {
            queue: Mutex::new(Some(tx)),
            epoch,
            depth,
            arriving,
            stats,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Count a request that will append records soon (call it before the key work), so
    /// that the writer can wait for it under load.
    pub fn arriving(&self) -> Arriving<'_> {
        self.arriving.fetch_add(1, Ordering::Relaxed);
        Arriving(&self.arriving)
    }

    /// The access epoch to authorise a request under: take it before the request's first
    /// store read for authentication or authorisation (see [`super::epoch`]).
    pub fn observe(&self) -> Observed {
        Observed(self.epoch.load(Ordering::Acquire))
    }

    /// Commit the audit records of `pending` durably; returns the receipt that releases its
    /// shares once they are committed (fsynced), or why not (then nothing is released):
    /// [`NotCommitted::Stale`] when it grants something and access may have been withdrawn
    /// since it was authorised. `arriving` (from [`AuditWriter::arriving`]) stops being counted
    /// as the records are queued.
    pub async fn commit(
        &self,
        mut pending: Pending,
        arriving: Arriving<'_>,
    ) -> Result<Committed, NotCommitted> {
        if !pending.entries.is_empty() {
            let entries = std::mem::take(&mut pending.entries);
            let releases = pending.results.iter().any(|r| r.is_ok());
            let under = releases.then_some(pending.observed.0);
            self.append(entries, under, pending.last, arriving).await?;
        }
        Ok(Committed(pending))
    }

    /// Commit the audit record of a DKE decrypt durably; returns the receipt that releases its
    /// plaintext once it is committed, or why not (then nothing is released), as
    /// [`AuditWriter::commit`].
    pub async fn commit_dke(
        &self,
        pending: DkePending,
        arriving: Arriving<'_>,
    ) -> Result<DkeCommitted, NotCommitted> {
        let under = pending.result.is_ok().then_some(pending.observed.0);
        self.append(vec![pending.entry.clone()], under, pending.last, arriving)
            .await?;
        Ok(DkeCommitted(pending))
    }

    /// Append `entries` durably, if `releases_under` is `None` or still the store's access
    /// epoch, or else (stale) if `recorded_when_stale`, each grant then recorded as refused;
    /// returns once they are committed (fsynced), or why not. `arriving` (from
    /// [`AuditWriter::arriving`]) stops being counted as the entries are queued.
    async fn append(
        &self,
        entries: Vec<AuditEntry>,
        releases_under: Option<u64>,
        recorded_when_stale: bool,
        arriving: Arriving<'_>,
    ) -> Result<(), NotCommitted> {
        // Not arriving any more: a writer that looks now must not wait for this request,
        // whose job may already be in the queue.
        drop(arriving);
        let (done, wait) = oneshot::channel();
        {
            let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let queue = queue.as_ref().ok_or(NotCommitted::Unavailable)?;
            self.depth.fetch_add(1, Ordering::Relaxed);
            let job = Job {
                entries,
                releases_under,
                recorded_when_stale,
                done,
            };
            if queue.send(job).is_err() {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                return Err(NotCommitted::Unavailable);
            }
        }
        wait.await.map_err(|_| NotCommitted::Unavailable)?
    }

    /// Requests waiting for their audit records to be committed.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Whether the audit trail cannot be written now: the last transaction failed (and no
    /// commit or probe has succeeded since).
    pub fn is_failing(&self) -> bool {
        self.stats.failing.load(Ordering::Relaxed)
    }

    /// Whether the writer thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Stop taking records, commit what is queued, and wait for the thread to end.
    pub fn shutdown(&self) {
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::KeySource;

    fn entry(n: usize) -> AuditEntry {
        AuditEntry {
            time_ms: 1,
            actor: format!("user{n}"),
            action: "unwrap".into(),
            label: Some("hr".into()),
            kid: Some(1),
            doc_id: None,
            outcome: "granted".into(),
            reason: None,
            client: None,
            credential: None,
        }
    }

    fn writer(dir: &std::path::Path) -> AuditWriter {
        let key = dir.join("master.key");
        let store = KeyService::init_sqlite(&dir.join("store.db"), KeySource::File(&key)).unwrap();
        AuditWriter::start(store).unwrap()
    }

    /// A store in `dir` whose access epoch has risen once (another connection withdrew
    /// tokens), and the number of audit records it holds.
    fn store_at_epoch_one(
        dir: &std::path::Path,
    ) -> (KeyService<crate::sqlite::SqliteStore>, usize) {
        let key = dir.join("master.key");
        let svc = KeyService::init_sqlite(&dir.join("store.db"), KeySource::File(&key)).unwrap();
        svc.reopen()
            .unwrap()
            .revoke_user_tokens("nobody", "admin")
            .unwrap();
        let before = svc.audit_records(None).unwrap().len();
        (svc, before)
    }

    fn job(n: usize) -> (Job, oneshot::Receiver<Result<(), NotCommitted>>) {
        let (done, wait) = oneshot::channel();
        let entries = vec![entry(n)];
        let job = Job {
            entries,
            releases_under: None,
            recorded_when_stale: false,
            done,
        };
        (job, wait)
    }

    /// While a request is coming, the group waits for it; when none is, it does not wait.
    #[test]
    fn the_group_waits_only_for_requests_that_are_coming() {
        let (tx, rx) = mpsc::channel();
        let coming = Arc::new(AtomicUsize::new(1));
        // A request that arrives later: it stops being counted, then is queued.
        let later = |tx: mpsc::Sender<Job>, coming: Arc<AtomicUsize>, counted: bool| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                if counted {
                    coming.fetch_sub(1, Ordering::Relaxed);
                }
                tx.send(job(2).0).unwrap();
            })
        };
        let sender = later(tx.clone(), coming.clone(), true);
        let group = gather(&rx, job(1).0, &coming, Duration::from_secs(60));
        assert_eq!(group.len(), 2, "waited for the coming request");
        sender.join().unwrap();

        assert_eq!(coming.load(Ordering::Relaxed), 0);
        tx.send(job(3).0).unwrap();
        let sender = later(tx.clone(), coming.clone(), false);
        let group = gather(&rx, job(1).0, &coming, Duration::from_secs(60));
        assert_eq!(
            group.len(),
            2,
            "took what was queued, did not wait for more"
        );
        sender.join().unwrap();
        assert_eq!(rx.try_recv().map(|j| j.entries.len()).ok(), Some(1));
    }

    /// In one group, a job that releases something under an older epoch is left out (stale),
    /// while a job under the current epoch and one that releases nothing are appended.
    #[test]
    fn a_group_appends_only_jobs_authorised_under_the_current_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let (mut svc, before) = store_at_epoch_one(dir.path());
        let mut jobs = Vec::new();
        for (n, under) in [(1, Some(0)), (2, Some(1)), (3, None)] {
            let (mut j, _) = job(n);
            j.releases_under = under;
            jobs.push(j);
        }
        let (now, fresh, appended) = commit_group(&mut svc, &mut jobs, 3).unwrap();
        assert_eq!((now, fresh, appended), (1, vec![false, true, true], 2));
        let actors: Vec<String> = svc.audit_records(None).unwrap()[before..]
            .iter()
            .map(|r| r.entry.actor.clone())
            .collect();
        assert_eq!(actors, ["user2", "user3"]);
        svc.verify_audit().unwrap();
    }

    /// A stale job that is its request's last decision is recorded all the same, its grants
    /// as refused `access_changing` (its refusals as they were); an earlier decision is not.
    #[test]
    fn the_last_decision_of_a_stale_request_is_recorded_without_its_grants() {
        let dir = tempfile::tempdir().unwrap();
        let (mut svc, before) = store_at_epoch_one(dir.path());
        let mut jobs = Vec::new();
        for (n, last) in [(1, false), (2, true)] {
            let (mut j, _) = job(n);
            let mut denied = entry(n);
            denied.outcome = "denied".into();
            j.entries.push(denied);
            j.releases_under = Some(0);
            j.recorded_when_stale = last;
            jobs.push(j);
        }
        let (now, fresh, appended) = commit_group(&mut svc, &mut jobs, 4).unwrap();
        assert_eq!((now, fresh, appended), (1, vec![false, false], 2));
        let recorded: Vec<(String, String)> = svc.audit_records(None).unwrap()[before..]
            .iter()
            .map(|r| (r.entry.actor.clone(), r.entry.outcome.clone()))
            .collect();
        let user2 = |o: &str| ("user2".to_owned(), o.to_owned());
        assert_eq!(recorded, [user2(STALE_OUTCOME), user2("denied")]);
        svc.verify_audit().unwrap();
    }

    /// Requests already being worked on join one commit instead of one commit each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn arriving_requests_are_committed_together() {
        let dir = tempfile::tempdir().unwrap();
        let w = Arc::new(writer(dir.path()));
        let jobs = 64;
        let all_counted = Arc::new(tokio::sync::Barrier::new(jobs));
        let before = w.stats().commits.load(Ordering::Relaxed);
        let mut tasks = Vec::new();
        for n in 0..jobs {
            let (w, all_counted) = (w.clone(), all_counted.clone());
            tasks.push(tokio::spawn(async move {
                let arriving = w.arriving();
                all_counted.wait().await;
                w.append(vec![entry(n)], None, false, arriving).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let commits = w.stats().commits.load(Ordering::Relaxed) - before;
        assert_eq!(w.stats().records.load(Ordering::Relaxed), jobs);
        assert!(commits <= jobs / 4, "{commits} commits for {jobs} requests");
        w.shutdown();
    }

    /// A request that never arrives (it failed before its records) does not hold the others
    /// back for longer than the commit delay.
    #[tokio::test]
    async fn a_request_that_never_arrives_does_not_block_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(dir.path());
        let _stuck = w.arriving();
        for n in 0..3 {
            w.append(vec![entry(n)], None, false, w.arriving())
                .await
                .unwrap();
        }
        assert_eq!(w.stats().records.load(Ordering::Relaxed), 3);
        assert_eq!(
            w.arriving.load(Ordering::Relaxed),
            1,
            "only the stuck one counted"
        );
    }
}

//! The audit writer: one thread that owns the write connection and commits the audit records
//! of every waiting request in one transaction (group commit), so that one fsync covers many
//! requests and durability does not cost throughput.
//!
//! A request's records are durable when [`AuditWriter::append`] returns `Ok`; only then may
//! its shares leave the server. If the commit fails (disk full, I/O error), every request in
//! the group gets the error and releases nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::audit::AuditEntry;
use crate::sqlite::SqliteStore;
use crate::store::Store;

/// At most this many records go into one transaction.
const MAX_GROUP: usize = 8192;

struct Job {
    entries: Vec<AuditEntry>,
    done: oneshot::Sender<Result<(), ()>>,
}

/// Handle to the writer thread.
pub struct AuditWriter {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    depth: Arc<AtomicUsize>,
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
}

/// The audit trail could not be written; nothing may be released.
#[derive(Debug, Clone, Copy)]
pub struct AuditUnavailable;

impl AuditWriter {
    /// Start the writer thread on its own connection.
    pub fn start(mut store: SqliteStore) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let depth = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(WriterStats::default());
        let (d, st) = (depth.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("kluis-audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    let mut n = jobs[0].entries.len();
                    while n < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(job) => {
                                n += job.entries.len();
                                jobs.push(job);
                            }
                            Err(_) => break,
                        }
                    }
                    let mut all = Vec::with_capacity(n);
                    for job in &mut jobs {
                        all.append(&mut job.entries);
                    }
                    let result = store.append_audit(&all);
                    d.fetch_sub(jobs.len(), Ordering::Relaxed);
                    match &result {
                        Ok(()) => {
                            st.commits.fetch_add(1, Ordering::Relaxed);
                            st.records.fetch_add(all.len(), Ordering::Relaxed);
                        }
                        Err(e) => {
                            st.failures.fetch_add(1, Ordering::Relaxed);
                            eprintln!(
                                "kluis-server: writing the audit trail failed, {} requests refused: {e}",
                                jobs.len()
                            );
                        }
                    }
                    for job in jobs {
                        // The request may have gone (client disconnected): nothing to do.
                        let _ = job.done.send(result.as_ref().map(|_| ()).map_err(|_| ()));
                    }
                }
            })?;
        Ok(AuditWriter {
            queue: Mutex::new(Some(tx)),
            depth,
            stats,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Append `entries` durably; returns once they are committed (fsynced) or failed.
    pub async fn append(&self, entries: Vec<AuditEntry>) -> Result<(), AuditUnavailable> {
        let (done, wait) = oneshot::channel();
        {
            let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let queue = queue.as_ref().ok_or(AuditUnavailable)?;
            self.depth.fetch_add(1, Ordering::Relaxed);
            if queue.send(Job { entries, done }).is_err() {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                return Err(AuditUnavailable);
            }
        }
        wait.await
            .map_err(|_| AuditUnavailable)?
            .map_err(|()| AuditUnavailable)
    }

    /// Requests waiting for their audit records to be committed.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
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

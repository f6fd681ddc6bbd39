//! A small scoped worker pool: items spread over threads, results in input order.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// The most worker threads used. Each holds a few MiB of buffers (a sealing worker up to
/// about 5 MiB), so peak memory stays bounded whatever the machine.
pub const MAX_THREADS: usize = 8;

/// How many workers to use for `items` pieces of work.
pub(crate) fn workers(requested: Option<NonZeroUsize>, items: usize) -> usize {
    requested
        .or_else(|| thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get)
        .min(MAX_THREADS)
        .min(items)
        .max(1)
}

/// `items.iter().map(f)`, spread over `threads` scoped threads. A panic in `f` is resumed on
/// the caller's thread.
pub(crate) fn map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    if threads <= 1 || items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let f = &f;
    let mut out: Vec<Option<R>> = items.iter().map(|_| None).collect();
    thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(items.len()))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        done.push((i, f(item)));
                    }
                    done
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(done) => {
                    for (i, r) in done {
                        out[i] = Some(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    out.into_iter()
        .map(|r| r.expect("every item was taken by a worker"))
        .collect()
}

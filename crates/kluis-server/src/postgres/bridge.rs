//! The bridge between the sync [`crate::Store`] calls and `tokio-postgres`: one background
//! thread runs a current-thread tokio runtime that owns every connection's socket task; a
//! caller polls its query future on its own thread ([`wait`]), parked between wake-ups, with a
//! deadline. The query futures only exchange messages with the connection task, so they need
//! no runtime of their own, and a call from inside another runtime (the server's) neither
//! panics nor needs `spawn_blocking` to be correct (it blocks that thread, as SQLite does).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use tokio::runtime::Handle;

/// The background runtime, started on first use; it lives as long as the process.
fn handle() -> &'static Handle {
    static HANDLE: OnceLock<Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("kluis-postgres".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the PostgreSQL connections");
                let _ = tx.send(rt.handle().clone());
                rt.block_on(std::future::pending::<()>());
            })
            .expect("a thread for the PostgreSQL connections");
        rx.recv().expect("the PostgreSQL runtime thread started")
    })
}

/// Run `fut` on the background runtime (connecting: it needs the runtime's sockets).
pub(super) fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle().spawn(fut)
}

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Poll `fut` on this thread until it is ready (`Some`) or `deadline` passes (`None`; the
/// future is dropped, which for a query abandons it).
pub(super) fn wait<F: Future>(fut: F, deadline: Instant) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

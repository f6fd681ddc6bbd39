//! Fair use of the connection cap: open connections counted per client address (an IPv6
//! client counts by its /64), and, when the cap is full, the connection idle the longest
//! is closed to make room rather than making the new client wait.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

/// The key connections are counted under: an IPv4 address, or an IPv6 /64 (one subscriber's
/// network, which is cheap to fill with addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum AddrKey {
    V4(u32),
    V6Net(u64),
}

impl From<IpAddr> for AddrKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddrKey::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey::V4(v4.into()),
                None => AddrKey::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// One connection's state, shared between its task, its requests and the registry.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Requests being handled or answered right now.
    busy: AtomicUsize,
    /// When the connection last became idle, in ms since the registry was made.
    idle_since_ms: AtomicU64,
    /// Signalled to close the connection.
    evict: Notify,
    epoch: Instant,
}

impl ConnState {
    /// Mark a request as started; the guard marks it finished when dropped.
    pub(crate) fn busy(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard(self.clone())
    }

    /// Resolves when the registry asks this connection to close.
    pub(crate) async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// The connection got its place and starts now: it counts as idle from now on, not
    /// from when it was accepted (it may have waited for the place).
    pub(crate) fn starting(&self) {
        self.idle_since_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A request in progress on a connection (see [`ConnState::busy`]).
#[derive(Debug)]
pub(crate) struct BusyGuard(Arc<ConnState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0
            .idle_since_ms
            .store(self.0.now_ms(), Ordering::SeqCst);
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct Entry {
    addr: AddrKey,
    state: Arc<ConnState>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    per_addr: HashMap<AddrKey, usize>,
    open: HashMap<u64, Entry>,
}

/// The open connections, by client address.
#[derive(Debug)]
pub(crate) struct Connections {
    inner: Mutex<Inner>,
    /// Open connections per address at most; 0 means no per-address cap.
    per_address: usize,
    epoch: Instant,
}

/// An admitted connection; dropping it forgets the connection.
#[derive(Debug)]
pub(crate) struct Ticket {
    conns: Arc<Connections>,
    id: u64,
    /// The connection's shared state.
    pub(crate) state: Arc<ConnState>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.conns.lock();
        if let Some(e) = inner.open.remove(&self.id) {
            if let Some(n) = inner.per_addr.get_mut(&e.addr) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    inner.per_addr.remove(&e.addr);
                }
            }
        }
    }
}

impl Connections {
    /// A registry allowing `per_address` connections per client address (0: no cap).
    pub(crate) fn new(per_address: usize) -> Arc<Self> {
        Arc::new(Connections {
            inner: Mutex::new(Inner::default()),
            per_address,
            epoch: Instant::now(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The registry's maps stay consistent even if a holder panicked mid-way.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit a connection from `ip`, or `None` when that address already has its share.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Ticket> {
        let addr = AddrKey::from(ip);
        let mut inner = self.lock();
        let n = inner.per_addr.entry(addr).or_insert(0);
        if self.per_address != 0 && *n >= self.per_address {
            return None;
        }
        *n += 1;
        let id = inner.next_id;
        inner.next_id += 1;
        let state = Arc::new(ConnState {
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            evict: Notify::new(),
            epoch: self.epoch,
        });
        state.idle_since_ms.store(state.now_ms(), Ordering::SeqCst);
        inner.open.insert(
            id,
            Entry {
                addr,
                state: state.clone(),
            },
        );
        Some(Ticket {
            conns: self.clone(),
            id,
            state,
        })
    }

    /// Ask the connection idle the longest (no request in progress: a silent client, an
    /// unfinished request head, a kept-alive connection) to close, other than `waiting` (the
    /// one admitted but waiting for a place: closing it frees no place, and it would be
    /// dropped unserved once it got one). Returns whether there was one.
    pub(crate) fn evict_oldest_idle(&self, waiting: Option<&Ticket>) -> bool {
        let mut inner = self.lock();
        let spare = waiting.map(|t| t.id);
        let oldest = inner
            .open
            .iter()
            .filter(|(id, _)| Some(**id) != spare)
            .filter(|(_, e)| e.state.busy.load(Ordering::SeqCst) == 0)
            .min_by_key(|(_, e)| e.state.idle_since_ms.load(Ordering::SeqCst))
            .map(|(id, _)| *id);
        match oldest.and_then(|id| inner.open.remove(&id)) {
            Some(e) => {
                // Its address no longer counts it; the ticket's drop finds nothing to remove.
                if let Some(n) = inner.per_addr.get_mut(&e.addr) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        inner.per_addr.remove(&e.addr);
                    }
                }
                e.state.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_cap_and_release() {
        let c = Connections::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let t1 = c.admit(a).unwrap();
        let _t2 = c.admit(b).unwrap();
        assert!(
            c.admit(a).is_none(),
            "the v4-mapped address counts as the same"
        );
        assert!(c.admit("192.0.2.2".parse().unwrap()).is_some());
        drop(t1);
        assert!(c.admit(a).is_some());
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        let c = Connections::new(1);
        let _t = c.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(c.admit("2001:db8::2:3".parse().unwrap()).is_none());
        assert!(c.admit("2001:db8:0:1::1".parse().unwrap()).is_some());
    }

    #[test]
    fn evicts_the_oldest_idle_and_never_a_busy_one() {
        let c = Connections::new(0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let old = c.admit(ip).unwrap();
        let _busy = old.state.busy();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let idle = c.admit(ip).unwrap();
        let waiting = c.admit(ip).unwrap();
        assert!(c.evict_oldest_idle(Some(&waiting)));
        // The idle one was told to close; the busy one was not.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), idle.state.evicted())
                .await
                .unwrap();
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(50), old.state.evicted())
                    .await
                    .is_err()
            );
        });
        assert!(
            !c.evict_oldest_idle(Some(&waiting)),
            "only the busy one and the waiting one are left"
        );
        rt.block_on(async {
            assert!(
                tokio::time::timeout(
                    std::time::Duration::from_millis(50),
                    waiting.state.evicted()
                )
                .await
                .is_err(),
                "the waiting one was told to close"
            );
        });
        drop(waiting);
        drop(idle);
        drop(old);
        let inner = c.lock();
        assert!(inner.open.is_empty() && inner.per_addr.is_empty());
    }
}

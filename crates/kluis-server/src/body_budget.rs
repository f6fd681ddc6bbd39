//! Request-body bytes held in memory: a server-wide budget with a share per identity, so
//! that what authenticated clients send stays bounded whatever they do, and one identity
//! cannot take the budget from the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// Bytes that request bodies may hold at once: in all, and per identity.
#[derive(Debug)]
pub struct BodyBudget {
    total: usize,
    per_identity: usize,
    held: Mutex<Held>,
    /// Signalled whenever bytes are given back.
    freed: Notify,
}

#[derive(Debug, Default)]
struct Held {
    all: usize,
    by_identity: HashMap<String, usize>,
}

/// Which part of the budget was spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhausted {
    /// The identity's share: its own other requests hold it.
    Identity,
    /// The whole budget: many identities' requests hold it.
    Server,
}

/// The bytes one request holds; given back when dropped.
#[derive(Debug)]
pub struct Taken {
    budget: Arc<BodyBudget>,
    who: String,
    bytes: usize,
}

impl BodyBudget {
    /// A budget of `total` bytes, at most `per_identity` of them for one identity.
    pub fn new(total: usize, per_identity: usize) -> Arc<Self> {
        Arc::new(BodyBudget {
            total,
            per_identity: per_identity.min(total),
            held: Mutex::default(),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // The counts stay consistent even if a holder panicked mid-way.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Nothing taken yet, for a request of `who` (a namespaced identity).
    pub fn start(self: &Arc<Self>, who: &str) -> Taken {
        Taken {
            budget: self.clone(),
            who: who.to_owned(),
            bytes: 0,
        }
    }

    fn try_take(&self, who: &str, n: usize) -> Result<(), Exhausted> {
        let mut held = self.lock();
        let mine = held.by_identity.get(who).copied().unwrap_or(0);
        if mine.saturating_add(n) > self.per_identity {
            return Err(Exhausted::Identity);
        }
        if held.all.saturating_add(n) > self.total {
            return Err(Exhausted::Server);
        }
        held.all += n;
        *held.by_identity.entry(who.to_owned()).or_insert(0) += n;
        Ok(())
    }

    /// Bytes held now (all identities).
    pub fn held(&self) -> usize {
        self.lock().all
    }
}

impl Taken {
    /// Take `n` more bytes, waiting up to `patience` for other requests to give some back.
    pub async fn grow(&mut self, n: usize, patience: Duration) -> Result<(), Exhausted> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Made before looking, so that bytes given back in between wake it.
            let freed = self.budget.freed.notified();
            match self.budget.try_take(&self.who, n) {
                Ok(()) => {
                    self.bytes += n;
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    let _ = tokio::time::timeout_at(deadline, freed).await;
                }
            }
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut held = self.budget.lock();
        held.all = held.all.saturating_sub(self.bytes);
        if let Some(mine) = held.by_identity.get_mut(&self.who) {
            *mine = mine.saturating_sub(self.bytes);
            if *mine == 0 {
                held.by_identity.remove(&self.who);
            }
        }
        drop(held);
        self.budget.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::ZERO;

    #[tokio::test]
    async fn shares_per_identity_and_in_all_are_kept_and_given_back() {
        let b = BodyBudget::new(100, 60);
        let mut alice = b.start("alice");
        alice.grow(60, NOW).await.unwrap();
        assert_eq!(alice.grow(1, NOW).await, Err(Exhausted::Identity));
        let mut bob = b.start("bob");
        bob.grow(40, NOW).await.unwrap();
        let mut carol = b.start("carol");
        assert_eq!(carol.grow(1, NOW).await, Err(Exhausted::Server));
        assert_eq!(b.held(), 100);
        drop(alice);
        carol.grow(60, NOW).await.unwrap();
        drop((bob, carol));
        assert_eq!(b.held(), 0);
        assert!(b.lock().by_identity.is_empty(), "no identity is remembered");
    }

    #[tokio::test]
    async fn a_request_waits_for_bytes_given_back_within_its_patience() {
        let b = BodyBudget::new(10, 10);
        let mut first = b.start("alice");
        first.grow(10, NOW).await.unwrap();
        let mut second = b.start("alice");
        let waiting = tokio::spawn(async move {
            second
                .grow(5, Duration::from_secs(10))
                .await
                .map(|()| second)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        let second = waiting.await.unwrap().unwrap();
        assert_eq!(b.held(), 5);
        drop(second);
        let mut third = b.start("bob");
        third.grow(10, NOW).await.unwrap();
        let start = std::time::Instant::now();
        let mut fourth = b.start("carol");
        assert_eq!(
            fourth.grow(1, Duration::from_millis(100)).await,
            Err(Exhausted::Server)
        );
        assert!(start.elapsed() >= Duration::from_millis(100));
    }
}

//! Request-body bytes held in memory: a server-wide budget with a share per identity, so
//! that what authenticated clients send stays bounded whatever they do, and one identity
//! cannot take the budget from the others.
//!
//! A body is charged for the bytes it has sent (its buffer as it grows), never for the
//! length it announces, and a body still arriving can be cut off: when a request finds the
//! budget full, the body that has been arriving the longest (at least [`CUT_AFTER`]) is cut
//! off to make room. So holding the budget takes sending it, again and again, rather than
//! announcing bodies and never sending them: a few identities cannot starve the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long a body must have been arriving before it may be cut off to make room for others.
/// A body on a working network arrives in far less; one that takes longer while others wait
/// for room is refused (its client may retry).
pub const CUT_AFTER: Duration = Duration::from_millis(500);

/// How often a request waiting for room looks again for a body it may cut off.
const LOOK_EVERY: Duration = Duration::from_millis(50);

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
    /// The bodies that hold bytes and are still arriving, by number: when they started, and
    /// how to cut them off.
    arriving: HashMap<u64, (Instant, Arc<Notify>)>,
    next: u64,
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
    id: u64,
    started: Instant,
    /// Signalled when the budget cuts this body off.
    cut: Arc<Notify>,
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

    /// Nothing taken yet, for a request of `who` (a namespaced identity) whose body starts
    /// arriving now.
    pub fn start(self: &Arc<Self>, who: &str) -> Taken {
        let id = {
            let mut held = self.lock();
            held.next += 1;
            held.next
        };
        Taken {
            budget: self.clone(),
            who: who.to_owned(),
            bytes: 0,
            id,
            started: Instant::now(),
            cut: Arc::new(Notify::new()),
        }
    }

    fn try_take(&self, t: &Taken, n: usize) -> Result<(), Exhausted> {
        let mut held = self.lock();
        let mine = held.by_identity.get(&t.who).copied().unwrap_or(0);
        if mine.saturating_add(n) > self.per_identity {
            return Err(Exhausted::Identity);
        }
        if held.all.saturating_add(n) > self.total {
            return Err(Exhausted::Server);
        }
        held.all += n;
        *held.by_identity.entry(t.who.clone()).or_insert(0) += n;
        held.arriving
            .entry(t.id)
            .or_insert_with(|| (t.started, t.cut.clone()));
        Ok(())
    }

    /// Cut off the body (other than `except`) that has been arriving the longest, if that is
    /// at least [`CUT_AFTER`]; it gives its bytes back as its request ends.
    fn cut_oldest(&self, except: u64) {
        let mut held = self.lock();
        let oldest = held
            .arriving
            .iter()
            .filter(|(id, (since, _))| **id != except && since.elapsed() >= CUT_AFTER)
            .min_by_key(|(_, (since, _))| *since)
            .map(|(id, _)| *id);
        if let Some((_, cut)) = oldest.and_then(|id| held.arriving.remove(&id)) {
            // A permit: the body's reader sees it even if it is not waiting right now.
            cut.notify_one();
        }
    }

    /// Bytes held now (all identities).
    pub fn held(&self) -> usize {
        self.lock().all
    }
}

impl Taken {
    /// Take `n` more bytes, waiting up to `patience` for other requests to give some back.
    /// While the whole budget is full, bodies that have been arriving for too long are cut
    /// off to make room ([`BodyBudget`]).
    pub async fn grow(&mut self, n: usize, patience: Duration) -> Result<(), Exhausted> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Made before looking, so that bytes given back in between wake it.
            let freed = self.budget.freed.notified();
            match self.budget.try_take(self, n) {
                Ok(()) => {
                    self.bytes += n;
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    if e == Exhausted::Server {
                        self.budget.cut_oldest(self.id);
                    }
                    let look = deadline.min(tokio::time::Instant::now() + LOOK_EVERY);
                    let _ = tokio::time::timeout_at(look, freed).await;
                }
            }
        }
    }

    /// Resolves when the budget cuts this body off to make room for others (then the
    /// request must end, giving its bytes back).
    pub async fn cut_off(&self) {
        self.cut.notified().await;
    }

    /// The whole body has arrived: it can no longer be cut off.
    pub fn arrived(&self) {
        self.budget.lock().arriving.remove(&self.id);
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut held = self.budget.lock();
        held.arriving.remove(&self.id);
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

    #[tokio::test]
    async fn a_full_budget_cuts_off_the_body_arriving_longest_never_one_arrived_or_young() {
        let b = BodyBudget::new(30, 10);
        let mut whole = b.start("alice");
        whole.grow(10, NOW).await.unwrap();
        whole.arrived();
        let mut old = b.start("bob");
        old.grow(10, NOW).await.unwrap();
        tokio::time::sleep(CUT_AFTER).await;
        let mut young = b.start("carol");
        young.grow(10, NOW).await.unwrap();
        // Dave needs room: bob's body, arriving for longer than CUT_AFTER, is cut off.
        let mut dave = b.start("dave");
        let waiting =
            tokio::spawn(async move { dave.grow(5, Duration::from_secs(5)).await.map(|()| dave) });
        tokio::time::timeout(Duration::from_secs(1), old.cut_off())
            .await
            .expect("the oldest arriving body is cut off");
        drop(old);
        let dave = waiting.await.unwrap().unwrap();
        assert_eq!(b.held(), 25);
        // Neither the body that arrived nor the young one was cut off; erin, finding no room,
        // waits her patience and is refused, cutting off nothing younger than CUT_AFTER.
        let mut erin = b.start("erin");
        assert_eq!(
            erin.grow(10, Duration::from_millis(100)).await,
            Err(Exhausted::Server)
        );
        for t in [&whole, &young] {
            assert!(
                tokio::time::timeout(Duration::from_millis(50), t.cut_off())
                    .await
                    .is_err(),
                "a body that arrived or is young was cut off"
            );
        }
        drop((whole, young, dave, erin));
        assert_eq!(b.held(), 0);
        assert!(b.lock().arriving.is_empty(), "no body is remembered");
    }
}

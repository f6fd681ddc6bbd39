//! Per-identity rate limits: a token bucket per user, charged one token per unwrapped item.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tracks at most this many identities; beyond it, identities with full buckets are forgotten.
const MAX_TRACKED: usize = 100_000;

/// Token buckets keyed by identity.
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_sec` tokens refill each second up to `burst`; `per_sec == 0` disables limiting.
    pub fn new(per_sec: f64, burst: f64) -> Self {
        RateLimiter {
            per_sec,
            burst: burst.max(1.0),
            buckets: Mutex::default(),
        }
    }

    /// Charge `cost` tokens to `who`; on refusal, how long until it would pass.
    pub fn check(&self, who: &str, cost: f64) -> Result<(), Duration> {
        if self.per_sec <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(who) {
            let (rate, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(who.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        // A request larger than the burst can pass when the bucket is full (a batch of
        // max_batch items must be possible), driving it negative.
        if *tokens >= cost.min(self.burst) {
            *tokens -= cost;
            Ok(())
        } else {
            let missing = cost.min(self.burst) - *tokens;
            // At most an hour, whatever the configured rate (no overflow on tiny rates).
            Err(Duration::try_from_secs_f64(missing / self.per_sec)
                .map_or(Duration::from_secs(3600), |d| {
                    d.min(Duration::from_secs(3600))
                }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refuses_beyond_burst_and_per_identity() {
        let l = RateLimiter::new(1.0, 3.0);
        for _ in 0..3 {
            assert!(l.check("alice", 1.0).is_ok());
        }
        let wait = l.check("alice", 1.0).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        // Another identity has its own bucket.
        assert!(l.check("bob", 1.0).is_ok());
        // A batch larger than the burst passes on a full bucket, then the debt is paid.
        assert!(l.check("carol", 10.0).is_ok());
        assert!(l.check("carol", 1.0).is_err());
        assert!(RateLimiter::new(0.0, 0.0).check("x", 1e9).is_ok());
    }
}

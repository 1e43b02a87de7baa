//! The rate limit on the blocked-log records the DNS gates write in user
//! space (`denied-dns-name` per refused query, `denied-range` per rebinding
//! address): a token bucket per endpoint, like the kernel's `EVENT_RATE`
//! for denied-attempt events, with the same `events_per_sec` refill and
//! `events_burst` size. Without it a workload could grow the log at will,
//! one refused query at a time. Every record it holds back is counted by
//! the caller (`EndpointDnsStats::records_suppressed`).
//!
//! One bucket per endpoint: one pod's flood never uses another's tokens.
//! The kernel's buckets are per CPU as well; this one is per endpoint only.
//! A second limit alike (`twin`) bounds the agent's own warnings about an
//! endpoint's queries and answers (suspicious names, rebinding) the same way.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::util::lock;

/// Above this many buckets, full ones are dropped when a new one is made
/// (a full bucket and a missing one behave the same).
const PRUNE_ABOVE: usize = 1024;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    /// When the tokens were last topped up.
    last: Instant,
}

/// Token buckets, one per endpoint.
#[derive(Debug)]
pub struct RecordLimit {
    per_sec: u32,
    burst: u32,
    buckets: Mutex<HashMap<u32, Bucket>>,
}

impl RecordLimit {
    /// `per_sec` tokens refill each second, up to `burst`; a new endpoint
    /// starts with a full bucket.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self { per_sec, burst, buckets: Mutex::default() }
    }

    /// A new limit with the same rate and burst (empty of state).
    pub fn twin(&self) -> Self {
        Self::new(self.per_sec, self.burst)
    }

    /// Whether `endpoint` may write one more record now (takes a token).
    pub fn allow(&self, endpoint: u32) -> bool {
        self.allow_at(endpoint, Instant::now())
    }

    /// `allow` at a given time (the tests' clock). Times before a bucket's
    /// last refill count as no time passed.
    pub fn allow_at(&self, endpoint: u32, now: Instant) -> bool {
        let mut buckets = lock(&self.buckets);
        if !buckets.contains_key(&endpoint) && buckets.len() >= PRUNE_ABOVE {
            buckets.retain(|_, b| self.refill(*b, now).tokens < self.burst);
        }
        let b = buckets.entry(endpoint).or_insert(Bucket { tokens: self.burst, last: now });
        *b = self.refill(*b, now);
        if b.tokens == 0 {
            return false;
        }
        b.tokens -= 1;
        true
    }

    /// The kernel's refill (`agent-ebpf/src/events.rs`, `take_token`):
    /// whole tokens for the time since the last refill, capped at the
    /// burst; a fraction of a token waits for the next call.
    fn refill(&self, b: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(b.last);
        let earned = elapsed.as_nanos() * u128::from(self.per_sec) / Duration::from_secs(1).as_nanos();
        if earned == 0 {
            return b;
        }
        let tokens = (u128::from(b.tokens) + earned).min(u128::from(self.burst)) as u32;
        Bucket { tokens, last: now }
    }

    #[cfg(test)]
    fn buckets(&self) -> usize {
        lock(&self.buckets).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// How many of `n` records at `at` get through.
    fn take(l: &RecordLimit, endpoint: u32, n: u32, at: Instant) -> u32 {
        (0..n).filter(|_| l.allow_at(endpoint, at)).count() as u32
    }

    #[test]
    fn a_burst_then_the_refill_rate() {
        let l = RecordLimit::new(50, 200);
        let t0 = Instant::now();
        assert_eq!(take(&l, 1, 1000, t0), 200, "a full bucket lets the burst through");
        assert_eq!(take(&l, 1, 10, t0 + ms(10)), 0, "10 ms earn no token at 50/s");
        // 20 ms per token: 1 s earns 50.
        assert_eq!(take(&l, 1, 1000, t0 + ms(1000)), 50);
        assert_eq!(take(&l, 1, 1000, t0 + ms(1020)), 1);
        // A long pause refills to the burst, never beyond.
        assert_eq!(take(&l, 1, 1000, t0 + ms(60_000)), 200);
    }

    #[test]
    fn a_steady_flood_gets_burst_plus_rate_times_time() {
        let l = RecordLimit::new(50, 200);
        let t0 = Instant::now();
        // 1000 records a second for 10 s, one every millisecond.
        let passed: u32 = (0..10_000).map(|i| take(&l, 7, 1, t0 + ms(i))).sum();
        assert!((200 + 450..=200 + 500).contains(&passed), "{passed} of 10000");
    }

    #[test]
    fn fractions_of_a_token_are_kept() {
        let l = RecordLimit::new(50, 1);
        let t0 = Instant::now();
        assert!(l.allow_at(3, t0));
        // Asking every 5 ms: a token every 20 ms, not never.
        let passed: u32 = (1..=200).map(|i| take(&l, 3, 1, t0 + ms(5 * i))).sum();
        assert_eq!(passed, 50);
    }

    #[test]
    fn a_twin_has_the_same_limit_and_its_own_buckets() {
        let l = RecordLimit::new(50, 200);
        let t0 = Instant::now();
        assert_eq!(take(&l, 1, 5000, t0), 200);
        let twin = l.twin();
        assert_eq!(take(&twin, 1, 5000, t0), 200);
        assert_eq!(take(&twin, 1, 5000, t0 + ms(1000)), 50);
    }

    #[test]
    fn one_endpoint_s_flood_does_not_use_another_s_tokens() {
        let l = RecordLimit::new(50, 200);
        let t0 = Instant::now();
        assert_eq!(take(&l, 1, 5000, t0), 200);
        assert_eq!(take(&l, 2, 5, t0), 5, "endpoint 2 still has its own burst");
        assert_eq!(take(&l, 1, 5, t0), 0);
    }

    #[test]
    fn zero_rate_or_burst_and_time_going_back() {
        let t0 = Instant::now() + ms(10_000);
        let none = RecordLimit::new(50, 0);
        assert_eq!(take(&none, 1, 10, t0 + ms(5000)), 0);
        let no_refill = RecordLimit::new(0, 3);
        assert_eq!(take(&no_refill, 1, 10, t0), 3);
        assert_eq!(take(&no_refill, 1, 10, t0 + ms(60_000)), 0);
        let l = RecordLimit::new(50, 1);
        assert!(l.allow_at(1, t0));
        assert!(!l.allow_at(1, t0 - ms(5000)), "an earlier time earns nothing");
    }

    #[test]
    fn full_buckets_are_pruned_without_changing_any_verdict() {
        let l = RecordLimit::new(50, 10);
        let t0 = Instant::now();
        for ep in 0..PRUNE_ABOVE as u32 {
            assert!(l.allow_at(ep, t0));
        }
        // Endpoint 0 drains its bucket; 100 ms later (5 tokens) the others
        // are full again and go, endpoint 0's stays (short of the burst).
        assert_eq!(take(&l, 0, 100, t0), 9);
        assert!(l.allow_at(100_000, t0 + ms(100)));
        assert_eq!(l.buckets(), 2);
        assert_eq!(take(&l, 0, 100, t0 + ms(100)), 5, "endpoint 0 kept its state");
    }
}

//! The node-wide rate limit on records, fair per endpoint (pod). Each
//! endpoint that wrote recently has its own token bucket, refilled at its
//! share of the node's rate: `min(per-endpoint rate, node rate / active
//! endpoints)` (the burst likewise). The shares add up to at most the node
//! rate, so the node-wide cap holds, and one pod flooding the log spends
//! only its own share: a quiet pod's next record still goes through. What
//! a bucket refuses becomes a `lost` record (`writer.rs`).
//!
//! It comes after folding (a retry loop is one record per window) and
//! behind the kernel's per-endpoint bucket and the DNS gate's
//! (`dnsgate/ratelimit.rs`, 50/s and a burst of 200 each), which bound
//! what reaches user space at all: the defaults here let all of one
//! endpoint's through, and bound many endpoints at once.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub per_endpoint_rate: f64,
    pub per_endpoint_burst: f64,
    pub node_rate: f64,
    pub node_burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { per_endpoint_rate: 200.0, per_endpoint_burst: 1000.0, node_rate: 1000.0, node_burst: 5000.0 }
    }
}

/// An endpoint stops counting as active after this long without a record.
pub const ACTIVE: Duration = Duration::from_secs(10);

struct Bucket {
    tokens: f64,
    refilled: Instant,
    used: Instant,
}

pub struct FairLimit {
    limits: Limits,
    buckets: HashMap<String, Bucket>,
}

impl FairLimit {
    pub fn new(limits: Limits) -> Self {
        Self { limits, buckets: HashMap::new() }
    }

    /// The rate and burst of each active endpoint's bucket now.
    fn share(&self) -> (f64, f64) {
        let active = self.buckets.len().max(1) as f64;
        let l = &self.limits;
        (l.per_endpoint_rate.min(l.node_rate / active), l.per_endpoint_burst.min(l.node_burst / active).max(1.0))
    }

    /// Takes a token for one record of `endpoint`; false: over its share.
    pub fn take(&mut self, endpoint: &str, now: Instant) -> bool {
        if !self.buckets.contains_key(endpoint) {
            self.forget_idle(now);
            // A new endpoint starts with the share it will have, full.
            let n = self.buckets.len() as f64 + 1.0;
            let burst = self.limits.per_endpoint_burst.min(self.limits.node_burst / n).max(1.0);
            self.buckets.insert(endpoint.to_owned(), Bucket { tokens: burst, refilled: now, used: now });
        }
        let (rate, burst) = self.share();
        let Some(b) = self.buckets.get_mut(endpoint) else { return false };
        let dt = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(burst);
        b.refilled = now;
        b.used = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Endpoints without a record for `ACTIVE` no longer take a share.
    pub fn forget_idle(&mut self, now: Instant) {
        self.buckets.retain(|_, b| now.saturating_duration_since(b.used) < ACTIVE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { per_endpoint_rate: 100.0, per_endpoint_burst: 200.0, node_rate: 300.0, node_burst: 600.0 };

    /// `n` records of `ep` evenly over `secs` from `t0`; how many passed.
    fn offer(l: &mut FairLimit, ep: &str, n: u32, t0: Instant, secs: f64) -> u32 {
        (0..n).filter(|i| l.take(ep, t0 + Duration::from_secs_f64(secs * f64::from(*i) / f64::from(n)))).count() as u32
    }

    #[test]
    fn one_endpoint_gets_its_burst_then_its_rate() {
        let mut l = FairLimit::new(L);
        let t0 = Instant::now();
        let passed = offer(&mut l, "a", 100_000, t0, 1.0);
        // 200 at once, 100/s for a second.
        assert!((299..=301).contains(&passed), "{passed}");
    }

    #[test]
    fn a_flooding_pod_does_not_take_a_quiet_pods_records() {
        let mut l = FairLimit::new(L);
        let t0 = Instant::now();
        // Five pods flood for 5 s, interleaved; a sixth writes 10 records.
        let mut passed = [0u32; 5];
        let mut quiet = 0;
        for step in 0..50_000u32 {
            let t = t0 + Duration::from_micros(u64::from(step) * 100);
            let i = (step % 5) as usize;
            passed[i] += u32::from(l.take(&format!("flood-{i}"), t));
            if step % 5000 == 2500 {
                quiet += u32::from(l.take("quiet", t));
            }
        }
        assert_eq!(quiet, 10, "every record of the quiet pod");
        let total: u32 = passed.iter().sum();
        // The node cap: its burst plus its rate for 5 s, at most.
        assert!(total <= 600 + 300 * 5, "{total} over the node cap");
        // Fair: each flooder gets about the same.
        let (lo, hi) = (passed.iter().min().unwrap(), passed.iter().max().unwrap());
        assert!(hi - lo <= hi / 10 + 2, "unfair: {passed:?}");
        assert!(*lo >= 300, "each gets its share: {passed:?}");
    }

    #[test]
    fn an_idle_pod_stops_taking_a_share() {
        let mut l = FairLimit::new(L);
        let t0 = Instant::now();
        offer(&mut l, "a", 10, t0, 0.1);
        offer(&mut l, "b", 10, t0, 0.1);
        assert_eq!(l.share().0, 100.0);
        let later = t0 + ACTIVE + Duration::from_secs(1);
        l.forget_idle(later);
        assert!(l.buckets.is_empty());
        let mut many = FairLimit::new(L);
        for i in 0..6 {
            many.take(&format!("p{i}"), t0);
        }
        assert_eq!(many.share(), (50.0, 100.0), "node rate and burst split six ways");
    }
}

//! What a run lost or found that a person should hear of (`exec` prints
//! it at exit): kernel loss counters and the DNS gates' findings.

use super::Agent;

impl Agent {
    /// Kernel loss counters worth telling a human about, and the DNS
    /// gates' records held back by the same rate limit, as (what, count).
    pub fn losses(&self) -> Vec<(&'static str, u64)> {
        use agent_common::loss;
        let c = self.enforcer.counters();
        let at = |i: u32| c.get(i as usize).copied().unwrap_or(0);
        [
            ("blocked-attempt records suppressed by the rate limit", at(loss::EVENT_RATE_LIMITED)),
            (
                "DNS-gate records (refused names, rebinding) suppressed by the rate limit",
                self.gate_stats.sum(|s| s.records_suppressed),
            ),
            ("blocked-attempt records lost (ring buffer full)", at(loss::EVENT_RINGBUF_FULL)),
            ("DNS answers dropped (hold buffer full)", at(loss::DNS_RINGBUF_FULL)),
            ("DNS answers dropped (no owning process recorded)", at(loss::DNS_NO_OWNER)),
            ("DNS answers dropped (larger than the hold buffer)", at(loss::DNS_TOO_LARGE)),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }

    /// DNS-gate findings worth telling a human about, as (what, count).
    pub fn dns_findings(&self) -> Vec<(&'static str, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let g = &self.gate_stats;
        let mut suspicious = 0;
        if let Ok(m) = g.per_endpoint.lock() {
            suspicious = m.values().map(|s| s.suspicious_long_label + s.suspicious_entropy + s.high_rate).sum();
        }
        [
            ("DNS answers dropped: they matched no query (forged, unsolicited or late)", g.answers_unsolicited.load(Relaxed)),
            ("DNS queries with names that look like tunnelled data, or too many per second", suspicious),
            (
                "addresses not learned because a cap was reached and all older ones had live connections",
                g.ips_refused_cap.load(Relaxed),
            ),
            ("DNS-over-TCP connections refused: the gate's connection cap was reached", g.sum(|s| s.tcp_refused)),
            ("idle DNS-over-TCP connections closed to make room under the gate's connection cap", g.sum(|s| s.tcp_evicted)),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

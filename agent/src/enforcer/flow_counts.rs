//! Per-endpoint flow counts from the kernel: connections and datagrams by
//! reason, which policy entry allowed them, always-denied ranges hit, and
//! bytes. The kernel keeps them per CPU in pinned maps (so they survive an
//! agent restart); `Enforcer::flow_counts` sums them at scrape time.

use std::collections::HashMap;

use agent_common::Reason;

use super::Enforcer;

/// Names of the always-denied range classes (`range` label of
/// `portcullis_denied_range_total`), a fixed table: every pod's series
/// exist at 0 for each of them. The kernel's range ids map onto these.
pub const RANGE_NAMES: [&str; 9] =
    ["metadata", "link-local", "private", "loopback", "cgnat", "multicast", "reserved", "ula", "nat64"];

/// One endpoint's counts, summed over CPUs. Every value only grows while
/// the endpoint exists (pinned maps carry them over a restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowCounts {
    /// Connections (TCP connect, connected UDP) by `Reason` value.
    pub connections: [u64; Reason::MAX as usize],
    /// Datagrams judged one by one (unconnected UDP) by `Reason` value.
    pub datagrams: [u64; Reason::MAX as usize],
    /// Allowed connections by the policy entry that allowed them, as the
    /// entry's text (`api.example.com`, `*.slack.com`, `192.0.2.0/24`):
    /// never a name the workload chose.
    pub rules: Vec<(String, u64)>,
    /// Denied connections by always-denied range (`RANGE_NAMES`).
    pub ranges: Vec<(&'static str, u64)>,
    pub egress_bytes: u64,
    pub ingress_bytes: u64,
}

impl Default for FlowCounts {
    fn default() -> Self {
        Self {
            connections: [0; Reason::MAX as usize],
            datagrams: [0; Reason::MAX as usize],
            rules: Vec::new(),
            ranges: Vec::new(),
            egress_bytes: 0,
            ingress_bytes: 0,
        }
    }
}

impl FlowCounts {
    /// Adds `other` (two endpoints reported under one pod's labels).
    pub fn add(&mut self, other: &FlowCounts) {
        for (a, b) in self.connections.iter_mut().zip(other.connections) {
            *a += b;
        }
        for (a, b) in self.datagrams.iter_mut().zip(other.datagrams) {
            *a += b;
        }
        for (rule, n) in &other.rules {
            match self.rules.iter_mut().find(|(r, _)| r == rule) {
                Some((_, k)) => *k += n,
                None => self.rules.push((rule.clone(), *n)),
            }
        }
        for (range, n) in &other.ranges {
            match self.ranges.iter_mut().find(|(r, _)| r == range) {
                Some((_, k)) => *k += n,
                None => self.ranges.push((range, *n)),
            }
        }
        self.egress_bytes += other.egress_bytes;
        self.ingress_bytes += other.ingress_bytes;
    }
}

impl Enforcer {
    /// Every endpoint's flow counts, by endpoint id (read from the kernel's
    /// per-CPU maps through their own handle: no state lock).
    pub fn flow_counts(&self) -> HashMap<u32, FlowCounts> {
        // The kernel side is being built in parallel: filled from the
        // per-endpoint maps once they exist.
        HashMap::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_merges_rules_and_ranges() {
        let mut a = FlowCounts { rules: vec![("a.example".into(), 1)], ranges: vec![("metadata", 2)], ..Default::default() };
        a.connections[Reason::DeniedRange as usize] = 3;
        let mut b = a.clone();
        b.rules.push(("b.example".into(), 5));
        b.egress_bytes = 7;
        a.add(&b);
        assert_eq!(a.connections[Reason::DeniedRange as usize], 6);
        assert_eq!(a.rules, vec![("a.example".into(), 2), ("b.example".into(), 5)]);
        assert_eq!(a.ranges, vec![("metadata", 4)]);
        assert_eq!(a.egress_bytes, 7);
    }
}

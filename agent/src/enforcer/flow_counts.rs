//! Per-endpoint flow counts from the kernel (`FLOW_COUNTERS`), read
//! through the counters' own handle: a scrape never holds the state lock
//! while it reads per-CPU values. Rule ids become the policy entries' text
//! here (`CompiledPolicy::rules`), range ids their class names.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use agent_common::{FlowCounters, Reason, flow::range, flow::slot};

use super::Enforcer;

/// Names of the always-denied range classes (`range` label of
/// `portcullis_denied_range_total`), a fixed table: every pod's series
/// exist at 0 for each of them. Index + 1 is the kernel's range id.
pub use agent_common::flow::range::NAMES as RANGE_NAMES;

/// One endpoint's counts since its id was given out (pinned: they survive
/// an agent restart or upgrade).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowCounts {
    /// By `Reason` value: connections (`connect()`, a TCP SYN on the veth).
    pub connections: [u64; Reason::MAX as usize],
    /// By `Reason` value: datagrams and other packets judged one by one.
    pub datagrams: [u64; Reason::MAX as usize],
    /// Allowed connections and datagrams by the policy entry's text, every
    /// entry of the current policy listed (at 0 until used); allowances by
    /// an entry past the counted ones, or by none known, under "other".
    pub rules: Vec<(String, u64)>,
    /// Always-denied range denials by class, every class listed.
    pub ranges: Vec<(&'static str, u64)>,
    pub egress_bytes: u64,
    pub ingress_bytes: u64,
    pub egress_packets: u64,
    pub ingress_packets: u64,
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
            egress_packets: 0,
            ingress_packets: 0,
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
        self.egress_packets += other.egress_packets;
        self.ingress_packets += other.ingress_packets;
    }

    /// The counts in `c`, rules named from `rules` (`CompiledPolicy::rules`).
    pub fn from_kernel(c: &FlowCounters, rules: &[String]) -> Self {
        let at = |s: u32| c.slots.get(s as usize).copied().unwrap_or(0);
        let mut connections = [0; Reason::MAX as usize];
        let mut datagrams = [0; Reason::MAX as usize];
        for r in 0..slot::REASONS {
            connections[r as usize] = at(slot::CONNECTION + r);
            datagrams[r as usize] = at(slot::DATAGRAM + r);
        }
        let mut listed: Vec<(String, u64)> = Vec::with_capacity(rules.len() + 1);
        let other = at(slot::RULE);
        for (i, text) in rules.iter().enumerate() {
            let id = u32::try_from(i + 1).unwrap_or(u32::MAX);
            if id < slot::RULES {
                listed.push((text.clone(), at(slot::RULE + id)));
            }
        }
        // Ids past the counted ones share the "other" slot with id 0.
        if rules.len() as u32 >= slot::RULES || other > 0 {
            listed.push(("other".to_owned(), other));
        }
        let ranges = (1..=range::OTHER).map(|r| (range::name(r), at(slot::RANGE + r))).collect();
        Self {
            connections,
            datagrams,
            rules: listed,
            ranges,
            egress_bytes: at(slot::EGRESS_BYTES),
            ingress_bytes: at(slot::INGRESS_BYTES),
            egress_packets: at(slot::EGRESS_PACKETS),
            ingress_packets: at(slot::INGRESS_PACKETS),
        }
    }
}

/// An endpoint's allowed connections to one destination (`FLOW_DESTS`),
/// with the name the endpoint last resolved to the address (none for a
/// CIDR rule's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestCount {
    pub ip: IpAddr,
    pub name: Option<String>,
    pub proto: u8,
    pub port: u16,
    pub connections: u64,
}

impl Enforcer {
    /// Every endpoint's allowed connections by destination, by endpoint id:
    /// the map is read first, then the names in one short state lock.
    pub fn flow_dests(&self) -> HashMap<u32, Vec<DestCount>> {
        let raw = self.counters.dests.read();
        self.read_state(|st| {
            let mut out: HashMap<u32, Vec<DestCount>> = HashMap::new();
            for (k, n) in raw {
                let v6 = Ipv6Addr::from(k.ip);
                let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
                let name = st.endpoint(k.endpoint).and_then(|e| e.name_for(ip)).map(str::to_owned);
                let port = u16::from_be_bytes(k.port);
                out.entry(k.endpoint).or_default().push(DestCount { ip, name, proto: k.proto, port, connections: n });
            }
            out
        })
    }

    /// Every endpoint's flow counts, by endpoint id. The endpoints (and
    /// their rules) are copied out in one short lock; the per-CPU reads
    /// happen after it.
    pub fn flow_counts(&self) -> HashMap<u32, FlowCounts> {
        let eps: Vec<(u32, Vec<String>)> =
            self.snapshot().into_iter().map(|r| (r.view.id, r.view.policy.rules.clone())).collect();
        eps.into_iter()
            .filter_map(|(id, rules)| Some((id, FlowCounts::from_kernel(&self.counters.flows.read(id)?, &rules))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_become_named_counts() {
        let mut c = FlowCounters::default();
        c.slots[(slot::CONNECTION + Reason::AllowedFqdn as u32) as usize] = 5;
        c.slots[(slot::DATAGRAM + Reason::DeniedRange as u32) as usize] = 2;
        c.slots[(slot::RULE + 2) as usize] = 4;
        c.slots[(slot::RANGE + range::METADATA) as usize] = 2;
        c.slots[slot::EGRESS_BYTES as usize] = 1500;
        let rules = vec!["egress[0] toFQDNs a.example".to_owned(), "egress[1] toFQDNs b.example".to_owned()];
        let f = FlowCounts::from_kernel(&c, &rules);
        assert_eq!(f.connections[Reason::AllowedFqdn as usize], 5);
        assert_eq!(f.datagrams[Reason::DeniedRange as usize], 2);
        assert_eq!(f.rules, vec![(rules[0].clone(), 0), (rules[1].clone(), 4)]);
        assert!(f.ranges.contains(&("metadata", 2)));
        assert!(f.ranges.contains(&("private", 0)));
        assert_eq!(f.egress_bytes, 1500);
    }
}

#[cfg(test)]
mod add_tests {
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

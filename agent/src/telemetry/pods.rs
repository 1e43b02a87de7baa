//! The per-pod families: connections and datagrams by reason, by policy
//! entry and by always-denied range, bytes, DNS queries by decision and
//! rcode, the gate's per-pod findings, learned entries.
//!
//! Bounded by design: label values are the pod's own names, fixed tables
//! (reasons, ranges, decisions, rcodes) and the operator's policy entries
//! (capped per pod); never an address, a queried name, a host or a process
//! name, which a workload chooses. Every fixed-table series of a pod exists
//! at 0 from the first scrape that sees it: `increase()` misses a first
//! sample, so a series born at 1 would hide the pod's first block.

use std::fmt;

use agent_common::Reason;
use prometheus_client::encoding::DescriptorEncoder;

use super::{
    coverage::{Held, UNCONTAINED},
    families::{Extra, PodAnd, PodLabels, counter, gauge},
};
use crate::{
    dnsgate::{
        EndpointDnsStats,
        queries::{Decision, QueryCells, Rcode},
    },
    enforcer::{FlowCounts, RANGE_NAMES},
};

/// Reasons a connection or datagram of an endpoint can get: their series
/// exist at 0; any other reason appears once counted.
pub const FLOW_REASONS: [Reason; 15] = [
    Reason::AllowedFqdn,
    Reason::AllowedCidr,
    Reason::AllowedDns,
    Reason::AllowedLoopback,
    Reason::AllowedExempt,
    Reason::UdpConnectDeferred,
    Reason::DnsCaught,
    Reason::DeniedRange,
    Reason::DeniedDefault,
    Reason::DeniedDnsServer,
    Reason::DeniedMalformed,
    Reason::DeniedInternal,
    Reason::DeniedDnsNoGate,
    Reason::DeniedSourceRoute,
    Reason::DeniedSpoofed,
];

/// Policy entries with a series of their own per pod; the rest are summed
/// under `rule="other"`.
pub const MAX_RULES: usize = 64;

/// What a pod's series say. Counters only once the pod is gone (`gauges`
/// `None`): its final values, for the grace period.
#[derive(Clone, Debug, Default)]
pub struct PodValues {
    pub flow: FlowCounts,
    pub queries: QueryCells,
    pub dns: EndpointDnsStats,
    pub gauges: Option<PodGauges>,
}

/// What only a live pod has.
#[derive(Clone, Debug, Default)]
pub struct PodGauges {
    pub learned: u64,
    pub uncontained: Held,
    /// Its endpoints: (name, mode).
    pub endpoints: Vec<(String, &'static str)>,
}

impl PodValues {
    /// Adds another endpoint reported under the same labels.
    pub fn add(&mut self, o: &PodValues) {
        self.flow.add(&o.flow);
        for (a, b) in self.queries.iter_mut().zip(o.queries) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        let (d, e) = (&mut self.dns, &o.dns);
        d.refused += e.refused;
        d.suspicious_long_label += e.suspicious_long_label;
        d.suspicious_entropy += e.suspicious_entropy;
        d.high_rate += e.high_rate;
        d.records_suppressed += e.records_suppressed;
        d.tcp_refused += e.tcp_refused;
        d.tcp_evicted += e.tcp_evicted;
        match (&mut self.gauges, &o.gauges) {
            (Some(g), Some(h)) => {
                g.learned += h.learned;
                for (cap, n) in &h.uncontained {
                    match g.uncontained.iter_mut().find(|(c, _)| c == cap) {
                        Some((_, k)) => *k += n,
                        None => g.uncontained.push((cap, *n)),
                    }
                }
                g.endpoints.extend(h.endpoints.iter().cloned());
            }
            (None, Some(h)) => self.gauges = Some(h.clone()),
            _ => {}
        }
    }
}

fn verdict(r: Reason) -> &'static str {
    if r.is_allowed() { "allowed" } else { "denied" }
}

/// Connection and datagram series of one pod: the fixed set, plus any
/// other reason counted.
fn flow_rows<'a>(pod: &'a PodLabels, f: &'a FlowCounts) -> impl Iterator<Item = (PodAnd<'a>, u64)> + 'a {
    [("connection", &f.connections), ("datagram", &f.datagrams)].into_iter().flat_map(move |(kind, counts)| {
        (0..Reason::MAX).filter_map(Reason::from_u32).filter_map(move |r| {
            let v = counts.get(r as usize).copied().unwrap_or(0);
            (FLOW_REASONS.contains(&r) || v > 0)
                .then(|| (PodAnd { pod, extra: Extra::Flow { kind, verdict: verdict(r), reason: r.as_str() } }, v))
        })
    })
}

/// By-rule series of one pod: the first `MAX_RULES` entries, the rest
/// folded into `other`.
fn rule_rows(f: &FlowCounts) -> Vec<(&str, u64)> {
    let mut rows: Vec<(&str, u64)> = f.rules.iter().take(MAX_RULES).map(|(r, n)| (r.as_str(), *n)).collect();
    if f.rules.len() > MAX_RULES {
        rows.push(("other", f.rules[MAX_RULES..].iter().map(|(_, n)| n).sum()));
    }
    rows
}

/// Range series of one pod: every fixed name, and any other the kernel
/// reported.
fn range_rows(f: &FlowCounts) -> Vec<(&'static str, u64)> {
    let mut rows: Vec<(&'static str, u64)> = RANGE_NAMES.iter().map(|n| (*n, 0)).collect();
    for (name, v) in &f.ranges {
        match rows.iter_mut().find(|(n, _)| n == name) {
            Some((_, k)) => *k += v,
            None => rows.push((name, *v)),
        }
    }
    rows
}

/// Every per-pod family.
pub fn encode(enc: &mut DescriptorEncoder, pods: &[(PodLabels, PodValues)]) -> fmt::Result {
    let with = |pod, extra| PodAnd { pod, extra };
    counter(
        enc,
        "portcullis_connections_total",
        "Connections (kind=connection) and unconnected datagrams (kind=datagram) of the pod, by the kernel's verdict and reason.",
        pods.iter().flat_map(|(p, v)| flow_rows(p, &v.flow)),
    )?;
    counter(
        enc,
        "portcullis_connections_by_rule_total",
        "Allowed connections of the pod by the policy entry that allowed them (its text; past the per-pod cap, rule=\"other\").",
        pods.iter().flat_map(|(p, v)| rule_rows(&v.flow).into_iter().map(move |(r, n)| (with(p, Extra::Rule(r)), n))),
    )?;
    counter(
        enc,
        "portcullis_denied_range_total",
        "Connections and datagrams of the pod denied because the destination is in an always-denied range, by range.",
        pods.iter().flat_map(|(p, v)| range_rows(&v.flow).into_iter().map(move |(r, n)| (with(p, Extra::Range(r)), n))),
    )?;
    counter(
        enc,
        "portcullis_egress_bytes_total",
        "Bytes the pod sent (IP packets, as the kernel counts them).",
        pods.iter().map(|(p, v)| (with(p, Extra::None), v.flow.egress_bytes)),
    )?;
    counter(
        enc,
        "portcullis_ingress_bytes_total",
        "Bytes the pod received (IP packets, as the kernel counts them).",
        pods.iter().map(|(p, v)| (with(p, Extra::None), v.flow.ingress_bytes)),
    )?;
    counter(
        enc,
        "portcullis_dns_queries_total",
        "DNS queries of the pod through the gate, by decision (forwarded, audited, refused, dropped) and the rcode the pod got.",
        pods.iter().flat_map(|(p, v)| {
            Decision::ALL.into_iter().flat_map(move |d| {
                Rcode::ALL.into_iter().map(move |r| {
                    (with(p, Extra::Dns { decision: d.as_str(), rcode: r.as_str() }), v.queries[d as usize][r as usize])
                })
            })
        }),
    )?;
    counter(
        enc,
        "portcullis_dns_suspicious_queries_total",
        "Queries that look like tunnelled data (long label, high entropy) or exceed the per-second rate.",
        pods.iter().flat_map(|(p, v)| {
            let s = v.dns;
            [("long-label", s.suspicious_long_label), ("entropy", s.suspicious_entropy), ("rate", s.high_rate)]
                .into_iter()
                .map(move |(k, n)| (with(p, Extra::Kind(k)), n))
        }),
    )?;
    counter(
        enc,
        "portcullis_dns_records_suppressed_total",
        "Blocked-log records of the DNS gates (refused names, rebinding answers) held back by the pod's record rate limit.",
        pods.iter().map(|(p, v)| (with(p, Extra::None), v.dns.records_suppressed)),
    )?;
    counter(
        enc,
        "portcullis_dns_tcp_over_cap_total",
        "DNS-over-TCP connections over a gate's connection cap: a new one refused (every connection mid-query), or the longest idle one closed to make room.",
        pods.iter().flat_map(|(p, v)| {
            [("refused", v.dns.tcp_refused), ("evicted-idle", v.dns.tcp_evicted)]
                .into_iter()
                .map(move |(a, n)| (with(p, Extra::Action(a)), n))
        }),
    )?;
    let live = || pods.iter().filter_map(|(p, v)| v.gauges.as_ref().map(|g| (p, g)));
    gauge(
        enc,
        "portcullis_learned_entries",
        "Kernel LEARNED entries (endpoint, protocol, port, address) the pod holds now.",
        live().map(|(p, g)| (with(p, Extra::None), g.learned as i64)),
    )?;
    gauge(
        enc,
        "portcullis_endpoint_uncontained_processes",
        "Processes of the pod holding a capability whose traffic cgroup hooks cannot see (packet sockets, TUN): not fully enforced.",
        // Every capability at 0 too: a root process starting in the pod
        // changes values, not the series.
        live().flat_map(|(p, g)| {
            UNCONTAINED.into_iter().map(move |(_, c)| {
                let n = g.uncontained.iter().find(|(h, _)| *h == c).map_or(0, |(_, n)| *n);
                (with(p, Extra::Capability(c)), i64::from(n))
            })
        }),
    )?;
    gauge(
        enc,
        "portcullis_endpoint_info",
        "1 per endpoint the agent enforces: its name (the one place it is a label) and mode, to join on source_namespace, source_pod.",
        live().flat_map(|(p, g)| g.endpoints.iter().map(move |(e, m)| (with(p, Extra::Info { endpoint: e, mode: m }), 1))),
    )
}

#[cfg(test)]
#[path = "pods_tests.rs"]
mod tests;

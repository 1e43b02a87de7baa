//! User-space counters carried from one agent to the next (a restart, a
//! rolling update), so Prometheus counters never go backwards: the DNS
//! gate's per-endpoint counts (by the endpoint's cgroup, which keeps its
//! endpoint id across agents but is what a config names) and its node-wide
//! counts. Kernel counters need none of this: their maps are pinned.
//!
//! They travel in the handover message and the state snapshot
//! (`handover.rs`). Not carried: `portcullis_config_reloads_total` (counts
//! of one process's reloads; they start at 0 with the process).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::{
    dnsgate::{DnsStats, EndpointDnsStats, queries::QueryCells},
    enforcer::Enforcer,
};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counters {
    pub endpoints: Vec<EndpointCounters>,
    /// Node-wide gate counters by name (unknown names are ignored).
    pub node: Vec<(String, u64)>,
    /// The answer-latency histogram: (count, sum in ns, cumulative buckets).
    pub latency: (u64, u64, Vec<u64>),
}

impl Counters {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointCounters {
    pub cgroup_id: u64,
    /// `[decision][rcode]` (`dnsgate::queries`).
    pub queries: QueryCells,
    pub dns: EndpointDnsStats,
}

fn node_counters(g: &DnsStats) -> [(&'static str, &AtomicU64); 12] {
    [
        ("held", &g.held),
        ("released", &g.released),
        ("dropped_malformed", &g.dropped_malformed),
        ("dropped_unknown_endpoint", &g.dropped_unknown_endpoint),
        ("dropped_inject_failed", &g.dropped_inject_failed),
        ("ips_learned", &g.ips_learned),
        ("ips_denied_range", &g.ips_denied_range),
        ("ips_refused_cap", &g.ips_refused_cap),
        ("ips_evicted", &g.ips_evicted),
        ("answers_stripped", &g.answers_stripped),
        ("answers_unsolicited", &g.answers_unsolicited),
        ("queries_refused", &g.queries_refused),
    ]
}

/// `export` in the handover's form (which does not know these types).
pub fn export_value(enforcer: &Enforcer, g: &DnsStats) -> Option<serde_json::Value> {
    let c = export(enforcer, g);
    if c.is_empty() { None } else { serde_json::to_value(c).ok() }
}

/// `import` from the handover's form; counters that do not read start
/// from 0 (they are only counters).
pub fn import_value(enforcer: &Enforcer, g: &DnsStats, v: Option<&serde_json::Value>) -> usize {
    let Some(v) = v else { return 0 };
    match Counters::deserialize(v) {
        Ok(c) => import(enforcer, g, &c),
        Err(e) => {
            tracing::warn!(error = %e, "the previous agent's counters do not read; they start from 0");
            0
        }
    }
}

/// What this agent counted, for the next one.
pub fn export(enforcer: &Enforcer, g: &DnsStats) -> Counters {
    let endpoints = enforcer
        .snapshot()
        .into_iter()
        .map(|r| EndpointCounters { cgroup_id: r.view.cgroup_id, queries: g.queries.get(r.view.id), dns: g.endpoint(r.view.id) })
        .collect();
    let node = node_counters(g).into_iter().map(|(n, c)| (n.to_owned(), c.load(Relaxed))).collect();
    Counters { endpoints, node, latency: g.queries.export_latency() }
}

/// Adds the previous agent's counts to this one's (called before this
/// agent counts anything: at take-over). Endpoints not enforced here any
/// more are skipped. Returns how many endpoints' counts were carried.
pub fn import(enforcer: &Enforcer, g: &DnsStats, c: &Counters) -> usize {
    let rows = enforcer.snapshot();
    let mut n = 0;
    for e in &c.endpoints {
        let Some(r) = rows.iter().find(|r| r.view.cgroup_id == e.cgroup_id) else { continue };
        g.queries.add(r.view.id, &e.queries);
        g.with_endpoint(r.view.id, |s| {
            s.refused += e.dns.refused;
            s.suspicious_long_label += e.dns.suspicious_long_label;
            s.suspicious_entropy += e.dns.suspicious_entropy;
            s.high_rate += e.dns.high_rate;
            s.records_suppressed += e.dns.records_suppressed;
            s.tcp_refused += e.dns.tcp_refused;
            s.tcp_evicted += e.dns.tcp_evicted;
        });
        n += 1;
    }
    for (name, v) in &c.node {
        if let Some((_, a)) = node_counters(g).into_iter().find(|(n, _)| n == name) {
            a.fetch_add(*v, Relaxed);
        }
    }
    g.queries.import_latency(&c.latency);
    n
}

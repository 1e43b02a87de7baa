//! DNS through the agent: every DNS message between an endpoint and its
//! trusted resolvers is judged here before the workload sees an answer.
//!
//! - `engine`: the one decision pipeline (judge the query, judge the answer:
//!   match, learn, strip), without I/O.
//! - `hold`: the hold path, fed by the kernel's `DNS_HOLD` ring (UDP DNS
//!   from a namespace without a namespace gate, and every answer on it).
//! - `netns`: the namespace gates, a UDP socket and a TCP listener per
//!   (network namespace, endpoint, resolver) inside the workload's
//!   namespace, where the socket hooks send DNS once they exist.
//! - `inject`: sending a packet from inside a workload's namespace.
//! - `names`: the allowed names each endpoint resolved (ClickHouse).

pub mod engine;
pub mod hold;
mod ids;
pub mod inject;
pub mod names;
pub mod netns;
pub mod queries;
pub mod ratelimit;
pub mod veth;

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use hickory_proto::op::ResponseCode;

/// Longest CNAME chain followed inside one answer.
pub const MAX_CNAME_CHAIN: usize = 8;

#[derive(Default)]
pub struct DnsStats {
    pub held: AtomicU64,
    pub released: AtomicU64,
    pub dropped_malformed: AtomicU64,
    pub dropped_unknown_endpoint: AtomicU64,
    pub dropped_inject_failed: AtomicU64,
    pub ips_learned: AtomicU64,
    pub ips_denied_range: AtomicU64,
    /// Addresses not learned because a cap was reached and nothing could be
    /// evicted (every older entry had a live connection).
    pub ips_refused_cap: AtomicU64,
    /// Older learned addresses evicted to make room (caps).
    pub ips_evicted: AtomicU64,
    /// Answers rewritten to remove addresses the workload may never reach.
    pub answers_stripped: AtomicU64,
    /// Answers that matched no query the endpoint sent (forged, late).
    pub answers_unsolicited: AtomicU64,
    /// Answers replaced by NXDOMAIN/REFUSED (name not allowed).
    pub queries_refused: AtomicU64,
    /// Per endpoint: refused queries and suspicious names, for alerts.
    pub per_endpoint: Mutex<HashMap<u32, EndpointDnsStats>>,
    /// Per endpoint: queries by decision and rcode (lock-free), and the
    /// gate's answer latency.
    pub queries: queries::QueryCounts,
    /// Allowed names resolved per endpoint (on with the ClickHouse output).
    pub names: names::NameTally,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EndpointDnsStats {
    pub refused: u64,
    pub suspicious_long_label: u64,
    pub suspicious_entropy: u64,
    /// Queries beyond `QUERY_RATE_LIMIT` in one second.
    pub high_rate: u64,
    /// Blocked-log records (refused names, rebinding answers) held back by
    /// the endpoint's record rate limit (`ratelimit`).
    pub records_suppressed: u64,
    /// TCP DNS connections over a gate's cap (`proxy::tcp`): closed at
    /// once (every connection mid-query), or the longest idle one closed
    /// to make room.
    pub tcp_refused: u64,
    pub tcp_evicted: u64,
}

impl DnsStats {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn endpoint(&self, id: u32) -> EndpointDnsStats {
        self.per_endpoint.lock().map(|m| m.get(&id).copied().unwrap_or_default()).unwrap_or_default()
    }

    pub(crate) fn with_endpoint(&self, id: u32, f: impl FnOnce(&mut EndpointDnsStats)) {
        if let Ok(mut m) = self.per_endpoint.lock() {
            f(m.entry(id).or_default());
        }
    }

    /// Drops a removed endpoint's counts (its id may be given out again).
    pub fn forget(&self, id: u32) {
        if let Ok(mut m) = self.per_endpoint.lock() {
            m.remove(&id);
        }
        self.queries.forget(id);
    }

    /// A per-endpoint count summed over every endpoint.
    pub fn sum(&self, f: impl Fn(&EndpointDnsStats) -> u64) -> u64 {
        self.per_endpoint.lock().map(|m| m.values().map(f).sum()).unwrap_or_default()
    }
}

/// How the gate answers a query for a name the policy does not allow.
#[derive(Clone, Copy, Debug)]
pub struct GateOptions {
    pub deny_rcode: ResponseCode,
    /// Open DNS gates in workload namespaces (`proxy`). Off: UDP DNS takes
    /// the hold path only (refused queries reach the resolver, their answers
    /// are replaced) and DNS over TCP is refused.
    pub dns_gates: bool,
}

impl Default for GateOptions {
    fn default() -> Self {
        Self { deny_rcode: ResponseCode::NXDomain, dns_gates: true }
    }
}

/// `nxdomain` (default) or `refused`, for `--dns-deny-rcode`.
pub fn parse_deny_rcode(s: &str) -> Result<ResponseCode, String> {
    match s.to_ascii_lowercase().as_str() {
        "nxdomain" => Ok(ResponseCode::NXDomain),
        "refused" => Ok(ResponseCode::Refused),
        other => Err(format!("{other:?}: expected nxdomain or refused")),
    }
}

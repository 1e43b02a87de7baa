//! The DNS gate: consumes DNS packets held by the kernel and decides.
//!
//! - Queries (copies from `cgroup_skb/egress`; the query itself goes on):
//!   remembered as pending, with whether the endpoint's policy lets it
//!   resolve the name; names it may not resolve are logged.
//! - Answers (held in `cgroup_skb/ingress`): only one that matches a pending
//!   query (endpoint, client address, resolver, txid, question) is used.
//!   For an allowed name the agent learns from it, strips addresses the
//!   endpoint can never reach, and only then re-injects it, so the workload
//!   never sees an answer before its allowed IPs are in the kernel maps. For
//!   any other name the workload gets NXDOMAIN (configurable) instead.
//!
//! - Queries caught on loopback (`connect4` kept them in a namespace with no
//!   DNS gate yet): handed to the gate opened there for them, which answers
//!   or forwards them (`proxy`); they never leave unchecked.
//!
//! Anything that goes wrong (unparseable packet, unknown endpoint, no
//! matching query, injection failure) drops the packet and counts it: fail
//! closed, the client retries or fails, nothing unlearned passes.

mod answer;
pub mod engine;
mod pending;
mod query;
pub mod ratelimit;

use std::{
    collections::HashMap,
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use agent_common::{DNS_KIND_CAUGHT, DNS_KIND_QUERY, DnsHeldPacket};
use aya::maps::{MapData, RingBuf};
use hickory_proto::op::ResponseCode;

use self::engine::Engine;
pub use self::pending::{PendingQueries, QueryKey};
use crate::{enforcer::Enforcer, events::LogSink, inject::Injector, proxy::DnsGates};

/// Longest CNAME chain followed inside one answer.
pub const MAX_CNAME_CHAIN: usize = 8;

#[derive(Default)]
pub struct GateStats {
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
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

impl GateStats {
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

pub struct Gate {
    injector: Injector,
    pending: PendingQueries,
    /// The decisions, as the DNS gates share them.
    engine: Engine,
    /// Per endpoint: start of the current one-second window, queries in it.
    rate: HashMap<u32, (Instant, u32)>,
    /// DNS gates in workload namespaces; opened for every namespace a
    /// hold-path query comes from.
    dns_gates: Option<Arc<DnsGates>>,
}

/// Copies the fixed header and the packet out of a ring buffer record
/// (`None` if it is too short or its length field overruns it).
pub fn decode(record: &[u8]) -> Option<(DnsHeldPacket, &[u8])> {
    if record.len() < size_of::<DnsHeldPacket>() {
        return None;
    }
    // SAFETY: the record is at least one DnsHeldPacket long; read_unaligned
    // does not rely on the ring buffer's alignment.
    let held: DnsHeldPacket = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let off = std::mem::offset_of!(DnsHeldPacket, data);
    let data = record.get(off..off.checked_add(held.len as usize)?)?;
    Some((held, data))
}

impl Gate {
    /// `records`: the rate limit on the blocked-log records the gates write
    /// (their warnings get one of their own, alike).
    pub fn new(enforcer: Enforcer, inject_mark: u32, log: LogSink, opts: GateOptions, records: ratelimit::RecordLimit) -> Self {
        Self {
            engine: Engine {
                learner: Arc::new(enforcer),
                stats: Arc::default(),
                log,
                warnings: Arc::new(records.twin()),
                records: Arc::new(records),
                deny_rcode: opts.deny_rcode,
            },
            injector: Injector::new(inject_mark),
            pending: PendingQueries::default(),
            rate: HashMap::new(),
            dns_gates: None,
        }
    }

    /// Opens TCP gates in the namespaces queries come from (before their
    /// answers are released, so a truncated answer's TCP retry finds one).
    pub fn with_dns_gates(mut self, gates: Arc<DnsGates>) -> Self {
        self.dns_gates = Some(gates);
        self
    }

    /// The decisions (`engine`), shared with the DNS gates.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Handles one held packet; returns whether something was sent on
    /// (the query forwarded or answered, the answer delivered).
    pub fn handle(&mut self, record: &[u8]) -> bool {
        GateStats::bump(&self.engine.stats.held);
        let Some((held, data)) = decode(record) else {
            GateStats::bump(&self.engine.stats.dropped_malformed);
            return false;
        };
        let sent = match held.kind {
            DNS_KIND_QUERY => self.handle_query(&held, data),
            DNS_KIND_CAUGHT => self.handle_caught(&held, data),
            _ => self.handle_answer(&held, data),
        };
        if sent {
            GateStats::bump(&self.engine.stats.released);
        }
        sent
    }

    /// Takes over the queries a previous agent was waiting on (`handover`).
    pub fn import_pending(&mut self, records: &[crate::handover::PendingRecord]) {
        self.pending.import(records, Instant::now());
    }

    /// Consumes the hold ring buffer until `stop` is set, at a record
    /// boundary; returns the queries still waiting for answers (for the
    /// next agent). The ring's consumer position lives in the map, so the
    /// next consumer starts exactly after the last record handled here.
    pub fn run(mut self, mut ring: RingBuf<MapData>, stop: Arc<AtomicBool>) -> PendingQueries {
        let fd = ring.as_raw_fd();
        let mut last_sweep = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            while let Some(item) = ring.next() {
                let record: &[u8] = &item;
                self.handle(record);
                drop(item);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            if last_sweep.elapsed().as_secs() >= 5 {
                last_sweep = Instant::now();
                self.pending.expire(last_sweep);
                self.rate.retain(|_, (t, _)| t.elapsed().as_secs() < 5);
            }
            // Short: a stop (handover to the next agent) waits for this;
            // not too short: an idle agent must not keep waking up on the
            // workload's CPUs.
            poll_readable(fd, 100);
        }
        self.pending
    }
}

/// Waits up to `timeout_ms` for `fd` (a ring buffer, a listener) to be
/// readable.
pub(crate) fn poll_readable(fd: i32, timeout_ms: i32) {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&raw mut pfd, 1, timeout_ms) };
}

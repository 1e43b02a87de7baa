//! The hold path: consumes the DNS packets the kernel holds (`DNS_HOLD`)
//! and decides with the engine.
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
//! - Queries caught on loopback (`connect4` kept them in a namespace with no
//!   DNS gate yet): handed to the namespace gate opened there for them
//!   (`netns`), which answers or forwards them; they never leave unchecked.
//!
//! Anything that goes wrong (unparseable packet, unknown endpoint, no
//! matching query, injection failure) drops the packet and counts it: fail
//! closed, the client retries or fails, nothing unlearned passes.

mod answer;
mod pending;
mod query;

use std::{
    collections::HashMap,
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use agent_common::{DNS_KIND_CAUGHT, DNS_KIND_QUERY, DNS_KIND_VETH_QUERY, DnsHeldPacket};
use aya::maps::{MapData, RingBuf};

pub use self::pending::{PendingQueries, QueryKey};
use super::{DnsStats, GateOptions, engine::Engine, inject::Injector, netns::NamespaceGates, ratelimit, veth::VethDns};
use crate::{blocked::LogSink, enforcer::Enforcer};

pub struct HoldPath {
    injector: Injector,
    pending: PendingQueries,
    /// The decisions, as the DNS gates share them.
    engine: Engine,
    /// Per endpoint: start of the current one-second window, queries in it.
    rate: HashMap<u32, (Instant, u32)>,
    /// DNS gates in workload namespaces; opened for every namespace a
    /// hold-path query comes from.
    dns_gates: Option<Arc<NamespaceGates>>,
    /// DNS taken off pods' veths (`DNS_KIND_VETH_QUERY`); without it such
    /// queries are dropped (counted).
    veth: Option<Arc<VethDns>>,
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

impl HoldPath {
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
            veth: None,
        }
    }

    /// Serves DNS the veth programs take off pods' wires.
    pub fn with_veth_dns(mut self, veth: Arc<VethDns>) -> Self {
        self.veth = Some(veth);
        self
    }

    /// Opens TCP gates in the namespaces queries come from (before their
    /// answers are released, so a truncated answer's TCP retry finds one).
    pub fn with_dns_gates(mut self, gates: Arc<NamespaceGates>) -> Self {
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
        DnsStats::bump(&self.engine.stats.held);
        let Some((held, data)) = decode(record) else {
            DnsStats::bump(&self.engine.stats.dropped_malformed);
            return false;
        };
        let sent = match held.kind {
            DNS_KIND_QUERY => self.handle_query(&held, data),
            DNS_KIND_CAUGHT => self.handle_caught(&held, data),
            DNS_KIND_VETH_QUERY => {
                match &self.veth {
                    Some(v) => v.serve(held.endpoint, held.ifindex, data),
                    None => DnsStats::bump(&self.engine.stats.dropped_unknown_endpoint),
                }
                // Answered (or not) later, from the veth's answer loop.
                false
            }
            _ => self.handle_answer(&held, data),
        };
        if sent {
            DnsStats::bump(&self.engine.stats.released);
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

//! The DNS gate: consumes answers held by `cgroup_skb/ingress`, learns from
//! them, then re-injects them. The workload sees an answer only after its
//! allowed IPs are in the kernel maps, so the first `connect()` after
//! `getaddrinfo()` never races. Anything that goes wrong (unparseable
//! packet, unknown endpoint, injection failure) drops the answer and counts
//! it: fail closed, the client retries or fails, nothing unlearned passes.

use std::{
    net::IpAddr,
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use agent_common::DnsHeldPacket;
use aya::maps::{MapData, RingBuf};
use tracing::{debug, warn};

use crate::{
    dns::{build_udp, learnable, parse_message, parse_udp, strip_addresses},
    inject::Injector,
    state::State,
};

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
    /// Answers rewritten to remove addresses the workload may never reach.
    pub answers_stripped: AtomicU64,
}

pub struct Gate {
    state: Arc<Mutex<State>>,
    injector: Injector,
    pub stats: Arc<GateStats>,
}

/// Copies the fixed header and the packet out of a ring buffer record.
fn decode(record: &[u8]) -> Option<(DnsHeldPacket, &[u8])> {
    if record.len() < size_of::<DnsHeldPacket>() {
        return None;
    }
    // SAFETY: the record is at least one DnsHeldPacket long; read_unaligned
    // copes with the ring buffer's 8-byte alignment guarantee only.
    let held: DnsHeldPacket = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let off = std::mem::offset_of!(DnsHeldPacket, data);
    let len = held.len as usize;
    let data = record.get(off..off.checked_add(len)?)?;
    Some((held, data))
}

impl Gate {
    pub fn new(state: Arc<Mutex<State>>, inject_mark: u32) -> Self {
        Self { state, injector: Injector::new(inject_mark), stats: Arc::default() }
    }

    /// Handles one held answer; returns whether it was released.
    pub fn handle(&mut self, record: &[u8]) -> bool {
        self.stats.held.fetch_add(1, Ordering::Relaxed);
        let Some((held, data)) = decode(record) else {
            self.stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let udp = match parse_udp(data) {
            Ok(u) => u,
            Err(e) => {
                debug!(error = %e, "dropping held packet");
                self.stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        };
        let parsed = parse_message(udp.payload).and_then(|m| Ok((learnable(&m, MAX_CNAME_CHAIN)?, m)));
        let (learned, mut msg) = match parsed {
            Ok(v) => v,
            Err(e) => {
                debug!(error = %e, endpoint = held.endpoint, "dropping unparseable DNS answer");
                self.stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        };
        let stripped = {
            let mut st = match self.state.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let Some(ep) = st.endpoint(held.endpoint) else {
                self.stats.dropped_unknown_endpoint.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            let stripped = strip_addresses(&mut msg, |ip| ep.unreachable(ip));
            if let Some(l) = &learned {
                let addrs: Vec<(IpAddr, u32)> = l.addrs.iter().map(|a| (a.ip, a.ttl)).collect();
                match st.learn(held.endpoint, &l.qname, &addrs) {
                    Ok(out) => {
                        self.stats.ips_learned.fetch_add(out.allowed.len() as u64, Ordering::Relaxed);
                        self.stats.ips_denied_range.fetch_add(out.denied_range.len() as u64, Ordering::Relaxed);
                        if !out.denied_range.is_empty() {
                            warn!(endpoint = held.endpoint, name = %l.qname, ips = ?out.denied_range,
                                "DNS answer points an allowed name at an always-denied range; not learned, stripped");
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "learning failed; answer held back");
                        self.stats.dropped_inject_failed.fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                }
            }
            stripped
        };
        // The rewritten message, or the original bytes when nothing changed.
        let rewritten;
        let payload = if stripped.is_empty() {
            udp.payload
        } else {
            self.stats.answers_stripped.fetch_add(1, Ordering::Relaxed);
            rewritten = match msg.to_vec() {
                Ok(v) => v,
                Err(e) => {
                    debug!(error = %e, "cannot re-encode stripped answer");
                    self.stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            };
            &rewritten[..]
        };
        // Rebuild: the captured UDP checksum may be a partial (offload) one.
        let packet = match build_udp(udp.src, udp.dst, payload, 64) {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %e, "cannot rebuild answer");
                self.stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        };
        match self.injector.send(held.netns_cookie, held.tgid, udp.dst.ip(), &packet) {
            Ok(()) => {
                self.stats.released.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                warn!(error = %e, "re-injecting DNS answer failed; dropped");
                self.stats.dropped_inject_failed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Consumes the hold ring buffer until `stop` is set.
    pub fn run(mut self, mut ring: RingBuf<MapData>, stop: Arc<AtomicBool>) {
        let fd = ring.as_raw_fd();
        while !stop.load(Ordering::Relaxed) {
            while let Some(item) = ring.next() {
                let record: &[u8] = &item;
                self.handle(record);
            }
            poll_readable(fd, 100);
        }
    }
}

/// Waits up to `timeout_ms` for a ring buffer fd to have data.
pub fn poll_readable(fd: i32, timeout_ms: i32) {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&raw mut pfd, 1, timeout_ms) };
}

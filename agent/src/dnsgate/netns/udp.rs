//! The UDP side of a DNS gate: two threads per gate, one reading queries
//! from workload sockets (the gate socket on loopback), one reading answers
//! from the resolver (the gate's own socket, connected to it). A forwarded
//! query gets a fresh random transaction id, so an answer is only taken if
//! it comes from the resolver, to our socket, with an id we chose and the
//! question we asked; the client's id is restored before it is sent on.
//!
//! Queries caught on loopback (a namespace's first, before its gate was
//! open: `DNS_KIND_CAUGHT`) are handed to the same gate by the hold-ring
//! consumer (`UdpGate::serve_caught`). Their client's socket is connected
//! to the resolver, so the answer goes back as a packet from the
//! resolver's address, on the gate's raw socket in that namespace.

use std::{
    collections::HashMap,
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use agent_common::proto;
use nix::sys::socket::{MsgFlags, SockaddrIn, SockaddrIn6, sendto};
use tracing::debug;

use super::GateCtx;
use crate::{
    dns::build_udp,
    dnsgate::{
        DnsStats,
        engine::{Client, QueryVerdict, Question},
        ids::FreshIds,
    },
    util::lock,
};

/// How long a forwarded query waits for its answer (stub resolvers retry
/// well before).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on forwarded queries waiting per gate.
const MAX_IN_FLIGHT: usize = 4096;
/// How often the loops look at their stop flags.
const POLL: Duration = Duration::from_millis(200);
/// Hop limit of an answer injected on loopback.
const INJECT_TTL: u8 = 64;

/// Where an answer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReplyTo {
    /// A client of the gate socket (the recvmsg hooks show it the
    /// resolver's address as the source).
    Gate(SocketAddr),
    /// A caught query's client, whose socket is connected to `from` (the
    /// resolver, or for an IPv6 resolver behind the IPv4 placeholder, the
    /// placeholder): a packet from `from`, injected in its namespace.
    Injected { client: SocketAddr, from: SocketAddr },
}

struct InFlight {
    reply: ReplyTo,
    /// Its question, with the client's own transaction id.
    question: Question,
    tgid: u32,
    at: Instant,
}

#[derive(Default)]
struct Flights {
    by_id: HashMap<u16, InFlight>,
    ids: FreshIds,
}

/// Forwarded queries by the id we gave them.
#[derive(Clone, Default)]
pub struct Table(Arc<Mutex<Flights>>);

impl Table {
    pub fn is_empty(&self) -> bool {
        lock(&self.0).by_id.is_empty()
    }

    /// Registers a query; returns the fresh random id to forward it with
    /// (`None` when too many wait).
    fn add(&self, f: InFlight) -> Option<u16> {
        let mut t = lock(&self.0);
        if t.by_id.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let t = &mut *t;
        let id = t.ids.next(&t.by_id);
        t.by_id.insert(id, f);
        Some(id)
    }
}

type Stop = (Arc<AtomicBool>, Arc<AtomicBool>);

fn stopped(stop: &Stop) -> bool {
    stop.0.load(Ordering::Relaxed) || stop.1.load(Ordering::Relaxed)
}

/// One UDP gate's sockets (all made in the workload's namespace) and its
/// forwarded queries.
pub(super) struct UdpGate {
    pub gate: UdpSocket,
    pub upstream: UdpSocket,
    /// Raw sockets (`IPPROTO_RAW`, the inject mark; the IPv4 one bound to
    /// `lo`) for answers to caught queries, IPv4 and IPv6.
    pub raw4: OwnedFd,
    pub raw6: OwnedFd,
    pub conn: GateCtx,
    pub table: Table,
}

/// Starts the two loops of one gate.
pub(super) fn spawn(g: Arc<UdpGate>, stop: Stop) {
    if g.gate.set_read_timeout(Some(POLL)).is_err() || g.upstream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let (g2, s2) = (g.clone(), stop.clone());
    let _ = thread::Builder::new().name("dns-gate-udp".into()).spawn(move || queries(&g, &stop));
    let _ = thread::Builder::new().name("dns-gate-up".into()).spawn(move || answers(&g2, &s2));
}

fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Workload -> gate: judge, answer refusals here, forward the rest.
fn queries(g: &UdpGate, stop: &Stop) {
    let mut buf = vec![0u8; 65535];
    let mut swept = Instant::now();
    while !stopped(stop) {
        if swept.elapsed() >= Duration::from_secs(1) {
            // Queries whose answer never came (the client has retried).
            swept = Instant::now();
            lock(&g.table.0).by_id.retain(|_, f| swept.duration_since(f.at) < ANSWER_TIMEOUT);
        }
        let (len, client) = match g.gate.recv_from(&mut buf) {
            Ok(v) => v,
            Err(e) if timed_out(&e) => continue,
            Err(e) => {
                debug!(error = %e, "UDP DNS gate receive failed");
                thread::sleep(POLL);
                continue;
            }
        };
        let tgid = g.conn.client(client.port(), proto::UDP).tgid;
        g.serve(&mut buf[..len], ReplyTo::Gate(client), tgid);
    }
}

impl UdpGate {
    /// A query caught on loopback in this gate's namespace (`DNS_KIND_CAUGHT`):
    /// served like one sent to the gate, answered by injection.
    pub fn serve_caught(&self, query: &[u8], client: SocketAddr, from: SocketAddr, tgid: u32) {
        let mut bytes = query.to_vec();
        self.serve(&mut bytes, ReplyTo::Injected { client, from }, tgid);
    }

    /// Judges one query: answers a refusal at once (the query never leaves
    /// the node), forwards an allowed one under a fresh id.
    fn serve(&self, bytes: &mut [u8], reply: ReplyTo, tgid: u32) {
        let c = &self.conn;
        let who = Client { tgid, ..c.who };
        let question = match c.engine.on_query(&who, bytes) {
            QueryVerdict::Forward(q) => q,
            QueryVerdict::Refuse(_, answer) => {
                if let Err(e) = self.reply(reply, &answer) {
                    debug!(error = %e, ?reply, "answering a refused query failed");
                }
                return;
            }
            QueryVerdict::Drop => return,
        };
        let Some(id) = self.table.add(InFlight { reply, question, tgid, at: Instant::now() }) else {
            DnsStats::bump(&c.engine.stats.dropped_inject_failed);
            return;
        };
        bytes[..2].copy_from_slice(&id.to_be_bytes());
        if let Err(e) = self.upstream.send(bytes) {
            debug!(error = %e, resolver = %c.who.resolver, "forwarding a DNS query failed");
            lock(&self.table.0).by_id.remove(&id);
        }
    }

    /// Sends an answer to the client that asked.
    fn reply(&self, to: ReplyTo, answer: &[u8]) -> io::Result<()> {
        match to {
            ReplyTo::Gate(client) => self.gate.send_to(answer, client).map(drop),
            ReplyTo::Injected { client, from } => {
                let packet = build_udp(from, client, answer, INJECT_TTL).map_err(io::Error::other)?;
                let sent = match client {
                    SocketAddr::V4(a) => sendto(
                        self.raw4.as_raw_fd(),
                        &packet,
                        &SockaddrIn::from(std::net::SocketAddrV4::new(*a.ip(), 0)),
                        MsgFlags::empty(),
                    ),
                    SocketAddr::V6(a) => sendto(
                        self.raw6.as_raw_fd(),
                        &packet,
                        &SockaddrIn6::from(std::net::SocketAddrV6::new(*a.ip(), 0, 0, 0)),
                        MsgFlags::empty(),
                    ),
                };
                sent.map(drop).map_err(io::Error::from)
            }
        }
    }
}

/// Resolver -> gate: match, learn, strip, send on to the workload.
fn answers(g: &UdpGate, stop: &Stop) {
    let c = &g.conn;
    let stats = &c.engine.stats;
    let mut buf = vec![0u8; 65535];
    while !stopped(stop) {
        let len = match g.upstream.recv(&mut buf) {
            Ok(v) => v,
            Err(e) if timed_out(&e) => continue,
            Err(e) => {
                // E.g. ICMP port unreachable from the resolver: the client
                // times out and retries.
                debug!(error = %e, "UDP DNS gate upstream receive failed");
                continue;
            }
        };
        let bytes = &mut buf[..len];
        if len < 12 {
            DnsStats::bump(&stats.dropped_malformed);
            continue;
        }
        // Only an id we gave a query: the client's own goes back in, and
        // the engine checks the rest of the question.
        let id = u16::from_be_bytes([bytes[0], bytes[1]]);
        let Some((reply, question, tgid)) = lock(&g.table.0).by_id.get(&id).map(|f| (f.reply, f.question.clone(), f.tgid)) else {
            DnsStats::bump(&stats.answers_unsolicited);
            continue;
        };
        bytes[..2].copy_from_slice(&question.txid.to_be_bytes());
        let Some(answer) = c.engine.on_answer(&Client { tgid, ..c.who }, &question, bytes) else { continue };
        lock(&g.table.0).by_id.remove(&id);
        match g.reply(reply, &answer) {
            Ok(()) => DnsStats::bump(&stats.released),
            Err(e) => debug!(error = %e, "answering through the UDP DNS gate failed"),
        }
    }
}

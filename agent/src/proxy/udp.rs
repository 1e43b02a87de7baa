//! The UDP side of a DNS gate: two threads per gate, one reading queries
//! from workload sockets (the gate socket on loopback), one reading answers
//! from the resolver (the gate's own socket, connected to it). A forwarded
//! query gets a fresh random transaction id, so an answer is only taken if
//! it comes from the resolver, to our socket, with an id we chose and the
//! question we asked; the client's id is restored before it is sent on.

use std::{
    collections::{HashMap, hash_map::RandomState},
    hash::BuildHasher as _,
    io,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tracing::debug;

use super::GateCtx;
use crate::{
    dns::{learnable, parse_message, parse_query, question, refusal},
    gate::{
        GateStats, MAX_CNAME_CHAIN,
        judge::{judge_query, note_shape, vet_answer},
    },
    runtime::lock,
};

/// How long a forwarded query waits for its answer (stub resolvers retry
/// well before).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on forwarded queries waiting per gate.
const MAX_IN_FLIGHT: usize = 4096;
/// How often the loops look at their stop flags.
const POLL: Duration = Duration::from_millis(200);

struct InFlight {
    client: SocketAddr,
    id: u16,
    qname: String,
    qtype: u16,
    tgid: u32,
    at: Instant,
}

/// Forwarded queries by the id we gave them.
#[derive(Clone, Default)]
pub struct Table(Arc<Mutex<HashMap<u16, InFlight>>>);

impl Table {
    pub fn is_empty(&self) -> bool {
        lock(&self.0).is_empty()
    }
}

type Stop = (Arc<AtomicBool>, Arc<AtomicBool>);

fn stopped(stop: &Stop) -> bool {
    stop.0.load(Ordering::Relaxed) || stop.1.load(Ordering::Relaxed)
}

/// Starts the two loops of one gate.
pub(super) fn spawn(gate: UdpSocket, upstream: UdpSocket, conn: GateCtx, netns_cookie: u64, table: Table, stop: Stop) {
    let (Ok(gate2), Ok(())) = (gate.try_clone(), gate.set_read_timeout(Some(POLL))) else { return };
    if upstream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let Ok(up2) = upstream.try_clone() else { return };
    let (c2, t2, s2) = (conn.clone(), table.clone(), stop.clone());
    let _ = thread::Builder::new()
        .name("dns-gate-udp".into())
        .spawn(move || queries(&gate, &up2, &conn, netns_cookie, &table, &stop));
    let _ = thread::Builder::new()
        .name("dns-gate-up".into())
        .spawn(move || answers(&upstream, &gate2, &c2, &t2, &s2));
}

fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Workload -> gate: judge, answer refusals here, forward the rest.
fn queries(gate: &UdpSocket, upstream: &UdpSocket, c: &GateCtx, netns_cookie: u64, table: &Table, stop: &Stop) {
    let stats = &c.shared.stats;
    let ids = RandomState::new();
    let mut n: u64 = 0;
    let mut buf = vec![0u8; 65535];
    let mut swept = Instant::now();
    while !stopped(stop) {
        if swept.elapsed() >= Duration::from_secs(1) {
            // Queries whose answer never came (the client has retried).
            swept = Instant::now();
            lock(&table.0).retain(|_, f| swept.duration_since(f.at) < ANSWER_TIMEOUT);
        }
        let (len, client) = match gate.recv_from(&mut buf) {
            Ok(v) => v,
            Err(e) if timed_out(&e) => continue,
            Err(e) => {
                debug!(error = %e, "UDP DNS gate receive failed");
                thread::sleep(POLL);
                continue;
            }
        };
        let bytes = &mut buf[..len];
        let parsed = parse_message(bytes).and_then(|m| Ok((parse_query(&m)?, m)));
        let Ok(((qname, qtype), query)) = parsed else {
            // Not something we can vouch for: it does not leave.
            GateStats::bump(&stats.dropped_malformed);
            continue;
        };
        let tgid = lock(&c.shared.state).maps.gate_client(netns_cookie, client.port()).unwrap_or(0);
        note_shape(&c.shared, c.endpoint, &qname);
        let Some(allowed) = judge_query(&c.shared, c.endpoint, &qname, c.resolver, tgid, c.cgroup_id) else {
            GateStats::bump(&stats.dropped_unknown_endpoint);
            continue;
        };
        if !allowed {
            // Answered here: the query never leaves the node.
            GateStats::bump(&stats.queries_refused);
            if let Ok(reply) = refusal(&query, c.deny_rcode).to_vec() {
                let _ = gate.send_to(&reply, client);
            }
            continue;
        }
        let id = {
            let mut t = lock(&table.0);
            let now = Instant::now();
            if t.len() >= MAX_IN_FLIGHT {
                GateStats::bump(&stats.dropped_inject_failed);
                continue;
            }
            let mut id;
            loop {
                n += 1;
                id = ids.hash_one(n) as u16;
                if !t.contains_key(&id) {
                    break;
                }
            }
            let orig = u16::from_be_bytes([bytes[0], bytes[1]]);
            t.insert(id, InFlight { client, id: orig, qname, qtype, tgid, at: now });
            id
        };
        bytes[..2].copy_from_slice(&id.to_be_bytes());
        if let Err(e) = upstream.send(bytes) {
            debug!(error = %e, resolver = %c.resolver, "forwarding a DNS query failed");
            lock(&table.0).remove(&id);
        }
    }
}

/// Resolver -> gate: match, learn, strip, send on to the workload.
fn answers(upstream: &UdpSocket, gate: &UdpSocket, c: &GateCtx, table: &Table, stop: &Stop) {
    let stats = &c.shared.stats;
    let mut buf = vec![0u8; 65535];
    while !stopped(stop) {
        let len = match upstream.recv(&mut buf) {
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
            GateStats::bump(&stats.dropped_malformed);
            continue;
        }
        let id = u16::from_be_bytes([bytes[0], bytes[1]]);
        let Ok(mut msg) = parse_message(bytes) else {
            GateStats::bump(&stats.dropped_malformed);
            continue;
        };
        let matched = {
            let mut t = lock(&table.0);
            match t.get(&id) {
                Some(f) if question(&msg) == Some((f.qname.clone(), f.qtype)) => t.remove(&id),
                _ => None,
            }
        };
        let Some(f) = matched else {
            GateStats::bump(&stats.answers_unsolicited);
            continue;
        };
        let Ok(learned) = learnable(&msg, MAX_CNAME_CHAIN) else {
            GateStats::bump(&stats.dropped_malformed);
            continue;
        };
        let Some(stripped) = vet_answer(&c.shared, c.endpoint, f.tgid, c.cgroup_id, &f.qname, learned.as_ref(), &mut msg)
        else {
            continue;
        };
        let sent = if stripped.is_empty() {
            bytes[..2].copy_from_slice(&f.id.to_be_bytes());
            gate.send_to(bytes, f.client)
        } else {
            GateStats::bump(&stats.answers_stripped);
            msg.metadata.id = f.id;
            match msg.to_vec() {
                Ok(v) => gate.send_to(&v, f.client),
                Err(_) => {
                    GateStats::bump(&stats.dropped_malformed);
                    continue;
                }
            }
        };
        match sent {
            Ok(_) => GateStats::bump(&stats.released),
            Err(e) => debug!(error = %e, "answering through the UDP DNS gate failed"),
        }
    }
}

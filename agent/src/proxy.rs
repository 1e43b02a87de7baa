//! The TCP DNS gate: DNS over TCP (a truncated UDP answer's fallback, or a
//! client that prefers TCP) from an endpoint to a trusted resolver goes
//! through the agent, which checks each query and learns from each answer
//! before the workload reads it.
//!
//! The connect hooks rewrite a TCP connect to a trusted resolver into one
//! to the gate for (network namespace, endpoint, resolver): a listener the
//! agent opens on 127.0.0.1 (or ::1) *inside the workload's namespace* (a
//! thread `setns`es there; threads it spawns stay there), so no address of
//! the agent is needed anywhere. Per connection, the gate reads each
//! length-prefixed query (RFC 1035 4.2.2): a name the policy does not allow
//! is answered at once (NXDOMAIN by default) and never leaves the node; an
//! allowed one goes to the resolver over the gate's own connection from the
//! same namespace, and its answer is learned (and stripped of addresses the
//! workload may never reach) before it is written back. Anything unexpected
//! closes the connection: the client sees a failed lookup, never an answer
//! the kernel does not know about.
//!
//! Without a gate for its namespace (the agent has not seen that namespace
//! yet), DNS over TCP is refused at connect (`denied-dns-no-gate`). The
//! agent opens gates for the namespaces of an endpoint's processes when it
//! starts enforcing, and for any namespace a UDP query comes from, before
//! that query's answer is released; a TCP retry after truncation therefore
//! always finds its gate.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use agent_common::{GateKey, GateValue};
use hickory_proto::op::ResponseCode;
use nix::sched::{CloneFlags, setns};
use thiserror::Error;
use tracing::{debug, warn};

use crate::{
    dns::{learnable, parse_message, parse_query, refusal, transaction_id},
    ebpf::loader::netns_cookie_of,
    gate::{
        GateStats, MAX_CNAME_CHAIN,
        judge::{Shared, judge_query, note_shape, vet_answer},
    },
    policy::canonical,
    runtime::lock,
};

/// How long a client or the resolver may stay silent mid-message.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum GateError {
    #[error("process {tgid}: opening its network namespace: {source}")]
    OpenNetns { tgid: u32, source: io::Error },
    #[error("process {tgid}: entering its network namespace: {source}")]
    Setns { tgid: u32, source: nix::Error },
    #[error("listening on {addr} in the workload's namespace: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("gate thread failed")]
    Thread,
    #[error("updating kernel map GATES: {0}")]
    Map(aya::maps::MapError),
}

/// The gates this agent runs.
pub struct TcpGates {
    shared: Shared,
    deny_rcode: ResponseCode,
    /// (netns cookie, endpoint, resolver) -> gate port.
    open: Mutex<HashMap<GateKey, u16>>,
    /// Namespace inode -> cookie, for namespaces already entered.
    cookies: Mutex<HashMap<u64, u64>>,
    stop: Arc<AtomicBool>,
}

fn key(netns_cookie: u64, endpoint: u32, resolver: SocketAddr) -> GateKey {
    GateKey {
        netns_cookie,
        endpoint,
        port: resolver.port().to_be_bytes(),
        _pad: [0; 2],
        ip: canonical(resolver.ip()).octets(),
    }
}

/// Where the gate for `resolver` listens: loopback of the resolver's family.
fn loopback_for(resolver: SocketAddr) -> SocketAddr {
    match resolver.ip() {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        _ => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    }
}

impl TcpGates {
    pub fn new(shared: Shared, deny_rcode: ResponseCode) -> Self {
        Self { shared, deny_rcode, open: Mutex::default(), cookies: Mutex::default(), stop: Arc::default() }
    }

    /// Makes sure `endpoint` has a gate to each of its trusted resolvers in
    /// the network namespace of process `tgid` (whose cookie, if known, is
    /// `netns_cookie`: then a known gate costs only a lookup).
    pub fn ensure(&self, tgid: u32, netns_cookie: Option<u64>, endpoint: u32) -> Result<(), GateError> {
        let (resolvers, cgroup_id) = {
            let st = lock(&self.shared.state);
            let Some(ep) = st.endpoint(endpoint) else { return Ok(()) };
            (ep.policy.dns_servers.clone(), ep.cgroup_id)
        };
        let ns = File::open(format!("/proc/{tgid}/ns/net")).map_err(|source| GateError::OpenNetns { tgid, source })?;
        let ino = ns.metadata().map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
        if let Some(cookie) = netns_cookie.or_else(|| lock(&self.cookies).get(&ino).copied()) {
            let open = lock(&self.open);
            if resolvers.iter().all(|r| open.contains_key(&key(cookie, endpoint, *r))) {
                return Ok(());
            }
        }
        for resolver in resolvers {
            let (tx, rx) = mpsc::channel();
            let (shared, rcode) = (self.shared.clone(), self.deny_rcode);
            // Ends with the agent, or at once if this gate is not needed.
            let (all, mine) = (self.stop.clone(), Arc::new(AtomicBool::new(false)));
            let stop = (all, mine.clone());
            let ns = ns.try_clone().map_err(|source| GateError::OpenNetns { tgid, source })?;
            let conn = Conn { shared, endpoint, cgroup_id, resolver, deny_rcode: rcode };
            thread::Builder::new()
                .name("dns-tcp-gate".into())
                .spawn(move || {
                    // This thread and every thread it spawns live in the
                    // workload's namespace from here on.
                    if let Err(source) = setns(ns.as_fd(), CloneFlags::CLONE_NEWNET) {
                        let _ = tx.send(Err(GateError::Setns { tgid, source }));
                        return;
                    }
                    let addr = loopback_for(resolver);
                    let listener = match TcpListener::bind(addr) {
                        Ok(l) => l,
                        Err(source) => {
                            let _ = tx.send(Err(GateError::Listen { addr, source }));
                            return;
                        }
                    };
                    let found = netns_cookie_of(&listener).unwrap_or(0);
                    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
                    if tx.send(Ok((found, port))).is_err() {
                        return;
                    }
                    accept_loop(listener, conn, stop);
                })
                .map_err(|_| GateError::Thread)?;
            let (cookie, port) = rx.recv().map_err(|_| GateError::Thread)??;
            lock(&self.cookies).insert(ino, cookie);
            let k = key(cookie, endpoint, resolver);
            let mut open = lock(&self.open);
            if open.contains_key(&k) {
                // Another process of the same namespace got there first.
                mine.store(true, Ordering::Relaxed);
                continue;
            }
            let value = GateValue { port: port.to_be_bytes(), _pad: [0; 6] };
            lock(&self.shared.state).maps.insert_gate(k, value).map_err(GateError::Map)?;
            open.insert(k, port);
            debug!(endpoint, %resolver, port, netns = cookie, "TCP DNS gate open");
        }
        Ok(())
    }

    /// Stops accepting (connections in progress finish on their own).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What one gate connection needs.
#[derive(Clone)]
struct Conn {
    shared: Shared,
    endpoint: u32,
    cgroup_id: u64,
    resolver: SocketAddr,
    deny_rcode: ResponseCode,
}

fn accept_loop(listener: TcpListener, conn: Conn, stop: (Arc<AtomicBool>, Arc<AtomicBool>)) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !stop.0.load(Ordering::Relaxed) && !stop.1.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let c = conn.clone();
                // Spawned from a thread in the workload's namespace: the
                // upstream connection is made there too.
                let _ = thread::Builder::new().name("dns-tcp-conn".into()).spawn(move || {
                    if let Err(e) = c.serve(client) {
                        debug!(error = %e, "TCP DNS gate connection closed");
                    }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                warn!(error = %e, "TCP DNS gate accept failed");
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Reads one length-prefixed DNS message; `None` at a clean end of stream.
fn read_message(s: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut msg)?;
    Ok(Some(msg))
}

fn write_message(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("message over 65535 bytes"))?;
    let mut buf = Vec::with_capacity(msg.len() + 2);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(msg);
    s.write_all(&buf)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

impl Conn {
    fn serve(&self, mut client: TcpStream) -> io::Result<()> {
        client.set_read_timeout(Some(IO_TIMEOUT))?;
        client.set_write_timeout(Some(IO_TIMEOUT))?;
        let stats = &self.shared.stats;
        let mut upstream: Option<TcpStream> = None;
        while let Some(bytes) = read_message(&mut client)? {
            let query = parse_message(&bytes).map_err(|e| {
                GateStats::bump(&stats.dropped_malformed);
                invalid(&e.to_string())
            })?;
            let (qname, qtype) = parse_query(&query).map_err(|e| {
                GateStats::bump(&stats.dropped_malformed);
                invalid(&e.to_string())
            })?;
            note_shape(&self.shared, self.endpoint, &qname);
            let Some(allowed) = judge_query(&self.shared, self.endpoint, &qname, self.resolver, 0, self.cgroup_id) else {
                GateStats::bump(&stats.dropped_unknown_endpoint);
                return Err(invalid("endpoint gone"));
            };
            if !allowed {
                // Answered here: the query never leaves the node.
                GateStats::bump(&stats.queries_refused);
                let reply = refusal(&query, self.deny_rcode).to_vec().map_err(|e| invalid(&e.to_string()))?;
                write_message(&mut client, &reply)?;
                continue;
            }
            let up = match &mut upstream {
                Some(u) => u,
                None => {
                    let u = TcpStream::connect_timeout(&self.resolver, IO_TIMEOUT)?;
                    u.set_read_timeout(Some(IO_TIMEOUT))?;
                    u.set_write_timeout(Some(IO_TIMEOUT))?;
                    upstream.insert(u)
                }
            };
            write_message(up, &bytes)?;
            let answer = read_message(up)?.ok_or_else(|| invalid("resolver closed the connection"))?;
            let mut msg = parse_message(&answer).map_err(|e| {
                GateStats::bump(&stats.dropped_malformed);
                invalid(&e.to_string())
            })?;
            // Our own connection to the resolver, but still: the answer
            // must be to this query.
            if transaction_id(&msg) != transaction_id(&query)
                || crate::dns::question(&msg) != Some((qname.clone(), qtype))
            {
                GateStats::bump(&stats.answers_unsolicited);
                return Err(invalid("answer does not match the query"));
            }
            let learned = learnable(&msg, MAX_CNAME_CHAIN).map_err(|e| {
                GateStats::bump(&stats.dropped_malformed);
                invalid(&e.to_string())
            })?;
            let Some(stripped) = vet_answer(&self.shared, self.endpoint, 0, self.cgroup_id, &qname, learned.as_ref(), &mut msg)
            else {
                return Err(invalid("answer not learned"));
            };
            if stripped.is_empty() {
                write_message(&mut client, &answer)?;
            } else {
                GateStats::bump(&stats.answers_stripped);
                let rewritten = msg.to_vec().map_err(|e| invalid(&e.to_string()))?;
                write_message(&mut client, &rewritten)?;
            }
            GateStats::bump(&stats.released);
        }
        Ok(())
    }
}

//! DNS gates: DNS from an endpoint to a trusted resolver goes through the
//! agent, which checks each query and learns from each answer before the
//! workload reads it.
//!
//! The connect and sendmsg hooks rewrite DNS to a trusted resolver into
//! DNS to the gate for (network namespace, endpoint, resolver): a UDP
//! socket and a TCP listener the agent opens on 127.0.0.1 (or ::1) *inside
//! the workload's namespace* (a thread `setns`es there; threads it spawns
//! stay there), so no address of the agent is needed anywhere; the recvmsg
//! hooks show the workload the resolver's address as the source of the
//! gate's answers. A name the policy does not allow is answered by the gate
//! at once (NXDOMAIN by default) and the query never leaves the node; an
//! allowed one goes to the resolver from the gate's own socket in the same
//! namespace, and the answer is learned (and stripped of addresses the
//! workload may never reach) before it is sent on (`udp`, `tcp`). Anything
//! unexpected drops the answer or closes the connection: the client sees a
//! failed lookup, never an answer the kernel does not know about.
//!
//! Without a gate in its namespace (one the agent has not seen yet), a UDP
//! query is caught in the kernel: `connect4` binds the socket to `lo`, or
//! `sendmsg` sends it to the loopback sink, so it stays in the namespace,
//! and egress copies it to the agent (`DNS_KIND_CAUGHT`), which opens the
//! gates there and serves it through the UDP gate (`serve_caught`): the
//! answer is injected from the resolver's address. `connect6` connects an
//! IPv6 socket to an IPv4 placeholder on `lo` for the same end; a datagram
//! the hooks could not redirect (an `IPV6_V6ONLY` socket) is copied and
//! dropped by egress and served the same way. TCP is refused at connect
//! (`denied-dns-no-gate`).
//! The agent opens gates for the namespaces of an endpoint's processes when
//! it starts enforcing, for any namespace a query is caught in or comes
//! from on the hold path (before that query's answer is released, so a
//! truncated answer's TCP retry finds its gate), and for a namespace whose
//! TCP DNS was refused for want of one.

mod slots;
mod tcp;
mod udp;
mod upstream;
pub mod veth_tcp;

pub use upstream::Upstream;

use std::{
    collections::HashMap,
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::{AsFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use agent_common::{GateKey, GatePortKey, GatePortValue, GateValue, LOOPBACK_IFINDEX, proto};
use nix::sched::{CloneFlags, setns};
use thiserror::Error;
use tracing::debug;

use crate::{
    datapath::loader::netns_cookie_of,
    dnsgate::{
        engine::{Client, Engine},
        inject::{InjectError, raw_socket, set_int_option},
    },
    enforcer::Enforcer,
    enforcer::live::LiveConns,
    policy::canonical,
    util::lock,
};

#[derive(Debug, Error)]
pub enum GateError {
    #[error("process {tgid}: opening its network namespace: {source}")]
    OpenNetns { tgid: u32, source: io::Error },
    #[error("process {tgid}: entering its network namespace: {source}")]
    Setns { tgid: u32, source: nix::Error },
    #[error("opening a gate socket on {addr} in the workload's namespace: {source}")]
    Socket { addr: SocketAddr, source: io::Error },
    #[error("opening the gate's raw socket: {0}")]
    Raw(#[from] InjectError),
    #[error("gate thread failed")]
    Thread,
    #[error("updating kernel map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
}

/// The gates this agent runs.
pub struct NamespaceGates {
    engine: Engine,
    enforcer: Enforcer,
    enabled: bool,
    /// `skb->mark` of injected answers (the ingress hook passes them).
    inject_mark: u32,
    /// Gets each namespace's socket-diagnostics socket.
    live: Arc<LiveConns>,
    /// (netns cookie, endpoint, resolver) -> gate.
    open: Mutex<HashMap<GateKey, GateValue>>,
    /// The UDP side of each open gate, for queries caught on loopback.
    udp: Mutex<HashMap<GateKey, Arc<udp::UdpGate>>>,
    /// Namespace inode -> cookie, for namespaces already entered.
    cookies: Mutex<HashMap<u64, u64>>,
    /// UDP queries forwarded and not answered yet, per gate (a stopping
    /// agent waits for them).
    in_flight: Mutex<Vec<udp::Table>>,
    /// Each open gate's own stop flag (`close`).
    stops: Mutex<HashMap<GateKey, Arc<AtomicBool>>>,
    /// A previous agent's gate ports, removed once its answers are in.
    stale_ports: Mutex<(Vec<GatePortKey>, Option<Instant>)>,
    stop: Arc<AtomicBool>,
    /// Where sockets to resolvers are made (`upstream.rs`).
    upstream: Upstream,
}

/// How long a previous agent's gate ports stay after a takeover (its gates
/// answer what they forwarded for up to `udp::ANSWER_TIMEOUT`).
const STALE_PORTS_GRACE: Duration = Duration::from_secs(30);

fn key(netns_cookie: u64, endpoint: u32, resolver: SocketAddr) -> GateKey {
    GateKey { netns_cookie, endpoint, port: resolver.port().to_be_bytes(), _pad: [0; 2], ip: canonical(resolver.ip()).octets() }
}

/// Where the gate for `resolver` listens: loopback of the resolver's family.
fn loopback_for(resolver: SocketAddr) -> SocketAddr {
    match resolver.ip() {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        _ => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    }
}

/// What a gate needs to serve its clients (UDP and TCP).
#[derive(Clone)]
struct GateCtx {
    engine: Engine,
    /// Who sent to the gate's ports (`gate_client`).
    enforcer: Enforcer,
    /// The endpoint and resolver; `tgid` is filled in per client.
    who: Client,
    netns_cookie: u64,
    /// Where sockets to the resolver are made.
    upstream: Upstream,
}

impl GateCtx {
    /// The process that sent to the gate from `port` (0: unknown).
    fn client(&self, port: u16, proto: u8) -> Client {
        Client { tgid: self.enforcer.gate_client(self.netns_cookie, port, proto).unwrap_or(0), ..self.who }
    }
}

/// Where a caught query came from and was meant to go.
#[derive(Clone, Copy, Debug)]
pub struct CaughtQuery {
    /// The sending process and its network namespace.
    pub tgid: u32,
    pub netns_cookie: u64,
    pub endpoint: u32,
    /// The client's socket address, which the answer goes to.
    pub client: SocketAddr,
    /// The trusted resolver the query was for.
    pub resolver: SocketAddr,
    /// The source the answer shows: the resolver, or the IPv4 placeholder
    /// an IPv6 resolver's query was caught through.
    pub from: SocketAddr,
}

/// A gate's sockets, made inside the workload's namespace.
struct Sockets {
    tcp: TcpListener,
    udp: UdpSocket,
    upstream: UdpSocket,
    raw4: OwnedFd,
    raw6: OwnedFd,
    /// For `live`: which connections the namespace holds (none if the
    /// kernel refuses one; the caps then see no live connection there).
    diag: Option<OwnedFd>,
}

fn open_sockets(resolver: SocketAddr, inject_mark: u32, up: &Upstream) -> Result<Sockets, GateError> {
    let addr = loopback_for(resolver);
    let err = |addr| move |source| GateError::Socket { addr, source };
    let tcp = TcpListener::bind(addr).map_err(err(addr))?;
    let udp = UdpSocket::bind(addr).map_err(err(addr))?;
    let upstream = up.udp(resolver).map_err(err(resolver))?;
    // Both families: an IPv6 resolver's caught queries can arrive over
    // IPv4 (`DNS_PLACEHOLDER_V4`).
    let raw4 = raw_socket(libc::AF_INET, inject_mark)?;
    // Answers to queries caught by `connect4` go to a socket bound to `lo`:
    // they must arrive on `lo` too. A packet to a local address otherwise
    // counts as arriving on the device that holds the address
    // (net/ipv4/route.c `ip_route_output_key_hash_rcu`: "make sure orig_oif
    // points to fib result device"), and the bound socket would not match it.
    set_int_option(&raw4, libc::SO_BINDTOIFINDEX, LOOPBACK_IFINDEX as libc::c_int)
        .map_err(|e| GateError::Raw(InjectError::Socket(e)))?;
    // No IPv6 client socket is bound to `lo` (the IPv6 catches go over IPv4,
    // to `::1`, or through egress unchanged), and IPv6 makes no on-link
    // guess through `lo`: bound there, an answer to an address of another
    // device fails with ENETUNREACH (an `IPV6_V6ONLY` socket's, caught on
    // egress).
    let raw6 = raw_socket(libc::AF_INET6, inject_mark)?;
    let diag = crate::enforcer::live::diag_socket().map_err(|e| debug!(error = %e, "no socket diagnostics")).ok();
    Ok(Sockets { tcp, udp, upstream, raw4, raw6, diag })
}

fn port_of(local: io::Result<SocketAddr>) -> u16 {
    local.map(|a| a.port()).unwrap_or(0)
}

impl NamespaceGates {
    /// `enabled` false: `ensure` opens nothing (see `GateOptions::dns_gates`).
    pub fn new(engine: Engine, enforcer: Enforcer, enabled: bool, inject_mark: u32, live: Arc<LiveConns>) -> Self {
        Self {
            engine,
            enforcer,
            enabled,
            inject_mark,
            live,
            open: Mutex::default(),
            udp: Mutex::default(),
            cookies: Mutex::default(),
            in_flight: Mutex::default(),
            stops: Mutex::default(),
            stale_ports: Mutex::default(),
            stop: Arc::default(),
            upstream: Upstream::default(),
        }
    }

    /// Gates forward from the node's namespace `node_ns` (`upstream.rs`):
    /// required when the pods' veths carry the veth programs.
    pub fn forward_from(mut self, node_ns: OwnedFd) -> Self {
        self.upstream = Upstream::in_namespace(node_ns);
        self
    }

    /// Makes sure `endpoint` has a gate to each of its trusted resolvers in
    /// the network namespace of process `tgid` (whose cookie, if known, is
    /// `netns_cookie`: then a known gate costs only a lookup).
    pub fn ensure(&self, tgid: u32, netns_cookie: Option<u64>, endpoint: u32) -> Result<(), GateError> {
        if !self.enabled {
            return Ok(());
        }
        let Some(ep) = self.enforcer.endpoint(endpoint) else {
            return Ok(());
        };
        let (resolvers, cgroup_id) = (ep.policy.dns_servers.clone(), ep.cgroup_id);
        let known = |cookie: u64| {
            let open = lock(&self.open);
            resolvers.iter().all(|r| open.contains_key(&key(cookie, endpoint, *r)))
        };
        // The common case (a query from a namespace with gates) stops here,
        // before any file is opened.
        if netns_cookie.is_some_and(known) {
            return Ok(());
        }
        let ns = File::open(format!("/proc/{tgid}/ns/net")).map_err(|source| GateError::OpenNetns { tgid, source })?;
        let ino = ns.metadata().map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
        let seen = lock(&self.cookies).get(&ino).copied();
        if netns_cookie.is_none() && seen.is_some_and(known) {
            return Ok(());
        }
        for resolver in resolvers {
            let (tx, rx) = mpsc::channel();
            let ns = ns.try_clone().map_err(|source| GateError::OpenNetns { tgid, source })?;
            let mut conn = GateCtx {
                engine: self.engine.clone(),
                enforcer: self.enforcer.clone(),
                who: Client { endpoint, tgid: 0, cgroup_id, resolver },
                netns_cookie: 0,
                upstream: self.upstream.clone(),
            };
            let table = udp::Table::default();
            // Ends with the agent, or at once if this gate is not needed.
            let mine = Arc::new(AtomicBool::new(false));
            let stop = (self.stop.clone(), mine.clone());
            let t = table.clone();
            let mark = self.inject_mark;
            thread::Builder::new()
                .name("dns-gate-ns".into())
                .spawn(move || {
                    // This thread and every thread it spawns live in the
                    // workload's namespace from here on.
                    if let Err(source) = setns(ns.as_fd(), CloneFlags::CLONE_NEWNET) {
                        let _ = tx.send(Err(GateError::Setns { tgid, source }));
                        return;
                    }
                    let socks = match open_sockets(resolver, mark, &conn.upstream) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let cookie = netns_cookie_of(&socks.udp).unwrap_or(0);
                    conn.netns_cookie = cookie;
                    let ports = (port_of(socks.tcp.local_addr()), port_of(socks.udp.local_addr()));
                    let g = Arc::new(udp::UdpGate {
                        gate: socks.udp,
                        upstream: socks.upstream,
                        raw4: socks.raw4,
                        raw6: socks.raw6,
                        conn: conn.clone(),
                        table: t,
                    });
                    if tx.send(Ok((cookie, ports, g.clone(), socks.diag))).is_err() {
                        return;
                    }
                    udp::spawn(g, stop.clone());
                    tcp::accept_loop(socks.tcp, conn, stop);
                })
                .map_err(|_| GateError::Thread)?;
            let (cookie, (tcp_port, udp_port), udp_gate, diag) = rx.recv().map_err(|_| GateError::Thread)??;
            lock(&self.cookies).insert(ino, cookie);
            if let Some(fd) = diag {
                self.live.add_namespace(cookie, fd);
            }
            let k = key(cookie, endpoint, resolver);
            let mut open = lock(&self.open);
            if open.contains_key(&k) {
                // Another process of the same namespace got there first.
                mine.store(true, Ordering::Relaxed);
                continue;
            }
            let value = GateValue { port: tcp_port.to_be_bytes(), udp_port: udp_port.to_be_bytes(), _pad: [0; 4] };
            let resolver_v = GatePortValue { ip: k.ip, port: resolver.port().to_be_bytes(), _pad: [0; 2], endpoint };
            let ports = [(tcp_port, proto::TCP), (udp_port, proto::UDP)].map(|(p, pr)| {
                (GatePortKey { netns_cookie: cookie, port: p.to_be_bytes(), proto: pr, _pad: [0; 5] }, resolver_v)
            });
            // The entry last: only then does the kernel send DNS here.
            self.enforcer.publish_gate(k, value, &ports).map_err(|e| GateError::Map("GATES", e))?;
            open.insert(k, value);
            lock(&self.stops).insert(k, mine);
            lock(&self.udp).insert(k, udp_gate);
            lock(&self.in_flight).push(table);
            debug!(endpoint, %resolver, tcp_port, udp_port, netns = cookie, "DNS gate open");
        }
        Ok(())
    }

    /// Serves a caught query (`DNS_KIND_CAUGHT`). Opens the namespace's
    /// gates first (the catch happens only where there are none yet); the
    /// query is then judged and forwarded by that gate, and the answer
    /// injected. Returns whether a gate took it.
    pub fn serve_caught(&self, q: &CaughtQuery, query: &[u8]) -> Result<bool, GateError> {
        let CaughtQuery { tgid, netns_cookie, endpoint, client, resolver, from } = *q;
        self.ensure(tgid, Some(netns_cookie), endpoint)?;
        let k = key(netns_cookie, endpoint, resolver);
        let Some(g) = lock(&self.udp).get(&k).cloned() else {
            return Ok(false);
        };
        g.serve_caught(query, client, from, tgid);
        Ok(true)
    }

    /// Closes the gates of `endpoint` to every resolver not in `keep` (all
    /// of them when the endpoint goes; those its new policy dropped): the
    /// kernel stops sending DNS there first, then the gates' threads end.
    pub fn close(&self, endpoint: u32, keep: &[SocketAddr]) {
        let mut open = lock(&self.open);
        let gone: Vec<(GateKey, GateValue)> = open
            .iter()
            .filter(|(k, _)| k.endpoint == endpoint && !keep.iter().any(|r| key(k.netns_cookie, endpoint, *r) == **k))
            .map(|(k, v)| (*k, *v))
            .collect();
        if gone.is_empty() {
            return;
        }
        for (k, v) in &gone {
            if let Err(e) = self.enforcer.unpublish_gate(k, v) {
                tracing::warn!(error = %e, endpoint, "removing a DNS gate entry failed");
            }
            let ports = [(v.port, proto::TCP), (v.udp_port, proto::UDP)].map(|(port, proto)| GatePortKey {
                netns_cookie: k.netns_cookie,
                port,
                proto,
                _pad: [0; 5],
            });
            if let Err(e) = self.enforcer.remove_gate_ports(&ports) {
                tracing::warn!(error = %e, endpoint, "removing a DNS gate port failed");
            }
            open.remove(k);
            lock(&self.udp).remove(k);
            if let Some(stop) = lock(&self.stops).remove(k) {
                stop.store(true, Ordering::Relaxed);
            }
        }
        debug!(endpoint, gates = gone.len(), "DNS gates closed");
    }

    /// Notes a previous agent's gate ports for removal after a grace time.
    pub fn retire_ports(&self, ports: Vec<GatePortKey>) {
        *lock(&self.stale_ports) = (ports, Some(Instant::now() + STALE_PORTS_GRACE));
    }

    /// Removes retired gate ports once their grace time is over (those this
    /// agent's gates reuse stay). Called periodically.
    pub fn sweep(&self) {
        let ports = {
            let mut stale = lock(&self.stale_ports);
            match stale.1 {
                Some(t) if Instant::now() >= t => std::mem::take(&mut *stale).0,
                _ => return,
            }
        };
        let ours: Vec<GatePortKey> = lock(&self.open)
            .iter()
            .flat_map(|(k, v)| {
                [(v.port, proto::TCP), (v.udp_port, proto::UDP)].map(|(port, proto)| GatePortKey {
                    netns_cookie: k.netns_cookie,
                    port,
                    proto,
                    _pad: [0; 5],
                })
            })
            .collect();
        let retired: Vec<GatePortKey> = ports.into_iter().filter(|k| !ours.contains(k)).collect();
        if let Err(e) = self.enforcer.remove_gate_ports(&retired) {
            debug!(error = %e, "removing a retired gate port failed");
        }
    }

    /// Stops sending new DNS to this agent's gates (their `GATES` entries
    /// go, unless a newer agent replaced them): new UDP queries are caught,
    /// and wait in the pinned ring for the next agent.
    pub fn unpublish(&self) {
        let open = lock(&self.open);
        for (k, v) in open.iter() {
            if let Err(e) = self.enforcer.unpublish_gate(k, v) {
                debug!(error = %e, "removing a gate entry failed");
            }
        }
    }

    /// Stops the gates, after the UDP queries they forwarded are answered
    /// (at most a few seconds): a takeover loses no lookup in flight.
    pub fn shutdown(&self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && lock(&self.in_flight).iter().any(|t| !t.is_empty()) {
            thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::Relaxed);
    }
}

//! DNS taken off pods' veths (`DNS_KIND_VETH_QUERY`, `agent-ebpf/src/veth.rs`):
//! the gate for pods whose traffic no socket hook sees (a gVisor sandbox's
//! netstack, a Kata VM) and for anything else that put DNS on a pod's wire
//! (a packet socket). The kernel dropped the query; here it is judged by
//! the same pipeline as the gates (`Engine`), a refusal answered at once
//! (the query never leaves), an allowed query forwarded under a fresh id
//! from the node's network namespace (so it never crosses a pod's veth),
//! its answer matched (resolver address and port, our id, the question),
//! learned from, stripped, and only then written onto the pod's veth as a
//! frame from the resolver (`AF_PACKET` in the node's namespace, with the
//! agent's mark).

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tracing::debug;

use super::{
    DnsStats,
    engine::{Client, Engine, QueryVerdict, Question},
    ids::FreshIds,
    inject::set_int_option,
};
use crate::{
    dns::{FrameQuery, build_frame, parse_frame_query},
    util::{in_netns, lock},
};

/// How long a forwarded query waits for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Forwarded queries waiting, in all and per endpoint (one pod cannot take
/// every id).
const MAX_IN_FLIGHT: usize = 8192;
const MAX_IN_FLIGHT_PER_ENDPOINT: usize = 512;
/// How often the answer loops look at their stop flag.
const POLL: Duration = Duration::from_millis(200);
/// TTL / hop limit of an answer written onto a veth (it is delivered, not routed).
const ANSWER_TTL: u8 = 64;

/// Where an answer goes: the frame's addresses, owned.
#[derive(Clone, Copy, Debug)]
struct ReplyTo {
    ifindex: u32,
    pod_mac: [u8; 6],
    gateway_mac: [u8; 6],
    client: SocketAddr,
    resolver: SocketAddr,
}

struct Flight {
    reply: ReplyTo,
    endpoint: u32,
    /// With the client's own transaction id.
    question: Question,
    at: Instant,
}

#[derive(Default)]
struct Flights {
    by_id: HashMap<u16, Flight>,
    ids: FreshIds,
}

impl Flights {
    fn add(&mut self, f: Flight) -> Option<u16> {
        let now = Instant::now();
        self.by_id.retain(|_, f| now.duration_since(f.at) < ANSWER_TIMEOUT);
        let mine = self.by_id.values().filter(|g| g.endpoint == f.endpoint).count();
        if self.by_id.len() >= MAX_IN_FLIGHT || mine >= MAX_IN_FLIGHT_PER_ENDPOINT {
            return None;
        }
        let id = self.ids.next(&self.by_id);
        self.by_id.insert(id, f);
        Some(id)
    }
}

pub struct VethDns {
    engine: Engine,
    /// Upstream sockets in the node's namespace, one per family.
    up4: UdpSocket,
    up6: Option<UdpSocket>,
    /// `AF_PACKET`, in the node's namespace, marked.
    packet: OwnedFd,
    flights: Mutex<Flights>,
    stop: Arc<AtomicBool>,
}

impl VethDns {
    /// Opens the sockets in `node_ns` (the namespace holding the pods'
    /// host-side veths) and starts the answer loops.
    pub fn open(engine: Engine, node_ns: BorrowedFd<'_>, mark: u32) -> io::Result<Arc<Self>> {
        let (up4, up6, packet) = in_netns(node_ns, || -> io::Result<_> {
            let up4 = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            // A node without IPv6 still serves IPv4 pods.
            let up6 = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).ok();
            // SAFETY: plain socket(2); protocol 0: this socket receives nothing.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh fd.
            let packet = unsafe { OwnedFd::from_raw_fd(fd) };
            set_int_option(&packet, libc::SO_MARK, mark as libc::c_int)?;
            Ok((up4, up6, packet))
        })??;
        for s in std::iter::once(&up4).chain(up6.as_ref()) {
            s.set_read_timeout(Some(POLL))?;
        }
        let me = Arc::new(Self { engine, up4, up6, packet, flights: Mutex::default(), stop: Arc::default() });
        for v6 in [false, true] {
            let m = me.clone();
            thread::Builder::new().name("dns-veth-up".into()).spawn(move || m.answers(v6))?;
        }
        Ok(me)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// One frame the kernel took off `ifindex` for `endpoint`.
    pub fn serve(&self, endpoint: u32, ifindex: u32, frame: &[u8]) {
        let stats = &self.engine.stats;
        let q = match parse_frame_query(frame) {
            Ok(q) => q,
            Err(e) => {
                debug!(error = %e, ifindex, "DNS frame from a veth dropped");
                DnsStats::bump(&stats.dropped_malformed);
                return;
            }
        };
        let FrameQuery { pod_mac, gateway_mac, client, resolver, message } = q;
        let reply = ReplyTo { ifindex, pod_mac, gateway_mac, client, resolver };
        let who = Client { endpoint, tgid: 0, cgroup_id: 0, resolver };
        let question = match self.engine.on_query(&who, message) {
            QueryVerdict::Forward(question) => question,
            QueryVerdict::Refuse(_, answer) => {
                self.deliver(&reply, &answer);
                return;
            }
            QueryVerdict::Drop => return,
        };
        let Some(id) = lock(&self.flights).add(Flight { reply, endpoint, question, at: Instant::now() }) else {
            DnsStats::bump(&stats.dropped_inject_failed);
            return;
        };
        let mut bytes = message.to_vec();
        bytes[..2].copy_from_slice(&id.to_be_bytes());
        let up = if resolver.is_ipv4() { Some(&self.up4) } else { self.up6.as_ref() };
        let sent = up.map(|s| s.send_to(&bytes, resolver));
        if !matches!(sent, Some(Ok(_))) {
            debug!(?sent, %resolver, "forwarding a DNS query from a veth failed");
            lock(&self.flights).by_id.remove(&id);
        }
    }

    /// Resolver -> node: match, learn, strip, write onto the pod's veth.
    fn answers(&self, v6: bool) {
        let Some(sock) = (if v6 { self.up6.as_ref() } else { Some(&self.up4) }) else { return };
        let stats = &self.engine.stats;
        let mut buf = vec![0u8; 65535];
        while !self.stop.load(Ordering::Relaxed) {
            let (len, from) = match sock.recv_from(&mut buf) {
                Ok(v) => v,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                Err(e) => {
                    debug!(error = %e, "veth DNS upstream receive failed");
                    continue;
                }
            };
            let bytes = &mut buf[..len];
            if len < 12 {
                DnsStats::bump(&stats.dropped_malformed);
                continue;
            }
            let id = u16::from_be_bytes([bytes[0], bytes[1]]);
            let found = lock(&self.flights).by_id.get(&id).map(|f| (f.reply, f.endpoint, f.question.clone()));
            // Only from the resolver the query went to, with our id.
            let Some((reply, endpoint, question)) = found.filter(|(r, _, _)| same_addr(r.resolver, from)) else {
                DnsStats::bump(&stats.answers_unsolicited);
                continue;
            };
            bytes[..2].copy_from_slice(&question.txid.to_be_bytes());
            let who = Client { endpoint, tgid: 0, cgroup_id: 0, resolver: reply.resolver };
            let Some(answer) = self.engine.on_answer(&who, &question, bytes) else { continue };
            lock(&self.flights).by_id.remove(&id);
            if self.deliver(&reply, &answer) {
                DnsStats::bump(&stats.released);
            }
        }
    }

    /// Writes `answer` onto the veth as a frame from the resolver.
    fn deliver(&self, to: &ReplyTo, answer: &[u8]) -> bool {
        let q = FrameQuery {
            pod_mac: to.pod_mac,
            gateway_mac: to.gateway_mac,
            client: to.client,
            resolver: to.resolver,
            message: &[],
        };
        let sent = build_frame(&q, answer, ANSWER_TTL).map_err(io::Error::other).and_then(|f| self.send_frame(to, &f));
        if let Err(e) = &sent {
            debug!(error = %e, ifindex = to.ifindex, "writing a DNS answer onto a veth failed");
            DnsStats::bump(&self.engine.stats.dropped_inject_failed);
        }
        sent.is_ok()
    }

    fn send_frame(&self, to: &ReplyTo, frame: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_ll, then the fields the kernel reads.
        let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_ifindex = to.ifindex as i32;
        ll.sll_halen = 6;
        ll.sll_addr[..6].copy_from_slice(&to.pod_mac);
        // SAFETY: valid buffer and address of the sizes passed.
        let n = unsafe {
            libc::sendto(
                self.packet.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

/// Whether an answer's source is the resolver (an IPv4 resolver may show
/// up IPv4-mapped on a dual-stack socket).
fn same_addr(resolver: SocketAddr, from: SocketAddr) -> bool {
    let canon = |a: SocketAddr| (a.ip().to_canonical(), a.port());
    canon(resolver) == canon(from)
}

//! DNS over TCP taken off pods' veths: the gate for it, in the node's
//! namespace. The veth programs hand each such segment to this gate's
//! transparent listeners (`agent-ebpf/src/veth_dns.rs`: `bpf_sk_assign`,
//! and a mark the policy route `datapath::local_route` delivers locally),
//! so a connection accepted here keeps the pod's address as its peer and
//! the resolver's address and port as its own. Each connection is served
//! as the namespace gates serve theirs (`tcp::serve`: every query judged, a
//! refused name answered here, an allowed one forwarded from the node's
//! namespace, its answer learned from before it is written back), for the
//! endpoint that owns the peer's address on its veth.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, BorrowedFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agent_common::proto;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::{slots::Slots, tcp::serve, upstream::Upstream};
use crate::{
    dnsgate::engine::{Client, Engine},
    util::lock,
};

/// Connections served at once, for every pod of the node.
const MAX_CONNS: usize = 256;
const STOP_CHECK: Duration = Duration::from_millis(200);
const IP_TRANSPARENT: libc::c_int = 19;
const IPV6_TRANSPARENT: libc::c_int = 75;

/// A pod's addresses -> its endpoint (kept by the agent as it assigns
/// veths).
pub type PodAddrs = Arc<Mutex<HashMap<IpAddr, u32>>>;

pub struct VethTcpGate {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Drop for VethTcpGate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl VethTcpGate {
    /// Stops accepting (connections in progress end with the thread).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Opens the listeners (IPv4 and IPv6, one port) in `node_ns` and
    /// serves them on a thread that lives there.
    pub fn open(engine: Engine, node_ns: BorrowedFd<'_>, pods: PodAddrs) -> io::Result<Self> {
        let ns = node_ns.try_clone_to_owned()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        std::thread::Builder::new().name("dns-veth-tcp".into()).spawn(move || {
            let opened =
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from).and_then(|()| listeners());
            let (v4, v6) = match opened {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let port = v4.local_addr().map(|a| a.port()).unwrap_or(0);
            if tx.send(Ok(port)).is_err() {
                return;
            }
            run(engine, v4, v6, pods, s);
        })?;
        let port = rx.recv().map_err(|_| io::Error::other("the TCP DNS gate's thread ended"))??;
        Ok(Self { port, stop })
    }
}

fn transparent(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and an int option.
    let rc = unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, (&raw const one).cast(), size_of::<libc::c_int>() as libc::socklen_t)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Transparent listeners on one port: IPv4, and IPv6 only if the node has it.
fn listeners() -> io::Result<(std::net::TcpListener, Option<std::net::TcpListener>)> {
    use std::os::fd::AsFd as _;
    let v4 = socket(libc::AF_INET)?;
    transparent(v4.as_fd(), libc::SOL_IP, IP_TRANSPARENT)?;
    let v4 = bind_listen(v4, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    let port = v4.local_addr()?.port();
    let v6 = socket(libc::AF_INET6).and_then(|s| {
        transparent(s.as_fd(), libc::SOL_IPV6, IPV6_TRANSPARENT)?;
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv6V6Only, &true).map_err(io::Error::from)?;
        bind_listen(s, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
    });
    Ok((v4, v6.map_err(|e| debug!(error = %e, "no IPv6 TCP DNS listener")).ok()))
}

fn socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

fn bind_listen(fd: OwnedFd, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sa: nix::sys::socket::SockaddrStorage = addr.into();
    nix::sys::socket::bind(fd.as_raw_fd(), &sa).map_err(io::Error::from)?;
    nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(1024).map_err(io::Error::from)?).map_err(io::Error::from)?;
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)?;
    Ok(l)
}

fn run(engine: Engine, v4: std::net::TcpListener, v6: Option<std::net::TcpListener>, pods: PodAddrs, stop: Arc<AtomicBool>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
        Ok(rt) => rt,
        Err(e) => {
            warn!(error = %e, "the veth TCP DNS gate cannot start");
            return;
        }
    };
    rt.block_on(async move {
        let slots = Arc::new(Mutex::new(Slots::new(MAX_CONNS)));
        let (Ok(v4), v6) = (TcpListener::from_std(v4), v6.map(TcpListener::from_std).transpose()) else {
            warn!("the veth TCP DNS gate cannot listen");
            return;
        };
        let v6 = v6.ok().flatten();
        let mut tick = tokio::time::interval(STOP_CHECK);
        loop {
            let accepted = tokio::select! {
                r = v4.accept() => r,
                r = async { match &v6 { Some(l) => l.accept().await, None => std::future::pending().await } } => r,
                _ = tick.tick() => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    continue;
                }
            };
            match accepted {
                Ok((client, peer)) => admit(&engine, client, peer, &pods, &slots),
                Err(e) => debug!(error = %e, "veth TCP DNS gate accept failed"),
            }
        }
    });
}

/// Serves a connection for the endpoint owning its peer's address; one
/// from an address no veth was assigned is closed (it cannot come from a
/// pod: the veth programs drop forged sources).
fn admit(engine: &Engine, client: TcpStream, peer: SocketAddr, pods: &PodAddrs, slots: &Arc<Mutex<Slots>>) {
    let (Ok(resolver), Some(endpoint)) = (client.local_addr(), lock(pods).get(&peer.ip().to_canonical()).copied()) else {
        debug!(%peer, "TCP DNS from an address no veth is assigned; closed");
        return;
    };
    let stats = &engine.stats;
    let Some((slot, evicted)) = Slots::take(slots) else {
        stats.with_endpoint(endpoint, |s| s.tcp_refused += 1);
        return;
    };
    if evicted {
        stats.with_endpoint(endpoint, |s| s.tcp_evicted += 1);
    }
    let resolver = SocketAddr::new(resolver.ip().to_canonical(), resolver.port());
    let who = Client { endpoint, tgid: 0, cgroup_id: 0, resolver };
    let engine = engine.clone();
    tokio::spawn(async move {
        // This thread is in the node's namespace: sockets to the resolver
        // are made here.
        if let Err(e) = serve(&engine, &Upstream::default(), client, &who, &slot).await {
            debug!(error = %e, proto = proto::TCP, "veth TCP DNS connection closed");
        }
    });
}

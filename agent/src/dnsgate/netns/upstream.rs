//! Where a gate's sockets to the resolver are made: in the workload's
//! namespace (the gate's own), or, when the pods' veths carry the veth
//! programs, in the node's. A query forwarded from the pod's namespace
//! would cross its veth, where every query is taken off the wire: the veth
//! programs cannot tell the gate's from one the workload wrote with a
//! packet socket, because `skb->mark` does not survive the namespace
//! crossing (net/core/skbuff.c `skb_scrub_packet`). From the node's
//! namespace the gate's queries never touch a pod's veth.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
};

use tokio::net::{TcpSocket, TcpStream};

use crate::util::in_netns;

#[derive(Clone, Default)]
pub struct Upstream(Option<Arc<OwnedFd>>);

impl Upstream {
    /// Sockets to resolvers are made in the namespace `node_ns`.
    pub fn in_namespace(node_ns: OwnedFd) -> Self {
        Self(Some(Arc::new(node_ns)))
    }

    /// Whether the sockets are made in another namespace than the gate's.
    pub fn is_node(&self) -> bool {
        self.0.is_some()
    }

    /// A UDP socket connected to `resolver`.
    pub fn udp(&self, resolver: SocketAddr) -> io::Result<UdpSocket> {
        let open = || {
            let any: SocketAddr =
                if resolver.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
            let s = UdpSocket::bind(any)?;
            s.connect(resolver)?;
            Ok(s)
        };
        match &self.0 {
            Some(ns) => in_netns(ns.as_fd(), open)?,
            None => open(),
        }
    }

    /// A TCP connection to `resolver` (the socket is made on a short-lived
    /// thread in the node's namespace; connecting needs no namespace).
    pub async fn tcp(&self, resolver: SocketAddr) -> io::Result<TcpStream> {
        let make = || if resolver.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
        let sock = match &self.0 {
            Some(ns) => in_netns(ns.as_fd(), make)??,
            None => make()?,
        };
        sock.connect(resolver).await
    }
}

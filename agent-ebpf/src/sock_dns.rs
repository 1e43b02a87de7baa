//! The socket hooks' DNS side: redirecting a query to the namespace's gate,
//! keeping one in the namespace when there is no gate yet (loopback bind,
//! the IPv4 placeholder, the sink), and `cgroup/recvmsg{4,6}`, which shows
//! the resolver's address as the source of the gate's answers.

use agent_common::{
    DNS_PLACEHOLDER, DNS_SINK_PORT, FLOW_F_CAUGHT, FLOW_F_DNS, GateKey, GatePortKey, LOOPBACK_IFINDEX, LiveFlow, proto, v4_mapped,
};
use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_bind, bpf_get_netns_cookie, bpf_setsockopt},
    programs::SockAddrContext,
};

use crate::sock_addr::{ALLOW, ip_of, is_v4, remember_flow, set_user_ip6};
use crate::{
    maps::{GATE_PORTS, GATES, SK_FLOWS},
    verdict::Dest,
};

/// include/uapi/asm-generic/socket.h
const SOL_SOCKET: i32 = 1;
const SO_BINDTOIFINDEX: i32 = 62;
/// include/linux/socket.h
const AF_INET6: u16 = 10;
const LOOPBACK_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Binds a UDP socket that is connecting to a trusted resolver to the
/// loopback device, so its datagrams never leave the namespace. No route
/// to the resolver goes through `lo`, so the kernel assumes it is on link
/// there (net/ipv4/route.c `ip_route_output_key_hash_rcu`, "Apparently,
/// routing tables are wrong"), and a route out of a loopback device is
/// local (`__mkroute_output`: RTCF_LOCAL): `lo` hands the datagram back to
/// the same namespace, where no socket holds the resolver's address, so it
/// is dropped (UdpNoPorts; no ICMP error either, as that address is not
/// local). `cgroup_skb/egress` still sees it on its way out of `lo` and
/// copies it to the agent, which answers as the resolver. The connect hook
/// runs before the route is chosen (net/ipv4/af_inet.c
/// `inet_dgram_connect`), so the first datagram is caught too; `sendmsg`
/// hooks run after udp_sendmsg has read the bound device, hence connect
/// only. IPv6 makes no on-link guess (ENETUNREACH), hence IPv4 only.
#[inline(always)]
pub(crate) fn catch_on_loopback(ctx: &SockAddrContext) -> bool {
    let mut ifindex = LOOPBACK_IFINDEX as i32;
    let ret =
        unsafe { bpf_setsockopt(ctx.as_ptr(), SOL_SOCKET, SO_BINDTOIFINDEX, (&raw mut ifindex).cast(), size_of::<i32>() as i32) };
    ret == 0
}

/// `DNS_PLACEHOLDER` port 53 from a socket whose flow says
/// `catch_via_placeholder` put it there.
#[inline(always)]
pub(crate) fn to_placeholder(ctx: &SockAddrContext, d: &Dest) -> bool {
    d.proto == proto::UDP && d.port == 53u16.to_be_bytes() && d.ip == DNS_PLACEHOLDER && caught_flow(ctx).is_some()
}

/// The socket's flow, if a catch (`FLOW_F_CAUGHT`) set it.
#[inline(always)]
pub(crate) fn caught_flow(ctx: &SockAddrContext) -> Option<LiveFlow> {
    // SAFETY: this socket's own storage, copied out at once.
    let flow = unsafe { SK_FLOWS.get_ptr_mut(ctx) };
    if flow.is_null() {
        return None;
    }
    let f = unsafe { *flow };
    (f.flags & FLOW_F_CAUGHT != 0).then_some(f)
}

pub(crate) enum Placeholder {
    Caught,
    /// Bound to the IPv4-mapped any address, then `lo` failed: the
    /// connect to the IPv6 resolver cannot work any more; refuse it.
    Failed,
    /// An IPV6_V6ONLY or already bound socket: left as it was.
    NotPossible,
}

/// A connected IPv6 UDP socket to an IPv6 resolver (glibc with an IPv6
/// nameserver) from a namespace with no gate: IPv6 makes no on-link guess
/// through `lo` (ENETUNREACH), so the socket goes IPv4 instead. It is bound
/// to `::ffff:0.0.0.0` (`bpf_bind`; fails on an IPV6_V6ONLY or already
/// bound socket, net/ipv6/af_inet6.c `__inet6_bind`, which is how we tell
/// those apart: `skb::egress` catches theirs), then to `lo`, and connected to
/// `DNS_PLACEHOLDER` port 53, which `catch_on_loopback`'s
/// reasoning keeps in the namespace. The socket's flow notes the resolver
/// (`FLOW_F_CAUGHT`); egress hands the datagrams to the agent, which
/// answers from the placeholder, and `recvmsg6` shows the resolver.
#[inline(always)]
pub(crate) fn catch_via_placeholder(ctx: &SockAddrContext) -> Placeholder {
    // struct sockaddr_in6: family, port 0, flowinfo, ::ffff:0.0.0.0, scope.
    let mut sin6 = [0u8; 28];
    sin6[..2].copy_from_slice(&AF_INET6.to_ne_bytes());
    sin6[18] = 0xff;
    sin6[19] = 0xff;
    let ret = unsafe { bpf_bind(ctx.sock_addr, sin6.as_mut_ptr().cast(), sin6.len() as i32) };
    if ret != 0 {
        return Placeholder::NotPossible;
    }
    if !catch_on_loopback(ctx) {
        return Placeholder::Failed;
    }
    // SAFETY: the kernel's bpf_sock_addr, writable in connect hooks.
    set_user_ip6(ctx.sock_addr, &DNS_PLACEHOLDER);
    Placeholder::Caught
}

/// Sends an unconnected datagram to a trusted resolver (port 53) to the
/// loopback sink instead (`DNS_SINK_PORT`: 127.0.0.1, `::ffff:127.0.0.1`
/// for a mapped resolver, `::1` for an IPv6 one), noting the resolver on
/// the socket (`FLOW_F_CAUGHT`) for `skb::egress`, which copies the
/// datagram to the agent with the resolver put back as its destination.
/// Nothing listens there, so the datagram ends in the namespace; the ICMP
/// port-unreachable it draws reaches an unconnected socket only if it set
/// IP_RECVERR (net/ipv4/udp.c `__udp4_lib_err`), which the stub resolvers
/// using unconnected sockets (musl, dnspython) do not.
#[inline(always)]
pub(crate) fn send_to_sink(ctx: &SockAddrContext, v6: bool, d: &Dest, endpoint: u32) {
    remember_flow(ctx, d, endpoint, FLOW_F_DNS | FLOW_F_CAUGHT);
    point_at_loopback(ctx, v6, d, DNS_SINK_PORT.to_be_bytes());
}

/// Rewrites the destination to loopback, `port`: 127.0.0.1 on an IPv4
/// socket, `::ffff:127.0.0.1` on an IPv6 one for an IPv4 destination, `::1`
/// for an IPv6 one. The connect and sendmsg hooks may rewrite the address
/// (net/ipv4/af_inet.c `__inet_stream_connect` reads it back after
/// `pre_connect`; udp_sendmsg after its hook).
#[inline(always)]
pub(crate) fn point_at_loopback(ctx: &SockAddrContext, v6: bool, d: &Dest, port: [u8; 2]) {
    // SAFETY: the kernel's bpf_sock_addr, writable in connect and sendmsg hooks.
    let sa = unsafe { &mut *ctx.sock_addr };
    if !v6 {
        sa.user_ip4 = u32::from_ne_bytes([127, 0, 0, 1]);
    } else if is_v4(d) {
        set_user_ip6(sa, &v4_mapped([127, 0, 0, 1]));
    } else {
        set_user_ip6(sa, &LOOPBACK_V6);
    }
    sa.user_port = u32::from(u16::from_ne_bytes(port));
}

/// Rewrites a connect or send to a trusted resolver into one to the agent's
/// gate for (netns, endpoint, resolver), on loopback (`point_at_loopback`).
#[inline(always)]
pub(crate) fn redirect_to_gate(ctx: &SockAddrContext, v6: bool, netns: u64, endpoint: u32, d: &Dest) -> bool {
    let key = GateKey { netns_cookie: netns, endpoint, port: d.port, _pad: [0; 2], ip: d.ip };
    // SAFETY: a plain-data value copied out at once.
    let Some(gate) = (unsafe { GATES.get(key) }).copied() else {
        return false;
    };
    let port = match d.proto {
        proto::TCP => gate.port,
        proto::UDP => gate.udp_port,
        _ => return false,
    };
    if port == [0, 0] {
        return false;
    }
    point_at_loopback(ctx, v6, d, port);
    true
}

/// `cgroup/recvmsg{4,6}`: a datagram from a UDP gate shows the resolver
/// the workload asked as its source (stub resolvers check it: glibc
/// `res_send.c` drops answers from another address). Always 1 (the
/// return value must be 1 for these hooks).
pub fn recvmsg(ctx: &SockAddrContext, v6: bool) -> i32 {
    // SAFETY: the kernel's bpf_sock_addr, writable in recvmsg hooks.
    let sa = unsafe { &mut *ctx.sock_addr };
    let lo4 = [127, 0, 0, 1];
    let (is_lo, mapped) = if v6 {
        let src = ip_of(sa.user_ip6);
        let mapped = src == v4_mapped(lo4);
        (mapped || src == LOOPBACK_V6, mapped)
    } else {
        (sa.user_ip4.to_ne_bytes() == lo4, false)
    };
    if !is_lo {
        if v6 {
            show_caught_resolver(ctx);
        }
        return ALLOW;
    }
    let key = GatePortKey {
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        port: (sa.user_port as u16).to_ne_bytes(),
        proto: proto::UDP,
        _pad: [0; 5],
    };
    // SAFETY: plain data copied out at once.
    let Some(r) = (unsafe { GATE_PORTS.get(key) }).copied() else {
        return ALLOW;
    };
    let ip = r.ip;
    let v4 = [ip[12], ip[13], ip[14], ip[15]];
    if !v6 {
        sa.user_ip4 = u32::from_ne_bytes(v4);
    } else {
        set_user_ip6(sa, &if mapped { v4_mapped(v4) } else { ip });
    }
    sa.user_port = u32::from(u16::from_ne_bytes(r.port));
    ALLOW
}

/// A datagram from `DNS_PLACEHOLDER` port 53 on a socket
/// `catch_via_placeholder` pointed there: its source becomes the IPv6
/// resolver the socket asked for.
#[inline(always)]
pub(crate) fn show_caught_resolver(ctx: &SockAddrContext) {
    // SAFETY: the kernel's bpf_sock_addr, writable in recvmsg hooks.
    let sa = unsafe { &mut *ctx.sock_addr };
    if ip_of(sa.user_ip6) != DNS_PLACEHOLDER || sa.user_port as u16 != 53u16.to_be() {
        return;
    }
    if let Some(f) = caught_flow(ctx) {
        set_user_ip6(sa, &f.ip);
    }
}

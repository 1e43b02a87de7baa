//! The DNS side of the `cgroup_skb` programs: copying queries and answers
//! into the agent's hold ring (`hold`), recognising datagrams the socket
//! hooks caught (`sunk_query`) and traffic to the agent's DNS gates
//! (`to_gate`, `gate_port`), and naming the process behind a gate's client
//! (`GATE_CLIENTS`) for the log.

use agent_common::{
    DNS_MAX_PACKET, DNS_PLACEHOLDER, DNS_SINK_PORT, DnsHeldPacket, FLOW_F_CAUGHT, GatePortKey, loss, proto, v4_mapped,
};
use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock,
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_skb_load_bytes},
    programs::SkBuffContext,
};

use crate::{
    events::bump,
    maps::{DNS_HOLD, DNS_SOCKS, GATE_CLIENTS, GATE_PORTS},
    parse::Flow,
    skb_sock::{full_sock, socket_flow},
    sock_addr::ip_of,
};

/// include/linux/socket.h
const AF_INET: u32 = 2;

/// A SYN to loopback from a DNS socket (in `DNS_SOCKS`: its `connect()`
/// went to a DNS gate): the TCP gate sees only the client's port, so the
/// process behind it is noted for the log (`GATE_CLIENTS`). Other SYNs
/// cost a few loads from the socket.
#[inline(always)]
pub(crate) fn note_tcp_gate_client(ctx: &SkBuffContext, full: *mut bpf_sock) {
    // SAFETY: a full socket checked by bpf_sk_fullsock; addresses in
    // network byte order, `src_port` in host byte order (uapi bpf.h).
    let (family, dst4, sport) = unsafe { ((*full).family, (*full).dst_ip4, (*full).src_port) };
    // One load per word: the verifier refuses pointer arithmetic on a
    // `bpf_sock`, which a copy of the whole array would need.
    let word = |i: usize| unsafe { core::ptr::read_volatile(&(*full).dst_ip6[i]) };
    let dst = if family == AF_INET { v4_mapped(dst4.to_ne_bytes()) } else { ip_of([word(0), word(1), word(2), word(3)]) };
    if !is_loopback(&dst) {
        return;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(owner) = unsafe { DNS_SOCKS.get(cookie) } {
        // The namespace its connect hook noted (the socket's own).
        let client =
            GatePortKey { netns_cookie: owner.netns_cookie, port: (sport as u16).to_be_bytes(), proto: proto::TCP, _pad: [0; 5] };
        let _ = GATE_CLIENTS.insert(client, owner.tgid, 0);
    }
}

/// 127.0.0.0/8 (also IPv4-mapped) or `::1`.
#[inline(always)]
pub(crate) fn is_loopback(ip: &[u8; 16]) -> bool {
    let v4_lo = ip[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] && ip[12] == 127;
    v4_lo || (ip[..15] == [0; 15] && ip[15] == 1)
}

/// The trusted resolver (port 53) a datagram to the loopback sink
/// (`DNS_SINK_PORT`) or to the IPv4 placeholder (`DNS_PLACEHOLDER`) was
/// meant for, if `sock_dns::send_to_sink` or `sock_dns::catch_via_placeholder` put
/// it there (`FLOW_F_CAUGHT` on its socket).
#[inline(always)]
pub(crate) fn sunk_query(ctx: &SkBuffContext, f: &Flow, dns_gates: u32) -> Option<[u8; 16]> {
    if dns_gates == 0 || f.proto != proto::UDP {
        return None;
    }
    let sink = f.dport == DNS_SINK_PORT.to_be_bytes() && is_loopback(&f.dst);
    let placeholder = f.dport == 53u16.to_be_bytes() && f.dst == DNS_PLACEHOLDER;
    if !sink && !placeholder {
        return None;
    }
    let flow = socket_flow(full_sock(ctx)?)?;
    (flow.flags & FLOW_F_CAUGHT != 0).then_some(flow.ip)
}

/// A datagram or segment to one of the agent's DNS gates in this namespace
/// (loopback, a port in `GATE_PORTS`). For UDP, the sending process is
/// noted for the log (the gate sees only the client's port); TCP segments
/// never get here (`is_established`, `note_tcp_gate_client`).
#[inline(always)]
pub(crate) fn to_gate(ctx: &SkBuffContext, cookie: u64, f: &Flow) -> bool {
    let Some(netns) = gate_port(ctx, cookie, f, &f.dst, f.dport) else {
        return false;
    };
    if let Some(owner) = unsafe { DNS_SOCKS.get(cookie) } {
        let client = GatePortKey { netns_cookie: netns, port: f.sport, proto: f.proto, _pad: [0; 5] };
        let _ = GATE_CLIENTS.insert(client, owner.tgid, 0);
    }
    true
}

/// Whether (`ip`, `port`) is one of the agent's gates in this namespace
/// (loopback, a port in `GATE_PORTS`); returns the namespace cookie.
#[inline(always)]
pub(crate) fn gate_port(ctx: &SkBuffContext, cookie: u64, f: &Flow, ip: &[u8; 16], port: [u8; 2]) -> Option<u64> {
    if f.proto != proto::UDP && f.proto != proto::TCP {
        return None;
    }
    if !is_loopback(ip) {
        return None;
    }
    let netns = crate::netns::of_packet(ctx, cookie)?;
    let key = GatePortKey { netns_cookie: netns, port, proto: f.proto, _pad: [0; 5] };
    GATE_PORTS.get_ptr(key).map(|_| netns)
}

#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into the hooks: a struct of arguments would cost stack the verifier counts"
)]
pub(crate) fn hold(
    ctx: &SkBuffContext,
    cookie: u64,
    agent_ready: u32,
    endpoint: u32,
    cgid: u64,
    v6: bool,
    kind: u32,
    // A sunk query's real destination, written back into its copy.
    sunk_to: Option<[u8; 16]>,
) -> bool {
    let len = ctx.len();
    if len == 0 || len as usize > DNS_MAX_PACKET {
        bump(loss::DNS_TOO_LARGE);
        crate::rare::dns_too_large(ctx, endpoint, len);
        return false;
    }
    let Some(owner) = (unsafe { DNS_SOCKS.get(cookie) }) else {
        bump(loss::DNS_NO_OWNER);
        crate::rare::dns_no_owner(ctx, endpoint);
        return false;
    };
    if agent_ready == 0 {
        return false;
    }
    let Some(mut entry) = DNS_HOLD.reserve::<DnsHeldPacket>(0) else {
        bump(loss::DNS_RINGBUF_FULL);
        crate::rare::hold_ring_full(ctx, endpoint);
        return false;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: `p` points at a reserved, writable ring buffer record.
    unsafe {
        (*p).ts_ns = bpf_ktime_get_boot_ns();
        (*p).netns_cookie = owner.netns_cookie;
        (*p).socket_cookie = cookie;
        (*p).cgroup_id = cgid;
        (*p).endpoint = endpoint;
        (*p).tgid = owner.tgid;
        (*p).len = len;
        (*p).family = if v6 { 6 } else { 4 };
        (*p).kind = kind;
        (*p).ifindex = 0;
        (*p).resolver = [0; 16];
        // Bounded copy the verifier can follow: 1..=DNS_MAX_PACKET, by
        // arithmetic: len - 1 (0 wraps to the top) below the bound, plus
        // one. Linux 6.1's verifier does not narrow a range from a `!= 0`
        // test, so `n == 0 || n > MAX` leaves it a size that may be zero.
        // black_box: keep LLVM from folding this check into the one above,
        // which leaves the verifier without a bound on the helper's size.
        let m = core::hint::black_box(len.wrapping_sub(1)) as u64;
        if m >= DNS_MAX_PACKET as u64 {
            entry.discard(0);
            return false;
        }
        let n = m + 1;
        let ret = bpf_skb_load_bytes(ctx.as_ptr(), 0, (*p).data.as_mut_ptr().cast(), n as u32);
        if ret != 0 {
            entry.discard(0);
            return false;
        }
        if let Some(r) = sunk_to {
            // The copy shows the resolver as destination, port 53, as if it
            // had been sent there. Only plain headers (no IPv4 options, no
            // IPv6 extension headers; a stub resolver sends none). An IPv6
            // resolver behind the IPv4 placeholder goes in `resolver`.
            let d = &mut (*p).data;
            let r_v4 = r[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
            if !v6 && !r_v4 {
                (*p).resolver = r;
            } else if v6 && n >= 48 && d[6] == proto::UDP {
                d[24..40].copy_from_slice(&r);
                d[42] = 0;
                d[43] = 53;
            } else if !v6 && n >= 28 && d[0] == 0x45 {
                d[16..20].copy_from_slice(&r[12..16]);
                d[22] = 0;
                d[23] = 53;
            } else {
                entry.discard(0);
                return false;
            }
        }
    }
    entry.submit(0);
    true
}

//! `cgroup_skb/egress`: the per-packet backstop for every IPv4/IPv6 packet of
//! the cgroup (raw sockets, ICMP, unconnected UDP, anything the socket hooks
//! miss). Default deny. O(1) hash lookups, one LPM lookup only for traffic
//! that was not learned from DNS, no logging on the allow path.
//!
//! `cgroup_skb/ingress`: holds back DNS answers from trusted resolvers until
//! the agent has learned from them (DNS helpers in `skb_dns`).

use agent_common::{
    Config, DNS_KIND_ANSWER, DNS_KIND_CAUGHT, DNS_KIND_QUERY, EndpointInfo, FLOW_F_DENIED, FLOW_F_DNS, Hook, InboundKey,
    LOOPBACK_IFINDEX, Reason, proto, v4_mapped,
};
use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock,
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};

use crate::{
    endpoint,
    events::{count, report},
    flow,
    maps::{CONFIG, INBOUND, SOCK_OWNERS},
    netns,
    parse::{Flow, Frame, TCP_ACK, TCP_SYN, parse},
    rare,
    skb_dns::{gate_port, hold, note_tcp_gate_client, sunk_query, to_gate},
    skb_sock::{full_sock, socket_flow},
    verdict::{Dest, decide, is_trusted_resolver},
};

const PASS: i32 = 1;
const DROP: i32 = 0;
/// Egress only: drop, and tell the sender of congestion (`NET_XMIT_DROP`).
const DROP_CN: i32 = 2;

const SOCK_STREAM: u32 = 1;
/// `BPF_TCP_LISTEN` in `bpf_sock.state`.
const TCP_LISTEN: u32 = 10;
/// `BPF_TCP_SYN_SENT`: a `connect()` in progress; its only segment is the SYN.
const TCP_SYN_SENT: u32 = 2;

/// An egress packet that needs no further look:
/// - a TCP stream socket's (not a listener's), with a plain header: it can
///   only send after a `connect()` the connect hook allowed (fast open and
///   repair mode go through the same pre-connect hook, net/ipv4/af_inet.c
///   `__inet_stream_connect`) or as an accepted connection (replies), so
///   judging its packets again adds nothing; connections that were already
///   open when the programs were attached are not cut either. "Plain"
///   (`plain_dest`): no IPv4 options, no IPv6 extension header, so the IP
///   destination is the socket's (a source route would make it the first
///   hop);
/// - a non-TCP socket's whose `connect()` was allowed for exactly this
///   packet's destination, port and protocol (socket-local `SK_FLOWS`), in
///   a plain header; resolver sockets (queries are copied, answers held)
///   and anything else take the full path.
#[inline(always)]
fn egress_established(ctx: &SkBuffContext) -> bool {
    // Request sockets (SYN-ACKs) have no full socket: they take the full
    // path and its INBOUND check.
    let Some(full) = full_sock(ctx) else { return false };
    if let Some(state) = tcp_stream_state(full) {
        if state == TCP_SYN_SENT {
            note_tcp_gate_client(ctx, full);
        }
        // A listener's SYNs are recorded as inbound peers on the full path.
        return state != TCP_LISTEN && plain_dest(ctx, proto::TCP).is_some();
    }
    let Some(flow) = socket_flow(full) else { return false };
    plain_dest(ctx, flow.proto).is_some_and(|(ip, port)| flow.passes(&ip, port))
}

/// The TCP state of a TCP stream socket; `None` for any other socket.
#[inline(always)]
fn tcp_stream_state(full: *mut bpf_sock) -> Option<u32> {
    // SAFETY: a full socket checked by bpf_sk_fullsock.
    let (ty, protocol, state) = unsafe { ((*full).type_, (*full).protocol, (*full).state) };
    (ty == SOCK_STREAM && protocol == u32::from(proto::TCP)).then_some(state)
}

/// An ingress packet into an established flow: a TCP stream socket's (not a
/// listener's: its SYNs are noted as inbound peers), or a non-TCP socket's
/// with an allowance (`SK_FLOWS`, not a resolver's: its answers are held).
#[inline(always)]
fn ingress_established(ctx: &SkBuffContext) -> bool {
    let Some(full) = full_sock(ctx) else { return false };
    if let Some(state) = tcp_stream_state(full) {
        return state != TCP_LISTEN;
    }
    socket_flow(full).is_some_and(|f| f.flags & (FLOW_F_DNS | FLOW_F_DENIED) == 0)
}

/// The destination (address, port) of a packet of protocol `want` whose
/// header is plain: IPv4 without options and not a fragment, or IPv6 with
/// the transport right after the fixed header. Read directly (the headers
/// of a locally sent packet are in the linear part); `None` sends the
/// packet down the full path, which parses everything.
#[inline(always)]
fn plain_dest(ctx: &SkBuffContext, want: u8) -> Option<([u8; 16], [u8; 2])> {
    // SAFETY: the kernel provides data/data_end for the duration of the run.
    let (data, end) = unsafe { ((*ctx.skb.skb).data as usize, (*ctx.skb.skb).data_end as usize) };
    let ports = proto::has_ports(want);
    let l4 = if ports { 4 } else { 0 };
    if data + 20 + l4 > end {
        return None;
    }
    // SAFETY: 20 bytes (and the ports) bounds-checked just above.
    let h = unsafe { core::ptr::read_unaligned(data as *const [u8; 20]) };
    let (ip, off) = if h[0] == 0x45 {
        // Not a fragment (offset 0, no more-fragments bit), the protocol
        // the socket was judged for.
        if h[6] & 0x3f != 0 || h[7] != 0 || h[9] != want {
            return None;
        }
        (v4_mapped([h[16], h[17], h[18], h[19]]), 20)
    } else if h[0] >> 4 == 6 && h[6] == want && data + 40 + l4 <= end {
        // SAFETY: 40 bytes (and the ports) bounds-checked just above.
        let d = unsafe { core::ptr::read_unaligned((data + 24) as *const [u8; 16]) };
        (d, 40)
    } else {
        return None;
    };
    if !ports {
        return Some((ip, [0; 2]));
    }
    // SAFETY: bounds-checked above (`l4`).
    let p = unsafe { core::ptr::read_unaligned((data + off) as *const [u8; 4]) };
    Some((ip, [p[2], p[3]]))
}

pub fn egress(ctx: &SkBuffContext) -> i32 {
    let hook = Hook::SkbEgress;
    // Hot path (`is_established`): an established flow needs neither the
    // endpoint nor the packet looked at. Not counted per packet (it was
    // counted at connect time): every map touched here is a cache miss on
    // busy nodes. Resolver sockets go on: their queries are copied below.
    if egress_established(ctx) {
        return PASS;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(cfg) = CONFIG.get(0) else {
        count(hook, Reason::DeniedInternal);
        rare::no_config(ctx, hook as u32);
        return DROP;
    };
    let skb = ctx.skb.skb;
    let cgid = unsafe { bpf_skb_cgroup_id(skb) };
    let ep = match endpoint::resolve(cgid, |l| unsafe { bpf_skb_ancestor_cgroup_id(skb, l) }, || Some(cfg)) {
        Ok(ep) => ep,
        Err(u) => {
            let (reason, allow) = u.verdict(Some(cfg));
            count(hook, reason);
            return if allow { PASS } else { DROP };
        }
    };
    let parsed = parse(Frame { skb: &ctx.skb, l3: 0 });
    if let Ok(f) = &parsed {
        if f.source_routed {
            // The IP destination is only the first hop: never judged as
            // the destination, never let out (`Reason::DeniedSourceRoute`).
            return deny(
                ctx,
                cfg,
                cgid,
                &ep,
                cookie,
                Reason::DeniedSourceRoute,
                &Dest { proto: f.proto, port: f.dport, ip: f.dst },
                0,
            );
        }
        if let Some(resolver) = sunk_query(ctx, f, cfg.dns_gates) {
            // Sent to the loopback sink by `sendmsg` (no gate here yet): the
            // agent gets it as a query to the resolver and answers it.
            if hold(ctx, cookie, cfg.agent_ready, ep.endpoint, cgid, f.v6, DNS_KIND_CAUGHT, Some(resolver)) {
                count(hook, Reason::DnsCaught);
            } else {
                count(hook, Reason::DnsHoldFailed);
            }
            // Either way it goes no further than the namespace's loopback.
            return PASS;
        }
    }
    let (reason, dest, rule, range) = match parsed {
        Ok(f) if to_gate(ctx, cookie, &f) => {
            count(hook, Reason::AllowedDns);
            return PASS;
        }
        Ok(f)
            if f.proto == proto::UDP && is_trusted_resolver(ep.endpoint, &Dest { proto: f.proto, port: f.dport, ip: f.dst }) =>
        {
            // A query to a trusted resolver. Without gates (`dnsGates:
            // false`) the agent gets a copy (in the same ring as the answers,
            // so it always sees a query before its answer) to check the name
            // and to pair the answer with it, and the query goes on.
            if cfg.dns_gates == 0 {
                if hold(ctx, cookie, cfg.agent_ready, ep.endpoint, cgid, f.v6, DNS_KIND_QUERY, None) {
                    count(hook, Reason::AllowedDns);
                    return PASS;
                }
                // No copy, no answer will be accepted: fail now (EPERM).
                count(hook, Reason::DnsHoldFailed);
                return DROP;
            }
            // With gates, a query reaches the resolver only through a gate,
            // so this one was neither sent to a gate (none in this namespace
            // yet, or a socket connected before it opened) nor redirected by
            // the socket hooks: caught by `connect4` on loopback
            // (`sock_dns::catch_on_loopback`), or one they cannot redirect (an
            // `IPV6_V6ONLY` or already bound IPv6 socket, as dig's; `sendto`
            // a resolver on a port other than 53). It may carry tunnelled
            // data, so it never leaves: the agent gets it as caught and
            // answers it from the resolver's address by injection.
            if !hold(ctx, cookie, cfg.agent_ready, ep.endpoint, cgid, f.v6, DNS_KIND_CAUGHT, None) {
                count(hook, Reason::DnsHoldFailed);
                return DROP;
            }
            count(hook, Reason::DnsCaught);
            // On loopback it goes no further than the namespace. Elsewhere
            // it is dropped with congestion notification: `NET_XMIT_DROP`,
            // which `udp_send_skb`/`udp_v6_send_skb` report as success unless
            // the socket set IP(V6)_RECVERR (then -ENOBUFS, and it retries)
            // (kernel/bpf/cgroup.c `__cgroup_bpf_run_filter_skb`). A plain
            // drop would fail every sender with EPERM.
            return if unsafe { (*ctx.skb.skb).ifindex } == LOOPBACK_IFINDEX { PASS } else { DROP_CN };
        }
        Ok(f) => {
            let d = Dest { proto: f.proto, port: f.dport, ip: f.dst };
            // Unknown (a socket older than the programs, on a kernel whose
            // packet programs cannot ask): the host's, loopback denied.
            let host_netns = || netns::of_packet(ctx, cookie).is_none_or(|n| n == cfg.host_netns_cookie);
            let v = decide(&ep, &d, host_netns);
            let mut r = v.reason;
            if !r.is_allowed() && is_reply_to_inbound(&ep, &f) {
                r = Reason::AllowedInbound;
            }
            (r, d, v.rule, v.range)
        }
        Err(()) => (Reason::DeniedMalformed, Dest { proto: 0, port: [0; 2], ip: [0; 16] }, 0, 0),
    };
    if reason.is_allowed() {
        count(hook, reason);
        flow::verdict(ep.endpoint, false, reason, rule, 0);
        return PASS;
    }
    deny(ctx, cfg, cgid, &ep, cookie, reason, &dest, range)
}

/// A denied egress packet: counted, reported (the process behind a
/// deferred UDP `connect()`'s datagrams named), dropped unless audited.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into the hooks: a struct of arguments would cost stack the verifier counts"
)]
fn deny(
    ctx: &SkBuffContext,
    cfg: &Config,
    cgid: u64,
    ep: &EndpointInfo,
    cookie: u64,
    reason: Reason,
    dest: &Dest,
    range: u32,
) -> i32 {
    let hook = Hook::SkbEgress;
    count(hook, reason);
    flow::verdict(ep.endpoint, false, reason, 0, range);
    let owner = unsafe { SOCK_OWNERS.get(cookie) };
    let (tgid, comm) = owner.map_or((0, [0; 16]), |o| (o.tgid, o.comm));
    if report(Some(ctx), cfg, cgid, ep, hook, reason, dest, tgid, comm) { PASS } else { DROP }
}

/// A reply to a peer that contacted the endpoint (checked only for packets
/// the policy denies): kubelet probes, Prometheus scrapes.
#[inline(always)]
fn is_reply_to_inbound(ep: &EndpointInfo, f: &Flow) -> bool {
    if f.proto != proto::TCP && f.proto != proto::UDP {
        return false;
    }
    let key = InboundKey {
        endpoint: ep.endpoint,
        proto: f.proto,
        _pad: 0,
        peer_port: f.dport,
        local_port: f.sport,
        _pad2: [0; 2],
        peer_ip: f.dst,
    };
    INBOUND.get_ptr(key).is_some()
}

/// Remembers a peer that opened a TCP connection to, or sent a datagram to,
/// the endpoint, so that replies pass the egress default deny (stateful
/// egress, like conntrack: kubelet probes, Prometheus scrapes).
#[inline(always)]
fn note_inbound(ep: &EndpointInfo, f: &Flow) {
    let key = InboundKey {
        endpoint: ep.endpoint,
        proto: f.proto,
        _pad: 0,
        peer_port: f.sport,
        local_port: f.dport,
        _pad2: [0; 2],
        peer_ip: f.src,
    };
    // Look before writing: a steady stream from one peer costs a lookup,
    // not an LRU insert per datagram.
    if INBOUND.get_ptr(key).is_none() {
        let now = unsafe { bpf_ktime_get_boot_ns() };
        let _ = INBOUND.insert(key, now, 0);
    }
}

pub fn ingress(ctx: &SkBuffContext) -> i32 {
    let hook = Hook::SkbIngress;
    // Hot path: traffic into an established flow, unless it talks to a
    // resolver (its answers are held below) or is a listener (SYNs noted).
    if ingress_established(ctx) {
        return PASS;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(cfg) = CONFIG.get(0) else {
        count(hook, Reason::DeniedInternal);
        rare::no_config(ctx, hook as u32);
        return DROP;
    };
    // Our own re-injected answer: already learned, let it through once.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if mark != 0 && mark == cfg.inject_mark {
        count(hook, Reason::AllowedInjected);
        return PASS;
    }
    let Ok(f) = parse(Frame { skb: &ctx.skb, l3: 0 }) else {
        count(hook, Reason::AllowedIngress);
        return PASS;
    };
    // Only a connection opening (SYN without ACK) or a datagram needs more
    // than a counter: everything else in is an established flow.
    let opens_tcp = f.proto == proto::TCP && f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if f.proto != proto::UDP && !opens_tcp {
        count(hook, Reason::AllowedIngress);
        return PASS;
    }
    let skb = ctx.skb.skb;
    let cgid = unsafe { bpf_skb_cgroup_id(skb) };
    let Ok(ep) = endpoint::resolve(cgid, |l| unsafe { bpf_skb_ancestor_cgroup_id(skb, l) }, || Some(cfg)) else {
        count(hook, Reason::AllowedIngress);
        return PASS;
    };
    // An answer from a gate: the agent already learned from it. (Not an
    // inbound peer: each answer goes to a fresh client port.)
    if gate_port(ctx, cookie, &f, &f.src, f.sport).is_some() {
        count(hook, Reason::AllowedIngress);
        return PASS;
    }
    // Is this an answer from one of the endpoint's trusted resolvers?
    let from = Dest { proto: proto::UDP, port: f.sport, ip: f.src };
    if opens_tcp || !is_trusted_resolver(ep.endpoint, &from) {
        // Only a peer on the network: a packet arriving on loopback was sent
        // by a socket in this very namespace, possibly the workload's own
        // (a raw socket forging a denied source), which must not grant
        // itself replies to that address.
        if unsafe { (*skb).ifindex } != LOOPBACK_IFINDEX {
            note_inbound(&ep, &f);
        }
        count(hook, Reason::AllowedIngress);
        return PASS;
    }
    // Audit mode learns too (so audit shows what enforcement would allow).
    if hold(ctx, cookie, cfg.agent_ready, ep.endpoint, cgid, f.v6, DNS_KIND_ANSWER, None) {
        count(hook, Reason::DnsHeld);
    } else {
        count(hook, Reason::DnsHoldFailed);
    }
    // Held or not, the original never reaches the socket: only the agent's
    // re-injected copy does, after the maps are updated.
    DROP
}

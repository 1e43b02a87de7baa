//! `cgroup_skb/egress`: the per-packet backstop for every IPv4/IPv6 packet of
//! the cgroup (raw sockets, ICMP, unconnected UDP, anything the socket hooks
//! miss). Default deny. O(1) hash lookups, one LPM lookup only for traffic
//! that was not learned from DNS, no logging on the allow path.
//!
//! `cgroup_skb/ingress`: holds back DNS answers from trusted resolvers until
//! the agent has learned from them (see `dns_hold`).

use agent_common::{
    loss, proto, DnsHeldPacket, EndpointInfo, Hook, InboundKey, Reason, DNS_MAX_PACKET,
    ENDPOINT_F_AUDIT,
};
use aya_ebpf::{
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_skb_ancestor_cgroup_id,
        bpf_skb_cgroup_id, bpf_skb_load_bytes,
    },
    programs::SkBuffContext,
    EbpfContext as _,
};

use crate::{
    endpoint,
    events::{bump, count, emit, Attempt},
    maps::{CONFIG, DNS_HOLD, DNS_SOCKS, INBOUND, LIVE_FLOWS},
    parse::{parse, Flow, TCP_ACK, TCP_SYN},
    verdict::{decide, Dest},
};

const PASS: i32 = 1;
const DROP: i32 = 0;

pub fn egress(ctx: &SkBuffContext) -> i32 {
    let hook = Hook::SkbEgress;
    let Some(cfg) = CONFIG.get(0) else {
        count(hook, Reason::DeniedInternal);
        return DROP;
    };
    let skb = ctx.skb.skb;
    let cgid = unsafe { bpf_skb_cgroup_id(skb) };
    let Some(ep) = endpoint::resolve(cfg, cgid, |l| unsafe { bpf_skb_ancestor_cgroup_id(skb, l) })
    else {
        return if cfg.unmanaged_allow != 0 {
            count(hook, Reason::AllowedUnmanaged);
            PASS
        } else {
            count(hook, Reason::DeniedDefault);
            DROP
        };
    };
    let (reason, dest) = match parse(ctx) {
        Ok(f) => {
            let d = Dest { proto: f.proto, port: f.dport, ip: f.dst };
            let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
            let mut r = decide(&ep, &d, netns == cfg.host_netns_cookie);
            if !r.is_allowed() {
                r = established(ctx, &ep, &f).unwrap_or(r);
            }
            (r, d)
        }
        Err(()) => (Reason::DeniedMalformed, Dest { proto: 0, port: [0; 2], ip: [0; 16] }),
    };
    count(hook, reason);
    if reason.is_allowed() {
        return PASS;
    }
    let audit = ep.flags & ENDPOINT_F_AUDIT != 0;
    emit(
        cfg,
        &Attempt {
            cgroup_id: cgid,
            endpoint: ep.endpoint,
            hook,
            reason,
            audit,
            proto: dest.proto,
            dport: dest.port,
            daddr: dest.ip,
            tgid: 0,
            comm: [0; 16],
        },
    );
    if audit { PASS } else { DROP }
}

/// Second chance for a packet the policy alone denies, checked only on that
/// (cold) path: part of a connection allowed at connect time whose learned
/// IP has since expired, or a reply to a peer that contacted the endpoint.
#[inline(always)]
fn established(ctx: &SkBuffContext, ep: &EndpointInfo, f: &Flow) -> Option<Reason> {
    if f.proto != proto::TCP && f.proto != proto::UDP {
        return None;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(flow) = unsafe { LIVE_FLOWS.get(&cookie) } {
        if flow.endpoint == ep.endpoint && flow.ip == f.dst {
            return Some(Reason::AllowedEstablished);
        }
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
    INBOUND.get_ptr(&key).map(|_| Reason::AllowedInbound)
}

/// Remembers a peer that opened a TCP connection to, or sent a datagram to,
/// the endpoint, so that replies pass the egress default deny (stateful
/// egress, like conntrack: kubelet probes, Prometheus scrapes).
#[inline(always)]
fn note_inbound(ep: &EndpointInfo, f: &Flow) {
    let opens = match f.proto {
        proto::TCP => f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        proto::UDP => true,
        _ => false,
    };
    if !opens {
        return;
    }
    let key = InboundKey {
        endpoint: ep.endpoint,
        proto: f.proto,
        _pad: 0,
        peer_port: f.sport,
        local_port: f.dport,
        _pad2: [0; 2],
        peer_ip: f.src,
    };
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let _ = INBOUND.insert(&key, &now, 0);
}

pub fn ingress(ctx: &SkBuffContext) -> i32 {
    let hook = Hook::SkbIngress;
    let Some(cfg) = CONFIG.get(0) else {
        count(hook, Reason::DeniedInternal);
        return DROP;
    };
    // Our own re-injected answer: already learned, let it through once.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if mark != 0 && mark == cfg.inject_mark {
        count(hook, Reason::AllowedInjected);
        return PASS;
    }
    let Ok(f) = parse(ctx) else {
        count(hook, Reason::AllowedIngress);
        return PASS;
    };
    if f.proto != proto::UDP && !(f.proto == proto::TCP && f.tcp_flags & TCP_SYN != 0) {
        count(hook, Reason::AllowedIngress);
        return PASS;
    }
    let skb = ctx.skb.skb;
    let cgid = unsafe { bpf_skb_cgroup_id(skb) };
    let Some(ep) = endpoint::resolve(cfg, cgid, |l| unsafe { bpf_skb_ancestor_cgroup_id(skb, l) })
    else {
        count(hook, Reason::AllowedIngress);
        return PASS;
    };
    // Is this an answer from one of the endpoint's trusted resolvers?
    let from = Dest { proto: proto::UDP, port: f.sport, ip: f.src };
    if f.proto != proto::UDP || decide(&ep, &from, false) != Reason::AllowedDns {
        note_inbound(&ep, &f);
        count(hook, Reason::AllowedIngress);
        return PASS;
    }
    // Audit mode learns too (so audit shows what enforcement would allow).
    let _ = ENDPOINT_F_AUDIT;
    if hold(ctx, cfg.agent_ready, ep.endpoint, cgid, f.v6) {
        count(hook, Reason::DnsHeld);
    } else {
        count(hook, Reason::DnsHoldFailed);
    }
    // Held or not, the original never reaches the socket: only the agent's
    // re-injected copy does, after the maps are updated.
    DROP
}

#[inline(always)]
fn hold(ctx: &SkBuffContext, agent_ready: u32, endpoint: u32, cgid: u64, v6: bool) -> bool {
    let len = ctx.len();
    if len == 0 || len as usize > DNS_MAX_PACKET {
        bump(loss::DNS_TOO_LARGE);
        return false;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(owner) = (unsafe { DNS_SOCKS.get(&cookie) }) else {
        bump(loss::DNS_NO_OWNER);
        return false;
    };
    if agent_ready == 0 {
        return false;
    }
    let Some(mut entry) = DNS_HOLD.reserve::<DnsHeldPacket>(0) else {
        bump(loss::DNS_RINGBUF_FULL);
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
        // Bounded copy the verifier can follow: 1..=DNS_MAX_PACKET.
        // black_box: keep LLVM from folding this check into the one above,
        // which leaves the verifier without a bound on the helper's size.
        let n = core::hint::black_box(len) as u64;
        if n == 0 || n > DNS_MAX_PACKET as u64 {
            entry.discard(0);
            return false;
        }
        let ret = bpf_skb_load_bytes(ctx.as_ptr(), 0, (*p).data.as_mut_ptr().cast(), n as u32);
        if ret != 0 {
            entry.discard(0);
            return false;
        }
    }
    entry.submit(0);
    true
}

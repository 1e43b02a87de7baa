//! The pod's veth (TC on the host-side device): every packet the pod sends
//! (`from_pod`, tc ingress there) and receives (`to_pod`, tc egress there),
//! whatever made it: a socket of the pod's cgroup, a packet socket, a TUN
//! device with forwarding, a gVisor sandbox's netstack, a Kata VM's tap.
//!
//! `from_pod`, in order: the interface's endpoint (`TC_IFACES`; attached
//! but unassigned: dropped); neighbour discovery (ARP for the pod's own
//! address, IPv6 ND/MLD to link-scope destinations); the source must be one
//! of the pod's addresses (`POD_ADDRS`, else `DeniedSpoofed`); no source
//! routes; DNS (to port 53, or to a trusted resolver) is taken off the wire
//! into the agent's ring and dropped (`dns`); a flow already let through
//! (`TC_FLOWS`) passes on that one lookup; anything else gets the same
//! verdict as the cgroup hooks (`verdict::decide`), and an allowed flow is
//! remembered. Allowed packets return "next", so a CNI's programs after
//! ours still see them.
//!
//! `to_pod` judges nothing (Portcullis enforces egress): it remembers flows
//! a peer opened (a TCP SYN, a UDP datagram), so the pod's replies on
//! exactly that flow pass.

use agent_common::{
    Config, DNS_KIND_VETH_QUERY, DNS_MAX_PACKET, DnsHeldPacket, ENDPOINT_F_AUDIT, ENDPOINT_F_EXEMPT, EndpointInfo, Hook,
    PodAddrKey, Reason, TC_DROP, TC_FLOW_F_INBOUND, TC_FLOW_F_JUDGED, TC_IFACE_F_FLOW_COUNTS, TC_NEXT, TC_PASS, TcFlowKey,
    TcFlowValue, TcIface, loss, proto, v4_mapped,
};
use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_skb_load_bytes},
    programs::TcContext,
};

use crate::{
    events::{Attempt, bump, count, emit},
    flow,
    maps::{CONFIG, DNS_HOLD, POD_ADDRS, TC_FLOWS, TC_IFACES},
    parse::{ETH_P_ARP, Flow, Frame, TCP_ACK, TCP_SYN, ether_type, parse},
    verdict::{Dest, decide, is_trusted_resolver},
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const DNS_PORT_BE: [u8; 2] = 53u16.to_be_bytes();

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).ifindex }
}

pub fn from_pod(ctx: &TcContext) -> i32 {
    let hook = Hook::TcEgress;
    let ifindex = ifindex(ctx);
    // SAFETY: plain data copied out.
    let Some(iface) = (unsafe { TC_IFACES.get(ifindex) }).copied() else {
        // Attached, not (or no longer) assigned to a pod: fail closed.
        count(hook, Reason::DeniedDefault);
        return TC_DROP;
    };
    if iface.flags & ENDPOINT_F_EXEMPT != 0 {
        count(hook, Reason::AllowedExempt);
        return TC_NEXT;
    }
    let Some(cfg) = CONFIG.get(0) else {
        count(hook, Reason::DeniedInternal);
        crate::rare::no_config(ctx, hook as u32);
        return TC_DROP;
    };
    let ep = EndpointInfo { endpoint: iface.endpoint, flags: iface.flags, generation: 0 };
    // One place reports and drops: every inlined copy of it would cost
    // the record's stack again (the verifier's 512 bytes; Linux 6.1).
    match judge(ctx, &iface, &ep, ifindex, cfg) {
        Ok(verdict) => {
            // Every pod's bytes are counted here (no cgroup program counts
            // bytes), its verdicts only where the veth alone judges it.
            if verdict != TC_DROP {
                flow::bytes(ep.endpoint, true, ctx.len());
            }
            verdict
        }
        Err((reason, dest)) => deny(ctx, &ep, ifindex, reason, &dest),
    }
}

/// What `from_pod` does with the packet: a return code, or why it is
/// denied and where it went.
#[inline(always)]
fn judge(ctx: &TcContext, iface: &TcIface, ep: &EndpointInfo, ifindex: u32, cfg: &Config) -> Result<i32, (Reason, Dest)> {
    let hook = Hook::TcEgress;
    let nothing = Dest { proto: 0, port: [0; 2], ip: [0; 16] };
    match ether_type(&ctx.skb) {
        ETH_P_IP | ETH_P_IPV6 => {}
        ETH_P_ARP => {
            return match arp_sender(ctx) {
                Some(spa) if spa == [0; 4] || is_pod_addr(ifindex, &v4_mapped(spa)) => {
                    count(hook, Reason::AllowedNeighbor);
                    Ok(TC_NEXT)
                }
                // The record's destination is the address it claimed.
                Some(spa) => Err((Reason::DeniedSpoofed, Dest { ip: v4_mapped(spa), ..nothing })),
                None => Err((Reason::DeniedMalformed, nothing)),
            };
        }
        // Not IP, not ARP: nothing a pod needs, and a bridge would carry it
        // to other pods.
        _ => return Err((Reason::DeniedMalformed, nothing)),
    }
    let Ok(f) = parse_frame(ctx) else {
        return Err((Reason::DeniedMalformed, nothing));
    };
    let dest = Dest { proto: f.proto, port: f.dport, ip: f.dst };
    if f.source_routed {
        return Err((Reason::DeniedSourceRoute, dest));
    }
    // The common case first: a flow let through already (its source was
    // checked then, and DNS flows are never remembered) costs this one
    // lookup.
    if flow_known(ifindex, iface.epoch, &f) {
        return Ok(TC_NEXT);
    }
    if f.v6 && is_link_scope_nd(ctx, &f) {
        count(hook, Reason::AllowedNeighbor);
        return Ok(TC_NEXT);
    }
    if !is_pod_addr(ifindex, &f.src) {
        return Err((Reason::DeniedSpoofed, dest));
    }
    if (f.proto == proto::UDP || f.proto == proto::TCP) && (f.dport == DNS_PORT_BE || is_trusted_resolver(ep.endpoint, &dest)) {
        return dns(ctx, cfg, ep, ifindex, &f, dest);
    }
    let opens_tcp = f.proto == proto::TCP && f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let reason = verdict(ep, &dest, opens_tcp);
    if !reason.is_allowed() {
        return Err((reason, dest));
    }
    if !remember_flow(ifindex, iface.epoch, &f) {
        crate::rare::flow_table_full(ctx, ifindex);
    }
    count(hook, reason);
    Ok(TC_NEXT)
}

pub fn to_pod(ctx: &TcContext) -> i32 {
    flow::veth_ingress_bytes(ctx);
    // Most packets to a pod are TCP segments of known flows: passed on
    // before any parsing or lookup.
    if is_plain_tcp_ack(ctx) {
        return TC_NEXT;
    }
    let Ok(f) = parse_frame(ctx) else {
        return TC_NEXT;
    };
    // A peer opening a TCP connection, or a UDP datagram: the pod may
    // answer on exactly this flow. Other TCP segments belong to a flow
    // already known and cost no lookup here. Nothing from port 53: the
    // pod's DNS goes through the agent, whose answers must not open a way
    // to the resolver.
    let opens = match f.proto {
        proto::TCP => f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        proto::UDP => true,
        _ => false,
    };
    if opens && f.sport != DNS_PORT_BE {
        remember_inbound(ifindex(ctx), &f);
    }
    count(Hook::TcIngress, Reason::AllowedIngress);
    TC_NEXT
}

/// A TCP segment with ACK set right after a plain IPv4 or IPv6 header,
/// read straight from the linear data.
#[inline(always)]
fn is_plain_tcp_ack(ctx: &TcContext) -> bool {
    let (data, end) = (ctx.data(), ctx.data_end());
    let at = |off: usize| -> Option<u8> {
        // SAFETY: bounds checked against data_end.
        (data + off < end).then(|| unsafe { *((data + off) as *const u8) })
    };
    let flags = match ether_type(&ctx.skb) {
        ETH_P_IP if at(ETH_HLEN) == Some(0x45) && at(ETH_HLEN + 9) == Some(proto::TCP) => at(ETH_HLEN + 20 + 13),
        ETH_P_IPV6 if at(ETH_HLEN + 6) == Some(proto::TCP) => at(ETH_HLEN + 40 + 13),
        _ => None,
    };
    flags.is_some_and(|f| f & TCP_ACK != 0)
}

/// The reverse of an inbound flow, for an interface we judge and an
/// address of its pod (only those are remembered as the pod's).
#[inline(never)]
fn remember_inbound(ifindex: u32, f: &Flow) {
    // SAFETY: plain data copied out.
    let Some(iface) = (unsafe { TC_IFACES.get(ifindex) }).copied() else { return };
    if !is_pod_addr(ifindex, &f.dst) {
        return;
    }
    let key =
        TcFlowKey { ifindex, proto: f.proto, _pad: 0, sport: f.dport, dport: f.sport, _pad2: [0; 2], src: f.dst, dst: f.src };
    // SAFETY: plain data read from a map value.
    let known = unsafe { TC_FLOWS.get(key) }.is_some_and(|v| v.epoch == iface.epoch);
    if !known {
        let _ = TC_FLOWS.insert(key, TcFlowValue { epoch: iface.epoch, flags: TC_FLOW_F_INBOUND }, 0);
    }
}

/// The headers after the Ethernet header (its own BPF function: the
/// parser's buffers stay off the programs' frames).
#[inline(never)]
fn parse_frame(ctx: &TcContext) -> Result<Flow, ()> {
    parse(Frame { skb: &ctx.skb, l3: ETH_HLEN })
}

/// The cgroup hooks' verdict. On a veth there is no "own network
/// namespace": loopback is the host's. Counted here, with the rule or
/// range, if the interface counts (`TC_IFACE_F_FLOW_COUNTS`, in the
/// endpoint's flags here; `deny` counts every other reason).
#[inline(never)]
fn verdict(ep: &EndpointInfo, dest: &Dest, conn: bool) -> Reason {
    let v = decide(ep, dest, || true);
    if ep.flags & TC_IFACE_F_FLOW_COUNTS != 0 {
        flow::verdict(ep.endpoint, conn, v.reason, v.rule, v.range);
        if conn {
            flow::dest(ep.endpoint, v.reason, dest);
        }
    }
    v.reason
}

/// Whether `verdict` counted this denial already.
#[inline(always)]
fn counted_by_verdict(reason: Reason) -> bool {
    matches!(reason, Reason::DeniedDefault | Reason::DeniedRange | Reason::DeniedInternal)
}

/// Whether the flow was let through already, for this assignment of the
/// interface. (Its own BPF function, as `remember_flow`: the key's bytes
/// stay off `from_pod`'s frame.)
#[inline(never)]
fn flow_known(ifindex: u32, epoch: u32, f: &Flow) -> bool {
    // SAFETY: plain data read from a map value.
    unsafe { TC_FLOWS.get(flow_key(ifindex, f)) }.is_some_and(|v| v.epoch == epoch)
}

/// A failed insert only costs the next packet a verdict (false: logged).
#[inline(never)]
fn remember_flow(ifindex: u32, epoch: u32, f: &Flow) -> bool {
    TC_FLOWS.insert(flow_key(ifindex, f), TcFlowValue { epoch, flags: TC_FLOW_F_JUDGED }, 0).is_ok()
}

#[inline(always)]
fn flow_key(ifindex: u32, f: &Flow) -> TcFlowKey {
    TcFlowKey { ifindex, proto: f.proto, _pad: 0, sport: f.sport, dport: f.dport, _pad2: [0; 2], src: f.src, dst: f.dst }
}

#[inline(always)]
fn is_pod_addr(ifindex: u32, ip: &[u8; 16]) -> bool {
    POD_ADDRS.get_ptr(PodAddrKey { ifindex, ip: *ip }).is_some()
}

/// The sender protocol address of an Ethernet/IPv4 ARP packet.
#[inline(always)]
fn arp_sender(ctx: &TcContext) -> Option<[u8; 4]> {
    // htype 1, ptype IPv4, hlen 6, plen 4 (RFC 826).
    let h: [u8; 6] = ctx.load(ETH_HLEN).ok()?;
    if h != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    ctx.load(ETH_HLEN + 14).ok()
}

/// IPv6 neighbour discovery (RFC 4861: router/neighbour solicitation and
/// advertisement, redirect; hop limit 255) or MLD (RFC 3810, RFC 2710: hop
/// limit 1, behind a hop-by-hop header with the router alert) to a
/// link-local or link-scope multicast destination: it cannot leave the
/// link (routers do not forward these destinations). Its source may be
/// link-local or unspecified (DAD).
#[inline(always)]
fn is_link_scope_nd(ctx: &TcContext, f: &Flow) -> bool {
    let link_scope = (f.dst[0] == 0xfe && f.dst[1] & 0xc0 == 0x80) || (f.dst[0] == 0xff && f.dst[1] & 0x0f == 0x02);
    if f.proto != proto::ICMPV6 || !link_scope {
        return false;
    }
    let Ok(h) = ctx.load::<[u8; 8]>(ETH_HLEN) else { return false };
    let (mut next, hop_limit) = (h[6], h[7]);
    let mut off = ETH_HLEN + 40;
    if next == 0 {
        // One hop-by-hop header (MLD's router alert), (len + 1) * 8 bytes.
        let Ok(hbh) = ctx.load::<[u8; 2]>(off) else { return false };
        next = hbh[0];
        off += (hbh[1] as usize + 1) * 8;
    }
    if next != proto::ICMPV6 || off > ETH_HLEN + 40 + 64 {
        return false;
    }
    let Ok(icmp_type) = ctx.load::<u8>(off) else { return false };
    match icmp_type {
        133..=137 => hop_limit == 255,
        130..=132 | 143 => hop_limit == 1,
        _ => false,
    }
}

/// DNS from the pod: never on the wire from here. A UDP query to a trusted
/// resolver goes to the agent (`DNS_KIND_VETH_QUERY`), which judges it by
/// the same pipeline as the gates, forwards it from the node, learns from
/// the answer and only then writes the answer onto this veth; a TCP
/// segment to it is handed to the agent's listener (`veth_dns`). DNS to
/// any other server is refused, and so is TCP DNS when no listener is up.
#[inline(always)]
fn dns(ctx: &TcContext, cfg: &Config, ep: &EndpointInfo, ifindex: u32, f: &Flow, dest: Dest) -> Result<i32, (Reason, Dest)> {
    if !is_trusted_resolver(ep.endpoint, &dest) {
        return Err((Reason::DeniedDnsServer, dest));
    }
    if f.proto == proto::TCP {
        // Handed to the agent's listener; passed on to the node's own
        // stack, not to programs after ours (a CNI must not send it on).
        return match crate::veth_dns::to_agent(ctx, f) {
            Ok(()) => {
                count(Hook::TcEgress, Reason::AllowedDns);
                Ok(TC_PASS)
            }
            Err(_) => Err((Reason::DeniedDnsNoGate, dest)),
        };
    }
    let reason = if hold(ctx, cfg.agent_ready, ep.endpoint, ifindex, f.v6) { Reason::DnsCaught } else { Reason::DnsHoldFailed };
    count(Hook::TcEgress, reason);
    Ok(TC_DROP)
}

/// Copies the whole frame into `DNS_HOLD`. (Its own BPF function, as are
/// `deny`, `verdict` and `veth_dns::to_agent`: their stack frames are
/// then not all added to `from_pod`'s, which must stay within the
/// verifier's 512 bytes.)
#[inline(never)]
fn hold(ctx: &TcContext, agent_ready: u32, endpoint: u32, ifindex: u32, v6: bool) -> bool {
    let len = ctx.len();
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
        (*p).netns_cookie = 0;
        (*p).socket_cookie = 0;
        (*p).cgroup_id = 0;
        (*p).endpoint = endpoint;
        (*p).tgid = 0;
        (*p).len = len;
        (*p).family = if v6 { 6 } else { 4 };
        (*p).kind = DNS_KIND_VETH_QUERY;
        (*p).ifindex = ifindex;
        (*p).resolver = [0; 16];
        // 1..=DNS_MAX_PACKET in a form every verifier bounds (skb_dns::hold).
        let m = core::hint::black_box(len.wrapping_sub(1)) as u64;
        if m >= DNS_MAX_PACKET as u64 {
            entry.discard(0);
            bump(loss::DNS_TOO_LARGE);
            crate::rare::dns_too_large(ctx, endpoint, len);
            return false;
        }
        if bpf_skb_load_bytes(ctx.as_ptr(), 0, (*p).data.as_mut_ptr().cast(), (m + 1) as u32) != 0 {
            entry.discard(0);
            return false;
        }
    }
    entry.submit(0);
    true
}

/// Counts and records a denied packet; audit mode lets it through.
/// (`CONFIG` is looked up again here, on the denial path only: a BPF
/// function takes at most five arguments, and the context aya-log needs
/// is one.)
#[inline(never)]
fn deny(ctx: &TcContext, ep: &EndpointInfo, ifindex: u32, reason: Reason, dest: &Dest) -> i32 {
    let Some(cfg) = CONFIG.get(0) else {
        return TC_DROP;
    };
    count(Hook::TcEgress, reason);
    if ep.flags & TC_IFACE_F_FLOW_COUNTS != 0 && !counted_by_verdict(reason) {
        flow::verdict(ep.endpoint, false, reason, 0, 0);
    }
    let audit = ep.flags & ENDPOINT_F_AUDIT != 0;
    let recorded = emit(
        cfg,
        &Attempt {
            cgroup_id: 0,
            endpoint: ep.endpoint,
            hook: Hook::TcEgress,
            reason,
            audit,
            proto: dest.proto,
            dport: dest.port,
            daddr: dest.ip,
            tgid: 0,
            comm: [0; 16],
            ifindex,
        },
    );
    if !recorded {
        crate::rare::events_ring_full(ctx, ep.endpoint);
    }
    if audit { TC_NEXT } else { TC_DROP }
}

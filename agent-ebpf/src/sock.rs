//! `cgroup/connect{4,6}` and `cgroup/sendmsg{4,6}`: refuse a denied
//! destination at the syscall, so the caller gets EPERM at once instead of
//! a timeout. These run in process context, so they also record which
//! process and network namespace sent DNS on a socket (`DNS_SOCKS`): the
//! agent needs both to re-inject the held answer.

use agent_common::{
    DnsSockInfo, EndpointInfo, FLOW_F_CAUGHT, FLOW_F_DENIED, FLOW_F_DNS, Hook, Reason, SockOwner, proto, v4_mapped,
};
use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    programs::{SockAddrContext, SockContext},
};

use crate::{
    cache::{self, Lookup},
    endpoint::{self, Unmanaged},
    events::{count, report},
    flow,
    maps::{CONFIG, DNS_SOCKS, SOCK_OWNERS},
    sock_addr::{ALLOW, ip_of, is_v4, remember_flow},
    sock_dns::{Placeholder, catch_on_loopback, catch_via_placeholder, redirect_to_gate, send_to_sink, to_placeholder},
    verdict::{Dest, decide},
};

const DENY: i32 = 0;

#[inline(always)]
pub fn handle(ctx: &SockAddrContext, hook: Hook, v6: bool) -> i32 {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the whole run.
    let sa = unsafe { &*ctx.sock_addr };
    let ip = if v6 { ip_of(sa.user_ip6) } else { v4_mapped(sa.user_ip4.to_ne_bytes()) };
    // user_port holds the __be16 port zero-extended; its low half in memory
    // order is already network order.
    let dest = Dest { proto: sa.protocol as u8, port: (sa.user_port as u16).to_ne_bytes(), ip };
    let connect = hook == Hook::Connect4 || hook == Hook::Connect6;
    // Fast path: a destination this attach point's endpoint was allowed to
    // reach a moment ago (`cache`), before any map lookup or clock read.
    let cached = cache::lookup(&dest, hook);
    if let Lookup::Hit { reason, endpoint, rule } = cached {
        count(hook, reason);
        flow::verdict(endpoint, connect, reason, rule, 0);
        if connect {
            flow::dest(endpoint, reason, &dest);
        }
        if connect && dest.proto != proto::TCP {
            // As on the full path below: the socket's packets pass on it.
            remember_flow(ctx, &dest, endpoint, 0);
        }
        return ALLOW;
    }
    if !connect && to_placeholder(ctx, &dest) {
        // A datagram of a socket `catch_via_placeholder` connected: its
        // sends meet `sendmsg4` (net/ipv6/udp.c `udpv6_sendmsg` hands a
        // mapped destination to `udp_sendmsg` as an address). Egress
        // catches it.
        count(hook, Reason::DnsCaught);
        return ALLOW;
    }
    // The endpoint: the verdict cache's when it is on (the attach point is
    // the endpoint's own cgroup with no other endpoint below: `cache`),
    // which spares the cgroup id and `ENDPOINTS` (cold cache lines).
    // Its flags (audit) only matter to a denial: read there, below.
    let from_cache = match cached {
        Lookup::Miss { endpoint, .. } => Some(endpoint),
        _ => None,
    };
    // The config is read only when a verdict needs it: a socket whose own
    // cgroup is the endpoint (`exec`, a registered pod cgroup) needs none.
    let ancestor = |l| unsafe { bpf_get_current_ancestor_cgroup_id(l) };
    let ep = match from_cache {
        Some(endpoint) => EndpointInfo { endpoint, flags: 0, generation: 0 },
        None => match endpoint::resolve(unsafe { bpf_get_current_cgroup_id() }, ancestor, || CONFIG.get(0)) {
            Ok(ep) => ep,
            Err(u) => return unmanaged(hook, u),
        },
    };
    let netns = || unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // No config: treat the socket as in the host's namespace (loopback
    // denied): fail closed.
    let host_netns = || CONFIG.get(0).is_none_or(|c| netns() == c.host_netns_cookie);
    let verdict = decide(&ep, &dest, host_netns);
    let mut reason = verdict.reason;
    let mut flow_flags = 0;
    if reason == Reason::AllowedDns {
        // DNS goes through the agent's gate for this namespace, endpoint
        // and resolver (a proxy in the workload's namespace that answers
        // names the policy does not allow itself, and learns from answers
        // before the workload reads them). Without a UDP gate, UDP is
        // caught here or on egress (`skb::egress`) and answered by the
        // agent; without a TCP gate, TCP is refused.
        let gated = redirect_to_gate(ctx, v6, netns(), ep.endpoint, &dest);
        if !gated && dest.proto == proto::TCP {
            reason = Reason::DeniedDnsNoGate;
        } else if !gated && CONFIG.get(0).is_some_and(|c| c.dns_gates != 0) {
            // No gate here yet: keep the query in the namespace, where the
            // agent catches it (`skb::egress`) and answers it.
            if connect && is_v4(&dest) {
                reason = if catch_on_loopback(ctx) { Reason::DnsCaught } else { Reason::DeniedDnsNoGate };
            } else if connect && dest.proto == proto::UDP && dest.port == 53u16.to_be_bytes() {
                // An IPv6 resolver: through the IPv4 placeholder, if the
                // socket can take it (port 53: the placeholder's record
                // keeps only the address); else caught on egress.
                match catch_via_placeholder(ctx) {
                    Placeholder::Caught => {
                        reason = Reason::DnsCaught;
                        flow_flags = FLOW_F_CAUGHT;
                    }
                    Placeholder::Failed => reason = Reason::DeniedDnsNoGate,
                    Placeholder::NotPossible => {}
                }
            } else if !connect && dest.port == 53u16.to_be_bytes() {
                send_to_sink(ctx, v6, &dest, ep.endpoint);
                reason = Reason::DnsCaught;
            }
        }
    }
    if reason.is_allowed() {
        count(hook, reason);
        flow::verdict(ep.endpoint, connect, reason, verdict.rule, 0);
        if connect {
            flow::dest(ep.endpoint, reason, &dest);
        }
        cache::remember(&cached, &dest, &verdict);
        if reason == Reason::AllowedDns || reason == Reason::DnsCaught {
            // The cookie only when needed: its first use on a socket writes
            // a fresh value into it (net/core/sock_diag.c `__sock_gen_cookie`).
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let info =
                DnsSockInfo { tgid: (bpf_get_current_pid_tgid() >> 32) as u32, endpoint: ep.endpoint, netns_cookie: netns() };
            // If this fails, the answer is later dropped for lack of an owner
            // (counted as DNS_NO_OWNER): fail closed, never unlearned.
            let _ = DNS_SOCKS.insert(cookie, info, 0);
        }
        if connect && dest.proto != proto::TCP {
            // From now on the socket's packets pass on one lookup, also
            // after a learned IP's TTL ran out (live connections go on).
            // TCP needs nothing: see `skb::is_established`. A failed insert
            // only sends its packets down the full path.
            let dns = reason == Reason::AllowedDns || reason == Reason::DnsCaught;
            let flags = if dns { FLOW_F_DNS | flow_flags } else { 0 };
            remember_flow(ctx, &dest, ep.endpoint, flags);
        }
        return ALLOW;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    if connect && dest.proto == proto::UDP {
        // Nothing is sent by a UDP connect(); its datagrams meet the
        // per-packet check (EPERM on send). An allowance an earlier
        // connect() left on the socket goes (it was for another
        // destination). Remember who it was for the log.
        count(hook, Reason::UdpConnectDeferred);
        flow::verdict(ep.endpoint, connect, Reason::UdpConnectDeferred, 0, 0);
        remember_flow(ctx, &dest, ep.endpoint, FLOW_F_DENIED);
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let _ = SOCK_OWNERS.insert(cookie, SockOwner { tgid, _pad: 0, comm }, 0);
        return ALLOW;
    }
    count(hook, reason);
    flow::verdict(ep.endpoint, connect, reason, 0, verdict.range);
    let shown = Dest { proto: if dest.proto == 0 { proto::TCP } else { dest.proto }, port: dest.port, ip: dest.ip };
    let Some(cfg) = CONFIG.get(0) else {
        return DENY;
    };
    let cgid = unsafe { bpf_get_current_cgroup_id() };
    // Decided with the cache's endpoint: its flags from the cgroup walk (not
    // found, e.g. the endpoint going away: none, so no audit: deny).
    let ep = match from_cache {
        Some(_) => endpoint::resolve(cgid, ancestor, || Some(cfg)).map_or(ep, |r| EndpointInfo { endpoint: ep.endpoint, ..r }),
        None => ep,
    };
    let audit = report(None::<&SockAddrContext>, cfg, cgid, &ep, hook, reason, &shown, tgid, comm);
    if !audit {
        return DENY;
    }
    if connect && dest.proto != proto::TCP {
        // One audit record per connection, not one per packet.
        remember_flow(ctx, &dest, ep.endpoint, 0);
    }
    ALLOW
}

/// A socket below the attach point in no enforced endpoint's cgroup.
#[inline(always)]
fn unmanaged(hook: Hook, u: Unmanaged) -> i32 {
    let (reason, allow) = u.verdict(CONFIG.get(0));
    count(hook, reason);
    if allow { ALLOW } else { DENY }
}

/// `cgroup/sock_release`: a socket of the cgroup is closing. Its DNS
/// ownership and deferred-connect owner entries go (recorded for UDP
/// sockets only; the flow itself is socket-local storage, freed with the
/// socket). Always allows (the return value is ignored on release).
pub fn release(ctx: &SockContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock for the whole run.
    if unsafe { (*ctx.sock).protocol } != u32::from(proto::UDP) {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = DNS_SOCKS.remove(cookie);
    let _ = SOCK_OWNERS.remove(cookie);
    ALLOW
}

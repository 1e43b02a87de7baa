//! `cgroup/setsockopt`: refuses, with EPERM, the socket options that would
//! make a socket of an enforced endpoint source-route (IPv4 `IP_OPTIONS`
//! with a loose or strict route, IPv6 routing headers): the packets would
//! leave with the first hop as their IP destination, not the address the
//! connect hook allowed. Per packet, `cgroup_skb/egress` drops such packets
//! whatever set them (a `sendmsg` control message, a raw socket); this hook
//! makes the caller see the refusal at once. Everything else passes, and
//! the hook never touches the value, so the kernel handles it as usual
//! (kernel/bpf/cgroup.c `__cgroup_bpf_run_filter_setsockopt`).

use agent_common::{
    Hook, Reason,
    source_route::{
        IP_OPTIONS, IPV6_2292PKTOPTIONS, IPV6_2292RTHDR, IPV6_RTHDR, MAX_IPV4_OPTIONS, SOL_IP, SOL_IPV6, setsockopt_source_routes,
    },
    v4_mapped,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    },
    programs::SockoptContext,
};

use crate::{
    endpoint,
    events::{count, report},
    maps::CONFIG,
    verdict::Dest,
};

/// Let the kernel handle the option.
const PASS: i32 = 1;
/// `setsockopt` fails with EPERM.
const REFUSE: i32 = 0;

#[inline(always)]
pub fn setsockopt(ctx: &SockoptContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sockopt for the whole run.
    let so = unsafe { &*ctx.sockopt };
    let (level, optname) = (so.level, so.optname);
    let relevant = (level == SOL_IP && optname == IP_OPTIONS)
        || (level == SOL_IPV6 && matches!(optname, IPV6_RTHDR | IPV6_2292RTHDR | IPV6_2292PKTOPTIONS));
    if !relevant {
        return PASS;
    }
    let cgid = unsafe { bpf_get_current_cgroup_id() };
    let Some(cfg) = CONFIG.get(0) else {
        count(Hook::Setsockopt, Reason::DeniedInternal);
        return REFUSE;
    };
    let ancestor = |l| unsafe { bpf_get_current_ancestor_cgroup_id(l) };
    let ep = match endpoint::resolve(cgid, ancestor, || Some(cfg)) {
        Ok(ep) => ep,
        // Unmanaged: as the other hooks treat it.
        Err(u) => return if u.verdict(Some(cfg)).1 { PASS } else { REFUSE },
    };
    // The value, where the kernel copied it (at most a page; IPv4 options
    // are at most 40 bytes, and longer values are refused by the kernel
    // anyway). A byte past the window cannot be vouched for: refused.
    let len = so.optlen.clamp(0, MAX_IPV4_OPTIONS as i32) as usize;
    // SAFETY: the kernel's optval..optval_end window for this run.
    let (start, end) = unsafe { (so.__bindgen_anon_2.optval as usize, so.__bindgen_anon_3.optval_end as usize) };
    #[expect(clippy::int_plus_one, reason = "the verifier proves a read in bounds only from `start + offset + size <= end`")]
    let byte = |i: usize| {
        // SAFETY: start + i is below optval_end, checked first.
        (start + i + 1 <= end).then(|| unsafe { *((start + i) as *const u8) })
    };
    if !setsockopt_source_routes(level, optname, len, byte) {
        return PASS;
    }
    count(Hook::Setsockopt, Reason::DeniedSourceRoute);
    let any = if level == SOL_IP { v4_mapped([0; 4]) } else { [0; 16] };
    // SAFETY: the socket of this setsockopt, a full socket.
    let sk_proto = unsafe { (*so.__bindgen_anon_1.sk).protocol } as u8;
    let dest = Dest { proto: sk_proto, port: [0; 2], ip: any };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    if report(Some(ctx), cfg, cgid, &ep, Hook::Setsockopt, Reason::DeniedSourceRoute, &dest, tgid, comm) { PASS } else { REFUSE }
}

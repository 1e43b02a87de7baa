//! Counters and denied-attempt events. Every verdict bumps exactly one
//! per-CPU counter; denied (and audited) verdicts also try to emit an event,
//! rate-limited per endpoint, with every loss counted.

use agent_common::{
    COUNTERS_LEN, Config, DeniedEvent, ENDPOINT_F_AUDIT, EndpointInfo, Hook, MAX_ENDPOINTS, Reason, counter_index, loss,
};
use aya_ebpf::{EbpfContext, helpers::generated::bpf_ktime_get_boot_ns};

use crate::{
    maps::{COUNTERS, DENIED_EVENTS, EVENT_RATE, VETH_COUNTERS},
    verdict::Dest,
};

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count(hook: Hook, reason: Reason) {
    let i = counter_index(hook, reason);
    if i < COUNTERS_LEN {
        bump(i);
    } else if let Some(c) = VETH_COUNTERS.get_ptr_mut(i - COUNTERS_LEN) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// Per-CPU token bucket per endpoint: `events_per_sec` refill, `events_burst` cap.
#[inline(always)]
fn take_token(cfg: &Config, endpoint: u32, now: u64) -> bool {
    if endpoint >= MAX_ENDPOINTS {
        return false;
    }
    let Some(st) = EVENT_RATE.get_ptr_mut(endpoint) else { return false };
    // SAFETY: per-CPU slot.
    let st = unsafe { &mut *st };
    let elapsed = now.saturating_sub(st.last_ns);
    let refill = elapsed / 1_000_000_000 * cfg.events_per_sec as u64
        + (elapsed % 1_000_000_000) * cfg.events_per_sec as u64 / 1_000_000_000;
    if refill > 0 {
        let t = st.tokens as u64 + refill;
        st.tokens = if t > cfg.events_burst as u64 { cfg.events_burst } else { t as u32 };
        st.last_ns = now;
    }
    if st.tokens == 0 {
        return false;
    }
    st.tokens -= 1;
    true
}

pub struct Attempt {
    pub cgroup_id: u64,
    pub endpoint: u32,
    pub hook: Hook,
    pub reason: Reason,
    pub audit: bool,
    pub proto: u8,
    pub dport: [u8; 2],
    pub daddr: [u8; 16],
    pub tgid: u32,
    pub comm: [u8; 16],
    /// The host-side veth (`Hook::TcEgress`), else 0.
    pub ifindex: u32,
}

/// Records a denied attempt; `false` when `DENIED_EVENTS` was full (the
/// caller, which has the context aya-log needs, says so: `rare`).
#[inline(always)]
pub fn emit(cfg: &Config, a: &Attempt) -> bool {
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if !take_token(cfg, a.endpoint, now) {
        bump(loss::EVENT_RATE_LIMITED);
        return true;
    }
    let Some(mut entry) = DENIED_EVENTS.reserve::<DeniedEvent>(0) else {
        bump(loss::EVENT_RINGBUF_FULL);
        return false;
    };
    // Written in place: a whole `DeniedEvent` built first would cost its
    // 72 bytes of stack again (the veth program's frames are near the
    // verifier's 512-byte limit on Linux 6.1).
    let p = entry.as_mut_ptr();
    // SAFETY: `p` points at a reserved, writable ring buffer record.
    unsafe {
        (*p).ts_ns = now;
        (*p).cgroup_id = a.cgroup_id;
        (*p).endpoint = a.endpoint;
        (*p).reason = a.reason as u32;
        (*p).hook = a.hook as u32;
        (*p).tgid = a.tgid;
        (*p).audit = a.audit as u8;
        (*p).proto = a.proto;
        (*p).dport = a.dport;
        (*p).ifindex = a.ifindex;
        (*p).daddr = a.daddr;
        (*p).comm = a.comm;
    }
    entry.submit(0);
    true
}

/// Reports a denied attempt (an event, rate-limited) and returns whether the
/// endpoint is in audit mode, i.e. whether the caller must let it through.
/// With `ctx`, a record the full ring could not take is also logged
/// (`rare`). The socket hooks pass none: with that call in `pc_sendmsg4`,
/// Linux 6.1's verifier refused the program (`R9 !read_ok`).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into the hooks: a struct of arguments would cost stack the verifier counts"
)]
pub fn report<C: EbpfContext>(
    ctx: Option<&C>,
    cfg: &Config,
    cgroup_id: u64,
    ep: &EndpointInfo,
    hook: Hook,
    reason: Reason,
    dest: &Dest,
    tgid: u32,
    comm: [u8; 16],
) -> bool {
    let audit = ep.flags & ENDPOINT_F_AUDIT != 0;
    let recorded = emit(
        cfg,
        &Attempt {
            cgroup_id,
            endpoint: ep.endpoint,
            hook,
            reason,
            audit,
            proto: dest.proto,
            dport: dest.port,
            daddr: dest.ip,
            tgid,
            comm,
            ifindex: 0,
        },
    );
    if let (false, Some(ctx)) = (recorded, ctx) {
        crate::rare::events_ring_full(ctx, ep.endpoint);
    }
    audit
}

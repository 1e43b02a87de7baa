//! The socket hooks' verdict cache (`SOLO_CACHE` or `VERDICT_CACHE`, layout
//! and rules in `agent_common::verdict_cache`): a repeated connection to an
//! allowed destination is decided from per-CPU, per-attach-point storage,
//! with no hash lookup and no clock read.

use core::ptr::{read_volatile, write_volatile};

use agent_common::{Hook, Reason, VerdictCache, ip_words, slot_index, slot_tag, slot_ticks};
use aya_ebpf::helpers::generated::bpf_jiffies64;

use crate::{
    maps::{SOLO_ATTACH, SOLO_CACHE, VERDICT_CACHE},
    verdict::{Dest, Verdict},
};

/// What the cache said about a destination.
pub enum Lookup {
    /// Allowed before and still valid: count `reason` and allow.
    /// `rule`: the policy entry that allowed it (`Verdict::rule`).
    Hit { reason: Reason, endpoint: u32, rule: u32 },
    /// Not cached; `endpoint` is the one to decide for, and an allowance
    /// found now may be cached, stamped with the `generation` read *before*
    /// the policy lookup (so an allowance removed meanwhile is stale at once)
    /// into `cache`, the value this lookup found (`remember` writes there
    /// instead of finding it again).
    Miss { endpoint: u32, generation: u32, cache: *mut VerdictCache },
    /// No cache here (not an endpoint's own attach point).
    Off,
}

/// The running program's value for `hook`. A load for one attach point
/// (`SOLO_ATTACH`) has its own per-CPU array, whose lookup the verifier
/// inlines: no helper call, which matters where the kernel's returns go
/// through the SRSO "Safe RET" thunk (docs/ARCHITECTURE.md "Costs").
/// Else the attach point's cgroup storage, through `bpf_get_local_storage`.
#[inline(always)]
fn storage(hook: Hook) -> Option<&'static mut VerdictCache> {
    // SAFETY: a plain read of a constant the agent set at load (read-only
    // data, so the verifier knows it and prunes the other branch).
    let p = if unsafe { read_volatile(&SOLO_ATTACH) } != 0 {
        SOLO_CACHE.get_ptr_mut(hook as u32).unwrap_or_default()
    } else {
        VERDICT_CACHE.get_ptr_mut()
    };
    // SAFETY: the running program's own per-CPU storage (never shared with
    // another CPU's run); null only if the kernel gave none.
    (!p.is_null()).then(|| unsafe { &mut *p })
}

#[inline(always)]
pub fn lookup(d: &Dest, hook: Hook) -> Lookup {
    let Some(c) = storage(hook) else { return Lookup::Off };
    let (endpoint, generation) = (c.endpoint, c.generation);
    if endpoint == 0 {
        return Lookup::Off;
    }
    let s = &c.slots[slot_index(&d.ip, d.port)];
    let (hi, lo) = ip_words(&d.ip);
    let tag = slot_tag(d.proto, d.port);
    // A seqlock against a run that preempts this one and rewrites the slot
    // (see `remember`): the fields count only if the sequence is even and
    // the same before and after them. Volatile, so the reads stay in order.
    // SAFETY (all reads): fields of our own storage.
    let (seq, t, ip_lo, ip_hi, slot_gen, until, reason) = unsafe {
        (
            read_volatile(&s.seq),
            read_volatile(&s.tag),
            read_volatile(&s.ip_lo),
            read_volatile(&s.ip_hi),
            read_volatile(&s.generation),
            read_volatile(&s.until_jiffies),
            read_volatile(&s.reason),
        )
    };
    let same = seq & 1 == 0 && t == tag && ip_lo == lo && ip_hi == hi && slot_gen == generation;
    // jiffies_64: one load (kernel/time/jiffies.c); see VERDICT_TICK_NS_MAX.
    if same && until > unsafe { bpf_jiffies64() } && unsafe { read_volatile(&s.seq) } == seq {
        // The slot's reason carries its rule above the low byte.
        let r = if reason & 0xff == Reason::AllowedCidr as u32 { Reason::AllowedCidr } else { Reason::AllowedFqdn };
        return Lookup::Hit { reason: r, endpoint, rule: reason >> 8 };
    }
    Lookup::Miss { endpoint, generation, cache: core::ptr::from_mut(c) }
}

/// Caches an allowance `decide` found after `miss` (decided for the
/// cache's own endpoint: the hooks take it from the miss).
#[inline(always)]
pub fn remember(miss: &Lookup, d: &Dest, v: &Verdict) {
    let Lookup::Miss { generation, cache, .. } = *miss else { return };
    let reason = match v.reason {
        Reason::AllowedFqdn | Reason::AllowedCidr => v.reason,
        _ => return,
    };
    let ticks = slot_ticks(v.lasts_ns);
    if ticks == 0 {
        return;
    }
    // SAFETY: the running program's own per-CPU value, found by `lookup`
    // in this same run (non-null).
    let c = unsafe { &mut *cache };
    let (ip_hi, ip_lo) = ip_words(&d.ip);
    let s = &mut c.slots[slot_index(&d.ip, d.port)];
    let until = unsafe { bpf_jiffies64() } + ticks;
    // Cgroup programs run with migration disabled, not preemption
    // (kernel/bpf/cgroup.c `bpf_prog_run_array_cg`): a run preempted halfway
    // through this write must never leave a slot that another run on this
    // CPU takes for a valid allowance with mixed fields. So the sequence is
    // odd while the fields change and moves on after, in program order
    // (volatile; one CPU, so no fences); a write that finds it odd (it
    // preempted another write) leaves the slot alone. The tag goes first: an
    // agent rewrite of the whole value (slots zeroed) that lands mid-write
    // either zeroes the tag, so the slot matches nothing, or comes before
    // all of ours, whose generation it has made stale.
    // SAFETY (all accesses): fields of our own storage.
    unsafe {
        let seq = read_volatile(&s.seq);
        if seq & 1 != 0 {
            return;
        }
        write_volatile(&mut s.seq, seq.wrapping_add(1));
        write_volatile(&mut s.tag, slot_tag(d.proto, d.port));
        write_volatile(&mut s.ip_hi, ip_hi);
        write_volatile(&mut s.ip_lo, ip_lo);
        write_volatile(&mut s.generation, generation);
        write_volatile(&mut s.until_jiffies, until);
        write_volatile(&mut s.reason, reason as u32 | (v.rule << 8));
        write_volatile(&mut s.seq, seq.wrapping_add(2));
    }
}

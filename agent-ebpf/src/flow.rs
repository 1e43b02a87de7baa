//! Per-endpoint flow counters (`FLOW_COUNTERS`, layout in
//! `agent_common::flow`): bumped only where the endpoint is already known,
//! so counting costs a per-CPU array lookup (inlined by the verifier,
//! kernel/bpf/arraymap.c `percpu_array_map_gen_lookup`) and an add, never a
//! hash lookup. With `FLOW_COUNTING` 0 the verifier drops all of it.

use core::ptr::read_volatile;

use agent_common::{FLOW_SLOTS, FlowCounters, Reason, flow::slot, range_slot, rule_slot};

use aya_ebpf::{
    helpers::generated::{bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};

use crate::{
    endpoint,
    maps::{CONFIG, FLOW_COUNTERS, FLOW_COUNTING, SKB_EP_MEMO, SKB_MEMO_ENTRIES},
};

#[inline(always)]
fn counters(endpoint: u32) -> Option<&'static mut FlowCounters> {
    // SAFETY: a constant the agent set at load (read-only data).
    if unsafe { read_volatile(&FLOW_COUNTING) } == 0 {
        return None;
    }
    // SAFETY: this CPU's own value; programs on one CPU do not run at once
    // on it except by preemption, and a lost increment there only
    // undercounts (never a wrong verdict).
    FLOW_COUNTERS.get_ptr_mut(endpoint).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn bump(c: &mut FlowCounters, s: u32, n: u64) {
    // The mask after `black_box`: LLVM knows every slot is in bounds and
    // would drop it, and the verifier cannot follow its reasoning.
    let i = core::hint::black_box(s) as usize & (FLOW_SLOTS - 1);
    c.slots[i] += n;
}

/// A verdict on a connection (`conn`) or a datagram, with the rule that
/// allowed it or the range that denied it (0 if none).
#[inline(always)]
pub fn verdict(endpoint: u32, conn: bool, reason: Reason, rule: u32, range: u32) {
    let Some(c) = counters(endpoint) else { return };
    let base = if conn { slot::CONNECTION } else { slot::DATAGRAM };
    bump(c, base + (reason as u32 & (slot::REASONS - 1)), 1);
    if reason.is_allowed() {
        if rule != 0 {
            bump(c, rule_slot(rule), 1);
        }
    } else if reason == Reason::DeniedRange {
        bump(c, range_slot(range), 1);
    }
}

/// Bytes of one packet of the endpoint.
#[inline(always)]
pub fn bytes(endpoint: u32, egress: bool, len: u32) {
    let Some(c) = counters(endpoint) else { return };
    let (b, p) = if egress { (slot::EGRESS_BYTES, slot::EGRESS_PACKETS) } else { (slot::INGRESS_BYTES, slot::INGRESS_PACKETS) };
    bump(c, b, u64::from(len));
    bump(c, p, 1);
}

/// A packet of an established flow in a cgroup program, whose endpoint
/// nobody looked up: found through `SKB_EP_MEMO` (this CPU's last
/// endpoints by cgroup, direct-mapped), so a steady flow costs two array
/// lookups and no hash; a miss resolves the cgroup once.
#[inline(always)]
pub fn skb_bytes(ctx: &SkBuffContext, egress: bool) {
    // SAFETY: a constant the agent set at load (read-only data).
    if unsafe { read_volatile(&FLOW_COUNTING) } == 0 {
        return;
    }
    let skb = ctx.skb.skb;
    let cgid = unsafe { bpf_skb_cgroup_id(skb) };
    let Some(m) = SKB_EP_MEMO.get_ptr_mut((cgid & (SKB_MEMO_ENTRIES as u64 - 1)) as u32) else { return };
    let Some(cfg) = CONFIG.get(0) else { return };
    // SAFETY: this CPU's own entry.
    let m = unsafe { &mut *m };
    if m.cgroup_id != cgid || m.generation != cfg.generation {
        let ep = endpoint::resolve(cgid, |l| unsafe { bpf_skb_ancestor_cgroup_id(skb, l) }, || Some(cfg));
        m.cgroup_id = cgid;
        m.generation = cfg.generation;
        m.endpoint = ep.map_or(0, |e| e.endpoint);
    }
    if m.endpoint != 0 {
        // SAFETY: the kernel's skb for the whole run.
        bytes(m.endpoint, egress, unsafe { (*skb).len });
    }
}

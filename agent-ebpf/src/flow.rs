//! Per-endpoint flow counters (`FLOW_COUNTERS`, layout in
//! `agent_common::flow`): bumped only where the endpoint is already known,
//! so counting costs a per-CPU array lookup (inlined by the verifier,
//! kernel/bpf/arraymap.c `percpu_array_map_gen_lookup`) and an add, never a
//! hash lookup or a helper call. Verdicts are counted where they are made;
//! bytes only on the pod's veth, which sees every packet of the pod once
//! (the cgroup programs' established fast path knows no endpoint, and a
//! `bpf_skb_cgroup_id` call per packet costs ~30 ns on these VMs: more
//! than the budget of counting). With `FLOW_COUNTING` 0 the verifier drops
//! all of it.

use core::ptr::read_volatile;

use agent_common::{
    Dest, ENDPOINT_F_EXEMPT, FLOW_SLOTS, FlowCounters, FlowDestSlot, Reason, dest_slot, flow::slot, ip_words, range_slot,
    rule_slot, slot_tag,
};

use aya_ebpf::programs::TcContext;

use crate::maps::{
    CONFIG, FLOW_COUNTERS, FLOW_COUNTING, FLOW_DEST_SLOTS, FLOW_DESTS, TC_IFACES, VETH_EP_MEMO, VETH_MEMO_ENTRIES,
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

/// An allowed connection by a policy entry (a learned name or a CIDR
/// rule), by destination, once per connection: this CPU's slot for it
/// (`agent_common::flow`) gets the count, no hash lookup unless the slot
/// held another destination. Inlined: `d` must not escape into a call
/// (LLVM would then stop knowing its bytes, and a connect4 program would
/// keep IPv6 code the verifier refuses there).
#[inline(always)]
pub fn dest(endpoint: u32, reason: Reason, d: &Dest) {
    // SAFETY: a constant the agent set at load (read-only data).
    if unsafe { read_volatile(&FLOW_COUNTING) } == 0 || !matches!(reason, Reason::AllowedFqdn | Reason::AllowedCidr) {
        return;
    }
    let Some(s) = FLOW_DEST_SLOTS.get_ptr_mut(dest_slot(endpoint, d.port, &d.ip)) else { return };
    // SAFETY: this CPU's own slot (a run preempting this one on the same
    // CPU could interleave: at worst a count is lost, never a verdict).
    let s = unsafe { &mut *s };
    let (ip_hi, ip_lo) = ip_words(&d.ip);
    let tag = slot_tag(d.proto, d.port);
    if s.tag == tag && s.ip_lo == ip_lo && s.ip_hi == ip_hi && s.endpoint == endpoint {
        s.connections += 1;
        return;
    }
    if s.connections != 0 {
        give_up_slot(s);
    }
    *s = FlowDestSlot { endpoint, tag, ip_hi, ip_lo, connections: 1 };
}

/// Moves a slot's count to `FLOW_DESTS` before another destination takes
/// the slot (its own BPF function: rare, and its key stays off the hooks'
/// frames).
#[inline(never)]
fn give_up_slot(s: &FlowDestSlot) {
    let key = s.key();
    match FLOW_DESTS.get_ptr_mut(key) {
        // SAFETY: this CPU's own value.
        Some(n) => unsafe { *n += s.connections },
        None => {
            let _ = FLOW_DESTS.insert(key, s.connections, 0);
        }
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

/// A packet to a pod on its veth (`pc_to_pod`), whose endpoint the
/// program does not look up: found through `VETH_EP_MEMO` (this CPU's last
/// interfaces, direct-mapped by ifindex, valid for one `CONFIG`
/// generation, which the agent moves on whenever it assigns an interface),
/// so a steady flow costs two inlined array lookups, no hash and no helper
/// call; a miss looks the interface up once.
#[inline(always)]
pub fn veth_ingress_bytes(ctx: &TcContext) {
    // SAFETY: a constant the agent set at load (read-only data).
    if unsafe { read_volatile(&FLOW_COUNTING) } == 0 {
        return;
    }
    // SAFETY: the kernel's skb for the whole run.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    let Some(m) = VETH_EP_MEMO.get_ptr_mut(ifindex & (VETH_MEMO_ENTRIES - 1)) else { return };
    let Some(cfg) = CONFIG.get(0) else { return };
    // SAFETY: this CPU's own entry.
    let m = unsafe { &mut *m };
    if m.ifindex != ifindex || m.generation != cfg.generation {
        // SAFETY: plain data copied out.
        let iface = unsafe { TC_IFACES.get(ifindex) };
        m.ifindex = ifindex;
        m.generation = cfg.generation;
        m.endpoint = iface.filter(|i| i.flags & ENDPOINT_F_EXEMPT == 0).map_or(0, |i| i.endpoint);
    }
    if m.endpoint != 0 {
        bytes(m.endpoint, false, len);
    }
}

//! Rare events that, besides their counter, reach the agent's log through
//! aya-log (`AYA_LOGS`, read by `datapath/kernel_log.rs`): an internal
//! error that failed closed, a ring or map that was full. Each is its own
//! BPF function called only on its failure branch, so the per-packet path
//! carries no logging code and the callers' stack frames do not grow.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::{error, warn};

/// No `CONFIG` entry: the hook denied (`denied-internal`).
#[inline(never)]
pub fn no_config<C: EbpfContext>(ctx: &C, hook: u32) {
    error!(ctx, "no CONFIG entry: hook {} denied the packet (failed closed)", hook);
}

/// A DNS answer or query could not be held: the `DNS_HOLD` ring is full
/// (the agent is not keeping up); it is dropped, never let through.
#[inline(never)]
pub fn hold_ring_full<C: EbpfContext>(ctx: &C, endpoint: u32) {
    warn!(ctx, "DNS_HOLD ring full: a DNS packet of endpoint {} was dropped", endpoint);
}

/// A judged flow could not be remembered on a veth (`TC_FLOWS` insert
/// failed): its next packets are judged again.
#[inline(never)]
pub fn flow_table_full<C: EbpfContext>(ctx: &C, ifindex: u32) {
    warn!(ctx, "TC_FLOWS insert failed on interface {}: the flow is judged again per packet", ifindex);
}

/// A DNS packet longer than a `DNS_HOLD` record (`DNS_MAX_PACKET`): it
/// cannot be judged, so it is dropped.
#[inline(never)]
pub fn dns_too_large<C: EbpfContext>(ctx: &C, endpoint: u32, len: u32) {
    warn!(ctx, "a DNS packet of endpoint {} was dropped: {} bytes, longer than the agent takes", endpoint, len);
}

/// A DNS answer to a socket the socket hooks did not record (`DNS_SOCKS`
/// full, or the socket gone): nobody to judge it for, so it is dropped.
#[inline(never)]
pub fn dns_no_owner<C: EbpfContext>(ctx: &C, endpoint: u32) {
    warn!(ctx, "a DNS packet of endpoint {} was dropped: its socket is not in DNS_SOCKS (full?)", endpoint);
}

/// A denied attempt's record could not be written: `DENIED_EVENTS` is full
/// (the agent is not keeping up). The attempt was still denied.
#[inline(never)]
pub fn events_ring_full<C: EbpfContext>(ctx: &C, endpoint: u32) {
    warn!(ctx, "DENIED_EVENTS ring full: a blocked attempt of endpoint {} was denied but not recorded", endpoint);
}

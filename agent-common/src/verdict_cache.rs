//! The verdict cache: the per-connection fast path of the socket hooks.
//!
//! One value per (attach point, hook, CPU), in one of two homes:
//! - `SOLO_CACHE`, a per-CPU array of the load itself, when the load is
//!   attached at one cgroup only (`portcullis exec`): the verifier inlines
//!   its lookup (kernel/bpf/arraymap.c `percpu_array_map_gen_lookup`), so a
//!   hit calls no helper at all;
//! - else `VERDICT_CACHE`, a `BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE` map that
//!   any number of attach points share one program with, reached with
//!   `bpf_get_local_storage`, which reads a pointer the kernel already holds
//!   for the running program (kernel/bpf/helpers.c).
//!
//! Either way: no hashing, no cgroup-id walk, no clock (on a VM every cold
//! map access of the full path costs ~100 ns; see `cargo xtask bench`).
//!
//! The agent writes `endpoint` (with `generation`, slots cleared) when the
//! attach point is an endpoint's own cgroup and no other endpoint lies below
//! it, so every socket that runs the program belongs to that endpoint. It
//! bumps `generation` whenever an allowance of the endpoint goes away
//! (learned IP removed, CIDR rule removed), which makes every slot stale.
//! `endpoint == 0` (a fresh attachment, a parent attach point) turns the
//! cache off.

/// Slots per (attach point, attach type, CPU); a power of two.
pub const VERDICT_SLOTS: usize = 8;

/// A slot lives at most this many jiffies...
pub const VERDICT_MAX_TICKS: u64 = 1024;
/// ...and never longer than its learned IP's remaining TTL counted in ticks
/// of this length: the longest tick of any kernel (HZ >= 100 on every
/// architecture Portcullis runs on), so a slot never outlives its TTL at any
/// HZ. The hit path reads `jiffies_64` (one load) instead of a clock: on
/// these VMs `bpf_ktime_get_boot_ns` costs ~150 ns, more than the lookup.
pub const VERDICT_TICK_NS_MAX: u64 = 10_000_000;

/// One allowed destination, as seen by one hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictSlot {
    /// Destination IP (IPv6 or IPv4-mapped) as two native-endian words:
    /// bytes 0..8 and 8..16.
    pub ip_hi: u64,
    pub ip_lo: u64,
    /// `slot_tag(proto, port)`; 0 = empty.
    pub tag: u32,
    /// `VerdictCache::generation` when filled.
    pub generation: u32,
    /// `jiffies_64` until which the slot may be used.
    pub until_jiffies: u64,
    /// The `Reason` counted on a hit.
    pub reason: u32,
    /// Write sequence, odd while the kernel rewrites the slot: a read that
    /// sees it change (or odd) ignores the slot (a seqlock on one CPU;
    /// see agent-ebpf/src/cache.rs). The agent writes 0 with the rest.
    pub seq: u32,
}
const _: () = assert!(size_of::<VerdictSlot>() == 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCache {
    /// The endpoint every socket under this attach point belongs to; 0 = off.
    pub endpoint: u32,
    pub generation: u32,
    pub slots: [VerdictSlot; VERDICT_SLOTS],
}
const _: () = assert!(size_of::<VerdictCache>() == 8 + 40 * VERDICT_SLOTS);

/// Protocol and port (network order) in one non-zero word.
#[inline(always)]
pub fn slot_tag(proto: u8, port: [u8; 2]) -> u32 {
    0x0100_0000 | (u32::from(proto) << 16) | (u32::from(port[0]) << 8) | u32::from(port[1])
}

/// The slot a destination maps to.
#[inline(always)]
pub fn slot_index(ip: &[u8; 16], port: [u8; 2]) -> usize {
    ((ip[15] ^ ip[13] ^ port[1]) as usize) & (VERDICT_SLOTS - 1)
}

/// The IP as the slot's two words.
#[inline(always)]
pub fn ip_words(ip: &[u8; 16]) -> (u64, u64) {
    let hi = u64::from_ne_bytes([ip[0], ip[1], ip[2], ip[3], ip[4], ip[5], ip[6], ip[7]]);
    let lo = u64::from_ne_bytes([ip[8], ip[9], ip[10], ip[11], ip[12], ip[13], ip[14], ip[15]]);
    (hi, lo)
}

/// How many jiffies a slot filled now may live, for an allowance that ends
/// `remaining_ns` from now (`u64::MAX`: no expiry). 0: do not cache.
#[inline(always)]
pub fn slot_ticks(remaining_ns: u64) -> u64 {
    let t = remaining_ns / VERDICT_TICK_NS_MAX;
    if t > VERDICT_MAX_TICKS { VERDICT_MAX_TICKS } else { t }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: repr(C), no implicit padding (size asserts), any bit pattern valid.
    unsafe impl aya::Pod for VerdictSlot {}
    unsafe impl aya::Pod for VerdictCache {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_never_empty_and_tell_protocols_and_ports_apart() {
        assert_ne!(slot_tag(0, [0, 0]), 0);
        assert_ne!(slot_tag(6, [1, 187]), slot_tag(17, [1, 187]));
        assert_ne!(slot_tag(6, [1, 187]), slot_tag(6, [187, 1]));
    }

    #[test]
    fn slots_never_outlive_the_ttl_at_any_hz() {
        // 2.5 s left: at HZ=100 (10 ms ticks) 250 ticks = 2.5 s; at HZ=1000
        // the same 250 ticks are 0.25 s. Never more than the TTL.
        assert_eq!(slot_ticks(2_500_000_000), 250);
        assert_eq!(slot_ticks(9_999_999), 0);
        assert_eq!(slot_ticks(u64::MAX), VERDICT_MAX_TICKS);
        for hz in [100u64, 250, 300, 1000] {
            let tick_ns = 1_000_000_000 / hz;
            for remaining in [10_000_000u64, 123_456_789, 5_000_000_000, 60_000_000_000] {
                assert!(slot_ticks(remaining) * tick_ns <= remaining, "hz {hz} remaining {remaining}");
            }
        }
    }

    #[test]
    fn slot_index_stays_in_range() {
        for b in 0..=255u8 {
            assert!(slot_index(&[b; 16], [b, b.wrapping_mul(7)]) < VERDICT_SLOTS);
        }
    }
}

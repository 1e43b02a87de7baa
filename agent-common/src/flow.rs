//! Per-endpoint flow counters (`FLOW_COUNTERS`): one `FlowCounters` per
//! endpoint id and CPU, bumped where a hook already knows the endpoint
//! (a verdict, the veth's interface lookup, the packet programs' memo), so
//! counting adds no hash lookup. The agent sums the CPUs at scrape time.
//!
//! Memory: `FLOW_ENDPOINTS` x 1 KiB per possible CPU (1 MiB per CPU).
//! Endpoint ids are the smallest free ones, so a node's pods stay far
//! below the bound; an endpoint with a larger id is counted node-wide only.

use crate::Reason;

/// Endpoint ids below this are counted per endpoint.
pub const FLOW_ENDPOINTS: u32 = 1024;
/// Counters per endpoint; a power of two.
pub const FLOW_SLOTS: usize = 128;

/// Where each count lives in `FlowCounters::slots`.
pub mod slot {
    /// Plus a reason: connections (`connect()`, a TCP SYN on the veth).
    pub const CONNECTION: u32 = 0;
    /// Plus a reason: datagrams and other packets judged one by one.
    pub const DATAGRAM: u32 = 32;
    /// Reasons counted per kind (every `Reason` value is below it).
    pub const REASONS: u32 = 32;
    /// Plus a rule id: allowed connections and datagrams by the policy
    /// entry that allowed them; ids at or past `RULES` (and 0) share `RULE`.
    pub const RULE: u32 = 64;
    pub const RULES: u32 = 46;
    /// Plus a range id (`super::range`): denials by always-denied range.
    pub const RANGE: u32 = 110;
    pub const RANGES: u32 = 14;
    pub const EGRESS_BYTES: u32 = 124;
    pub const INGRESS_BYTES: u32 = 125;
    pub const EGRESS_PACKETS: u32 = 126;
    pub const INGRESS_PACKETS: u32 = 127;
}

/// Always-denied range classes (`CidrValue::range`), for
/// `portcullis_denied_range_total{range}` and the blocked log's `range`:
/// id `i` is `NAMES[i - 1]`, 0 is none. The agent names a destination's
/// range with the same table (`policy::range_name`).
pub mod range {
    pub const NONE: u32 = 0;
    pub const NAMES: [&str; 13] = [
        "metadata",
        "this-network",
        "private",
        "cgnat",
        "loopback",
        "link-local",
        "multicast",
        "reserved",
        "unspecified",
        "ipv4-compatible",
        "unique-local",
        "nat64",
        "other",
    ];
    pub const METADATA: u32 = 1;
    pub const PRIVATE: u32 = 3;
    pub const LINK_LOCAL: u32 = 6;
    /// The last id (`other`).
    pub const OTHER: u32 = NAMES.len() as u32;

    /// The label value of a range class.
    pub const fn name(id: u32) -> &'static str {
        if id >= 1 && id <= OTHER { NAMES[id as usize - 1] } else { "other" }
    }

    /// The class of a name in `NAMES` (`OTHER` if not there).
    pub fn id_of(name: &str) -> u32 {
        NAMES.iter().position(|n| *n == name).map_or(OTHER, |i| i as u32 + 1)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowCounters {
    pub slots: [u64; FLOW_SLOTS],
}
const _: () = assert!(size_of::<FlowCounters>() == 8 * FLOW_SLOTS);
const _: () = assert!(slot::RANGE + slot::RANGES <= slot::EGRESS_BYTES);
const _: () = assert!(slot::RULE + slot::RULES <= slot::RANGE);
const _: () = assert!(range::OTHER < slot::RANGES);
const _: () = assert!((Reason::DeniedSpoofed as u32) < slot::REASONS);

impl Default for FlowCounters {
    fn default() -> Self {
        Self { slots: [0; FLOW_SLOTS] }
    }
}

/// An endpoint's allowed connections by destination (IP, protocol, port),
/// for the agent's per-name flow records (the name is the one the pod
/// resolved to the IP). Counted once per connection (`connect()`, a SYN the
/// veth alone judges), never per packet, in two places:
/// - `FLOW_DEST_SLOTS`: per CPU, direct-mapped by a hash of the key
///   (`dest_slot`), one array lookup (inlined by the verifier), a compare
///   and an add: what a connection pays;
/// - `FLOW_DESTS`: an LRU per-CPU hash that takes a slot's count when
///   another destination claims the slot (so nothing is lost; a flood of
///   destinations pushes out the oldest there, never fails a verdict).
///
/// A destination's count is its `FLOW_DESTS` value plus every CPU's slot
/// holding its key; the agent reads the hash first, then the slots, so a
/// count moving between them is at worst missed once, never counted twice.
pub const FLOW_DESTS_ENTRIES: u32 = 16384;
/// Slots per CPU; a power of two.
pub const FLOW_DEST_SLOT_ENTRIES: u32 = 4096;

/// A slot of `FLOW_DEST_SLOTS`: a destination in the words a connection
/// compares at once (the verdict cache's: `ip_words`, `slot_tag`), and its
/// connections since the slot took it. `tag` 0: free.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowDestSlot {
    pub endpoint: u32,
    pub tag: u32,
    pub ip_hi: u64,
    pub ip_lo: u64,
    pub connections: u64,
}
const _: () = assert!(size_of::<FlowDestSlot>() == 32);

impl FlowDestSlot {
    /// The destination as `FLOW_DESTS` keys it.
    #[inline(always)]
    pub fn key(&self) -> FlowDestKey {
        let (h, l) = (self.ip_hi.to_ne_bytes(), self.ip_lo.to_ne_bytes());
        FlowDestKey {
            endpoint: self.endpoint,
            proto: (self.tag >> 16) as u8,
            _pad: 0,
            port: [(self.tag >> 8) as u8, self.tag as u8],
            ip: [h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]],
        }
    }
}

/// The slot of a key: its address's last eight bytes, port and endpoint
/// through murmur3's 32-bit finalizer (every input bit reaches the low
/// bits the mask keeps; a plain multiply would leave the address's last
/// byte, the one that differs most, in bits the mask drops).
#[inline(always)]
pub fn dest_slot(endpoint: u32, port: [u8; 2], ip: &[u8; 16]) -> u32 {
    let a = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let b = u32::from_ne_bytes([ip[8], ip[9], ip[10], ip[11]]);
    let mut h = a ^ b.rotate_left(13) ^ (u32::from(u16::from_ne_bytes(port)) << 16) ^ endpoint.wrapping_mul(0x9e37_79b1);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h & (FLOW_DEST_SLOT_ENTRIES - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod's destinations spread over the slots: 64 addresses of one
    /// /24 on one port (the bench's spread) take at least 60 slots.
    #[test]
    fn destinations_of_a_subnet_spread_over_the_slots() {
        let mut taken = [false; FLOW_DEST_SLOT_ENTRIES as usize];
        for x in 1..=64u8 {
            taken[dest_slot(3, 443u16.to_be_bytes(), &crate::v4_mapped([198, 51, 100, x])) as usize] = true;
        }
        let n = taken.iter().filter(|t| **t).count();
        assert!(n >= 60, "{n} slots");
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowDestKey {
    pub endpoint: u32,
    pub proto: u8,
    pub _pad: u8,
    /// Network byte order.
    pub port: [u8; 2],
    /// IPv6 or IPv4-mapped.
    pub ip: [u8; 16],
}
const _: () = assert!(size_of::<FlowDestKey>() == 24);

/// The slot counting an allowance by `rule`.
#[inline(always)]
pub const fn rule_slot(rule: u32) -> u32 {
    if rule > 0 && rule < slot::RULES { slot::RULE + rule } else { slot::RULE }
}

/// The slot counting a denial in range class `range`.
#[inline(always)]
pub const fn range_slot(range: u32) -> u32 {
    slot::RANGE + if range < slot::RANGES { range } else { 0 }
}

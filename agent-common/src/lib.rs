//! Types shared by the kernel programs (`agent-ebpf`) and the user-space agent.
//!
//! Rules (see docs/ARCHITECTURE.md): `#[repr(C)]`, fixed-width fields, explicit
//! padding, addresses and key ports in network byte order, one `const` size
//! assertion per struct so the two sides can never disagree on a layout.
//! IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) so one set of maps
//! serves both families and `connect6` to a mapped address hits the same keys.
#![no_std]

pub mod decide;
pub mod event;
pub mod flow;
pub mod limits;
pub mod maps;
pub mod reason;
pub mod source_route;
pub mod verdict_cache;
pub mod veth;

pub use decide::{Dest, PolicyMaps, Verdict, decide};
pub use event::*;
pub use flow::{
    FLOW_DEST_SLOT_ENTRIES, FLOW_DESTS_ENTRIES, FLOW_ENDPOINTS, FLOW_SLOTS, FlowCounters, FlowDestKey, FlowDestSlot, dest_slot,
    range_slot, rule_slot,
};
pub use maps::*;
pub use reason::*;
pub use verdict_cache::*;
pub use veth::*;

/// IP protocol numbers used in keys (IANA).
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    /// Wildcard used in keys: any protocol (and then port 0 = any port).
    pub const ANY: u8 = 255;

    /// Protocols whose packets carry ports where the hooks read them.
    #[inline(always)]
    pub const fn has_ports(p: u8) -> bool {
        p == TCP || p == UDP || p == SCTP
    }
}

/// Maps an IPv4 address (network order octets) to its IPv4-mapped IPv6 form.
#[inline(always)]
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]
}

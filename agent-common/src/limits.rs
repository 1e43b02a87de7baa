//! Every map's size, named once, for the kernel programs (which declare the
//! maps: agent-ebpf/src/maps.rs) and the agent (which bounds what it writes
//! by them: the learned-address caps, the endpoint ids).

pub use crate::maps::MAX_ENDPOINTS;

/// `EP_CACHE`: cgroup -> endpoint resolutions remembered (LRU).
pub const EP_CACHE_ENTRIES: u32 = 65_536;
/// `LEARNED`: (endpoint, protocol, port, address) keys; the agent's total
/// cap (`Caps::total_entries`) stays at or below it.
pub const LEARNED_ENTRIES: u32 = 262_144;
/// `CIDRS`: CIDR entries of every endpoint, always-denied ranges included.
pub const CIDR_ENTRIES: u32 = 65_536;
/// `DNS_SERVERS`: (endpoint, resolver) pairs.
pub const DNS_SERVER_ENTRIES: u32 = 16_384;
/// `GATES`: (network namespace, endpoint, resolver) gates.
pub const GATE_ENTRIES: u32 = 16_384;
/// `GATE_PORTS`: two ports per gate, and a previous agent's for a while.
pub const GATE_PORT_ENTRIES: u32 = 32_768;
/// `GATE_CLIENTS`: which process last used a gate's port (LRU).
pub const GATE_CLIENT_ENTRIES: u32 = 16_384;
/// `DNS_SOCKS`: sockets talking to a resolver (LRU).
pub const DNS_SOCK_ENTRIES: u32 = 65_536;
/// `INBOUND`: peers that reached an endpoint first (LRU).
pub const INBOUND_ENTRIES: u32 = 262_144;
/// `SOCK_OWNERS`: the process behind a deferred UDP connect (LRU).
pub const SOCK_OWNER_ENTRIES: u32 = 65_536;
/// `DENIED_EVENTS`: bytes of blocked-attempt records in flight.
pub const DENIED_EVENTS_BYTES: u32 = 256 * 1024;
/// `DNS_HOLD`: bytes of held DNS packets in flight.
pub const DNS_HOLD_BYTES: u32 = 4 * 1024 * 1024;
/// `TC_IFACES`: host-side veths with programs attached (one per pod, a
/// few for multi-interface pods).
pub const TC_IFACE_ENTRIES: u32 = 4096;
/// `POD_ADDRS`: (veth, address) pairs; a pod has one or two addresses.
pub const POD_ADDR_ENTRIES: u32 = 16_384;
/// `TC_FLOWS`: flows the veth programs let through (LRU).
pub const TC_FLOW_ENTRIES: u32 = 262_144;

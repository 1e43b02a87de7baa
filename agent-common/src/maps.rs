//! Keys and values of the policy maps. Kernel side: `agent-ebpf/src/maps.rs`.
//!
//! The maps are keyed by *endpoint id* (a pod or an `exec`'d command), never by
//! cgroup id directly: cgroup hooks resolve cgroup -> endpoint, and a later TC
//! mode can resolve ifindex/pod IP -> endpoint and reuse every policy map.

/// `ENDPOINTS`: cgroup id -> endpoint. Also the value of the resolution cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// 0 means "not a managed endpoint" (cached negative lookups).
    pub endpoint: u32,
    /// `ENDPOINT_F_*` bits.
    pub flags: u32,
    /// `Config::generation` when a cache entry was computed.
    pub generation: u64,
}
const _: () = assert!(size_of::<EndpointInfo>() == 16);

/// Audit mode: record what would be denied, deny nothing.
pub const ENDPOINT_F_AUDIT: u32 = 1;
/// Exempt: known, and deliberately not enforced (the agent's own pod, a
/// system namespace). Every hook lets it pass as `AllowedExempt`; below a
/// deny-unknown attach point this is what tells such a cgroup from one the
/// agent has not classified yet.
pub const ENDPOINT_F_EXEMPT: u32 = 2;

/// `LEARNED`: (endpoint, protocol, port, IP) learned from an allowed DNS answer.
/// `proto = proto::ANY, port = 0` means all protocols and ports.
/// `port = 0` with a real protocol means all ports of that protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LearnedKey {
    pub endpoint: u32,
    pub proto: u8,
    pub _pad: u8,
    /// Destination port, network byte order.
    pub port: [u8; 2],
    /// IPv6, or IPv4-mapped IPv6.
    pub ip: [u8; 16],
}
const _: () = assert!(size_of::<LearnedKey>() == 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnedValue {
    /// CLOCK_BOOTTIME nanoseconds after which new connections are refused.
    pub expires_ns: u64,
    /// The policy entry that allowed the name (`CompiledPolicy::rules`,
    /// 1-based; 0 = unknown), counted per endpoint (`FLOW_COUNTERS`).
    pub rule: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<LearnedValue>() == 16);

/// `CIDRS` LPM trie key data: endpoint (big endian, so it forms the first 32
/// bits of the prefix) then the address. Prefix length = 32 + IP prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrKey {
    pub endpoint_be: [u8; 4],
    pub ip: [u8; 16],
}
const _: () = assert!(size_of::<CidrKey>() == 20);

/// One allowed protocol + port range of a CIDR rule. Ports in host order
/// because they are compared, not matched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    /// `proto::ANY` matches every protocol (then the ports are ignored).
    pub proto: u8,
    pub _pad: u8,
    pub port_lo: u16,
    pub port_hi: u16,
    /// The policy entry this range came from (1-based; 0 = unknown).
    pub rule: u16,
}
const _: () = assert!(size_of::<PortRange>() == 8);

pub const CIDR_MAX_PORTS: usize = 8;

/// Kind of a `CIDRS` entry.
pub const CIDR_KIND_ALLOW: u32 = 1;
/// An always-denied range, copied into every endpoint so one lookup answers.
pub const CIDR_KIND_DENY_RANGE: u32 = 2;
/// A range that is allowed only on the workload's own loopback (127/8, ::1):
/// denied when the socket lives in the host's network namespace.
pub const CIDR_KIND_LOOPBACK: u32 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrValue {
    pub kind: u32,
    /// 1 when this allow entry lies inside an always-denied range, so a port
    /// mismatch reports `DeniedRange` instead of `DeniedDefault`.
    pub inside_deny_range: u32,
    /// Number of valid entries in `ports`; 0 with `kind == ALLOW` is invalid.
    pub nports: u32,
    /// The always-denied range (`flow::range`) a deny entry, or an allow
    /// entry inside one, belongs to; 0 = none.
    pub range: u32,
    pub ports: [PortRange; CIDR_MAX_PORTS],
}
const _: () = assert!(size_of::<CidrValue>() == 80);

/// `DNS_SERVERS`: (endpoint, resolver IP, port) trusted for UDP and TCP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsServerKey {
    pub endpoint: u32,
    /// Network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
    pub ip: [u8; 16],
}
const _: () = assert!(size_of::<DnsServerKey>() == 24);

/// `GATES` key: DNS from this network namespace and endpoint to this
/// trusted resolver goes to the agent's gate instead (the connect and
/// sendmsg hooks rewrite the destination to the gate's loopback address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GateKey {
    pub netns_cookie: u64,
    pub endpoint: u32,
    /// Resolver port, network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
    /// Resolver address, IPv6 or IPv4-mapped.
    pub ip: [u8; 16],
}
const _: () = assert!(size_of::<GateKey>() == 32);

/// `GATES` value: the gate's ports on 127.0.0.1 (IPv4 resolver) or ::1
/// (IPv6 resolver) in that namespace; 0 = no gate for that protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateValue {
    /// TCP listener port, network byte order.
    pub port: [u8; 2],
    /// UDP socket port, network byte order.
    pub udp_port: [u8; 2],
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<GateValue>() == 8);

/// `GATE_PORTS` key: a gate's loopback port in a namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GatePortKey {
    pub netns_cookie: u64,
    /// Network byte order.
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(size_of::<GatePortKey>() == 16);

/// `GATE_PORTS` value: the resolver the gate stands for, so `recvmsg`
/// shows the workload the resolver's address, not the gate's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatePortValue {
    /// IPv6 or IPv4-mapped.
    pub ip: [u8; 16],
    /// Network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
    pub endpoint: u32,
}
const _: () = assert!(size_of::<GatePortValue>() == 24);

/// `DNS_SOCKS`: socket cookie -> the process and network namespace that sent a
/// DNS query on it, recorded by the connect/sendmsg hooks (process context) so
/// the agent can re-inject the held answer into the right namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsSockInfo {
    pub tgid: u32,
    pub endpoint: u32,
    pub netns_cookie: u64,
}
const _: () = assert!(size_of::<DnsSockInfo>() == 16);

/// `CONFIG[0]`: runtime knobs the agent may change at any time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Bumped whenever `ENDPOINTS` changes; invalidates `EP_CACHE` entries.
    pub generation: u64,
    /// Network-namespace cookie of the host (the agent's own namespace).
    pub host_netns_cookie: u64,
    /// `skb->mark` the agent puts on re-injected DNS answers.
    pub inject_mark: u32,
    /// 1: cgroups below an attach point that are not endpoints pass.
    pub unmanaged_allow: u32,
    /// Denied-attempt events per endpoint per second and CPU (token refill).
    pub events_per_sec: u32,
    /// Burst size of the denied-attempt event bucket.
    pub events_burst: u32,
    /// 1 once the agent is consuming `DNS_HOLD`; answers are held only then.
    /// (0 still drops answers: fail closed, counted as `DnsHoldFailed`.)
    pub agent_ready: u32,
    /// 1: DNS goes through the agent's gates; DNS over IPv4 UDP from a
    /// namespace without one yet is caught on loopback (`DNS_KIND_CAUGHT`).
    /// 0: the copy-and-hold path only (`dnsGates: false`).
    pub dns_gates: u32,
}
const _: () = assert!(size_of::<Config>() == 40);

/// `EVENT_RATE`: per-CPU token bucket per endpoint (indexed by endpoint id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    pub last_ns: u64,
    pub tokens: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<RateState>() == 16);

/// `SK_FLOWS` (socket-local storage): exactly what a `connect()` of a
/// non-TCP socket was judged for (destination address, port, protocol).
/// Its packets to that destination pass on one lookup and outlive their
/// learned IP's TTL; a packet to anything else (a `sendto()` on a ping
/// socket, which has no sendmsg hook; a source route's first hop) does not
/// match and is judged again. A later `connect()` overwrites it, a denied
/// (deferred) one with `FLOW_F_DENIED`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveFlow {
    pub ip: [u8; 16],
    pub endpoint: u32,
    /// `FLOW_F_*` bits.
    pub flags: u8,
    /// IP protocol of the socket (`proto::*`).
    pub proto: u8,
    /// Network byte order; 0 for protocols without ports (ICMP), matching
    /// what `parse` reports for their packets.
    pub port: [u8; 2],
}

impl LiveFlow {
    /// Whether a packet of this flow's protocol (the caller checked it)
    /// goes to the destination and port this flow was allowed for, with
    /// nothing else to check on it.
    #[inline(always)]
    pub fn passes(&self, ip: &[u8; 16], port: [u8; 2]) -> bool {
        self.flags == 0 && self.port == port && self.ip == *ip
    }
}

/// The socket talks to a trusted resolver: its incoming answers must still
/// be held, so ingress does not take the established fast path for it.
pub const FLOW_F_DNS: u8 = 1;
/// An unconnected UDP socket's last DNS datagram went to the loopback sink
/// (`DNS_SINK_PORT`) instead of the trusted resolver in `ip` (port 53):
/// its namespace had no DNS gate yet. `cgroup_skb/egress` catches it.
pub const FLOW_F_CAUGHT: u8 = 2;
/// The socket's last `connect()` was denied (a deferred UDP connect): no
/// allowance; its packets take the full verdict.
pub const FLOW_F_DENIED: u8 = 4;
/// Where `sendmsg{4,6}` send DNS from a namespace with no gate yet: the
/// namespace's own loopback, UDP port 9 ("discard", RFC 863), so it never
/// leaves; the agent gets a copy and answers as the resolver.
pub const DNS_SINK_PORT: u16 = 9;
/// `lo`'s interface index in every network namespace (include/net/flow.h
/// `LOOPBACK_IFINDEX`: the loopback device is registered first).
pub const LOOPBACK_IFINDEX: u32 = 1;
/// Where `connect6` points a connected IPv6 socket to a trusted resolver
/// from a namespace with no gate yet (as `::ffff:192.0.0.8`, port 53, the
/// socket bound to the IPv4-mapped any address and to `lo`): the IPv4
/// dummy address (RFC 7600), never anyone's. The datagrams end in the
/// namespace; the agent answers from it, and `recvmsg6` shows the resolver
/// (in the socket's `LiveFlow`, `FLOW_F_CAUGHT`) as the source.
pub const DNS_PLACEHOLDER_V4: [u8; 4] = [192, 0, 0, 8];
/// `DNS_PLACEHOLDER_V4` as the maps and hooks see it (IPv4-mapped).
pub const DNS_PLACEHOLDER: [u8; 16] = crate::v4_mapped(DNS_PLACEHOLDER_V4);
const _: () = assert!(size_of::<LiveFlow>() == 24);

/// `SOCK_OWNERS`: socket cookie -> the process behind a deferred UDP
/// `connect()`, so per-packet denials of its datagrams name it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOwner {
    pub tgid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<SockOwner>() == 24);

/// `INBOUND`: a peer that opened a connection (TCP SYN) or sent a datagram
/// to the endpoint; replies to it from that local port are allowed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundKey {
    pub endpoint: u32,
    pub proto: u8,
    pub _pad: u8,
    /// Network byte order.
    pub peer_port: [u8; 2],
    /// Network byte order.
    pub local_port: [u8; 2],
    pub _pad2: [u8; 2],
    pub peer_ip: [u8; 16],
}
const _: () = assert!(size_of::<InboundKey>() == 28);

/// Largest endpoint id (also the size of `ENDPOINTS` and `EVENT_RATE`).
/// 2048 keeps `ENDPOINTS`'s bucket array within one kmalloc (32 KiB), so its
/// lookups stay in the kernel's huge-page direct map (no TLB miss per
/// connect on a VM); a node runs far fewer pods (kubelet's default is 110).
pub const MAX_ENDPOINTS: u32 = 2048;
/// How many ancestors of a cgroup are searched for an endpoint.
pub const MAX_CGROUP_DEPTH: u32 = 16;

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all types are repr(C), have no implicit padding (asserted by the
    // size checks above) and every bit pattern is valid.
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for LearnedKey {}
    unsafe impl aya::Pod for LearnedValue {}
    unsafe impl aya::Pod for CidrKey {}
    unsafe impl aya::Pod for PortRange {}
    unsafe impl aya::Pod for CidrValue {}
    unsafe impl aya::Pod for DnsServerKey {}
    unsafe impl aya::Pod for DnsSockInfo {}
    unsafe impl aya::Pod for GateKey {}
    unsafe impl aya::Pod for GateValue {}
    unsafe impl aya::Pod for GatePortKey {}
    unsafe impl aya::Pod for GatePortValue {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for RateState {}
    unsafe impl aya::Pod for LiveFlow {}
    unsafe impl aya::Pod for InboundKey {}
    unsafe impl aya::Pod for SockOwner {}
    unsafe impl aya::Pod for crate::FlowCounters {}
    unsafe impl aya::Pod for crate::flow::FlowDestKey {}
    unsafe impl aya::Pod for crate::flow::FlowDestSlot {}
}

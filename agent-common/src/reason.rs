//! Stable verdict reason codes, like cilium's `drop_reasons.h`: these numbers
//! are part of the log and metrics ABI. Never renumber; only append.

/// Why a hook reached its verdict. Values below 64 index the counter map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Destination IP+port was learned from an allowed DNS answer.
    AllowedFqdn = 1,
    /// Destination matched a static CIDR rule.
    AllowedCidr = 2,
    /// DNS traffic to one of the endpoint's trusted resolvers.
    AllowedDns = 3,
    /// The cgroup is below an attach point but is not a managed endpoint.
    AllowedUnmanaged = 4,
    /// Traffic on the workload's own loopback (its own network namespace).
    AllowedLoopback = 5,
    /// A DNS answer re-injected by the agent after it learned from it.
    AllowedInjected = 6,
    /// Ingress packet that needs no decision (not a DNS answer).
    AllowedIngress = 7,
    /// Reply traffic of a connection the workload accepted.
    AllowedInbound = 8,
    /// A packet of a connection allowed at connect time (its learned IP
    /// may have expired since; live connections keep going).
    AllowedEstablished = 9,
    /// A UDP `connect()` the policy would deny: it sends nothing, so it is
    /// let through and every datagram is judged per packet instead (keeps
    /// glibc's RFC 6724 address-sorting probes out of the blocked log).
    UdpConnectDeferred = 10,
    /// DNS over UDP from a namespace the agent has no gate in yet, kept in
    /// the namespace (socket bound to loopback) and answered by the agent:
    /// the query never leaves unchecked.
    DnsCaught = 11,
    /// The cgroup belongs to an exempt endpoint (`ENDPOINT_F_EXEMPT`).
    AllowedExempt = 12,
    /// Neighbour discovery on a pod's veth (ARP for the pod's own address,
    /// IPv6 ND and MLD to link-scope destinations): never leaves the link.
    AllowedNeighbor = 13,

    /// Destination is in an always-denied range (private, metadata, ...).
    DeniedRange = 20,
    /// Nothing in the policy allows the destination.
    DeniedDefault = 21,
    /// DNS (port 53) to a server that is not a trusted resolver.
    DeniedDnsServer = 22,
    /// The packet could not be parsed (truncated header, unknown family).
    DeniedMalformed = 23,
    /// A DNS answer was held for learning (the agent re-injects it).
    DnsHeld = 24,
    /// A DNS answer could not be handed to the agent (buffer full, no
    /// owner, too large): dropped, so nothing unlearned reaches the workload.
    DnsHoldFailed = 25,
    /// An internal error (map update failed): denied, fail closed.
    DeniedInternal = 26,
    /// A DNS query for a name the policy does not allow: answered by the
    /// agent (NXDOMAIN by default), it never reaches a resolver. Set in user
    /// space, which sees the query name.
    DeniedDnsName = 27,
    /// DNS over TCP from a network namespace the agent has no gate in yet
    /// (see `GATES`): refused, since its answer could not be learned from
    /// and its query could not be checked.
    DeniedDnsNoGate = 28,
    /// Source routing from an enforced endpoint: an IPv4 loose or strict
    /// source route option or an IPv6 routing header (the packet's IP
    /// destination would be the first hop, not what was allowed), refused
    /// at `setsockopt` and per packet (`agent_common::source_route`).
    DeniedSourceRoute = 29,
    /// A packet on a pod's veth whose source address is not the pod's
    /// (or an ARP claiming another address): forged, dropped.
    DeniedSpoofed = 30,
}

impl Reason {
    pub const MAX: u32 = 64;

    pub const fn is_allowed(self) -> bool {
        (self as u32) < 20
    }

    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::AllowedFqdn,
            2 => Self::AllowedCidr,
            3 => Self::AllowedDns,
            4 => Self::AllowedUnmanaged,
            5 => Self::AllowedLoopback,
            6 => Self::AllowedInjected,
            7 => Self::AllowedIngress,
            8 => Self::AllowedInbound,
            9 => Self::AllowedEstablished,
            10 => Self::UdpConnectDeferred,
            11 => Self::DnsCaught,
            12 => Self::AllowedExempt,
            13 => Self::AllowedNeighbor,
            20 => Self::DeniedRange,
            21 => Self::DeniedDefault,
            22 => Self::DeniedDnsServer,
            23 => Self::DeniedMalformed,
            24 => Self::DnsHeld,
            25 => Self::DnsHoldFailed,
            26 => Self::DeniedInternal,
            27 => Self::DeniedDnsName,
            28 => Self::DeniedDnsNoGate,
            29 => Self::DeniedSourceRoute,
            30 => Self::DeniedSpoofed,
            _ => return None,
        })
    }

    /// The name used in logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AllowedFqdn => "allowed-fqdn",
            Self::AllowedCidr => "allowed-cidr",
            Self::AllowedDns => "allowed-dns",
            Self::AllowedUnmanaged => "allowed-unmanaged",
            Self::AllowedLoopback => "allowed-loopback",
            Self::AllowedInjected => "allowed-injected",
            Self::AllowedIngress => "allowed-ingress",
            Self::AllowedInbound => "allowed-inbound",
            Self::AllowedEstablished => "allowed-established",
            Self::UdpConnectDeferred => "udp-connect-deferred",
            Self::DnsCaught => "dns-caught",
            Self::AllowedExempt => "allowed-exempt",
            Self::AllowedNeighbor => "allowed-neighbor",
            Self::DeniedRange => "denied-range",
            Self::DeniedDefault => "denied-default",
            Self::DeniedDnsServer => "denied-dns-server",
            Self::DeniedMalformed => "denied-malformed",
            Self::DnsHeld => "dns-held",
            Self::DnsHoldFailed => "dns-hold-failed",
            Self::DeniedInternal => "denied-internal",
            Self::DeniedDnsName => "denied-dns-name",
            Self::DeniedDnsNoGate => "denied-dns-no-gate",
            Self::DeniedSourceRoute => "denied-source-route",
            Self::DeniedSpoofed => "denied-spoofed",
        }
    }
}

/// The hook that produced a verdict; second dimension of the counter map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect4 = 0,
    Connect6 = 1,
    Sendmsg4 = 2,
    Sendmsg6 = 3,
    SkbEgress = 4,
    SkbIngress = 5,
    /// `cgroup/setsockopt`: options that would source-route.
    Setsockopt = 6,
    /// The pod's veth, packets from the pod (tc ingress on the host side).
    TcEgress = 7,
    /// The pod's veth, packets to the pod (tc egress on the host side).
    TcIngress = 8,
}

impl Hook {
    pub const COUNT: u32 = 9;
    /// The cgroup hooks (0..7), counted in `COUNTERS`; the veth hooks after
    /// them in `VETH_COUNTERS`, so `COUNTERS` keeps the layout a previous
    /// release pinned (its counters carry over an upgrade).
    pub const CGROUP_COUNT: u32 = 7;

    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Connect4,
            1 => Self::Connect6,
            2 => Self::Sendmsg4,
            3 => Self::Sendmsg6,
            4 => Self::SkbEgress,
            5 => Self::SkbIngress,
            6 => Self::Setsockopt,
            7 => Self::TcEgress,
            8 => Self::TcIngress,
            _ => return None,
        })
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connect4 => "connect4",
            Self::Connect6 => "connect6",
            Self::Sendmsg4 => "sendmsg4",
            Self::Sendmsg6 => "sendmsg6",
            Self::SkbEgress => "skb-egress",
            Self::SkbIngress => "skb-ingress",
            Self::Setsockopt => "setsockopt",
            Self::TcEgress => "tc-egress",
            Self::TcIngress => "tc-ingress",
        }
    }
}

/// Index of a verdict counter: into `COUNTERS` for a cgroup hook, and for a
/// veth hook `COUNTERS_LEN` plus its index into `VETH_COUNTERS` (the agent
/// reads the two maps as one list in this order).
#[inline(always)]
pub const fn counter_index(hook: Hook, reason: Reason) -> u32 {
    let h = hook as u32;
    if h < Hook::CGROUP_COUNT {
        h * Reason::MAX + (reason as u32)
    } else {
        COUNTERS_LEN + (h - Hook::CGROUP_COUNT) * Reason::MAX + (reason as u32)
    }
}

/// Entries of `VETH_COUNTERS`: the veth hooks' verdicts.
pub const VETH_COUNTERS_LEN: u32 = (Hook::COUNT - Hook::CGROUP_COUNT) * Reason::MAX;

/// Extra counters that are not verdicts (event losses), after the verdict block.
pub mod loss {
    use super::{Hook, Reason};
    pub const BASE: u32 = Hook::CGROUP_COUNT * Reason::MAX;
    /// A denied-attempt event was suppressed by the per-endpoint rate limit.
    pub const EVENT_RATE_LIMITED: u32 = BASE;
    /// A denied-attempt event was lost because the ring buffer was full.
    pub const EVENT_RINGBUF_FULL: u32 = BASE + 1;
    /// A DNS answer was dropped because the hold ring buffer was full.
    pub const DNS_RINGBUF_FULL: u32 = BASE + 2;
    /// A DNS answer was dropped because no owning process was recorded.
    pub const DNS_NO_OWNER: u32 = BASE + 3;
    /// A DNS answer was dropped because it is larger than `DNS_MAX_PACKET`.
    pub const DNS_TOO_LARGE: u32 = BASE + 4;
    pub const COUNT: u32 = 5;
}

/// Number of entries in the `COUNTERS` map.
pub const COUNTERS_LEN: u32 = loss::BASE + loss::COUNT;

//! Records the kernel sends to user space through ring buffers.

/// `DENIED_EVENTS`: one denied (or, in audit mode, would-be-denied) attempt.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeniedEvent {
    /// CLOCK_BOOTTIME nanoseconds.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub endpoint: u32,
    /// `Reason` code.
    pub reason: u32,
    /// `Hook` code.
    pub hook: u32,
    /// Thread-group id when the hook runs in process context, else 0.
    pub tgid: u32,
    /// 1 if the attempt was let through (audit mode).
    pub audit: u8,
    pub proto: u8,
    /// Destination port, network byte order.
    pub dport: [u8; 2],
    /// Host-side veth the packet crossed (`Hook::TcEgress`), else 0.
    pub ifindex: u32,
    /// Destination, IPv6 or IPv4-mapped.
    pub daddr: [u8; 16],
    /// `comm` of the current task when known, NUL padded.
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<DeniedEvent>() == 72);

/// Largest DNS answer packet (IP header included) the hold path carries.
pub const DNS_MAX_PACKET: usize = 4096 + 64;

/// `DnsHeldPacket::kind`: an answer held in `cgroup_skb/ingress`.
pub const DNS_KIND_ANSWER: u32 = 0;
/// `DnsHeldPacket::kind`: a copy of a query seen in `cgroup_skb/egress`
/// (the query itself goes on).
pub const DNS_KIND_QUERY: u32 = 1;
/// `DnsHeldPacket::kind`: a query caught in `cgroup_skb/egress` on its way
/// out of `lo`, where `connect4` sent it (the socket bound to `lo`, so the
/// datagram never leaves the namespace). From a namespace without a DNS
/// gate yet; the agent answers it.
pub const DNS_KIND_CAUGHT: u32 = 2;
/// `DnsHeldPacket::kind`: a query taken off the wire on a pod's host-side
/// veth (TC), dropped there; `data` starts at the Ethernet header. The
/// agent judges it, forwards it from the node and writes the answer back
/// onto the veth.
pub const DNS_KIND_VETH_QUERY: u32 = 3;

/// `DNS_HOLD`: a DNS answer held back (ingress: learned from, then
/// re-injected marked with `inject_mark`), or a copy of a query (egress:
/// recorded so the answer can be paired with it and checked).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsHeldPacket {
    pub ts_ns: u64,
    pub netns_cookie: u64,
    pub socket_cookie: u64,
    pub cgroup_id: u64,
    pub endpoint: u32,
    pub tgid: u32,
    /// Bytes of `data` in use; the packet starts at the IP header.
    pub len: u32,
    /// 4 or 6.
    pub family: u32,
    /// `DNS_KIND_*`.
    pub kind: u32,
    /// `DNS_KIND_VETH_QUERY`: the host-side veth it was taken from; else 0.
    pub ifindex: u32,
    /// `DNS_KIND_CAUGHT` sent to `DNS_PLACEHOLDER_V4`: the IPv6 resolver
    /// it was meant for (the packet itself is IPv4); else all zero.
    pub resolver: [u8; 16],
    pub data: [u8; DNS_MAX_PACKET],
}
const _: () = assert!(size_of::<DnsHeldPacket>() == 72 + DNS_MAX_PACKET);

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: repr(C), no implicit padding (size asserted), any bit pattern valid.
    unsafe impl aya::Pod for DeniedEvent {}
    unsafe impl aya::Pod for DnsHeldPacket {}
}

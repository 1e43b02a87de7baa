//! The pod's veth (TC) datapath: which host-side interface belongs to which
//! endpoint, the pod's own addresses on it, and the flows it already judged.
//! See docs/ARCHITECTURE.md "The pod's veth".

/// `TC_IFACES`: host-side veth ifindex -> the endpoint behind it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcIface {
    pub endpoint: u32,
    /// `ENDPOINT_F_*` bits (audit, exempt), as in `ENDPOINTS`.
    pub flags: u32,
    /// Bumped by the agent each time it (re)assigns this ifindex, so a flow
    /// judged for a previous pod on a recycled ifindex never passes
    /// (`TcFlowValue::epoch`).
    pub epoch: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<TcIface>() == 16);

/// `TcIface::flags` bit: the veth programs count this pod's flows
/// (`FLOW_COUNTERS`); set where no cgroup hook sees them (a sandboxed
/// runtime), so no flow is counted twice.
pub const TC_IFACE_F_FLOW_COUNTS: u32 = 1 << 8;

/// `POD_ADDRS`: (host-side ifindex, address) pairs the pod may send from;
/// anything else is a forged source and dropped (`DeniedSpoofed`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodAddrKey {
    pub ifindex: u32,
    /// IPv6 or IPv4-mapped.
    pub ip: [u8; 16],
}
const _: () = assert!(size_of::<PodAddrKey>() == 20);

/// `TC_FLOWS`: a flow the veth programs let through, seen from the pod
/// (`src` is the pod's address). Ports 0 for protocols without ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcFlowKey {
    pub ifindex: u32,
    pub proto: u8,
    pub _pad: u8,
    /// Network byte order.
    pub sport: [u8; 2],
    /// Network byte order.
    pub dport: [u8; 2],
    pub _pad2: [u8; 2],
    pub src: [u8; 16],
    pub dst: [u8; 16],
}
const _: () = assert!(size_of::<TcFlowKey>() == 44);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcFlowValue {
    /// `TcIface::epoch` when the flow was let through.
    pub epoch: u32,
    /// `TC_FLOW_F_*`.
    pub flags: u32,
}
const _: () = assert!(size_of::<TcFlowValue>() == 8);

/// The pod sent first and the verdict allowed it.
pub const TC_FLOW_F_JUDGED: u32 = 1;
/// A peer reached the pod first: the pod's replies on this exact flow pass.
pub const TC_FLOW_F_INBOUND: u32 = 2;

/// `VETH_TCP_DNS`: the agent's listener for DNS over TCP taken off pods'
/// veths (`agent/src/dnsgate/veth_tcp.rs`). `port` 0: none (TCP DNS on a
/// veth is refused).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VethTcpDns {
    /// The listener's port, network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
    /// `skb->mark` that routes such a segment to the node itself (the
    /// agent's policy route: `fwmark` -> a table with a local default).
    pub mark: u32,
}
const _: () = assert!(size_of::<VethTcpDns>() == 8);

/// Return codes shared by tcx (`TCX_NEXT`, `TCX_DROP`) and a clsact filter
/// in direct-action mode (`TC_ACT_UNSPEC`, `TC_ACT_SHOT`): "next" lets the
/// programs after ours (a CNI's) see the packet.
pub const TC_NEXT: i32 = -1;
pub const TC_DROP: i32 = 2;
/// Ends the chain and passes (`TCX_PASS`, `TC_ACT_OK`).
pub const TC_PASS: i32 = 0;

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: repr(C), no implicit padding (sizes asserted), any bit pattern valid.
    unsafe impl aya::Pod for TcIface {}
    unsafe impl aya::Pod for PodAddrKey {}
    unsafe impl aya::Pod for TcFlowKey {}
    unsafe impl aya::Pod for TcFlowValue {}
    unsafe impl aya::Pod for VethTcpDns {}
}

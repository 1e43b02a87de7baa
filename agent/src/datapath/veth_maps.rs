//! The veth datapath's maps (`agent-ebpf/src/veth.rs`): which host-side
//! interface is which endpoint's (`TC_IFACES`), the pod's own addresses
//! (`POD_ADDRS`) and the flows already let through (`TC_FLOWS`).

use std::net::IpAddr;

use agent_common::{PodAddrKey, TcFlowKey, TcFlowValue, TcIface, VethTcpDns};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError},
};

use super::{error::LoadError, take};

pub struct VethMaps {
    ifaces: HashMap<MapData, u32, TcIface>,
    pod_addrs: HashMap<MapData, PodAddrKey, u32>,
    flows: HashMap<MapData, TcFlowKey, TcFlowValue>,
    tcp_dns: Array<MapData, VethTcpDns>,
    /// The last epoch handed out (found in the maps once, then counted up).
    last_epoch: Option<u32>,
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

/// IPv4 as IPv4-mapped, as the kernel keys it.
fn key_ip(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl VethMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            ifaces: take(ebpf, "TC_IFACES")?,
            pod_addrs: take(ebpf, "POD_ADDRS")?,
            flows: take(ebpf, "TC_FLOWS")?,
            tcp_dns: take(ebpf, "VETH_TCP_DNS")?,
            last_epoch: None,
        })
    }

    /// Assigns `ifindex` to `endpoint` with `flags` (`ENDPOINT_F_*`). The
    /// pod's addresses go in first, the interface last, so the programs
    /// never see an interface without its addresses. A new assignment gets
    /// a new epoch: flows judged for whatever had this ifindex before do
    /// not pass.
    pub fn assign(&mut self, ifindex: u32, endpoint: u32, flags: u32, addrs: &[IpAddr]) -> Result<(), MapError> {
        self.set_addrs(ifindex, addrs)?;
        let old = self.ifaces.get(&ifindex, 0).ok();
        let epoch = match old {
            Some(o) if o.endpoint == endpoint => o.epoch,
            _ => self.next_epoch(),
        };
        self.ifaces.insert(ifindex, TcIface { endpoint, flags, epoch, _pad: 0 }, 0)
    }

    /// An epoch no interface uses now (flows of a removed interface may
    /// still sit in the LRU under an old one). The maps (a previous
    /// agent's, when adopted) are read for the highest epoch only once:
    /// walking the flow table for every new pod would cost start-up time.
    fn next_epoch(&mut self) -> u32 {
        let last = match self.last_epoch {
            Some(e) => e,
            None => {
                let used = self.ifaces.iter().filter_map(Result::ok).map(|(_, v)| v.epoch).max().unwrap_or(0);
                let flows = self.flows.iter().filter_map(Result::ok).map(|(_, v)| v.epoch).max().unwrap_or(0);
                used.max(flows)
            }
        };
        let next = last.wrapping_add(1);
        self.last_epoch = Some(next);
        next
    }

    /// Replaces the addresses the pod may send from on `ifindex`.
    pub fn set_addrs(&mut self, ifindex: u32, addrs: &[IpAddr]) -> Result<(), MapError> {
        let want: Vec<PodAddrKey> = addrs.iter().map(|a| PodAddrKey { ifindex, ip: key_ip(*a) }).collect();
        for k in &want {
            self.pod_addrs.insert(*k, 1, 0)?;
        }
        let stale: Vec<PodAddrKey> =
            self.pod_addrs.keys().filter_map(Result::ok).filter(|k| k.ifindex == ifindex && !want.contains(k)).collect();
        for k in stale {
            ignore_missing(self.pod_addrs.remove(&k))?;
        }
        Ok(())
    }

    /// New flags for an assigned interface (mode changed).
    /// Sets the endpoint's `ENDPOINT_F_*` bits; the interface's own
    /// (`TC_IFACE_F_FLOW_COUNTS`) stay.
    pub fn set_flags(&mut self, ifindex: u32, flags: u32) -> Result<(), MapError> {
        let mut v = self.ifaces.get(&ifindex, 0)?;
        v.flags = flags | (v.flags & agent_common::TC_IFACE_F_FLOW_COUNTS);
        self.ifaces.insert(ifindex, v, 0)
    }

    /// Forgets `ifindex`: the interface first (its programs, if still
    /// attached, then drop everything), then its addresses and flows.
    pub fn unassign(&mut self, ifindex: u32) -> Result<(), MapError> {
        ignore_missing(self.ifaces.remove(&ifindex))?;
        self.set_addrs(ifindex, &[])?;
        let flows: Vec<TcFlowKey> = self.flows.keys().filter_map(Result::ok).filter(|k| k.ifindex == ifindex).collect();
        for k in flows {
            ignore_missing(self.flows.remove(&k))?;
        }
        Ok(())
    }

    /// Forgets the flows of `ifindex` except TCP ones (a policy changed:
    /// established connections go on, as on the cgroup side, while every
    /// other flow's next packet is judged by the new policy).
    pub fn forget_flows_but_tcp(&mut self, ifindex: u32) -> Result<(), MapError> {
        let flows: Vec<TcFlowKey> = self
            .flows
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.ifindex == ifindex && k.proto != agent_common::proto::TCP)
            .collect();
        for k in flows {
            ignore_missing(self.flows.remove(&k))?;
        }
        Ok(())
    }

    /// Where the veth programs hand DNS over TCP (`port` 0: nowhere, it is
    /// refused).
    pub fn set_tcp_dns(&mut self, port: u16, mark: u32) -> Result<(), MapError> {
        self.tcp_dns.set(0, VethTcpDns { port: port.to_be_bytes(), _pad: [0; 2], mark }, 0)
    }

    /// Every assigned interface (a previous agent's, when adopting).
    pub fn assigned(&self) -> Vec<(u32, TcIface)> {
        self.ifaces.iter().filter_map(Result::ok).collect()
    }
}

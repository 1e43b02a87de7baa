//! An endpoint's host-side veths: the interface and the pod's addresses on
//! it go into the veth datapath's maps (`datapath/veth_maps.rs`), judged
//! by the endpoint's policy and mode like its cgroup.

use std::net::IpAddr;

use super::{State, StateError, map_err};

impl State {
    /// Judges what crosses `ifindex` (host side) by endpoint `id`'s policy;
    /// `addrs` are the pod's addresses (any other source is dropped). Again
    /// for the same interface: the addresses are replaced.
    /// `counts`: the veth programs count the endpoint's flows
    /// (`TC_IFACE_F_FLOW_COUNTS`).
    pub fn add_veth(&mut self, id: u32, ifindex: u32, addrs: &[IpAddr], counts: bool) -> Result<(), StateError> {
        if let Some(other) = self.endpoints.values().find(|e| e.id != id && e.veths.contains(&ifindex)) {
            return Err(StateError::VethTaken { ifindex, endpoint: other.id });
        }
        let ep = self.endpoints.get(&id).ok_or(StateError::UnknownEndpoint(id))?;
        let flags = ep.mode.flags() | if counts { agent_common::TC_IFACE_F_FLOW_COUNTS } else { 0 };
        self.maps.veth().assign(ifindex, id, flags, addrs).map_err(map_err("TC_IFACES"))?;
        self.maps.veths_changed().map_err(map_err("CONFIG"))?;
        let ep = self.endpoints.get_mut(&id).ok_or(StateError::UnknownEndpoint(id))?;
        if !ep.veths.contains(&ifindex) {
            ep.veths.push(ifindex);
        }
        Ok(())
    }

    /// Stops judging `ifindex` for endpoint `id` (the interface is gone, or
    /// the programs were detached): everything the maps held for it goes.
    pub fn remove_veth(&mut self, id: u32, ifindex: u32) -> Result<(), StateError> {
        let ep = self.endpoints.get_mut(&id).ok_or(StateError::UnknownEndpoint(id))?;
        ep.veths.retain(|i| *i != ifindex);
        self.maps.veth().unassign(ifindex).map_err(map_err("TC_IFACES"))?;
        self.maps.veths_changed().map_err(map_err("CONFIG"))
    }
}

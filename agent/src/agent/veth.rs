//! The agent's side of the pods' veths: the veth programs attached to an
//! endpoint's host-side interfaces, the maps that say whose they are, and
//! the DNS server for queries they take off the wire.

use std::{
    collections::HashMap,
    net::IpAddr,
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
};

use anyhow::{Context as _, Result};

use super::Agent;
use crate::{
    datapath::{Datapath, Pins},
    dnsgate::{hold::HoldPath, veth::VethDns},
    veth::attach::VethAttachments,
};

pub(super) struct Veths {
    attachments: VethAttachments,
    /// Interface -> endpoint.
    owners: HashMap<u32, u32>,
    dns: Arc<VethDns>,
}

/// Opens the veth DNS server in `node_ns` and readies the attachments.
pub(super) fn start(
    gate: HoldPath,
    datapath: &Datapath,
    node_ns: OwnedFd,
    mark: u32,
    pins: Option<Pins>,
) -> Result<(HoldPath, Veths)> {
    let dns = VethDns::open(gate.engine().clone(), node_ns.as_fd(), mark).context("opening the veth DNS sockets")?;
    let programs = datapath.veth_programs()?;
    let veths = Veths { attachments: VethAttachments::new(node_ns, programs, pins), owners: HashMap::new(), dns: dns.clone() };
    Ok((gate.with_veth_dns(dns), veths))
}

impl Agent {
    /// Judges every packet crossing the host-side veth `ifindex` (in the
    /// node's namespace) by endpoint `id`'s policy; `addrs` are the pod's
    /// own addresses (any other source is dropped). The maps first, then
    /// the programs: enforcing when this returns.
    pub fn attach_veth(&mut self, id: u32, ifindex: u32, addrs: &[IpAddr]) -> Result<()> {
        let veths = self.veths.as_mut().context("no node network namespace for the veth programs")?;
        self.enforcer.add_veth(id, ifindex, addrs)?;
        if let Err(e) = veths.attachments.attach(ifindex) {
            let _ = self.enforcer.remove_veth(id, ifindex);
            return Err(e).context("attaching the veth programs");
        }
        veths.owners.insert(ifindex, id);
        Ok(())
    }

    /// Attaches the veth programs to a new interface nobody claimed yet
    /// (`veth::watch`): it drops everything until `attach_veth` assigns it
    /// to a pod (fail closed). One a previous agent left assigned in the
    /// pinned maps keeps its assignment.
    pub fn guard_veth(&mut self, ifindex: u32) -> Result<()> {
        let veths = self.veths.as_mut().context("no node network namespace for the veth programs")?;
        veths.attachments.attach(ifindex).context("attaching the veth programs")
    }

    /// The interface is gone: its programs and its entries go.
    pub fn forget_veth(&mut self, ifindex: u32) -> Result<()> {
        let Some(veths) = self.veths.as_mut() else { return Ok(()) };
        veths.attachments.detach(ifindex).with_context(|| format!("detaching from interface {ifindex}"))?;
        if let Some(id) = veths.owners.remove(&ifindex) {
            self.enforcer.remove_veth(id, ifindex)?;
        }
        Ok(())
    }

    /// How the veth programs attach on this kernel (`tcx`, `clsact`).
    pub fn veth_mode(&self) -> Option<&'static str> {
        self.veths.as_ref().map(|v| v.attachments.mode().as_str())
    }

    /// Detaches the veth programs from endpoint `id`'s interfaces.
    pub(super) fn detach_veths_of(&mut self, id: u32) -> Result<()> {
        let Some(veths) = self.veths.as_mut() else { return Ok(()) };
        let mine: Vec<u32> = veths.owners.iter().filter(|(_, e)| **e == id).map(|(i, _)| *i).collect();
        for ifindex in mine {
            veths.attachments.detach(ifindex).with_context(|| format!("detaching from interface {ifindex}"))?;
            veths.owners.remove(&ifindex);
            self.enforcer.remove_veth(id, ifindex)?;
        }
        Ok(())
    }

    /// At shutdown: the DNS server stops; unpinned, the programs detach.
    pub(super) fn stop_veths(&mut self) {
        let pinned = self.pins.is_some();
        if let Some(v) = self.veths.as_mut() {
            v.dns.stop();
            if !pinned {
                v.attachments.detach_all();
            }
        }
    }
}

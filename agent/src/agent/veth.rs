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
    datapath::{Datapath, Pins, local_route::LocalRoute},
    dnsgate::{
        hold::HoldPath,
        netns::veth_tcp::{PodAddrs, VethTcpGate},
        veth::VethDns,
    },
    enforcer::Enforcer,
    util::{in_netns, lock},
    veth::attach::VethAttachments,
};

pub(super) struct Veths {
    attachments: VethAttachments,
    /// Interface -> endpoint.
    owners: HashMap<u32, u32>,
    /// Interface -> the pod's addresses on it, and address -> endpoint for
    /// the TCP DNS gate.
    addrs: HashMap<u32, Vec<IpAddr>>,
    pods: PodAddrs,
    dns: Arc<VethDns>,
    tcp: VethTcpGate,
    route: LocalRoute,
    node_ns: OwnedFd,
}

/// The mark and policy route that deliver DNS over TCP from pods' veths to
/// the node itself (`datapath::local_route`).
const TCP_DNS_ROUTE: LocalRoute = LocalRoute { mark: 0x5043_0000, table: 0x5043, priority: 90 };

/// Opens the veth DNS server in `node_ns` and readies the attachments.
pub(super) fn start(
    gate: HoldPath,
    datapath: &Datapath,
    enforcer: &Enforcer,
    node_ns: OwnedFd,
    mark: u32,
    pins: Option<Pins>,
) -> Result<(HoldPath, Veths)> {
    let dns = VethDns::open(gate.engine().clone(), node_ns.as_fd(), mark).context("opening the veth DNS sockets")?;
    let pods = PodAddrs::default();
    let tcp = VethTcpGate::open(gate.engine().clone(), node_ns.as_fd(), pods.clone()).context("opening the veth TCP DNS gate")?;
    in_netns(node_ns.as_fd(), || TCP_DNS_ROUTE.add())?.context("adding the policy route for DNS over TCP from veths")?;
    enforcer.set_veth_tcp_dns(tcp.port, TCP_DNS_ROUTE.mark).context("VETH_TCP_DNS")?;
    let programs = datapath.veth_programs()?;
    let attachments = VethAttachments::new(node_ns.try_clone()?, programs, pins);
    let veths = Veths {
        attachments,
        owners: HashMap::new(),
        addrs: HashMap::new(),
        pods,
        dns: dns.clone(),
        tcp,
        route: TCP_DNS_ROUTE,
        node_ns,
    };
    Ok((gate.with_veth_dns(dns), veths))
}

impl Veths {
    /// The pod's addresses on `ifindex`, for the TCP DNS gate.
    fn set_addrs(&mut self, ifindex: u32, id: u32, addrs: &[IpAddr]) {
        let mut pods = lock(&self.pods);
        for a in self.addrs.remove(&ifindex).unwrap_or_default() {
            pods.remove(&a);
        }
        for a in addrs {
            pods.insert(a.to_canonical(), id);
        }
        if !addrs.is_empty() {
            self.addrs.insert(ifindex, addrs.iter().map(|a| a.to_canonical()).collect());
        }
    }
}

impl Agent {
    /// Judges every packet crossing the host-side veth `ifindex` (in the
    /// node's namespace) by endpoint `id`'s policy; `addrs` are the pod's
    /// own addresses (any other source is dropped). The maps first, then
    /// the programs: enforcing when this returns.
    /// `counts`: the veth programs count the endpoint's flows (no cgroup
    /// hook sees them: a sandboxed runtime, `exec --veth-only`).
    pub fn attach_veth(&mut self, id: u32, ifindex: u32, addrs: &[IpAddr], counts: bool) -> Result<()> {
        let veths = self.veths.as_mut().context("no node network namespace for the veth programs")?;
        self.enforcer.add_veth(id, ifindex, addrs, counts)?;
        if let Err(e) = veths.attachments.attach(ifindex) {
            let _ = self.enforcer.remove_veth(id, ifindex);
            return Err(e).context("attaching the veth programs");
        }
        veths.owners.insert(ifindex, id);
        veths.set_addrs(ifindex, id, addrs);
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
            veths.set_addrs(ifindex, id, &[]);
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
            veths.set_addrs(ifindex, id, &[]);
            self.enforcer.remove_veth(id, ifindex)?;
        }
        Ok(())
    }

    /// At shutdown: the DNS server stops; unpinned, the programs detach.
    pub(super) fn stop_veths(&mut self) {
        let pinned = self.pins.is_some();
        if let Some(v) = self.veths.as_mut() {
            v.dns.stop();
            v.tcp.stop();
            if !pinned {
                // Node mode leaves both for the next agent (TCP DNS is
                // refused while no listener is up).
                v.attachments.detach_all();
                let _ = self.enforcer.set_veth_tcp_dns(0, 0);
                let route = v.route;
                if let Err(e) = in_netns(v.node_ns.as_fd(), || route.remove()).map_err(anyhow::Error::from).and_then(|r| Ok(r?)) {
                    tracing::warn!(error = %format!("{e:#}"), "removing the policy route for DNS over TCP from veths");
                }
            }
        }
    }
}

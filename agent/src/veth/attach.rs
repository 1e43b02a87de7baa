//! The veth programs on pods' host-side interfaces, per interface:
//! attached (`datapath::tc`: tcx first in line, or a clsact filter on
//! kernels before 6.6), remembered, detached. Every call runs on a thread
//! in the node's namespace, where the interfaces are.
//!
//! Node mode (pins): a tcx link is pinned (`Pins::veth_link`), so it
//! outlives the agent and the pod's veth stays enforced through a restart
//! or upgrade; the next agent swaps its own program into the pinned link
//! (`BPF_LINK_UPDATE`), as for the cgroup links. A clsact filter needs no
//! pin: it stays until removed, and the next agent replaces it in place.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd as _, OwnedFd},
};

use tracing::{debug, info};

use crate::{
    datapath::{
        Pins,
        loader::VethProgram,
        pin,
        tc::{self, TcMode},
    },
    util::in_netns,
};

pub struct VethAttachments {
    node_ns: OwnedFd,
    mode: TcMode,
    programs: Vec<VethProgram>,
    pins: Option<Pins>,
    /// Attached interfaces; with tcx, their links (closing one detaches
    /// it unless it is pinned).
    attached: HashMap<u32, Vec<OwnedFd>>,
}

impl VethAttachments {
    /// `node_ns`: the namespace holding the pods' host-side veths. With
    /// `pins`, pinned links of interfaces that are gone are removed.
    pub fn new(node_ns: OwnedFd, programs: Vec<VethProgram>, pins: Option<Pins>) -> Self {
        let mode = TcMode::for_this_kernel();
        info!(mode = mode.as_str(), "veth programs attach with {}", mode.as_str());
        let me = Self { node_ns, mode, programs, pins, attached: HashMap::new() };
        me.retire_gone();
        me
    }

    fn retire_gone(&self) {
        let Some(pins) = &self.pins else { return };
        for (ifindex, path) in pins.veth_links().unwrap_or_default() {
            if !crate::veth::link_exists(&self.node_ns, ifindex).unwrap_or(true) {
                debug!(ifindex, "unpinning the veth link of an interface that is gone");
                let _ = pin::unpin(&path);
            }
        }
    }

    pub fn mode(&self) -> TcMode {
        self.mode
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.attached.contains_key(&ifindex)
    }

    /// Attaches both programs to `ifindex` (of the node's namespace), or
    /// neither. A pinned link of a previous agent gets this agent's program.
    pub fn attach(&mut self, ifindex: u32) -> io::Result<()> {
        if self.is_attached(ifindex) {
            return Ok(());
        }
        let (mode, programs, pins) = (self.mode, &self.programs, self.pins.as_ref());
        let links = in_netns(self.node_ns.as_fd(), || -> io::Result<Vec<OwnedFd>> {
            let mut links = Vec::new();
            for (i, p) in programs.iter().enumerate() {
                let done = match mode {
                    TcMode::Tcx => tcx(ifindex, p, pins).map(|l| links.extend(l)),
                    TcMode::Clsact => tc::clsact_attach(ifindex, p.fd.as_fd(), p.name, p.dir),
                };
                if let Err(e) = done {
                    // tcx links made so far close with `links` (a pinned
                    // one of a previous agent stays as it was).
                    if mode == TcMode::Clsact {
                        for q in &programs[..i] {
                            let _ = tc::clsact_detach(ifindex, q.dir);
                        }
                    }
                    return Err(io::Error::new(e.kind(), format!("attaching {} to interface {ifindex}: {e}", p.name)));
                }
            }
            Ok(links)
        })??;
        self.attached.insert(ifindex, links);
        Ok(())
    }

    /// Detaches from `ifindex` (an interface that is gone already is fine).
    pub fn detach(&mut self, ifindex: u32) -> io::Result<()> {
        let Some(links) = self.attached.remove(&ifindex) else { return Ok(()) };
        if let Some(pins) = &self.pins {
            for p in &self.programs {
                pin::unpin(&pins.veth_link(ifindex, p.name)).map_err(io::Error::other)?;
            }
        }
        drop(links);
        if self.mode == TcMode::Clsact {
            let programs = &self.programs;
            in_netns(self.node_ns.as_fd(), || -> io::Result<()> {
                for p in programs {
                    tc::clsact_detach(ifindex, p.dir)?;
                }
                Ok(())
            })??;
        }
        Ok(())
    }

    /// Detaches from every interface.
    pub fn detach_all(&mut self) {
        let all: Vec<u32> = self.attached.keys().copied().collect();
        for ifindex in all {
            if let Err(e) = self.detach(ifindex) {
                tracing::warn!(error = %e, ifindex, "detaching the veth programs failed");
            }
        }
    }
}

/// A tcx link of `p` on `ifindex`, in front of everything there; pinned in
/// node mode, where a previous agent's pinned link is updated instead
/// (`None`: nothing new to hold).
fn tcx(ifindex: u32, p: &VethProgram, pins: Option<&Pins>) -> io::Result<Option<OwnedFd>> {
    let Some(pins) = pins else {
        return tc::tcx_attach(ifindex, p.fd.as_fd(), p.dir).map(Some);
    };
    let path = pins.veth_link(ifindex, p.name);
    if path.exists() {
        match pin::update_pinned_link(&path, p.fd.as_fd()) {
            Ok(()) => return Ok(None),
            // Defunct (its interface went, and the index came back for
            // another): a new link below.
            Err(e) => {
                debug!(error = %e, ifindex, "a pinned veth link could not be updated; replaced");
                pin::unpin(&path).map_err(io::Error::other)?;
            }
        }
    }
    let link = tc::tcx_attach(ifindex, p.fd.as_fd(), p.dir)?;
    pin::obj_pin(link.as_fd(), &path)?;
    Ok(Some(link))
}

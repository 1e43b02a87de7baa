//! The veth programs on pods' host-side interfaces, per interface:
//! attached (`datapath::tc`: tcx first in line, or a clsact filter on
//! kernels before 6.6), remembered, detached. Every call runs on a thread
//! in the node's namespace, where the interfaces are.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd as _, OwnedFd},
};

use tracing::info;

use crate::{
    datapath::{
        loader::VethProgram,
        tc::{self, TcMode},
    },
    util::in_netns,
};

pub struct VethAttachments {
    node_ns: OwnedFd,
    mode: TcMode,
    programs: Vec<VethProgram>,
    /// Attached interfaces; with tcx, their links (closing one detaches).
    attached: HashMap<u32, Vec<OwnedFd>>,
}

impl VethAttachments {
    /// `node_ns`: the namespace holding the pods' host-side veths.
    pub fn new(node_ns: OwnedFd, programs: Vec<VethProgram>) -> Self {
        let mode = TcMode::for_this_kernel();
        info!(mode = mode.as_str(), "veth programs attach with {}", mode.as_str());
        Self { node_ns, mode, programs, attached: HashMap::new() }
    }

    pub fn mode(&self) -> TcMode {
        self.mode
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.attached.contains_key(&ifindex)
    }

    /// Attaches both programs to `ifindex` (of the node's namespace), or
    /// neither.
    pub fn attach(&mut self, ifindex: u32) -> io::Result<()> {
        if self.is_attached(ifindex) {
            return Ok(());
        }
        let (mode, programs) = (self.mode, &self.programs);
        let links = in_netns(self.node_ns.as_fd(), || -> io::Result<Vec<OwnedFd>> {
            let mut links = Vec::new();
            for (i, p) in programs.iter().enumerate() {
                let done = match mode {
                    TcMode::Tcx => tc::tcx_attach(ifindex, p.fd.as_fd(), p.dir).map(|l| links.push(l)),
                    TcMode::Clsact => tc::clsact_attach(ifindex, p.fd.as_fd(), p.name, p.dir),
                };
                if let Err(e) = done {
                    // tcx links made so far close with `links`.
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

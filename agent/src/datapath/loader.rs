//! Loads the embedded eBPF object and attaches its eleven programs to a cgroup.
//!
//! Every program is attached the same way, by its descriptor and attach
//! type (`attach`): `bpf_link`s (`BPF_LINK_CREATE`, Linux 5.7) held by the
//! datapath (`run` without pins: they go with the agent) or pinned with the
//! maps (`run --pin-path`: they stay and keep enforcing until a new agent
//! swaps in its programs), or `BPF_PROG_ATTACH` to the cgroup itself
//! (`exec`: it stays until the cgroup goes). Cgroup links always behave
//! like `BPF_F_ALLOW_MULTI` (the kernel refuses the flag itself): the kernel
//! runs ours *and* any other agent's (Cilium's) programs on the hierarchy,
//! and a packet passes only if all of them allow it. Portcullis composes
//! with another CNI instead of replacing its hooks.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use agent_common::Config;
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockopt, SchedClassifier},
};

use super::{
    attach,
    error::LoadError,
    maps::PolicyMaps,
    pin::{self, Pins},
    probe,
    programs::{Kind, MAPS, OBJECT, PROGRAMS, Program, VETH_PROGRAMS, program},
    solo::{self, SoloHooks},
    verdict_cache::SoloCache,
};

/// How `Datapath::attach` attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// By links that live as long as the `Datapath` (`run` without pins).
    Links,
    /// To the cgroup itself, for as long as it exists (`exec`: a killed
    /// agent leaves its cgroup enforced; `attach` module).
    UntilCgroupRemoved,
}

/// A loaded datapath: programs (attached or not), policy maps, ring buffers.
pub struct Datapath {
    ebpf: Ebpf,
    maps: Option<PolicyMaps>,
    denied_events: Option<RingBuf<MapData>>,
    dns_hold: Option<RingBuf<MapData>>,
    kernel_log: Option<super::kernel_log::KernelLog>,
    /// Loaded for one attach point (`load`): its own verdict cache, handed
    /// out at that attach; the attach point, once attached.
    one_attach_point: bool,
    own_cache: Option<SoloCache>,
    attached_at: Option<PathBuf>,
    /// `Attachment::Links`, per attach point (cgroup id): the links, closed
    /// (detached) by `detach` or with the datapath.
    links: HashMap<u64, Vec<OwnedFd>>,
}

impl Datapath {
    /// Loads and verifies every program; attaches nothing yet. With `pins`,
    /// the maps are the pinned ones if a previous agent left them (then the
    /// kernel's config is kept, apart from the fields `config` sets below),
    /// else created and pinned.
    ///
    /// `one_attach_point`: this load will be attached at one cgroup only,
    /// an endpoint's own (`exec`). Its connect/sendmsg verdict cache is then
    /// `SOLO_CACHE`, a per-CPU array of this load, which a cache hit reaches
    /// without a helper call (the verifier inlines the lookup); cgroup
    /// storage, which any number of attach points can share one program
    /// with, costs a `bpf_get_local_storage` call (docs/ARCHITECTURE.md
    /// "Costs" has the measurements).
    pub fn load(config: Config, pins: Option<&Pins>, one_attach_point: bool) -> Result<Self, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let adopting = pins.is_some_and(Pins::has_state);
        let mut loader = EbpfLoader::new();
        if let Some(p) = pins {
            for m in MAPS {
                loader.map_pin_path(m.name, p.map(m.name));
            }
        }
        if one_attach_point {
            // Read-only data: the verifier knows it and prunes the other path.
            loader.override_global("SOLO_ATTACH", &1u32, true);
        }
        let skb_netns_helper = u32::from(probe::features().skb_netns_cookie);
        loader.override_global("SKB_NETNS_HELPER", &skb_netns_helper, true);
        let flow_counting = super::programs::flow_counting();
        loader.override_global("FLOW_COUNTING", &flow_counting, true);
        let mut ebpf = loader.load(OBJECT)?;
        for p in &PROGRAMS {
            if pins.is_some() && p.cache_slot.is_some() {
                // With pins, each attach point gets these from a load of its
                // own (`attach_pinned`): not verified here for nothing.
                continue;
            }
            load_program(&mut ebpf, p)?;
        }
        for (name, _) in VETH_PROGRAMS {
            program::<SchedClassifier>(&mut ebpf, name)?.load().map_err(|source| LoadError::Program { name, source })?;
        }
        let mut maps = PolicyMaps::take(&mut ebpf)?;
        let own_cache = if one_attach_point {
            let map = ebpf.take_map("SOLO_CACHE").ok_or(LoadError::MissingMap("SOLO_CACHE"))?;
            Some(SoloCache::try_from(map).map_err(|source| LoadError::Map { name: "SOLO_CACHE", source })?)
        } else {
            None
        };
        if let Some(p) = pins.filter(|_| adopting) {
            // Per-attach-point loads of a previous agent (`solo`): the same.
            solo::disable_pinned(p)?;
        }
        if adopting {
            // The previous agent's cached verdicts: off until this agent,
            // with its own view of the policy, turns them on at attach.
            for (cgroup_id, _) in maps.kernel_endpoints() {
                maps.verdict_cache().disable(cgroup_id).map_err(|source| LoadError::Map { name: "VERDICT_CACHE", source })?;
            }
        }
        let config = if adopting {
            // Keep what the running datapath relies on: the mark of
            // re-injected answers, the cache generation, readiness.
            let old = maps.read_config()?;
            Config { generation: old.generation, inject_mark: old.inject_mark, agent_ready: old.agent_ready, ..config }
        } else {
            config
        };
        maps.set_config(&config)?;
        let denied_events = Some(ring(&mut ebpf, "DENIED_EVENTS")?);
        let dns_hold = Some(ring(&mut ebpf, "DNS_HOLD")?);
        // Without it the rare events still count; they are not logged.
        let kernel_log = super::kernel_log::KernelLog::take(&mut ebpf)
            .map_err(|e| tracing::warn!(error = %e, "no kernel log ring; rare kernel events are only counted"))
            .ok();
        Ok(Self {
            ebpf,
            maps: Some(maps),
            denied_events,
            dns_hold,
            kernel_log,
            one_attach_point,
            own_cache,
            attached_at: None,
            links: HashMap::new(),
        })
    }

    /// Attaches all programs to the cgroup directory `cgroup`: by links
    /// that live as long as this `Datapath` (dropping it detaches
    /// everything), or to the cgroup for as long as it exists
    /// (`Attachment`). Returns the attach point's own verdict cache if this
    /// load has one (loaded for one attach point); else the programs use
    /// cgroup storage.
    pub fn attach(&mut self, cgroup: &Path, cgroup_id: u64, how: Attachment) -> Result<Option<SoloCache>, LoadError> {
        self.claim_attach_point(cgroup)?;
        let file = File::open(cgroup).map_err(|source| LoadError::Cgroup { path: cgroup.to_owned(), source })?;
        let mut links = Vec::new();
        for p in &PROGRAMS {
            let (name, fd, kind) = (p.name, attachable(&self.ebpf, p.name)?, p.attach_type);
            // On a failure, the links made so far close with `links`.
            match how {
                Attachment::UntilCgroupRemoved => attach::attach_to_cgroup(file.as_fd(), fd, kind),
                Attachment::Links => attach::link_create(file.as_fd(), fd, kind).map(|link| links.push(link)),
            }
            .map_err(|source| LoadError::Attach { name, source })?;
        }
        if !links.is_empty() {
            self.links.entry(cgroup_id).or_default().extend(links);
        }
        Ok(self.own_cache.take())
    }

    /// Detaches every program from the attach point `cgroup_id`: closes its
    /// links, or unpins them (with its own load's cache) in node mode. The
    /// kernel frees a per-attach-point load once its last link is gone.
    pub fn detach(&mut self, cgroup_id: u64, pins: Option<&Pins>) -> Result<(), LoadError> {
        drop(self.links.remove(&cgroup_id));
        if let Some(p) = pins {
            p.unlink_cgroup(cgroup_id)
                .map_err(|e| LoadError::Pin { what: format!("links of cgroup {cgroup_id}"), source: io::Error::other(e) })?;
        }
        Ok(())
    }

    /// Attaches every program to `cgroup` with pinned links: where a link of
    /// a previous agent is pinned, this agent's program replaces its program
    /// atomically; else a new link is made and pinned. The links outlive
    /// this process. The four cached socket hooks come from a load of their
    /// own for this attach point (`solo`), whose verdict cache is returned.
    pub fn attach_pinned(&mut self, cgroup: &Path, cgroup_id: u64, pins: &Pins) -> Result<Option<SoloCache>, LoadError> {
        self.claim_attach_point(cgroup)?;
        let file = File::open(cgroup).map_err(|source| LoadError::Cgroup { path: cgroup.to_owned(), source })?;
        let pin_err = |what: String| move |source| LoadError::Pin { what, source };
        let mut solo = SoloHooks::load(pins)?;
        for p in &PROGRAMS {
            let (name, kind) = (p.name, p.attach_type);
            let path = pins.link(cgroup_id, name);
            let fd = if p.cache_slot.is_some() {
                solo.program(name)?.fd().map_err(|source| LoadError::Program { name, source })?.as_fd()
            } else {
                attachable(&self.ebpf, name)?
            };
            if path.exists() {
                // The kernel keeps the link's cgroup storage (kernel/bpf/
                // cgroup.c `__cgroup_bpf_replace` allocates none); no
                // program swapped in here reads it: the cached hooks use
                // their own load's cache, the others no cache.
                pin::update_pinned_link(&path, fd).map_err(pin_err(path.display().to_string()))?;
            } else if let Some(old) = pins.legacy_link(cgroup_id, name) {
                // The previous release's link: our program first, then it
                // is pinned under this layout's name.
                pin::update_pinned_link(&old, fd).map_err(pin_err(old.display().to_string()))?;
                pins.adopt_legacy_link(&old, &path)
                    .map_err(|e| LoadError::Pin { what: path.display().to_string(), source: io::Error::other(e) })?;
            } else {
                let link = attach::link_create(file.as_fd(), fd, kind).map_err(|source| LoadError::Attach { name, source })?;
                pin::obj_pin(link.as_fd(), &path).map_err(pin_err(path.display().to_string()))?;
            }
        }
        solo.take_cache(pins, cgroup_id).map(Some)
    }

    /// Whether every program can be attached at `cgroup`, tried with links
    /// that are closed at once: so a cgroup where some hook types are
    /// refused (an ancestor holds a program attached without
    /// `BPF_F_ALLOW_MULTI`, e.g. Cilium's socket LB from before 1.14, which
    /// makes the kernel refuse with EPERM) is found before anything is
    /// attached for real, never half-attached.
    pub fn probe_attach(&self, cgroup: &Path, pins: Option<&Pins>) -> Result<(), LoadError> {
        let file = File::open(cgroup).map_err(|source| LoadError::Cgroup { path: cgroup.to_owned(), source })?;
        // Pinned, the cached hooks are a load of their own (`SoloHooks`).
        let mut solo = pins.map(SoloHooks::load).transpose()?;
        for p in &PROGRAMS {
            let name = p.name;
            let fd = match solo.as_mut() {
                Some(s) if p.cache_slot.is_some() => {
                    s.program(name)?.fd().map_err(|source| LoadError::Program { name, source })?.as_fd()
                }
                _ => attachable(&self.ebpf, name)?,
            };
            drop(attach::link_create(file.as_fd(), fd, p.attach_type).map_err(|source| LoadError::Attach { name, source })?);
        }
        Ok(())
    }

    /// A load for one attach point (`load`) refuses a second: the sockets
    /// there would share the first endpoint's verdict cache.
    fn claim_attach_point(&mut self, cgroup: &Path) -> Result<(), LoadError> {
        if !self.one_attach_point {
            return Ok(());
        }
        if let Some(first) = &self.attached_at {
            return Err(LoadError::SecondAttachPoint(first.clone()));
        }
        self.attached_at = Some(cgroup.to_owned());
        Ok(())
    }

    /// The policy maps; taken once by the agent's `State`.
    pub fn take_maps(&mut self) -> Option<PolicyMaps> {
        self.maps.take()
    }

    pub fn take_denied_events(&mut self) -> Option<RingBuf<MapData>> {
        self.denied_events.take()
    }

    /// The kernel's rare-event log (`kernel_log`), for the agent to run.
    pub fn take_kernel_log(&mut self) -> Option<super::kernel_log::KernelLog> {
        self.kernel_log.take()
    }

    pub fn take_dns_hold(&mut self) -> Option<RingBuf<MapData>> {
        self.dns_hold.take()
    }

    /// The veth programs, each with a descriptor of its own (for the
    /// attaching thread, which runs in another namespace).
    pub fn veth_programs(&self) -> Result<Vec<VethProgram>, LoadError> {
        VETH_PROGRAMS
            .iter()
            .map(|&(name, dir)| {
                let fd =
                    attachable(&self.ebpf, name)?.try_clone_to_owned().map_err(|source| LoadError::Attach { name, source })?;
                Ok(VethProgram { name, dir, fd })
            })
            .collect()
    }

    /// A veth program, for `BPF_PROG_TEST_RUN` tests.
    pub fn veth_program(&self, name: &str) -> Option<&SchedClassifier> {
        self.ebpf.program(name).and_then(|p| p.try_into().ok())
    }

    /// The `cgroup_skb/egress` program, for `BPF_PROG_TEST_RUN` tests.
    pub fn egress_program(&self) -> Option<&CgroupSkb> {
        self.ebpf.program("pc_egress").and_then(|p| p.try_into().ok())
    }

    /// The `cgroup_skb/ingress` program, for `BPF_PROG_TEST_RUN` tests.
    pub fn ingress_program(&self) -> Option<&CgroupSkb> {
        self.ebpf.program("pc_ingress").and_then(|p| p.try_into().ok())
    }
}

/// A veth program ready to attach (`tc`).
#[derive(Debug)]
pub struct VethProgram {
    pub name: &'static str,
    pub dir: super::tc::Direction,
    pub fd: OwnedFd,
}

/// A loaded program's descriptor, by name.
fn attachable<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<BorrowedFd<'a>, LoadError> {
    let prog = ebpf.program(name).ok_or(LoadError::MissingProgram(name))?;
    Ok(prog.fd().map_err(|source| LoadError::Program { name, source })?.as_fd())
}

/// Verifies and loads one program of the object, as its kind says.
fn load_program(ebpf: &mut Ebpf, p: &Program) -> Result<(), LoadError> {
    let name = p.name;
    let loaded = match p.kind {
        Kind::SockAddr => program::<CgroupSockAddr>(ebpf, name)?.load(),
        Kind::Skb => program::<CgroupSkb>(ebpf, name)?.load(),
        Kind::Sock => program::<CgroupSock>(ebpf, name)?.load(),
        Kind::Sockopt => program::<CgroupSockopt>(ebpf, name)?.load(),
    };
    loaded.map_err(|source| LoadError::Program { name, source })
}

fn ring(ebpf: &mut Ebpf, name: &'static str) -> Result<RingBuf<MapData>, LoadError> {
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    RingBuf::try_from(map).map_err(|source| LoadError::Map { name, source })
}

/// `SO_NETNS_COOKIE` (Linux 5.14): the cookie `bpf_get_netns_cookie` returns.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The network-namespace cookie of a socket (so of the namespace it was made in).
pub fn netns_cookie_of(sock: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointers sized for a u64.
    let rc =
        unsafe { libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &raw mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cookie of the calling thread's network namespace.
pub fn current_netns_cookie() -> Result<u64, LoadError> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
        .map_err(LoadError::NetnsCookie)?;
    netns_cookie_of(&sock).map_err(LoadError::NetnsCookie)
}

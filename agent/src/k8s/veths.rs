//! Each enforced pod's veth carries the veth programs, judged by the pod's
//! own endpoint: the backstop for what its cgroup hooks cannot see (packet
//! sockets, TUN devices with forwarding), and all the enforcement of a
//! gVisor or Kata pod. The host-side end is found from the pod's network
//! namespace (a process in its cgroup), in the node's namespace, which is
//! the agent's own (the DaemonSet is hostNetwork). The pod may send from
//! its API addresses (`status.podIPs`) and those on its side of the veth.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    net::IpAddr,
    os::fd::OwnedFd,
    path::Path,
};

use tracing::{debug, warn};

use super::resolved::Resolved;
use crate::{agent::Agent, reconcile::Enforced};

/// What is attached for one pod.
#[derive(Debug, PartialEq, Eq)]
struct Attached {
    endpoint: u32,
    ifindexes: Vec<u32>,
    addrs: Vec<IpAddr>,
}

/// A pod as this module needs it (from the last snapshot).
#[derive(Clone, Debug, Default)]
pub struct PodNet {
    pub host_network: bool,
    pub ips: Vec<IpAddr>,
    /// A sandboxed runtime's pod: only its veth sees its traffic, so the
    /// veth programs count its flows (else the cgroup hooks do).
    pub sandboxed: bool,
}

pub struct PodVeths {
    node_ns: OwnedFd,
    /// By the pod's cgroup id.
    done: HashMap<u64, Attached>,
}

impl PodVeths {
    pub fn new(node_ns: OwnedFd) -> Self {
        Self { node_ns, done: HashMap::new() }
    }

    /// Pod UIDs whose veth carries the programs.
    pub fn attached_uids<'a>(&self, resolved: &'a HashMap<u64, Resolved>) -> HashSet<&'a str> {
        self.done.keys().filter_map(|c| resolved.get(c)).map(|r| r.uid.as_str()).collect()
    }

    /// Attaches to the veth of every enforced pod that has none yet (or
    /// whose endpoint or addresses changed). Returns how many pods still
    /// wait (no process, no veth yet): look again soon.
    pub fn sync(
        &mut self,
        agent: &mut Agent,
        enforced: &Enforced,
        resolved: &HashMap<u64, Resolved>,
        pods: &HashMap<String, PodNet>,
    ) -> usize {
        self.done.retain(|c, a| enforced.get(c).is_some_and(|(id, _)| *id == a.endpoint));
        let mut waiting = 0;
        for (cgroup_id, (id, _)) in enforced {
            let Some(r) = resolved.get(cgroup_id) else { continue };
            // Not on record (the agent's own pod before its object is
            // listed): its veth, if it has one, still gets its endpoint.
            let known = pods.get(&r.uid);
            let pod = known.cloned().unwrap_or_default();
            if pod.host_network {
                continue;
            }
            match self.attach(agent, *cgroup_id, *id, r, &pod) {
                Ok(Some(a)) => {
                    self.done.insert(*cgroup_id, a);
                }
                Ok(None) => {}
                Err(e) => {
                    // Only pods known to have a veth are waited for.
                    waiting += usize::from(known.is_some());
                    debug!(pod = %format!("{}/{}", r.namespace, r.pod), error = %format!("{e:#}"), "the pod's veth is not found yet");
                }
            }
        }
        waiting
    }

    /// `Ok(None)`: nothing to do.
    fn attach(&self, agent: &mut Agent, cgroup: u64, id: u32, r: &Resolved, pod: &PodNet) -> anyhow::Result<Option<Attached>> {
        let ns = pod_netns(&r.cgroup).ok_or_else(|| anyhow::anyhow!("no process in {} yet", r.cgroup.display()))?;
        let links = crate::veth::pod_links(&ns, &self.node_ns)?;
        anyhow::ensure!(!links.is_empty(), "no veth leads from the pod to the node's namespace");
        let mut addrs: Vec<IpAddr> = pod.ips.iter().copied().chain(links.iter().flat_map(|l| l.pod_addrs.clone())).collect();
        addrs.sort_unstable();
        addrs.dedup();
        let mut ifindexes: Vec<u32> = links.iter().map(|l| l.host_ifindex).collect();
        ifindexes.sort_unstable();
        let want = Attached { endpoint: id, ifindexes, addrs };
        if self.done.get(&cgroup) == Some(&want) {
            return Ok(None);
        }
        for l in &links {
            if let Err(e) = agent.attach_veth(id, l.host_ifindex, &want.addrs, pod.sandboxed) {
                warn!(pod = %format!("{}/{}", r.namespace, r.pod), interface = %l.host_ifname, error = %format!("{e:#}"),
                    "attaching the veth programs failed");
                return Err(e);
            }
            tracing::info!(pod = %format!("{}/{}", r.namespace, r.pod), interface = %l.host_ifname,
                mode = agent.veth_mode().unwrap_or("-"), "veth programs attached");
        }
        Ok(Some(want))
    }
}

/// The network namespace of a process in `cgroup` (the pod's, or one of
/// its containers': they share the pod's network namespace).
fn pod_netns(cgroup: &Path) -> Option<File> {
    let pid = first_pid(cgroup, 3)?;
    File::open(format!("/proc/{pid}/ns/net")).ok()
}

fn first_pid(dir: &Path, depth: u32) -> Option<u32> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    if let Some(pid) = procs.lines().find_map(|l| l.trim().parse().ok()) {
        return Some(pid);
    }
    if depth == 0 {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| first_pid(&e.path(), depth - 1))
}

//! A pod's own resolvers: what its containers read from their
//! `/etc/resolv.conf` (kubelet writes `clusterDNS` there for ClusterFirst,
//! the node's file for Default, the pod's `dnsConfig` if set), seen through
//! `/proc/<pid>/root` of a process in the pod's cgroup. Not the agent's own
//! file: on a hostNetwork DaemonSet that is the node's.

use std::{net::SocketAddr, path::Path};

use crate::policy::resolvconf::resolvers_from_resolv_conf;

/// The nameservers of the first process below `pod_cgroup` whose
/// resolv.conf lists any. The sandbox (`pause`) process is skipped: the
/// pod's file is bind-mounted into its app containers only.
pub fn of_pod(pod_cgroup: &Path) -> Option<Vec<SocketAddr>> {
    crate::cgroup::procs_below(pod_cgroup).into_iter().find_map(|pid| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == "pause" {
            return None;
        }
        let data = std::fs::read(format!("/proc/{pid}/root/etc/resolv.conf")).ok()?;
        resolvers_from_resolv_conf(&data).ok().filter(|l| !l.is_empty())
    })
}

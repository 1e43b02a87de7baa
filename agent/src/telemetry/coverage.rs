//! What the cgroup hooks cannot contain in a pod: a process holding
//! CAP_NET_RAW sends through packet sockets, CAP_NET_ADMIN through TUN
//! devices and forwarding, CAP_SYS_ADMIN or CAP_BPF reach around the hooks
//! altogether; none of it meets a cgroup program (docs/THREAT-MODEL.md).
//! Until the per-packet backstop on the pod's veth exists, node mode says
//! so: a warning when a pod's set changes, and the
//! `portcullis_endpoint_uncontained_processes{capability}` gauge.

use std::{collections::HashMap, fs, path::Path, sync::Mutex};

use crate::util::lock;

/// Capabilities (include/uapi/linux/capability.h) whose holders leave the
/// cgroup hooks' view.
pub const UNCONTAINED: [(u32, &str); 4] = [(13, "CAP_NET_RAW"), (12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN"), (39, "CAP_BPF")];

/// Per capability of `UNCONTAINED` held by any process: how many hold it.
pub type Held = Vec<(&'static str, u32)>;

/// `CapEff` of a `/proc/<pid>/status` text.
pub fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Counts, per capability, the processes among `caps` that hold it.
pub fn held(caps: impl IntoIterator<Item = u64>) -> Held {
    let mut out: Held = Vec::new();
    for c in caps {
        for (bit, name) in UNCONTAINED {
            if c & (1 << bit) == 0 {
                continue;
            }
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, k)) => *k += 1,
                None => out.push((name, 1)),
            }
        }
    }
    out.sort();
    out
}

/// What the processes in `cgroup` and below hold (a bounded walk; a
/// process gone meanwhile is skipped).
pub fn scan(cgroup: &Path) -> Held {
    let caps = crate::cgroup::procs_below(cgroup)
        .into_iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| effective_caps(&s));
    held(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tsleep\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t0000000000002000\n";
        assert_eq!(effective_caps(status), Some(1 << 13));
        assert_eq!(effective_caps("Name:\tx\n"), None);
        assert_eq!(effective_caps("CapEff:\tzz\n"), None);
    }

    #[test]
    fn counts_holders_per_capability() {
        let root = 0x1ff_ffff_ffff;
        let net_raw = 1 << 13;
        assert_eq!(
            held([root, net_raw, 0]),
            vec![("CAP_BPF", 1), ("CAP_NET_ADMIN", 1), ("CAP_NET_RAW", 2), ("CAP_SYS_ADMIN", 1)]
        );
        assert_eq!(held([0, 1 << 10]), vec![]);
    }
}

/// What the last scan found per endpoint, for the metrics (only endpoints
/// with something held are kept).
#[derive(Debug, Default)]
pub struct Coverage(Mutex<HashMap<u32, Held>>);

impl Coverage {
    /// Stores an endpoint's scan; whether it changed.
    pub fn set(&self, endpoint: u32, held: &Held) -> bool {
        let mut m = lock(&self.0);
        let before = m.get(&endpoint).cloned().unwrap_or_default();
        if before == *held {
            return false;
        }
        if held.is_empty() {
            m.remove(&endpoint);
        } else {
            m.insert(endpoint, held.clone());
        }
        true
    }

    pub fn forget(&self, endpoint: u32) {
        lock(&self.0).remove(&endpoint);
    }

    pub fn all(&self) -> HashMap<u32, Held> {
        lock(&self.0).clone()
    }
}

//! Where kubelet puts a pod's cgroup, for the systemd and cgroupfs drivers
//! (kubernetes `pkg/kubelet/cm`: `qos_container_manager_linux.go`,
//! `pod_container_manager_linux.go`, `cgroup_manager_linux.go`):
//!
//! | QoS        | cgroupfs                       | systemd                                                          |
//! |------------|--------------------------------|------------------------------------------------------------------|
//! | Guaranteed | `kubepods/pod<uid>`            | `kubepods.slice/kubepods-pod<uid_>.slice`                        |
//! | Burstable  | `kubepods/burstable/pod<uid>`  | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice` |
//! | BestEffort | `kubepods/besteffort/pod<uid>` | `…/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice` |
//!
//! `<uid_>` is the UID with `-` as `_` (systemd reads `-` as a hierarchy
//! step). Container cgroups (containerd `cri-containerd-<id>.scope` or
//! `<id>`, CRI-O `crio-<id>.scope` / `crio-conmon-<id>.scope`) sit below
//! the pod's; the kernel's ancestor walk maps them to the pod's endpoint,
//! so only the pod's directory matters here. A pod is found once and keyed
//! by its cgroup id (the directory's inode).

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

#[derive(Debug, Error)]
pub enum LayoutError {
    #[error(
        "no kubelet pod cgroup under {0} (neither kubepods.slice nor kubepods): is this a Kubernetes node with \
         cgroupsPerQOS, and is the host's cgroup2 mount given (--cgroup-root)?"
    )]
    NoKubepods(PathBuf),
    #[error("{0}: not a directory (--kubepods)")]
    NotADir(PathBuf),
}

/// The kubelet's pod parent cgroup on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubepods {
    /// Absolute path of `kubepods.slice` / `kubepods`.
    pub dir: PathBuf,
    pub driver: Driver,
}

impl Kubepods {
    /// Finds it under the cgroup2 mount `root`, or takes `explicit` (a path
    /// relative to `root`, or absolute); the driver is read off its name.
    pub fn find(root: &Path, explicit: Option<&Path>) -> Result<Self, LayoutError> {
        let candidates: Vec<PathBuf> = match explicit {
            Some(p) => vec![root.join(p)],
            None => vec![root.join("kubepods.slice"), root.join("kubepods")],
        };
        for dir in &candidates {
            if dir.is_dir() {
                let driver = if dir.extension().is_some_and(|e| e == "slice") { Driver::Systemd } else { Driver::Cgroupfs };
                return Ok(Self { dir: dir.clone(), driver });
            }
        }
        match explicit {
            Some(_) => Err(LayoutError::NotADir(candidates[0].clone())),
            None => Err(LayoutError::NoKubepods(root.to_owned())),
        }
    }

    /// Where kubelet puts the cgroup of the pod with `uid` and QoS class
    /// `qos` (`status.qosClass`: Guaranteed, Burstable, BestEffort).
    pub fn pod_dir(&self, uid: &str, qos: &str) -> PathBuf {
        let level = match qos {
            "Burstable" => Some("burstable"),
            "BestEffort" => Some("besteffort"),
            _ => None,
        };
        match (self.driver, level) {
            (Driver::Cgroupfs, None) => self.dir.join(format!("pod{uid}")),
            (Driver::Cgroupfs, Some(l)) => self.dir.join(l).join(format!("pod{uid}")),
            (Driver::Systemd, None) => self.dir.join(format!("kubepods-pod{}.slice", uid.replace('-', "_"))),
            (Driver::Systemd, Some(l)) => {
                self.dir.join(format!("kubepods-{l}.slice")).join(format!("kubepods-{l}-pod{}.slice", uid.replace('-', "_")))
            }
        }
    }

    /// The pod's cgroup directory if it exists: where its QoS class says,
    /// else under any QoS level (a pod object seen before its status
    /// carries a QoS class). `None`: not created yet (or gone).
    pub fn find_pod(&self, uid: &str, qos: Option<&str>) -> Option<PathBuf> {
        let others = ["Burstable", "BestEffort", "Guaranteed"].into_iter().filter(|q| Some(*q) != qos);
        qos.into_iter().chain(others).map(|q| self.pod_dir(uid, q)).find(|d| d.is_dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f1e2d3c-aaaa-bbbb-cccc-1234567890ab";

    fn layout(driver: Driver) -> Kubepods {
        let name = if driver == Driver::Systemd { "kubepods.slice" } else { "kubepods" };
        Kubepods { dir: PathBuf::from("/sys/fs/cgroup").join(name), driver }
    }

    #[test]
    fn kubelet_paths_for_both_drivers_and_every_qos_class() {
        let s = layout(Driver::Systemd);
        let c = layout(Driver::Cgroupfs);
        let cases = [
            (&s, "Guaranteed", "kubepods.slice/kubepods-pod0f1e2d3c_aaaa_bbbb_cccc_1234567890ab.slice"),
            (
                &s,
                "Burstable",
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_aaaa_bbbb_cccc_1234567890ab.slice",
            ),
            (
                &s,
                "BestEffort",
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f1e2d3c_aaaa_bbbb_cccc_1234567890ab.slice",
            ),
            (&c, "Guaranteed", "kubepods/pod0f1e2d3c-aaaa-bbbb-cccc-1234567890ab"),
            (&c, "Burstable", "kubepods/burstable/pod0f1e2d3c-aaaa-bbbb-cccc-1234567890ab"),
            (&c, "BestEffort", "kubepods/besteffort/pod0f1e2d3c-aaaa-bbbb-cccc-1234567890ab"),
        ];
        for (l, qos, want) in cases {
            assert_eq!(l.pod_dir(UID, qos), Path::new("/sys/fs/cgroup").join(want), "{qos} {:?}", l.driver);
        }
    }

    #[test]
    fn the_driver_is_found_on_disk() {
        let dir = std::env::temp_dir().join(format!("pc-kubepods-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let burstable = dir.join("kubepods.slice/kubepods-burstable.slice");
        std::fs::create_dir_all(&burstable).unwrap();
        let k = Kubepods::find(&dir, None).unwrap();
        assert_eq!(k.driver, Driver::Systemd);
        assert_eq!(k.find_pod(UID, Some("Burstable")), None, "not created yet");
        let pod = burstable.join("kubepods-burstable-pod0f1e2d3c_aaaa_bbbb_cccc_1234567890ab.slice");
        std::fs::create_dir_all(pod.join("cri-containerd-0123.scope")).unwrap();
        assert_eq!(k.find_pod(UID, Some("Burstable")), Some(pod.clone()));
        assert_eq!(k.find_pod(UID, None), Some(pod), "no QoS class yet: every level is tried");
        assert!(Kubepods::find(&dir.join("nothing"), None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

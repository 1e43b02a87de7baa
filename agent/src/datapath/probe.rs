//! What this kernel's BPF offers, probed once at start by loading tiny
//! programs, so the agent loads the program variant that fits and says
//! which one and why (a newer kernel is no guarantee on a distribution
//! kernel; a probe is). See README "Requirements".

use std::{os::fd::FromRawFd as _, sync::OnceLock};

use tracing::{info, warn};

/// Set this to a comma-separated list of features (`skb-netns-cookie`, `tcx`) to
/// load the variants for kernels without them, e.g. to test those variants
/// on a newer kernel.
pub const DISABLE_ENV: &str = "PORTCULLIS_DISABLE_KERNEL_FEATURES";

/// Ends the name of a variant that keeps a guarantee more weakly (logged
/// as a warning).
const DEGRADED: &str = " (degraded)";

/// The features the programs have variants for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFeatures {
    /// `bpf_get_netns_cookie` in `cgroup_skb` programs (Linux 6.15). Without
    /// it, `cgroup/sock_create` notes each socket's namespace in `SK_NETNS`.
    pub skb_netns_cookie: bool,
    /// tcx links on network devices (Linux 6.6). Without them the veth
    /// programs go in as a clsact filter (`tc.rs`).
    pub tcx: bool,
}

impl KernelFeatures {
    /// One line per feature: the variant loaded and why.
    pub fn variants(&self) -> Vec<(&'static str, &'static str)> {
        let netns = if self.skb_netns_cookie {
            ("skb-netns: helper", "cgroup_skb programs call bpf_get_netns_cookie")
        } else {
            (
                concat!("skb-netns: socket storage", " (degraded)"),
                "this kernel refuses bpf_get_netns_cookie in cgroup_skb (Linux 6.15 adds it): cgroup/sock_create notes each socket's namespace; sockets older than the programs count as the host's (their loopback traffic on the per-packet path is denied)",
            )
        };
        let veth = if self.tcx {
            ("veth: tcx", "veth programs attach as tcx links, first in line")
        } else {
            ("veth: clsact", "this kernel has no tcx (Linux 6.6): veth programs attach as clsact filters at priority 1")
        };
        vec![netns, veth]
    }
}

/// The probed features (probed once per process, logged then).
pub fn features() -> KernelFeatures {
    static FEATURES: OnceLock<KernelFeatures> = OnceLock::new();
    *FEATURES.get_or_init(|| {
        let disabled = std::env::var(DISABLE_ENV).unwrap_or_default();
        let off = |name: &str| disabled.split(',').any(|d| d.trim() == name);
        let f = KernelFeatures {
            skb_netns_cookie: !off("skb-netns-cookie") && loads_skb_netns_cookie(),
            tcx: !off("tcx") && kernel_at_least(6, 6),
        };
        let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        for (variant, why) in f.variants() {
            if variant.ends_with(DEGRADED) {
                warn!(kernel = %kernel, variant, why, "program variant");
            } else {
                info!(kernel = %kernel, variant, why, "program variant");
            }
        }
        f
    })
}

/// By version: probing tcx would mean attaching to a real device.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let mut v = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (major, minor)
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_CGROUP_INET_EGRESS: u32 = 1;
const BPF_FUNC_GET_NETNS_COOKIE: i32 = 122;

/// Whether a `cgroup_skb/egress` program calling `bpf_get_netns_cookie`
/// loads: `call 122; r0 = 1; exit`.
fn loads_skb_netns_cookie() -> bool {
    // struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm; }
    let insn = |code: u8, imm: i32| -> u64 { u64::from(code) | (u64::from(imm as u32) << 32) };
    let prog: [u64; 3] = [insn(0x85, BPF_FUNC_GET_NETNS_COOKIE), insn(0xb7, 1), insn(0x95, 0)];
    let license = c"GPL";
    // union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license,
    // log_level, log_size, log_buf, kern_version, prog_flags, prog_name[16],
    // prog_ifindex, expected_attach_type.
    let mut attr = [0u8; 72];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_SKB.to_ne_bytes());
    attr[4..8].copy_from_slice(&(prog.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(prog.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[68..72].copy_from_slice(&BPF_CGROUP_INET_EGRESS.to_ne_bytes());
    // SAFETY: attr and what it points at outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_mut_ptr(), attr.len() as libc::c_uint) };
    if fd < 0 {
        return false;
    }
    // SAFETY: a fresh descriptor the kernel just handed us; closed on drop.
    drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_feature_names_its_variant() {
        for on in [true, false] {
            let v = KernelFeatures { skb_netns_cookie: on, tcx: on }.variants();
            assert_eq!(v.len(), 2);
            assert!(v[0].0.starts_with("skb-netns: "), "{v:?}");
            assert!(v[1].0.starts_with("veth: "), "{v:?}");
        }
    }
}

//! The measurement floor of `cargo xtask bench`: what an *empty* program
//! (`r0 = 1; exit`) measures at the hooks ours use, in the same workload.
//! `run_time_ns / run_cnt` of any program includes the statistics' own
//! clock reads (include/linux/filter.h `__bpf_prog_run`: `sched_clock()`
//! around the call) and the cost of entering a program that ran last a
//! whole connection ago. On these VMs that is far more than the hot loop of
//! `calibrate` shows, so the bench also reports ours minus the empty one,
//! measured side by side: what our code adds at that hook.
//!
//! The empty programs are attached to a cgroup this module creates (never
//! an existing one; a child of the cgroup v2 root, like `portcullis exec`'s)
//! and a load client of its own joins it. They are attached by `bpf_link`,
//! so they are detached when this process ends, however it ends; the cgroup
//! is removed on drop, or by the next bench run if this one was killed.
//! Raw bpf(2), as in `calibrate`.

use std::{
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
/// Prefix of the cgroup's name; the bench's PID follows.
const DIR_PREFIX: &str = "portcullis-bench-floor-";
/// include/uapi/linux/bpf.h `enum bpf_prog_type`.
const CGROUP_SKB: u32 = 8;
const CGROUP_SOCK: u32 = 9;
const CGROUP_SOCK_ADDR: u32 = 18;

/// (our program, its empty twin's name, program type, attach type).
pub const TWINS: [(&str, &str, u32, u32); 4] = [
    ("pc_connect4", "pc_floor_conn4", CGROUP_SOCK_ADDR, 10), // BPF_CGROUP_INET4_CONNECT
    ("pc_egress", "pc_floor_egress", CGROUP_SKB, 1),         // BPF_CGROUP_INET_EGRESS
    ("pc_ingress", "pc_floor_ingres", CGROUP_SKB, 0),        // BPF_CGROUP_INET_INGRESS
    ("pc_release", "pc_floor_releas", CGROUP_SOCK, 34),      // BPF_CGROUP_INET_SOCK_RELEASE
];

/// The empty twin of one of our programs, by name.
pub fn twin_of(name: &str) -> Option<&'static str> {
    TWINS.iter().find(|t| t.0 == name).map(|t| t.1)
}

pub fn is_twin(name: &str) -> bool {
    TWINS.iter().any(|t| t.1 == name)
}

pub fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> libc::c_long {
    // SAFETY: attr is a zero-initialised bpf_attr-sized buffer that outlives the call.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
}

pub fn put_u32(a: &mut [u8; 128], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

/// Loads `r0 = 1; exit` (allow, at every hook it is used at) named `name`.
pub fn load_empty(name: &str, prog_type: u32, attach_type: u32) -> Result<OwnedFd> {
    // BPF_MOV64_IMM(R0, 1); BPF_EXIT_INSN()
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 1, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = b"GPL\0";
    let mut a = [0u8; 128];
    put_u32(&mut a, 0, prog_type);
    put_u32(&mut a, 4, 2);
    a[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    a[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    a[48..48 + name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    put_u32(&mut a, 68, attach_type); // expected_attach_type
    let fd = bpf(BPF_PROG_LOAD, &mut a);
    if fd < 0 {
        bail!("loading the empty program {name}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from BPF_PROG_LOAD, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches `prog` to `cgroup` by a link: detached when the fd closes.
fn link(cgroup: &OwnedFd, prog: &OwnedFd, attach_type: u32) -> std::io::Result<OwnedFd> {
    let mut a = [0u8; 128];
    put_u32(&mut a, 0, prog.as_raw_fd() as u32);
    put_u32(&mut a, 4, cgroup.as_raw_fd() as u32);
    put_u32(&mut a, 8, attach_type);
    let fd = bpf(BPF_LINK_CREATE, &mut a);
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from BPF_LINK_CREATE, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A fresh cgroup with the empty twins attached; see the module docs.
pub struct Floor {
    dir: PathBuf,
    links: Vec<OwnedFd>,
}

impl Floor {
    pub fn new(cgroup2: &Path) -> Result<Self> {
        sweep_stale(cgroup2);
        let dir = cgroup2.join(format!("{DIR_PREFIX}{}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut floor = Self { dir, links: Vec::new() };
        let cgroup = OwnedFd::from(fs::File::open(&floor.dir).with_context(|| format!("opening {}", floor.dir.display()))?);
        for (_, name, prog_type, attach_type) in TWINS {
            let prog = load_empty(name, prog_type, attach_type)?;
            let l = link(&cgroup, &prog, attach_type).with_context(|| format!("attaching {name} to {}", floor.dir.display()))?;
            floor.links.push(l);
        }
        Ok(floor)
    }

    /// The cgroup a client joins (write its PID to `cgroup.procs`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.links.clear();
        // Fails while a process is still inside: the caller ends the client
        // first. Left behind otherwise: an empty cgroup, swept next run.
        if let Err(e) = fs::remove_dir(&self.dir) {
            eprintln!("bench: could not remove {}: {e}", self.dir.display());
        }
    }
}

/// Removes the floor cgroups of bench runs whose process is gone (their
/// links went with it; a cgroup with a process still inside stays). The
/// agent's `cgroup::sweep_stale` does the same for `exec`; xtask cannot
/// use it: the agent crate's build needs the eBPF toolchain xtask installs.
fn sweep_stale(cgroup2: &Path) {
    let Ok(dir) = fs::read_dir(cgroup2) else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(DIR_PREFIX).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_dir(e.path());
        }
    }
}

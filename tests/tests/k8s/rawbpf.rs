//! Stand-ins for another agent's cgroup programs (Cilium's socket load
//! balancer), loaded with raw bpf(2) so the test depends on nothing of
//! Portcullis's datapath: a `cgroup/connect4` program that rewrites a
//! service address to a backend, attached like Cilium attaches it.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
/// `BPF_F_ALLOW_MULTI`: what links imply (Cilium >= 1.14). Without it
/// (older Cilium, kept across upgrades), nothing of the same type may be
/// attached below.
pub const BPF_F_ALLOW_MULTI: u32 = 2;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | (dst & 0xf);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    b
}

/// `bpf_sock_addr.user_ip4` as the program reads it (network byte order
/// loaded as a little-endian u32).
fn ip4(ip: [u8; 4]) -> i32 {
    i32::from_le_bytes(ip)
}

fn sys_bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zeroed bpf_attr-sized buffer the kernel reads (and
    // may write within its size).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

/// A connect4 program: `vip` becomes `backend`, everything is allowed.
pub fn load_lb(vip: [u8; 4], backend: [u8; 4]) -> OwnedFd {
    let prog: Vec<u8> = [
        insn(0x61, 2, 1, 4, 0),            // r2 = ctx->user_ip4
        insn(0x55, 2, 0, 2, ip4(vip)),     // if r2 != vip goto +2
        insn(0xb7, 3, 0, 0, ip4(backend)), // r3 = backend
        insn(0x63, 1, 3, 4, 0),            // ctx->user_ip4 = r3
        insn(0xb7, 0, 0, 0, 1),            // r0 = 1 (allow)
        insn(0x95, 0, 0, 0, 0),            // exit
    ]
    .concat();
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_SOCK_ADDR.to_ne_bytes());
    attr[4..8].copy_from_slice(&((prog.len() / 8) as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(prog.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // expected_attach_type (after kern_version, prog_flags, prog_name[16],
    // prog_ifindex).
    attr[68..72].copy_from_slice(&BPF_CGROUP_INET4_CONNECT.to_ne_bytes());
    let fd = sys_bpf(BPF_PROG_LOAD, &mut attr).expect("BPF_PROG_LOAD of the stand-in LB");
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// `BPF_PROG_ATTACH` (the legacy API) to `cgroup` with `flags`. The
/// program stays attached until the cgroup is removed.
pub fn attach(prog: &OwnedFd, cgroup: &Path, flags: u32) -> std::io::Result<()> {
    let cg = std::fs::File::open(cgroup)?;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(cg.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_CGROUP_INET4_CONNECT.to_ne_bytes());
    attr[12..16].copy_from_slice(&flags.to_ne_bytes());
    sys_bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

//! Stand-ins for another agent's cgroup programs (Cilium's socket load
//! balancer), loaded with raw bpf(2) so the test depends on nothing of
//! Portcullis's datapath: `cgroup/connect4` and `cgroup/sendmsg4` programs
//! that rewrite a service address to a backend (and a service port to its
//! target port), attached like Cilium attaches them.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
/// The hooks the stand-in LB runs at (`bpf_attach_type`).
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
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

/// `bpf_sock_addr.user_port` as the program reads it (network byte order
/// in the low 16 bits).
fn port(p: u16) -> i32 {
    let [hi, lo] = p.to_be_bytes();
    i32::from_le_bytes([hi, lo, 0, 0])
}

/// A program for `hook` (connect4 or sendmsg4): `vip` becomes `backend`,
/// and on it port `ports.0` becomes `ports.1`; everything is allowed.
pub fn load_lb(hook: u32, vip: [u8; 4], backend: [u8; 4], ports: (u16, u16)) -> OwnedFd {
    let prog: Vec<u8> = [
        insn(0x61, 2, 1, 4, 0),             // r2 = ctx->user_ip4
        insn(0x55, 2, 0, 6, ip4(vip)),      // if r2 != vip goto allow
        insn(0xb7, 3, 0, 0, ip4(backend)),  // r3 = backend
        insn(0x63, 1, 3, 4, 0),             // ctx->user_ip4 = r3
        insn(0x61, 2, 1, 24, 0),            // r2 = ctx->user_port
        insn(0x55, 2, 0, 2, port(ports.0)), // if r2 != service port goto allow
        insn(0xb7, 3, 0, 0, port(ports.1)), // r3 = target port
        insn(0x63, 1, 3, 24, 0),            // ctx->user_port = r3
        insn(0xb7, 0, 0, 0, 1),             // allow: r0 = 1
        insn(0x95, 0, 0, 0, 0),             // exit
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
    attr[68..72].copy_from_slice(&hook.to_ne_bytes());
    let fd = sys_bpf(BPF_PROG_LOAD, &mut attr).expect("BPF_PROG_LOAD of the stand-in LB");
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// `BPF_PROG_ATTACH` (the legacy API) to `cgroup` at `hook` with `flags`.
/// The program stays attached until the cgroup is removed.
pub fn attach(prog: &OwnedFd, cgroup: &Path, hook: u32, flags: u32) -> std::io::Result<()> {
    let cg = std::fs::File::open(cgroup)?;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(cg.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&hook.to_ne_bytes());
    attr[12..16].copy_from_slice(&flags.to_ne_bytes());
    sys_bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

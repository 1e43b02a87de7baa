//! Attaching a program to a cgroup, by its descriptor and attach type,
//! two ways:
//!
//! - `link_create`: a `bpf_link` (`BPF_LINK_CREATE`). It lives as long as
//!   its descriptor or its pin (`run`), and can be swapped atomically
//!   (`BPF_LINK_UPDATE`, `pin.rs`).
//! - `attach_to_cgroup`: `BPF_PROG_ATTACH` with `BPF_F_ALLOW_MULTI`
//!   (kernel/bpf/cgroup.c `cgroup_bpf_attach`). The program belongs to the
//!   cgroup, not to a descriptor: it stays when the process that attached
//!   it dies, even by SIGKILL, and goes with the cgroup (`cgroup_bpf_release`
//!   once the cgroup is removed). `portcullis exec` attaches so: a workload
//!   that kills its agent (it may run as the same user) leaves its cgroup
//!   enforced, fail closed (DNS then finds no gate and no agent: refused),
//!   and the next `exec` removes the cgroup once it is empty.
//!
//! Both compose with other programs on the hierarchy (Cilium's, or another
//! agent's): every program runs, all must allow.

use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};

/// `enum bpf_attach_type` values (include/uapi/linux/bpf.h) of our hooks.
pub const ATTACH_TYPES: [(&str, u32); 11] = [
    ("pc_ingress", 0),     // BPF_CGROUP_INET_INGRESS
    ("pc_egress", 1),      // BPF_CGROUP_INET_EGRESS
    ("pc_sock_create", 2), // BPF_CGROUP_INET_SOCK_CREATE
    ("pc_connect4", 10),   // BPF_CGROUP_INET4_CONNECT
    ("pc_connect6", 11),   // BPF_CGROUP_INET6_CONNECT
    ("pc_sendmsg4", 14),   // BPF_CGROUP_UDP4_SENDMSG
    ("pc_sendmsg6", 15),   // BPF_CGROUP_UDP6_SENDMSG
    ("pc_recvmsg4", 19),   // BPF_CGROUP_UDP4_RECVMSG
    ("pc_recvmsg6", 20),   // BPF_CGROUP_UDP6_RECVMSG
    ("pc_setsockopt", 22), // BPF_CGROUP_SETSOCKOPT
    ("pc_release", 34),    // BPF_CGROUP_INET_SOCK_RELEASE
];

const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The attach type of program `name`.
pub fn attach_type(name: &str) -> Option<u32> {
    ATTACH_TYPES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Attaches `prog` to the cgroup `cgroup` for good (see the module docs).
pub fn attach_to_cgroup(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>, attach_type: u32) -> std::io::Result<()> {
    let attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: a bpf_attr prefix of the size passed; the kernel zero-fills
    // the rest (kernel/bpf/syscall.c `bpf_check_uarg_tail_zero`).
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_ATTACH, &raw const attr, size_of::<ProgAttachAttr>() as libc::c_uint) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A cgroup `bpf_link` of `prog` (`BPF_LINK_CREATE`); closing its last
/// descriptor (and pin) detaches it.
pub fn link_create(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>, attach_type: u32) -> std::io::Result<OwnedFd> {
    // struct { __u32 prog_fd; __u32 target_fd; __u32 attach_type; __u32 flags; }
    let attr: [u32; 4] = [prog.as_raw_fd() as u32, cgroup.as_raw_fd() as u32, attach_type, 0];
    // SAFETY: a bpf_attr prefix of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, attr.as_ptr(), size_of_val(&attr) as libc::c_uint) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd the kernel just handed us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::loader::PROGRAM_NAMES;

    #[test]
    fn kernel_option_numbers_match_libc() {
        use agent_common::source_route as sr;
        assert_eq!(sr::SOL_IP, libc::SOL_IP);
        assert_eq!(sr::SOL_IPV6, libc::SOL_IPV6);
        assert_eq!(sr::IP_OPTIONS, libc::IP_OPTIONS);
        assert_eq!(sr::IPV6_RTHDR, libc::IPV6_RTHDR);
        assert_eq!(sr::IPV6_2292RTHDR, libc::IPV6_2292RTHDR);
        assert_eq!(sr::IPV6_2292PKTOPTIONS, libc::IPV6_2292PKTOPTIONS);
        assert_eq!(i32::from(sr::IPPROTO_ROUTING), libc::IPPROTO_ROUTING);
    }

    #[test]
    fn every_program_has_an_attach_type() {
        for name in PROGRAM_NAMES {
            assert!(attach_type(name).is_some(), "{name}");
        }
        assert_eq!(ATTACH_TYPES.len(), PROGRAM_NAMES.len());
    }
}

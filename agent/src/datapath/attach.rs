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
}

//! Attaching the veth programs (`pc_from_pod`, `pc_to_pod`) to a pod's
//! host-side interface, first in line, so a CNI's programs run after ours
//! (ours return "next" on allow, `agent_common::TC_NEXT`):
//!
//! - `Tcx` (Linux 6.6+): a `bpf_link` per direction (`BPF_LINK_CREATE`,
//!   `BPF_TCX_INGRESS`/`EGRESS`) with `BPF_F_BEFORE` and no anchor: in
//!   front of every program already there (Cilium attaches at the tail,
//!   `pkg/datapath/loader/tcx.go`). The link lives as long as its
//!   descriptor or pin, and dies with the interface.
//! - `Clsact` (older kernels, e.g. Debian 12's 6.1): the clsact qdisc and a
//!   `cls_bpf` filter in direct-action mode at priority 1 (the first
//!   priority), added with `NLM_F_REPLACE` so a new agent swaps a previous
//!   agent's filter in place. Among filters of one priority a new one goes
//!   first (net/sched/cls_bpf.c `cls_bpf_change`, `list_add_rcu`). It stays
//!   until removed or the interface goes, so a crashed agent leaves the
//!   pod enforced (fail closed).
//!
//! Interface indexes are per network namespace: every call runs on a
//! thread inside the namespace that holds the interface (`util::in_netns`).

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use super::netlink::{Msg, Netlink};

/// How the programs are attached on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    Tcx,
    Clsact,
}

impl TcMode {
    /// tcx when the kernel has it (Linux 6.6: `BPF_TCX_*`), else clsact
    /// (`probe`; `PORTCULLIS_DISABLE_KERNEL_FEATURES=tcx` forces clsact).
    pub fn for_this_kernel() -> Self {
        if super::probe::features().tcx { Self::Tcx } else { Self::Clsact }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Clsact => "clsact",
        }
    }
}

/// Which side of the host-side veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// tc ingress: what the pod sends.
    FromPod,
    /// tc egress: what the pod receives.
    ToPod,
}

impl Direction {
    fn tcx_attach_type(self) -> u32 {
        match self {
            Self::FromPod => BPF_TCX_INGRESS,
            Self::ToPod => BPF_TCX_EGRESS,
        }
    }

    fn clsact_parent(self) -> u32 {
        match self {
            Self::FromPod => TC_H_CLSACT_INGRESS,
            Self::ToPod => TC_H_CLSACT_EGRESS,
        }
    }
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// include/uapi/linux/bpf.h: with no relative fd, "before everything".
const BPF_F_BEFORE: u32 = 1 << 3;

/// A tcx link of `prog` on `ifindex` (of the calling thread's namespace),
/// in front of every program there.
pub fn tcx_attach(ifindex: u32, prog: BorrowedFd<'_>, dir: Direction) -> io::Result<OwnedFd> {
    // struct { prog_fd; target_ifindex; attach_type; flags;
    //          tcx: { relative_fd; (pad) expected_revision: u64 } }
    let attr: [u32; 8] = [prog.as_raw_fd() as u32, ifindex, dir.tcx_attach_type(), BPF_F_BEFORE, 0, 0, 0, 0];
    // SAFETY: a bpf_attr prefix of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, attr.as_ptr(), size_of_val(&attr) as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd the kernel just handed us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

// include/uapi/linux/pkt_sched.h, rtnetlink.h, pkt_cls.h
const TC_H_CLSACT: u32 = 0xffff_fff1;
const TC_H_CLSACT_INGRESS: u32 = 0xffff_fff2;
const TC_H_CLSACT_EGRESS: u32 = 0xffff_fff3;
const RTM_NEWQDISC: u16 = 36;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
const NLA_F_NESTED: u16 = 1 << 15;
const ETH_P_ALL: u16 = 0x0003;
/// Our filters' priority (1: the first) and handle ("PC").
pub const CLSACT_PRIORITY: u16 = 1;
pub const CLSACT_HANDLE: u32 = 0x5043;

/// Adds the clsact qdisc (if missing) and our filter (replacing ours if
/// present) on `ifindex` of the calling thread's namespace.
pub fn clsact_attach(ifindex: u32, prog: BorrowedFd<'_>, name: &str, dir: Direction) -> io::Result<()> {
    let nl = Netlink::open()?;
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL;
    let mut q = Msg::new(RTM_NEWQDISC, flags as u16, &tcmsg(ifindex, 0xffff_0000, TC_H_CLSACT, 0));
    q.attr(TCA_KIND, b"clsact\0");
    match nl.call(&q.finish()) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        other => other?,
    }
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE;
    let mut f = Msg::new(RTM_NEWTFILTER, flags as u16, &filter_tcmsg(ifindex, dir));
    f.attr(TCA_KIND, b"bpf\0");
    let options = f.begin_nested(TCA_OPTIONS | NLA_F_NESTED);
    f.attr(TCA_BPF_FD, &(prog.as_raw_fd() as u32).to_ne_bytes());
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    f.attr(TCA_BPF_NAME, &cname);
    f.attr(TCA_BPF_FLAGS, &TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes());
    f.end_nested(options);
    nl.call(&f.finish())
}

/// Removes our filter from `ifindex` (gone already: fine).
pub fn clsact_detach(ifindex: u32, dir: Direction) -> io::Result<()> {
    let nl = Netlink::open()?;
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK;
    let mut f = Msg::new(RTM_DELTFILTER, flags as u16, &filter_tcmsg(ifindex, dir));
    f.attr(TCA_KIND, b"bpf\0");
    match nl.call(&f.finish()) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)) => Ok(()),
        other => other,
    }
}

fn filter_tcmsg(ifindex: u32, dir: Direction) -> [u8; 20] {
    // info: priority in the upper 16 bits, protocol (network order) below.
    let info = (u32::from(CLSACT_PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());
    tcmsg(ifindex, CLSACT_HANDLE, dir.clsact_parent(), info)
}

/// `struct tcmsg`: family, pad, ifindex, handle, parent, info.
fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    m[8..12].copy_from_slice(&handle.to_ne_bytes());
    m[12..16].copy_from_slice(&parent.to_ne_bytes());
    m[16..20].copy_from_slice(&info.to_ne_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_request_is_laid_out_as_the_kernel_reads_it() {
        let mut f = Msg::new(RTM_NEWTFILTER, 5, &filter_tcmsg(7, Direction::FromPod));
        f.attr(TCA_KIND, b"bpf\0");
        let n = f.begin_nested(TCA_OPTIONS | NLA_F_NESTED);
        f.attr(TCA_BPF_FD, &9u32.to_ne_bytes());
        f.end_nested(n);
        let b = f.finish();
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize, b.len());
        assert_eq!(u32::from_ne_bytes(b[20..24].try_into().unwrap()), 7, "ifindex");
        assert_eq!(u32::from_ne_bytes(b[28..32].try_into().unwrap()), TC_H_CLSACT_INGRESS);
        assert_eq!(u32::from_ne_bytes(b[32..36].try_into().unwrap()), (1 << 16) | 0x0300, "prio 1, ETH_P_ALL");
        assert_eq!(&b[36..44], &[8, 0, 1, 0, b'b', b'p', b'f', 0]);
        assert_eq!(u16::from_ne_bytes([b[44], b[45]]), 12, "nested length");
        assert_eq!(b.len() % 4, 0);
    }
}

//! A stand-in for a CNI's tc program on a pod's veth, attached after
//! Portcullis's as a CNI would attach its own (tcx at the tail on Linux
//! 6.6+, as Cilium does; a clsact filter at a later priority before that),
//! loaded with raw bpf(2) so it depends on nothing of Portcullis. Its
//! effect is visible from outside: it drops TCP to one port (a "CNI
//! policy"). A connection to that port failing while Portcullis allows it
//! shows the stand-in ran after Portcullis for an allowed packet.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::process::Command;

use portcullis_tests::Bench;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | (dst & 0xf);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    b
}

fn sys_bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: a zeroed bpf_attr-sized buffer the kernel reads.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

/// sched_cls: IPv4 TCP to `port` (no IP options) is dropped, the rest ends
/// the chain with OK (as a CNI's programs do).
fn load(port: u16) -> OwnedFd {
    // A u16 loaded from packet memory is little-endian on the host.
    let port_le = i32::from(u16::from_le_bytes(port.to_be_bytes()));
    let prog: Vec<u8> = [
        insn(0x61, 2, 1, 76, 0),      // r2 = skb->data
        insn(0x61, 3, 1, 80, 0),      // r3 = skb->data_end
        insn(0xbf, 4, 2, 0, 0),       // r4 = r2
        insn(0x07, 4, 0, 0, 38),      // r4 += 14 + 20 + 4
        insn(0x2d, 4, 3, 7, 0),       // if r4 > r3 goto pass
        insn(0x69, 5, 2, 12, 0),      // r5 = ethertype
        insn(0x55, 5, 0, 5, 0x0008),  // if r5 != IPv4 goto pass
        insn(0x71, 5, 2, 23, 0),      // r5 = IP protocol
        insn(0x55, 5, 0, 3, 6),       // if r5 != TCP goto pass
        insn(0x69, 5, 2, 36, 0),      // r5 = destination port
        insn(0x55, 5, 0, 1, port_le), // if r5 != port goto pass
        insn(0x05, 0, 0, 2, 0),       // goto drop
        insn(0xb7, 0, 0, 0, 0),       // pass: r0 = TC_ACT_OK
        insn(0x95, 0, 0, 0, 0),       // exit
        insn(0xb7, 0, 0, 0, 2),       // drop: r0 = TC_ACT_SHOT
        insn(0x95, 0, 0, 0, 0),       // exit
    ]
    .concat();
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    attr[4..8].copy_from_slice(&((prog.len() / 8) as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(prog.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let fd = sys_bpf(BPF_PROG_LOAD, &mut attr).expect("BPF_PROG_LOAD of the stand-in CNI program");
    // SAFETY: a new fd the kernel just returned.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Whether this kernel has tcx (Linux 6.6).
pub fn kernel_has_tcx() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 6)
}

/// The stand-in, attached on the node's end of `pod`'s veth after what is
/// there. Detached when dropped (the tcx link closes; the filter is deleted).
pub struct StandInCni {
    _link: Option<OwnedFd>,
    filter: Option<(String, String)>,
}

impl StandInCni {
    /// `tcx`: as a tcx link (the agent attaches so too), else a clsact
    /// filter (a tcx link would run before the agent's filter).
    pub fn attach(bench: &Bench, pod: &str, drop_port: u16, tcx: bool) -> Self {
        let prog = load(drop_port);
        let dev = bench.node_veth(pod).to_owned();
        if tcx {
            // Interface indexes are per namespace: made from inside the node's.
            let link = bench
                .in_node(|| {
                    let ifindex = nix::net::if_::if_nametoindex(dev.as_str()).expect("veth ifindex");
                    // No flags, no anchor: appended at the tail, as Cilium does.
                    let mut attr = [0u8; 128];
                    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
                    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
                    attr[8..12].copy_from_slice(&BPF_TCX_INGRESS.to_ne_bytes());
                    sys_bpf(BPF_LINK_CREATE, &mut attr).expect("tcx link of the stand-in")
                })
                .expect("in the node namespace");
            // SAFETY: a new fd the kernel just returned.
            return Self { _link: Some(unsafe { OwnedFd::from_raw_fd(link as i32) }), filter: None };
        }
        // Before tcx: a clsact filter at a later priority than ours (1).
        let pin = format!("/sys/fs/bpf/pc-test-cni-{}-{dev}", std::process::id());
        let path = std::ffi::CString::new(pin.clone()).unwrap();
        let mut attr = [0u8; 128];
        attr[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
        attr[8..12].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
        sys_bpf(BPF_OBJ_PIN, &mut attr).expect("pinning the stand-in");
        // nsenter, not `tc -n`: that remounts /sys, hiding the pin.
        let ns = bench.node_netns_path().display().to_string();
        let ok = Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .args(["tc", "filter", "add", "dev", &dev, "ingress", "prio", "100", "bpf", "da", "object-pinned", &pin])
            .status()
            .is_ok_and(|s| s.success());
        let _ = std::fs::remove_file(&pin);
        assert!(ok, "tc filter add of the stand-in CNI on {dev}");
        Self { _link: None, filter: Some((ns, dev)) }
    }
}

impl Drop for StandInCni {
    fn drop(&mut self) {
        if let Some((ns, dev)) = &self.filter {
            let _ = Command::new("nsenter")
                .arg(format!("--net={ns}"))
                .args(["tc", "filter", "del", "dev", dev, "ingress", "prio", "100"])
                .status();
        }
    }
}

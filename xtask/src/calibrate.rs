//! How much `kernel.bpf_stats_enabled` itself adds to each program run on
//! this machine: a two-instruction `cgroup_skb` program (`r0 = 1; exit`) is
//! run a million times through `BPF_PROG_TEST_RUN` with statistics off, then
//! on. The difference is what every `run_time_ns / run_cnt` figure carries
//! on top of the program's own cost (two clock reads per run; on a VM that
//! is tens of ns, far more than the ~20 ns bare-metal figure).
//! Raw bpf(2) so xtask needs no eBPF toolchain of its own.

use std::{
    fs,
    os::fd::{AsRawFd as _, OwnedFd},
};

use anyhow::{Result, bail};

use crate::floor::{bpf, load_empty, put_u32};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;

fn put_u64(a: &mut [u8; 128], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// Average ns per run over `repeat` runs, as the kernel measured it.
fn test_run(fd: &OwnedFd, repeat: u32) -> Result<f64> {
    // Ethernet + IPv4 + TCP headers; the program never looks at them.
    let mut pkt = [0u8; 54];
    pkt[12] = 0x08;
    pkt[14] = 0x45;
    let mut a = [0u8; 128];
    put_u32(&mut a, 0, fd.as_raw_fd() as u32);
    put_u32(&mut a, 8, pkt.len() as u32);
    put_u64(&mut a, 16, pkt.as_ptr() as u64);
    put_u32(&mut a, 32, repeat);
    if bpf(BPF_PROG_TEST_RUN, &mut a) < 0 {
        bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    }
    Ok(f64::from(u32::from_ne_bytes([a[36], a[37], a[38], a[39]])))
}

/// Median over a few tries of (stats on) - (stats off), in ns per run.
/// Leaves `bpf_stats_enabled` as it found it.
pub fn stats_overhead_ns() -> Result<f64> {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = fs::read_to_string(PATH)?;
    // BPF_CGROUP_INET_INGRESS (0): any cgroup_skb attach type will do.
    let fd = load_empty("pc_calib", BPF_PROG_TYPE_CGROUP_SKB, 0)?;
    let mut diffs = Vec::new();
    let result = (|| -> Result<()> {
        for _ in 0..5 {
            fs::write(PATH, "0")?;
            let off = test_run(&fd, 1_000_000)?;
            fs::write(PATH, "1")?;
            let on = test_run(&fd, 1_000_000)?;
            diffs.push(on - off);
        }
        Ok(())
    })();
    drop(fd);
    let _ = fs::write(PATH, before.trim());
    result?;
    diffs.sort_by(f64::total_cmp);
    Ok(diffs[diffs.len() / 2].max(0.0))
}

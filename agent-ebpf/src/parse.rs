//! Header parsing for the packet programs: `cgroup_skb`, where packet data
//! starts at the IP header, and the veth (TC) programs, where it starts at
//! the Ethernet header (`Frame::l3` says where the IP header is). Reads use
//! direct packet access (cgroup_skb may read `skb->data`..`data_end` with
//! CAP_BPF, kernel 5.2+) and fall back to `bpf_skb_load_bytes` when a header
//! is not in the linear part, so short or odd packets fail cleanly instead
//! of reading out of bounds.

use agent_common::{
    proto::{self, has_ports},
    source_route::{IPPROTO_ROUTING, MAX_IPV4_OPTIONS, ipv4_options_may_route},
    v4_mapped,
};
use aya_ebpf::programs::sk_buff::SkBuff;

pub struct Flow {
    pub proto: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network byte order; 0 when the packet carries no ports (ICMP, or a
    /// non-first fragment).
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    pub v6: bool,
    /// An IPv4 source route option or an IPv6 routing header: `dst` is only
    /// the first hop (`agent_common::source_route`).
    pub source_routed: bool,
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

const MAX_EXT_HEADERS: usize = 6;

/// A packet and where its IP header starts (0 in `cgroup_skb`, after the
/// Ethernet header on a veth). Constant per call site, so every offset
/// below folds to a constant where it was one before.
#[derive(Clone, Copy)]
pub struct Frame<'a> {
    pub skb: &'a SkBuff,
    pub l3: usize,
}

impl Frame<'_> {
    /// Reads a `T` at `off` from the IP header on.
    #[inline(always)]
    fn read<T: Copy>(self, off: usize) -> Result<T, ()> {
        // SAFETY: the kernel provides data/data_end for the duration of the run.
        let (data, end) = unsafe { ((*self.skb.skb).data as usize, (*self.skb.skb).data_end as usize) };
        let at = self.l3 + off;
        if data + at + size_of::<T>() <= end {
            // SAFETY: bounds checked against data_end just above.
            return Ok(unsafe { core::ptr::read_unaligned((data + at) as *const T) });
        }
        self.skb.load(at).map_err(|_| ())
    }

    /// A helper read at `off` from the IP header on (variable offsets).
    #[inline(always)]
    fn load<T: Copy>(self, off: usize) -> Result<T, ()> {
        self.skb.load(self.l3 + off).map_err(|_| ())
    }
}

#[inline(always)]
fn l4(ctx: Frame<'_>, f: &mut Flow, off: usize) -> Result<(), ()> {
    if f.proto == proto::TCP {
        // Ports (4 bytes) .. flags (byte 13) in one read.
        let p: [u8; 14] = ctx.read(off)?;
        f.tcp_flags = p[13];
        f.sport = [p[0], p[1]];
        f.dport = [p[2], p[3]];
    } else {
        let p: [u8; 4] = ctx.read(off)?;
        f.sport = [p[0], p[1]];
        f.dport = [p[2], p[3]];
    }
    Ok(())
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

pub const ETH_P_ARP: u16 = 0x0806;

/// `skb->protocol` in host order: set by ip_output/ip6_output (and on
/// receive, by `eth_type_trans` from the frame) before the hooks run.
#[inline(always)]
pub fn ether_type(skb: &SkBuff) -> u16 {
    u16::from_be(unsafe { (*skb.skb).protocol } as u16)
}

#[inline(always)]
pub fn parse(ctx: Frame<'_>) -> Result<Flow, ()> {
    // The version nibble is checked again below, so a raw IPv4 socket
    // writing an IPv6 header is malformed, not misread.
    match ether_type(ctx.skb) {
        ETH_P_IP => parse_v4(ctx),
        ETH_P_IPV6 => parse_v6(ctx),
        _ => Err(()),
    }
}

#[inline(always)]
fn parse_v4(ctx: Frame<'_>) -> Result<Flow, ()> {
    let h: [u8; 20] = ctx.read(0)?;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(());
    }
    let frag_off = (((h[6] & 0x1f) as u16) << 8) | h[7] as u16;
    let mut f = Flow {
        proto: h[9],
        src: v4_mapped([h[12], h[13], h[14], h[15]]),
        dst: v4_mapped([h[16], h[17], h[18], h[19]]),
        sport: [0; 2],
        dport: [0; 2],
        tcp_flags: 0,
        v6: false,
        source_routed: ihl > 20 && options_route(ctx, ihl - 20)?,
    };
    if frag_off == 0 && has_ports(f.proto) {
        l4(ctx, &mut f, ihl)?;
    }
    Ok(f)
}

/// Whether the IPv4 options area (`len` bytes after the fixed header) may
/// hold a source route (`ipv4_options_may_route`), read a 4-byte word at a
/// time at constant offsets (only packets with options get here).
#[inline(always)]
fn options_route(ctx: Frame<'_>, len: usize) -> Result<bool, ()> {
    let mut w = 0;
    while w < MAX_IPV4_OPTIONS / 4 && w * 4 < len {
        let word: [u8; 4] = ctx.load(20 + w * 4)?;
        if ipv4_options_may_route(4, |i| word.get(i).copied()) {
            return Ok(true);
        }
        w += 1;
    }
    Ok(false)
}

#[inline(always)]
fn parse_v6(ctx: Frame<'_>) -> Result<Flow, ()> {
    // The addresses are read straight into place: one 40-byte copy of the
    // header and two more of the addresses cost stack the veth programs
    // do not have (the verifier's 512 bytes on Linux 6.1).
    let h: [u8; 8] = ctx.read(0)?;
    if h[0] >> 4 != 6 {
        return Err(());
    }
    let src: [u8; 16] = ctx.read(8)?;
    let dst: [u8; 16] = ctx.read(24)?;
    let mut nh = h[6];
    let mut off = 40usize;
    let mut first_fragment = true;
    let mut source_routed = false;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        match nh {
            // Hop-by-hop, routing, destination options: (len + 1) * 8.
            0 | IPPROTO_ROUTING | 60 => {
                source_routed |= nh == IPPROTO_ROUTING;
                let x: [u8; 2] = ctx.load(off)?;
                nh = x[0];
                off += (x[1] as usize + 1) * 8;
            }
            // Fragment header: 8 bytes; a non-first fragment has no L4 header.
            44 => {
                let x: [u8; 4] = ctx.load(off)?;
                nh = x[0];
                first_fragment = ((((x[2] as u16) << 8) | x[3] as u16) >> 3) == 0;
                off += 8;
            }
            // Authentication header: (len + 2) * 4.
            51 => {
                let x: [u8; 2] = ctx.load(off)?;
                nh = x[0];
                off += (x[1] as usize + 2) * 4;
            }
            _ => break,
        }
        i += 1;
    }
    if matches!(nh, 0 | IPPROTO_ROUTING | 60 | 44 | 51) {
        // More extension headers than we follow: a routing header could
        // hide behind them (fail closed).
        return Err(());
    }
    let mut f = Flow { proto: nh, src, dst, sport: [0; 2], dport: [0; 2], tcp_flags: 0, v6: true, source_routed };
    if first_fragment && has_ports(nh) {
        if off == 40 {
            l4(ctx, &mut f, 40)?;
        } else {
            // Variable offset after extension headers: helper reads only.
            let p: [u8; 4] = ctx.load(off)?;
            f.sport = [p[0], p[1]];
            f.dport = [p[2], p[3]];
            if nh == proto::TCP {
                f.tcp_flags = ctx.load(off + 13)?;
            }
        }
    }
    Ok(f)
}

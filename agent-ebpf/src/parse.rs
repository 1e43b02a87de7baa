//! Header parsing for `cgroup_skb` programs, where packet data starts at the
//! IP header. Every read goes through `bpf_skb_load_bytes` (via `load`), so
//! short or odd packets fail cleanly instead of reading out of bounds.

use agent_common::{proto, v4_mapped};
use aya_ebpf::programs::SkBuffContext;

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
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

const MAX_EXT_HEADERS: usize = 6;

#[inline(always)]
fn has_ports(p: u8) -> bool {
    p == proto::TCP || p == proto::UDP || p == proto::SCTP
}

#[inline(always)]
fn l4(ctx: &SkBuffContext, f: &mut Flow, off: usize) -> Result<(), ()> {
    let p: [u8; 4] = ctx.load(off).map_err(|_| ())?;
    f.sport = [p[0], p[1]];
    f.dport = [p[2], p[3]];
    if f.proto == proto::TCP {
        f.tcp_flags = ctx.load(off + 13).map_err(|_| ())?;
    }
    Ok(())
}

#[inline(always)]
pub fn parse(ctx: &SkBuffContext) -> Result<Flow, ()> {
    let first: u8 = ctx.load(0).map_err(|_| ())?;
    match first >> 4 {
        4 => parse_v4(ctx),
        6 => parse_v6(ctx),
        _ => Err(()),
    }
}

#[inline(always)]
fn parse_v4(ctx: &SkBuffContext) -> Result<Flow, ()> {
    let h: [u8; 20] = ctx.load(0).map_err(|_| ())?;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
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
    };
    if frag_off == 0 && has_ports(f.proto) {
        l4(ctx, &mut f, ihl)?;
    }
    Ok(f)
}

#[inline(always)]
fn parse_v6(ctx: &SkBuffContext) -> Result<Flow, ()> {
    let h: [u8; 40] = ctx.load(0).map_err(|_| ())?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    let mut nh = h[6];
    let mut off = 40usize;
    let mut first_fragment = true;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        match nh {
            // Hop-by-hop, routing, destination options: (len + 1) * 8.
            0 | 43 | 60 => {
                let x: [u8; 2] = ctx.load(off).map_err(|_| ())?;
                nh = x[0];
                off += (x[1] as usize + 1) * 8;
            }
            // Fragment header: 8 bytes; a non-first fragment has no L4 header.
            44 => {
                let x: [u8; 4] = ctx.load(off).map_err(|_| ())?;
                nh = x[0];
                first_fragment = ((((x[2] as u16) << 8) | x[3] as u16) >> 3) == 0;
                off += 8;
            }
            // Authentication header: (len + 2) * 4.
            51 => {
                let x: [u8; 2] = ctx.load(off).map_err(|_| ())?;
                nh = x[0];
                off += (x[1] as usize + 2) * 4;
            }
            _ => break,
        }
        i += 1;
    }
    let mut f = Flow { proto: nh, src, dst, sport: [0; 2], dport: [0; 2], tcp_flags: 0, v6: true };
    if first_fragment && has_ports(nh) {
        l4(ctx, &mut f, off)?;
    }
    Ok(f)
}

//! DNS over TCP from a pod's wire (`veth::dns`): a SYN is assigned to the
//! agent's listener in the node's namespace with `bpf_sk_assign` (a
//! transparent one, so the connection it accepts keeps the resolver's
//! address and port), and every segment is marked so the agent's policy
//! route delivers it locally, where the connection's later segments find
//! the accepted socket by its addresses (net/core/filter.c
//! `bpf_sk_assign`; the TPROXY way, as Cilium's DNS proxy). Only SYNs are
//! assigned, and only to the agent's port: a resolver listening on the
//! node itself (a node-local DNS cache on the resolver's address) must
//! never be handed a pod's connection directly. The agent judges each
//! query by the gates' pipeline.

use agent_common::{VethTcpDns, proto};
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple},
    helpers::generated::{bpf_sk_assign, bpf_sk_lookup_tcp, bpf_sk_release},
    programs::TcContext,
};

use crate::{
    maps::VETH_TCP_DNS,
    parse::{Flow, TCP_ACK, TCP_SYN},
};

/// Why a segment could not be handed over.
pub enum NoGate {
    /// No listener (no agent, or none configured).
    Listener,
    /// The kernel refused the assignment.
    Assign,
}

/// Hands the segment to the agent's socket; the caller returns "pass".
/// Its own BPF function: the lookup's tuple stays off `from_pod`'s stack.
#[inline(never)]
pub fn to_agent(ctx: &TcContext, f: &Flow) -> Result<(), NoGate> {
    let Some(cfg) = VETH_TCP_DNS.get(0).copied().filter(|c: &VethTcpDns| c.port != [0, 0]) else {
        return Err(NoGate::Listener);
    };
    if f.proto != proto::TCP {
        return Err(NoGate::Listener);
    }
    if f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        let sk = lookup(ctx, f, cfg.port).ok_or(NoGate::Listener)?;
        // SAFETY: `sk` is a referenced socket from the lookup, released below.
        let ret = unsafe { bpf_sk_assign(ctx.as_ptr(), sk, 0) };
        unsafe { bpf_sk_release(sk) };
        if ret != 0 {
            return Err(NoGate::Assign);
        }
    }
    ctx.set_mark(cfg.mark);
    Ok(())
}

/// The TCP socket of the node's namespace for the segment's addresses with
/// destination port `dport` (network order).
#[inline(always)]
fn lookup(ctx: &TcContext, f: &Flow, dport: [u8; 2]) -> Option<*mut core::ffi::c_void> {
    // SAFETY: zeroed plain data, then the fields of the family used.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if f.v6 {
        let v6 = unsafe { &mut t.__bindgen_anon_1.ipv6 };
        let word = |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]]);
        let mut i = 0;
        while i < 4 {
            v6.saddr[i] = word(&f.src, i);
            v6.daddr[i] = word(&f.dst, i);
            i += 1;
        }
        v6.sport = u16::from_ne_bytes(f.sport);
        v6.dport = u16::from_ne_bytes(dport);
        size_of_val(v6)
    } else {
        let v4 = unsafe { &mut t.__bindgen_anon_1.ipv4 };
        v4.saddr = u32::from_ne_bytes([f.src[12], f.src[13], f.src[14], f.src[15]]);
        v4.daddr = u32::from_ne_bytes([f.dst[12], f.dst[13], f.dst[14], f.dst[15]]);
        v4.sport = u16::from_ne_bytes(f.sport);
        v4.dport = u16::from_ne_bytes(dport);
        size_of_val(v4)
    };
    // SAFETY: a tuple of `size` bytes; the kernel returns a referenced
    // socket or null.
    let sk = unsafe { bpf_sk_lookup_tcp(ctx.as_ptr(), &raw mut t, size as u32, BPF_F_CURRENT_NETNS as u64, 0) };
    (!sk.is_null()).then_some(sk.cast())
}

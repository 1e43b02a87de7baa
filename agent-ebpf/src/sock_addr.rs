//! Destinations as the socket hooks see them (`bpf_sock_addr`), and the
//! flow a judged `connect()` leaves in the socket's storage. Shared by the
//! socket hooks (`sock`) and their DNS side (`sock_dns`).

use agent_common::{LiveFlow, proto};
use aya_ebpf::programs::SockAddrContext;

use crate::{maps::SK_FLOWS, verdict::Dest};

/// The hooks' "allow" return value.
pub(crate) const ALLOW: i32 = 1;

/// An IPv4 destination (also as `::ffff:a.b.c.d` on an IPv6 socket).
#[inline(always)]
pub(crate) fn is_v4(d: &Dest) -> bool {
    d.ip[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
}

/// `bpf_sock_addr.user_ip6` words <-> the 16 address bytes (both in memory
/// order, i.e. network order).
#[inline(always)]
pub(crate) fn ip_of(w: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (w[0].to_ne_bytes(), w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
}

#[inline(always)]
pub(crate) fn words_of(ip: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([ip[0], ip[1], ip[2], ip[3]]),
        u32::from_ne_bytes([ip[4], ip[5], ip[6], ip[7]]),
        u32::from_ne_bytes([ip[8], ip[9], ip[10], ip[11]]),
        u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
    ]
}

/// Writes `bpf_sock_addr.user_ip6` one 32-bit word at a time: the verifier
/// accepts only 4-byte stores there (net/core/filter.c
/// `sock_addr_is_valid_access`), and LLVM may merge a plain array
/// assignment into 8-byte stores.
#[inline(always)]
pub(crate) fn set_user_ip6(sa: *mut aya_ebpf::bindings::bpf_sock_addr, ip: &[u8; 16]) {
    let w = words_of(ip);
    // SAFETY: the kernel's bpf_sock_addr of this run; each store is one
    // aligned u32 of `user_ip6`.
    unsafe {
        let p = core::ptr::addr_of_mut!((*sa).user_ip6).cast::<u32>();
        core::ptr::write_volatile(p, w[0]);
        core::ptr::write_volatile(p.add(1), w[1]);
        core::ptr::write_volatile(p.add(2), w[2]);
        core::ptr::write_volatile(p.add(3), w[3]);
    }
}

/// Stores (or overwrites, on a reconnect) what the socket's `connect()` was
/// judged for: exactly `dest` (its port only where the protocol has ports,
/// as `parse` reports them), with `flags`.
#[inline(always)]
pub(crate) fn remember_flow(ctx: &SockAddrContext, dest: &Dest, endpoint: u32, flags: u8) {
    let port = if proto::has_ports(dest.proto) { dest.port } else { [0; 2] };
    let mut flow = LiveFlow { ip: dest.ip, endpoint, flags, proto: dest.proto, port };
    // SAFETY: the kernel's sock pointer of this bpf_sock_addr.
    let p = unsafe { SK_FLOWS.get_or_insert_ptr_mut(ctx, Some(&mut flow)) };
    if !p.is_null() {
        // SAFETY: non-null storage of this socket; overwrite an old value.
        unsafe { *p = flow };
    }
}

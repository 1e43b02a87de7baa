//! The network namespace of a packet's socket, for the packet programs:
//! the loopback rule (is the socket in the host's namespace?) and the DNS
//! gates (keyed by namespace). `bpf_get_netns_cookie` takes a `__sk_buff`
//! only from Linux 6.15 (net/core/filter.c `cg_skb_func_proto`); before,
//! `cgroup/sock_create` notes every new socket's namespace in `SK_NETNS`
//! (a socket never changes namespace), and the packet programs read it.
//! Sockets created before the programs were attached have no note: a DNS
//! socket's namespace then comes from `DNS_SOCKS` (its connect hook), any
//! other is unknown and treated as the host's (loopback denied: fail
//! closed).

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_netns_cookie, bpf_sk_storage_get},
    programs::{SkBuffContext, SockContext},
};

use crate::{
    maps::{DNS_SOCKS, SK_NETNS, SKB_NETNS_HELPER},
    skb_sock::{full_sock, socket_storage},
};

/// `BPF_SK_STORAGE_GET_F_CREATE`.
const F_CREATE: u64 = 1;

#[inline(always)]
fn helper() -> bool {
    // SAFETY: read-only data set at load.
    unsafe { read_volatile(&SKB_NETNS_HELPER) != 0 }
}

/// The cookie of the namespace of the packet's socket (`cookie`: its socket
/// cookie), if known.
#[inline(always)]
pub(crate) fn of_packet(ctx: &SkBuffContext, cookie: u64) -> Option<u64> {
    if helper() {
        return Some(unsafe { bpf_get_netns_cookie(ctx.as_ptr()) });
    }
    if let Some(netns) = full_sock(ctx).and_then(|full| socket_storage(&SK_NETNS, full)) {
        return Some(netns);
    }
    // SAFETY: plain data copied out.
    unsafe { DNS_SOCKS.get(cookie) }.map(|o| o.netns_cookie)
}

/// `cgroup/sock_create`: notes the new socket's namespace (only where the
/// packet programs cannot ask the kernel). Always allows.
#[inline(always)]
pub fn note(ctx: &SockContext) -> i32 {
    if helper() {
        return 1;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let map = core::ptr::from_ref(&SK_NETNS).cast_mut().cast();
    // SAFETY: in cgroup_sock programs the socket argument is the context
    // itself (net/core/bpf_sk_storage.c `bpf_sk_storage_get_cg_sock`).
    let v = unsafe { bpf_sk_storage_get(map, ctx.as_ptr(), core::ptr::null_mut(), F_CREATE) }.cast::<u64>();
    if !v.is_null() {
        // SAFETY: this socket's fresh storage.
        unsafe { *v = netns };
    }
    1
}

//! The socket behind a packet (`cgroup_skb` programs): its full socket and
//! what the socket hooks stored in its local storage. Shared by the packet
//! programs (`skb`), their DNS side (`skb_dns`) and `netns`.

use agent_common::LiveFlow;
use aya_ebpf::{
    bindings::bpf_sock,
    btf_maps::SkStorage,
    helpers::generated::{bpf_sk_fullsock, bpf_sk_storage_get},
    programs::SkBuffContext,
};

use crate::maps::SK_FLOWS;

/// The packet's full socket, if it has one.
#[inline(always)]
pub(crate) fn full_sock(ctx: &SkBuffContext) -> Option<*mut bpf_sock> {
    // SAFETY: skb->sk is a kernel pointer or null; bpf_sk_fullsock checks it.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    let full = unsafe { bpf_sk_fullsock(sk) };
    (!full.is_null()).then_some(full)
}

/// The socket's `SK_FLOWS` entry (set by the connect/sendmsg hooks).
#[inline(always)]
pub(crate) fn socket_flow(full: *mut bpf_sock) -> Option<LiveFlow> {
    socket_storage(&SK_FLOWS, full)
}

/// A full socket's value in the socket-storage map `map`, copied out.
#[inline(always)]
pub(crate) fn socket_storage<T: Copy>(map: &SkStorage<T>, full: *mut bpf_sock) -> Option<T> {
    // A map reference is the map definition's address (relocated at load).
    let map = core::ptr::from_ref(map).cast_mut().cast();
    let v = unsafe { bpf_sk_storage_get(map, full.cast(), core::ptr::null_mut(), 0) }.cast::<T>();
    // SAFETY: non-null storage of this socket, copied out at once.
    (!v.is_null()).then(|| unsafe { *v })
}

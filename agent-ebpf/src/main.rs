//! Kernel programs of Portcullis. Thin entry points around the logic in the
//! modules; every map is in `maps.rs`. See docs/ARCHITECTURE.md.
#![no_std]
#![no_main]

mod cache;
mod endpoint;
mod events;
mod flow;
mod maps;
mod netns;
mod parse;
mod rare;
mod skb;
mod skb_dns;
mod skb_sock;
mod sock;
mod sock_addr;
mod sock_dns;
mod sockopt;
mod verdict;
mod veth;
mod veth_dns;

use agent_common::Hook;
use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, classifier},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockoptContext, TcContext},
};

#[cgroup_sock_addr(connect4)]
pub fn pc_connect4(ctx: SockAddrContext) -> i32 {
    sock::handle(&ctx, Hook::Connect4, false)
}

#[cgroup_sock_addr(connect6)]
pub fn pc_connect6(ctx: SockAddrContext) -> i32 {
    sock::handle(&ctx, Hook::Connect6, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn pc_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::handle(&ctx, Hook::Sendmsg4, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn pc_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::handle(&ctx, Hook::Sendmsg6, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn pc_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock_dns::recvmsg(&ctx, false)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn pc_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock_dns::recvmsg(&ctx, true)
}

#[cgroup_skb(egress)]
pub fn pc_egress(ctx: SkBuffContext) -> i32 {
    skb::egress(&ctx)
}

#[cgroup_skb(ingress)]
pub fn pc_ingress(ctx: SkBuffContext) -> i32 {
    skb::ingress(&ctx)
}

#[cgroup_sock(sock_release)]
pub fn pc_release(ctx: SockContext) -> i32 {
    sock::release(&ctx)
}

#[cgroup_sock(sock_create)]
pub fn pc_sock_create(ctx: SockContext) -> i32 {
    netns::note(&ctx)
}

#[cgroup_sockopt(setsockopt)]
pub fn pc_setsockopt(ctx: SockoptContext) -> i32 {
    sockopt::setsockopt(&ctx)
}

/// The pod's veth, host side, tc ingress: what the pod sends.
#[classifier]
pub fn pc_from_pod(ctx: TcContext) -> i32 {
    veth::from_pod(&ctx)
}

/// The pod's veth, host side, tc egress: what the pod receives.
#[classifier]
pub fn pc_to_pod(ctx: TcContext) -> i32 {
    veth::to_pod(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

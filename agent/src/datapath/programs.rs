//! The one registry of kernel programs (kunai's `compat.rs` in spirit):
//! each program's name in the object, its kind, its attach type, and
//! whether it uses the socket hooks' verdict cache. Loading, attaching,
//! pinning and the tests all read this table; nothing else lists programs.
//! Also what every load needs: the object itself and its pinned maps.

use aya::{Ebpf, programs::ProgramError};

use super::error::LoadError;

/// `enum bpf_attach_type` (include/uapi/linux/bpf.h) of the hooks we use.
pub mod attach_type {
    pub const CGROUP_INET_INGRESS: u32 = 0;
    pub const CGROUP_INET_EGRESS: u32 = 1;
    pub const CGROUP_INET_SOCK_CREATE: u32 = 2;
    pub const CGROUP_INET4_CONNECT: u32 = 10;
    pub const CGROUP_INET6_CONNECT: u32 = 11;
    pub const CGROUP_UDP4_SENDMSG: u32 = 14;
    pub const CGROUP_UDP6_SENDMSG: u32 = 15;
    pub const CGROUP_UDP4_RECVMSG: u32 = 19;
    pub const CGROUP_UDP6_RECVMSG: u32 = 20;
    pub const CGROUP_SETSOCKOPT: u32 = 22;
    pub const CGROUP_INET_SOCK_RELEASE: u32 = 34;
}

/// How aya loads a program (its program type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `cgroup/connect*`, `sendmsg*`, `recvmsg*` (`CgroupSockAddr`).
    SockAddr,
    /// `cgroup_skb/*` (`CgroupSkb`).
    Skb,
    /// `cgroup/sock_create`, `sock_release` (`CgroupSock`).
    Sock,
    /// `cgroup/setsockopt` (`CgroupSockopt`).
    Sockopt,
}

#[derive(Clone, Copy, Debug)]
pub struct Program {
    pub name: &'static str,
    pub kind: Kind,
    pub attach_type: u32,
    /// The verdict-cache slot it uses (`agent_common::Hook` order, the index
    /// of its value in a load's own cache), if it uses the cache.
    pub cache_slot: Option<u32>,
}

const fn prog(name: &'static str, kind: Kind, attach_type: u32, cache_slot: Option<u32>) -> Program {
    Program { name, kind, attach_type, cache_slot }
}

/// Every program of the object.
pub const PROGRAMS: [Program; 11] = {
    use attach_type as t;
    [
        prog("pc_connect4", Kind::SockAddr, t::CGROUP_INET4_CONNECT, Some(0)),
        prog("pc_connect6", Kind::SockAddr, t::CGROUP_INET6_CONNECT, Some(1)),
        prog("pc_sendmsg4", Kind::SockAddr, t::CGROUP_UDP4_SENDMSG, Some(2)),
        prog("pc_sendmsg6", Kind::SockAddr, t::CGROUP_UDP6_SENDMSG, Some(3)),
        prog("pc_recvmsg4", Kind::SockAddr, t::CGROUP_UDP4_RECVMSG, None),
        prog("pc_recvmsg6", Kind::SockAddr, t::CGROUP_UDP6_RECVMSG, None),
        prog("pc_egress", Kind::Skb, t::CGROUP_INET_EGRESS, None),
        prog("pc_ingress", Kind::Skb, t::CGROUP_INET_INGRESS, None),
        prog("pc_release", Kind::Sock, t::CGROUP_INET_SOCK_RELEASE, None),
        prog("pc_sock_create", Kind::Sock, t::CGROUP_INET_SOCK_CREATE, None),
        prog("pc_setsockopt", Kind::Sockopt, t::CGROUP_SETSOCKOPT, None),
    ]
};

/// The veth programs (`agent-ebpf/src/veth.rs`, `sched_cls`): attached per
/// interface, not per cgroup (`tc`), so not in `PROGRAMS`.
pub const VETH_PROGRAMS: [(&str, super::tc::Direction); 2] =
    [("pc_from_pod", super::tc::Direction::FromPod), ("pc_to_pod", super::tc::Direction::ToPod)];

/// The attach types of the cached hooks, in cache-slot order.
pub const CACHED_ATTACH_TYPES: [u32; 4] = {
    use attach_type as t;
    [t::CGROUP_INET4_CONNECT, t::CGROUP_INET6_CONNECT, t::CGROUP_UDP4_SENDMSG, t::CGROUP_UDP6_SENDMSG]
};

pub fn by_name(name: &str) -> Option<&'static Program> {
    PROGRAMS.iter().find(|p| p.name == name)
}

/// The programs that use the verdict cache.
pub fn cached() -> impl Iterator<Item = &'static Program> {
    PROGRAMS.iter().filter(|p| p.cache_slot.is_some())
}

/// Every program name, for tests and `bpftool` checks.
pub fn names() -> impl Iterator<Item = &'static str> {
    PROGRAMS.iter().map(|p| p.name)
}

/// The compiled kernel programs (built by `agent/build.rs`).
pub(super) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// A map pinned in node mode: its name in the object and the version of
/// its key, value and type (bump it with any change to them: an agent
/// adopts a pinned map only at its own version, `pin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapPin {
    pub name: &'static str,
    pub version: u32,
}

const fn v1(name: &'static str) -> MapPin {
    MapPin { name, version: 1 }
}

const fn v2(name: &'static str) -> MapPin {
    MapPin { name, version: 2 }
}

/// Every map of the object, pinned in node mode. (`SOLO_CACHE` is not here:
/// each load has its own; `solo` pins those, at `SOLO_CACHE_VERSION`.)
pub const MAPS: [MapPin; 28] = [
    v1("CONFIG"),
    v1("ENDPOINTS"),
    v1("EP_CACHE"),
    // 2: the value carries the rule that allowed the name (16 bytes).
    v2("LEARNED"),
    v1("CIDRS"),
    v1("DNS_SERVERS"),
    v1("GATES"),
    v1("GATE_PORTS"),
    v1("GATE_CLIENTS"),
    v1("DNS_SOCKS"),
    v1("COUNTERS"),
    v1("EVENT_RATE"),
    v1("DENIED_EVENTS"),
    v1("DNS_HOLD"),
    v1("SK_FLOWS"),
    v1("SK_NETNS"),
    v1("INBOUND"),
    v1("SOCK_OWNERS"),
    v1("VERDICT_CACHE"),
    v1("TC_IFACES"),
    v1("POD_ADDRS"),
    v1("TC_FLOWS"),
    v1("VETH_TCP_DNS"),
    v1("VETH_COUNTERS"),
    v1("FLOW_COUNTERS"),
    v1("FLOW_DEST_SLOTS"),
    v1("FLOW_DESTS"),
    // aya-log's ring (`datapath/kernel_log.rs`): one for every load, so the
    // per-attach-point loads' events are read too, and a restarted agent
    // reads what the programs logged while it was away.
    v1("AYA_LOGS"),
];

/// The version of each map as the previous release (layout `v3`) pinned
/// it (every one at version 1, as today; the veth maps are new).
pub const LEGACY_V3_MAPS: [(&str, u32); 19] = {
    let mut out = [("", 0); 19];
    let mut i = 0;
    while i < out.len() {
        out[i] = (MAPS[i].name, 1);
        i += 1;
    }
    out
};

/// The version of an attach point's own verdict cache (`SOLO_CACHE`).
pub const SOLO_CACHE_VERSION: u32 = 1;

pub fn map_version(name: &str) -> Option<u32> {
    MAPS.iter().find(|m| m.name == name).map(|m| m.version)
}

/// A program of a loaded object, as its aya type.
pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

/// Whether loads count per endpoint (`FLOW_COUNTING` in the object): on
/// unless `--no-flow-counters` (the bench's "counting off").
static FLOW_COUNTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

pub fn set_flow_counting(on: bool) {
    FLOW_COUNTING.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The value loads give `FLOW_COUNTING`.
pub fn flow_counting() -> u32 {
    u32::from(FLOW_COUNTING.load(std::sync::atomic::Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_slots_follow_the_cached_attach_types() {
        let cached: Vec<(u32, u32)> = cached().map(|p| (p.cache_slot.unwrap(), p.attach_type)).collect();
        let want: Vec<(u32, u32)> = CACHED_ATTACH_TYPES.iter().enumerate().map(|(i, t)| (i as u32, *t)).collect();
        assert_eq!(cached, want);
        for (i, p) in PROGRAMS.iter().enumerate() {
            assert!(PROGRAMS[..i].iter().all(|q| q.name != p.name && q.attach_type != p.attach_type), "{p:?} twice");
        }
    }
}

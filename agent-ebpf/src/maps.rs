//! Every map of the kernel side, in one place (cilium `lib/maps.h`).
//! Names stay within 15 characters: the kernel truncates object names.

use agent_common::{
    COUNTERS_LEN, CidrKey, CidrValue, Config, DnsServerKey, DnsSockInfo, EndpointInfo, FLOW_DEST_SLOT_ENTRIES,
    FLOW_DESTS_ENTRIES, FLOW_ENDPOINTS, FlowCounters, FlowDestKey, FlowDestSlot, GateKey, GatePortKey, GatePortValue, GateValue,
    InboundKey, LearnedKey, LearnedValue, LiveFlow, MAX_ENDPOINTS, PodAddrKey, RateState, SockOwner, TcFlowKey, TcFlowValue,
    TcIface, VETH_COUNTERS_LEN, VerdictCache, VethTcpDns, limits,
};
use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC},
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};

/// Runtime knobs, one entry (see `agent_common::Config`).
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// cgroup id -> endpoint, written by the agent for each endpoint cgroup.
#[map]
pub static ENDPOINTS: HashMap<u64, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, BPF_F_NO_PREALLOC);

/// cgroup id -> endpoint found by walking ancestors; stale when its
/// `generation` differs from `CONFIG.generation`.
#[map]
pub static EP_CACHE: LruHashMap<u64, EndpointInfo> = LruHashMap::with_max_entries(limits::EP_CACHE_ENTRIES, BPF_F_NO_COMMON_LRU);

/// (endpoint, proto, port, IP) learned from DNS, with expiry. Exact-match
/// hash: the per-packet path never scans. Not preallocated, like
/// `ENDPOINTS` (slab elements; memory grows with what is learned, not with
/// the cap).
#[map]
pub static LEARNED: HashMap<LearnedKey, LearnedValue> = HashMap::with_max_entries(limits::LEARNED_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-endpoint CIDR rules merged with the always-denied ranges.
#[map]
pub static CIDRS: LpmTrie<CidrKey, CidrValue> = LpmTrie::with_max_entries(limits::CIDR_ENTRIES, BPF_F_NO_PREALLOC);

/// Trusted resolvers per endpoint.
#[map]
pub static DNS_SERVERS: HashMap<DnsServerKey, u32> = HashMap::with_max_entries(limits::DNS_SERVER_ENTRIES, 0);

/// DNS-over-TCP gates of the agent, per (netns, endpoint, resolver).
#[map]
pub static GATES: HashMap<GateKey, GateValue> = HashMap::with_max_entries(limits::GATE_ENTRIES, BPF_F_NO_PREALLOC);

/// Gate port in a namespace -> the resolver it stands for (recvmsg rewrite,
/// egress pass to the gate).
#[map]
pub static GATE_PORTS: HashMap<GatePortKey, GatePortValue> =
    HashMap::with_max_entries(limits::GATE_PORT_ENTRIES, BPF_F_NO_PREALLOC);

/// (netns, client port, protocol) of a datagram or SYN sent to a DNS gate ->
/// the process behind it (from `DNS_SOCKS`), for the blocked log's pid/comm.
#[map]
pub static GATE_CLIENTS: LruHashMap<GatePortKey, u32> =
    LruHashMap::with_max_entries(limits::GATE_CLIENT_ENTRIES, BPF_F_NO_COMMON_LRU);

/// socket cookie -> process + netns that sent DNS on it (for re-injection).
#[map]
pub static DNS_SOCKS: LruHashMap<u64, DnsSockInfo> = LruHashMap::with_max_entries(limits::DNS_SOCK_ENTRIES, BPF_F_NO_COMMON_LRU);

// LRU maps use per-CPU LRU lists (BPF_F_NO_COMMON_LRU): inserts from the
// connect hooks then never contend on the map-wide LRU lock.

/// Verdict counters by (hook, reason), then loss counters.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Verdict counters of the veth hooks by (hook, reason)
/// (`agent_common::counter_index`).
#[map]
pub static VETH_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(VETH_COUNTERS_LEN, 0);

/// Per-endpoint flow counters (`flow.rs`, `agent_common::flow`).
#[map]
pub static FLOW_COUNTERS: PerCpuArray<FlowCounters> = PerCpuArray::with_max_entries(FLOW_ENDPOINTS, 0);

/// Allowed connections per endpoint and destination (`flow::dest`,
/// `agent_common::flow`): the slots a connection bumps, and the hash their
/// counts move to when another destination claims the slot.
#[map]
pub static FLOW_DEST_SLOTS: PerCpuArray<FlowDestSlot> = PerCpuArray::with_max_entries(FLOW_DEST_SLOT_ENTRIES, 0);
#[map]
pub static FLOW_DESTS: LruPerCpuHashMap<FlowDestKey, u64> = LruPerCpuHashMap::with_max_entries(FLOW_DESTS_ENTRIES, 0);

/// Whether the programs count per endpoint (`FLOW_COUNTERS`): set by the
/// agent at load (`.rodata`; 0 makes the verifier drop every counting
/// branch: the bench's "counting off").
#[unsafe(no_mangle)]
pub static FLOW_COUNTING: u32 = 1;

/// This CPU's endpoints of recently seen veths, for the bytes to a pod
/// (`flow::veth_ingress_bytes`): not pinned, a cache.
#[map]
pub static VETH_EP_MEMO: PerCpuArray<VethMemo> = PerCpuArray::with_max_entries(VETH_MEMO_ENTRIES, 0);
pub const VETH_MEMO_ENTRIES: u32 = 64;

#[repr(C)]
pub struct VethMemo {
    pub generation: u64,
    pub ifindex: u32,
    pub endpoint: u32,
}

/// Per-endpoint, per-CPU token bucket for denied-attempt events.
#[map]
pub static EVENT_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(MAX_ENDPOINTS, 0);

/// Denied (or audited) attempts for the blocked-connection log.
#[map]
pub static DENIED_EVENTS: RingBuf = RingBuf::with_byte_size(limits::DENIED_EVENTS_BYTES, 0);

/// DNS answers held back until the agent has learned from them.
#[map]
pub static DNS_HOLD: RingBuf = RingBuf::with_byte_size(limits::DNS_HOLD_BYTES, 0);

/// Per UDP/ICMP socket (socket-local storage, freed with the socket): set
/// when its connect() was allowed. Its packets pass on this one lookup,
/// which starts at the socket itself (no hashing, no global table); a
/// sendto() to another address meets the sendmsg hook. TCP sockets need no
/// entry (see `skb::is_established`).
#[btf_map]
pub static SK_FLOWS: SkStorage<LiveFlow> = SkStorage::new();

/// Per socket of an endpoint (socket-local storage): its network
/// namespace's cookie, written by `cgroup/sock_create` where the packet
/// programs cannot ask the kernel (`bpf_get_netns_cookie` in `cgroup_skb`
/// needs Linux 6.15; `SKB_NETNS_HELPER`).
#[btf_map]
pub static SK_NETNS: SkStorage<u64> = SkStorage::new();

/// Peers that contacted the endpoint; replies to them are allowed.
#[map]
pub static INBOUND: LruHashMap<InboundKey, u64> = LruHashMap::with_max_entries(limits::INBOUND_ENTRIES, BPF_F_NO_COMMON_LRU);

/// Who is behind a deferred UDP connect(), for the blocked log.
#[map]
pub static SOCK_OWNERS: LruHashMap<u64, SockOwner> =
    LruHashMap::with_max_entries(limits::SOCK_OWNER_ENTRIES, BPF_F_NO_COMMON_LRU);

/// Per (attach point, attach type, CPU): the socket hooks' verdict cache
/// (`cache.rs`). The kernel allocates one value per cgroup a program using
/// it is attached to; the agent turns it on by writing the endpoint.
#[map]
#[expect(deprecated, reason = "BPF_MAP_TYPE_CGRP_STORAGE (its successor) is keyed by cgroup, not attach point")]
pub static VERDICT_CACHE: aya_ebpf::maps::PerCpuCgroupStorage<VerdictCache> = aya_ebpf::maps::PerCpuCgroupStorage::new();

/// Whether this load is attached at one cgroup only (`portcullis exec`;
/// in node mode with pins, each attach point's load of the cached hooks,
/// agent/src/ebpf/solo.rs): set by the agent at load (`.rodata`, so the
/// verifier knows it and drops the other branch of `cache::storage`).
#[unsafe(no_mangle)]
pub static SOLO_ATTACH: u32 = 0;

/// Whether `cgroup_skb` programs may call `bpf_get_netns_cookie` (Linux
/// 6.15): 1, else 0 and they read `SK_NETNS`. Set by the agent at load from
/// a probe (agent/src/ebpf/probe.rs); `.rodata`, so the verifier drops the
/// branch this kernel cannot run.
#[unsafe(no_mangle)]
pub static SKB_NETNS_HELPER: u32 = 1;

/// The verdict cache of such a load, per (hook, CPU): the same values as
/// `VERDICT_CACHE`, reached without a helper call (the verifier inlines a
/// per-CPU array lookup: kernel/bpf/arraymap.c `percpu_array_map_gen_lookup`).
#[map]
pub static SOLO_CACHE: PerCpuArray<VerdictCache> = PerCpuArray::with_max_entries(4, 0);

/// Host-side veth ifindex -> the pod's endpoint (the veth programs, `tc.rs`).
#[map]
pub static TC_IFACES: HashMap<u32, TcIface> = HashMap::with_max_entries(limits::TC_IFACE_ENTRIES, BPF_F_NO_PREALLOC);

/// The addresses each pod may send from on its veth.
#[map]
pub static POD_ADDRS: HashMap<PodAddrKey, u32> = HashMap::with_max_entries(limits::POD_ADDR_ENTRIES, BPF_F_NO_PREALLOC);

/// Flows the veth programs already let through: the common case costs this
/// one lookup, not a second verdict. Per-CPU LRU lists, as above.
#[map]
pub static TC_FLOWS: LruHashMap<TcFlowKey, TcFlowValue> =
    LruHashMap::with_max_entries(limits::TC_FLOW_ENTRIES, BPF_F_NO_COMMON_LRU);

/// The agent's listener for DNS over TCP from pods' veths (one entry).
#[map]
pub static VETH_TCP_DNS: Array<VethTcpDns> = Array::with_max_entries(1, 0);

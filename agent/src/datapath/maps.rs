//! Typed access to the policy maps (the firezone "Program facade"). The
//! agent is the only writer; the kernel only reads these (and writes caches).

use std::{collections::HashSet, sync::Arc};

use agent_common::{
    COUNTERS_LEN, CidrKey, CidrValue, Config, DnsServerKey, DnsSockInfo, EndpointInfo, GateKey, GatePortKey, GatePortValue,
    GateValue, InboundKey, LearnedKey, LearnedValue, VETH_COUNTERS_LEN,
};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
};

use super::{
    error::LoadError, flow_counters::FlowCounterMap, flow_dests::FlowDestMap, take, verdict_cache::VerdictCacheMap,
    veth_maps::VethMaps,
};

pub struct PolicyMaps {
    config: Array<MapData, Config>,
    endpoints: HashMap<MapData, u64, EndpointInfo>,
    learned: HashMap<MapData, LearnedKey, LearnedValue>,
    cidrs: LpmTrie<MapData, CidrKey, CidrValue>,
    dns_servers: HashMap<MapData, DnsServerKey, u32>,
    counters: Arc<KernelCounters>,
    dns_socks: HashMap<MapData, u64, DnsSockInfo>,
    inbound: HashMap<MapData, InboundKey, u64>,
    gates: HashMap<MapData, GateKey, GateValue>,
    gate_ports: HashMap<MapData, GatePortKey, GatePortValue>,
    gate_clients: Arc<GateClients>,
    verdict_cache: VerdictCacheMap,
    veth: VethMaps,
    current: Config,
}

impl PolicyMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            config: take(ebpf, "CONFIG")?,
            endpoints: take(ebpf, "ENDPOINTS")?,
            learned: take(ebpf, "LEARNED")?,
            cidrs: take(ebpf, "CIDRS")?,
            dns_servers: take(ebpf, "DNS_SERVERS")?,
            counters: Arc::new(KernelCounters {
                cgroup: take(ebpf, "COUNTERS")?,
                veth: take(ebpf, "VETH_COUNTERS")?,
                flows: FlowCounterMap::new(take(ebpf, "FLOW_COUNTERS")?),
                dests: FlowDestMap::new(take(ebpf, "FLOW_DESTS")?, take(ebpf, "FLOW_DEST_SLOTS")?),
            }),
            dns_socks: take(ebpf, "DNS_SOCKS")?,
            inbound: take(ebpf, "INBOUND")?,
            gates: take(ebpf, "GATES")?,
            gate_ports: take(ebpf, "GATE_PORTS")?,
            gate_clients: Arc::new(GateClients(take(ebpf, "GATE_CLIENTS")?)),
            verdict_cache: VerdictCacheMap::new(take(ebpf, "VERDICT_CACHE")?),
            veth: VethMaps::take(ebpf)?,
            current: Config::default(),
        })
    }

    /// The config the kernel holds now (adopted from a previous agent).
    pub fn read_config(&mut self) -> Result<Config, LoadError> {
        let cfg = self.config.get(&0, 0).map_err(|source| LoadError::Map { name: "CONFIG", source })?;
        self.current = cfg;
        Ok(cfg)
    }

    pub fn config(&self) -> Config {
        self.current
    }

    pub fn set_config(&mut self, cfg: &Config) -> Result<(), LoadError> {
        self.config.set(0, cfg, 0).map_err(|source| LoadError::Map { name: "CONFIG", source })?;
        self.current = *cfg;
        Ok(())
    }

    /// Registers `cgroup_id` as `endpoint` and invalidates the kernel's
    /// ancestor-walk cache (new generation).
    pub fn add_endpoint(&mut self, cgroup_id: u64, info: EndpointInfo) -> Result<(), MapError> {
        self.endpoints.insert(cgroup_id, info, 0)?;
        self.bump_generation()
    }

    pub fn remove_endpoint(&mut self, cgroup_id: u64) -> Result<(), MapError> {
        self.verdict_cache.disable(cgroup_id)?;
        match self.endpoints.remove(&cgroup_id) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e),
        }
        self.bump_generation()
    }

    /// A veth was (re)assigned or forgotten: a new generation, so the
    /// kernel's per-CPU memos of interface -> endpoint (`VETH_EP_MEMO`,
    /// the bytes to a pod) look it up again.
    pub fn veths_changed(&mut self) -> Result<(), MapError> {
        self.bump_generation()
    }

    fn bump_generation(&mut self) -> Result<(), MapError> {
        let mut cfg = self.current;
        // From the kernel's value if that is ahead: while a new agent
        // starts next to the one it takes over from, both write the same
        // pinned CONFIG, and a generation that went back could make a
        // stale EP_CACHE entry valid again.
        let kernel = self.config.get(&0, 0).map(|c| c.generation).unwrap_or(0);
        cfg.generation = cfg.generation.max(kernel) + 1;
        self.config.set(0, cfg, 0)?;
        self.current = cfg;
        Ok(())
    }

    /// The rule a learned key carries now (0 if none or no key).
    pub fn learned_rule(&self, key: &LearnedKey) -> u32 {
        self.learned.get(key, 0).map_or(0, |v| v.rule)
    }

    pub fn insert_learned(&mut self, key: LearnedKey, value: LearnedValue) -> Result<(), MapError> {
        self.learned.insert(key, value, 0)
    }

    /// Removes a learned IP; cached allowances of its endpoint go stale.
    pub fn remove_learned(&mut self, key: &LearnedKey) -> Result<(), MapError> {
        self.remove_learned_all(std::slice::from_ref(key))
    }

    /// Removes learned IPs, going on past a failure (the first is
    /// returned), then makes each endpoint's cached allowances stale once.
    pub fn remove_learned_all(&mut self, keys: &[LearnedKey]) -> Result<(), MapError> {
        let mut first = Ok(());
        for k in keys {
            first = first.and(ignore_missing(self.learned.remove(k)));
        }
        let endpoints: HashSet<u32> = keys.iter().map(|k| k.endpoint).collect();
        for ep in endpoints {
            first = first.and(self.verdict_cache.invalidate(ep));
        }
        first
    }

    pub fn learned_keys(&self) -> Vec<LearnedKey> {
        self.learned.keys().filter_map(Result::ok).collect()
    }

    pub fn insert_cidr(&mut self, endpoint: u32, ip: [u8; 16], prefix: u8, value: CidrValue) -> Result<(), MapError> {
        let key = Key::new(32 + u32::from(prefix), CidrKey { endpoint_be: endpoint.to_be_bytes(), ip });
        self.cidrs.insert(&key, value, 0)?;
        // A narrower rule can take part of a wider one's allowance away.
        self.verdict_cache.invalidate(endpoint)
    }

    pub fn remove_cidr(&mut self, endpoint: u32, ip: [u8; 16], prefix: u8) -> Result<(), MapError> {
        let key = Key::new(32 + u32::from(prefix), CidrKey { endpoint_be: endpoint.to_be_bytes(), ip });
        ignore_missing(self.cidrs.remove(&key))?;
        self.verdict_cache.invalidate(endpoint)
    }

    /// The veth datapath's maps.
    pub fn veth(&mut self) -> &mut VethMaps {
        &mut self.veth
    }

    /// The socket hooks' verdict cache (`verdict_cache`).
    pub fn verdict_cache(&mut self) -> &mut VerdictCacheMap {
        &mut self.verdict_cache
    }

    pub fn insert_dns_server(&mut self, key: DnsServerKey) -> Result<(), MapError> {
        self.dns_servers.insert(key, 1, 0)
    }

    pub fn remove_dns_server(&mut self, key: &DnsServerKey) -> Result<(), MapError> {
        match self.dns_servers.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Forgets the DNS sockets and inbound peers the kernel tracked for
    /// `endpoint` once it is removed. (Its connections' flows live in
    /// socket-local storage and go with the sockets; the endpoint's cgroup
    /// normally goes away with it.)
    pub fn purge_flows(&mut self, endpoint: u32) -> Result<usize, MapError> {
        let socks: Vec<u64> =
            self.dns_socks.iter().filter_map(Result::ok).filter(|(_, d)| d.endpoint == endpoint).map(|(k, _)| k).collect();
        let peers: Vec<InboundKey> = self.inbound.keys().filter_map(Result::ok).filter(|k| k.endpoint == endpoint).collect();
        let n = socks.len() + peers.len();
        for k in socks {
            ignore_missing(self.dns_socks.remove(&k))?;
        }
        for k in peers {
            ignore_missing(self.inbound.remove(&k))?;
        }
        Ok(n)
    }

    pub fn insert_gate(&mut self, key: GateKey, value: GateValue) -> Result<(), MapError> {
        self.gates.insert(key, value, 0)
    }

    /// Removes a gate entry if it still is `value` (not a newer agent's).
    pub fn remove_gate_if(&mut self, key: &GateKey, value: &GateValue) -> Result<(), MapError> {
        match self.gates.get(key, 0) {
            Ok(v) if v == *value => ignore_missing(self.gates.remove(key)),
            Ok(_) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn insert_gate_port(&mut self, key: GatePortKey, value: GatePortValue) -> Result<(), MapError> {
        self.gate_ports.insert(key, value, 0)
    }

    /// `GATE_CLIENTS` for the DNS gates, which read it per query and must
    /// not wait for the owner of these maps.
    pub fn client_reader(&self) -> Arc<GateClients> {
        Arc::clone(&self.gate_clients)
    }

    /// Forgets every DNS gate of a previous agent: new DNS takes the hold
    /// path (UDP) or is refused (TCP) until ours open. Returns its gate
    /// ports, which must stay a while: answers to queries it forwarded are
    /// still on their way, and `recvmsg` needs them to show the resolver.
    pub fn clear_gates(&mut self) -> Result<Vec<GatePortKey>, MapError> {
        let keys: Vec<GateKey> = self.gates.keys().filter_map(Result::ok).collect();
        for k in &keys {
            ignore_missing(self.gates.remove(k))?;
        }
        Ok(self.gate_ports.keys().filter_map(Result::ok).collect())
    }

    pub fn remove_gate_port(&mut self, key: &GatePortKey) -> Result<(), MapError> {
        ignore_missing(self.gate_ports.remove(key))
    }

    /// Every cgroup -> endpoint mapping in the kernel (a previous agent's,
    /// when adopting pinned maps).
    pub fn kernel_endpoints(&self) -> Vec<(u64, EndpointInfo)> {
        self.endpoints.iter().filter_map(Result::ok).collect()
    }

    /// A learned key's value, if any (`portcullis explain`).
    pub fn learned_value(&self, key: &LearnedKey) -> Option<LearnedValue> {
        self.learned.get(key, 0).ok()
    }

    /// The longest-prefix `CIDRS` entry of (`endpoint`, `ip`), as the
    /// kernel's lookup finds it.
    pub fn cidr_lookup(&self, endpoint: u32, ip: [u8; 16]) -> Option<CidrValue> {
        self.cidrs.get(&Key::new(32 + 128, CidrKey { endpoint_be: endpoint.to_be_bytes(), ip }), 0).ok()
    }

    pub fn is_dns_server(&self, key: &DnsServerKey) -> bool {
        self.dns_servers.get(key, 0).is_ok()
    }

    /// (prefix length, address) of every CIDR entry of `endpoint`.
    pub fn cidrs_of(&self, endpoint: u32) -> Vec<(u8, [u8; 16])> {
        self.cidrs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| u32::from_be_bytes(k.data().endpoint_be) == endpoint)
            .map(|k| ((k.prefix_len().saturating_sub(32)) as u8, k.data().ip))
            .collect()
    }

    pub fn dns_servers_of(&self, endpoint: u32) -> Vec<DnsServerKey> {
        self.dns_servers.keys().filter_map(Result::ok).filter(|k| k.endpoint == endpoint).collect()
    }

    /// Zeroes a fresh endpoint id's flow counts.
    pub fn reset_flow_counters(&self, id: u32) -> Result<(), MapError> {
        self.counters.flows.reset(id)?;
        self.counters.dests.forget(id)
    }

    /// A removed endpoint's destinations go with it.
    pub fn forget_flow_dests(&self, id: u32) -> Result<(), MapError> {
        self.counters.dests.forget(id)
    }

    /// Every learned key with its expiry.
    pub fn learned_entries(&self) -> Vec<(LearnedKey, u64)> {
        self.learned.iter().filter_map(Result::ok).map(|(k, v)| (k, v.expires_ns)).collect()
    }

    /// Sum over CPUs of every counter (index = `agent_common::counter_index`).
    pub fn counters(&self) -> Result<Vec<u64>, MapError> {
        self.counters.read()
    }

    /// The kernel's counters for readers that must not wait for (or hold up)
    /// the owner of these maps: a metrics scrape reads hundreds of per-CPU
    /// values.
    pub fn counter_reader(&self) -> Arc<KernelCounters> {
        Arc::clone(&self.counters)
    }
}

/// The `GATE_CLIENTS` map, read-only: the kernel notes which process sent
/// to a gate's port (for the blocked log's pid).
pub struct GateClients(HashMap<MapData, GatePortKey, u32>);

impl GateClients {
    pub fn get(&self, netns_cookie: u64, port: u16, proto: u8) -> Option<u32> {
        let key = GatePortKey { netns_cookie, port: port.to_be_bytes(), proto, _pad: [0; 5] };
        self.0.get(&key, 0).ok()
    }
}

/// The `COUNTERS` map, read-only: the kernel updates it, nobody else writes.
pub struct KernelCounters {
    cgroup: PerCpuArray<MapData, u64>,
    veth: PerCpuArray<MapData, u64>,
    /// Per endpoint (`FLOW_COUNTERS`).
    pub flows: FlowCounterMap,
    /// Allowed connections per endpoint and destination (`FLOW_DESTS`).
    pub dests: FlowDestMap,
}

impl KernelCounters {
    /// Sum over CPUs of every counter, `COUNTERS` then `VETH_COUNTERS`
    /// (index = `agent_common::counter_index`).
    pub fn read(&self) -> Result<Vec<u64>, MapError> {
        let sum = |m: &PerCpuArray<MapData, u64>, i: u32| m.get(&i, 0).map(|v| v.iter().sum::<u64>());
        (0..COUNTERS_LEN).map(|i| sum(&self.cgroup, i)).chain((0..VETH_COUNTERS_LEN).map(|i| sum(&self.veth, i))).collect()
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

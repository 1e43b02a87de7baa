//! The agent's view of what it enforces: endpoints, their compiled policies,
//! what each learned from DNS (with expiry and caps: `learned`), and the
//! names it saw per IP (so the blocked-connection log can say which host an
//! IP was for).
//!
//! One `Mutex<State>` guards it together with the map handles: every change
//! of kernel state goes through here, so user-space bookkeeping and maps
//! never disagree.

mod adopt;
mod learned;
mod names;
mod table;
mod update;
mod veth;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use agent_common::{DnsServerKey, ENDPOINT_F_AUDIT, ENDPOINT_F_EXEMPT, EndpointInfo, LearnedKey, LearnedValue, MAX_ENDPOINTS};
use aya::maps::MapError;
use thiserror::Error;
use tracing::warn;

pub use adopt::to_records;
pub use learned::{CapStats, Caps, Changes, LEARNED_CAPACITY, LearnedTable, LiveIps};
pub use update::PolicyChange;

use crate::{
    datapath::PolicyMaps,
    enforcer::live::LiveConns,
    policy::{CompiledPolicy, PortKey, canonical, is_always_denied},
};

#[derive(Debug, Error)]
pub enum StateError {
    #[error("too many endpoints (max {MAX_ENDPOINTS})")]
    TooManyEndpoints,
    #[error("cgroup {0} is already an endpoint")]
    DuplicateCgroup(u64),
    #[error("no endpoint {0}")]
    UnknownEndpoint(u32),
    #[error("interface {ifindex} is already judged for endpoint {endpoint}")]
    VethTaken { ifindex: u32, endpoint: u32 },
    #[error("updating kernel map {map}: {source}")]
    Map { map: &'static str, source: MapError },
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> StateError {
    move |source| StateError::Map { map, source }
}

/// How an endpoint's traffic is treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Denied unless the policy allows it.
    #[default]
    Enforce,
    /// Judged and logged, never denied.
    Audit,
    /// Not judged at all (`ENDPOINT_F_EXEMPT`): a cgroup deliberately left
    /// alone below a deny-unknown attach point (the agent's own pod, a
    /// system namespace).
    Exempt,
}

impl Mode {
    pub fn from_audit(audit: bool) -> Self {
        if audit { Mode::Audit } else { Mode::Enforce }
    }

    /// Whether a denial is only recorded.
    pub fn audits(self) -> bool {
        self == Mode::Audit
    }

    /// The `ENDPOINTS` flags.
    pub fn flags(self) -> u32 {
        match self {
            Mode::Enforce => 0,
            Mode::Audit => ENDPOINT_F_AUDIT,
            Mode::Exempt => ENDPOINT_F_EXEMPT,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
            Mode::Exempt => "exempt",
        }
    }
}

/// Who an endpoint is, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

pub struct Endpoint {
    pub id: u32,
    pub identity: Identity,
    pub cgroup_id: u64,
    /// Shared with readers (`EndpointView`): a new policy replaces it.
    pub policy: Arc<CompiledPolicy>,
    pub mode: Mode,
    /// Host-side veths judged per packet for this endpoint (`veth.rs`).
    pub veths: Vec<u32>,
    /// Last DNS name seen for an IP (allowed or not), bounded.
    names: names::RecentNames,
}

impl Endpoint {
    /// Whether the workload may never reach `ip` whatever DNS says: it is in
    /// an always-denied range and no CIDR rule of this endpoint opens it
    /// (the longest matching prefix decides, as in the kernel).
    pub fn unreachable(&self, ip: IpAddr) -> bool {
        self.policy.unreachable(ip)
    }

    pub fn name_for(&self, ip: IpAddr) -> Option<&str> {
        self.names.get(ip)
    }

    /// The addresses this endpoint's answers for `name` last held, learned
    /// or not (`portcullis explain`).
    pub fn seen_addresses(&self, name: &str) -> Vec<IpAddr> {
        self.names.addresses_of(name)
    }

    pub fn remember(&mut self, ip: IpAddr, name: &Arc<str>) {
        self.names.insert(ip, name);
    }
}

/// TTL clamp for learned IPs.
#[derive(Clone, Copy, Debug)]
pub struct TtlBounds {
    pub min: Duration,
    pub max: Duration,
}

impl Default for TtlBounds {
    fn default() -> Self {
        Self { min: Duration::from_secs(30), max: Duration::from_secs(3600) }
    }
}

/// Outcome of learning one DNS answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LearnOutcome {
    /// Addresses now allowed (on the name's ports).
    pub allowed: Vec<IpAddr>,
    /// Addresses refused because they are in an always-denied range.
    pub denied_range: Vec<IpAddr>,
    /// Addresses refused by a cap: every eviction candidate had a live
    /// connection (fail closed).
    pub refused: Vec<IpAddr>,
    /// Learned (name, IP) pairs evicted by a cap to make room (any endpoint).
    pub evicted: usize,
}

pub struct State {
    pub maps: PolicyMaps,
    endpoints: HashMap<u32, Endpoint>,
    learned: LearnedTable,
    pub ttl: TtlBounds,
    /// A previous agent's endpoints found in pinned maps, by cgroup id, not
    /// yet claimed by this agent's config (`adopt`).
    adopted: HashMap<u64, EndpointInfo>,
    /// Learned keys found in pinned maps that no adopted pair explains:
    /// kept until their expiry, then removed.
    orphans: Vec<(LearnedKey, u64)>,
    /// Bumped on every change of learned state (for snapshots).
    version: u64,
    /// Where the caps learn which addresses have live connections.
    live: Option<Arc<LiveConns>>,
}

pub use crate::util::boot_ns;

fn key_bytes(ip: IpAddr) -> [u8; 16] {
    canonical(ip).octets()
}

impl State {
    /// With the default `Caps`.
    pub fn new(maps: PolicyMaps, ttl: TtlBounds) -> Self {
        Self::with_caps(maps, ttl, Caps::default())
    }

    /// `caps` is clamped: every cap at least 1, the total at most the map's
    /// capacity.
    pub fn with_caps(maps: PolicyMaps, ttl: TtlBounds, caps: Caps) -> Self {
        Self {
            maps,
            endpoints: HashMap::new(),
            learned: LearnedTable::new(caps),
            ttl,
            adopted: HashMap::new(),
            orphans: Vec::new(),
            version: 0,
            live: None,
        }
    }

    /// Lets the caps ask which addresses have live connections (never
    /// evicted). Without it every learned address may be evicted.
    pub fn set_live_conns(&mut self, live: Arc<LiveConns>) {
        self.live = Some(live);
    }

    pub fn caps(&self) -> Caps {
        self.learned.caps()
    }

    /// Evictions and refusals by the caps since start.
    pub fn cap_stats(&self) -> CapStats {
        self.learned.stats()
    }

    pub fn endpoint(&self, id: u32) -> Option<&Endpoint> {
        self.endpoints.get(&id)
    }

    pub fn endpoint_mut(&mut self, id: u32) -> Option<&mut Endpoint> {
        self.endpoints.get_mut(&id)
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// Installs an endpoint: CIDR entries and resolvers first, the cgroup
    /// mapping last, so the kernel never sees a half-configured endpoint.
    pub fn add_endpoint(
        &mut self,
        identity: Identity,
        cgroup_id: u64,
        policy: CompiledPolicy,
        mode: Mode,
    ) -> Result<u32, StateError> {
        if self.endpoints.values().any(|e| e.cgroup_id == cgroup_id) {
            return Err(StateError::DuplicateCgroup(cgroup_id));
        }
        // A cgroup a previous agent enforced keeps its endpoint id: the
        // kernel's entries stay valid while they are brought up to date.
        let adopted = self.adopted.remove(&cgroup_id).map(|i| i.endpoint).filter(|i| !self.endpoints.contains_key(i));
        let id = match adopted {
            Some(id) => id,
            None => (1..MAX_ENDPOINTS)
                .find(|i| !self.endpoints.contains_key(i) && !self.adopted.values().any(|a| a.endpoint == *i))
                .ok_or(StateError::TooManyEndpoints)?,
        };
        for e in &policy.cidr_entries {
            self.maps.insert_cidr(id, e.net.addr().octets(), e.net.prefix_len(), e.value).map_err(map_err("CIDRS"))?;
        }
        for s in &policy.dns_servers {
            self.maps.insert_dns_server(dns_key(id, *s)).map_err(map_err("DNS_SERVERS"))?;
        }
        if adopted.is_none() {
            // A fresh id: its counts start at 0 (an adopted one's go on).
            self.maps.reset_flow_counters(id).map_err(map_err("FLOW_COUNTERS"))?;
        }
        let info = EndpointInfo { endpoint: id, flags: mode.flags(), generation: 0 };
        self.maps.add_endpoint(cgroup_id, info).map_err(map_err("ENDPOINTS"))?;
        if adopted.is_some() {
            // New entries are in; only now drop what the old policy had.
            self.prune_policy_entries(id, &policy)?;
        }
        self.endpoints.insert(
            id,
            Endpoint {
                id,
                identity,
                cgroup_id,
                policy: Arc::new(policy),
                mode,
                veths: Vec::new(),
                names: names::RecentNames::default(),
            },
        );
        Ok(id)
    }

    /// Removes an endpoint and everything it put into the kernel.
    pub fn remove_endpoint(&mut self, id: u32) -> Result<(), StateError> {
        let Some(ep) = self.endpoints.remove(&id) else { return Ok(()) };
        for ifindex in &ep.veths {
            self.maps.veth().unassign(*ifindex).map_err(map_err("TC_IFACES"))?;
        }
        self.maps.remove_endpoint(ep.cgroup_id).map_err(map_err("ENDPOINTS"))?;
        for e in &ep.policy.cidr_entries {
            self.maps.remove_cidr(id, e.net.addr().octets(), e.net.prefix_len()).map_err(map_err("CIDRS"))?;
        }
        for s in &ep.policy.dns_servers {
            self.maps.remove_dns_server(&dns_key(id, *s)).map_err(map_err("DNS_SERVERS"))?;
        }
        self.maps.purge_flows(id).map_err(map_err("DNS_SOCKS/INBOUND"))?;
        self.maps.forget_flow_dests(id).map_err(map_err("FLOW_DESTS"))?;
        let removes = self.learned.remove_endpoint(id);
        self.apply(Changes { removes, inserts: Vec::new() })
    }

    /// Writes a table change to `LEARNED`: removals first, so the map never
    /// holds more than the total cap. Goes on past a failure (the rest still
    /// applies) and reports the first one. A failed insert leaves the address
    /// denied in the kernel (fail closed); a failed removal leaves a key the
    /// kernel refuses once its expiry passes.
    fn apply(&mut self, changes: Changes) -> Result<(), StateError> {
        self.apply_with(changes, |_| 0)
    }

    /// `apply`, each inserted key carrying the rule `rule_of` names for it
    /// (`LearnedValue::rule`; a change that does not know it passes 0 and
    /// the key keeps the rule it had).
    fn apply_with(&mut self, changes: Changes, rule_of: impl Fn(&LearnedKey) -> u32) -> Result<(), StateError> {
        if !changes.removes.is_empty() || !changes.inserts.is_empty() {
            self.version += 1;
        }
        let mut first = Ok(());
        if let Err(e) = self.maps.remove_learned_all(&changes.removes) {
            first = Err(map_err("LEARNED")(e));
        }
        for (k, expires_ns) in changes.inserts {
            let rule = match rule_of(&k) {
                0 => self.maps.learned_rule(&k),
                r => r,
            };
            if let Err(e) = self.maps.insert_learned(k, LearnedValue { expires_ns, rule, _pad: 0 }) {
                first = first.and(Err(map_err("LEARNED")(e)));
            }
        }
        first
    }

    /// Learns the addresses of one DNS answer for endpoint `id`: for an
    /// allowed `qname`, each address that is not always-denied is allowed on
    /// the name's ports until its (clamped) TTL runs out, within the `Caps`
    /// (which may evict older learned addresses, or refuse this one). Every
    /// address is remembered for the log. Map writes finish before this
    /// returns, which is what makes releasing the answer afterwards race-free.
    pub fn learn(&mut self, id: u32, qname: &str, addrs: &[(IpAddr, u32)]) -> Result<LearnOutcome, StateError> {
        let mut out = LearnOutcome::default();
        let Some(ep) = self.endpoints.get_mut(&id) else { return Ok(out) };
        let name: Arc<str> = qname.into();
        for (ip, _) in addrs {
            ep.remember(*ip, &name);
        }
        let ports: Vec<PortKey> = ep.policy.ports_for_name(qname);
        if ports.is_empty() {
            return Ok(out);
        }
        let now = boot_ns();
        let mut learnable = Vec::with_capacity(addrs.len());
        for &(ip, ttl) in addrs {
            if is_always_denied(ip) {
                out.denied_range.push(ip);
                continue;
            }
            let ttl = Duration::from_secs(u64::from(ttl)).clamp(self.ttl.min, self.ttl.max);
            learnable.push((key_bytes(ip), now + ttl.as_nanos() as u64));
        }
        // Asked only when a cap must evict.
        let (endpoints, live) = (&self.endpoints, self.live.as_deref());
        let live_ips = move || {
            let eps: Vec<(u32, u64)> = endpoints.values().map(|e| (e.id, e.cgroup_id)).collect();
            live.map(|l| l.live_ips(&eps)).unwrap_or_default()
        };
        let done = self.learned.learn(id, qname, &ports, &learnable, now, live_ips);
        // Report addresses as the caller gave them, not in the key form.
        let given =
            |k: [u8; 16]| addrs.iter().map(|(ip, _)| *ip).find(|ip| key_bytes(*ip) == k).unwrap_or(IpAddr::V6(Ipv6Addr::from(k)));
        out.allowed = done.allowed.into_iter().map(given).collect();
        out.refused = done.refused.into_iter().map(given).collect();
        out.evicted = done.evicted;
        if !out.refused.is_empty() {
            warn!(endpoint = id, name = qname, ips = ?out.refused,
                "learned-address caps reached and every candidate has a live connection; not learned");
        }
        let policy = ep_policy(&self.endpoints, id);
        self.apply_with(done.changes, |k| policy.as_ref().map_or(0, |p| p.rule_for(qname, k.proto, u16::from_be_bytes(k.port))))?;
        Ok(out)
    }

    /// Drops expired learned entries from the maps (the kernel already
    /// refuses them; this keeps the maps small). Returns how many (name, IP)
    /// pairs went.
    pub fn expire(&mut self) -> Result<usize, StateError> {
        let now = boot_ns();
        let (n, changes) = self.learned.expire(now);
        self.apply(changes)?;
        self.expire_orphans(now)?;
        Ok(n)
    }

    /// The addresses endpoint `id` learned for `name`, oldest first.
    pub fn learned_ips(&self, id: u32, name: &str) -> Vec<IpAddr> {
        let shown = |k: [u8; 16]| {
            let v6 = Ipv6Addr::from(k);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        };
        self.learned.ips_of(id, name).into_iter().map(shown).collect()
    }

    /// Kernel `LEARNED` keys of one endpoint.
    pub fn learned_count(&self, id: u32) -> usize {
        self.learned.keys_of(id)
    }

    /// Kernel `LEARNED` keys across all endpoints.
    pub fn learned_total(&self) -> usize {
        self.learned.total_keys()
    }
}

/// Endpoint `id`'s policy (shared, so a borrow of the state can end).
fn ep_policy(endpoints: &HashMap<u32, Endpoint>, id: u32) -> Option<Arc<CompiledPolicy>> {
    endpoints.get(&id).map(|e| e.policy.clone())
}

fn dns_key(endpoint: u32, s: SocketAddr) -> DnsServerKey {
    DnsServerKey { endpoint, port: s.port().to_be_bytes(), _pad: [0; 2], ip: key_bytes(s.ip()) }
}

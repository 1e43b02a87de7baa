//! What each endpoint learned from DNS, as pure bookkeeping: no kernel maps.
//!
//! The unit of learning is a *pair* (name, IP) of one endpoint, with an
//! expiry and a sequence number (bumped on every learn or refresh: the LRU
//! order). A pair needs one kernel `LEARNED` key per port of its name,
//! (endpoint, proto, port, IP); an IP can come from several names, so a key
//! exists while at least one pair needs it, with the latest expiry of those.
//!
//! Caps (`Caps`): IPs per name, names per endpoint, and kernel keys in
//! total. Over a cap, the least recently learned or refreshed pair goes
//! first (for the names cap: the least recently used name, with all its
//! IPs) - never one whose IP has a live connection of its endpoint (the
//! caller supplies those, fetched at most once per learn call and only when
//! something must be evicted). If every candidate is live, the new IP is
//! refused. Every eviction and refusal is counted (`CapStats`).
//!
//! The total cap spans endpoints; to keep one noisy endpoint from pushing
//! out its neighbours' entries, the endpoint holding the most keys gives up
//! its least recently used pair first.
//!
//! `learn`, `expire` and `remove_endpoint` return the net kernel changes
//! (`Changes`) for the caller to apply: removals first, so the map never
//! holds more than `Caps::total_entries` keys.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use agent_common::LearnedKey;

use super::table::{EndpointTable, Pair, Tx, learned_key};
use crate::policy::PortKey;

pub use super::table::Ip;
pub use crate::enforcer::live::LiveIps;

/// Capacity of the kernel's `LEARNED` map (agent-ebpf/src/maps.rs).
pub const LEARNED_CAPACITY: usize = agent_common::limits::LEARNED_ENTRIES as usize;

/// Limits on what endpoints may learn from DNS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Addresses per (endpoint, name).
    pub ips_per_name: usize,
    /// Names with at least one learned address, per endpoint.
    pub names_per_endpoint: usize,
    /// Kernel `LEARNED` keys across all endpoints (below `LEARNED_CAPACITY`).
    pub total_entries: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self { ips_per_name: 1000, names_per_endpoint: 10_000, total_entries: 200_000 }
    }
}

impl Caps {
    /// Every cap at least 1, the total at most the map's capacity.
    pub fn clamped(self) -> Self {
        Self {
            ips_per_name: self.ips_per_name.max(1),
            names_per_endpoint: self.names_per_endpoint.max(1),
            total_entries: self.total_entries.clamp(1, LEARNED_CAPACITY),
        }
    }
}

/// How often a cap evicted or refused, since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapStats {
    /// Pairs evicted because their name had `ips_per_name` addresses.
    pub evicted_ips_per_name: u64,
    /// Names evicted (each with all its addresses) by `names_per_endpoint`.
    pub evicted_names: u64,
    /// Pairs evicted because the map held `total_entries` keys.
    pub evicted_total: u64,
    /// Addresses not learned because every eviction candidate was live.
    pub refused_live: u64,
}

/// Net kernel changes of one operation.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub removes: Vec<LearnedKey>,
    /// Key and its expiry (new key, or changed expiry).
    pub inserts: Vec<(LearnedKey, u64)>,
}

/// Result of `LearnedTable::learn`.
#[derive(Debug, Default)]
pub struct Learned {
    pub changes: Changes,
    /// Addresses of this answer that are allowed when the call returns.
    pub allowed: Vec<Ip>,
    /// Addresses refused because every eviction candidate was live.
    pub refused: Vec<Ip>,
    /// Pairs evicted (any endpoint, any cap).
    pub evicted: usize,
}

/// The live-connection set, fetched on first use only.
struct Live<F> {
    fetch: Option<F>,
    set: LiveIps,
}

impl<F: FnOnce() -> LiveIps> Live<F> {
    fn get(&mut self) -> &LiveIps {
        if let Some(f) = self.fetch.take() {
            self.set = f();
        }
        &self.set
    }

    fn is_live(&mut self, endpoint: u32, ip: &Ip) -> bool {
        self.get().get(&endpoint).is_some_and(|s| s.contains(ip))
    }
}

/// Memory of the eviction scans within one learn call. A pair found live
/// stays live and stays where it is in the LRU order for the whole call, so
/// a scan resumes where the last one stopped.
#[derive(Default)]
struct Scan {
    /// Names of the learning endpoint holding a live IP.
    live_names: Option<HashSet<Arc<str>>>,
    /// Resume point in the learning name's LRU.
    ips: u64,
    /// Resume point in each endpoint's LRU (total cap).
    endpoints: HashMap<u32, u64>,
}

fn after_last<V>(lru: &BTreeMap<u64, V>) -> u64 {
    lru.last_key_value().map_or(0, |(k, _)| k + 1)
}

#[derive(Default)]
pub struct LearnedTable {
    caps: Caps,
    endpoints: HashMap<u32, EndpointTable>,
    total: usize,
    seq: u64,
    stats: CapStats,
}

impl LearnedTable {
    pub fn new(caps: Caps) -> Self {
        Self { caps: caps.clamped(), ..Self::default() }
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    pub fn stats(&self) -> CapStats {
        self.stats
    }

    /// Kernel keys across all endpoints.
    pub fn total_keys(&self) -> usize {
        self.total
    }

    pub fn keys_of(&self, endpoint: u32) -> usize {
        self.endpoints.get(&endpoint).map_or(0, |t| t.keys.len())
    }

    /// The expiry of one kernel key, if it exists.
    pub fn key(&self, key: &LearnedKey) -> Option<u64> {
        self.endpoints.get(&key.endpoint)?.keys.get(key).copied()
    }

    /// Names with at least one address, of one endpoint.
    pub fn names_of(&self, endpoint: u32) -> usize {
        self.endpoints.get(&endpoint).map_or(0, |t| t.names.len())
    }

    /// Every (endpoint, name, IP, expiry) pair, least recently used first
    /// per endpoint (learning them in this order rebuilds the LRU order).
    pub fn pairs(&self) -> Vec<(u32, Arc<str>, Ip, u64)> {
        let mut out = Vec::new();
        for (id, t) in &self.endpoints {
            for (name, ip) in t.lru.values() {
                if let Some(p) = t.names.get(name).and_then(|ne| ne.ips.get(ip)) {
                    out.push((*id, name.clone(), *ip, p.expires));
                }
            }
        }
        out
    }

    /// The addresses a name holds, oldest first.
    pub fn ips_of(&self, endpoint: u32, name: &str) -> Vec<Ip> {
        let Some(ne) = self.endpoints.get(&endpoint).and_then(|t| t.names.get(name)) else { return Vec::new() };
        ne.lru.values().copied().collect()
    }

    fn apply_delta(&mut self, delta: isize) {
        self.total = self.total.checked_add_signed(delta).expect("key count underflow");
    }

    fn finish(&self, tx: Tx) -> Changes {
        let mut out = Changes::default();
        for (key, before) in tx.0 {
            match (before, self.key(&key)) {
                (Some(_), None) => out.removes.push(key),
                (b, Some(after)) if b != Some(after) => out.inserts.push((key, after)),
                _ => {}
            }
        }
        out
    }

    /// Learns `addrs` (address, absolute expiry) for `name` of `endpoint`
    /// on `ports` (non-empty: the name's ports in the endpoint's policy).
    /// Pairs expired at `now` go first. `live` is called at most once, and
    /// only if something must be evicted.
    pub fn learn(
        &mut self,
        endpoint: u32,
        name: &str,
        ports: &[PortKey],
        addrs: &[(Ip, u64)],
        now: u64,
        live: impl FnOnce() -> LiveIps,
    ) -> Learned {
        let mut tx = Tx::default();
        let mut out = self.learn_in(endpoint, name, ports, addrs, now, live, &mut tx);
        out.changes = self.finish(tx);
        out
    }

    /// `learn`, recording into `tx` (its `changes` stay empty).
    #[expect(clippy::too_many_arguments, reason = "`learn` plus the transaction it records into")]
    fn learn_in(
        &mut self,
        endpoint: u32,
        name: &str,
        ports: &[PortKey],
        addrs: &[(Ip, u64)],
        now: u64,
        live: impl FnOnce() -> LiveIps,
        tx: &mut Tx,
    ) -> Learned {
        let mut out = Learned::default();
        self.reap(now, tx);
        if ports.is_empty() || addrs.is_empty() {
            return out;
        }
        let mut live = Live { fetch: Some(live), set: LiveIps::new() };
        let mut scan = Scan::default();
        let ports: Arc<[PortKey]> = ports.into();
        let name: Arc<str> = name.into();
        if self.endpoints.get(&endpoint).and_then(|t| t.names.get(&name)).is_some_and(|ne| ne.ports != ports) {
            // The name's ports changed with the policy (`repolicy` re-keys
            // every name at once; this is for a caller that did not): start over.
            let t = self.endpoints.get_mut(&endpoint).expect("checked");
            let (_, d) = t.remove_name(endpoint, &name, tx);
            self.apply_delta(d);
        }
        for &(ip, expires) in addrs {
            self.seq += 1;
            let seq = self.seq;
            let t = self.endpoints.entry(endpoint).or_default();
            if !t.has_pair(&name, &ip) && !self.make_room(endpoint, &name, &ports, ip, &mut live, &mut scan, tx, &mut out) {
                self.stats.refused_live += 1;
                out.refused.push(ip);
                continue;
            }
            let t = self.endpoints.get_mut(&endpoint).expect("created above");
            let d = t.upsert(endpoint, &name, &ports, ip, Pair { seq, expires }, tx);
            self.apply_delta(d);
        }
        let t = &self.endpoints[&endpoint];
        let mut seen = HashSet::new();
        out.allowed = addrs.iter().map(|(ip, _)| *ip).filter(|ip| t.has_pair(&name, ip) && seen.insert(*ip)).collect();
        out
    }

    /// Evicts until (name, ip), not yet learned, fits every cap. False if
    /// some cap cannot be met without evicting a live address.
    #[expect(clippy::too_many_arguments, reason = "the caps' inputs are separate borrows of the table")]
    fn make_room<F: FnOnce() -> LiveIps>(
        &mut self,
        endpoint: u32,
        name: &Arc<str>,
        ports: &[PortKey],
        ip: Ip,
        live: &mut Live<F>,
        scan: &mut Scan,
        tx: &mut Tx,
        out: &mut Learned,
    ) -> bool {
        let caps = self.caps;
        let t = self.endpoints.get_mut(&endpoint).expect("caller creates it");
        // Names per endpoint: the least recently used name without a live IP.
        while !t.names.contains_key(name) && t.names.len() >= caps.names_per_endpoint {
            let live_names = scan.live_names.get_or_insert_with(|| {
                let ips = live.get().get(&endpoint).into_iter().flatten();
                ips.filter_map(|ip| t.ip_names.get(ip)).flatten().cloned().collect()
            });
            let Some(victim) = t.name_lru.values().find(|n| !live_names.contains(*n)).cloned() else { return false };
            let (pairs, d) = t.remove_name(endpoint, &victim, tx);
            self.total = self.total.checked_add_signed(d).expect("key count underflow");
            self.stats.evicted_names += 1;
            out.evicted += pairs;
        }
        // IPs per name: the least recently learned IP of this name, not live.
        while let Some(ne) = t.names.get(name).filter(|ne| ne.ips.len() >= caps.ips_per_name) {
            let victim = ne.lru.range(scan.ips..).find(|(_, ip)| !live.is_live(endpoint, ip));
            let Some((&seq, &victim)) = victim else {
                scan.ips = after_last(&ne.lru);
                return false;
            };
            scan.ips = seq;
            let d = t.remove(endpoint, name, victim, tx);
            self.total = self.total.checked_add_signed(d).expect("key count underflow");
            self.stats.evicted_ips_per_name += 1;
            out.evicted += 1;
        }
        // Total keys: the LRU pair of the endpoint holding the most keys.
        loop {
            let t = &self.endpoints[&endpoint];
            let new = ports.iter().filter(|p| !t.keys.contains_key(&learned_key(endpoint, **p, ip))).count();
            if self.total + new <= caps.total_entries {
                return true;
            }
            let Some((ep, victim_name, victim_ip)) = self.total_victim(live, scan) else { return false };
            let t = self.endpoints.get_mut(&ep).expect("victim's endpoint");
            let d = t.remove(ep, &victim_name, victim_ip, tx);
            self.apply_delta(d);
            self.stats.evicted_total += 1;
            out.evicted += 1;
        }
    }

    fn total_victim<F: FnOnce() -> LiveIps>(&self, live: &mut Live<F>, scan: &mut Scan) -> Option<(u32, Arc<str>, Ip)> {
        let mut order: Vec<(&u32, &EndpointTable)> = self.endpoints.iter().filter(|(_, t)| !t.keys.is_empty()).collect();
        // Most keys first; among equals, the one with the oldest pair.
        order.sort_by_key(|(_, t)| (std::cmp::Reverse(t.keys.len()), t.lru.keys().next().copied()));
        for (&ep, t) in order {
            let from = scan.endpoints.get(&ep).copied().unwrap_or(0);
            let found = t.lru.range(from..).find(|(_, (_, ip))| !live.is_live(ep, ip));
            match found {
                Some((&seq, (n, ip))) => {
                    scan.endpoints.insert(ep, seq);
                    return Some((ep, n.clone(), *ip));
                }
                None => {
                    scan.endpoints.insert(ep, after_last(&t.lru));
                }
            }
        }
        None
    }

    fn reap(&mut self, now: u64, tx: &mut Tx) -> usize {
        let mut n = 0;
        let mut delta = 0;
        for (&id, t) in &mut self.endpoints {
            while let Some(&(expires, seq)) = t.by_expiry.first() {
                if expires > now {
                    break;
                }
                let (name, ip) = t.lru[&seq].clone();
                delta += t.remove(id, &name, ip, tx);
                n += 1;
            }
        }
        self.apply_delta(delta);
        n
    }

    /// Drops every pair expired at `now`; returns how many went.
    pub fn expire(&mut self, now: u64) -> (usize, Changes) {
        let mut tx = Tx::default();
        let n = self.reap(now, &mut tx);
        for t in self.endpoints.values_mut() {
            t.shrink();
        }
        self.endpoints.retain(|_, t| !t.names.is_empty() || !t.keys.is_empty());
        (n, self.finish(tx))
    }

    /// Brings an endpoint's pairs in line with a new policy: a name the
    /// policy no longer allows loses its pairs (their keys are revoked); a
    /// name whose ports changed keeps its addresses and expiries, re-keyed
    /// for the new ports (within the caps, evicting without regard to live
    /// connections: the policy decides); others stay untouched. `ports_for`
    /// gives a name's ports under the new policy (empty: not allowed).
    /// Returns the pairs revoked and the kernel changes.
    pub fn repolicy(&mut self, endpoint: u32, ports_for: impl Fn(&str) -> Vec<PortKey>, now: u64) -> (usize, Changes) {
        let mut tx = Tx::default();
        self.reap(now, &mut tx);
        let Some(t) = self.endpoints.get(&endpoint) else { return (0, self.finish(tx)) };
        let mut revoked = 0;
        let mut rekey = Vec::new();
        let names: Vec<(Arc<str>, Arc<[PortKey]>)> = t.names.iter().map(|(n, ne)| (n.clone(), ne.ports.clone())).collect();
        for (name, old) in names {
            let new = ports_for(&name);
            if *old == *new {
                continue;
            }
            let t = self.endpoints.get_mut(&endpoint).expect("checked above");
            // Oldest first, so learning them again keeps the LRU order.
            let pairs: Vec<(Ip, u64)> =
                t.names.get(&name).map(|ne| ne.lru.values().map(|ip| (*ip, ne.ips[ip].expires)).collect()).unwrap_or_default();
            let (n, d) = t.remove_name(endpoint, &name, &mut tx);
            self.apply_delta(d);
            if new.is_empty() {
                revoked += n;
            } else {
                rekey.push((name, new, pairs));
            }
        }
        for (name, ports, pairs) in rekey {
            self.learn_in(endpoint, &name, &ports, &pairs, now, LiveIps::new, &mut tx);
        }
        (revoked, self.finish(tx))
    }

    /// Forgets an endpoint; returns its keys.
    pub fn remove_endpoint(&mut self, endpoint: u32) -> Vec<LearnedKey> {
        let Some(t) = self.endpoints.remove(&endpoint) else { return Vec::new() };
        self.total -= t.keys.len();
        t.keys.into_keys().collect()
    }
}

#[cfg(test)]
#[path = "learned_tests.rs"]
mod tests;

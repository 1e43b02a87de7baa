//! The per-endpoint part of `LearnedTable`: (name, IP) pairs in LRU order,
//! their expiry, which names hold an IP, and the kernel keys they need.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use agent_common::LearnedKey;

use crate::policy::PortKey;

/// An address as the maps key it: IPv6, or IPv4-mapped IPv6.
pub type Ip = [u8; 16];

pub(super) struct Pair {
    pub(super) seq: u64,
    pub(super) expires: u64,
}

pub(super) struct NameEntry {
    /// The name's ports under the endpoint's policy (`repolicy` re-keys
    /// the name when they change).
    pub(super) ports: Arc<[PortKey]>,
    pub(super) ips: HashMap<Ip, Pair>,
    /// seq -> IP, oldest first.
    pub(super) lru: BTreeMap<u64, Ip>,
    /// This name's key in `EndpointTable::name_lru` (its newest pair).
    pub(super) seq: u64,
}

#[derive(Default)]
pub(super) struct EndpointTable {
    pub(super) names: HashMap<Arc<str>, NameEntry>,
    /// Newest pair seq of a name -> name.
    pub(super) name_lru: BTreeMap<u64, Arc<str>>,
    /// seq -> pair, oldest first.
    pub(super) lru: BTreeMap<u64, (Arc<str>, Ip)>,
    /// (expires, seq) of every pair.
    pub(super) by_expiry: BTreeSet<(u64, u64)>,
    /// Names holding an IP.
    pub(super) ip_names: HashMap<Ip, Vec<Arc<str>>>,
    /// The kernel keys of this endpoint and their expiry.
    pub(super) keys: HashMap<LearnedKey, u64>,
}

/// Before-values of the keys an operation touched.
#[derive(Default)]
pub(super) struct Tx(pub(super) HashMap<LearnedKey, Option<u64>>);

impl Tx {
    fn note(&mut self, key: LearnedKey, before: Option<u64>) {
        self.0.entry(key).or_insert(before);
    }
}

pub(super) fn learned_key(endpoint: u32, p: PortKey, ip: Ip) -> LearnedKey {
    LearnedKey { endpoint, proto: p.proto, _pad: 0, port: p.port.to_be_bytes(), ip }
}

impl EndpointTable {
    /// Brings the keys (endpoint, p, ip) for `ports` in line with the pairs
    /// holding `ip`. Returns the change in the number of keys.
    pub(super) fn sync(&mut self, id: u32, ip: Ip, ports: &[PortKey], tx: &mut Tx) -> isize {
        let mut delta = 0;
        for &p in ports {
            let want = self
                .ip_names
                .get(&ip)
                .into_iter()
                .flatten()
                .filter_map(|n| {
                    let ne = &self.names[n];
                    ne.ports.contains(&p).then(|| ne.ips[&ip].expires)
                })
                .max();
            let key = learned_key(id, p, ip);
            let have = self.keys.get(&key).copied();
            if want == have {
                continue;
            }
            tx.note(key, have);
            match want {
                Some(e) => {
                    self.keys.insert(key, e);
                }
                None => {
                    self.keys.remove(&key);
                }
            }
            delta += isize::from(want.is_some()) - isize::from(have.is_some());
        }
        delta
    }

    pub(super) fn renumber_name(&mut self, name: &Arc<str>) {
        let Some(ne) = self.names.get_mut(name) else { return };
        self.name_lru.remove(&ne.seq);
        match ne.lru.last_key_value() {
            Some((&seq, _)) => {
                ne.seq = seq;
                self.name_lru.insert(seq, name.clone());
            }
            None => {
                self.names.remove(name);
            }
        }
    }

    /// Learns or refreshes (name, ip) as the newest pair (`new.seq`); a
    /// refresh keeps the later expiry.
    pub(super) fn upsert(&mut self, id: u32, name: &Arc<str>, ports: &Arc<[PortKey]>, ip: Ip, new: Pair, tx: &mut Tx) -> isize {
        let Pair { seq, expires } = new;
        let ne = self.names.entry(name.clone()).or_insert_with(|| NameEntry {
            ports: ports.clone(),
            ips: HashMap::new(),
            lru: BTreeMap::new(),
            seq: 0,
        });
        let expires = match ne.ips.get(&ip) {
            Some(old) => {
                ne.lru.remove(&old.seq);
                self.lru.remove(&old.seq);
                self.by_expiry.remove(&(old.expires, old.seq));
                old.expires.max(expires)
            }
            None => {
                self.ip_names.entry(ip).or_default().push(name.clone());
                expires
            }
        };
        ne.ips.insert(ip, Pair { seq, expires });
        ne.lru.insert(seq, ip);
        let ports = ne.ports.clone();
        self.lru.insert(seq, (name.clone(), ip));
        self.by_expiry.insert((expires, seq));
        self.renumber_name(name);
        let delta = self.sync(id, ip, &ports, tx);
        self.keep_half_empty();
        delta
    }

    pub(super) fn remove(&mut self, id: u32, name: &Arc<str>, ip: Ip, tx: &mut Tx) -> isize {
        let Some(ne) = self.names.get_mut(name) else { return 0 };
        let Some(pair) = ne.ips.remove(&ip) else { return 0 };
        ne.lru.remove(&pair.seq);
        let ports = ne.ports.clone();
        self.lru.remove(&pair.seq);
        self.by_expiry.remove(&(pair.expires, pair.seq));
        if let Some(v) = self.ip_names.get_mut(&ip) {
            v.retain(|n| n != name);
            if v.is_empty() {
                self.ip_names.remove(&ip);
            }
        }
        self.renumber_name(name);
        self.sync(id, ip, &ports, tx)
    }

    /// Removes a name with all its pairs; returns (pairs, key delta).
    pub(super) fn remove_name(&mut self, id: u32, name: &Arc<str>, tx: &mut Tx) -> (usize, isize) {
        let ips: Vec<Ip> = self.names.get(name).map(|ne| ne.ips.keys().copied().collect()).unwrap_or_default();
        let delta = ips.iter().map(|ip| self.remove(id, name, *ip, tx)).sum();
        (ips.len(), delta)
    }

    /// Gives back what the hash tables hold beyond four times their
    /// contents: they never shrink by themselves, and an endpoint whose
    /// names expired must not keep the memory of its busiest moment.
    pub(super) fn shrink(&mut self) {
        fn fit<K: Eq + std::hash::Hash, V>(m: &mut HashMap<K, V>) {
            if m.capacity() > 64 && m.len() * 4 < m.capacity() {
                m.shrink_to(m.len() * 2);
            }
        }
        fit(&mut self.names);
        fit(&mut self.ip_names);
        fit(&mut self.keys);
    }

    /// Keeps the hash tables at most half full. Under churn (a name in,
    /// an expired one out) a table fills with deleted slots, and once it is
    /// more than half full hashbrown grows it rather than rehashing in
    /// place: kept half empty, a table grows only while the live set
    /// grows, never later under steady churn (`cargo xtask soak`).
    pub(super) fn keep_half_empty(&mut self) {
        fn half<K: Eq + std::hash::Hash, V>(m: &mut HashMap<K, V>) {
            if m.len() * 2 > m.capacity() {
                m.reserve(m.len());
            }
        }
        half(&mut self.names);
        half(&mut self.ip_names);
        half(&mut self.keys);
    }

    pub(super) fn has_pair(&self, name: &str, ip: &Ip) -> bool {
        self.names.get(name).is_some_and(|ne| ne.ips.contains_key(ip))
    }
}

//! Adopting what a previous agent left in pinned maps (node mode restarts
//! and takeovers, see `handover`): its endpoints keep their ids, its learned
//! pairs are learned again with their remaining TTL under the *current*
//! policy (a name the new policy no longer allows is not adopted), and
//! whatever nobody claims is removed - never before this agent's own
//! entries are in, so a restart never opens a window of denial or of
//! stale allowance.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv6Addr},
};

use agent_common::LearnedKey;

use super::{State, StateError, boot_ns, dns_key, key_bytes, map_err};
use crate::{
    handover::LearnedRecord,
    policy::{CompiledPolicy, is_always_denied},
};

impl State {
    /// Reads the endpoints a previous agent registered. Call before the
    /// first `add_endpoint`: a cgroup named again keeps its endpoint id.
    pub fn adopt_kernel_endpoints(&mut self) -> usize {
        self.adopted = self.maps.kernel_endpoints().into_iter().collect();
        self.adopted.len()
    }

    /// Removes the kernel entries of adopted endpoints this agent's config
    /// no longer names (their learned keys go in `adopt_learned`, with the
    /// other orphans); returns their cgroup ids (their links are unpinned
    /// by the caller).
    pub fn drop_unclaimed(&mut self) -> Result<Vec<u64>, StateError> {
        let unclaimed: Vec<_> = self.adopted.drain().collect();
        let mut cgroups = Vec::with_capacity(unclaimed.len());
        for (cgroup_id, info) in unclaimed {
            let id = info.endpoint;
            self.maps.remove_endpoint(cgroup_id).map_err(map_err("ENDPOINTS"))?;
            if !self.endpoints.contains_key(&id) {
                for (prefix, ip) in self.maps.cidrs_of(id) {
                    self.maps.remove_cidr(id, ip, prefix).map_err(map_err("CIDRS"))?;
                }
                for k in self.maps.dns_servers_of(id) {
                    self.maps.remove_dns_server(&k).map_err(map_err("DNS_SERVERS"))?;
                }
                self.maps.purge_flows(id).map_err(map_err("DNS_SOCKS/INBOUND"))?;
            }
            cgroups.push(cgroup_id);
        }
        Ok(cgroups)
    }

    /// Drops the CIDR and resolver entries of endpoint `id` that `policy`
    /// does not have (left by a previous agent's policy).
    pub(super) fn prune_policy_entries(&mut self, id: u32, policy: &CompiledPolicy) -> Result<(), StateError> {
        let keep: HashSet<(u8, [u8; 16])> =
            policy.cidr_entries.iter().map(|e| (e.net.prefix_len(), e.net.addr().octets())).collect();
        for (prefix, ip) in self.maps.cidrs_of(id) {
            if !keep.contains(&(prefix, ip)) {
                self.maps.remove_cidr(id, ip, prefix).map_err(map_err("CIDRS"))?;
            }
        }
        let keep: HashSet<_> = policy.dns_servers.iter().map(|s| dns_key(id, *s)).collect();
        for k in self.maps.dns_servers_of(id) {
            if !keep.contains(&k) {
                self.maps.remove_dns_server(&k).map_err(map_err("DNS_SERVERS"))?;
            }
        }
        Ok(())
    }

    /// Learns a previous agent's pairs again (their expiry unchanged), then
    /// notes learned keys in the kernel that no pair explains as orphans:
    /// they stay until their own expiry (a connection may be about to use
    /// them), then go; keys of endpoints no longer enforced go at once.
    /// Call with no records when nothing was handed over. Returns how many
    /// pairs were adopted.
    pub fn adopt_learned(&mut self, records: &[LearnedRecord]) -> Result<usize, StateError> {
        let now = boot_ns();
        let mut adopted = 0;
        let mut first = Ok(());
        let ids: HashMap<u64, u32> = self.endpoints.values().map(|e| (e.cgroup_id, e.id)).collect();
        for r in records {
            let Some(&id) = ids.get(&r.cgroup_id) else { continue };
            if r.expires_ns <= now || is_always_denied(r.ip) {
                continue;
            }
            let Some(ep) = self.endpoints.get_mut(&id) else { continue };
            ep.remember(r.ip, &r.name.as_str().into());
            let ports = ep.policy.ports_for_name(&r.name);
            if ports.is_empty() {
                continue;
            }
            let done = self.learned.learn(id, &r.name, &ports, &[(key_bytes(r.ip), r.expires_ns)], now, Default::default);
            adopted += done.allowed.len();
            let policy = super::ep_policy(&self.endpoints, id);
            let name = r.name.as_str();
            let rule_of = |k: &LearnedKey| policy.as_ref().map_or(0, |p| p.rule_for(name, k.proto, u16::from_be_bytes(k.port)));
            if let Err(e) = self.apply_with(done.changes, rule_of) {
                first = first.and(Err(e));
            }
        }
        first?;
        self.collect_orphans(now)?;
        Ok(adopted)
    }

    fn collect_orphans(&mut self, now: u64) -> Result<(), StateError> {
        self.orphans.clear();
        for (k, expires) in self.maps.learned_entries() {
            if self.learned.key(&k).is_some() {
                continue;
            }
            if self.endpoints.contains_key(&k.endpoint) && expires > now {
                self.orphans.push((k, expires));
            } else {
                self.maps.remove_learned(&k).map_err(map_err("LEARNED"))?;
            }
        }
        Ok(())
    }

    /// Removes orphans whose expiry passed, unless a pair learned since
    /// owns the key now.
    pub(super) fn expire_orphans(&mut self, now: u64) -> Result<(), StateError> {
        if self.orphans.is_empty() {
            return Ok(());
        }
        let (gone, keep): (Vec<(LearnedKey, u64)>, _) = self.orphans.drain(..).partition(|(_, e)| *e <= now);
        self.orphans = keep;
        for (k, _) in gone {
            if self.learned.key(&k).is_none() {
                self.maps.remove_learned(&k).map_err(map_err("LEARNED"))?;
            }
        }
        Ok(())
    }

    /// Learned keys kept from a previous agent until they expire.
    pub fn orphan_count(&self) -> usize {
        self.orphans.len()
    }

    /// Every learned pair as (cgroup id, name, address, expiry), copied as
    /// cheaply as possible (the names are shared): what a snapshot takes
    /// under the lock; `to_records` makes records of it outside.
    pub fn learned_pairs(&self) -> Vec<(u64, std::sync::Arc<str>, [u8; 16], u64)> {
        let mut pairs = self.learned.pairs();
        pairs.retain(|(id, ..)| self.endpoints.contains_key(id));
        pairs.into_iter().map(|(id, name, ip, exp)| (self.endpoints[&id].cgroup_id, name, ip, exp)).collect()
    }

    /// Changes whenever learned state changed.
    pub fn version(&self) -> u64 {
        self.version
    }
}

/// Records of `State::learned_pairs`, for the next agent or the snapshot.
pub fn to_records(pairs: Vec<(u64, std::sync::Arc<str>, [u8; 16], u64)>) -> Vec<LearnedRecord> {
    pairs
        .into_iter()
        .map(|(cgroup_id, name, ip, expires_ns)| LearnedRecord {
            cgroup_id,
            name: name.to_string(),
            ip: IpAddr::V6(Ipv6Addr::from(ip)).to_canonical(),
            expires_ns,
        })
        .collect()
}

//! Names resolved per endpoint since the last `take` (the ClickHouse
//! `names_resolved` table, written once a minute by `agent/flows.rs`):
//! each allowed lookup whose answer the gate passed on, with the addresses
//! it taught the kernel and the ports the policy opens for the name.
//!
//! Off (one relaxed load per answer) unless the ClickHouse output is on.
//! Bounded: at most `MAX_NAMES` (endpoint, name) pairs between two takes;
//! lookups of further pairs are counted in `dropped`, not kept. The lock is
//! held for one map update (and by `take` for a swap), never for I/O.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
};

use agent_common::proto;

use crate::{
    blocked::{escape::escape_in_place, protocol_name},
    enforcer::{EndpointView, Identity},
    policy::PortKey,
    util::lock,
};

/// Most (endpoint, name) pairs kept between two takes.
pub const MAX_NAMES: usize = 10_000;

/// One name of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameCount {
    pub who: Identity,
    /// The ports the policy opens for the name: `443/tcp,80/tcp`, `any`, or
    /// empty (a `dns.allowNames` name: resolvable, no traffic).
    pub ports: String,
    /// Allowed lookups answered.
    pub lookups: u64,
    /// Addresses learned from those answers.
    pub addresses: u64,
}

#[derive(Default)]
pub struct NameTally {
    on: AtomicBool,
    counts: Mutex<HashMap<(u32, String), NameCount>>,
    /// Lookups not kept: the pair cap was reached.
    pub dropped: AtomicU64,
}

/// The ports of `name` as the policy opens them.
pub fn ports_text(keys: &[PortKey]) -> String {
    if keys.contains(&PortKey::ALL) {
        return "any".into();
    }
    keys.iter()
        .map(|k| if k.proto == proto::ANY { format!("{}/any", k.port) } else { format!("{}/{}", k.port, protocol_name(k.proto)) })
        .collect::<Vec<_>>()
        .join(",")
}

impl NameTally {
    pub fn enable(&self) {
        self.on.store(true, Relaxed);
    }

    /// One allowed lookup of `qname` by endpoint `ep`, answered, whose
    /// answer taught `addresses` addresses.
    pub fn note(&self, ep: &EndpointView, qname: &str, addresses: usize) {
        if !self.on.load(Relaxed) {
            return;
        }
        let mut name = qname.trim_end_matches('.').to_ascii_lowercase();
        escape_in_place(&mut name);
        let mut m = lock(&self.counts);
        let len = m.len();
        let key = (ep.id, name);
        let c = match m.get_mut(&key) {
            Some(c) => c,
            None if len >= MAX_NAMES => {
                drop(m);
                self.dropped.fetch_add(1, Relaxed);
                return;
            }
            None => {
                let ports = ports_text(&ep.policy.ports_for_name(&key.1));
                m.entry(key).or_insert(NameCount { who: ep.identity.clone(), ports, lookups: 0, addresses: 0 })
            }
        };
        c.lookups += 1;
        c.addresses += addresses as u64;
    }

    /// Everything counted since the last take.
    pub fn take(&self) -> Vec<(String, NameCount)> {
        let m = std::mem::take(&mut *lock(&self.counts));
        let mut out: Vec<(String, NameCount)> = m.into_iter().map(|((_, name), c)| (name, c)).collect();
        out.sort_by(|a, b| (&a.1.who.name, &a.0).cmp(&(&b.1.who.name, &b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_as_text() {
        let k = |proto, port| PortKey { proto, port };
        assert_eq!(ports_text(&[k(proto::TCP, 443), k(proto::UDP, 53)]), "443/tcp,53/udp");
        assert_eq!(ports_text(&[PortKey::ALL]), "any");
        assert_eq!(ports_text(&[]), "");
    }
}

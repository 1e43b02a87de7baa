//! Queries the gate let through, waiting for their answers. An answer is
//! learned from (and delivered) only if it matches one: same endpoint,
//! client address, resolver, transaction id and question. Forged or
//! unsolicited answers (a pod with a raw socket and source port 53, an
//! off-path spoofer) never teach the kernel anything.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::handover::PendingRecord;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueryKey {
    pub endpoint: u32,
    pub client: SocketAddr,
    pub resolver: SocketAddr,
    pub txid: u16,
}

#[derive(Clone, Debug)]
struct Pending {
    qname: String,
    qtype: u16,
    /// Whether the endpoint's policy lets it resolve `qname`.
    allowed: bool,
    at: Instant,
}

/// How long an answer may take before its query is forgotten (resolvers
/// give up well before this; stub resolvers retry with new ids).
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on outstanding queries; beyond it the oldest are dropped first.
pub const MAX_PENDING: usize = 65536;

#[derive(Default)]
pub struct PendingQueries {
    map: HashMap<QueryKey, Pending>,
}

impl PendingQueries {
    pub fn insert(&mut self, key: QueryKey, qname: &str, qtype: u16, allowed: bool, now: Instant) {
        if self.map.len() >= MAX_PENDING {
            self.expire(now);
        }
        if self.map.len() >= MAX_PENDING {
            // Still full of live queries: forget the oldest one.
            if let Some(oldest) = self.map.iter().min_by_key(|(_, p)| p.at).map(|(k, _)| k.clone()) {
                self.map.remove(&oldest);
            }
        }
        self.map.insert(key, Pending { qname: qname.to_owned(), qtype, allowed, at: now });
    }

    /// Consumes the pending query an answer belongs to and says whether its
    /// name was allowed; `None` if there is none (unsolicited, forged, late,
    /// or for another question).
    pub fn take(&mut self, key: &QueryKey, qname: &str, qtype: u16) -> Option<bool> {
        match self.map.get(key) {
            Some(p) if p.qname == qname && p.qtype == qtype => self.map.remove(key).map(|p| p.allowed),
            _ => None,
        }
    }

    pub fn expire(&mut self, now: Instant) {
        self.map.retain(|_, p| now.duration_since(p.at) < PENDING_TIMEOUT);
    }

    /// Every pending query, for the next agent (`handover`).
    pub fn export(&self, now: Instant) -> Vec<PendingRecord> {
        self.map
            .iter()
            .map(|(k, p)| PendingRecord {
                endpoint: k.endpoint,
                client: k.client,
                resolver: k.resolver,
                txid: k.txid,
                qname: p.qname.clone(),
                qtype: p.qtype,
                allowed: p.allowed,
                age_ms: now.saturating_duration_since(p.at).as_millis() as u64,
            })
            .collect()
    }

    /// Takes over a previous agent's pending queries (too old ones dropped).
    pub fn import(&mut self, records: &[PendingRecord], now: Instant) {
        for r in records {
            let age = Duration::from_millis(r.age_ms);
            if age >= PENDING_TIMEOUT {
                continue;
            }
            let key = QueryKey { endpoint: r.endpoint, client: r.client, resolver: r.resolver, txid: r.txid };
            self.insert(key, &r.qname, r.qtype, r.allowed, now.checked_sub(age).unwrap_or(now));
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(txid: u16) -> QueryKey {
        QueryKey { endpoint: 1, client: "198.18.1.2:40000".parse().unwrap(), resolver: "198.51.100.53:53".parse().unwrap(), txid }
    }

    #[test]
    fn answer_must_match_every_field_once() {
        let mut p = PendingQueries::default();
        let now = Instant::now();
        p.insert(key(7), "a.test", 1, true, now);
        p.insert(key(9), "evil.test", 1, false, now);
        assert_eq!(p.take(&key(8), "a.test", 1), None, "other txid");
        assert_eq!(p.take(&key(7), "b.test", 1), None, "other question");
        assert_eq!(p.take(&key(7), "a.test", 28), None, "other type");
        let mut other_port = key(7);
        other_port.client = "198.18.1.2:40001".parse().unwrap();
        assert_eq!(p.take(&other_port, "a.test", 1), None, "other client port");
        let mut other_resolver = key(7);
        other_resolver.resolver = "198.51.100.99:53".parse().unwrap();
        assert_eq!(p.take(&other_resolver, "a.test", 1), None, "other resolver");
        assert_eq!(p.take(&key(7), "a.test", 1), Some(true));
        assert_eq!(p.take(&key(7), "a.test", 1), None, "a second answer is unsolicited");
        assert_eq!(p.take(&key(9), "evil.test", 1), Some(false), "refused names are remembered too");
    }

    #[test]
    fn export_import_keeps_pairing_and_drops_stale() {
        let t0 = Instant::now();
        let mut old = PendingQueries::default();
        old.insert(key(7), "a.test", 1, true, t0);
        old.insert(key(9), "evil.test", 28, false, t0);
        let mut records = old.export(t0 + Duration::from_millis(5));
        records.push(PendingRecord { age_ms: PENDING_TIMEOUT.as_millis() as u64, ..records[0].clone() });
        records.last_mut().unwrap().txid = 11;
        let mut new = PendingQueries::default();
        new.import(&records, Instant::now());
        assert_eq!(new.len(), 2, "the stale one is dropped");
        assert_eq!(new.take(&key(7), "a.test", 1), Some(true));
        assert_eq!(new.take(&key(9), "evil.test", 28), Some(false));
        assert_eq!(new.take(&key(11), "a.test", 1), None);
    }

    #[test]
    fn old_queries_expire_and_size_is_bounded() {
        let mut p = PendingQueries::default();
        let t0 = Instant::now();
        p.insert(key(1), "a.test", 1, true, t0);
        p.expire(t0 + PENDING_TIMEOUT + Duration::from_secs(1));
        assert!(p.is_empty());
        for i in 0..(MAX_PENDING + 10) {
            let mut k = key((i % 65536) as u16);
            k.client = SocketAddr::new(k.client.ip(), 1000 + (i / 65536) as u16);
            p.insert(k, "a.test", 1, true, t0 + Duration::from_micros(i as u64));
        }
        assert!(p.len() <= MAX_PENDING);
    }
}

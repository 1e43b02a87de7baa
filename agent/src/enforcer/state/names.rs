//! The DNS name an endpoint last saw for an address, for the blocked log's
//! `host` field: a direct-mapped table of fixed size per endpoint. Its
//! memory is set once, when the endpoint first resolves something: no
//! growth with the number of names ever seen, no table rebuilt when full
//! (a new address takes its slot's place, as a CPU cache line does).

use std::{hash::BuildHasher as _, net::IpAddr, sync::Arc};

use crate::policy::canonical;

/// Slots per endpoint (a power of two).
const SLOTS: usize = 2048;

#[derive(Debug, Default)]
pub struct RecentNames {
    slots: Vec<Option<([u8; 16], Arc<str>)>>,
    hasher: std::collections::hash_map::RandomState,
}

impl RecentNames {
    fn slot(&self, key: &[u8; 16]) -> usize {
        (self.hasher.hash_one(key) as usize) & (SLOTS - 1)
    }

    pub fn get(&self, ip: IpAddr) -> Option<&str> {
        let key = canonical(ip).octets();
        match self.slots.get(self.slot(&key))? {
            Some((k, name)) if *k == key => Some(name),
            _ => None,
        }
    }

    /// The addresses `name` was last seen with (a scan of the table: for
    /// `portcullis explain`, not for any packet's path).
    pub fn addresses_of(&self, name: &str) -> Vec<IpAddr> {
        self.slots
            .iter()
            .flatten()
            .filter(|(_, n)| &**n == name)
            .map(|(k, _)| {
                let v6 = std::net::Ipv6Addr::from(*k);
                v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
            })
            .collect()
    }

    pub fn insert(&mut self, ip: IpAddr, name: &Arc<str>) {
        if self.slots.is_empty() {
            self.slots = vec![None; SLOTS];
        }
        let key = canonical(ip).octets();
        let i = self.slot(&key);
        self.slots[i] = Some((key, Arc::clone(name)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_name_for_an_address_is_kept_and_memory_is_fixed() {
        let mut r = RecentNames::default();
        assert_eq!(r.get("192.0.2.1".parse().unwrap()), None);
        let (a, b): (Arc<str>, Arc<str>) = ("a.test".into(), "b.test".into());
        r.insert("192.0.2.1".parse().unwrap(), &a);
        r.insert("::ffff:192.0.2.1".parse().unwrap(), &b);
        assert_eq!(r.get("192.0.2.1".parse().unwrap()), Some("b.test"), "IPv4 and its mapped form are one address");
        assert_eq!(r.addresses_of("b.test"), vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert!(r.addresses_of("a.test").is_empty());
        for i in 0..100_000u32 {
            r.insert(IpAddr::from(std::net::Ipv6Addr::from(u128::from(i))), &a);
        }
        assert_eq!(r.slots.len(), SLOTS);
        assert_eq!(r.slots.capacity(), SLOTS);
    }
}

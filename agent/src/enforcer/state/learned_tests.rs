//! `LearnedTable` without the kernel: a mirror map stands in for `LEARNED`
//! and receives every `Changes`; after each step the mirror must equal the
//! keys the table's pairs need, computed from scratch.

use std::cell::Cell;

use agent_common::proto;

use super::*;

const P443: PortKey = PortKey { proto: proto::TCP, port: 443 };
const P80: PortKey = PortKey { proto: proto::TCP, port: 80 };

fn ip(n: u8) -> Ip {
    let mut b = [0u8; 16];
    b[10] = 0xff;
    b[11] = 0xff;
    b[12..].copy_from_slice(&[203, 0, 113, n]);
    b
}

fn key(ep: u32, p: PortKey, ip: Ip) -> LearnedKey {
    learned_key(ep, p, ip)
}

fn no_live() -> LiveIps {
    LiveIps::new()
}

fn live(ep: u32, ips: &[Ip]) -> impl Fn() -> LiveIps + use<> {
    let set: HashSet<Ip> = ips.iter().copied().collect();
    move || LiveIps::from([(ep, set.clone())])
}

fn must_not_fetch() -> LiveIps {
    panic!("live connections fetched although nothing had to be evicted")
}

/// The table plus a mirror of the kernel map fed only through `Changes`.
struct H {
    t: LearnedTable,
    kernel: HashMap<LearnedKey, u64>,
}

impl H {
    fn new(ips_per_name: usize, names_per_endpoint: usize, total_entries: usize) -> Self {
        Self { t: LearnedTable::new(Caps { ips_per_name, names_per_endpoint, total_entries }), kernel: HashMap::new() }
    }

    fn apply(&mut self, c: &Changes) {
        for k in &c.removes {
            assert!(self.kernel.remove(k).is_some(), "removing a key the kernel does not hold: {k:?}");
        }
        for (k, e) in &c.inserts {
            assert_ne!(self.kernel.insert(*k, *e), Some(*e), "no-op insert {k:?}");
        }
        assert!(self.kernel.len() <= self.t.caps().total_entries, "total cap exceeded in the kernel");
        self.check();
    }

    fn learn_with(
        &mut self,
        ep: u32,
        name: &str,
        ports: &[PortKey],
        ips: &[(Ip, u64)],
        now: u64,
        live: impl FnOnce() -> LiveIps,
    ) -> Learned {
        let out = self.t.learn(ep, name, ports, ips, now, live);
        self.apply(&out.changes);
        out
    }

    /// Learns `ips`, all expiring at 1000, at time 0, nothing live.
    fn learn(&mut self, ep: u32, name: &str, ports: &[PortKey], ips: &[Ip]) -> Learned {
        let addrs: Vec<(Ip, u64)> = ips.iter().map(|i| (*i, 1000)).collect();
        self.learn_with(ep, name, ports, &addrs, 0, no_live)
    }

    fn expire(&mut self, now: u64) -> usize {
        let (n, c) = self.t.expire(now);
        self.apply(&c);
        n
    }

    /// Every pair: (endpoint, name, IP) -> expiry.
    fn pairs(&self) -> HashMap<(u32, String, Ip), u64> {
        let mut out = HashMap::new();
        for (&ep, t) in &self.t.endpoints {
            for (name, ne) in &t.names {
                for (ip, pair) in &ne.ips {
                    out.insert((ep, name.to_string(), *ip), pair.expires);
                }
            }
        }
        out
    }

    fn has(&self, ep: u32, p: PortKey, i: Ip) -> bool {
        self.kernel.contains_key(&key(ep, p, i))
    }

    /// Every index agrees with the pairs, and the kernel holds exactly the
    /// keys the pairs need, each with the latest expiry among its holders.
    fn check(&self) {
        let mut want: HashMap<LearnedKey, u64> = HashMap::new();
        let mut total = 0;
        for (&ep, t) in &self.t.endpoints {
            let mut pairs = 0;
            assert_eq!(t.name_lru.len(), t.names.len());
            for (name, ne) in &t.names {
                assert!(!ne.ips.is_empty(), "empty name {name} kept");
                assert!(ne.ips.len() <= self.t.caps.ips_per_name);
                assert_eq!(ne.lru.len(), ne.ips.len());
                assert_eq!(t.name_lru.get(&ne.seq), Some(name));
                assert_eq!(ne.seq, *ne.lru.keys().last().unwrap());
                for (ip, pair) in &ne.ips {
                    pairs += 1;
                    assert_eq!(ne.lru.get(&pair.seq), Some(ip));
                    assert_eq!(t.lru.get(&pair.seq), Some(&(name.clone(), *ip)));
                    assert!(t.by_expiry.contains(&(pair.expires, pair.seq)));
                    assert!(t.ip_names[ip].contains(name));
                    for p in ne.ports.iter() {
                        let e = want.entry(key(ep, *p, *ip)).or_insert(0);
                        *e = (*e).max(pair.expires);
                    }
                }
            }
            assert!(t.names.len() <= self.t.caps.names_per_endpoint);
            assert_eq!(t.lru.len(), pairs);
            assert_eq!(t.by_expiry.len(), pairs);
            assert_eq!(t.ip_names.values().map(Vec::len).sum::<usize>(), pairs);
            assert!(t.keys.keys().all(|k| k.endpoint == ep));
            total += t.keys.len();
        }
        assert_eq!(self.t.total_keys(), total);
        assert_eq!(self.kernel, want, "kernel mirror differs from what the pairs need");
    }
}

#[test]
fn learn_writes_one_key_per_port_and_refresh_only_extends() {
    let mut h = H::new(10, 10, 100);
    let out = h.learn_with(1, "a.test", &[P80, P443], &[(ip(1), 500)], 0, must_not_fetch);
    assert_eq!(out.allowed, vec![ip(1)]);
    assert_eq!(out.changes.inserts.len(), 2);
    assert_eq!(h.kernel[&key(1, P443, ip(1))], 500);
    let out = h.learn_with(1, "a.test", &[P80, P443], &[(ip(1), 400)], 0, must_not_fetch);
    assert_eq!(out.changes, Changes::default(), "a shorter TTL never shortens");
    let out = h.learn_with(1, "a.test", &[P80, P443], &[(ip(1), 900)], 0, must_not_fetch);
    assert_eq!(out.changes.inserts.len(), 2);
    assert_eq!(h.kernel[&key(1, P80, ip(1))], 900);
    assert_eq!(h.t.keys_of(1), 2);
}

#[test]
fn ips_per_name_cap_evicts_the_least_recently_learned_ip() {
    let mut h = H::new(3, 10, 100);
    for n in 1..=3 {
        h.learn(1, "a.test", &[P443], &[ip(n)]);
    }
    let out = h.learn(1, "a.test", &[P443], &[ip(4)]);
    assert_eq!(out.evicted, 1);
    assert_eq!(out.changes.removes, vec![key(1, P443, ip(1))]);
    h.learn(1, "a.test", &[P443], &[ip(5)]);
    assert_eq!(h.t.ips_of(1, "a.test"), vec![ip(3), ip(4), ip(5)]);
    assert!(!h.has(1, P443, ip(1)) && !h.has(1, P443, ip(2)));
    assert_eq!(h.t.stats().evicted_ips_per_name, 2);
    assert_eq!(h.t.stats().refused_live, 0);
}

#[test]
fn ips_per_name_cap_within_one_answer_keeps_the_last() {
    let mut h = H::new(3, 10, 100);
    let out = h.learn(1, "a.test", &[P443], &[ip(1), ip(2), ip(3), ip(4), ip(5)]);
    assert_eq!(out.allowed, vec![ip(3), ip(4), ip(5)], "allowed lists only what is still allowed");
    assert_eq!(out.evicted, 2);
    assert!(out.changes.removes.is_empty(), "net changes: 1 and 2 never reach the kernel");
    assert_eq!(out.changes.inserts.len(), 3);
}

#[test]
fn refresh_moves_an_ip_to_most_recently_used() {
    let mut h = H::new(3, 10, 100);
    h.learn(1, "a.test", &[P443], &[ip(1), ip(2), ip(3)]);
    h.learn(1, "a.test", &[P443], &[ip(1)]);
    h.learn(1, "a.test", &[P443], &[ip(4)]);
    assert_eq!(h.t.ips_of(1, "a.test"), vec![ip(3), ip(1), ip(4)], "2 went, not the refreshed 1");
    assert!(h.has(1, P443, ip(1)) && !h.has(1, P443, ip(2)));
}

#[test]
fn names_cap_evicts_the_least_recently_used_name_with_all_its_ips() {
    let mut h = H::new(10, 2, 100);
    h.learn(1, "a.test", &[P443], &[ip(1), ip(2)]);
    h.learn(1, "b.test", &[P443], &[ip(3)]);
    let out = h.learn(1, "c.test", &[P443], &[ip(4)]);
    assert_eq!(out.evicted, 2, "a.test with both its IPs");
    assert_eq!(h.t.stats().evicted_names, 1);
    assert!(!h.has(1, P443, ip(1)) && !h.has(1, P443, ip(2)) && h.has(1, P443, ip(3)));
    // A refresh makes b.test the most recent name: c.test goes next.
    h.learn(1, "b.test", &[P443], &[ip(3)]);
    h.learn(1, "d.test", &[P443], &[ip(5)]);
    assert_eq!(h.t.ips_of(1, "c.test"), Vec::<Ip>::new());
    assert_eq!(h.t.ips_of(1, "b.test"), vec![ip(3)]);
    assert_eq!(h.t.names_of(1), 2);
    assert_eq!(h.t.stats().evicted_names, 2);
    // Names are counted per endpoint.
    h.learn(2, "x.test", &[P443], &[ip(9)]);
    assert_eq!(h.t.names_of(1), 2);
}

#[test]
fn total_cap_counts_kernel_keys_and_takes_from_the_biggest_endpoint() {
    let mut h = H::new(10, 10, 5);
    h.learn(2, "y.test", &[P443], &[ip(9)]);
    h.learn(1, "a.test", &[P80, P443], &[ip(1)]);
    h.learn(1, "b.test", &[P443], &[ip(2), ip(3)]);
    assert_eq!(h.t.total_keys(), 5);
    // Endpoint 2 needs one key: endpoint 1 (4 keys) gives up its oldest pair,
    // although endpoint 2's own pair is older.
    let out = h.learn(2, "y.test", &[P443], &[ip(8)]);
    assert_eq!(out.evicted, 1);
    assert_eq!(h.t.total_keys(), 4, "a.test/1 held two keys");
    assert!(!h.has(1, P80, ip(1)) && !h.has(1, P443, ip(1)));
    assert!(h.has(2, P443, ip(9)));
    let out = h.learn(2, "y.test", &[P443], &[ip(7)]);
    assert_eq!((out.evicted, h.t.total_keys()), (0, 5), "up to the cap, nothing goes");
    // Now endpoint 2 is the biggest: it pays for itself.
    let out = h.learn(2, "y.test", &[P443], &[ip(6)]);
    assert_eq!(out.evicted, 1);
    assert_eq!(out.changes.removes, vec![key(2, P443, ip(9))]);
    assert_eq!(h.t.stats().evicted_total, 2);
    // A key another name already needs costs nothing.
    let out = h.learn(1, "c.test", &[P443], &[ip(2)]);
    assert_eq!((out.evicted, out.changes), (0, Changes::default()));
}

#[test]
fn shared_ip_stays_until_every_name_drops_it() {
    let mut h = H::new(1, 10, 100);
    h.learn_with(1, "a.test", &[P443], &[(ip(1), 100)], 0, no_live);
    h.learn_with(1, "b.test", &[P80, P443], &[(ip(1), 200)], 0, no_live);
    assert_eq!(h.kernel[&key(1, P443, ip(1))], 200);
    assert_eq!(h.t.keys_of(1), 2);
    // b.test's next IP evicts (b.test, 1): port 80 goes, 443 stays for a.test
    // with a.test's own expiry.
    let out = h.learn_with(1, "b.test", &[P80, P443], &[(ip(2), 200)], 0, no_live);
    assert!(out.changes.removes.contains(&key(1, P80, ip(1))));
    assert!(out.changes.inserts.contains(&(key(1, P443, ip(1)), 100)));
    assert_eq!(h.kernel[&key(1, P443, ip(1))], 100);
    // a.test drops it too (expiry): now it goes.
    assert_eq!(h.expire(150), 1);
    assert!(!h.has(1, P443, ip(1)));
    assert!(h.has(1, P443, ip(2)));
}

#[test]
fn live_ip_is_never_evicted() {
    let mut h = H::new(2, 10, 100);
    h.learn(1, "a.test", &[P443], &[ip(1), ip(2)]);
    h.learn_with(1, "a.test", &[P443], &[(ip(3), 1000)], 0, live(1, &[ip(1)]));
    assert_eq!(h.t.ips_of(1, "a.test"), vec![ip(1), ip(3)], "2 went, the live 1 stayed");
    // A live connection of another endpoint protects nothing here.
    h.learn_with(1, "a.test", &[P443], &[(ip(4), 1000)], 0, live(2, &[ip(1), ip(3)]));
    assert_eq!(h.t.ips_of(1, "a.test"), vec![ip(3), ip(4)]);
}

#[test]
fn refused_when_every_candidate_is_live_and_live_fetched_once() {
    let mut h = H::new(2, 10, 100);
    h.learn(1, "a.test", &[P443], &[ip(1), ip(2)]);
    let fetches = Cell::new(0);
    let l = live(1, &[ip(1), ip(2)]);
    let out = h.learn_with(1, "a.test", &[P443], &[(ip(3), 1000), (ip(4), 1000), (ip(1), 2000)], 0, || {
        fetches.set(fetches.get() + 1);
        l()
    });
    assert_eq!(fetches.get(), 1);
    assert_eq!(out.refused, vec![ip(3), ip(4)]);
    assert_eq!(out.allowed, vec![ip(1)], "a refresh needs no room");
    assert_eq!(out.evicted, 0);
    assert!(!h.has(1, P443, ip(3)) && h.kernel[&key(1, P443, ip(1))] == 2000);
    assert_eq!(h.t.stats().refused_live, 2);
    // Names cap: the only other name is live.
    let mut h = H::new(10, 1, 100);
    h.learn(1, "a.test", &[P443], &[ip(1), ip(2)]);
    let out = h.learn_with(1, "b.test", &[P443], &[(ip(5), 1000)], 0, live(1, &[ip(2)]));
    assert_eq!((out.refused, h.t.names_of(1)), (vec![ip(5)], 1));
    // Total cap: everything is live.
    let mut h = H::new(10, 10, 2);
    h.learn(1, "a.test", &[P443], &[ip(1)]);
    h.learn(2, "b.test", &[P443], &[ip(2)]);
    let both = || LiveIps::from([(1, HashSet::from([ip(1)])), (2, HashSet::from([ip(2)]))]);
    let out = h.learn_with(1, "a.test", &[P443], &[(ip(3), 1000)], 0, both);
    assert_eq!(out.refused, vec![ip(3)]);
    assert_eq!(h.t.stats().refused_live, 1);
}

#[test]
fn expiry_keeps_the_bookkeeping_consistent() {
    let mut h = H::new(2, 2, 100);
    h.learn_with(1, "a.test", &[P443], &[(ip(1), 10), (ip(2), 30)], 0, no_live);
    h.learn_with(1, "b.test", &[P443], &[(ip(3), 10)], 0, no_live);
    assert_eq!(h.expire(5), 0);
    assert_eq!(h.expire(10), 2);
    assert_eq!(h.t.names_of(1), 1, "b.test lost its only IP");
    assert_eq!(h.t.ips_of(1, "a.test"), vec![ip(2)]);
    // Expired pairs never count against a cap: nothing is evicted for them.
    h.learn_with(1, "a.test", &[P443], &[(ip(4), 100)], 20, must_not_fetch);
    let out = h.learn_with(1, "c.test", &[P443], &[(ip(5), 100)], 40, must_not_fetch);
    assert_eq!(out.changes.removes, vec![key(1, P443, ip(2))], "2 expired at 30, dropped on the way");
    assert_eq!(out.evicted, 0);
    assert_eq!(h.t.stats(), CapStats::default());
    assert_eq!(h.t.remove_endpoint(1).len(), 2);
    assert_eq!(h.t.total_keys(), 0);
}

#[test]
fn randomized_operations_keep_every_invariant() {
    let mut h = H::new(3, 4, 12);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let names = ["a.test", "b.test", "c.test", "d.test", "e.test", "f.test"];
    let ports: [&[PortKey]; 6] = [&[P443], &[P80, P443], &[PortKey::ALL], &[P443], &[P80], &[P443]];
    for now in 0..5000u64 {
        if rnd(10) == 0 {
            h.expire(now);
            continue;
        }
        let ep = 1 + rnd(3) as u32;
        let n = rnd(names.len() as u64) as usize;
        let addrs: Vec<(Ip, u64)> = (0..1 + rnd(4)).map(|_| (ip(rnd(8) as u8), now + rnd(200))).collect();
        let live_ips: Vec<Ip> = (0..rnd(7)).map(|_| ip(rnd(8) as u8)).collect();
        let before = h.pairs();
        let out = h.learn_with(ep, names[n], ports[n], &addrs, now, live(ep, &live_ips));
        let after = h.pairs();
        for ((e, name, i), expires) in before {
            if e == ep && live_ips.contains(&i) && expires > now {
                assert!(after.contains_key(&(e, name.clone(), i)), "live {name} {i:?} evicted");
            }
        }
        for i in &out.allowed {
            assert!(h.t.ips_of(ep, names[n]).contains(i));
        }
        for i in &out.refused {
            assert!(!out.allowed.contains(i));
        }
    }
    let s = h.t.stats();
    assert!(s.evicted_ips_per_name > 0 && s.evicted_names > 0 && s.evicted_total > 0 && s.refused_live > 0, "{s:?}");
}

#[test]
fn a_new_policy_revokes_names_it_no_longer_allows_and_rekeys_changed_ports() {
    let mut h = H::new(10, 10, 100);
    h.learn(1, "a.test", &[P443], &[ip(1), ip(2)]);
    h.learn(1, "b.test", &[P443], &[ip(3)]);
    h.learn(1, "c.test", &[P80], &[ip(1)]);
    h.learn(2, "b.test", &[P443], &[ip(3)]);
    let before = h.pairs();
    let (revoked, changes) = h.t.repolicy(
        1,
        |name| match name {
            "a.test" => vec![P443, P80],
            "c.test" => vec![P80],
            _ => Vec::new(),
        },
        0,
    );
    h.apply(&changes);
    assert_eq!(revoked, 1, "b.test's one address");
    assert!(!h.has(1, P443, ip(3)), "a name no longer allowed loses its key at once");
    assert!(h.has(2, P443, ip(3)), "another endpoint's pair of the same name stays");
    assert!(h.has(1, P443, ip(1)) && h.has(1, P443, ip(2)), "a name still allowed keeps its keys");
    assert!(h.has(1, P80, ip(2)), "a port the policy added works without a new lookup");
    assert!(h.has(1, P80, ip(1)), "c.test still needs this key");
    // Addresses kept keep their expiry; nothing but the revoked pair went.
    let after = h.pairs();
    assert_eq!(after.len(), before.len() - 1);
    for (k, e) in &after {
        assert_eq!(before.get(k), Some(e), "{k:?}");
    }
    // Touching nothing changes nothing in the kernel.
    let (revoked, changes) = h.t.repolicy(2, |_| vec![P443], 0);
    assert_eq!((revoked, changes), (0, Changes::default()));
}

#[test]
fn narrowing_a_names_ports_drops_only_the_removed_ports_keys() {
    let mut h = H::new(10, 10, 100);
    h.learn(1, "a.test", &[P443, P80], &[ip(1)]);
    let (_, changes) = h.t.repolicy(1, |_| vec![P443], 0);
    h.apply(&changes);
    assert!(h.has(1, P443, ip(1)));
    assert!(!h.has(1, P80, ip(1)));
    assert_eq!(changes.removes, [key(1, P80, ip(1))]);
    assert!(changes.inserts.is_empty(), "the kept key is not written again: {changes:?}");
}

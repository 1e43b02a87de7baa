//! Queries on the hold path (copies seen in `cgroup_skb/egress`; the query
//! itself goes on): judged by the engine and remembered, so the answer can
//! be paired with it and, for a name the endpoint may not resolve,
//! replaced.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Instant,
};

use agent_common::DnsHeldPacket;
use tracing::debug;

use super::{HoldPath, QueryKey};
use crate::{
    dns::parse_udp,
    dnsgate::{
        DnsStats,
        engine::{Client, QueryVerdict},
        netns::CaughtQuery,
    },
};

/// Queries per endpoint per second above which the rate is counted as
/// suspicious (a stub resolver asks a handful per lookup).
pub const QUERY_RATE_LIMIT: u32 = 200;

impl HoldPath {
    pub(super) fn handle_query(&mut self, held: &DnsHeldPacket, data: &[u8]) -> bool {
        let udp = match parse_udp(data) {
            Ok(u) => u,
            Err(e) => {
                // Not something we can vouch for: it does not leave.
                debug!(error = %e, endpoint = held.endpoint, "dropping unparseable DNS query");
                DnsStats::bump(&self.engine.stats.dropped_malformed);
                return false;
            }
        };
        self.note_rate(held.endpoint);
        if let Some(g) = &self.dns_gates
            && let Err(e) = g.ensure(held.tgid, Some(held.netns_cookie), held.endpoint)
        {
            // DNS over TCP from there stays refused (fail closed).
            debug!(error = %e, endpoint = held.endpoint, "cannot open a TCP DNS gate");
        }
        let who = Client { endpoint: held.endpoint, tgid: held.tgid, cgroup_id: held.cgroup_id, resolver: udp.dst };
        let (q, allowed) = match self.engine.on_query(&who, udp.payload) {
            QueryVerdict::Forward(q) => (q, true),
            // The query already left: its answer is replaced (`answer`).
            QueryVerdict::Refuse(q, _) => (q, false),
            QueryVerdict::Drop => return false,
        };
        let key = QueryKey { endpoint: held.endpoint, client: udp.src, resolver: udp.dst, txid: q.txid };
        self.pending.insert(key, &q.qname, q.qtype, allowed, Instant::now());
        true
    }

    /// A query caught on loopback (`DNS_KIND_CAUGHT`) in a namespace that
    /// had no gate: the gate opened there now serves it (judges, forwards,
    /// answers by injection). Without one it is dropped: the client retries.
    pub(super) fn handle_caught(&mut self, held: &DnsHeldPacket, data: &[u8]) -> bool {
        let Ok(udp) = parse_udp(data) else {
            DnsStats::bump(&self.engine.stats.dropped_malformed);
            return false;
        };
        // An IPv6 resolver's query caught over IPv4 (`DNS_PLACEHOLDER_V4`):
        // forwarded to the resolver, answered from the placeholder.
        let resolver =
            if held.resolver == [0; 16] { udp.dst } else { SocketAddr::new(IpAddr::V6(Ipv6Addr::from(held.resolver)), 53) };
        debug!(client = %udp.src, %resolver, to = %udp.dst, netns = held.netns_cookie, "DNS query caught on loopback");
        let Some(gates) = &self.dns_gates else {
            return false;
        };
        let q = CaughtQuery {
            tgid: held.tgid,
            netns_cookie: held.netns_cookie,
            endpoint: held.endpoint,
            client: udp.src,
            resolver,
            from: udp.dst,
        };
        match gates.serve_caught(&q, udp.payload) {
            Ok(served) => served,
            Err(e) => {
                debug!(error = %e, endpoint = held.endpoint, "cannot open a DNS gate for a caught query");
                false
            }
        }
    }

    fn note_rate(&mut self, endpoint: u32) {
        let now = Instant::now();
        let w = self.rate.entry(endpoint).or_insert((now, 0));
        if now.duration_since(w.0).as_secs() >= 1 {
            *w = (now, 0);
        }
        w.1 += 1;
        if w.1 > QUERY_RATE_LIMIT {
            self.engine.stats.with_endpoint(endpoint, |s| s.high_rate += 1);
        }
    }
}

//! Queries (copies seen in `cgroup_skb/egress`): remember each one so its
//! answer can be paired with it, log the names the policy does not let the
//! endpoint resolve (their answers are replaced with NXDOMAIN), and count
//! names that look like tunnelled data.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Instant,
};

use agent_common::DnsHeldPacket;
use tracing::debug;

use super::{
    Gate, GateStats, QueryKey,
    judge::{judge_query, note_shape},
};
use crate::{
    dns::{parse_message, parse_query, parse_udp, transaction_id},
    proxy::CaughtQuery,
};

/// Queries per endpoint per second above which the rate is counted as
/// suspicious (a stub resolver asks a handful per lookup).
pub const QUERY_RATE_LIMIT: u32 = 200;

impl Gate {
    pub(super) fn handle_query(&mut self, held: &DnsHeldPacket, data: &[u8]) -> bool {
        let parsed = parse_udp(data).and_then(|u| {
            let m = parse_message(u.payload)?;
            let q = parse_query(&m)?;
            Ok((u, m, q))
        });
        let (udp, msg, (qname, qtype)) = match parsed {
            Ok(v) => v,
            Err(e) => {
                // Not something we can vouch for: it does not leave.
                debug!(error = %e, endpoint = held.endpoint, "dropping unparseable DNS query");
                GateStats::bump(&self.shared.stats.dropped_malformed);
                return false;
            }
        };
        self.note_rate_and_shape(held.endpoint, &qname);
        if let Some(g) = &self.dns_gates
            && let Err(e) = g.ensure(held.tgid, Some(held.netns_cookie), held.endpoint)
        {
            // DNS over TCP from there stays refused (fail closed).
            debug!(error = %e, endpoint = held.endpoint, "cannot open a TCP DNS gate");
        }
        let Some(allowed) = judge_query(self.shared(), held.endpoint, &qname, udp.dst, held.tgid, held.cgroup_id) else {
            GateStats::bump(&self.shared.stats.dropped_unknown_endpoint);
            return false;
        };
        let key = QueryKey { endpoint: held.endpoint, client: udp.src, resolver: udp.dst, txid: transaction_id(&msg) };
        // Audit mode lets the answer through; it was logged above.
        self.pending.insert(key, &qname, qtype, allowed, Instant::now());
        true
    }

    /// A query caught on loopback (`DNS_KIND_CAUGHT`) in a namespace that
    /// had no gate: the gate opened there now serves it (judges, forwards,
    /// answers by injection). Without one it is dropped: the client retries.
    pub(super) fn handle_caught(&mut self, held: &DnsHeldPacket, data: &[u8]) -> bool {
        let Ok(udp) = parse_udp(data) else {
            GateStats::bump(&self.shared.stats.dropped_malformed);
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

    fn note_rate_and_shape(&mut self, endpoint: u32, qname: &str) {
        let now = Instant::now();
        let w = self.rate.entry(endpoint).or_insert((now, 0));
        if now.duration_since(w.0).as_secs() >= 1 {
            *w = (now, 0);
        }
        w.1 += 1;
        if w.1 > QUERY_RATE_LIMIT {
            self.shared.stats.with_endpoint(endpoint, |s| s.high_rate += 1);
        }
        note_shape(self.shared(), endpoint, qname);
    }
}

//! Answers on the hold path (held in `cgroup_skb/ingress`): paired with
//! their query, judged by the engine, re-injected.

use std::net::IpAddr;

use agent_common::DnsHeldPacket;
use tracing::{debug, warn};

use super::{HoldPath, QueryKey};
use crate::dns::{build_udp, parse_message, parse_udp, question, transaction_id};
use crate::dnsgate::{
    DnsStats,
    engine::{Client, Question},
};

impl HoldPath {
    pub(super) fn handle_answer(&mut self, held: &DnsHeldPacket, data: &[u8]) -> bool {
        let stats = self.engine.stats.clone();
        let udp = match parse_udp(data) {
            Ok(u) => u,
            Err(e) => {
                debug!(error = %e, "dropping held packet");
                DnsStats::bump(&stats.dropped_malformed);
                return false;
            }
        };
        // Only an answer to a query this endpoint sent through the gate.
        let Some((q, key)) = parse_message(udp.payload).ok().and_then(|m| {
            let (qname, qtype) = question(&m)?;
            let txid = transaction_id(&m);
            Some((
                Question { qname, qtype, txid },
                QueryKey { endpoint: held.endpoint, client: udp.dst, resolver: udp.src, txid },
            ))
        }) else {
            DnsStats::bump(&stats.dropped_malformed);
            return false;
        };
        let payload = match self.pending.take(&key, &q.qname, q.qtype) {
            Some(true) => {
                let who = Client { endpoint: held.endpoint, tgid: held.tgid, cgroup_id: held.cgroup_id, resolver: udp.src };
                let Some(p) = self.engine.on_answer(&who, &q, udp.payload) else { return false };
                p.into_owned()
            }
            // A name the endpoint may not resolve: whatever the resolver
            // said, the workload gets NXDOMAIN (or REFUSED) and nothing is
            // learned. Search-list expansions fail this way too, and the
            // stub resolver moves on to the next candidate.
            Some(false) => {
                let Some(reply) = self.engine.refuse_answer(udp.payload) else { return false };
                reply
            }
            None => {
                debug!(endpoint = held.endpoint, name = %q.qname, from = %udp.src, "dropping unsolicited DNS answer");
                DnsStats::bump(&stats.answers_unsolicited);
                return false;
            }
        };
        // Rebuild: the captured UDP checksum may be a partial (offload) one.
        let packet = match build_udp(udp.src, udp.dst, &payload, 64) {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %e, "cannot rebuild answer");
                DnsStats::bump(&stats.dropped_malformed);
                return false;
            }
        };
        self.send(held, udp.dst.ip(), &packet)
    }

    /// Sends a packet from inside the held packet's network namespace.
    pub(super) fn send(&mut self, held: &DnsHeldPacket, dst: IpAddr, packet: &[u8]) -> bool {
        match self.injector.send(held.netns_cookie, held.tgid, dst, packet) {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "injecting DNS packet failed; dropped");
                DnsStats::bump(&self.engine.stats.dropped_inject_failed);
                false
            }
        }
    }
}

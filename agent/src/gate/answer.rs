//! Answers: match, learn, strip, re-inject.

use std::net::IpAddr;

use agent_common::DnsHeldPacket;
use tracing::{debug, warn};

use super::{Gate, GateStats, MAX_CNAME_CHAIN, QueryKey, judge::vet_answer};

use crate::dns::{build_udp, learnable, parse_message, parse_udp, question, refusal, transaction_id};

impl Gate {
    pub(super) fn handle_answer(&mut self, held: &DnsHeldPacket, data: &[u8]) -> bool {
        let udp = match parse_udp(data) {
            Ok(u) => u,
            Err(e) => {
                debug!(error = %e, "dropping held packet");
                GateStats::bump(&self.shared.stats.dropped_malformed);
                return false;
            }
        };
        let parsed = parse_message(udp.payload).and_then(|m| Ok((learnable(&m, MAX_CNAME_CHAIN)?, m)));
        let (learned, mut msg) = match parsed {
            Ok(v) => v,
            Err(e) => {
                debug!(error = %e, endpoint = held.endpoint, "dropping unparseable DNS answer");
                GateStats::bump(&self.shared.stats.dropped_malformed);
                return false;
            }
        };
        // Only an answer to a query this endpoint sent through the gate.
        let Some((qname, qtype)) = question(&msg) else {
            GateStats::bump(&self.shared.stats.dropped_malformed);
            return false;
        };
        let key = QueryKey { endpoint: held.endpoint, client: udp.dst, resolver: udp.src, txid: transaction_id(&msg) };
        match self.pending.take(&key, &qname, qtype) {
            Some(true) => {}
            Some(false) => {
                // A name the endpoint may not resolve: whatever the resolver
                // said, the workload gets NXDOMAIN (or REFUSED) and nothing
                // is learned. Search-list expansions fail this way too, and
                // the stub resolver moves on to the next candidate.
                GateStats::bump(&self.shared.stats.queries_refused);
                let reply = refusal(&msg, self.opts.deny_rcode);
                return match reply.to_vec().ok().and_then(|b| build_udp(udp.src, udp.dst, &b, 64).ok()) {
                    Some(packet) => self.send(held, udp.dst.ip(), &packet),
                    None => {
                        GateStats::bump(&self.shared.stats.dropped_malformed);
                        false
                    }
                };
            }
            None => {
                debug!(endpoint = held.endpoint, name = %qname, from = %udp.src, "dropping unsolicited DNS answer");
                GateStats::bump(&self.shared.stats.answers_unsolicited);
                return false;
            }
        }
        let Some(stripped) =
            vet_answer(self.shared(), held.endpoint, held.tgid, held.cgroup_id, &qname, learned.as_ref(), &mut msg)
        else {
            return false;
        };
        // The rewritten message, or the original bytes when nothing changed.
        let rewritten;
        let payload = if stripped.is_empty() {
            udp.payload
        } else {
            GateStats::bump(&self.shared.stats.answers_stripped);
            rewritten = match msg.to_vec() {
                Ok(v) => v,
                Err(e) => {
                    debug!(error = %e, "cannot re-encode stripped answer");
                    GateStats::bump(&self.shared.stats.dropped_malformed);
                    return false;
                }
            };
            &rewritten[..]
        };
        // Rebuild: the captured UDP checksum may be a partial (offload) one.
        let packet = match build_udp(udp.src, udp.dst, payload, 64) {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %e, "cannot rebuild answer");
                GateStats::bump(&self.shared.stats.dropped_malformed);
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
                GateStats::bump(&self.shared.stats.dropped_inject_failed);
                false
            }
        }
    }
}

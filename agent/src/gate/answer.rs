//! Answers: match, learn, strip, re-inject.

use std::{net::IpAddr, sync::atomic::Ordering::Relaxed};

use agent_common::DnsHeldPacket;
use tracing::{debug, warn};

use super::{Gate, GateStats, MAX_CNAME_CHAIN, QueryKey};
use agent_common::Reason;

use crate::{
    dns::{build_udp, learnable, parse_message, parse_udp, question, refusal, strip_addresses, transaction_id},
    events::{BlockedRecord, now_rfc3339, proc_comm, write_record},
};

impl Gate {
    pub(super) fn handle_answer(&mut self, held: &DnsHeldPacket, data: &[u8]) -> bool {
        let udp = match parse_udp(data) {
            Ok(u) => u,
            Err(e) => {
                debug!(error = %e, "dropping held packet");
                GateStats::bump(&self.stats.dropped_malformed);
                return false;
            }
        };
        let parsed = parse_message(udp.payload).and_then(|m| Ok((learnable(&m, MAX_CNAME_CHAIN)?, m)));
        let (learned, mut msg) = match parsed {
            Ok(v) => v,
            Err(e) => {
                debug!(error = %e, endpoint = held.endpoint, "dropping unparseable DNS answer");
                GateStats::bump(&self.stats.dropped_malformed);
                return false;
            }
        };
        // Only an answer to a query this endpoint sent through the gate.
        let Some((qname, qtype)) = question(&msg) else {
            GateStats::bump(&self.stats.dropped_malformed);
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
                GateStats::bump(&self.stats.queries_refused);
                let reply = refusal(&msg, self.opts.deny_rcode);
                return match reply.to_vec().ok().and_then(|b| build_udp(udp.src, udp.dst, &b, 64).ok()) {
                    Some(packet) => self.send(held, udp.dst.ip(), &packet),
                    None => {
                        GateStats::bump(&self.stats.dropped_malformed);
                        false
                    }
                };
            }
            None => {
                debug!(endpoint = held.endpoint, name = %qname, from = %udp.src, "dropping unsolicited DNS answer");
                GateStats::bump(&self.stats.answers_unsolicited);
                return false;
            }
        }
        let stripped = {
            let stats = self.stats.clone();
            let mut st = self.lock_state();
            if st.endpoint(held.endpoint).is_none() {
                GateStats::bump(&stats.dropped_unknown_endpoint);
                return false;
            }
            let mut refused = Vec::new();
            if let Some(l) = &learned {
                let addrs: Vec<(IpAddr, u32)> = l.addrs.iter().map(|a| (a.ip, a.ttl)).collect();
                match st.learn(held.endpoint, &l.qname, &addrs) {
                    Ok(out) => {
                        let n = |v: usize| v as u64;
                        stats.ips_learned.fetch_add(n(out.allowed.len()), Relaxed);
                        stats.ips_denied_range.fetch_add(n(out.denied_range.len()), Relaxed);
                        stats.ips_refused_cap.fetch_add(n(out.refused.len()), Relaxed);
                        stats.ips_evicted.fetch_add(n(out.evicted), Relaxed);
                        if !out.denied_range.is_empty() {
                            warn!(endpoint = held.endpoint, name = %l.qname, ips = ?out.denied_range,
                                "DNS answer points an allowed name at an always-denied range; not learned, stripped");
                        }
                        if !out.refused.is_empty() {
                            warn!(endpoint = held.endpoint, name = %l.qname, ips = ?out.refused,
                                "learned-IP cap reached and every older entry has a live connection; not learned, stripped");
                        }
                        refused = out.refused;
                    }
                    Err(e) => {
                        warn!(error = %e, "learning failed; answer held back");
                        GateStats::bump(&stats.dropped_inject_failed);
                        return false;
                    }
                }
            }
            // Re-borrow: learning needed the state mutably.
            let Some(ep) = st.endpoint(held.endpoint) else {
                GateStats::bump(&stats.dropped_unknown_endpoint);
                return false;
            };
            // The workload never holds an address it could not connect to
            // (in audit mode it does, and the log says what would happen).
            let audit = ep.audit;
            let mut would = Vec::new();
            let stripped = strip_addresses(&mut msg, |ip| {
                let deny = ep.unreachable(ip) || refused.contains(&ip);
                if deny {
                    would.push(ip);
                }
                deny && !audit
            });
            let rebinding: Vec<IpAddr> = would.iter().copied().filter(|ip| ep.unreachable(*ip)).collect();
            if !rebinding.is_empty() {
                let identity = ep.identity.clone();
                for ip in rebinding {
                    write_record(&self.log, &BlockedRecord {
                        time: now_rfc3339(),
                        verdict: if audit { "audit" } else { "blocked" },
                        reason: Reason::DeniedRange.as_str(),
                        endpoint: identity.name.clone(),
                        namespace: identity.namespace.clone(),
                        pod: identity.pod.clone(),
                        protocol: "dns".into(),
                        dst: ip,
                        dport: 0,
                        host: Some(qname.clone()),
                        pid: (held.tgid != 0).then_some(held.tgid),
                        comm: proc_comm(held.tgid),
                        hook: "dns-gate",
                        cgroup_id: held.cgroup_id,
                    });
                }
            }
            stripped
        };
        // The rewritten message, or the original bytes when nothing changed.
        let rewritten;
        let payload = if stripped.is_empty() {
            udp.payload
        } else {
            GateStats::bump(&self.stats.answers_stripped);
            rewritten = match msg.to_vec() {
                Ok(v) => v,
                Err(e) => {
                    debug!(error = %e, "cannot re-encode stripped answer");
                    GateStats::bump(&self.stats.dropped_malformed);
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
                GateStats::bump(&self.stats.dropped_malformed);
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
                GateStats::bump(&self.stats.dropped_inject_failed);
                false
            }
        }
    }
}

//! Queries (copies seen in `cgroup_skb/egress`): remember each one so its
//! answer can be paired with it, log the names the policy does not let the
//! endpoint resolve (their answers are replaced with NXDOMAIN), and count
//! names that look like tunnelled data.

use std::time::Instant;

use agent_common::{DnsHeldPacket, Reason};
use tracing::{debug, warn};

use super::{Gate, GateStats, QueryKey};
use crate::{
    dns::{Suspicion, parse_message, parse_query, parse_udp, suspicion, transaction_id},
    events::{BlockedRecord, now_rfc3339, proc_comm, write_record},
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
                GateStats::bump(&self.stats.dropped_malformed);
                return false;
            }
        };
        self.note_rate_and_shape(held.endpoint, &qname);
        let (allowed, audit, identity) = {
            let st = self.lock_state();
            let Some(ep) = st.endpoint(held.endpoint) else {
                GateStats::bump(&self.stats.dropped_unknown_endpoint);
                return false;
            };
            (ep.policy.may_resolve(&qname), ep.audit, ep.identity.clone())
        };
        if !allowed {
            self.stats.with_endpoint(held.endpoint, |s| s.refused += 1);
            let verdict = if audit { "audit" } else { "blocked" };
            write_record(&self.log, &BlockedRecord {
                time: now_rfc3339(),
                verdict,
                reason: Reason::DeniedDnsName.as_str(),
                endpoint: identity.name,
                namespace: identity.namespace,
                pod: identity.pod,
                protocol: "dns".into(),
                dst: udp.dst.ip(),
                dport: udp.dst.port(),
                host: Some(qname.clone()),
                pid: (held.tgid != 0).then_some(held.tgid),
                comm: proc_comm(held.tgid),
                hook: "dns-gate",
                cgroup_id: held.cgroup_id,
            });
        }
        let key = QueryKey { endpoint: held.endpoint, client: udp.src, resolver: udp.dst, txid: transaction_id(&msg) };
        // Audit mode lets the answer through; it was logged above.
        self.pending.insert(key, &qname, qtype, allowed || audit, Instant::now());
        true
    }

    fn note_rate_and_shape(&mut self, endpoint: u32, qname: &str) {
        let now = Instant::now();
        let w = self.rate.entry(endpoint).or_insert((now, 0));
        if now.duration_since(w.0).as_secs() >= 1 {
            *w = (now, 0);
        }
        w.1 += 1;
        let over = w.1 > QUERY_RATE_LIMIT;
        let shape = suspicion(qname);
        if over || shape.is_some() {
            self.stats.with_endpoint(endpoint, |s| {
                s.high_rate += u64::from(over);
                match shape {
                    Some(Suspicion::LongLabel) => s.suspicious_long_label += 1,
                    Some(Suspicion::HighEntropy) => s.suspicious_entropy += 1,
                    None => {}
                }
            });
        }
        if let Some(kind) = shape {
            warn!(endpoint, name = %qname, ?kind, "suspicious DNS name (possible tunnelling)");
        }
    }
}

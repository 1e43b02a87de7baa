//! The decisions the DNS gate makes, shared by the ring-buffer gate (UDP)
//! and the TCP gate (`proxy`): is a query's name allowed, and what of an
//! answer may the workload see after learning from it.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
};

use agent_common::Reason;
use hickory_proto::op::Message;
use tracing::warn;

use super::{GateStats, ratelimit::RecordLimit};
use crate::{
    dns::{Learned, Suspicion, strip_addresses, suspicion},
    enforcer::State,
    events::{BlockedRecord, LogSink, now_rfc3339, proc_comm, write_record},
    util::lock,
};

/// What the gate decides with.
#[derive(Clone)]
pub struct Shared {
    pub state: Arc<Mutex<State>>,
    pub stats: Arc<GateStats>,
    pub log: LogSink,
    /// Per-endpoint rate limit on the records written here.
    pub records: Arc<RecordLimit>,
    /// The same for the agent's own warnings about an endpoint's queries
    /// and answers (its tracing log); the counters count every one.
    pub warnings: Arc<RecordLimit>,
}

/// Whether `endpoint` may write one more record now; if its rate limit
/// holds the record back, that is counted. Asked before the record is made:
/// a held-back one costs no `/proc` read.
fn may_log(shared: &Shared, endpoint: u32) -> bool {
    let ok = shared.records.allow(endpoint);
    if !ok {
        shared.stats.with_endpoint(endpoint, |s| s.records_suppressed += 1);
    }
    ok
}

/// Whether `endpoint` may resolve `qname` (or is in audit mode): `None`
/// for an unknown endpoint. A name it may not resolve is logged and
/// counted (logged within the endpoint's record rate limit); a name that
/// looks like tunnelled data is counted.
pub fn judge_query(shared: &Shared, endpoint: u32, qname: &str, resolver: SocketAddr, tgid: u32, cgroup_id: u64) -> Option<bool> {
    let (allowed, audit, identity) = {
        let st = lock(&shared.state);
        let ep = st.endpoint(endpoint)?;
        (ep.policy.may_resolve(qname), ep.audit, ep.identity.clone())
    };
    if !allowed {
        shared.stats.with_endpoint(endpoint, |s| s.refused += 1);
    }
    if !allowed && may_log(shared, endpoint) {
        write_record(
            &shared.log,
            &BlockedRecord {
                time: now_rfc3339(),
                verdict: if audit { "audit" } else { "blocked" },
                reason: Reason::DeniedDnsName.as_str(),
                endpoint: identity.name,
                namespace: identity.namespace,
                pod: identity.pod,
                protocol: "dns".into(),
                dst: resolver.ip(),
                dport: resolver.port(),
                host: Some(qname.to_owned()),
                pid: (tgid != 0).then_some(tgid),
                comm: proc_comm(tgid),
                hook: "dns-gate",
                cgroup_id,
            },
        );
    }
    Some(allowed || audit)
}

/// Counts a query name that looks like tunnelled data.
pub fn note_shape(shared: &Shared, endpoint: u32, qname: &str) -> Option<Suspicion> {
    let shape = suspicion(qname);
    if let Some(kind) = shape {
        shared.stats.with_endpoint(endpoint, |s| match kind {
            Suspicion::LongLabel => s.suspicious_long_label += 1,
            Suspicion::HighEntropy => s.suspicious_entropy += 1,
        });
        if shared.warnings.allow(endpoint) {
            warn!(endpoint, name = %qname, ?kind, "suspicious DNS name (possible tunnelling)");
        }
    }
    shape
}

/// Learns from an answer to an allowed query of `endpoint`, then strips
/// from `msg` every address the workload may never reach (or that a cap
/// refused), logging rebinding attempts. Returns the stripped addresses,
/// or `None` if the answer must not be delivered (learning failed, or the
/// endpoint is gone): fail closed.
pub fn vet_answer(
    shared: &Shared,
    endpoint: u32,
    tgid: u32,
    cgroup_id: u64,
    qname: &str,
    learned: Option<&Learned>,
    msg: &mut Message,
) -> Option<Vec<IpAddr>> {
    let stats = shared.stats.clone();
    let mut st = lock(&shared.state);
    if st.endpoint(endpoint).is_none() {
        GateStats::bump(&stats.dropped_unknown_endpoint);
        return None;
    }
    let mut refused = Vec::new();
    if let Some(l) = learned {
        let addrs: Vec<(IpAddr, u32)> = l.addrs.iter().map(|a| (a.ip, a.ttl)).collect();
        match st.learn(endpoint, &l.qname, &addrs) {
            Ok(out) => {
                let n = |v: usize| v as u64;
                stats.ips_learned.fetch_add(n(out.allowed.len()), Relaxed);
                stats.ips_denied_range.fetch_add(n(out.denied_range.len()), Relaxed);
                stats.ips_refused_cap.fetch_add(n(out.refused.len()), Relaxed);
                stats.ips_evicted.fetch_add(n(out.evicted), Relaxed);
                if !out.denied_range.is_empty() && shared.warnings.allow(endpoint) {
                    warn!(endpoint = endpoint, name = %l.qname, ips = ?out.denied_range,
                        "DNS answer points an allowed name at an always-denied range; not learned, stripped");
                }
                if !out.refused.is_empty() && shared.warnings.allow(endpoint) {
                    warn!(endpoint = endpoint, name = %l.qname, ips = ?out.refused,
                        "learned-IP cap reached and every older entry has a live connection; not learned, stripped");
                }
                refused = out.refused;
            }
            Err(e) => {
                warn!(error = %e, "learning failed; answer held back");
                GateStats::bump(&stats.dropped_inject_failed);
                return None;
            }
        }
    }
    // Re-borrow: learning needed the state mutably.
    let Some(ep) = st.endpoint(endpoint) else {
        GateStats::bump(&stats.dropped_unknown_endpoint);
        return None;
    };
    // The workload never holds an address it could not connect to
    // (in audit mode it does, and the log says what would happen).
    let audit = ep.audit;
    let mut would = Vec::new();
    let stripped = strip_addresses(msg, |ip| {
        let deny = ep.unreachable(ip) || refused.contains(&ip);
        if deny {
            would.push(ip);
        }
        deny && !audit
    });
    let rebinding: Vec<IpAddr> = would.iter().copied().filter(|ip| ep.unreachable(*ip)).collect();
    if !rebinding.is_empty() {
        let identity = ep.identity.clone();
        for ip in rebinding.into_iter().filter(|_| may_log(shared, endpoint)) {
            write_record(
                &shared.log,
                &BlockedRecord {
                    time: now_rfc3339(),
                    verdict: if audit { "audit" } else { "blocked" },
                    reason: Reason::DeniedRange.as_str(),
                    endpoint: identity.name.clone(),
                    namespace: identity.namespace.clone(),
                    pod: identity.pod.clone(),
                    protocol: "dns".into(),
                    dst: ip,
                    dport: 0,
                    host: Some(qname.to_owned()),
                    pid: (tgid != 0).then_some(tgid),
                    comm: proc_comm(tgid),
                    hook: "dns-gate",
                    cgroup_id,
                },
            );
        }
    }
    Some(stripped)
}

//! The one DNS decision pipeline, without I/O: judge a query, then judge
//! the answer to it (match, learn, strip). The hold path (`gate`), the UDP
//! gate and the TCP gate (`proxy`) differ only in how bytes come and go;
//! every decision, count and blocked record is made here.
//!
//! The endpoint's view is copied out of the enforcer and judged outside its
//! lock; only learning (the map writes) takes it. Fail closed throughout:
//! an answer that cannot be vouched for is not delivered.

use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use agent_common::Reason;
use hickory_proto::op::{Message, ResponseCode};
use tracing::warn;

use super::{
    DnsStats, MAX_CNAME_CHAIN,
    queries::{Decision, Rcode},
    ratelimit::RecordLimit,
};
use crate::{
    blocked::{BlockedRecord, LogSink, write_record},
    dns::{Suspicion, learnable, parse_message, parse_query, question, refusal, strip_addresses, suspicion, transaction_id},
    enforcer::{EndpointView, Enforcer, LearnOutcome, StateError},
};

/// What the pipeline needs of the enforcer (a trait, so the pipeline is
/// tested without kernel maps).
pub trait Learner: Send + Sync {
    fn endpoint(&self, id: u32) -> Option<EndpointView>;
    /// Learns an answer's addresses; the map writes are done on return.
    fn learn(&self, id: u32, qname: &str, addrs: &[(IpAddr, u32)]) -> Result<LearnOutcome, StateError>;
}

impl Learner for Enforcer {
    fn endpoint(&self, id: u32) -> Option<EndpointView> {
        Self::endpoint(self, id)
    }

    fn learn(&self, id: u32, qname: &str, addrs: &[(IpAddr, u32)]) -> Result<LearnOutcome, StateError> {
        Self::learn(self, id, qname, addrs)
    }
}

/// Who asked, and whom: for the decisions and the records.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub endpoint: u32,
    /// The asking process (0: unknown).
    pub tgid: u32,
    pub cgroup_id: u64,
    pub resolver: SocketAddr,
}

/// A query's question, to pair its answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub qname: String,
    /// The record type asked for (its wire value).
    pub qtype: u16,
    pub txid: u16,
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum QueryVerdict {
    /// Send it on (allowed, or audit mode).
    Forward(Question),
    /// A name the endpoint may not resolve: this is the answer (the query
    /// never leaves), and the question it answers.
    Refuse(Question, Vec<u8>),
    /// Unparseable, or no such endpoint: nothing goes anywhere (counted).
    Drop,
}

/// Everything the decisions use and feed: the enforcer, the counters, the
/// blocked log and its per-endpoint rate limits.
#[derive(Clone)]
pub struct Engine {
    pub learner: Arc<dyn Learner>,
    pub stats: Arc<DnsStats>,
    pub log: LogSink,
    /// Per-endpoint rate limit on the blocked records written here.
    pub records: Arc<RecordLimit>,
    /// The same for the agent's own warnings about an endpoint's DNS (its
    /// tracing log); the counters count every one.
    pub warnings: Arc<RecordLimit>,
    pub deny_rcode: ResponseCode,
}

impl Engine {
    /// Judges one query (the DNS message, no transport framing).
    pub fn on_query(&self, who: &Client, bytes: &[u8]) -> QueryVerdict {
        let parsed = parse_message(bytes).and_then(|m| Ok((parse_query(&m)?, m)));
        let Ok(((qname, qtype), msg)) = parsed else {
            DnsStats::bump(&self.stats.dropped_malformed);
            self.stats.queries.count(who.endpoint, Decision::Dropped, Rcode::Other);
            return QueryVerdict::Drop;
        };
        self.note_shape(who.endpoint, &qname);
        let Some(ep) = self.learner.endpoint(who.endpoint) else {
            DnsStats::bump(&self.stats.dropped_unknown_endpoint);
            return QueryVerdict::Drop;
        };
        let q = Question { qname, qtype, txid: transaction_id(&msg) };
        if ep.policy.may_resolve(&q.qname) {
            return QueryVerdict::Forward(q);
        }
        self.stats.with_endpoint(who.endpoint, |s| s.refused += 1);
        if self.may_log(who.endpoint) {
            let decision = match (ep.mode.audits(), self.deny_rcode) {
                (true, _) => "forwarded",
                (false, ResponseCode::Refused) => "refused",
                (false, _) => "nxdomain",
            };
            write_record(
                &self.log,
                BlockedRecord::from_dns(&ep, Reason::DeniedDnsName, decision, who.resolver, &q.qname, who.tgid, who.cgroup_id),
            );
        }
        // Audit mode lets it through; it was logged above.
        if ep.mode.audits() {
            return QueryVerdict::Forward(q);
        }
        DnsStats::bump(&self.stats.queries_refused);
        // Counted here, once: on the hold path the resolver's answer is
        // replaced later (`refuse_answer`), uncounted.
        match refusal(&msg, self.deny_rcode).to_vec() {
            Ok(reply) => {
                self.stats.queries.count(who.endpoint, Decision::Refused, Rcode::of(self.deny_rcode));
                QueryVerdict::Refuse(q, reply)
            }
            Err(_) => {
                DnsStats::bump(&self.stats.dropped_malformed);
                self.stats.queries.count(who.endpoint, Decision::Dropped, Rcode::Other);
                QueryVerdict::Drop
            }
        }
    }

    /// The answer a refused query gets in place of the resolver's (the
    /// hold path, where the query itself already left).
    pub fn refuse_answer(&self, answer: &[u8]) -> Option<Vec<u8>> {
        DnsStats::bump(&self.stats.queries_refused);
        let reply = parse_message(answer).ok().and_then(|m| refusal(&m, self.deny_rcode).to_vec().ok());
        if reply.is_none() {
            DnsStats::bump(&self.stats.dropped_malformed);
        }
        reply
    }

    /// Judges the answer to an allowed query `q`: it must answer exactly
    /// that question (and id); its addresses are learned for the endpoint
    /// before this returns; addresses the workload may never reach (or that
    /// a cap refused) are stripped. Returns the bytes to deliver (the
    /// original when nothing changed), or `None`: dropped, counted.
    pub fn on_answer<'a>(&self, who: &Client, q: &Question, bytes: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        let start = Instant::now();
        let out = self.judge_answer(who, q, bytes);
        self.stats.queries.observe_answer(start.elapsed());
        out
    }

    /// `on_answer`, counted per endpoint by decision and rcode (an
    /// unsolicited answer is no query's: only the node counts it).
    fn judge_answer<'a>(&self, who: &Client, q: &Question, bytes: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        let dropped = |rcode| self.stats.queries.count(who.endpoint, Decision::Dropped, rcode);
        let Ok(mut msg) = parse_message(bytes) else {
            dropped(Rcode::Other);
            DnsStats::bump(&self.stats.dropped_malformed);
            return None;
        };
        if transaction_id(&msg) != q.txid || question(&msg) != Some((q.qname.clone(), q.qtype)) {
            DnsStats::bump(&self.stats.answers_unsolicited);
            return None;
        }
        let rcode = Rcode::of(msg.metadata.response_code);
        let Ok(learned) = learnable(&msg, MAX_CNAME_CHAIN) else {
            DnsStats::bump(&self.stats.dropped_malformed);
            dropped(rcode);
            return None;
        };
        let Some(ep) = self.learner.endpoint(who.endpoint) else {
            DnsStats::bump(&self.stats.dropped_unknown_endpoint);
            dropped(rcode);
            return None;
        };
        // Only audit mode forwards a query the policy does not allow.
        let decision = if ep.mode.audits() && !ep.policy.may_resolve(&q.qname) { Decision::Audited } else { Decision::Forwarded };
        let mut refused = Vec::new();
        let mut taught = 0;
        if let Some(l) = &learned {
            let addrs: Vec<(IpAddr, u32)> = l.addrs.iter().map(|a| (a.ip, a.ttl)).collect();
            match self.learner.learn(who.endpoint, &l.qname, &addrs) {
                Ok(out) => {
                    taught = out.allowed.len();
                    refused = self.note_learned(who.endpoint, &l.qname, out);
                }
                Err(e) => {
                    warn!(error = %e, "learning failed; answer held back");
                    DnsStats::bump(&self.stats.dropped_inject_failed);
                    dropped(rcode);
                    return None;
                }
            }
        }
        let stripped = self.strip(&ep, who, &q.qname, &refused, &mut msg);
        // Allowed lookups answered, for the names-resolved table.
        let delivered = |s: &DnsStats| {
            s.queries.count(who.endpoint, decision, rcode);
            if decision == Decision::Forwarded {
                s.names.note(&ep, &q.qname, taught);
            }
        };
        if stripped.is_empty() {
            delivered(&self.stats);
            return Some(Cow::Borrowed(bytes));
        }
        DnsStats::bump(&self.stats.answers_stripped);
        match msg.to_vec() {
            Ok(v) => {
                delivered(&self.stats);
                Some(Cow::Owned(v))
            }
            Err(_) => {
                DnsStats::bump(&self.stats.dropped_malformed);
                dropped(rcode);
                None
            }
        }
    }

    /// Counts what learning did; returns the addresses a cap refused.
    fn note_learned(&self, endpoint: u32, qname: &str, out: LearnOutcome) -> Vec<IpAddr> {
        let n = |v: usize| v as u64;
        let s = &self.stats;
        s.ips_learned.fetch_add(n(out.allowed.len()), Relaxed);
        s.ips_denied_range.fetch_add(n(out.denied_range.len()), Relaxed);
        s.ips_refused_cap.fetch_add(n(out.refused.len()), Relaxed);
        s.ips_evicted.fetch_add(n(out.evicted), Relaxed);
        if !out.denied_range.is_empty() && self.warnings.allow(endpoint) {
            warn!(endpoint, name = %qname, ips = ?out.denied_range,
                "DNS answer points an allowed name at an always-denied range; not learned, stripped");
        }
        if !out.refused.is_empty() && self.warnings.allow(endpoint) {
            warn!(endpoint, name = %qname, ips = ?out.refused,
                "learned-IP cap reached and every older entry has a live connection; not learned, stripped");
        }
        out.refused
    }

    /// Strips from `msg` every address the workload may never reach (in
    /// audit mode none: the log says what would happen), logging rebinding
    /// attempts. Returns what was (or would have been) stripped.
    fn strip(&self, ep: &EndpointView, who: &Client, qname: &str, refused: &[IpAddr], msg: &mut Message) -> Vec<IpAddr> {
        let mut would = Vec::new();
        let stripped = strip_addresses(msg, |ip| {
            let deny = ep.policy.unreachable(ip) || refused.contains(&ip);
            if deny {
                would.push(ip);
            }
            deny && !ep.mode.audits()
        });
        for ip in would.into_iter().filter(|ip| ep.policy.unreachable(*ip)) {
            if self.may_log(who.endpoint) {
                let decision = if ep.mode.audits() { "kept" } else { "stripped" };
                write_record(
                    &self.log,
                    BlockedRecord::from_dns(
                        ep,
                        Reason::DeniedRange,
                        decision,
                        SocketAddr::new(ip, 0),
                        qname,
                        who.tgid,
                        who.cgroup_id,
                    ),
                );
            }
        }
        stripped
    }

    /// Counts a query name that looks like tunnelled data.
    fn note_shape(&self, endpoint: u32, qname: &str) -> Option<Suspicion> {
        let shape = suspicion(qname);
        if let Some(kind) = shape {
            self.stats.with_endpoint(endpoint, |s| match kind {
                Suspicion::LongLabel => s.suspicious_long_label += 1,
                Suspicion::HighEntropy => s.suspicious_entropy += 1,
            });
            if self.warnings.allow(endpoint) {
                warn!(endpoint, name = %qname, ?kind, "suspicious DNS name (possible tunnelling)");
            }
        }
        shape
    }

    /// Whether `endpoint` may write one more record now; one held back is
    /// counted. Asked before the record is made: a held-back one costs no
    /// `/proc` read.
    fn may_log(&self, endpoint: u32) -> bool {
        let ok = self.records.allow(endpoint);
        if !ok {
            self.stats.with_endpoint(endpoint, |s| s.records_suppressed += 1);
        }
        ok
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

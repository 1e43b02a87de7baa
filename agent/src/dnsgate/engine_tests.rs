//! The DNS decision pipeline without sockets or kernel maps: a fake
//! enforcer records what it is asked to learn.

use std::{io::Write, sync::Mutex};

use hickory_proto::{
    op::{MessageType, OpCode, Query},
    rr::RecordType,
};

use super::*;
use crate::{
    dns::testing::{a, name, response},
    enforcer::Identity,
    policy::{Policy, compile},
};

/// Endpoint 1's policy; what `learn` was called with; whether it fails.
struct Fake {
    ep: EndpointView,
    learned: Mutex<Vec<(String, Vec<IpAddr>)>>,
    fail: bool,
}

impl Learner for Fake {
    fn endpoint(&self, id: u32) -> Option<EndpointView> {
        (id == 1).then(|| self.ep.clone())
    }

    fn learn(&self, _id: u32, qname: &str, addrs: &[(IpAddr, u32)]) -> Result<LearnOutcome, StateError> {
        if self.fail {
            return Err(StateError::TooManyEndpoints);
        }
        let ips: Vec<IpAddr> = addrs.iter().map(|(ip, _)| *ip).collect();
        self.learned.lock().unwrap().push((qname.to_owned(), ips.clone()));
        Ok(LearnOutcome { allowed: ips, ..LearnOutcome::default() })
    }
}

/// The blocked log, in memory.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn records(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

const POLICY: &str =
    "egress:\n  - toFQDNs: [{matchName: api.example.test}]\n    ports: [{port: 443}]\ndns:\n  servers: [\"192.0.2.53\"]\n";

fn engine(audit: bool, fail: bool) -> (Engine, Arc<Fake>, Lines) {
    let policy = compile(&Policy::from_yaml_str(POLICY, "test").unwrap(), || Ok::<_, std::io::Error>(Vec::new())).unwrap();
    let ep = EndpointView {
        id: 1,
        cgroup_id: 77,
        identity: Identity { name: "ep".into(), namespace: Some("ns".into()), pod: None },
        policy: Arc::new(policy),
        mode: crate::enforcer::Mode::from_audit(audit),
    };
    let fake = Arc::new(Fake { ep, learned: Mutex::default(), fail });
    let lines = Lines::default();
    let e = Engine {
        learner: fake.clone(),
        stats: Arc::default(),
        log: crate::blocked::log_sink(Box::new(lines.clone())),
        records: Arc::new(RecordLimit::new(50, 200)),
        warnings: Arc::new(RecordLimit::new(50, 200)),
        deny_rcode: ResponseCode::NXDomain,
    };
    (e, fake, lines)
}

fn who(endpoint: u32) -> Client {
    Client { endpoint, tgid: 0, cgroup_id: 77, resolver: "192.0.2.53:53".parse().unwrap() }
}

fn query(id: u16, qname: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(name(qname), RecordType::A));
    m.to_vec().unwrap()
}

fn q(qname: &str, txid: u16) -> Question {
    Question { qname: qname.into(), qtype: u16::from(RecordType::A), txid }
}

#[test]
fn an_allowed_query_is_forwarded_and_a_refused_one_answered_here_and_logged() {
    let (e, _, lines) = engine(false, false);
    assert_eq!(e.on_query(&who(1), &query(7, "api.example.test")), QueryVerdict::Forward(q("api.example.test", 7)));
    let QueryVerdict::Refuse(refused, reply) = e.on_query(&who(1), &query(8, "evil.example.test")) else { panic!("not refused") };
    assert_eq!(refused, q("evil.example.test", 8));
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!((reply.metadata.id, reply.metadata.response_code), (8, ResponseCode::NXDomain));
    let recs = lines.records();
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!((recs[0]["reason"].as_str(), recs[0]["host"].as_str()), (Some("denied-dns-name"), Some("evil.example.test")));
    assert_eq!(e.stats.endpoint(1).refused, 1);
}

#[test]
fn audit_mode_forwards_what_it_logs() {
    let (e, _, lines) = engine(true, false);
    assert_eq!(e.on_query(&who(1), &query(9, "evil.example.test")), QueryVerdict::Forward(q("evil.example.test", 9)));
    assert_eq!(lines.records()[0]["verdict"], "audit");
}

#[test]
fn garbage_and_unknown_endpoints_are_dropped() {
    let (e, _, _) = engine(false, false);
    assert_eq!(e.on_query(&who(1), b"\x00\x01garbage"), QueryVerdict::Drop);
    assert_eq!(e.on_query(&who(2), &query(1, "api.example.test")), QueryVerdict::Drop);
    assert_eq!(e.stats.dropped_unknown_endpoint.load(Relaxed), 1);
}

#[test]
fn an_answer_is_learned_before_it_is_delivered_and_rebinding_is_stripped() {
    let (e, fake, lines) = engine(false, false);
    let answer = response(
        7,
        "api.example.test",
        RecordType::A,
        vec![a("api.example.test", [203, 0, 113, 10], 60), a("api.example.test", [169, 254, 169, 254], 60)],
    )
    .to_vec()
    .unwrap();
    let out = e.on_answer(&who(1), &q("api.example.test", 7), &answer).expect("delivered");
    let learned = fake.learned.lock().unwrap().clone();
    assert_eq!(learned.len(), 1);
    assert_eq!(learned[0].0, "api.example.test");
    let msg = Message::from_vec(&out).unwrap();
    let ips: Vec<String> = msg.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(ips, ["203.0.113.10"], "the metadata address is stripped");
    let recs = lines.records();
    assert_eq!((recs[0]["reason"].as_str(), recs[0]["dst"].as_str()), (Some("denied-range"), Some("169.254.169.254")));
    // Nothing to strip: the resolver's bytes go on unchanged.
    let clean =
        response(8, "api.example.test", RecordType::A, vec![a("api.example.test", [203, 0, 113, 10], 60)]).to_vec().unwrap();
    assert!(matches!(e.on_answer(&who(1), &q("api.example.test", 8), &clean), Some(Cow::Borrowed(b)) if b == &clean[..]));
}

#[test]
fn an_answer_to_another_question_or_that_cannot_be_learned_is_not_delivered() {
    let (e, fake, _) = engine(false, false);
    let answer =
        response(7, "api.example.test", RecordType::A, vec![a("api.example.test", [203, 0, 113, 10], 60)]).to_vec().unwrap();
    assert!(e.on_answer(&who(1), &q("api.example.test", 8), &answer).is_none(), "another transaction id");
    assert!(e.on_answer(&who(1), &q("other.example.test", 7), &answer).is_none(), "another name");
    assert_eq!(e.stats.answers_unsolicited.load(Relaxed), 2);
    assert!(fake.learned.lock().unwrap().is_empty(), "nothing learned from an answer not asked for");
    let (e, _, _) = engine(false, true);
    assert!(e.on_answer(&who(1), &q("api.example.test", 7), &answer).is_none(), "fail closed when learning fails");
}

#[test]
fn queries_are_counted_per_endpoint_by_decision_and_rcode() {
    use crate::dnsgate::queries::{Decision, Rcode};
    let cell = |e: &Engine, d: Decision, r: Rcode| e.stats.queries.get(1)[d as usize][r as usize];
    let (e, _, _) = engine(false, false);
    assert!(matches!(e.on_query(&who(1), &query(7, "api.example.test")), QueryVerdict::Forward(_)));
    let answer =
        response(7, "api.example.test", RecordType::A, vec![a("api.example.test", [203, 0, 113, 10], 60)]).to_vec().unwrap();
    assert!(e.on_answer(&who(1), &q("api.example.test", 7), &answer).is_some());
    assert!(matches!(e.on_query(&who(1), &query(8, "evil.example.test")), QueryVerdict::Refuse(..)));
    assert_eq!(e.on_query(&who(1), b"\x00\x01garbage"), QueryVerdict::Drop);
    // Unsolicited: no query's, not counted per endpoint.
    assert!(e.on_answer(&who(1), &q("api.example.test", 9), &answer).is_none());
    let mut nx = response(10, "api.example.test", RecordType::A, vec![]);
    nx.metadata.response_code = ResponseCode::NXDomain;
    assert!(e.on_answer(&who(1), &q("api.example.test", 10), &nx.to_vec().unwrap()).is_some());
    assert_eq!(cell(&e, Decision::Forwarded, Rcode::NoError), 1);
    assert_eq!(cell(&e, Decision::Forwarded, Rcode::NxDomain), 1);
    assert_eq!(cell(&e, Decision::Refused, Rcode::NxDomain), 1);
    assert_eq!(cell(&e, Decision::Dropped, Rcode::Other), 1);
    let total: u64 = e.stats.queries.get(1).iter().flatten().sum();
    assert_eq!(total, 4, "{:?}", e.stats.queries.get(1));
    assert_eq!(e.stats.queries.latency().1, 3, "every answer judged is timed");
    // Audit mode: a name the policy does not allow, forwarded, is audited.
    let (e, _, _) = engine(true, false);
    let evil =
        response(11, "evil.example.test", RecordType::A, vec![a("evil.example.test", [203, 0, 113, 11], 60)]).to_vec().unwrap();
    assert!(e.on_answer(&who(1), &q("evil.example.test", 11), &evil).is_some());
    assert_eq!(cell(&e, Decision::Audited, Rcode::NoError), 1);
}

#[test]
fn allowed_names_answered_are_tallied_once_turned_on() {
    let (e, _, _) = engine(false, false);
    let answer = |id| {
        response(id, "api.example.test", RecordType::A, vec![a("api.example.test", [203, 0, 113, 10], 60)]).to_vec().unwrap()
    };
    assert!(e.on_answer(&who(1), &q("api.example.test", 7), &answer(7)).is_some());
    assert!(e.stats.names.take().is_empty(), "off by default");
    e.stats.names.enable();
    for id in [8, 9] {
        assert!(e.on_answer(&who(1), &q("api.example.test", id), &answer(id)).is_some());
    }
    assert!(e.on_answer(&who(1), &q("api.example.test", 99), &answer(10)).is_none(), "unsolicited: not counted");
    let mut nx = response(11, "api.example.test", RecordType::A, vec![]);
    nx.metadata.response_code = ResponseCode::NXDomain;
    assert!(e.on_answer(&who(1), &q("api.example.test", 11), &nx.to_vec().unwrap()).is_some(), "NXDOMAIN: a lookup, no address");
    let got = e.stats.names.take();
    assert_eq!(got.len(), 1, "{got:?}");
    let (name, c) = &got[0];
    assert_eq!((name.as_str(), c.ports.as_str(), c.lookups, c.addresses), ("api.example.test", "443/tcp", 3, 2));
    assert_eq!((c.who.name.as_str(), c.who.namespace.as_deref()), ("ep", Some("ns")));
    assert!(e.stats.names.take().is_empty(), "taken");
    // Audit mode: a name the policy does not allow is no allowed lookup.
    let (e, _, _) = engine(true, false);
    e.stats.names.enable();
    let evil =
        response(12, "evil.example.test", RecordType::A, vec![a("evil.example.test", [203, 0, 113, 11], 60)]).to_vec().unwrap();
    assert!(e.on_answer(&who(1), &q("evil.example.test", 12), &evil).is_some());
    assert!(e.stats.names.take().is_empty());
}

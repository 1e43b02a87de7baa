//! Tests of `answer`: what is (and is not) learned from real DNS messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Label, Name, RecordType};

use super::answer::name_to_string;
use super::testing::*;
use super::{DnsError, Learned, learnable, parse_message, question, transaction_id};

const MAX_CHAIN: usize = 8;

/// Encodes and decodes `msg` so every test sees what arrives on the wire.
fn wire(msg: &Message) -> Message {
    parse_message(&msg.to_vec().expect("encode")).expect("decode")
}

fn learn(msg: &Message) -> Option<Learned> {
    learnable(&wire(msg), MAX_CHAIN).expect("learnable")
}

fn ips(learned: &Learned) -> Vec<(IpAddr, u32, &str)> {
    learned.addrs.iter().map(|a| (a.ip, a.ttl, a.owner.as_str())).collect()
}

const V6: Ipv6Addr = Ipv6Addr::new(0x2606, 0x2800, 0x220, 1, 0x248, 0x1893, 0x25c8, 0x1946);

#[test]
fn a_and_aaaa_learned_with_ttls() {
    let msg = response(
        7,
        "www.example.com",
        RecordType::A,
        vec![
            a("www.example.com", [93, 184, 216, 34], 300),
            a("www.example.com", [93, 184, 216, 35], 60),
            aaaa("www.example.com", V6, 120),
        ],
    );
    let learned = learn(&msg).expect("learnable");
    assert_eq!(learned.qname, "www.example.com");
    assert_eq!(learned.qtype, u16::from(RecordType::A));
    assert!(learned.cname_chain.is_empty());
    assert_eq!(
        ips(&learned),
        vec![
            (IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)), 300, "www.example.com"),
            (IpAddr::V4(Ipv4Addr::new(93, 184, 216, 35)), 60, "www.example.com"),
            (IpAddr::V6(V6), 120, "www.example.com"),
        ]
    );
}

#[test]
fn names_compare_case_insensitively() {
    let msg = response(
        1,
        "WWW.Example.COM",
        RecordType::A,
        vec![cname("www.EXAMPLE.com", "CDN.example.NET", 30), a("cdn.example.net", [1, 2, 3, 4], 30)],
    );
    let learned = learn(&msg).expect("learnable");
    assert_eq!(learned.qname, "www.example.com");
    assert_eq!(learned.cname_chain, vec!["cdn.example.net"]);
    assert_eq!(ips(&learned), vec![(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)), 30, "cdn.example.net")]);
}

#[test]
fn cname_chain_is_followed() {
    let msg = response(
        1,
        "a.example.com",
        RecordType::A,
        vec![
            // Out of order on purpose: the chain is followed by name, not position.
            a("c.example.org", [198, 51, 100, 7], 20),
            cname("b.example.net", "c.example.org", 40),
            cname("a.example.com", "b.example.net", 50),
        ],
    );
    let learned = learn(&msg).expect("learnable");
    assert_eq!(learned.cname_chain, vec!["b.example.net", "c.example.org"]);
    assert_eq!(ips(&learned), vec![(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 20, "c.example.org")]);
}

#[test]
fn cname_without_address_learns_nothing() {
    let msg = response(
        1,
        "a.example.com",
        RecordType::A,
        vec![
            cname("a.example.com", "b.example.net", 50),
            // An address for some other name than the target.
            a("x.example.net", [203, 0, 113, 9], 50),
        ],
    );
    let learned = learn(&msg).expect("learnable");
    assert_eq!(learned.cname_chain, vec!["b.example.net"]);
    assert!(learned.addrs.is_empty(), "{learned:?}");
}

#[test]
fn records_off_the_chain_are_ignored() {
    let msg = response(
        1,
        "api.allowed.com",
        RecordType::A,
        vec![
            a("api.allowed.com", [192, 0, 2, 1], 60),
            // Injected by whoever runs allowed.com's zone.
            a("bank.example", [203, 0, 113, 66], 60),
            aaaa("bank.example", V6, 60),
            // A chain that does not start at the question name.
            cname("other.allowed.com", "evil.example", 60),
            a("evil.example", [203, 0, 113, 67], 60),
            // Suffix / prefix look-alikes are different names.
            a("allowed.com", [203, 0, 113, 68], 60),
            a("x.api.allowed.com", [203, 0, 113, 69], 60),
        ],
    );
    let learned = learn(&msg).expect("learnable");
    assert_eq!(ips(&learned), vec![(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 60, "api.allowed.com")]);
    assert!(learned.cname_chain.is_empty());
}

#[test]
fn authority_additional_and_non_in_records_are_ignored() {
    let mut msg = response(1, "www.example.com", RecordType::A, vec![]);
    msg.add_authority(a("www.example.com", [203, 0, 113, 1], 60));
    msg.add_additional(a("www.example.com", [203, 0, 113, 2], 60));
    let mut chaos = a("www.example.com", [203, 0, 113, 3], 60);
    chaos.dns_class = DNSClass::CH;
    msg.add_answer(chaos);
    let mut chaos_cname = cname("www.example.com", "evil.example", 60);
    chaos_cname.dns_class = DNSClass::CH;
    msg.add_answer(chaos_cname);
    msg.add_answer(a("evil.example", [203, 0, 113, 4], 60));
    let learned = learn(&msg).expect("NODATA is still learnable");
    assert!(learned.addrs.is_empty(), "{learned:?}");
    assert!(learned.cname_chain.is_empty());
}

#[test]
fn cname_loops_are_errors() {
    let two = response(
        1,
        "a.example",
        RecordType::A,
        vec![cname("a.example", "b.example", 5), cname("b.example", "A.example", 5), a("b.example", [192, 0, 2, 1], 5)],
    );
    let err = learnable(&wire(&two), MAX_CHAIN).unwrap_err();
    assert!(matches!(&err, DnsError::CnameLoop { name } if name == "a.example"), "{err}");

    let three = response(
        1,
        "a.example",
        RecordType::A,
        vec![cname("a.example", "b.example", 5), cname("b.example", "c.example", 5), cname("c.example", "b.example", 5)],
    );
    let err = learnable(&wire(&three), MAX_CHAIN).unwrap_err();
    assert!(matches!(&err, DnsError::CnameLoop { name } if name == "b.example"), "{err}");

    let own = response(1, "a.example", RecordType::A, vec![cname("a.example", "a.example", 5)]);
    assert!(matches!(learnable(&wire(&own), MAX_CHAIN), Err(DnsError::CnameLoop { .. })));
}

fn chain_of(hops: usize) -> Message {
    let mut answers: Vec<_> = (0..hops).map(|i| cname(&format!("n{i}.example"), &format!("n{}.example", i + 1), 5)).collect();
    answers.push(a(&format!("n{hops}.example"), [192, 0, 2, 99], 5));
    wire(&response(1, "n0.example", RecordType::A, answers))
}

#[test]
fn cname_chain_length_is_bounded() {
    let learned = learnable(&chain_of(3), 3).expect("ok").expect("learnable");
    assert_eq!(learned.cname_chain.len(), 3);
    assert_eq!(learned.addrs.len(), 1);
    assert_eq!(learned.addrs[0].owner, "n3.example");

    let err = learnable(&chain_of(4), 3).unwrap_err();
    assert!(matches!(err, DnsError::CnameChainTooLong { max: 3 }), "{err}");

    // 0 allows no CNAME at all, but a direct answer is fine.
    assert!(matches!(learnable(&chain_of(1), 0), Err(DnsError::CnameChainTooLong { max: 0 })));
    assert_eq!(learnable(&chain_of(0), 0).expect("ok").expect("learnable").addrs.len(), 1);
}

#[test]
fn conflicting_cnames_are_errors() {
    let msg = response(
        1,
        "a.example",
        RecordType::A,
        vec![cname("a.example", "b.example", 5), cname("a.example", "c.example", 5), a("b.example", [192, 0, 2, 1], 5)],
    );
    assert!(matches!(learnable(&wire(&msg), MAX_CHAIN), Err(DnsError::CnameConflict { .. })));

    // The same CNAME twice is a harmless duplicate.
    let dup = response(
        1,
        "a.example",
        RecordType::A,
        vec![cname("a.example", "b.example", 5), cname("A.example", "b.EXAMPLE", 5), a("b.example", [192, 0, 2, 1], 5)],
    );
    assert_eq!(learn(&dup).expect("learnable").addrs.len(), 1);
}

#[test]
fn error_rcodes_learn_nothing() {
    for rcode in [ResponseCode::NXDomain, ResponseCode::ServFail, ResponseCode::Refused] {
        let mut msg = response(1, "www.example.com", RecordType::A, vec![a("www.example.com", [192, 0, 2, 1], 5)]);
        msg.metadata.response_code = rcode;
        assert_eq!(learn(&msg), None, "{rcode:?}");
    }
}

#[test]
fn queries_learn_nothing() {
    let mut msg = response(1, "www.example.com", RecordType::A, vec![a("www.example.com", [192, 0, 2, 1], 5)]);
    msg.metadata.message_type = MessageType::Query;
    assert_eq!(learn(&msg), None);
}

#[test]
fn non_query_opcodes_learn_nothing() {
    let mut msg = response(1, "www.example.com", RecordType::A, vec![a("www.example.com", [192, 0, 2, 1], 5)]);
    msg.metadata.op_code = OpCode::Notify;
    assert_eq!(learn(&msg), None);
}

#[test]
fn question_count_must_be_one() {
    let mut two = response(1, "a.example", RecordType::A, vec![a("a.example", [192, 0, 2, 1], 5)]);
    two.add_query(Query::query(name("b.example"), RecordType::A));
    let two = wire(&two);
    assert_eq!(question(&two), None);
    assert_eq!(learnable(&two, MAX_CHAIN).expect("ok"), None);

    let mut none = response(1, "a.example", RecordType::A, vec![a("a.example", [192, 0, 2, 1], 5)]);
    none.queries.clear();
    let none = wire(&none);
    assert_eq!(question(&none), None);
    assert_eq!(learnable(&none, MAX_CHAIN).expect("ok"), None);
}

#[test]
fn question_class_must_be_in() {
    let mut msg = response(1, "a.example", RecordType::A, vec![a("a.example", [192, 0, 2, 1], 5)]);
    msg.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(learn(&msg), None);
}

#[test]
fn question_and_transaction_id() {
    let msg = wire(&response(0xbeef, "Mixed.Case.Example.", RecordType::AAAA, vec![]));
    assert_eq!(question(&msg), Some(("mixed.case.example".to_string(), 28)));
    assert_eq!(transaction_id(&msg), 0xbeef);
}

#[test]
fn dots_inside_labels_stay_escaped() {
    let raw =
        Name::from_labels(vec![Label::from_raw_bytes(b"evil.com").expect("label"), Label::from_raw_bytes(b"Ok").expect("label")])
            .expect("name");
    let s = name_to_string(&raw);
    assert_eq!(s, "evil\\.com.ok");
    assert_ne!(s, "evil.com.ok");
    assert_eq!(name_to_string(&Name::root()), "");
}

//! Robustness tests of the held-answer path: trailing garbage, every
//! truncation, random and mutated bytes, end to end from an IP packet.

use std::net::{IpAddr, Ipv6Addr};

use hickory_proto::rr::RecordType;

use super::testing::*;
use super::{DnsError, learnable, parse_message, parse_udp, question};

const MAX_CHAIN: usize = 8;

const V6: Ipv6Addr = Ipv6Addr::new(0x2606, 0x2800, 0x220, 1, 0x248, 0x1893, 0x25c8, 0x1946);

#[test]
fn trailing_garbage_is_rejected() {
    let mut bytes = build_answer("www.example.com", RecordType::A, vec![a("www.example.com", [192, 0, 2, 1], 5)]);
    assert!(parse_message(&bytes).is_ok());
    bytes.extend_from_slice(&[0, 0, 0]);
    assert!(matches!(parse_message(&bytes), Err(DnsError::DnsTrailingBytes { extra: 3 })));
}

#[test]
fn full_path_from_held_packet() {
    let payload = build_answer(
        "www.example.com",
        RecordType::AAAA,
        vec![cname("www.example.com", "edge.cdn.example", 300), aaaa("edge.cdn.example", V6, 30)],
    );
    for pkt in [packet_v4(&payload), packet_v6(&payload)] {
        let udp = parse_udp(&pkt).expect("udp");
        let msg = parse_message(udp.payload).expect("dns");
        let learned = learnable(&msg, MAX_CHAIN).expect("ok").expect("learnable");
        assert_eq!(learned.qname, "www.example.com");
        assert_eq!(learned.addrs.len(), 1);
        assert_eq!(learned.addrs[0].ip, IpAddr::V6(V6));
        assert_eq!(learned.addrs[0].ttl, 30);
        assert_eq!(learned.addrs[0].owner, "edge.cdn.example");
        assert_eq!(learned.cname_chain, vec!["edge.cdn.example"]);
    }
}

fn rich_answer() -> Vec<u8> {
    let mut msg = response(
        9,
        "www.example.com",
        RecordType::A,
        vec![
            cname("www.example.com", "b.example.net", 50),
            cname("b.example.net", "c.example.org", 40),
            a("c.example.org", [198, 51, 100, 7], 20),
            aaaa("c.example.org", V6, 20),
        ],
    );
    msg.add_authority(a("ns.example.org", [192, 0, 2, 53], 60));
    msg.to_vec().expect("encode")
}

#[test]
fn every_truncation_is_an_error() {
    let dns = rich_answer();
    for cut in 0..dns.len() {
        assert!(parse_message(&dns[..cut]).is_err(), "DNS prefix of {cut} bytes accepted");
    }
    let pkt = packet_v4(&dns);
    for cut in 0..pkt.len() {
        assert!(parse_udp(&pkt[..cut]).is_err(), "packet prefix of {cut} bytes accepted");
        // Even misread as a bare DNS payload, a prefix must not panic.
        if let Ok(msg) = parse_message(&pkt[..cut]) {
            let _ = learnable(&msg, MAX_CHAIN);
        }
    }
    let learned = learnable(&parse_message(&dns).expect("full"), MAX_CHAIN).expect("ok").expect("learnable");
    assert_eq!(learned.addrs.len(), 2);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for _ in 0..20_000 {
        let len = rng.below(300);
        let bytes = rng.bytes(len);
        if let Ok(msg) = parse_message(&bytes) {
            let _ = question(&msg);
            let _ = learnable(&msg, MAX_CHAIN);
        }
    }
}

#[test]
fn mutated_answers_never_panic() {
    let base = rich_answer();
    let mut rng = Rng(7);
    let mut decoded = 0;
    for _ in 0..20_000 {
        let mut bytes = base.clone();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(bytes.len());
            bytes[at] = rng.next_u64() as u8;
        }
        if let Ok(msg) = parse_message(&bytes) {
            decoded += 1;
            let _ = question(&msg);
            if let Ok(Some(learned)) = learnable(&msg, MAX_CHAIN) {
                // Whatever got through, every owner is on the chain.
                for addr in &learned.addrs {
                    assert!(addr.owner == learned.qname || learned.cname_chain.contains(&addr.owner), "{learned:?}");
                }
            }
        }
    }
    // The mutation loop must actually reach `learnable`.
    assert!(decoded > 100, "only {decoded} mutated answers decoded");
}

//! DNS messages as the agent gets them: answers (bytes a resolver, and whoever
//! runs the queried zone, chose) and query copies (bytes the workload chose).
//!
//! Each input is tried two ways:
//! 1. as the IP packet the kernel holds (`parse_udp`), then its UDP payload
//!    as a DNS message (`parse_message` -> `learnable`), as `Gate::handle`
//!    does;
//! 2. as a bare DNS message (`parse_message` on the raw bytes), so the
//!    fuzzer reaches the DNS decoder without first having to forge IP and
//!    UDP headers with matching length fields.
//!
//! A parsed message goes through both gate paths: as an answer
//! (`learnable`), and as a query (`parse_query`, `suspicion`, `refusal`).
//!
//! Nothing may panic. Invariants checked besides:
//! * a parsed packet rebuilds (`build_udp`) and re-parses to the same
//!   addresses and payload;
//! * a parsed DNS message framed by `build_udp` (IPv4 and IPv6) re-parses to
//!   exactly the same payload;
//! * `learnable` keeps its documented promises (chain length bound, owners on
//!   the chain, same string form as the question);
//! * the NXDOMAIN/REFUSED reply the agent builds for a query re-parses, with
//!   the query's id and question.
#![no_main]

use std::net::SocketAddr;

use hickory_proto::op::{Message, ResponseCode};
use libfuzzer_sys::fuzz_target;
use portcullis::dns::{
    DnsError, Learned, build_udp, learnable, parse_message, parse_query, parse_udp, question,
    refusal, suspicion, transaction_id,
};
use portcullis::dnsgate::MAX_CNAME_CHAIN;
use portcullis::policy::NameSelector;

const RESOLVER_V4: &str = "10.96.0.10:53";
const WORKLOAD_V4: &str = "10.244.1.7:41234";
const RESOLVER_V6: &str = "[fd00::a]:53";
const WORKLOAD_V6: &str = "[fd00:1::7]:41234";

fuzz_target!(|data: &[u8]| {
    // 1. The held packet.
    if let Ok(udp) = parse_udp(data) {
        let rebuilt = build_udp(udp.src, udp.dst, udp.payload, 64)
            .expect("a payload that came out of an IP packet fits a fresh one");
        let again = parse_udp(&rebuilt).expect("build_udp output re-parses");
        assert_eq!(
            (again.src, again.dst, again.payload),
            (udp.src, udp.dst, udp.payload)
        );
        dns(udp.payload);
    }

    // 2. The bare DNS message.
    if dns(data) {
        for (src, dst) in [(RESOLVER_V4, WORKLOAD_V4), (RESOLVER_V6, WORKLOAD_V6)] {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let packet = build_udp(src, dst, data, 64).expect("a DNS message under 64 KiB fits");
            let udp = parse_udp(&packet).expect("build_udp output re-parses");
            assert_eq!((udp.src, udp.dst, udp.payload), (src, dst, data));
        }
    }
});

/// Parses `payload` as a DNS answer and learns from it; whether it parsed.
fn dns(payload: &[u8]) -> bool {
    let msg = match parse_message(payload) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.to_string();
            return false;
        }
    };
    let _ = transaction_id(&msg);
    let q = question(&msg);
    for max in [0, 1, MAX_CNAME_CHAIN] {
        match learnable(&msg, max) {
            Ok(Some(l)) => check_learned(&l, max, q.as_ref()),
            Ok(None) => {}
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        DnsError::CnameLoop { .. }
                            | DnsError::CnameChainTooLong { .. }
                            | DnsError::CnameConflict { .. }
                    ),
                    "learnable returned a non-CNAME error: {e}"
                );
                let _ = e.to_string();
            }
        }
    }
    query(&msg);
    true
}

/// The query path of the gate: a workload's own question.
fn query(msg: &Message) {
    let Ok((qname, qtype)) = parse_query(msg) else {
        return;
    };
    let _ = suspicion(&qname);
    for sel in selectors() {
        let _ = sel.matches(&qname);
    }
    for rcode in [ResponseCode::NXDomain, ResponseCode::Refused] {
        let reply = refusal(msg, rcode);
        let Ok(bytes) = reply.to_vec() else {
            continue; // the gate drops the query then: allowed
        };
        let back = parse_message(&bytes)
            .unwrap_or_else(|e| panic!("the agent's own {rcode:?} reply does not parse: {e}"));
        assert_eq!(transaction_id(&back), transaction_id(msg));
        assert_eq!(question(&back), Some((qname.clone(), qtype)));
        assert_eq!(back.metadata.response_code, rcode);
        assert!(back.answers.is_empty());
    }
}

fn check_learned(l: &Learned, max: usize, q: Option<&(String, u16)>) {
    assert!(
        l.cname_chain.len() <= max,
        "chain {:?} longer than {max}",
        l.cname_chain
    );
    let (qname, qtype) = q.expect("learnable found a question, so question() must too");
    assert_eq!((&l.qname, l.qtype), (qname, *qtype));
    for a in &l.addrs {
        assert!(
            a.owner == l.qname || l.cname_chain.contains(&a.owner),
            "owner {:?} is neither the question {:?} nor on the chain {:?}",
            a.owner,
            l.qname,
            l.cname_chain
        );
    }
    // The gate then asks the policy about the question name: names from the
    // wire must never make a selector panic.
    for sel in selectors() {
        let _ = sel.matches(&l.qname);
        for n in &l.cname_chain {
            let _ = sel.matches(n);
        }
    }
}

fn selectors() -> &'static [NameSelector] {
    static SELECTORS: std::sync::OnceLock<Vec<NameSelector>> = std::sync::OnceLock::new();
    SELECTORS.get_or_init(|| {
        let mut v: Vec<NameSelector> = [
            "*",
            "*.slack.com",
            "**.githubusercontent.com",
            "api.openai.com",
        ]
        .into_iter()
        .map(|p| NameSelector::pattern(p).unwrap())
        .collect();
        v.push(NameSelector::exact("example.com.").unwrap());
        v
    })
}

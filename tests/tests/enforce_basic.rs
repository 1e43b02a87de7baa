//! Names, ports and learned addresses end to end: allowed name on its port
//! (v4 and v6), the same name on another port, a name outside the policy
//! (NXDOMAIN from the DNS gate, logged as `denied-dns-name`), a never-learned
//! IP (refused at connect), matchPattern semantics, and the issue's nsenter form.

mod common;

use common::{Enter, Exec, s};
use portcullis_tests::{Bench, require_root};

const POLICY: &str = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}]
    ports: [{port: 443, protocol: TCP}]
dns:
  servers: ["198.51.100.53"]
"#;

const CURL: &str = "curl -sS --max-time 3";

#[test]
fn allowed_name_port_and_learned_ip_only() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let r = Exec::new(&bench).policy(POLICY).steps(&[
        // Never resolved by this endpoint: blocked before any lookup.
        ("direct", &format!("{CURL} http://203.0.113.20:80/")),
        ("v4", &format!("{CURL} -4 http://api.example.test:443/")),
        ("v6", &format!("{CURL} -6 http://api.example.test:443/")),
        ("port80", &format!("{CURL} -4 http://api.example.test:80/")),
        ("port80v6", &format!("{CURL} -6 http://api.example.test:8080/")),
        ("other", &format!("{CURL} -4 http://other.example.test:443/")),
        ("direct-after", &format!("{CURL} http://203.0.113.20:8443/")),
    ]);
    r.outcome.expect_code(0);
    r.ok("v4", "hello from 203.0.113.10:443\n");
    r.ok("v6", "hello from [2001:db8:100::10]:443\n");
    // A name outside the policy does not resolve (the gate answers
    // NXDOMAIN): curl fails at once with exit 6, nothing is learned.
    let st = r.fails("other", 6, 1000);
    assert!(st.stderr.contains("Could not resolve host: other.example.test"), "{}", st.stderr);
    for step in ["direct", "port80", "port80v6", "direct-after"] {
        // EPERM at connect(): curl gives up at once (exit 7), no timeout.
        let st = r.fails(step, 7, 1000);
        assert!(st.stderr.contains("Couldn't connect") || st.stderr.contains("Failed to connect"), "{step}: {}", st.stderr);
    }
    let log = r.log();
    log.expect_well_formed("exec-");
    let blocked = |reason: &str, proto: &str, hook: &str| {
        vec![("verdict", s("blocked")), ("reason", s(reason)), ("protocol", s(proto)), ("hook", s(hook)), ("comm", s("curl"))]
    };
    let mut want = blocked("denied-default", "tcp", "connect4");
    want.push(("host", serde_json::Value::Null)); // no name ever pointed there
    log.expect("203.0.113.20", 80, &want);
    let mut want = blocked("denied-default", "tcp", "connect4");
    want.push(("host", s("api.example.test")));
    let rec = log.expect("203.0.113.10", 80, &want);
    assert!(rec["pid"].as_u64().is_some_and(|p| p > 1), "{rec}");
    assert!(rec["cgroup_id"].as_u64().is_some_and(|c| c > 1), "{rec}");
    let mut want = blocked("denied-default", "tcp", "connect6");
    want.push(("host", s("api.example.test")));
    log.expect("2001:db8:100::10", 8080, &want);
    // The lookup of other.example.test (curl -4: one A query) is logged by
    // the DNS gate, with the name and the resolver it was sent to.
    let mut want = blocked("denied-dns-name", "dns", "dns-gate");
    want.push(("host", s("other.example.test")));
    log.expect("198.51.100.53", 53, &want);
    assert_eq!(log.only("dns").records.len(), 1, "{}", log.raw);
    // Its answer was replaced, so the endpoint never saw 203.0.113.20 under
    // that name: the direct connect after it is blocked, without a host.
    let mut want = blocked("denied-default", "tcp", "connect4");
    want.push(("host", serde_json::Value::Null));
    log.expect("203.0.113.20", 8443, &want);
    // Nothing logged for the allowed TCP connections, one record per blocked
    // one. (glibc's getaddrinfo also connect()s UDP sockets to rank the
    // answers, RFC 6724; those probes are refused and logged as udp.)
    let tcp = log.only("tcp");
    assert!(tcp.to("203.0.113.10", 443).is_empty(), "{}", log.raw);
    assert!(tcp.to("2001:db8:100::10", 443).is_empty(), "{}", log.raw);
    assert!(tcp.to("203.0.113.20", 443).is_empty(), "{}", log.raw);
    assert_eq!(tcp.records.len(), 4, "one record per blocked attempt:\n{}", log.raw);
    // explain was asked about each of them, and about what arrived (v4 and
    // v6 at 443), and agreed (`common::agree`).
    if common::checks_agreement() {
        assert!(r.agreement.denials >= 5 && r.agreement.allowances == 2, "{:?}", r.agreement);
    }
}

#[test]
fn match_pattern_semantics() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let policy = r#"
egress:
  - toFQDNs: [{matchPattern: "*.wild.test"}, {matchPattern: "**.deep.test"}]
    ports: [{port: 80}]
dns:
  servers: ["198.51.100.53"]
"#;
    let r = Exec::new(&bench).policy(policy).steps(&[
        ("a.wild", &format!("{CURL} -4 http://a.wild.test/")),
        ("b.c.wild", &format!("{CURL} -4 http://b.c.wild.test/")),
        ("wild", &format!("{CURL} -4 http://wild.test/")),
        ("x.deep", &format!("{CURL} -4 http://x.deep.test/")),
        ("y.z.deep", &format!("{CURL} -4 http://y.z.deep.test/")),
        ("other", &format!("{CURL} -4 http://other.example.test/")),
    ]);
    r.outcome.expect_code(0);
    r.ok("a.wild", "hello from 203.0.113.31:80\n");
    r.ok("x.deep", "hello from 203.0.113.41:80\n");
    r.ok("y.z.deep", "hello from 203.0.113.42:80\n");
    // Names the patterns do not match do not resolve (exit 6); each lookup
    // is logged once (curl -4: one A query), and nothing was connected to.
    for (step, host) in [("b.c.wild", "b.c.wild.test"), ("wild", "wild.test"), ("other", "other.example.test")] {
        let st = r.fails(step, 6, 1000);
        assert!(st.stderr.contains("Could not resolve host"), "{step}: {}", st.stderr);
        let recs = r.log().records.iter().filter(|x| x["host"] == host).count();
        assert_eq!(recs, 1, "{host}: {}", r.log().raw);
        r.log().expect(
            "198.51.100.53",
            53,
            &[("reason", s("denied-dns-name")), ("protocol", s("dns")), ("hook", s("dns-gate")), ("host", s(host))],
        );
    }
    assert_eq!(r.log().only("dns").records.len(), 3, "{}", r.log().raw);
    assert!(r.log().only("tcp").records.is_empty(), "{}", r.log().raw);

    // `*` alone matches every name.
    let star = format!("egress:\n  - toFQDNs: [{{matchPattern: \"*\"}}]\n    ports: [{{port: 80}}]\n{}", common::DNS_TRUSTED);
    let r = Exec::new(&bench).policy(&star).steps(&[
        ("other", &format!("{CURL} -4 http://other.example.test/")),
        ("b.c.wild", &format!("{CURL} -4 http://b.c.wild.test/")),
        ("port443", &format!("{CURL} -4 http://other.example.test:443/")),
    ]);
    r.ok("other", "hello from 203.0.113.20:80\n");
    r.ok("b.c.wild", "hello from 203.0.113.32:80\n");
    r.fails("port443", 7, 1000);
    r.log().expect("203.0.113.20", 443, &[("reason", s("denied-default")), ("host", s("other.example.test"))]);
    assert!(r.log().only("dns").records.is_empty(), "{}", r.log().raw);
}

/// The issue's own form: the command enters the pod with nsenter (no bench
/// resolv.conf), resolves with an explicit server, connects to the bare IP.
/// A name outside the policy gets NXDOMAIN; its real address, used
/// directly, is refused at connect.
#[test]
fn issue_form_nsenter_dig_then_curl_ip() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let script = |name: &str| {
        format!(
            "ip=$(dig +short +time=2 +tries=1 @198.51.100.53 {name} A | head -n1); \
             echo \"ip=$ip\" >&2; curl -sS --max-time 3 http://$ip:443/"
        )
    };
    let ok = Exec::new(&bench).policy(POLICY).enter(Enter::Nsenter).run(&["sh", "-c", &script("api.example.test")]);
    ok.expect_code(0);
    assert_eq!(ok.ran.stdout, "hello from 203.0.113.10:443\n");
    assert!(ok.log.records.is_empty(), "{}", ok.log.raw);

    // dig shows the gate's NXDOMAIN (the resolver itself knows the name);
    // the address the name really has, used directly, is still refused.
    let bad = Exec::new(&bench).policy(POLICY).enter(Enter::Nsenter).run(&[
        "sh",
        "-c",
        "dig +time=2 +tries=1 @198.51.100.53 other.example.test A >&2; \
             curl -sS --max-time 3 http://203.0.113.20:443/",
    ]);
    bad.expect_code(7);
    assert!(bad.ran.stderr.contains("status: NXDOMAIN"), "{}", bad.ran.stderr);
    assert!(bad.ran.stderr.contains("ANSWER: 0,"), "{}", bad.ran.stderr);
    assert!(!bad.ran.stderr.contains("203.0.113.20\n"), "{}", bad.ran.stderr);
    bad.log.expect(
        "198.51.100.53",
        53,
        &[("verdict", s("blocked")), ("reason", s("denied-dns-name")), ("host", s("other.example.test")), ("comm", s("dig"))],
    );
    bad.log.expect(
        "203.0.113.20",
        443,
        &[("verdict", s("blocked")), ("reason", s("denied-default")), ("host", serde_json::Value::Null), ("comm", s("curl"))],
    );
    assert_eq!(bad.log.records.len(), 2, "{}", bad.log.raw);
}

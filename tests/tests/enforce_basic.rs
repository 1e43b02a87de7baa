//! Names, ports and learned addresses end to end: allowed name on its port
//! (v4 and v6), the same name on another port, a name outside the policy, a
//! never-learned IP, matchPattern semantics, and the issue's nsenter form.

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
        (
            "port80v6",
            &format!("{CURL} -6 http://api.example.test:8080/"),
        ),
        (
            "other",
            &format!("{CURL} -4 http://other.example.test:443/"),
        ),
        ("direct-after", &format!("{CURL} http://203.0.113.20:8443/")),
    ]);
    r.outcome.expect_code(0);
    r.ok("v4", "hello from 203.0.113.10:443\n");
    r.ok("v6", "hello from [2001:db8:100::10]:443\n");
    for step in ["direct", "port80", "port80v6", "other", "direct-after"] {
        // EPERM at connect(): curl gives up at once (exit 7), no timeout.
        let st = r.fails(step, 7, 1000);
        assert!(
            st.stderr.contains("Couldn't connect") || st.stderr.contains("Failed to connect"),
            "{step}: {}",
            st.stderr
        );
    }
    let log = r.log();
    log.expect_well_formed("exec-");
    let blocked = |reason: &str, proto: &str, hook: &str| {
        vec![
            ("verdict", s("blocked")),
            ("reason", s(reason)),
            ("protocol", s(proto)),
            ("hook", s(hook)),
            ("comm", s("curl")),
        ]
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
    // The endpoint saw other.example.test's answer (not allowed: not learned).
    let mut want = blocked("denied-default", "tcp", "connect4");
    want.push(("host", s("other.example.test")));
    log.expect("203.0.113.20", 443, &want);
    log.expect("203.0.113.20", 8443, &want);
    // Nothing logged for the allowed TCP connections, one record per blocked
    // one. (glibc's getaddrinfo also connect()s UDP sockets to rank the
    // answers, RFC 6724; those probes are refused and logged as udp.)
    let tcp = log.only("tcp");
    assert!(tcp.to("203.0.113.10", 443).is_empty(), "{}", log.raw);
    assert!(tcp.to("2001:db8:100::10", 443).is_empty(), "{}", log.raw);
    assert_eq!(
        tcp.records.len(),
        5,
        "one record per blocked attempt:\n{}",
        log.raw
    );
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
    for (step, ip, host) in [
        ("b.c.wild", "203.0.113.32", "b.c.wild.test"),
        ("wild", "203.0.113.33", "wild.test"),
        ("other", "203.0.113.20", "other.example.test"),
    ] {
        r.fails(step, 7, 1000);
        r.log().expect(
            ip,
            80,
            &[("reason", s("denied-default")), ("host", s(host))],
        );
    }
    assert_eq!(r.log().only("tcp").records.len(), 3, "{}", r.log().raw);

    // `*` alone matches every name.
    let star = "egress:\n  - toFQDNs: [{matchPattern: \"*\"}]\n    ports: [{port: 80}]\n"
        .to_owned()
        + common::DNS_TRUSTED;
    let r = Exec::new(&bench).policy(&star).steps(&[
        ("other", &format!("{CURL} -4 http://other.example.test/")),
        ("b.c.wild", &format!("{CURL} -4 http://b.c.wild.test/")),
        (
            "port443",
            &format!("{CURL} -4 http://other.example.test:443/"),
        ),
    ]);
    r.ok("other", "hello from 203.0.113.20:80\n");
    r.ok("b.c.wild", "hello from 203.0.113.32:80\n");
    r.fails("port443", 7, 1000);
    r.log()
        .expect("203.0.113.20", 443, &[("reason", s("denied-default"))]);
}

/// The issue's own form: the command enters the pod with nsenter (no bench
/// resolv.conf), resolves with an explicit server, connects to the bare IP.
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
    let ok = Exec::new(&bench)
        .policy(POLICY)
        .enter(Enter::Nsenter)
        .run(&["sh", "-c", &script("api.example.test")]);
    ok.expect_code(0);
    assert_eq!(ok.ran.stdout, "hello from 203.0.113.10:443\n");
    assert!(ok.log.records.is_empty(), "{}", ok.log.raw);

    let bad = Exec::new(&bench)
        .policy(POLICY)
        .enter(Enter::Nsenter)
        .run(&["sh", "-c", &script("other.example.test")]);
    bad.expect_code(7);
    assert!(
        bad.ran.stderr.contains("ip=203.0.113.20"),
        "{}",
        bad.ran.stderr
    );
    bad.log.expect(
        "203.0.113.20",
        443,
        &[
            ("verdict", s("blocked")),
            ("reason", s("denied-default")),
            ("host", s("other.example.test")),
            ("comm", s("curl")),
        ],
    );
}

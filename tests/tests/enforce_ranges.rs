//! Always-denied ranges end to end: metadata, cluster-internal and
//! carrier-grade NAT addresses stay closed directly *and* when an allowed
//! name resolves into them (DNS rebinding: the addresses are stripped from
//! the answer, so the name does not resolve), in IPv4, IPv6, IPv4-mapped and
//! NAT64 forms; only a CIDR rule inside a range opens it.

mod common;

use common::{Exec, s};
use portcullis_tests::{Bench, require_root};
use serde_json::Value;

const CURL: &str = "curl -sS --max-time 3";

const POLICY: &str = r#"
egress:
  - toFQDNs:
      - matchName: meta.example.test
      - matchName: meta6.example.test
      - matchName: internal.example.test
      - matchName: api.example.test
    ports: [{port: 80}]
dns:
  servers: ["198.51.100.53"]
"#;

fn range(hook: &str, host: Option<&str>) -> Vec<(&'static str, Value)> {
    vec![
        ("verdict", s("blocked")),
        ("reason", s("denied-range")),
        ("protocol", s("tcp")),
        ("hook", s(hook)),
        ("host", host.map_or(Value::Null, s)),
    ]
}

#[test]
fn denied_ranges_directly_and_through_allowed_names() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let r = Exec::new(&bench).policy(POLICY).steps(&[
        // Control: an allowed public name on the same policy works.
        ("api", &format!("{CURL} -4 http://api.example.test/")),
        // Direct first (no name seen yet for these addresses), then by name.
        ("meta-direct", &format!("{CURL} http://169.254.169.254:80/")),
        ("meta-name", &format!("{CURL} -4 http://meta.example.test/")),
        ("meta-answer", "dig +short +time=2 +tries=1 @198.51.100.53 meta.example.test A"),
        ("alibaba", &format!("{CURL} http://100.100.100.200/")),
        ("cluster-direct", &format!("{CURL} http://10.96.0.10/")),
        ("cluster-name", &format!("{CURL} -4 http://internal.example.test/")),
        ("meta6-direct", &format!("{CURL} -6 'http://[fd00:ec2::254]/'")),
        ("meta6-name", &format!("{CURL} -6 http://meta6.example.test/")),
        // An AF_INET6 socket to the IPv4-mapped metadata address.
        ("mapped", "$PY $SOCK tcp ::ffff:169.254.169.254 8080"),
        // NAT64 form: the pod has a v6 default route; the EPERM must come
        // from connect() itself.
        ("nat64", "$PY $SOCK tcp 64:ff9b::a9fe:a9fe 80"),
    ]);
    r.outcome.expect_code(0);
    r.ok("api", "hello from 203.0.113.10:80\n");
    // The answer reaches the workload without the denied address (stripped,
    // an empty NOERROR answer), so by name nothing is even tried.
    r.ok("meta-answer", "");
    for step in ["meta-name", "cluster-name", "meta6-name"] {
        let st = r.fails(step, 6, 1000);
        assert!(st.stderr.contains("Could not resolve host"), "{step}: {}", st.stderr);
    }
    for step in ["meta-direct", "alibaba", "cluster-direct", "meta6-direct"] {
        r.fails(step, 7, 1000);
    }
    for step in ["mapped", "nat64"] {
        r.fails(step, 1, 1000);
        r.sock_errno(step, "connect", "EPERM");
    }
    let log = r.log();
    log.expect_well_formed("exec-");
    log.expect("169.254.169.254", 80, &range("connect4", None));
    log.expect("100.100.100.200", 80, &range("connect4", None));
    log.expect("10.96.0.10", 80, &range("connect4", None));
    log.expect("fd00:ec2::254", 80, &range("connect6", None));
    // One record per direct attempt; the by-name steps connected nowhere.
    for (dst, hook) in [
        ("169.254.169.254", "connect4"),
        ("100.100.100.200", "connect4"),
        ("10.96.0.10", "connect4"),
        ("fd00:ec2::254", "connect6"),
    ] {
        assert_eq!(log.to(dst, 80).len(), 1, "{dst} ({hook}):\n{}", log.raw);
    }
    // The names were allowed, so no lookup was refused; the only DNS
    // records are the rebinding addresses stripped from their answers, each
    // naming the name that pointed there.
    let dns = log.only("dns");
    assert!(!dns.records.is_empty(), "{}", log.raw);
    for rec in &dns.records {
        assert_eq!(rec["reason"], "denied-range", "{rec}");
        assert_eq!(rec["hook"], "dns-gate", "{rec}");
        assert!(rec["host"].as_str().is_some_and(|h| h.ends_with(".example.test")), "{rec}");
    }
    assert!(dns.records.iter().any(|r| r["host"] == "meta.example.test" && r["dst"] == "169.254.169.254"), "{}", log.raw);
    // The endpoint still remembers which name pointed at the address: the
    // IPv4-mapped attempt after the lookup names it. IPv4-mapped is logged
    // as the plain IPv4 address, via the v6 hook.
    let mapped = log.expect("169.254.169.254", 8080, &range("connect6", Some("meta.example.test")));
    assert_eq!(mapped["comm"], "python3", "{mapped}");
    log.expect("64:ff9b::a9fe:a9fe", 80, &range("connect6", None));
    // Nothing of these reached the servers (the bench's hostd logs every
    // TCP request it answers).
    let hostd = std::fs::read_to_string(bench.hostd_log_path()).unwrap();
    for ip in ["169.254.169.254", "100.100.100.200", "10.96.0.10", "fd00:ec2::254"] {
        assert!(!hostd.contains(&format!("-> {ip}:")), "{ip} was reached:\n{hostd}");
        assert!(!hostd.contains(&format!("-> [{ip}]:")), "{ip} was reached:\n{hostd}");
    }
}

/// `0.0.0.0/0` and `::/0` do not open denied ranges; a CIDR rule inside a
/// range does (only on its port).
#[test]
fn only_cidr_rules_inside_a_range_open_it() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let policy = r#"
egress:
  - toCIDRs: ["0.0.0.0/0", "::/0"]
  - toCIDRs: ["10.96.0.10/32"]
    ports: [{port: 80}]
dns:
  servers: ["198.51.100.53"]
"#;
    let r = Exec::new(&bench).policy(policy).steps(&[
        ("public", &format!("{CURL} http://203.0.113.20:8443/")),
        ("public6", &format!("{CURL} 'http://[2001:db8:100::20]:8080/'")),
        ("meta", &format!("{CURL} http://169.254.169.254/")),
        ("meta6", &format!("{CURL} 'http://[fd00:ec2::254]/'")),
        ("hole", &format!("{CURL} http://10.96.0.10/")),
        ("hole-other-port", &format!("{CURL} http://10.96.0.10:8080/")),
        ("mapped", "$PY $SOCK tcp ::ffff:169.254.169.254 80"),
        ("mapped-hole", "$PY $SOCK tcp ::ffff:10.96.0.10 80"),
    ]);
    r.outcome.expect_code(0);
    r.ok("public", "hello from 203.0.113.20:8443\n");
    r.ok("public6", "hello from [2001:db8:100::20]:8080\n");
    r.ok("hole", "hello from 10.96.0.10:80\n");
    r.fails("meta", 7, 1000);
    r.fails("meta6", 7, 1000);
    r.fails("hole-other-port", 7, 1000);
    r.sock_errno("mapped", "connect", "EPERM");
    assert_eq!(r.sock("mapped-hole")["body"], "hello from 10.96.0.10:80\n");
    let log = r.log();
    log.expect("169.254.169.254", 80, &range("connect4", None));
    log.expect("fd00:ec2::254", 80, &range("connect6", None));
    log.expect("10.96.0.10", 8080, &range("connect4", None));
    log.expect("169.254.169.254", 80, &range("connect6", None));
    assert_eq!(log.records.len(), 4, "{}", log.raw);
}

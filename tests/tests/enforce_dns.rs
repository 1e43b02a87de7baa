//! DNS goes only to trusted resolvers (UDP and TCP, v4 and v6, whatever
//! other rules allow), and audit mode lets everything through while logging
//! what enforcement would have blocked.

mod common;

use common::{Exec, s};
use portcullis_tests::{Bench, require_root};

const CURL: &str = "curl -sS --max-time 3";
const DIG: &str = "dig +short +time=1 +tries=1";

#[test]
fn dns_only_to_trusted_resolvers() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    // The rogue resolver's whole /24 is allowed on every port: port 53 to an
    // untrusted server is still denied.
    let policy = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}]
    ports: [{port: 443}]
  - toCIDRs: ["198.51.100.0/24"]
dns:
  servers: ["198.51.100.53"]
"#;
    let r = Exec::new(&bench).policy(policy).steps(&[
        ("trusted", &format!("{DIG} @198.51.100.53 api.example.test A")),
        ("trusted-tcp", &format!("{DIG} +tcp @198.51.100.53 api.example.test A")),
        ("rogue", &format!("{DIG} @198.51.100.99 api.example.test A")),
        ("rogue-tcp", &format!("{DIG} +tcp @198.51.100.99 other.example.test A")),
        // Same dnsmasq on its v6 address, which the policy does not trust.
        ("rogue-v6", &format!("{DIG} @2001:db8:53::53 api.example.test A")),
        ("rogue-sendto", "$PY $SOCK udp 198.51.100.99 53"),
        // The CIDR rule itself works on other ports.
        ("cidr-http", &format!("{CURL} http://198.51.100.99:8080/")),
    ]);
    r.outcome.expect_code(0);
    r.ok("trusted", "203.0.113.10\n");
    r.ok("trusted-tcp", "203.0.113.10\n");
    r.ok("cidr-http", "hello from 198.51.100.99:8080\n");
    // TCP: refused at connect(), dig gives up at once (exit 9).
    let st = r.fails("rogue-tcp", 9, 1000);
    assert!(st.stdout.contains("permission denied"), "{st:?}");
    // UDP on a connected socket: refused at connect(), or (UDP connect
    // judged per datagram) the query is dropped and dig times out (+time=1).
    for step in ["rogue", "rogue-v6"] {
        let st = r.fails(step, 9, 2500);
        assert!(st.stdout.contains("permission denied") || st.stdout.contains("timed out"), "{step}: {st:?}");
        assert!(!st.stdout.contains("203.0.113."), "{step}: {st:?}");
    }
    r.sock_errno("rogue-sendto", "sendto", "EPERM");
    let log = r.log();
    log.expect_well_formed("exec-");
    let dns = |proto: &str, hook: &str| {
        vec![("verdict", s("blocked")), ("reason", s("denied-dns-server")), ("protocol", s(proto)), ("hook", s(hook))]
    };
    // dig sends its UDP queries on a connected socket (from a thread, so
    // `comm` is the thread's name, e.g. "isc-net-0000"); refused at
    // connect() or per datagram.
    for (dst, hooks) in [("198.51.100.99", ["connect4", "skb-egress"]), ("2001:db8:53::53", ["connect6", "skb-egress"])] {
        let rec = log.expect(dst, 53, &[("protocol", s("udp")), ("reason", s("denied-dns-server"))]);
        assert!(hooks.contains(&rec["hook"].as_str().unwrap()) && rec["verdict"] == "blocked", "{rec}");
    }
    log.expect("198.51.100.99", 53, &dns("tcp", "connect4"));
    let mut py = dns("udp", "sendmsg4");
    py.push(("comm", s("python3")));
    log.expect("198.51.100.99", 53, &py);
    assert!(log.records.iter().all(|r| r["reason"] == "denied-dns-server"), "{}", log.raw);
    // The rogue resolver never saw a query (dnsmasq logs the source of each).
    let dns_log = std::fs::read_to_string(bench.dns_log_path()).unwrap();
    let pod = bench.pod_v4("pod").to_string();
    let api_queries = dns_log.lines().filter(|l| l.contains(&format!("query[A] api.example.test from {pod}"))).count();
    // Only the two trusted lookups (UDP, TCP); not the rogue v4/v6 ones.
    assert_eq!(api_queries, 2, "{dns_log}");
    assert!(!dns_log.contains("other.example.test"), "{dns_log}");
}

#[test]
fn audit_lets_everything_through_and_logs_it() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let policy = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}, {matchName: meta.example.test}]
    ports: [{port: 443}]
dns:
  servers: ["198.51.100.53"]
"#;
    let r = Exec::new(&bench).policy(policy).arg("--audit").steps(&[
        ("api", &format!("{CURL} -4 http://api.example.test:443/")),
        ("meta", &format!("{CURL} http://169.254.169.254/")),
        ("meta-name", &format!("{CURL} -4 http://meta.example.test:443/")),
        ("meta6", &format!("{CURL} 'http://[fd00:ec2::254]/'")),
        ("other", &format!("{CURL} -4 http://other.example.test/")),
        ("rogue", &format!("{DIG} @198.51.100.99 internal.example.test A")),
        ("udp", "$PY $SOCK udp 203.0.113.20 9999"),
    ]);
    r.outcome.expect_code(0);
    r.ok("api", "hello from 203.0.113.10:443\n");
    r.ok("meta", "hello from 169.254.169.254:80\n");
    // Audit blocks nothing, so the answer keeps the metadata address
    // (enforcement would strip it) and the connect is logged with the name.
    r.ok("meta-name", "hello from 169.254.169.254:443\n");
    r.ok("meta6", "hello from [fd00:ec2::254]:80\n");
    r.ok("other", "hello from 203.0.113.20:80\n");
    r.ok("rogue", "10.96.0.10\n");
    assert_eq!(r.sock("udp")["body"], "portcullis-udp");
    let log = r.log();
    log.expect_well_formed("exec-");
    let audit = |reason: &str, proto: &str, host: Option<&str>| {
        vec![
            ("verdict", s("audit")),
            ("reason", s(reason)),
            ("protocol", s(proto)),
            ("host", host.map_or(serde_json::Value::Null, s)),
        ]
    };
    log.expect("169.254.169.254", 80, &audit("denied-range", "tcp", None));
    log.expect("169.254.169.254", 443, &audit("denied-range", "tcp", Some("meta.example.test")));
    log.expect("fd00:ec2::254", 80, &audit("denied-range", "tcp", None));
    // The name outside the policy: its lookup is logged (enforcement would
    // answer NXDOMAIN), its real answer goes through, and the connect too.
    log.expect("198.51.100.53", 53, &audit("denied-dns-name", "dns", Some("other.example.test")));
    log.expect("203.0.113.20", 80, &audit("denied-default", "tcp", Some("other.example.test")));
    log.expect("198.51.100.99", 53, &audit("denied-dns-server", "udp", None));
    log.expect("203.0.113.20", 9999, &audit("denied-default", "udp", Some("other.example.test")));
    assert!(log.records.iter().all(|r| r["verdict"] == "audit"), "{}", log.raw);
    // The allowed connection is not in the log.
    assert!(log.only("tcp").to("203.0.113.10", 443).is_empty(), "{}", log.raw);
}

//! The DNS gate end to end, with the bench's real resolver (dnsmasq): names
//! outside the policy get NXDOMAIN (or REFUSED) and a `denied-dns-name`
//! record, Kubernetes search-path expansions fail fast, `dns.allowNames`
//! resolves without allowing traffic, rebinding addresses are stripped from
//! answers, and a live connection outlives its learned address's TTL.

mod common;

use common::{Exec, agent_cmd, run_with_deadline, s};
use portcullis_tests::{Bench, require_root};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const DIG: &str = "dig +time=2 +tries=1 @198.51.100.53";
const CURL: &str = "curl -sS --max-time 3";

fn policy(rules: &str, dns_extra: &str) -> String {
    format!("egress:\n{rules}dns:\n  servers: [\"198.51.100.53\"]\n{dns_extra}")
}

const API_443: &str = "  - toFQDNs: [{matchName: api.example.test}]\n    ports: [{port: 443}]\n";

/// The `denied-dns-name` records of a run for `host`.
fn dns_records<'a>(log: &'a common::Log, host: &str) -> Vec<&'a Value> {
    log.records.iter().filter(|r| r["reason"] == "denied-dns-name" && r["host"] == host).collect()
}

fn denied_name(verdict: &str, host: &str, comm: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("verdict", s(verdict)),
        ("reason", s("denied-dns-name")),
        ("protocol", s("dns")),
        ("hook", s("dns-gate")),
        ("host", s(host)),
        ("comm", s(comm)),
    ]
}

#[test]
fn names_outside_the_policy_get_nxdomain_or_refused() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let steps = [
        ("a", format!("{DIG} other.example.test A")),
        ("aaaa", format!("{DIG} other.example.test AAAA")),
        ("allowed", format!("{DIG} +short api.example.test A")),
        ("direct", "$PY $SOCK tcp 203.0.113.20 443".to_owned()),
    ];
    let steps: Vec<(&str, &str)> = steps.iter().map(|(n, c)| (*n, c.as_str())).collect();
    for (flags, status) in [(&[][..], "NXDOMAIN"), (&["--dns-deny-rcode", "refused"][..], "REFUSED")] {
        let r = Exec::new(&bench).policy(&policy(API_443, "")).args(flags).steps(&steps);
        r.outcome.expect_code(0);
        for step in ["a", "aaaa"] {
            let st = r.get(step);
            assert!(
                st.code == 0
                    && st.stdout.contains(&format!("status: {status},"))
                    && st.stdout.contains("ANSWER: 0,")
                    && !st.stdout.contains("203.0.113.20")
                    && !st.stdout.contains("2001:db8:100::20"),
                "{flags:?} {step}: {st:?}"
            );
        }
        r.ok("allowed", "203.0.113.10\n");
        // Nothing learned, nothing remembered: the real address stays shut.
        r.sock_errno("direct", "connect", "EPERM");
        let log = r.log();
        log.expect_well_formed("exec-");
        // One record per query (A and AAAA), naming the resolver asked.
        let recs = dns_records(log, "other.example.test");
        assert_eq!(recs.len(), 2, "{flags:?}: {}", log.raw);
        for rec in recs {
            assert!(rec["dst"] == "198.51.100.53" && rec["dport"] == 53, "{rec}");
            assert!(rec["pid"].as_u64().is_some_and(|p| p > 1), "{rec}");
        }
        log.expect("198.51.100.53", 53, &denied_name("blocked", "other.example.test", "dig"));
        log.expect("203.0.113.20", 443, &[("reason", s("denied-default")), ("hook", s("connect4")), ("host", Value::Null)]);
        assert_eq!(log.records.len(), 3, "{flags:?}: {}", log.raw);
    }

    // Audit: the real answer goes through, the lookup is logged as audit.
    let r = Exec::new(&bench)
        .policy(&policy(API_443, ""))
        .arg("--audit")
        .steps(&[("a", &format!("{DIG} +short other.example.test A"))]);
    r.ok("a", "203.0.113.20\n");
    r.log().expect("198.51.100.53", 53, &denied_name("audit", "other.example.test", "dig"));

    // A bad value is a flag error: exit 2, nothing runs.
    let mut c = agent_cmd();
    c.args(["exec", "--dns-deny-rcode", "servfail", "--", "true"]);
    let bad = run_with_deadline(bench.workdir(), c, Duration::from_secs(10));
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("servfail"), "{}", bad.stderr);
}

/// A pod's resolv.conf as Kubernetes writes it: with ndots:5 glibc tries
/// every search expansion before the name itself. The expansions get
/// NXDOMAIN at once (one even exists at the resolver: a trap that would
/// win without the gate), so the absolute name resolves quickly.
#[test]
fn kubernetes_search_path_expansions_fail_fast() {
    if !require_root() {
        return;
    }
    let trap = Ipv4Addr::new(203, 0, 113, 71);
    let bench = Bench::builder().record("api.example.test.ns.svc.cluster.local", [IpAddr::V4(trap)]).start().unwrap();
    std::fs::write(
        bench.resolv_conf_dir("pod").join("resolv.conf"),
        "nameserver 198.51.100.53\nsearch ns.svc.cluster.local svc.cluster.local cluster.local\n\
         options ndots:5 timeout:1 attempts:2\n",
    )
    .unwrap();
    let gai = "$PY -c \"import socket; print(sorted({a[4][0] for a in \
               socket.getaddrinfo('api.example.test', 443, type=socket.SOCK_STREAM)}))\"";
    let r = Exec::new(&bench).policy(&policy(API_443, "")).steps(&[
        ("curl", &format!("{CURL} -4 http://api.example.test:443/")),
        ("gai", gai),
        ("trap", "$PY $SOCK tcp 203.0.113.71 443"),
    ]);
    r.outcome.expect_code(0);
    r.ok("curl", "hello from 203.0.113.10:443\n");
    r.ok("gai", "['2001:db8:100::10', '203.0.113.10']\n");
    for step in ["curl", "gai"] {
        // Without the gate's answers (a dropped expansion) glibc would wait
        // timeout:1 x attempts:2 per expansion.
        assert!(r.get(step).ms < 2000, "{step} took {} ms", r.get(step).ms);
    }
    r.sock_errno("trap", "connect", "EPERM");
    let log = r.log();
    // curl -4 asks A per expansion, getaddrinfo A and AAAA.
    for suffix in ["ns.svc.cluster.local", "svc.cluster.local", "cluster.local"] {
        let host = format!("api.example.test.{suffix}");
        assert_eq!(dns_records(log, &host).len(), 3, "{host}: {}", log.raw);
    }
    assert_eq!(log.only("dns").records.len(), 9, "{}", log.raw);
    log.expect("203.0.113.71", 443, &[("reason", s("denied-default")), ("host", Value::Null)]);
    let hostd = std::fs::read_to_string(bench.hostd_log_path()).unwrap();
    assert!(!hostd.contains("-> 203.0.113.71:"), "{hostd}");
}

/// `dns.allowNames` lets a name resolve, and nothing more.
#[test]
fn allow_names_resolve_without_allowing_traffic() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let p = policy(API_443, "  allowNames: [\"other.example.test\"]\n");
    let r = Exec::new(&bench).policy(&p).steps(&[
        ("dig", &format!("{DIG} +short other.example.test A")),
        ("curl", &format!("{CURL} -4 http://other.example.test:443/")),
        ("not-listed", &format!("{DIG} +short a.wild.test A")),
    ]);
    r.outcome.expect_code(0);
    r.ok("dig", "203.0.113.20\n");
    r.fails("curl", 7, 1000);
    r.ok("not-listed", "");
    let log = r.log();
    log.expect(
        "203.0.113.20",
        443,
        &[
            ("verdict", s("blocked")),
            ("reason", s("denied-default")),
            ("hook", s("connect4")),
            ("host", s("other.example.test")),
            ("comm", s("curl")),
        ],
    );
    assert!(dns_records(log, "other.example.test").is_empty(), "{}", log.raw);
    assert_eq!(dns_records(log, "a.wild.test").len(), 1, "{}", log.raw);
    assert_eq!(log.records.len(), 2, "{}", log.raw);
}

/// DNS rebinding: always-denied addresses are stripped from answers (the
/// legitimate records of a mixed answer stay) unless a CIDR rule opens them.
#[test]
fn rebinding_addresses_are_stripped_from_answers() {
    if !require_root() {
        return;
    }
    let private = Ipv4Addr::new(10, 1, 2, 3);
    let public = Ipv4Addr::new(203, 0, 113, 70);
    let bench = Bench::builder().record("mixed.example.test", [IpAddr::V4(public), IpAddr::V4(private)]).start().unwrap();
    let p = policy("  - toFQDNs: [{matchPattern: \"*.example.test\"}]\n    ports: [{port: 80}]\n", "");
    let steps = [
        ("meta", format!("{DIG} +short meta.example.test A")),
        ("meta6", format!("{DIG} +short meta6.example.test AAAA")),
        ("mixed", format!("{DIG} +short mixed.example.test A | sort")),
        ("curl", format!("{CURL} -4 http://mixed.example.test/")),
        ("private", "$PY $SOCK tcp 10.1.2.3 80".to_owned()),
    ];
    let steps: Vec<(&str, &str)> = steps.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let r = Exec::new(&bench).policy(&p).steps(&steps);
    r.outcome.expect_code(0);
    r.ok("meta", "");
    r.ok("meta6", "");
    r.ok("mixed", "203.0.113.70\n");
    r.ok("curl", "hello from 203.0.113.70:80\n");
    r.sock_errno("private", "connect", "EPERM");
    // The endpoint still knows which name pointed there.
    r.log().expect("10.1.2.3", 80, &[("reason", s("denied-range")), ("hook", s("connect4")), ("host", s("mixed.example.test"))]);
    // Each stripped address is itself a record naming the name that
    // pointed there (the on-call question: "which name rebinds?").
    let dns = r.log().only("dns");
    let mut seen: Vec<(String, String)> = dns
        .records
        .iter()
        .map(|rec| {
            assert_eq!(rec["reason"], "denied-range", "{rec}");
            assert_eq!(rec["hook"], "dns-gate", "{rec}");
            assert_eq!(rec["verdict"], "blocked", "{rec}");
            (rec["host"].as_str().unwrap_or("").to_owned(), rec["dst"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [("meta.example.test", "169.254.169.254"), ("meta6.example.test", "fd00:ec2::254"), ("mixed.example.test", "10.1.2.3"),]
            .map(|(h, d)| (h.to_owned(), d.to_owned())),
        "{}",
        r.log().raw
    );

    // A CIDR rule of the endpoint opens the private address: kept. The
    // metadata address (not opened) is still stripped.
    let r = Exec::new(&bench).policy(&p).args(&["--allow-cidr", "10.1.2.0/24"]).steps(&steps[..3]);
    r.outcome.expect_code(0);
    r.ok("meta", "");
    r.ok("meta6", "");
    r.ok("mixed", "10.1.2.3\n203.0.113.70\n");
}

/// A learned address expires with its TTL for *new* connections; a live
/// connection to it keeps working.
#[test]
fn live_connection_outlives_the_ttl() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().dns_ttl(2).tcp_echo(true).start().unwrap();
    let p = policy("  - toFQDNs: [{matchName: api.example.test}]\n    ports: [{port: 7}]\n", "");
    let r =
        Exec::new(&bench).policy(&p).args(&["--min-ttl", "1s"]).steps(&[("hold", "$PY $HOLD api.example.test 7 5 0.5 0.5 3.5")]);
    r.outcome.expect_code(0);
    let st = r.get("hold");
    let v: Value = serde_json::from_str(st.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {st:?}"));
    assert_eq!(v["addr"], "203.0.113.10", "{v}");
    let pings = v["pings"].as_array().unwrap();
    assert!(pings.len() >= 9, "{v}");
    assert!(pings.iter().all(|p| p["ok"] == true), "the live connection broke: {v}");
    let last = pings.last().unwrap()["t"].as_f64().unwrap();
    assert!(last > 4.0, "{v}");
    let probes = v["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 2, "{v}");
    assert!(probes[0]["ok"] == true, "within the TTL a new connect works: {v}");
    assert!(probes[1]["ok"] == false && probes[1]["errno"] == "EPERM", "after the TTL: {v}");
    let log = r.log();
    log.expect(
        "203.0.113.10",
        7,
        &[("reason", s("denied-default")), ("hook", s("connect4")), ("host", s("api.example.test")), ("comm", s("python3"))],
    );
    // Only the refused probe: the live connection's own packets, up to and
    // including the FIN when hold.py exits and its socket is closed, pass.
    assert_eq!(
        log.only("tcp").records.len(),
        1,
        "only the refused new connection may be logged (a live connection's \
         FIN must not be dropped):\n{}",
        log.raw
    );
}

//! The DNS gate has no race: 1,000 of 1,000 "resolve a name with a new IP,
//! connect at once" trials succeed, in one process, over IPv4 and IPv6.

mod common;

use common::{Exec, RACE_PY, client};
use portcullis_tests::{Bench, dns, require_root, servers::python};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const POLICY: &str = r#"
egress:
  - toFQDNs: [{matchPattern: "*.test"}]
    ports: [{port: 80}]
dns:
  servers: ["198.51.100.53"]
"#;

#[test]
fn resolve_then_connect_at_once_1000_of_1000() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().race_names(true).start().unwrap();
    let race = client(&bench, "race.py", RACE_PY);
    let py = python();
    let n = dns::RACE_COUNT;
    let out = Exec::new(&bench).policy(POLICY).limit(Duration::from_secs(120)).run(&[
        py.to_str().unwrap(),
        race.to_str().unwrap(),
        "1",
        &n.to_string(),
        "80",
    ]);
    out.expect_code(0);
    let v: Value = serde_json::from_str(out.ran.stdout.trim())
        .unwrap_or_else(|e| panic!("race.py output ({e}): {}\n{}", out.ran.stdout, out.ran.stderr));
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), n as usize);

    let mut failures = vec![];
    let mut seen = BTreeSet::new();
    for r in results {
        let i = r["n"].as_u64().unwrap() as u32;
        let want = dns::race_addr(i);
        let got: Option<IpAddr> = r["addr"].as_str().and_then(|a| a.parse().ok());
        let hello = format!("hello from {}\n", SocketAddr::new(want, 80));
        if r["ok"] != true || got != Some(want) || r["body"] != hello.as_str() {
            failures.push(r.to_string());
        }
        if let Some(ip) = got {
            seen.insert(ip);
        }
    }
    println!("race: {} of {n} ok in {:?}", n as usize - failures.len(), out.ran.elapsed);
    assert!(failures.is_empty(), "{} of {n} trials failed:\n{}\nlog:\n{}", failures.len(), failures.join("\n"), out.log.raw);
    // Every trial used its own, never-before-seen address: 500 IPv4, 500 IPv6.
    assert_eq!(seen.len(), n as usize);
    assert_eq!(seen.iter().filter(|ip| ip.is_ipv4()).count(), 500);
    assert_eq!(seen.iter().filter(|ip| ip.is_ipv6()).count(), 500);
    assert!(out.log.only("tcp").records.is_empty(), "{}", out.log.raw);

    // Control: without the lookup, the same addresses are closed (so the
    // successes above came from learning, not from an open door).
    let r = Exec::new(&bench)
        .policy(POLICY)
        .steps(&[("v4", "$PY $SOCK tcp 192.0.2.1 80"), ("v6", "$PY $SOCK tcp 2001:db8:1000::3e8 80")]);
    r.sock_errno("v4", "connect", "EPERM");
    r.sock_errno("v6", "connect", "EPERM");
}

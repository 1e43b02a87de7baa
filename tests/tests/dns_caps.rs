//! Learned-address caps never evict an address the endpoint has a live
//! connection to (the agent asks the kernel's socket diagnostics in the
//! workload's namespace, `agent/src/live.rs`): with `--max-names 1`, a
//! second name cannot push out the first while a connection to the first
//! is open, and can once it closed.

mod common;

use common::Exec;
use portcullis_tests::{Bench, require_root};
use serde_json::Value;

const POLICY: &str = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}, {matchName: other.example.test}]
    ports: [{port: 7}, {port: 443}]
dns:
  servers: ["198.51.100.53"]
"#;

#[test]
fn a_cap_never_evicts_an_address_with_a_live_connection() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().tcp_echo(true).start().unwrap();
    let r = Exec::new(&bench).policy(POLICY).args(&["--max-names", "1"]).steps(&[
        // A connection to api.example.test (203.0.113.10) for 3 s, in the
        // background; it also tries a new connection at 1.5 s.
        ("hold", "$PY $HOLD api.example.test 7 3 0.5 1.5 &"),
        ("settle", "sleep 0.5"),
        // One name only: other.example.test would evict api's address, which
        // has a live connection, so other's address is refused (stripped).
        ("other", "dig +time=2 +tries=1 +short other.example.test A"),
        ("api-new", "$PY $SOCK tcp 203.0.113.10 443"),
        ("other-new", "$PY $SOCK tcp 203.0.113.20 443"),
        ("hold-ends", "sleep 3"),
        // The connection is closed: now api's address gives way.
        ("other-again", "dig +time=2 +tries=1 +short other.example.test A"),
        ("other-then", "$PY $SOCK tcp 203.0.113.20 443"),
        ("api-then", "$PY $SOCK tcp 203.0.113.10 443"),
    ]);
    r.outcome.expect_code(0);
    let st = r.get("hold");
    let v: Value = serde_json::from_str(st.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {st:?}"));
    let pings = v["pings"].as_array().unwrap();
    assert!(pings.len() >= 4 && pings.iter().all(|p| p["ok"] == true), "{v}");
    assert_eq!(v["probes"][0]["ok"], true, "a new connection to the live address: {v}");
    r.ok("other", "");
    assert_eq!(r.sock("api-new")["ok"], true, "the live address stayed learned");
    r.sock_errno("other-new", "connect", "EPERM");
    r.ok("other-again", "203.0.113.20\n");
    assert_eq!(r.sock("other-then")["ok"], true);
    r.sock_errno("api-then", "connect", "EPERM");
}

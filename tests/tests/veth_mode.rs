//! The pod's veth as the whole enforcement (`portcullis exec --veth-only`:
//! no cgroup hook, what a gVisor or Kata pod gets): names, learned
//! addresses, DNS taken off the wire, denied ranges, rogue resolvers, every
//! protocol; judged per packet on the host side of the pod's veth.

mod common;

use common::{Exec, s};
use portcullis_tests::{Bench, require_root};

const POLICY: &str = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}]
    ports: [{port: 443, protocol: TCP}]
dns:
  servers: ["198.51.100.53", "2001:db8:53::53"]
"#;

const CURL: &str = "curl -sS --max-time 2";

fn veth_only(bench: &Bench) -> Exec<'_> {
    let node = bench.node_netns_path().display().to_string();
    Exec::new(bench).policy(POLICY).args(&["--veth-netns", &node, "--veth-only"])
}

#[test]
fn names_and_learned_addresses_on_the_veth_alone() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let r = veth_only(&bench).steps(&[
        ("direct", &format!("{CURL} http://203.0.113.20:80/")),
        ("v4", &format!("{CURL} -4 http://api.example.test:443/")),
        ("v6", &format!("{CURL} -6 http://api.example.test:443/")),
        ("port80", &format!("{CURL} -4 http://api.example.test:80/")),
        ("other", &format!("{CURL} -4 http://other.example.test:443/")),
        ("metadata", &format!("{CURL} http://169.254.169.254:80/")),
    ]);
    r.outcome.expect_code(0);
    r.ok("v4", "hello from 203.0.113.10:443\n");
    r.ok("v6", "hello from [2001:db8:100::10]:443\n");
    let st = r.fails("other", 6, 1500);
    assert!(st.stderr.contains("Could not resolve host: other.example.test"), "{}", st.stderr);
    // No socket hook: the SYN is dropped on the veth, curl times out (28).
    for step in ["direct", "port80", "metadata"] {
        r.fails(step, 28, 3000);
    }
    let log = r.log();
    log.expect("203.0.113.20", 80, &[("reason", s("denied-default")), ("hook", s("tc-egress"))]);
    log.expect("169.254.169.254", 80, &[("reason", s("denied-range")), ("hook", s("tc-egress"))]);
    log.expect("203.0.113.10", 80, &[("reason", s("denied-default")), ("host", s("api.example.test"))]);
}

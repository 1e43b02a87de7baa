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

/// How the agent attaches: tcx where the kernel has it, and clsact
/// (forced) everywhere, so both are tested on any kernel.
fn modes() -> Vec<&'static str> {
    if common::cni::kernel_has_tcx() { vec!["tcx", "clsact"] } else { vec!["clsact"] }
}

fn veth_only<'b>(bench: &'b Bench, policy: &str, mode: &str) -> Exec<'b> {
    let node = bench.node_netns_path().display().to_string();
    let e = Exec::new(bench).policy(policy).args(&["--veth-netns", &node, "--veth-only"]).env("PORTCULLIS_LOG_LEVEL", "info");
    if mode == "clsact" { e.env("PORTCULLIS_DISABLE_KERNEL_FEATURES", "tcx") } else { e }
}

#[test]
fn names_and_learned_addresses_on_the_veth_alone() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    for mode in modes() {
        names_and_learned_addresses(&bench, mode);
    }
}

fn names_and_learned_addresses(bench: &Bench, mode: &str) {
    let r = veth_only(bench, POLICY, mode).steps(&[
        ("direct", &format!("{CURL} http://203.0.113.20:80/")),
        ("v4", &format!("{CURL} -4 http://api.example.test:443/")),
        ("v6", &format!("{CURL} -6 http://api.example.test:443/")),
        ("port80", &format!("{CURL} -4 http://api.example.test:80/")),
        ("other", &format!("{CURL} -4 http://other.example.test:443/")),
        ("metadata", &format!("{CURL} http://169.254.169.254:80/")),
        // DNS over TCP on the wire: handed to the agent's listener.
        ("tcp-allowed", "dig +tcp +short +time=2 +tries=1 @198.51.100.53 api.example.test A"),
        ("tcp-refused", "dig +tcp +time=2 +tries=1 @198.51.100.53 other.example.test A"),
        ("tcp-rogue", "dig +tcp +time=2 +tries=1 @198.51.100.99 api.example.test A"),
    ]);
    r.outcome.expect_code(0);
    let attached = format!("veth programs attach with {mode}");
    assert!(r.outcome.ran.stderr.contains(&attached), "{attached}: {}", r.outcome.ran.stderr);
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
    let rec = log.expect("169.254.169.254", 80, &[("reason", s("denied-range")), ("hook", s("tc-egress"))]);
    // No process on the veth: the interface instead.
    assert!(rec["ifindex"].as_u64().is_some_and(|i| i > 1) && rec.get("pid").is_none(), "{rec}");
    log.expect("203.0.113.10", 80, &[("reason", s("denied-default")), ("host", s("api.example.test"))]);
}

/// A CNI's program on the same veth (attached before the agent started,
/// at the tail as Cilium attaches) still sees what the agent allows: the
/// agent's programs go in front and hand allowed packets on. The stand-in
/// drops TCP to 8080, which the policy allows: that connection failing
/// shows the stand-in ran after the agent's program for an allowed packet.
#[test]
fn a_cni_program_after_ours_still_sees_allowed_packets() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    for mode in modes() {
        cni_after_ours(&bench, mode);
    }
}

fn cni_after_ours(bench: &Bench, mode: &str) {
    let policy = "egress:\n  - toFQDNs: [{matchName: api.example.test}]\n    ports: [{port: 443}, {port: 8080}]\n\
                  dns:\n  servers: [\"198.51.100.53\"]\n";
    let steps = [
        ("443", format!("{CURL} -4 http://api.example.test:443/")),
        ("8080", format!("{CURL} -4 http://api.example.test:8080/")),
        ("metadata", format!("{CURL} http://169.254.169.254:80/")),
    ];
    let refs: Vec<(&str, &str)> = steps.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let run = || veth_only(bench, policy, mode).steps(&refs);
    let without = run();
    without.ok("443", "hello from 203.0.113.10:443\n");
    without.ok("8080", "hello from 203.0.113.10:8080\n");
    let cni = common::cni::StandInCni::attach(bench, "pod", 8080, mode == "tcx");
    let with = run();
    with.ok("443", "hello from 203.0.113.10:443\n");
    with.fails("8080", 28, 3000);
    with.fails("metadata", 28, 3000);
    with.log().expect("169.254.169.254", 80, &[("reason", s("denied-range")), ("hook", s("tc-egress"))]);
    drop(cni);
}

/// A resolver served on the node itself (a node-local DNS cache, listening
/// on its own address in the node's namespace): a pod's DNS over TCP to it
/// still goes through the agent's gate, never straight to that listener
/// (a refused name is answered NXDOMAIN and the listener sees nothing).
#[test]
fn tcp_dns_to_a_node_local_resolver_goes_through_the_gate() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let node_ns = bench.node_ns_name().to_owned();
    let ip =
        |args: &[&str]| assert!(std::process::Command::new("ip").args(["-n", &node_ns]).args(args).status().unwrap().success());
    ip(&["addr", "add", "169.254.20.10/32", "dev", "lo"]);
    let local = common::target::Recorder::listen_in_node(&bench, "tcp", "169.254.20.10", 53);
    let policy = "egress:\n  - toFQDNs: [{matchName: api.example.test}]\n    ports: [{port: 443}]\n\
                  dns:\n  servers: [\"169.254.20.10\", \"198.51.100.53\"]\n";
    for mode in modes() {
        let r =
            veth_only(&bench, policy, mode).steps(&[("tcp", "dig +tcp +time=2 +tries=1 @169.254.20.10 other.example.test A")]);
        assert!(r.get("tcp").stdout.contains("status: NXDOMAIN"), "{mode}: {:?}", r.get("tcp"));
        assert!(local.arrivals().is_empty(), "{mode}: the pod reached the node's own listener");
    }
    ip(&["addr", "del", "169.254.20.10/32", "dev", "lo"]);
}

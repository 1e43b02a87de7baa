//! The gVisor harness (`portcullis_tests::gvisor`) on a bench pod, with no
//! agent: the "works without enforcement" half of the TC-datapath tests.
//! A sandbox's traffic leaves through the Sentry's own network stack, crosses
//! the pod's veth (where TC hooks), and reaches the bench's hosts, including
//! the metadata address. Needs root and Debian's `runsc`.

mod common;

use common::TestCgroup;
use portcullis_tests::gvisor::{self, Sandbox};
use portcullis_tests::{Bench, addr, require_root, servers::python};
use serde_json::Value;
use std::time::Duration;

const PROBE_PY: &str = include_str!("../clients/gvisor_probe.py");
const LIMIT: Duration = Duration::from_secs(30);

/// python3 gvisor_probe.py with the API name, its v6 address, metadata,
/// and the UDP echo port.
fn probe_cmd(bench: &Bench) -> Vec<String> {
    let script = common::client(bench, "gvisor_probe.py", PROBE_PY);
    let (name, v6, metadata, port) = ("api.example.test", addr::API_V6, addr::METADATA_V4, addr::UDP_ECHO_PORT);
    vec![
        python().display().to_string(),
        script.display().to_string(),
        name.into(),
        v6.to_string(),
        metadata.to_string(),
        port.to_string(),
    ]
}

/// Runs the probe in the sandbox; its JSON result.
fn probe(sandbox: &Sandbox<'_>, bench: &Bench) -> Value {
    let cmd = probe_cmd(bench);
    let run = sandbox.run(&cmd.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    eprintln!("gvisor run took {:?}", run.elapsed);
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("probe output ({e}): {run:?}"))
}

/// Packets the pod sent into the node: the host-side veth's receive count.
fn veth_rx_packets(bench: &Bench) -> u64 {
    let out = bench.cmd_in_node("ip").args(["-s", "-j", "link", "show", bench.node_veth("pod")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or_else(|| panic!("no rx count: {v}"))
}

/// No runsc process (sandbox, gofer, ptrace stubs) is left in the cgroup.
fn assert_empty(cg: &TestCgroup) {
    let procs = std::fs::read_to_string(cg.path.join("cgroup.procs")).unwrap();
    assert!(procs.trim().is_empty(), "left in {}: {procs}", cg.path.display());
}

/// The pod's kernel-side addresses are back: a host process in the pod
/// reaches the API host again (v4 and v6).
fn assert_pod_restored(bench: &Bench) {
    for (flag, want) in [("-4", "hello from 203.0.113.10:80\n"), ("-6", "hello from [2001:db8:100::10]:80\n")] {
        let out =
            bench.cmd_in_pod("pod", "curl").args(["-sS", "--max-time", "3", flag, "http://api.example.test/"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{}", String::from_utf8_lossy(&out.stderr));
    }
}

fn ok<'v>(v: &'v Value, probe: &str) -> &'v Value {
    assert_eq!(v[probe]["ok"], true, "{probe}: {v}");
    &v[probe]
}

#[test]
fn sandbox_traffic_crosses_the_veth_and_reaches_every_host_without_enforcement() {
    if !require_root() || !gvisor::require_runsc() {
        return;
    }
    let bench = Bench::start().unwrap();
    let cg = TestCgroup::create("gvisor");
    let rx_before = veth_rx_packets(&bench);
    let sandbox = Sandbox::new(&bench, "pod", &cg.path).timeout(LIMIT);
    let v = probe(&sandbox, &bench);
    let rx = veth_rx_packets(&bench) - rx_before;

    assert_eq!(v["uname"], "4.4.0", "gVisor's Sentry answers uname: {v}");
    // runsc's default spec: CAP_KILL, CAP_NET_BIND_SERVICE, CAP_AUDIT_WRITE.
    assert_eq!(v["cap_eff"], "0000000020000420", "{v}");
    assert_eq!(ok(&v, "resolve")["addrs"], serde_json::json!(["203.0.113.10"]));
    let http = ok(&v, "http_name");
    assert_eq!((&http["status"], &http["body"]), (&"HTTP/1.0 200 OK".into(), &"hello from 203.0.113.10:80\n".into()));
    assert_eq!(ok(&v, "http_v6")["body"], "hello from [2001:db8:100::10]:8080\n");
    assert_eq!(ok(&v, "metadata")["body"], "hello from 169.254.169.254:80\n");
    assert_eq!(ok(&v, "udp_echo")["body"], "gvisor-udp");
    // Ping sockets work without privileges; raw sockets are off by default.
    ok(&v, "icmp_dgram");
    assert_eq!(v["icmp_raw"]["ok"], false, "{v}");

    // Proven at the targets: dnsmasq and hostd saw the pod's address.
    let dns_log = std::fs::read_to_string(bench.dns_log_path()).unwrap();
    assert!(dns_log.contains("query[A] api.example.test from 198.18.1.2"), "{dns_log}");
    let hostd = std::fs::read_to_string(bench.hostd_log_path()).unwrap();
    // (The bench's readiness probe connects too, but sends no request.)
    for (from, to) in [
        ("198.18.1.2", "203.0.113.10:80"),
        ("[2001:db8:ff01::2]", "[2001:db8:100::10]:8080"),
        ("198.18.1.2", "169.254.169.254:80"),
    ] {
        let reached =
            hostd.lines().any(|l| l.contains(&format!("tcp {from}:")) && l.contains(&format!("-> {to} 'GET / HTTP/1.0'")));
        assert!(reached, "{to} not reached from {from}:\n{hostd}");
    }
    // Every probe crossed the host-side veth: 3 TCP connections (≥ 5 packets
    // each), the DNS query, the UDP datagram, the ping.
    eprintln!("host-side veth received {rx} packets");
    assert!(rx >= 18, "only {rx} packets crossed {}", bench.node_veth("pod"));

    assert_empty(&cg);
    assert_pod_restored(&bench);
    // Another sandbox on the same pod finds the addresses again.
    assert_eq!(ok(&probe(&sandbox, &bench), "http_name")["body"], "hello from 203.0.113.10:80\n");
}

#[test]
fn net_raw_sandbox_sends_raw_packets() {
    if !require_root() || !gvisor::require_runsc() {
        return;
    }
    let bench = Bench::start().unwrap();
    let cg = TestCgroup::create("gvisor-raw");
    let v = probe(&Sandbox::new(&bench, "pod", &cg.path).net_raw(true).timeout(LIMIT), &bench);
    assert_eq!(v["cap_eff"], "0000000020002420", "CAP_NET_RAW added: {v}");
    assert_eq!(ok(&v, "icmp_raw")["peer"], "203.0.113.10");
    assert_empty(&cg);
}

#[test]
fn exit_code_stdio_and_timeout() {
    if !require_root() || !gvisor::require_runsc() {
        return;
    }
    let bench = Bench::start().unwrap();
    let cg = TestCgroup::create("gvisor-exit");
    let run = gvisor::run(&bench, "pod", &cg.path, &["sh", "-c", "echo out; echo err >&2; exit 3"], LIMIT).unwrap();
    assert_eq!((run.code, run.stdout.as_str(), run.stderr.as_str()), (3, "out\n", "err\n"), "{run:?}");
    eprintln!("gvisor run of sh took {:?}", run.elapsed);

    // A cgroup that does not exist: runsc never starts, and the error says so.
    let err = gvisor::run(&bench, "pod", &cg.path.join("missing"), &["true"], LIMIT).unwrap_err();
    assert!(format!("{err:#}").contains("runsc did not start"), "{err:#}");

    // A timeout kills the sandbox, and the pod still gets its addresses back.
    let err = gvisor::run(&bench, "pod", &cg.path, &["sleep", "60"], Duration::from_secs(2)).unwrap_err();
    assert!(format!("{err:#}").contains("timed out"), "{err:#}");
    assert_empty(&cg);
    assert_pod_restored(&bench);
}

//! The veth backstop for a pod whose cgroup hooks are on: what reaches the
//! pod's veth without a socket of its cgroup (a user-space TCP over a
//! packet socket, a DNS query written as a raw Ethernet frame, datagrams a
//! TUN device forwards) is judged per packet there. Each attack runs first
//! with the cgroup hooks alone, where it gets through (shown at the
//! target), then with the backstop, where nothing arrives.

mod common;

use common::{Exec, client, s, target::Recorder};
use portcullis_tests::{Bench, require_root};
use serde_json::Value;

const WIRE_PY: &str = include_str!("../clients/wire.py");

const POLICY: &str = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}]
    ports: [{port: 443, protocol: TCP}]
dns:
  servers: ["198.51.100.53"]
"#;

const META4: &str = "169.254.169.254";
const TCP_PORT: u16 = 7777;
const TUN_PORT: u16 = 7778;

fn node_mac(bench: &Bench) -> String {
    let out = bench.cmd_in_node("cat").arg(format!("/sys/class/net/{}/address", bench.node_veth("pod"))).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn dns_log_mentions(bench: &Bench, name: &str) -> bool {
    std::fs::read_to_string(bench.dns_log_path()).unwrap_or_default().contains(name)
}

#[test]
fn what_bypasses_the_cgroup_hooks_is_stopped_on_the_veth() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let wire = client(&bench, "wire.py", WIRE_PY).display().to_string();
    let tcp = Recorder::listen(&bench, "tcp", META4, TCP_PORT);
    let tun = Recorder::listen(&bench, "udp", META4, TUN_PORT);
    let (mac, src) = (node_mac(&bench), bench.pod_v4("pod").to_string());
    let steps = |leak: &str| {
        [
            ("utcp", format!("$PY {wire} packet-tcp eth0 {mac} {src} {META4} {TCP_PORT}")),
            ("dns", format!("$PY {wire} packet-dns eth0 {mac} {src} 198.51.100.53 {leak}")),
            ("tun", format!("$PY {wire} tun-forward {META4} {TUN_PORT} 5")),
        ]
    };
    let run = |leak: &str, backstop: bool| {
        let steps = steps(leak);
        let refs: Vec<(&str, &str)> = steps.iter().map(|(n, c)| (*n, c.as_str())).collect();
        let node = bench.node_netns_path().display().to_string();
        let mut e = Exec::new(&bench).policy(POLICY).arg("--keep-caps");
        if backstop {
            e = e.args(&["--veth-netns", &node]);
        }
        let r = e.steps(&refs);
        r.outcome.expect_code(0);
        r
    };

    // The cgroup hooks alone: every one gets through.
    let r = run("secret-one.leak.test", false);
    assert_eq!(r.sock("utcp")["syn_ack"], true, "{:?}", r.get("utcp"));
    assert!(!tcp.arrivals().is_empty(), "user-space TCP reached the metadata host");
    assert!(dns_log_mentions(&bench, "secret-one.leak.test"), "the raw DNS frame reached the resolver");
    assert_eq!(r.sock("tun")["sent"], 5);
    assert!(!tun.arrivals().is_empty(), "the TUN's forwarded datagrams reached the metadata host");
    let (tcp_before, tun_before) = (tcp.arrivals().len(), tun.arrivals().len());

    // With the backstop on the pod's veth: nothing.
    let r = run("secret-two.leak.test", true);
    assert_eq!(r.sock("utcp")["syn_ack"], false, "{:?}", r.get("utcp"));
    assert_eq!(tcp.arrivals().len(), tcp_before, "user-space TCP got through the backstop");
    assert!(!dns_log_mentions(&bench, "secret-two.leak.test"), "a refused name reached the resolver");
    // The agent answered the frame itself, as the resolver.
    let dns = r.sock("dns");
    assert_eq!(
        (dns["answer"].clone(), dns["rcode"].clone(), dns["src"].clone()),
        (Value::Bool(true), 3.into(), s("198.51.100.53")),
        "{dns}"
    );
    assert_eq!(tun.arrivals().len(), tun_before, "the TUN's datagrams got through the backstop");
    let log = r.log();
    log.expect(META4, TCP_PORT, &[("reason", s("denied-range")), ("hook", s("tc-egress")), ("protocol", s("tcp"))]);
    log.expect(META4, TUN_PORT, &[("reason", s("denied-range")), ("hook", s("tc-egress")), ("protocol", s("udp"))]);
    log.expect("198.51.100.53", 53, &[("reason", s("denied-dns-name")), ("host", s("secret-two.leak.test"))]);
}

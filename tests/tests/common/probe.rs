//! The end-to-end cases of the veth datapath for workloads no socket hook
//! sees (gVisor, Kata): `clients/veth_probe.py`'s case list, and what each
//! case must show without enforcement and with the agent on the pod's veth
//! alone: at the client, at the targets (the inet sniffer, hostd's and
//! dnsmasq's logs, read only for the run's own window), and in the blocked
//! log.

use super::target::Recorder;
use super::{Enter, Exec, Log, Running, VETH_ATTACHED, client, s};
use portcullis_tests::{Bench, addr, dns, servers::python};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub const PROBE_PY: &str = include_str!("../../clients/veth_probe.py");

/// The allowed name on 443, the rebinding names (allowed, so their answers
/// are forwarded and stripped), and the race names (one label under
/// `.test`, so not other.example.test) on 80.
pub const POLICY: &str = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}, {matchName: meta.example.test}, {matchName: meta6.example.test}]
    ports: [{port: 443, protocol: TCP}]
  - toFQDNs: [{matchPattern: "*.test"}]
    ports: [{port: 80, protocol: TCP}]
dns:
  servers: ["198.51.100.53", "2001:db8:53::53"]
"#;

/// `portcullis exec --policy POLICY --veth-pod POD --veth-netns NODE
/// --veth-only -- sleep` in the background, once it enforces: the agent on
/// the pod's veth alone, its command a placeholder in the root namespace
/// (the pod's workload is a sandbox or a guest, not its child). It reads
/// the pod's addresses off `eth0` as it attaches, so it starts before
/// runsc or the Kata "VM" takes them.
pub fn veth_only_agent(bench: &Bench) -> Running {
    let (pod, node) = (bench.pod_netns_path("pod"), bench.node_netns_path());
    let (pod, node) = (pod.to_str().unwrap(), node.to_str().unwrap());
    let mut agent = Exec::new(bench)
        .policy(POLICY)
        .enter(Enter::AsIs)
        .args(&["--veth-pod", pod, "--veth-netns", node, "--veth-only"])
        .spawn(&["sleep", "3600"]);
    agent.wait_for(VETH_ATTACHED, Duration::from_secs(20));
    agent
}

/// Each attack case and the address it goes to: without enforcement, the
/// sniffer must see the pod reach every one of them.
const DENIED: [(&str, &str); 11] = [
    ("direct", "203.0.113.20"),
    ("metadata", "169.254.169.254"),
    ("rebind", "169.254.169.254"),
    ("cluster", "10.96.0.10"),
    ("metadata6", "fd00:ec2::254"),
    ("rebind6", "fd00:ec2::254"),
    ("mapped", "169.254.169.254"),
    ("rogue", "198.51.100.99"),
    ("udp", "203.0.113.20"),
    ("ping", "203.0.113.20"),
    ("ping6", "2001:db8:100::20"),
];

/// `python3 veth_probe.py CASES...`: every case, and 1,000 race trials if
/// `race`. `tag` makes the rogue resolver's query name unique to the run.
pub fn command(bench: &Bench, tag: &str, race: bool) -> Vec<String> {
    let script = client(bench, "veth_probe.py", PROBE_PY);
    let mut cmd = vec![python().display().to_string(), script.display().to_string()];
    cmd.extend(
        [
            "allowed4,name,api.example.test,443,4".to_owned(),
            "allowed6,name,api.example.test,443,6".into(),
            "other,name,other.example.test,443,4".into(),
            "direct,http,203.0.113.20,443".into(),
            "metadata,http,169.254.169.254,80".into(),
            // A client that cached the address goes there anyway.
            "rebind,name,meta.example.test,443,4,169.254.169.254".into(),
            "rebind6,name,meta6.example.test,443,6,fd00:ec2::254".into(),
            "cluster,http,10.96.0.10,80".into(),
            "metadata6,http,fd00:ec2::254,80".into(),
            "mapped,http,::ffff:169.254.169.254,8080".into(),
            format!("rogue,dns,198.51.100.99,rogue-{tag}.example.test"),
            format!("udp,udp,203.0.113.20,{}", addr::UDP_ECHO_PORT),
            "ping,ping,203.0.113.20".into(),
            "ping6,ping,2001:db8:100::20".into(),
        ]
        .into_iter()
        .chain(race.then(|| format!("race,race,1,{},80", dns::RACE_COUNT))),
    );
    cmd
}

/// The probe's JSON output.
pub fn parse(stdout: &str, context: &dyn std::fmt::Debug) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("veth_probe.py output ({e}): {context:?}"))
}

/// What the targets had seen before a run: only what came later counts.
pub struct Window {
    dns: usize,
    hostd: usize,
    sniffed: usize,
}

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

impl Window {
    pub fn open(bench: &Bench, sniffer: &Recorder) -> Window {
        let sniffed = sniffer.arrivals().len();
        Window { dns: read(bench.dns_log_path()).len(), hostd: read(bench.hostd_log_path()).len(), sniffed }
    }
    /// dnsmasq's query log since.
    pub fn dns(&self, bench: &Bench) -> String {
        read(bench.dns_log_path())[self.dns..].to_owned()
    }
    /// hostd's connection log since.
    pub fn hostd(&self, bench: &Bench) -> String {
        read(bench.hostd_log_path())[self.hostd..].to_owned()
    }
    /// Packets from the pod's addresses that reached inet since, by
    /// destination.
    pub fn sent_by_pod(&self, bench: &Bench, sniffer: &Recorder) -> Vec<String> {
        let pod = [bench.pod_v4("pod").to_string(), bench.pod_v6("pod").to_string()];
        let all = sniffer.arrivals();
        all[self.sniffed.min(all.len())..]
            .iter()
            .filter(|a| a["src"].as_str().is_some_and(|s| pod.iter().any(|p| p == s)))
            .map(|a| a["dst"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

fn case<'v>(v: &'v Value, name: &str) -> &'v Value {
    v.get(name).unwrap_or_else(|| panic!("no case {name} in {v}"))
}

fn ok_body(v: &Value, name: &str, body: &str) {
    let c = case(v, name);
    assert!(c["ok"] == true && c["body"] == body, "{name}: want {body:?}, got {c}");
}

fn blocked(v: &Value, name: &str, stage: &str) {
    let c = case(v, name);
    assert!(c["ok"] == false && c["stage"] == stage, "{name}: want a failure at {stage}, got {c}");
}

/// Without enforcement every attack works: the probe's view, and the
/// targets' (the traffic really reached them from the pod).
pub fn assert_unenforced(bench: &Bench, v: &Value, w: &Window, sniffer: &Recorder, tag: &str) {
    ok_body(v, "allowed4", "hello from 203.0.113.10:443\n");
    ok_body(v, "allowed6", "hello from [2001:db8:100::10]:443\n");
    ok_body(v, "other", "hello from 203.0.113.20:443\n");
    ok_body(v, "direct", "hello from 203.0.113.20:443\n");
    ok_body(v, "metadata", "hello from 169.254.169.254:80\n");
    ok_body(v, "rebind", "hello from 169.254.169.254:443\n");
    assert_eq!(case(v, "rebind")["addrs"], serde_json::json!(["169.254.169.254"]), "{v}");
    ok_body(v, "rebind6", "hello from [fd00:ec2::254]:443\n");
    ok_body(v, "cluster", "hello from 10.96.0.10:80\n");
    ok_body(v, "metadata6", "hello from [fd00:ec2::254]:80\n");
    ok_body(v, "mapped", "hello from 169.254.169.254:8080\n");
    ok_body(v, "udp", "veth-probe-udp");
    let rogue = case(v, "rogue");
    assert!(rogue["ok"] == true && rogue["peer"] == "198.51.100.99" && rogue["rcode"] == 3, "rogue: {rogue}");
    for name in ["ping", "ping6"] {
        assert_eq!(case(v, name)["ok"], true, "{name}: {v}");
    }
    let arrived: BTreeSet<String> = w.sent_by_pod(bench, sniffer).into_iter().collect();
    for (name, dst) in DENIED {
        assert!(arrived.contains(dst), "{name}: nothing from the pod reached {dst}; arrived: {arrived:?}");
    }
    let hostd = w.hostd(bench);
    for to in ["169.254.169.254:80", "169.254.169.254:443", "10.96.0.10:80", "[fd00:ec2::254]:80", "203.0.113.20:443"] {
        assert!(hostd.contains(&format!("-> {to} 'GET / HTTP/1.0'")), "{to} not reached:\n{hostd}");
    }
    let dns = w.dns(bench);
    let (pod, rogue) = (bench.pod_v4("pod"), format!("rogue-{tag}.example.test"));
    assert!(dns.contains(&format!("query[A] {rogue} from {pod}")), "the rogue query did not reach dnsmasq:\n{dns}");
}

fn rec(reason: &str, protocol: &str) -> Vec<(&'static str, Value)> {
    vec![("verdict", s("blocked")), ("reason", s(reason)), ("protocol", s(protocol)), ("hook", s("tc-egress"))]
}

/// With the agent on the veth alone: the allowed name works, every attack
/// fails at the client, nothing of them reaches a target, and each has its
/// record in the blocked log.
pub fn assert_enforced(bench: &Bench, v: &Value, log: &Log, w: &Window, sniffer: &Recorder, tag: &str) {
    ok_body(v, "allowed4", "hello from 203.0.113.10:443\n");
    ok_body(v, "allowed6", "hello from [2001:db8:100::10]:443\n");
    // Refused by the agent, which answers NXDOMAIN itself.
    let other = case(v, "other");
    assert!(other["stage"] == "resolve" && other["gai"] == -2, "other: want EAI_NONAME, got {other}");
    // Allowed names whose only address is in a denied range: the answer
    // arrives without it, and the cached address does not work either.
    for name in ["rebind", "rebind6"] {
        let c = case(v, name);
        assert!(c["ok"] == false && c["stage"] == "connect" && c["resolve"]["ok"] == false, "{name}: {c}");
    }
    for name in ["direct", "metadata", "cluster", "metadata6", "mapped"] {
        blocked(v, name, "connect");
    }
    blocked(v, "rogue", "answer");
    blocked(v, "udp", "echo");
    blocked(v, "ping", "reply");
    blocked(v, "ping6", "reply");

    // The targets: from the pod, only the allowed hosts were reached (DNS
    // to the trusted resolver goes out from the node, sent by the agent).
    let mut allowed: BTreeSet<String> = [addr::API_V4.to_string(), addr::API_V6.to_string()].into();
    allowed.extend((1..=dns::RACE_COUNT).map(|n| dns::race_addr(n).to_string()));
    let strays: BTreeSet<String> = w.sent_by_pod(bench, sniffer).into_iter().filter(|d| !allowed.contains(d)).collect();
    assert!(strays.is_empty(), "the pod reached {strays:?} through the veth programs");
    let hostd = w.hostd(bench);
    for ip in ["169.254.169.254", "10.96.0.10", "[fd00:ec2::254]", "203.0.113.20"] {
        assert!(!hostd.contains(&format!("-> {ip}:")), "{ip} was reached:\n{hostd}");
    }
    let dns = w.dns(bench);
    for name in ["other.example.test".to_owned(), format!("rogue-{tag}.example.test")] {
        assert!(!dns.contains(&name), "{name} reached the resolver:\n{dns}");
    }

    log.expect_well_formed("exec-");
    log.expect("203.0.113.20", 443, &rec("denied-default", "tcp"));
    for (dst, port) in [
        ("169.254.169.254", 80),
        ("169.254.169.254", 443),
        ("169.254.169.254", 8080),
        ("10.96.0.10", 80),
        ("fd00:ec2::254", 80),
        ("fd00:ec2::254", 443),
    ] {
        log.expect(dst, port, &rec("denied-range", "tcp"));
    }
    log.expect("198.51.100.99", 53, &rec("denied-dns-server", "udp"));
    log.expect("203.0.113.20", addr::UDP_ECHO_PORT, &rec("denied-default", "udp"));
    log.expect("203.0.113.20", 0, &rec("denied-default", "icmp"));
    log.expect("2001:db8:100::20", 0, &rec("denied-default", "icmpv6"));
    log.expect("198.51.100.53", 53, &[("reason", s("denied-dns-name")), ("host", s("other.example.test"))]);
    // The stripped rebinding answers, naming the name that pointed there.
    log.expect("169.254.169.254", 0, &[("reason", s("denied-range")), ("host", s("meta.example.test"))]);
    log.expect("fd00:ec2::254", 0, &[("reason", s("denied-range")), ("host", s("meta6.example.test"))]);
}

/// 1,000 of 1,000 "resolve a new name, connect at once": each to the name's
/// own address, 500 over IPv4 and 500 over IPv6.
pub fn assert_race(v: &Value) {
    let race = case(v, "race");
    let trials = race["trials"].as_array().unwrap_or_else(|| panic!("race: {race}"));
    assert_eq!(trials.len(), dns::RACE_COUNT as usize);
    let mut failures = vec![];
    let mut seen = BTreeSet::new();
    for t in trials {
        let n = t["n"].as_u64().unwrap() as u32;
        let want = dns::race_addr(n);
        let hello = format!("hello from {}\n", SocketAddr::new(want, 80));
        let got: Option<IpAddr> = t["addr"].as_str().and_then(|a| a.parse().ok());
        if t["ok"] != true || got != Some(want) || t["body"] != hello.as_str() {
            failures.push(t.to_string());
        }
        seen.extend(got);
    }
    eprintln!("race: {} of {} ok in {} s", trials.len() - failures.len(), trials.len(), race["secs"]);
    assert!(failures.is_empty(), "{} trials failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(seen.iter().filter(|ip| ip.is_ipv4()).count(), 500);
    assert_eq!(seen.iter().filter(|ip| ip.is_ipv6()).count(), 500);
}

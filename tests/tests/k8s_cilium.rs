//! `portcullis agent` next to Cilium's socket load balancer, with a
//! stand-in (raw `cgroup/connect4` and `cgroup/sendmsg4` programs
//! rewriting a service address and port to a backend's, `k8s::rawbpf`):
//! attached as links (Cilium >= 1.14) above the kubelet pod parent,
//! Portcullis's programs run first and judge the ClusterIP the workload
//! asked for, and `toServices` also opens the Service's backends (its
//! EndpointSlices' ready addresses, on the target ports), where the packets
//! the pod's veth judges go; attached the legacy way without
//! `BPF_F_ALLOW_MULTI` (Cilium upgraded from < 1.14), the agent refuses to
//! start, says why, and attaches nothing.

mod common;
mod k8s;

use std::time::Duration;

use common::{attached, pins::PinDir, wait_for};
use k8s::{
    harness::{Kubelet, Workload, create_pod, free_addr, namespace, start_agent},
    rawbpf::{self, BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_UDP4_SENDMSG, BPF_F_ALLOW_MULTI},
};
use portcullis_tests::{Bench, fakeapi::FakeApi, require_root};
use serde_json::{Value, json};

const VIP: [u8; 4] = [192, 0, 2, 10];
const BACKEND: [u8; 4] = [203, 0, 113, 10];
/// The Service's HTTPS port and the backends' (its targetPort); the UDP
/// echo's port is the same on both (hostd serves all three).
const PORT: u16 = 443;
const TARGET: u16 = 8443;
const ECHO: u16 = 9999;

/// An EndpointSlice of the Service, its endpoints `(address, ready)`.
fn slice(name: &str, endpoints: &[(&str, bool)]) -> Value {
    let endpoints: Vec<Value> =
        endpoints.iter().map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}})).collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "ws-a", "labels": {"kubernetes.io/service-name": "control-plane"}},
        "addressType": "IPv4", "endpoints": endpoints,
        "ports": [{"name": "https", "port": TARGET}, {"name": "echo", "port": ECHO, "protocol": "UDP"}]})
}

#[test]
fn behind_a_socket_lb_verdicts_are_on_the_cluster_ip_and_the_backends_are_opened() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().pods(&["svc", "backend", "other"]).start().unwrap();
    let api = FakeApi::start().unwrap();
    let kubelet = Kubelet::new("k8s-lb", true);
    let above = kubelet.kubepods.parent().unwrap();
    let connect = rawbpf::load_lb(BPF_CGROUP_INET4_CONNECT, VIP, BACKEND, (PORT, TARGET));
    rawbpf::attach(&connect, above, BPF_CGROUP_INET4_CONNECT, BPF_F_ALLOW_MULTI).expect("the stand-in LB attaches");
    let sendmsg = rawbpf::load_lb(BPF_CGROUP_UDP4_SENDMSG, VIP, BACKEND, (ECHO, ECHO));
    rawbpf::attach(&sendmsg, above, BPF_CGROUP_UDP4_SENDMSG, BPF_F_ALLOW_MULTI).expect("its sendmsg4 too");
    let pins = PinDir::new("k8s-lb");
    api.apply(&namespace("ws-a", json!({}))).unwrap();
    api.apply(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "control-plane", "namespace": "ws-a"},
        "spec": {"clusterIP": "192.0.2.10", "clusterIPs": ["192.0.2.10"], "ports": [
            {"name": "https", "port": PORT, "targetPort": TARGET}, {"name": "echo", "port": ECHO, "protocol": "UDP"}]}}))
        .unwrap();
    api.apply(&slice("control-plane-a", &[("203.0.113.10", true), ("203.0.113.20", false)])).unwrap();
    let rule = |name: &str, app: &str, to: Value| {
        json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "EgressPolicy", "metadata": {"name": name, "namespace": "ws-a"},
            "spec": {"podSelector": {"matchLabels": {"app": app}}, "egress": [to]}})
    };
    let service = json!({"toServices": [{"namespace": "ws-a", "name": "control-plane"}],
        "ports": [{"port": PORT}, {"port": ECHO, "protocol": "UDP"}]});
    api.apply(&rule("svc", "svc", service)).unwrap();
    api.apply(&rule("backend", "backend", json!({"toCIDRs": ["203.0.113.10/32"], "ports": [{"port": PORT}]}))).unwrap();
    api.apply(&rule("other", "other", json!({"toCIDRs": ["203.0.113.20/32"], "ports": [{"port": TARGET}]}))).unwrap();
    let mut pods = Vec::new();
    for app in ["svc", "backend", "other"] {
        let uid = create_pod(&api, "ws-a", app, json!({"app": app}));
        pods.push(Workload::start(&bench, &kubelet.create_pod(&uid, "BestEffort"), app));
    }
    let mut agent = start_agent(&bench, &api, &kubelet, &pins, free_addr());
    agent.wait_message("ready: every watch listed, pods reconciled");
    let [svc, backend, other] = pods.as_mut_slice() else { unreachable!() };
    // The ClusterIP is allowed at the socket; the LB takes the connection
    // to the backend's target port (where the bench's host answers, naming
    // it), which the veth lets through as the Service's backend.
    let body = wait_for("policies in force", Duration::from_secs(10), || svc.get("192.0.2.10", PORT).ok());
    assert_eq!(body.trim(), format!("hello from 203.0.113.10:{TARGET}"), "through the LB to the backend's target port");
    let log = bench.workdir().join("blocked.jsonl");
    let from = common::agree::mark(&bench, &log);
    svc.get("192.0.2.10", PORT).expect("again, now that the policies hold");
    // Unconnected UDP: judged at sendmsg on the ClusterIP, per packet
    // (cgroup_skb, the veth) on the backend the LB chose.
    svc.udp("192.0.2.10", ECHO).expect("a datagram to the ClusterIP, rewritten to the backend, and its echo");
    assert!(backend.connect("203.0.113.10", PORT).is_ok(), "the backend by its own address");
    assert!(
        backend.connect("192.0.2.10", PORT).unwrap_err().contains("EPERM"),
        "judged on the ClusterIP the workload asked for, before the LB rewrote it"
    );
    // Allowed the Service, svc reaches its backend directly too (the
    // documented consequence), on the target port only, and not a
    // not-ready endpoint of it.
    svc.connect("203.0.113.10", TARGET).expect("the Service's backend, directly");
    assert!(svc.connect("203.0.113.10", 80).unwrap_err().contains("EPERM"), "another port of the backend");
    assert!(svc.connect("203.0.113.20", TARGET).unwrap_err().contains("EPERM"), "a not-ready endpoint");
    // Not allowed the Service: neither its ClusterIP nor its backend.
    assert!(other.connect("192.0.2.10", PORT).unwrap_err().contains("EPERM"), "other: the ClusterIP");
    assert!(other.connect("203.0.113.10", TARGET).unwrap_err().contains("EPERM"), "other: the Service's backend");
    other.connect("203.0.113.20", TARGET).expect("other: its own CIDR rule");
    // explain agrees with every verdict of the three pods since (what
    // arrived at the backends after the LB's rewrite, each denial).
    let pods: Vec<String> = ["svc", "backend", "other"].iter().map(|p| common::agree::pod_addrs(&bench, p, "ws-a", p)).collect();
    let agreed = common::agree::ask_all(&bench, &bench.workdir().join("state"), &log, from, &pods.join(","));
    assert!(agreed.denials >= 5 && agreed.allowances >= 3, "{agreed:?}");
    // Churn: a second slice brings .20 in, the first one's .10 goes not
    // ready; the backends follow, aggregated over both slices.
    api.apply(&slice("control-plane-b", &[("203.0.113.20", true)])).unwrap();
    api.apply(&slice("control-plane-a", &[("203.0.113.10", false)])).unwrap();
    svc.eventually_ip("203.0.113.20", TARGET, true);
    svc.eventually_ip("203.0.113.10", TARGET, false);
    drop(agent);
}

#[test]
fn a_flag_less_program_above_makes_the_agent_refuse_to_start() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().start().unwrap();
    let api = FakeApi::start().unwrap();
    let kubelet = Kubelet::new("k8s-legacy-lb", true);
    let lb = rawbpf::load_lb(BPF_CGROUP_INET4_CONNECT, VIP, BACKEND, (PORT, TARGET));
    rawbpf::attach(&lb, kubelet.kubepods.parent().unwrap(), BPF_CGROUP_INET4_CONNECT, 0).expect("legacy attach without flags");
    let pins = PinDir::new("k8s-legacy-lb");
    let mut agent = start_agent(&bench, &api, &kubelet, &pins, free_addr());
    let status = wait_for("the agent to exit", Duration::from_secs(15), || agent.child.try_wait().unwrap());
    let stderr = std::fs::read_to_string(&agent.stderr).unwrap();
    assert_eq!(status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("BPF_F_ALLOW_MULTI") && stderr.contains("Cilium") && stderr.contains("half-attached"), "{stderr}");
    assert!(
        attached(&kubelet.kubepods).progs.is_empty(),
        "nothing attached at kubepods: {:?}",
        attached(&kubelet.kubepods).progs
    );
}

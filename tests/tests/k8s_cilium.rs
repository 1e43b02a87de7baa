//! `portcullis agent` next to Cilium's socket load balancer, with a
//! stand-in (a raw `cgroup/connect4` program rewriting a service address
//! to a backend, `k8s::rawbpf`): attached as links (Cilium >= 1.14) above
//! the kubelet pod parent, Portcullis's programs run first and judge the
//! ClusterIP the workload asked for; attached the legacy way without
//! `BPF_F_ALLOW_MULTI` (Cilium upgraded from < 1.14), the agent refuses to
//! start, says why, and attaches nothing.

mod common;
mod k8s;

use std::time::Duration;

use common::{attached, pins::PinDir, wait_for};
use k8s::{
    harness::{Kubelet, Workload, create_pod, free_addr, namespace, start_agent},
    rawbpf,
};
use portcullis_tests::{Bench, fakeapi::FakeApi, require_root};
use serde_json::json;

const VIP: [u8; 4] = [192, 0, 2, 10];
const BACKEND: [u8; 4] = [203, 0, 113, 10];

#[test]
fn behind_a_socket_lb_verdicts_are_on_the_cluster_ip() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().pods(&["svc", "backend"]).start().unwrap();
    let api = FakeApi::start().unwrap();
    let kubelet = Kubelet::new("k8s-lb", true);
    let lb = rawbpf::load_lb(VIP, BACKEND);
    let above = kubelet.kubepods.parent().unwrap();
    rawbpf::attach(&lb, above, rawbpf::BPF_F_ALLOW_MULTI).expect("the stand-in LB attaches above kubepods");
    let pins = PinDir::new("k8s-lb");
    api.apply(&namespace("ws-a", json!({}))).unwrap();
    api.apply(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "control-plane", "namespace": "ws-a"},
        "spec": {"clusterIP": "192.0.2.10", "clusterIPs": ["192.0.2.10"], "ports": [{"port": 443}]}}))
        .unwrap();
    let rule = |name: &str, app: &str, to: serde_json::Value| {
        json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "EgressPolicy", "metadata": {"name": name, "namespace": "ws-a"},
            "spec": {"podSelector": {"matchLabels": {"app": app}}, "egress": [to]}})
    };
    api.apply(&rule(
        "svc",
        "svc",
        json!({"toServices": [{"namespace": "ws-a", "name": "control-plane"}], "ports": [{"port": 443}]}),
    ))
    .unwrap();
    api.apply(&rule("backend", "backend", json!({"toCIDRs": ["203.0.113.10/32"], "ports": [{"port": 443}]}))).unwrap();
    let mut pods = Vec::new();
    for app in ["svc", "backend"] {
        let uid = create_pod(&api, "ws-a", app, json!({"app": app}));
        pods.push(Workload::start(&bench, &kubelet.create_pod(&uid, "BestEffort"), app));
    }
    let mut agent = start_agent(&bench, &api, &kubelet, &pins, free_addr());
    agent.wait_message("ready: every watch listed, pods reconciled");
    let [svc, backend] = pods.as_mut_slice() else { unreachable!() };
    wait_for("policies in force", Duration::from_secs(10), || svc.connect("192.0.2.10", 443).ok());
    // The ClusterIP is allowed, and the LB still takes the connection to
    // its backend (where the bench's host answers).
    assert!(backend.connect("203.0.113.10", 443).is_ok(), "the backend by its own address");
    assert!(svc.connect("203.0.113.10", 443).unwrap_err().contains("EPERM"), "svc may reach the Service, not the backend");
    assert!(
        backend.connect("192.0.2.10", 443).unwrap_err().contains("EPERM"),
        "judged on the ClusterIP the workload asked for, before the LB rewrote it"
    );
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
    let lb = rawbpf::load_lb(VIP, BACKEND);
    rawbpf::attach(&lb, kubelet.kubepods.parent().unwrap(), 0).expect("legacy attach without flags");
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

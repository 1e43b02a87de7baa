//! `portcullis agent` and the pods' veths: a pod that keeps CAP_NET_RAW
//! (as runtimes grant it) writes frames past its cgroup hooks, judged on
//! its veth by its own policy; a pod the agent has not classified yet gets
//! nothing out of its veth at all (fail closed, also for a sandboxed pod,
//! whose traffic nothing else sees); and neither a killed agent nor its
//! successor leaves a moment without the veth programs. Each attack is
//! shown getting through before the agent runs, and proven at the target.

mod common;
mod k8s;

use std::time::Duration;

use common::{
    pins::{PinDir, in_cgroup_cmd_of},
    scrape, series,
    target::{ATTACK_PY, Recorder, TARGET_PORT},
    wait_for,
};
use k8s::harness::{Kubelet, Workload, free_addr, namespace, pod_qos, policy, start_agent_with};
use portcullis_tests::{Bench, fakeapi::FakeApi, require_root};
use serde_json::json;

const META4: &str = "169.254.169.254";
/// Kubelet's `clusterDNS` (the bench's resolver).
const CLUSTER_DNS: &[&str] = &["--cluster-dns", "198.51.100.53"];

/// `attack.py packet-socket` from the bench pod `pod`, in `cgroup`: N
/// datagrams to DST:TARGET_PORT written as frames (cgroup hooks never see
/// them). Returns how many were sent.
fn packet_socket(bench: &Bench, cgroup: &std::path::Path, pod: &str, dst: &str, n: u32) -> u64 {
    let script = common::client(bench, "attack.py", ATTACK_PY);
    let mac = bench.cmd_in_node("cat").arg(format!("/sys/class/net/{}/address", bench.node_veth(pod))).output().unwrap();
    let mac = String::from_utf8(mac.stdout).unwrap().trim().to_owned();
    let src = bench.pod_v4(pod).to_string();
    let argv = format!("python3 {} packet-socket eth0 {mac} {src} {dst} {TARGET_PORT} {n}", script.display());
    let out = in_cgroup_cmd_of(bench, cgroup, pod, &argv).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("attack.py: {e}: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    v["send"]["sent"].as_u64().unwrap_or(0)
}

#[test]
fn veths_are_enforced_from_before_a_pod_is_known_and_through_restarts() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().pods(&["raw", "late"]).start().unwrap();
    let api = FakeApi::start().unwrap();
    let kubelet = Kubelet::new("k8s-veth", true);
    let pins = PinDir::new("k8s-veth");
    let metrics = free_addr();
    let meta = Recorder::listen(&bench, "udp", META4, TARGET_PORT);
    let other = Recorder::listen(&bench, "udp", "203.0.113.20", TARGET_PORT);
    api.apply(&namespace("ws-a", json!({}))).unwrap();
    api.apply(&policy("ws-a", "models", json!({}), &["api.example.test"])).unwrap();
    // A pod that keeps the runtime's CAP_NET_RAW.
    let mut raw = pod_qos("ws-a", "raw", json!({"app": "raw"}), "BestEffort");
    raw["spec"]["containers"][0]["securityContext"] = json!({});
    let raw_uid = api.apply(&raw).unwrap()["metadata"]["uid"].as_str().unwrap().to_owned();
    let raw_cg = kubelet.create_pod(&raw_uid, "BestEffort");
    let mut w = Workload::start(&bench, &raw_cg, "raw");
    // Without the agent, its frames get out.
    assert_eq!(packet_socket(&bench, &raw_cg, "raw", META4, 3), 3);
    wait_for("the frames at the metadata host", Duration::from_secs(5), || (meta.arrivals().len() >= 3).then_some(()));
    let before = meta.arrivals().len();

    let mut agent = start_agent_with(&bench, &api, &kubelet, &pins, metrics, CLUSTER_DNS);
    agent.wait_message("ready: every watch listed, pods reconciled");
    wait_for("the raw pod's veth attached", Duration::from_secs(10), || {
        let text = scrape(metrics);
        let g = |gap: &str| {
            series(&text, &format!("portcullis_pod_enforcement_gaps{{source_namespace=\"ws-a\",source_pod=\"raw\",gap=\"{gap}\"}}"))
        };
        (g("veth-not-found") == Some(0.0) && g("cap-net-raw") == Some(0.0)).then_some(())
    });
    w.eventually("api.example.test", 443, true);
    assert_eq!(packet_socket(&bench, &raw_cg, "raw", META4, 5), 5, "sent, and dropped on the veth");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(meta.arrivals().len(), before, "frames to the metadata host got past the veth");

    // A pod whose API object is not there yet: its veth drops everything,
    // even to an address no range denies.
    let late_uid = "5e3a1b2c-0000-4000-8000-00000000late";
    let late_cg = kubelet.create_pod(late_uid, "BestEffort");
    assert_eq!(packet_socket(&bench, &late_cg, "late", "203.0.113.20", 3), 3);
    std::thread::sleep(Duration::from_millis(300));
    assert!(other.arrivals().is_empty(), "an unclassified pod's frames left its veth: {:?}", other.arrivals());

    // Killed: the pinned veth links stay; the frames still go nowhere.
    agent.sigkill();
    assert_eq!(packet_socket(&bench, &raw_cg, "raw", META4, 3), 3);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(meta.arrivals().len(), before, "the veth was open while no agent ran");
    // The next agent takes the links over: allowed stays allowed, the rest closed.
    let mut agent = start_agent_with(&bench, &api, &kubelet, &pins, metrics, CLUSTER_DNS);
    agent.wait_message("ready: every watch listed, pods reconciled");
    w.eventually("api.example.test", 443, true);
    assert_eq!(packet_socket(&bench, &raw_cg, "raw", META4, 3), 3);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(meta.arrivals().len(), before);
    drop(agent);
}

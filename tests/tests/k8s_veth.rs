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
use k8s::harness::{Kubelet, Workload, free_addr, namespace, pod_qos, policy, start_agent_env, start_agent_with};
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
    // tcx links (pinned) where the kernel has them, and clsact filters
    // (which outlive the agent by themselves) on any kernel.
    if common::cni::kernel_has_tcx() {
        enforced_from_before_known_and_through_restarts(&[]);
    }
    enforced_from_before_known_and_through_restarts(&[("PORTCULLIS_DISABLE_KERNEL_FEATURES", "tcx")]);
}

fn enforced_from_before_known_and_through_restarts(env: &[(&str, &str)]) {
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

    let mut agent = start_agent_env(&bench, &api, &kubelet, &pins, metrics, CLUSTER_DNS, env);
    agent.wait_message("ready: every watch listed, pods reconciled");
    wait_for("the raw pod's veth attached", Duration::from_secs(10), || {
        let text = scrape(metrics);
        let g = |gap: &str| {
            series(
                &text,
                &format!("portcullis_pod_enforcement_gaps{{source_namespace=\"ws-a\",source_pod=\"raw\",gap=\"{gap}\"}}"),
            )
        };
        (g("veth-not-found") == Some(0.0) && g("cap-net-raw") == Some(0.0)).then_some(())
    });
    w.eventually("api.example.test", 443, true);
    let log = bench.workdir().join("blocked.jsonl");
    let from = common::agree::mark(&bench, &log);
    let bytes = |dir: &str| {
        let text = scrape(metrics);
        series(&text, &format!("portcullis_{dir}_bytes_total{{source_namespace=\"ws-a\",source_pod=\"raw\"}}")).unwrap_or(0.0)
    };
    let (out_before, in_before) = (bytes("egress"), bytes("ingress"));
    w.reach("api.example.test", 443).unwrap();
    let body = w.get("203.0.113.10", 443).unwrap();
    assert_eq!(body, "hello from 203.0.113.10:443\n");
    // The pod's bytes, counted on its veth (a cgroup-mode pod's too): at
    // least the request one way and hostd's answer (170 bytes of HTTP) the
    // other, with their packets' headers.
    wait_for("the connections' bytes counted", Duration::from_secs(5), || {
        (bytes("egress") > out_before + 100.0 && bytes("ingress") > in_before + 250.0).then_some(())
    });
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

    // explain agrees with the verdicts since (the frames' records on the
    // veth, the connection that reached its host).
    let pods = common::agree::pod_addrs(&bench, "raw", "ws-a", "raw");
    let agreed = common::agree::ask_all(&bench, &bench.workdir().join("state"), &log, from, &pods);
    assert!(agreed.denials >= 1 && agreed.allowances >= 1, "{agreed:?}");

    // Killed: the pinned veth links stay; the frames still go nowhere.
    agent.sigkill();
    assert_eq!(packet_socket(&bench, &raw_cg, "raw", META4, 3), 3);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(meta.arrivals().len(), before, "the veth was open while no agent ran");
    // The next agent takes the links over: allowed stays allowed, the rest closed.
    let mut agent = start_agent_env(&bench, &api, &kubelet, &pins, metrics, CLUSTER_DNS, env);
    agent.wait_message("ready: every watch listed, pods reconciled");
    w.eventually("api.example.test", 443, true);
    assert_eq!(packet_socket(&bench, &raw_cg, "raw", META4, 3), 3);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(meta.arrivals().len(), before);
    drop(agent);
}

/// Inside a gVisor sandbox: each name resolved and connected to on 443,
/// and one address connected to directly; JSON per case.
const SANDBOX_PROBE: &str = r#"
import json, socket, sys
out = {}
for name in sys.argv[1:]:
    try:
        if name[0].isdigit():
            ip = name
        else:
            ip = socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        s = socket.create_connection((ip, 443), timeout=2)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        out[name] = s.recv(100).decode(errors="replace")
    except Exception as e:
        out[name] = "error: " + type(e).__name__ + " " + str(e)
print(json.dumps(out))
"#;

/// A gVisor pod (RuntimeClass `gvisor`: no cgroup hook sees its traffic)
/// and a plain pod on one node, each with its own policy, at once: the
/// sandbox reaches what its policy names and nothing else, the plain pod
/// likewise.
#[test]
fn a_gvisor_pod_and_a_plain_pod_each_get_their_own_policy() {
    if !require_root() || !portcullis_tests::gvisor::require_runsc() {
        return;
    }
    let bench = Bench::builder().pods(&["gv", "plain"]).start().unwrap();
    let api = FakeApi::start().unwrap();
    let kubelet = Kubelet::new("k8s-gvisor", true);
    let pins = PinDir::new("k8s-gvisor");
    let metrics = free_addr();
    api.apply(&namespace("ws-a", json!({}))).unwrap();
    api.apply(&policy("ws-a", "plain", json!({"matchLabels": {"app": "plain"}}), &["api.example.test"])).unwrap();
    api.apply(&policy("ws-a", "sandboxed", json!({"matchLabels": {"app": "gv"}}), &["other.example.test"])).unwrap();
    let mut gv = pod_qos("ws-a", "gv", json!({"app": "gv"}), "BestEffort");
    gv["spec"]["runtimeClassName"] = json!("gvisor");
    // Kubelet reports the sandbox's addresses (runsc takes them off eth0).
    let (v4, v6) = (bench.pod_v4("gv").to_string(), bench.pod_v6("gv").to_string());
    gv["status"]["podIP"] = json!(v4);
    gv["status"]["podIPs"] = json!([{"ip": v4}, {"ip": v6}]);
    let gv_uid = api.apply(&gv).unwrap()["metadata"]["uid"].as_str().unwrap().to_owned();
    let gv_cg = kubelet.create_pod(&gv_uid, "BestEffort");
    let plain = api.apply(&pod_qos("ws-a", "plain", json!({"app": "plain"}), "BestEffort")).unwrap();
    let plain_cg = kubelet.create_pod(plain["metadata"]["uid"].as_str().unwrap(), "BestEffort");
    // The pod's sandbox process (as its pause container would be).
    let _pause = Workload::start(&bench, &gv_cg, "gv");
    let mut p = Workload::start(&bench, &plain_cg, "plain");
    let mut agent = start_agent_with(&bench, &api, &kubelet, &pins, metrics, CLUSTER_DNS);
    agent.wait_message("ready: every watch listed, pods reconciled");
    wait_for("the gVisor pod's veth attached", Duration::from_secs(10), || {
        let text = scrape(metrics);
        let g = |gap: &str| {
            series(
                &text,
                &format!("portcullis_pod_enforcement_gaps{{source_namespace=\"ws-a\",source_pod=\"gv\",gap=\"{gap}\"}}"),
            )
        };
        (g("veth-not-found") == Some(0.0) && g("sandboxed-runtime") == Some(0.0)).then_some(())
    });
    p.eventually("api.example.test", 443, true);
    let log = bench.workdir().join("blocked.jsonl");
    let from = common::agree::mark(&bench, &log);
    assert!(p.reach("other.example.test", 443).is_err(), "plain: other.example.test is not its");
    p.reach("api.example.test", 443).unwrap();

    let probe = common::write_file(bench.workdir(), "sandbox_probe.py", SANDBOX_PROBE);
    let args = ["python3", probe.to_str().unwrap(), "other.example.test", "api.example.test", "203.0.113.10"];
    let run = portcullis_tests::gvisor::run(&bench, "gv", &gv_cg, &args, Duration::from_secs(30)).expect("gVisor run");
    let v: serde_json::Value =
        serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("probe output ({e}): {} / {}", run.stdout, run.stderr));
    assert!(v["other.example.test"].as_str().is_some_and(|s| s.contains("200 OK") && s.contains("203.0.113.20:443")), "{v}");
    assert!(v["api.example.test"].as_str().is_some_and(|s| s.contains("gaierror")), "refused name: {v}");
    assert!(v["203.0.113.10"].as_str().is_some_and(|s| s.starts_with("error")), "never learned by this pod: {v}");
    let log_path = log;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let blocked: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(
        blocked.iter().any(|r| r["pod"] == "gv" && r["dst"] == "203.0.113.10" && r["hook"] == "tc-egress"),
        "the sandbox's connect is in the log, as the pod's: {log}"
    );
    assert!(
        blocked.iter().any(|r| r["pod"] == "gv" && r["host"] == "api.example.test" && r["reason"] == "denied-dns-name"),
        "{log}"
    );
    // explain agrees with each verdict since, of either pod: the records
    // (the sandbox's on its veth, the plain pod's at its hooks) and what
    // reached the hosts.
    let pods = [common::agree::pod_addrs(&bench, "gv", "ws-a", "gv"), common::agree::pod_addrs(&bench, "plain", "ws-a", "plain")];
    let agreed = common::agree::ask_all(&bench, &bench.workdir().join("state"), &log_path, from, &pods.join(","));
    assert!(agreed.denials >= 3 && agreed.allowances >= 2, "{agreed:?}");
}

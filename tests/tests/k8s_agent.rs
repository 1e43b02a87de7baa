//! `portcullis agent` against the in-tree fake API server (the real
//! `kube::Client`, watches and all), on cgroups named exactly as kubelet
//! names them, with real workloads in the bench's pod namespace: pods get
//! the union of the policies that select them, a pod nobody classified is
//! denied, policy edits narrow and widen, deletions leave nothing behind,
//! and neither an API outage nor a `410 Gone` nor a restart without the
//! API server opens anything.

mod common;
mod k8s;

use std::time::Duration;

use common::{
    pins::{PinDir, endpoints, entries_of},
    scrape, series, wait_for,
};
use k8s::harness::{
    Kubelet, NODE, OWN_POD_UID, Runtime, Workload, apply_dir, create_pod, free_addr, namespace, pod_qos, policy, start_agent,
    start_agent_with,
};
use portcullis_tests::{Bench, fakeapi::FakeApi, require_root};
use serde_json::json;

const API_IP: &str = "203.0.113.10";
/// Kubelet's `clusterDNS` given on the command line (the bench's resolver).
const CLUSTER_DNS: &[&str] = &["--cluster-dns", "198.51.100.53"];
const OTHER_IP: &str = "203.0.113.20";

fn cgroup_id(p: &std::path::Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
}

#[test]
fn pods_get_the_union_of_their_policies_and_unclassified_pods_are_denied() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().pods(&["own", "coredns", "a", "b", "c"]).start().unwrap();
    let api = FakeApi::start().unwrap();
    let kubelet = Kubelet::new("k8s-systemd", true);
    let pins = PinDir::new("k8s-systemd");
    let metrics = free_addr();
    api.apply(&namespace("ws-acme-corp", json!({"portcullis.dev/workspace": "true"}))).unwrap();
    api.apply(&namespace("kube-system", json!({}))).unwrap();
    // The cluster's DNS, for ClusterFirst pods: kube-dns's ClusterIP (here
    // the bench's resolver). Pods' own resolv.conf files are never read.
    api.apply(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "spec": {"clusterIP": "198.51.100.53", "clusterIPs": ["198.51.100.53"], "ports": [{"port": 53, "protocol": "UDP"}]}}))
        .unwrap();
    // Exempt: the agent's own pod and a system namespace's pod, both
    // through the kernel's walk from a container cgroup to the pod's.
    let mut own = Workload::start(&bench, &kubelet.create_pod(OWN_POD_UID, "Burstable"), "own");
    let usys = create_pod(&api, "kube-system", "coredns", json!({}));
    let mut sys = Workload::start(&bench, &kubelet.create_pod(&usys, "BestEffort"), "coredns");
    // Pod a runs before the agent starts; its policy is on record.
    let ua = create_pod(&api, "ws-acme-corp", "a", json!({"app": "agent"}));
    let ca = kubelet.create_pod(&ua, "BestEffort");
    // Each connection of a, b and c (not the polls while a change lands)
    // is also asked of explain, which must agree.
    let state = bench.workdir().join("state");
    let mut a = Workload::start(&bench, &ca, "a").explained_by(&state, "ws-acme-corp");
    api.apply(&policy("ws-acme-corp", "models", json!({"matchLabels": {"app": "agent"}}), &["api.example.test"])).unwrap();
    let mut agent = start_agent(&bench, &api, &kubelet, &pins, metrics);
    agent.wait_message("ready: every watch listed, pods reconciled");
    assert!(scrape_ok(metrics, "/readyz"));

    if let Err(e) = a.reach("api.example.test", 443) {
        panic!("a: its policy allows api.example.test:443: {e}\n{}", std::fs::read_to_string(&agent.stderr).unwrap());
    }
    assert!(a.connect(OTHER_IP, 443).is_err(), "a: nothing else");
    assert!(a.reach("other.example.test", 443).is_err());
    assert!(a.connect("169.254.169.254", 80).unwrap_err().contains("EPERM"));
    // `portcullis explain` from the node agent's live maps agrees, by pod.
    let explain = |target: &str| {
        let out = common::agent_cmd()
            .args(["explain", "-n", "ws-acme-corp", "--pod", "a", "-o", "json", "--state-dir"])
            .arg(bench.workdir().join("state"))
            .arg(target)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("explain {target}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        v
    };
    assert_eq!(explain("api.example.test:443")["verdict"], "allowed");
    assert_eq!(explain(&format!("{OTHER_IP}:443"))["verdict"], "blocked");
    assert_eq!(explain("other.example.test:443")["verdict"], "blocked");
    let meta = explain("169.254.169.254:80");
    assert_eq!((&meta["verdict"], &meta["addresses"][0]["range"]), (&json!("blocked"), &json!("metadata")), "{meta}");
    own.connect("169.254.169.254", 80).expect("the agent's own pod is exempt");
    sys.connect("169.254.169.254", 80).expect("kube-system is exempt");
    assert_eq!(
        series(&scrape(metrics), "portcullis_pod_mode{source_namespace=\"kube-system\",source_pod=\"coredns\",mode=\"exempt\"}"),
        Some(1.0)
    );

    // Pod b starts before the API event about it reaches the agent (the
    // API server stalls): its cgroup is unknown, so it is denied.
    api.pause();
    let ub = create_pod(&api, "ws-acme-corp", "b", json!({"app": "tool"}));
    let cb = kubelet.create_pod(&ub, "BestEffort");
    let mut b = Workload::start(&bench, &cb, "b").explained_by(&state, "ws-acme-corp");
    assert!(b.connect(API_IP, 443).unwrap_err().contains("EPERM"), "b: not classified: denied");
    assert!(b.connect(OTHER_IP, 443).unwrap_err().contains("EPERM"));
    assert!(b.reach("api.example.test", 443).is_err(), "b: no DNS either");
    // The event arrives: selected by nothing, b gets DNS only.
    api.resume();
    wait_for("b classified", Duration::from_secs(10), || {
        series(&scrape(metrics), "portcullis_pod_policies{source_namespace=\"ws-acme-corp\",source_pod=\"b\"}")
    });
    let r = b.ask("resolve api.example.test");
    assert_eq!(r["ok"], false, "b: a name no policy allows is refused: {r}");
    assert!(b.connect(API_IP, 443).is_err());
    // A second policy selects both: allows union.
    api.apply(&policy("ws-acme-corp", "tools", json!({}), &["other.example.test"])).unwrap();
    b.eventually("other.example.test", 443, true);
    a.eventually("other.example.test", 443, true);
    a.reach("api.example.test", 443).expect("a keeps what the first policy allows");
    assert!(b.reach("api.example.test", 443).is_err(), "b is not selected by the first");

    // Narrow: the first policy drops api.example.test; widen it back.
    api.apply(&policy("ws-acme-corp", "models", json!({"matchLabels": {"app": "agent"}}), &["none.example.test"])).unwrap();
    a.eventually_ip(API_IP, 443, false);
    a.eventually("other.example.test", 443, true);
    api.apply(&policy("ws-acme-corp", "models", json!({"matchLabels": {"app": "agent"}}), &["api.example.test"])).unwrap();
    a.eventually("api.example.test", 443, true);

    // An invalid edit changes nothing (and is reported).
    let mut bad = policy("ws-acme-corp", "models", json!({"matchLabels": {"app": "agent"}}), &["api.example.test"]);
    bad["spec"]["egress"][0]["toCIDRs"] = json!(["192.0.2.0/24"]);
    api.apply(&bad).unwrap();
    wait_for("the invalid policy reported", Duration::from_secs(10), || {
        series(&scrape(metrics), "portcullis_k8s_policy_invalid{policy=\"egresspolicy ws-acme-corp/models\"}")
    });
    a.reach("api.example.test", 443).expect("the last valid version stays in force");
    // An object this agent cannot decode (a field from a newer CRD) is
    // refused alone; the watch of its kind goes on.
    let mut future = policy("ws-acme-corp", "future", json!({}), &["other.example.test"]);
    future["spec"]["egress"][0]["toPlanets"] = json!(["mars"]);
    api.apply(&future).unwrap();
    wait_for("the undecodable policy reported", Duration::from_secs(10), || {
        series(&scrape(metrics), "portcullis_k8s_policy_invalid{policy=\"egresspolicy ws-acme-corp/future\"}")
    });
    api.apply(&policy("ws-acme-corp", "later", json!({"matchLabels": {"app": "tool"}}), &["api.example.test"])).unwrap();
    b.eventually("api.example.test", 443, true);
    api.delete("egresspolicies", Some("ws-acme-corp"), "later");
    api.delete("egresspolicies", Some("ws-acme-corp"), "future");

    // Deleting the policies leaves deny-all.
    api.delete("egresspolicies", Some("ws-acme-corp"), "tools");
    api.delete("egresspolicies", Some("ws-acme-corp"), "models");
    a.eventually_ip(API_IP, 443, false);
    a.eventually_ip(OTHER_IP, 443, false);
    assert!(a.reach("api.example.test", 443).is_err());

    // A pod created after the agent started: enforced as soon as its
    // cgroup and object are there.
    api.apply(&policy("ws-acme-corp", "models", json!({"matchLabels": {"app": "agent"}}), &["api.example.test"])).unwrap();
    let uc = create_pod(&api, "ws-acme-corp", "c", json!({"app": "agent"}));
    let cc = kubelet.create_pod(&uc, "BestEffort");
    let mut c = Workload::start(&bench, &cc, "c").explained_by(&state, "ws-acme-corp");
    c.eventually("api.example.test", 443, true);
    assert!(c.connect(OTHER_IP, 443).is_err());

    // A deleted pod leaves nothing behind: its endpoint and map entries go.
    let ida = cgroup_id(ca.parent().unwrap());
    let id = endpoints(&pins)[&ida];
    assert!(entries_of(&pins, id).values().any(|n| *n > 0));
    api.delete("pods", Some("ws-acme-corp"), "a");
    wait_for("a's endpoint removed", Duration::from_secs(10), || (!endpoints(&pins).contains_key(&ida)).then_some(()));
    let left = entries_of(&pins, id);
    assert!(left.values().all(|n| *n == 0), "a deleted pod leaves nothing in the maps: {left:?}");
    assert!(a.connect(API_IP, 443).unwrap_err().contains("EPERM"), "a's cgroup is unknown again: denied");
    let text = scrape(metrics);
    assert!(series(&text, "portcullis_pod_mode{source_namespace=\"ws-acme-corp\",source_pod=\"a\",mode=\"enforce\"}").is_none());
    assert_eq!(
        series(&text, "portcullis_pod_mode{source_namespace=\"ws-acme-corp\",source_pod=\"c\",mode=\"enforce\"}"),
        Some(1.0)
    );
    drop(agent);
}

fn scrape_ok(addr: std::net::SocketAddr, path: &str) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200")
}

/// The seed articles' workspaces (`deploy/examples/workspaces`, applied as
/// checked in) on a cgroupfs-driver node: the platform team's
/// ClusterEgressPolicy selects pods by namespace label, its `toServices`
/// rule opens exactly the control plane's ClusterIP (inside the
/// always-denied 10/8) and follows it when it changes.
#[test]
fn cluster_policies_select_by_namespace_label_and_services_are_followed() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().pods(&["acme", "globex", "x"]).start().unwrap();
    let api = FakeApi::start().unwrap();
    let kubelet = Kubelet::new("k8s-cgroupfs", false);
    let pins = PinDir::new("k8s-cgroupfs");
    let metrics = free_addr();
    assert_eq!(apply_dir(&api, "deploy/examples/workspaces"), 5);
    api.apply(&namespace("agent-control", json!({}))).unwrap();
    api.apply(&namespace("scratch", json!({}))).unwrap();
    let service = |ip: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "control-plane", "namespace": "agent-control"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 8443}]}})
    };
    api.apply(&service("10.96.0.10")).unwrap();
    let mut pods = Vec::new();
    // containerd's and CRI-O's container cgroup names.
    for (ns, name, qos, runtime) in [
        ("ws-acme-corp", "acme", "Burstable", Runtime::Containerd),
        ("ws-globex", "globex", "Guaranteed", Runtime::CriO),
        ("scratch", "x", "BestEffort", Runtime::CriO),
    ] {
        let stored = api.apply(&pod_qos(ns, name, json!({"app": "agent"}), qos)).unwrap();
        let container = kubelet.create_pod_of(stored["metadata"]["uid"].as_str().unwrap(), qos, runtime);
        pods.push(Workload::start(&bench, &container, name).explained_by(&bench.workdir().join("state"), ns));
    }
    // Kubelet's config names the cluster's DNS (the bench's resolver).
    std::fs::write(bench.workdir().join("kubelet-config.yaml"), "kind: KubeletConfiguration\nclusterDNS: [198.51.100.53]\n")
        .unwrap();
    // Pods cgroup hooks cannot fully enforce: said per pod.
    let mut raw = pod_qos("ws-acme-corp", "raw", json!({}), "BestEffort");
    raw["spec"]["containers"][0]["securityContext"] = json!({});
    let raw_uid = api.apply(&raw).unwrap()["metadata"]["uid"].as_str().unwrap().to_owned();
    kubelet.create_pod(&raw_uid, "BestEffort");
    let mut sandboxed = pod_qos("ws-acme-corp", "sandboxed", json!({}), "BestEffort");
    sandboxed["spec"]["runtimeClassName"] = json!("gvisor");
    let sandboxed_uid = api.apply(&sandboxed).unwrap()["metadata"]["uid"].as_str().unwrap().to_owned();
    kubelet.create_pod(&sandboxed_uid, "BestEffort");
    api.apply(&pod_qos("ws-acme-corp", "nocgroup", json!({}), "BestEffort")).unwrap();
    let mut agent = start_agent_with(&bench, &api, &kubelet, &pins, metrics, &["--pod-events"]);
    agent.wait_message("kubelet's clusterDNS");
    agent.wait_message("ready: every watch listed, pods reconciled");
    let [acme, globex, scratch] = pods.as_mut_slice() else { unreachable!() };
    let text = scrape(metrics);
    let gap = |pod: &str, gap: &str| {
        series(
            &text,
            &format!("portcullis_pod_enforcement_gaps{{source_namespace=\"ws-acme-corp\",source_pod=\"{pod}\",gap=\"{gap}\"}}"),
        )
    };
    assert_eq!(gap("raw", "cap-net-raw"), Some(1.0), "a container that keeps the runtime's NET_RAW");
    assert_eq!(gap("sandboxed", "sandboxed-runtime"), Some(1.0));
    assert_eq!(gap("nocgroup", "cgroup-not-found"), Some(1.0));
    assert_eq!(gap("acme", "cap-net-raw"), Some(0.0), "acme drops every capability");
    // No process yet: no network namespace to find the veth from.
    assert_eq!(gap("raw", "veth-not-found"), Some(1.0));
    assert_eq!(gap("acme", "veth-not-found"), Some(0.0), "acme runs: its veth carries the programs");
    let warned: Vec<_> = agent
        .messages()
        .into_iter()
        .filter(|m| m["message"].as_str().is_some_and(|s| s.starts_with("the pod cannot be fully")))
        .collect();
    assert!(warned.iter().any(|m| m["pod"] == "ws-acme-corp/raw" && m["gaps"] == "cap-net-raw,veth-not-found"), "{warned:?}");
    for (pod, n) in
        [("ws-acme-corp\",source_pod=\"acme", 2.0), ("ws-globex\",source_pod=\"globex", 2.0), ("scratch\",source_pod=\"x", 0.0)]
    {
        assert_eq!(series(&text, &format!("portcullis_pod_policies{{source_namespace=\"{pod}\"}}")), Some(n), "{pod}: {text}");
    }
    // The control plane's ClusterIP, on its port only, from workspaces only.
    acme.connect("10.96.0.10", 8443).expect("acme: toServices opens the control plane's ClusterIP");
    globex.connect("10.96.0.10", 8443).expect("globex too");
    assert!(acme.connect("10.96.0.10", 443).unwrap_err().contains("EPERM"), "another port of it");
    assert!(scratch.connect("10.96.0.10", 8443).unwrap_err().contains("EPERM"), "an unlabelled namespace");
    // --pod-events: one Event on the pod, however many attempts.
    for _ in 0..5 {
        assert!(scratch.connect("10.96.0.10", 8443).is_err());
    }
    wait_for("an Event on pod x", Duration::from_secs(10), || {
        api.events().iter().any(|e| e["regarding"]["name"] == "x").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let events: Vec<_> = api.events().into_iter().filter(|e| e["regarding"]["name"] == "x").collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = &events[0];
    assert_eq!((ev["reason"].as_str(), ev["type"].as_str()), (Some("EgressBlocked"), Some("Warning")), "{ev}");
    assert_eq!(ev["regarding"]["uid"], pod_uid(&api, "scratch", "x"), "{ev}");
    let note = ev["note"].as_str().unwrap_or_default();
    assert!(note.contains("10.96.0.10:8443") && note.contains("blocked-connection log"), "{note}");
    // The blocked log names the node and the pod, and `portcullis blocked`
    // finds the record by them (the repeats are folded in later).
    let mut q = common::agent_cmd();
    q.args(["blocked", "--file"]).arg(bench.workdir().join("blocked.jsonl"));
    q.args(["-n", "scratch", "--pod", "x", "--to-ip", "10.96.0.10", "--port", "8443", "-o", "json"]);
    let out = q.output().unwrap();
    let recs: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!recs.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    for r in &recs {
        assert_eq!((r["v"].as_u64(), r["node"].as_str(), r["namespace"].as_str()), (Some(1), Some(NODE), Some("scratch")), "{r}");
    }
    let globex_events: Vec<_> = api.events().into_iter().filter(|e| e["regarding"]["name"] == "globex").collect();
    assert!(globex_events.is_empty(), "none for a pod nothing was blocked of: {globex_events:?}");
    assert!(acme.connect(OTHER_IP, 8443).is_err());
    // The Service moves: the old address closes, the new one opens.
    api.apply(&service(OTHER_IP)).unwrap();
    acme.eventually_ip(OTHER_IP, 8443, true);
    acme.eventually_ip("10.96.0.10", 8443, false);
    assert!(scratch.connect(OTHER_IP, 8443).is_err());
    // The namespace loses its workspace label: the cluster policy lets go.
    api.apply(&namespace("ws-globex", json!({}))).unwrap();
    globex.eventually_ip(OTHER_IP, 8443, false);
    acme.connect(OTHER_IP, 8443).expect("acme is still a workspace");
    // Names: ws-globex allows only api.anthropic.com, which the bench's
    // resolver does not know; api.example.test is refused by the gate.
    assert_eq!(globex.ask("resolve api.example.test")["ok"], false);
    // Audit: nothing is blocked, what would have been is logged as such.
    api.apply(&json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "EgressPolicy",
        "metadata": {"name": "trial", "namespace": "scratch"},
        "spec": {"podSelector": {}, "mode": "audit", "egress": [{"toFQDNs": [{"matchName": "api.example.test"}]}]}}))
        .unwrap();
    scratch.eventually_ip("10.96.0.10", 8443, true);
    wait_for("an audit record for x", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(bench.workdir().join("blocked.jsonl")).unwrap();
        log.lines()
            .any(|l| l.contains("\"verdict\":\"audit\"") && l.contains("\"pod\":\"x\"") && l.contains("10.96.0.10"))
            .then_some(())
    });
    drop(agent);
}

/// Enforcement never depends on the API server being there: an outage
/// changes nothing, its return resyncs (including what changed meanwhile),
/// a `410 Gone` re-list drops a pod deleted in the gap, and an agent
/// restarted while the API server is unreachable enforces every pod it
/// knew, prunes nothing, denies a pod created while it was down, and
/// classifies it once the API server is back.
#[test]
fn outages_gone_lists_and_restarts_never_open_or_prune() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().pods(&["a", "b", "d"]).start().unwrap();
    let api = FakeApi::start().unwrap();
    let kubelet = Kubelet::new("k8s-outage", true);
    let pins = PinDir::new("k8s-outage");
    let metrics = free_addr();
    api.apply(&namespace("ws-a", json!({}))).unwrap();
    api.apply(&policy("ws-a", "models", json!({}), &["api.example.test"])).unwrap();
    let ua = create_pod(&api, "ws-a", "a", json!({}));
    let ca = kubelet.create_pod(&ua, "BestEffort");
    // Each connection (not the polls) also asked of explain, while an
    // agent runs.
    let state = bench.workdir().join("state");
    let mut a = Workload::start(&bench, &ca, "a").explained_by(&state, "ws-a");
    let mut agent = start_agent_with(&bench, &api, &kubelet, &pins, metrics, CLUSTER_DNS);
    agent.wait_message("ready: every watch listed, pods reconciled");
    a.reach("api.example.test", 443).expect("a: allowed");

    // The API server goes away: nothing changes.
    api.stop();
    std::thread::sleep(Duration::from_millis(500));
    a.reach("api.example.test", 443).expect("a: still allowed without the API server");
    assert!(a.connect(OTHER_IP, 443).unwrap_err().contains("EPERM"), "a: still denied the rest");
    // It changed meanwhile; its return resyncs.
    api.delete("egresspolicies", Some("ws-a"), "models");
    api.restart().unwrap();
    a.eventually_ip(API_IP, 443, false);

    // 410 Gone: a pod deleted while the watch was down and history
    // compacted is found gone by the re-list.
    let ida = cgroup_id(ca.parent().unwrap());
    assert!(endpoints(&pins).contains_key(&ida));
    api.stop();
    api.delete("pods", Some("ws-a"), "a");
    api.compact();
    api.restart().unwrap();
    wait_for("a's endpoint removed after the re-list", Duration::from_secs(15), || {
        (!endpoints(&pins).contains_key(&ida)).then_some(())
    });

    // Restart without the API server.
    api.apply(&policy("ws-a", "models", json!({}), &["api.example.test"])).unwrap();
    let ub = create_pod(&api, "ws-a", "b", json!({}));
    let cb = kubelet.create_pod(&ub, "BestEffort");
    let mut b = Workload::start(&bench, &cb, "b").explained_by(&state, "ws-a");
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.eventually("api.example.test", 443, true))) {
        eprintln!("{}", std::fs::read_to_string(&agent.stderr).unwrap());
        std::panic::resume_unwind(e);
    }
    let idb = cgroup_id(cb.parent().unwrap());
    agent.child.stop();
    // No agent: pinned links keep enforcing; a new pod is denied. (Nobody
    // to ask explain meanwhile.)
    let explained = b.explained.take();
    b.connect(API_IP, 443).expect("b: its learned address stays in the pinned maps");
    assert!(b.connect(OTHER_IP, 443).unwrap_err().contains("EPERM"));
    let ud = create_pod(&api, "ws-a", "d", json!({}));
    let cd = kubelet.create_pod(&ud, "BestEffort");
    let mut d = Workload::start(&bench, &cd, "d");
    assert!(d.connect(API_IP, 443).unwrap_err().contains("EPERM"), "d: created while no agent ran: denied");
    api.stop();
    let mut agent = start_agent_with(&bench, &api, &kubelet, &pins, metrics, CLUSTER_DNS);
    b.explained = explained;
    let mut d = d.explained_by(&state, "ws-a");
    let restored = agent.wait_message("pods of the previous agent enforced");
    assert_eq!(restored["restored"], 1, "{restored}");
    agent.wait_message("attached: pods not classified yet are denied");
    // Past a resync pass (every 2 s) on the empty, unlisted stores.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(endpoints(&pins).contains_key(&idb), "b pruned without the API server");
    b.reach("api.example.test", 443).expect("b: enforced as before, DNS included");
    assert!(b.connect(OTHER_IP, 443).unwrap_err().contains("EPERM"));
    assert!(d.connect(API_IP, 443).unwrap_err().contains("EPERM"), "d: still unknown");
    assert!(!scrape_ok(metrics, "/readyz"), "not ready before every watch listed");
    assert!(!bench.workdir().join("ready").exists(), "the previous agent's ready file is gone");
    api.restart().unwrap();
    agent.wait_message("ready: every watch listed, pods reconciled");
    d.eventually("api.example.test", 443, true);
    assert!(d.connect(OTHER_IP, 443).is_err());
    assert!(scrape_ok(metrics, "/readyz"));
    assert!(bench.workdir().join("ready").exists(), "the ready file");
    drop(agent);
}

fn pod_uid(api: &FakeApi, ns: &str, name: &str) -> serde_json::Value {
    api.get("pods", Some(ns), name).expect("pod")["metadata"]["uid"].clone()
}

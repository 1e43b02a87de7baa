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
    pins::{PinDir, endpoints},
    scrape, series, wait_for,
};
use k8s::harness::{Kubelet, Workload, create_pod, free_addr, namespace, policy, start_agent};
use portcullis_tests::{Bench, fakeapi::FakeApi, require_root};
use serde_json::json;

const API_IP: &str = "203.0.113.10";
const OTHER_IP: &str = "203.0.113.20";

fn cgroup_id(p: &std::path::Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
}

#[test]
fn pods_get_the_union_of_their_policies_and_unclassified_pods_are_denied() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().start().unwrap();
    let api = FakeApi::start().unwrap();
    let kubelet = Kubelet::new("k8s-systemd", true);
    let pins = PinDir::new("k8s-systemd");
    let metrics = free_addr();
    api.apply(&namespace("ws-acme-corp", json!({"portcullis.dev/workspace": "true"}))).unwrap();
    // Pod a runs before the agent starts; its policy is on record.
    let ua = create_pod(&api, "ws-acme-corp", "a", json!({"app": "agent"}));
    let ca = kubelet.create_pod(&ua, "BestEffort");
    let mut a = Workload::start(&bench, &ca, "a");
    api.apply(&policy("ws-acme-corp", "models", json!({"matchLabels": {"app": "agent"}}), &["api.example.test"])).unwrap();
    let mut agent = start_agent(&bench, &api, &kubelet, &pins, metrics);
    agent.wait_message("ready: every watch listed, pods reconciled");
    assert!(scrape_ok(metrics, "/readyz"));

    if let Err(e) = a.reach("api.example.test", 443) {
        panic!("a: its policy allows api.example.test:443: {e}\n{}", std::fs::read_to_string(&agent.stderr).unwrap());
    }
    assert!(a.connect(OTHER_IP, 443).is_err(), "a: nothing else");
    assert!(a.reach("other.example.test", 443).is_err());

    // Pod b starts before the API event about it reaches the agent (the
    // API server stalls): its cgroup is unknown, so it is denied.
    api.pause();
    let ub = create_pod(&api, "ws-acme-corp", "b", json!({"app": "tool"}));
    let cb = kubelet.create_pod(&ub, "BestEffort");
    let mut b = Workload::start(&bench, &cb, "b");
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
    let mut c = Workload::start(&bench, &cc, "c");
    c.eventually("api.example.test", 443, true);
    assert!(c.connect(OTHER_IP, 443).is_err());

    // A deleted pod leaves nothing behind: its endpoint and map entries go.
    let ida = cgroup_id(ca.parent().unwrap());
    assert!(endpoints(&pins).contains_key(&ida));
    api.delete("pods", Some("ws-acme-corp"), "a");
    wait_for("a's endpoint removed", Duration::from_secs(10), || (!endpoints(&pins).contains_key(&ida)).then_some(()));
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
    out.starts_with("HTTP/1.1 200")
}

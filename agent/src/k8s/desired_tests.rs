use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{Value, json};

use super::*;
use crate::k8s::crd::{ClusterEgressPolicy, EgressPolicy};

fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> PodInfo {
    PodInfo {
        uid: format!("uid-{ns}-{name}"),
        cgroup_uid: format!("uid-{ns}-{name}"),
        namespace: ns.into(),
        name: name.into(),
        labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        qos: Some("BestEffort".into()),
        host_network: false,
        runtime_class: None,
        finished: false,
        nameservers: None,
        cluster_first: true,
        gaps: Vec::new(),
        ips: Vec::new(),
    }
}

fn egp(ns: &str, name: &str, spec: Value) -> crate::k8s::policies::Decoded<EgressPolicy> {
    Ok(Arc::new(
        serde_json::from_value(json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "EgressPolicy",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"}, "spec": spec}))
        .unwrap(),
    ))
}

fn cegp(name: &str, spec: Value) -> crate::k8s::policies::Decoded<ClusterEgressPolicy> {
    Ok(Arc::new(
        serde_json::from_value(json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "ClusterEgressPolicy",
            "metadata": {"name": name, "resourceVersion": "1"}, "spec": spec}))
        .unwrap(),
    ))
}

fn fqdn(name: &str) -> Value {
    json!({"toFQDNs": [{"matchName": name}], "ports": [{"port": 443}]})
}

fn namespaces() -> HashMap<String, BTreeMap<String, String>> {
    let ws = |n: &str| (n.to_owned(), [("portcullis.dev/workspace".to_owned(), "true".to_owned())].into());
    [ws("ws-acme-corp"), ws("ws-globex"), ("kube-system".to_owned(), BTreeMap::new())].into()
}

fn names(w: &Want) -> Vec<String> {
    w.spec.egress.iter().flat_map(|r| r.to_fqdns.iter().flatten().filter_map(|f| f.match_name.clone())).collect()
}

#[test]
fn selected_policies_union_and_unselected_pods_get_nothing() {
    let mut book = PolicyBook::default();
    book.update(
        &[
            egp(
                "ws-acme-corp",
                "models",
                json!({"podSelector": {"matchLabels": {"app": "agent"}}, "egress": [fqdn("api.openai.com")]}),
            ),
            egp(
                "ws-acme-corp",
                "slack",
                json!({"podSelector": {}, "egress": [fqdn("hooks.slack.com")], "dns": {"allowNames": ["x.test"]}}),
            ),
            egp("ws-globex", "models", json!({"podSelector": {}, "egress": [fqdn("api.anthropic.com")]})),
        ],
        &[],
    );
    let pods = [pod("ws-acme-corp", "agent-0", &[("app", "agent")]), pod("ws-acme-corp", "db-0", &[]), pod("ws-other", "x", &[])];
    let w = desired(&pods, &namespaces(), &book, &ServiceIps::default(), &Settings::default());
    assert_eq!(names(&w[0]), ["api.openai.com", "hooks.slack.com"], "two policies union");
    assert_eq!(w[0].policies.len(), 2);
    assert_eq!(w[0].origins[1].0.as_ref(), "egresspolicy ws-acme-corp/slack");
    assert_eq!(names(&w[1]), ["hooks.slack.com"]);
    assert_eq!(w[1].spec.dns.allow_names, ["x.test"]);
    assert!(w[2].spec.egress.is_empty() && w[2].policies.is_empty(), "selected by nothing: deny all but DNS");
    assert_eq!(w[2].mode, Mode::Enforce);
    assert_eq!(w[2].spec.dns.servers, None, "its own resolvers");
}

#[test]
fn cluster_policies_select_by_namespace_label_and_services_become_their_cluster_ips() {
    let mut book = PolicyBook::default();
    let control = json!({"toServices": [{"namespace": "agent-control", "name": "control-plane"}, {"namespace": "x", "name": "gone"}],
        "ports": [{"port": 8443}]});
    book.update(
        &[],
        &[cegp(
            "workspaces",
            json!({"namespaceSelector": {"matchLabels": {"portcullis.dev/workspace": "true"}}, "podSelector": {},
                "mode": "audit", "egress": [control, fqdn("api.anthropic.com")], "dns": {"servers": ["10.96.0.10"]}}),
        )],
    );
    let services = ServiceIps::new(&[service("agent-control", "control-plane", &["10.96.7.7", "fd00::7"], json!([]))], &[]);
    let pods = [pod("ws-globex", "a", &[]), pod("kube-system", "coredns", &[]), pod("unlabelled", "b", &[])];
    let w = desired(&pods, &namespaces(), &book, &services, &Settings::default());
    assert_eq!(w[0].spec.egress[0].to_cidrs, Some(vec!["10.96.7.7".to_owned(), "fd00::7".to_owned()]));
    assert_eq!(w[0].spec.egress[0].to_services, None);
    assert_eq!(w[0].spec.egress[0].ports.as_ref().map(|p| p[0].port), Some(8443));
    assert_eq!(w[0].unresolved, ["x/gone (clusteregresspolicy workspaces egress[0])"]);
    assert_eq!(w[0].mode, Mode::Audit, "only audit policies select it");
    assert_eq!(w[0].spec.dns.servers, Some(vec!["10.96.0.10".to_owned()]));
    assert!(w[1].policies.is_empty(), "kube-system has no workspace label");
    assert!(w[2].policies.is_empty(), "a namespace without labels is not selected");
    let policy = crate::policy::Policy::from_spec(&w[0].spec, "union").expect("the union validates");
    assert_eq!(policy.egress.len(), 2);
}

#[test]
fn enforce_wins_and_exempt_pods_are_exempt() {
    let mut book = PolicyBook::default();
    book.update(
        &[
            egp("ws-a", "audit", json!({"podSelector": {}, "mode": "audit", "egress": [fqdn("a.test")]})),
            egp("ws-a", "enforce", json!({"podSelector": {"matchLabels": {"tier": "strict"}}, "egress": [fqdn("b.test")]})),
        ],
        &[],
    );
    let settings =
        Settings { exempt_namespaces: vec!["kube-system".into()], own_pod: Some("uid-portcullis-system-agent".into()) };
    let mut done = pod("ws-a", "job", &[]);
    done.finished = true;
    let pods = [
        pod("ws-a", "strict", &[("tier", "strict")]),
        pod("ws-a", "loose", &[]),
        pod("kube-system", "coredns", &[]),
        pod("portcullis-system", "agent", &[]),
        done,
    ];
    let w = desired(&pods, &namespaces(), &book, &ServiceIps::default(), &settings);
    assert_eq!(w.len(), 4, "a finished pod gets no endpoint");
    assert_eq!(w[0].mode, Mode::Enforce);
    assert_eq!(names(&w[0]), ["b.test"], "enforced: the audit policy's rules allow nothing");
    assert_eq!(w[1].mode, Mode::Audit);
    assert_eq!(names(&w[1]), ["a.test"]);
    assert_eq!((w[2].mode, w[3].mode), (Mode::Exempt, Mode::Exempt));
}

fn service(ns: &str, name: &str, ips: &[&str], ports: Value) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ips.first(), "clusterIPs": ips, "ports": ports}}))
        .unwrap(),
    )
}

/// An EndpointSlice of Service `ns/svc`.
fn slice(ns: &str, svc: &str, name: &str, family: &str, ports: Value, endpoints: Value) -> Arc<EndpointSlice> {
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns,
            "labels": {"kubernetes.io/service-name": svc}}, "addressType": family, "ports": ports, "endpoints": endpoints}))
        .unwrap(),
    )
}

fn ready(ips: &[&str]) -> Value {
    ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect()
}

/// The pod `ws-a/p` under one EgressPolicy of `rules`.
fn want(rules: Value, services: &ServiceIps) -> Want {
    let mut book = PolicyBook::default();
    book.update(&[egp("ws-a", "p", json!({"podSelector": {}, "egress": rules}))], &[]);
    desired(&[pod("ws-a", "p", &[])], &namespaces(), &book, services, &Settings::default()).remove(0)
}

/// The rule that opens `ip`, as (its addresses, its ports as `port/PROTO`;
/// `None`: every port).
fn rule_of(w: &Want, ip: &str) -> (Vec<String>, Option<Vec<String>>) {
    let r = w.spec.egress.iter().find(|r| r.to_cidrs.as_ref().is_some_and(|c| c.iter().any(|c| c == ip))).expect(ip);
    let ports = r.ports.as_ref().map(|p| {
        p.iter().map(|p| format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP").to_ascii_uppercase())).collect()
    });
    (r.to_cidrs.clone().unwrap(), ports)
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn services_open_their_ready_backends_on_the_target_ports_the_rule_names() {
    let ports = json!([{"name": "https", "port": 443, "targetPort": 8443}, {"name": "metrics", "port": 9090},
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5353}]);
    let slice_ports = json!([{"name": "https", "port": 8443}, {"name": "metrics", "port": 9090},
        {"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "dns-tcp", "port": 5353, "protocol": "TCP"}]);
    let endpoints = json!([
        {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
        {"addresses": ["10.0.0.2"]},
        {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": false}},
        {"addresses": ["10.0.0.4"], "conditions": {"ready": false, "serving": true, "terminating": true}},
        {"addresses": ["10.0.0.5"], "conditions": {"ready": false}},
        {"addresses": ["169.254.169.254", "127.0.0.1", "0.0.0.0", "224.0.0.1"]},
    ]);
    let services = ServiceIps::new(
        &[service("ws-a", "api", &["10.96.7.7"], ports), service("ws-b", "api", &["10.96.8.8"], json!([]))],
        &[
            slice("ws-a", "api", "api-1", "IPv4", slice_ports, endpoints),
            // A rollout: the named target port is another number in the
            // new pods, and their slice has no DNS ports.
            slice("ws-a", "api", "api-2", "IPv6", json!([{"name": "https", "port": 9443}]), ready(&["fd00::1"])),
            slice("ws-a", "api", "api-3", "FQDN", json!([{"name": "https", "port": 8443}]), ready(&["api.example.com"])),
            // Same name, another namespace's Service.
            slice("ws-b", "api", "api-b", "IPv4", json!([{"name": "https", "port": 8443}]), ready(&["10.9.9.9"])),
        ],
    );
    assert_eq!(services.get(&("ws-a".into(), "api".into())), Some(&["10.96.7.7".parse().unwrap()][..]));
    // 8080 names no port of the Service: as written on the backends too.
    let rule = json!({"toServices": [{"namespace": "ws-a", "name": "api"}],
        "ports": [{"port": 443}, {"port": 53, "protocol": "ANY"}, {"port": 8080}]});
    let w = want(json!([rule]), &services);
    assert_eq!(rule_of(&w, "10.96.7.7"), (strs(&["10.96.7.7"]), Some(strs(&["443/TCP", "53/ANY", "8080/TCP"]))), "as written");
    assert_eq!(
        rule_of(&w, "10.0.0.1"),
        (strs(&["10.0.0.1", "10.0.0.2", "10.0.0.4"]), Some(strs(&["5353/TCP", "5353/UDP", "8080/TCP", "8443/TCP"]))),
        "ready, unknown and terminating-but-serving endpoints on the target ports; metrics (9090) not named"
    );
    assert_eq!(rule_of(&w, "fd00::1"), (strs(&["fd00::1"]), Some(strs(&["53/ANY", "8080/TCP", "9443/TCP"]))));
    let all: Vec<&String> = w.spec.egress.iter().flat_map(|r| r.to_cidrs.iter().flatten()).collect();
    for gone in ["10.0.0.3", "10.0.0.5", "169.254.169.254", "127.0.0.1", "0.0.0.0", "224.0.0.1", "10.9.9.9"] {
        assert!(!all.iter().any(|a| *a == gone), "{gone} opened: {all:?}");
    }
    assert_eq!(w.spec.egress.len(), 3);
    assert!(w.origins.iter().all(|(p, i)| p.as_ref() == "egresspolicy ws-a/p" && *i == 0), "{:?}", w.origins);
    assert!(w.unresolved.is_empty() && w.capped.is_empty());
    let policy = crate::policy::Policy::from_spec(&w.spec, "union").expect("the union validates");
    crate::policy::compile(&policy, || Ok::<_, std::io::Error>(vec!["10.96.0.10:53".parse().unwrap()])).expect("and compiles");
}

#[test]
fn a_rule_without_ports_opens_every_port_and_headless_services_their_backends() {
    let services = ServiceIps::new(
        &[
            service("ws-a", "db", &["None"], json!([{"name": "pg", "port": 5432}])),
            service("ws-a", "api", &["10.96.7.7"], json!([{"port": 443, "targetPort": 8443}])),
            service("ws-a", "down", &["None"], json!([{"port": 80}])),
        ],
        &[
            slice("ws-a", "db", "db-1", "IPv4", json!([{"name": "pg", "port": 5432}]), ready(&["10.0.1.1"])),
            // Unnamed: the slice's port has no name either.
            slice("ws-a", "api", "api-1", "IPv4", json!([{"port": 8443}]), ready(&["10.0.2.1"])),
            slice(
                "ws-a",
                "down",
                "down-1",
                "IPv4",
                json!([{"port": 80}]),
                json!([{"addresses": ["10.0.3.1"],
                "conditions": {"ready": false}}]),
            ),
        ],
    );
    let refs = json!([{"namespace": "ws-a", "name": "db"}, {"namespace": "ws-a", "name": "down"}]);
    let w = want(
        json!([{"toServices": refs}, {"toServices": [{"namespace": "ws-a", "name": "api"}], "ports": [{"port": 443}]}]),
        &services,
    );
    assert_eq!(rule_of(&w, "10.0.1.1"), (strs(&["10.0.1.1"]), None), "no ports: every port");
    assert_eq!(rule_of(&w, "10.96.7.7").1, Some(strs(&["443/TCP"])));
    assert_eq!(rule_of(&w, "10.0.2.1").1, Some(strs(&["8443/TCP"])), "unnamed ports map by their empty name");
    assert_eq!(w.unresolved, ["ws-a/down (egresspolicy ws-a/p egress[0])"], "headless with no ready backend opens nothing");
    assert_eq!(w.origins.iter().map(|(_, i)| *i).collect::<Vec<_>>(), [0, 1, 1]);
}

#[test]
fn backends_are_capped_per_rule_ready_ones_first() {
    let ip = |i: usize| format!("10.1.{}.{}", i / 256, i % 256);
    // 100 terminating (the lowest addresses), 200 ready, in two slices.
    let terminating: Vec<Value> = (0..100)
        .map(|i| json!({"addresses": [ip(i)], "conditions": {"ready": false, "serving": true, "terminating": true}}))
        .collect();
    let ready_ips: Vec<String> = (100..300).map(ip).collect();
    let ready_ips: Vec<&str> = ready_ips.iter().map(String::as_str).collect();
    let services = ServiceIps::new(
        &[service("ws-a", "big", &["10.96.9.9"], json!([{"port": 80}])), service("ws-a", "small", &["10.96.9.10"], json!([]))],
        &[
            slice("ws-a", "big", "big-1", "IPv4", json!([{"port": 80}]), Value::Array(terminating)),
            slice("ws-a", "big", "big-2", "IPv4", json!([{"port": 80}]), ready(&ready_ips)),
            // Counted once: an address of both Services.
            slice("ws-a", "small", "small-1", "IPv4", json!([]), ready(&[ready_ips[0]])),
        ],
    );
    let refs = json!([{"namespace": "ws-a", "name": "big"}, {"namespace": "ws-a", "name": "small"}]);
    let w = want(json!([{"toServices": refs, "ports": [{"port": 80}]}]), &services);
    assert_eq!(w.capped, ["egresspolicy ws-a/p egress[0]: 300 backends, 256 opened"]);
    let opened: Vec<&String> = w.spec.egress.iter().skip(1).flat_map(|r| r.to_cidrs.iter().flatten()).collect();
    assert_eq!(opened.len(), 256);
    assert!(ready_ips.iter().all(|r| opened.iter().any(|o| o == r)), "every ready backend is opened");
    assert!(opened.iter().any(|o| *o == &ip(0)) && !opened.iter().any(|o| *o == &ip(99)), "then the lowest terminating");
    assert_eq!(rule_of(&w, "10.96.9.9").0, strs(&["10.96.9.9", "10.96.9.10"]), "ClusterIPs are never capped");
}

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
    let w = desired(&pods, &namespaces(), &book, &ServiceIps::new(), &Settings::default());
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
    let services: ServiceIps = [(
        ("agent-control".to_owned(), "control-plane".to_owned()),
        vec!["10.96.7.7".parse().unwrap(), "fd00::7".parse().unwrap()],
    )]
    .into();
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
    let w = desired(&pods, &namespaces(), &book, &ServiceIps::new(), &settings);
    assert_eq!(w.len(), 4, "a finished pod gets no endpoint");
    assert_eq!(w[0].mode, Mode::Enforce);
    assert_eq!(names(&w[0]), ["b.test"], "enforced: the audit policy's rules allow nothing");
    assert_eq!(w[1].mode, Mode::Audit);
    assert_eq!(names(&w[1]), ["a.test"]);
    assert_eq!((w[2].mode, w[3].mode), (Mode::Exempt, Mode::Exempt));
}

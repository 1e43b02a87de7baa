use kube::core::cel::Validator;
use serde_json::{Value, json};

use super::*;

fn schema_of(crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition) -> Value {
    let v = crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("schema");
    serde_json::to_value(v).expect("json")
}

/// What the API server's CEL rules say about `spec` (as an EgressPolicy).
fn cel(spec: Value) -> Result<(), String> {
    let obj = json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "EgressPolicy",
        "metadata": {"name": "p", "namespace": "ws-acme-corp"}, "spec": spec});
    Validator::new().validate(&schema_of(&EgressPolicy::crd()), &obj, None).map_err(|e| e.to_string())
}

fn rule(r: Value) -> Value {
    json!({"podSelector": {}, "egress": [r]})
}

#[test]
fn valid_policies_pass_the_cel_rules() {
    for r in [
        json!({"toFQDNs": [{"matchName": "api.openai.com"}, {"matchPattern": "*.slack.com"}], "ports": [{"port": 443}]}),
        json!({"toCIDRs": ["203.0.113.0/24", "2001:db8::/32", "192.0.2.7"]}),
        json!({"toServices": [{"namespace": "agent-control", "name": "control-plane"}], "ports": [{"port": 8443, "protocol": "TCP"}]}),
    ] {
        assert_eq!(cel(rule(r.clone())), Ok(()), "{r}");
    }
}

#[test]
fn bad_rules_are_refused_with_a_message_naming_the_problem() {
    let cases = [
        (
            json!({"toFQDNs": [{"matchName": "a.test"}], "toCIDRs": ["192.0.2.0/24"]}),
            "exactly one of toFQDNs, toCIDRs or toServices",
        ),
        (json!({"ports": [{"port": 443}]}), "exactly one of toFQDNs, toCIDRs or toServices"),
        (json!({"toCIDRs": ["192.0.2.1/24"]}), "without host bits"),
        (json!({"toCIDRs": ["not-an-ip"]}), "without host bits"),
        (json!({"toFQDNs": [{"matchName": "a.test", "matchPattern": "*.a.test"}]}), "exactly one of matchName or matchPattern"),
        (json!({"toFQDNs": [{}]}), "exactly one of matchName or matchPattern"),
    ];
    for (r, want) in cases {
        let got = cel(rule(r.clone())).expect_err(&format!("{r} must be refused"));
        assert!(got.contains(want), "{r}: {got}");
        assert!(got.contains("spec.egress"), "the message names the field: {got}");
    }
}

/// Walks every schema node: (path, node).
fn walk<'a>(path: String, node: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    out.push((path.clone(), node));
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk(format!("{path}.{k}"), v, out);
        }
    }
    if let Some(items) = node.get("items") {
        walk(format!("{path}[]"), items, out);
    }
    if let Some(Value::Object(_)) = node.get("additionalProperties") {
        walk(format!("{path}{{}}"), &node["additionalProperties"], out);
    }
}

#[test]
fn the_schemas_are_structural_and_bounded_where_cel_iterates() {
    for crd in [EgressPolicy::crd(), ClusterEgressPolicy::crd()] {
        let schema = schema_of(&crd);
        let mut nodes = Vec::new();
        walk(String::new(), &schema, &mut nodes);
        for (path, node) in &nodes {
            let structural = node.get("type").is_some() || node.get("x-kubernetes-int-or-string").is_some();
            assert!(structural, "{path}: every node has a type: {node}");
            assert!(
                !(node.get("properties").is_some() && node.get("additionalProperties").is_some()),
                "{path}: properties and additionalProperties together"
            );
            if node.get("x-kubernetes-validations").is_some() {
                // Everything a rule could iterate below it is bounded, so
                // the API server's cost estimate accepts the CRD.
                let mut below = Vec::new();
                walk(path.clone(), node, &mut below);
                for (p, n) in below {
                    match n.get("type").and_then(Value::as_str) {
                        Some("array") => assert!(n.get("maxItems").is_some(), "{p}: array without maxItems under a CEL rule"),
                        Some("string") => assert!(
                            n.get("maxLength").is_some() || n.get("enum").is_some(),
                            "{p}: string without maxLength under a CEL rule"
                        ),
                        _ => {}
                    }
                }
            }
        }
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["properties"]["egress"]["maxItems"], 64);
        assert_eq!(spec["properties"]["mode"]["enum"], json!(["enforce", "audit"]));
        let cols = crd.spec.versions[0].additional_printer_columns.as_ref().expect("printer columns");
        assert!(cols.iter().any(|c| c.name == "Mode") && cols.iter().any(|c| c.name == "Age"));
    }
    let cluster = schema_of(&ClusterEgressPolicy::crd());
    let required = cluster["properties"]["spec"]["required"].as_array().expect("required");
    assert!(required.contains(&json!("namespaceSelector")) && required.contains(&json!("podSelector")));
    assert_eq!(ClusterEgressPolicy::crd().spec.scope, "Cluster");
    assert_eq!(EgressPolicy::crd().spec.scope, "Namespaced");
}

/// `cargo xtask crds` writes these; a change of the Rust types without
/// regenerating fails here (and so `cargo xtask test`).
#[test]
fn the_checked_in_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for (name, yaml) in crd_files().expect("CRDs serialize") {
        let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(on_disk == yaml, "deploy/crds/{name} is out of date: run `cargo xtask crds`");
    }
}

#[test]
fn a_policy_object_deserializes_into_the_policy_model() {
    let p: EgressPolicy = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "EgressPolicy",
        "metadata": {"name": "models", "namespace": "ws-acme-corp"},
        "spec": {"podSelector": {"matchLabels": {"app": "agent"}}, "mode": "audit",
            "egress": [{"toFQDNs": [{"matchName": "api.anthropic.com"}], "ports": [{"port": 443}]}]}
    }))
    .expect("deserializes");
    assert_eq!(p.spec.mode, PolicyMode::Audit);
    let policy = crate::policy::Policy::from_spec(&p.spec.policy(), "egresspolicy ws-acme-corp/models").expect("valid");
    assert_eq!(policy.egress.len(), 1);
}

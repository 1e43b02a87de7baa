//! Discovery documents (`/version`, `/api`, `/apis`, group-version resource
//! lists), built from the resource table. Typed `Api<K>` never asks for
//! them; `kube::Discovery` and `Client::apiserver_version` do.

use serde_json::{Value, json};

use super::{resource::ResourceDef, state::Shared, status::ApiError};

pub(super) fn answer(shared: &Shared, path: &str) -> Result<Value, ApiError> {
    let defs = shared.registry.defs();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["version"] => Ok(json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-fakeapi",
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "",
            "compiler": "",
            "platform": "linux/amd64",
        })),
        ["api"] => Ok(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})),
        ["apis"] => {
            let groups: Vec<Value> = groups(defs).iter().map(|g| group(defs, g)).collect();
            Ok(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["apis", g] if groups(defs).iter().any(|x| x == g) => {
            Ok(json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": group(defs, g)["versions"]}))
        }
        ["api", v] => Ok(resource_list(defs, "", v)),
        ["apis", g, v] => Ok(resource_list(defs, g, v)),
        _ => Err(ApiError::no_route()),
    }
}

/// Named groups, in table order, without duplicates.
fn groups(defs: &[ResourceDef]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in defs.iter().filter(|d| !d.group.is_empty()) {
        if !out.contains(&d.group) {
            out.push(d.group.clone());
        }
    }
    out
}

fn group(defs: &[ResourceDef], name: &str) -> Value {
    let mut versions: Vec<Value> = Vec::new();
    for d in defs.iter().filter(|d| d.group == name) {
        let gv = json!({"groupVersion": d.api_version(), "version": d.version});
        if !versions.contains(&gv) {
            versions.push(gv);
        }
    }
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": name, "versions": versions, "preferredVersion": preferred})
}

fn resource_list(defs: &[ResourceDef], group: &str, version: &str) -> Value {
    let resources: Vec<Value> = defs
        .iter()
        .filter(|d| d.group == group && d.version == version)
        .map(|d| {
            json!({
                "name": d.plural,
                "singularName": d.kind.to_ascii_lowercase(),
                "namespaced": d.namespaced,
                "kind": d.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            })
        })
        .collect();
    let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

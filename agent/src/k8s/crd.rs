//! The two policy kinds as Kubernetes custom resources, from Rust types
//! (kube-derive + schemars): `EgressPolicy` (namespaced: the pods of one
//! namespace that its `podSelector` selects) and `ClusterEgressPolicy`
//! (cluster-scoped, for the platform team: the pods its `podSelector`
//! selects in every namespace its `namespaceSelector` selects).
//!
//! The CRD YAML under `deploy/crds/` is generated from these types
//! (`cargo xtask crds`, `portcullis crds`); `cargo xtask test` fails when it
//! drifts. No status is written on policy objects: one object is read by
//! every node, and per-node status does not scale (Cilium removed its
//! `CiliumNetworkPolicy.status.nodes` for that reason). Enforcement per pod
//! shows in the metrics and the log.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, CustomResourceExt as _, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::model::{DnsSpec, EgressRuleSpec, PolicySpec};

/// Enforce (deny what no rule allows) or audit (log what would have been
/// denied, deny nothing). A pod selected by both gets enforce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    #[default]
    Enforce,
    Audit,
}

/// `EgressPolicy.spec`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[expect(clippy::duplicated_attributes, reason = "kube-derive takes one printcolumn(...) per column")]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "EgressPolicy",
    namespaced,
    shortname = "egp",
    category = "portcullis",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Names", type_ = "string", json_path = ".spec.egress[*].toFQDNs[*].matchName"),
    printcolumn(name = "Patterns", type_ = "string", json_path = ".spec.egress[*].toFQDNs[*].matchPattern"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicySpec {
    /// The pods of this namespace the policy applies to; `{}` selects all.
    pub pod_selector: LabelSelector,
    #[serde(default)]
    pub mode: PolicyMode,
    /// Allow rules. Every policy selecting a pod adds to what it may reach;
    /// a pod no policy selects may reach nothing but its resolvers.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub egress: Vec<EgressRuleSpec>,
    #[serde(default)]
    pub dns: DnsSpec,
}

/// `ClusterEgressPolicy.spec`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[expect(clippy::duplicated_attributes, reason = "kube-derive takes one printcolumn(...) per column")]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "ClusterEgressPolicy",
    shortname = "cegp",
    category = "portcullis",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Names", type_ = "string", json_path = ".spec.egress[*].toFQDNs[*].matchName"),
    printcolumn(name = "Services", type_ = "string", json_path = ".spec.egress[*].toServices[*].name"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEgressPolicySpec {
    /// The namespaces whose pods it may select, by namespace label; `{}`
    /// selects all namespaces.
    pub namespace_selector: LabelSelector,
    /// The pods of those namespaces it applies to; `{}` selects all.
    pub pod_selector: LabelSelector,
    #[serde(default)]
    pub mode: PolicyMode,
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub egress: Vec<EgressRuleSpec>,
    #[serde(default)]
    pub dns: DnsSpec,
}

impl EgressPolicySpec {
    pub fn policy(&self) -> PolicySpec {
        PolicySpec { egress: self.egress.clone(), dns: self.dns.clone() }
    }
}

impl ClusterEgressPolicySpec {
    pub fn policy(&self) -> PolicySpec {
        PolicySpec { egress: self.egress.clone(), dns: self.dns.clone() }
    }
}

/// The generated CRDs, as (file name, YAML), in a stable order.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    let header = "# Generated from agent/src/k8s/crd.rs by `cargo xtask crds`; do not edit.\n";
    let mut out = Vec::new();
    for crd in [EgressPolicy::crd(), ClusterEgressPolicy::crd()] {
        let name = crd.metadata.name.clone().unwrap_or_default();
        out.push((format!("{name}.yaml"), format!("{header}{}", serde_saphyr::to_string(&crd)?)));
    }
    Ok(out)
}

/// `portcullis crds`: to stdout (a multi-document stream), or one file per
/// CRD into `out`.
pub fn print(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let files = crd_files().context("serializing the CRDs")?;
    match out {
        None => {
            let docs: Vec<&str> = files.iter().map(|(_, y)| y.as_str()).collect();
            print!("{}", docs.join("---\n"));
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, yaml) in files {
                let path = dir.join(name);
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "crd_tests.rs"]
mod tests;

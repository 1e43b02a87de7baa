//! What the agent needs to know of a pod, read off the API object, and what
//! about it the cgroup hooks cannot fully enforce (`Gap`): said in the log
//! and in a per-pod metric, never silently.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::{Pod, SecurityContext};

pub use crate::telemetry::k8s::Gap;

/// A pod as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    /// The UID kubelet names the pod's cgroup by: the pod's own, or for a
    /// static pod (whose API object is a mirror) its config hash.
    pub cgroup_uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub qos: Option<String>,
    pub host_network: bool,
    pub runtime_class: Option<String>,
    /// Succeeded or Failed: its containers are gone.
    pub finished: bool,
    /// `dnsPolicy: None` with `dnsConfig.nameservers`: the pod's resolvers
    /// straight from the API.
    pub nameservers: Option<Vec<String>>,
    /// Its resolvers are the cluster's DNS (kubelet's `clusterDNS`):
    /// `dnsPolicy` ClusterFirstWithHostNet, or ClusterFirst (the default)
    /// without hostNetwork (kubelet gives a hostNetwork ClusterFirst pod
    /// the node's resolvers, as for `Default`).
    pub cluster_first: bool,
    /// What its spec keeps that cgroup hooks cannot contain (not counting
    /// the cgroup, found later).
    pub gaps: Vec<Gap>,
    /// `status.podIPs` (and `podIP`): the addresses it may send from on
    /// its veth.
    pub ips: Vec<IpAddr>,
}

/// Runtime class names that are sandboxed (`kata*`: a prefix).
pub fn is_sandboxed(class: &str, sandboxed: &[String]) -> bool {
    sandboxed.iter().any(|s| match s.strip_suffix('*') {
        Some(prefix) => class.starts_with(prefix),
        None => class == s,
    })
}

impl PodInfo {
    /// `None` for an object without a UID, name or namespace (not a pod
    /// the API server would serve).
    pub fn from_pod(pod: &Pod, sandboxed: &[String]) -> Option<Self> {
        let meta = &pod.metadata;
        let (uid, namespace, name) = (meta.uid.clone()?, meta.namespace.clone()?, meta.name.clone()?);
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let runtime_class = spec.and_then(|s| s.runtime_class_name.clone());
        let mut gaps = Vec::new();
        if host_network {
            gaps.push(Gap::HostNetwork);
        }
        let contexts: Vec<Option<&SecurityContext>> = spec
            .map(|s| {
                let main = s.containers.iter().map(|c| c.security_context.as_ref());
                let init = s.init_containers.iter().flatten().map(|c| c.security_context.as_ref());
                let eph = s.ephemeral_containers.iter().flatten().map(|c| c.security_context.as_ref());
                main.chain(init).chain(eph).collect()
            })
            .unwrap_or_default();
        let privileged = contexts.iter().flatten().any(|c| c.privileged == Some(true));
        if privileged {
            gaps.push(Gap::Privileged);
        }
        if privileged || contexts.iter().any(|c| keeps_cap(*c, "NET_RAW", true)) {
            gaps.push(Gap::NetRaw);
        }
        if privileged || contexts.iter().any(|c| keeps_cap(*c, "NET_ADMIN", false)) {
            gaps.push(Gap::NetAdmin);
        }
        if runtime_class.as_deref().is_some_and(|c| is_sandboxed(c, sandboxed)) {
            gaps.push(Gap::SandboxedRuntime);
        }
        let phase = status.and_then(|s| s.phase.as_deref());
        let nameservers = spec
            .filter(|s| s.dns_policy.as_deref() == Some("None"))
            .and_then(|s| s.dns_config.as_ref())
            .and_then(|c| c.nameservers.clone());
        let cgroup_uid =
            meta.annotations.as_ref().and_then(|a| a.get("kubernetes.io/config.mirror")).cloned().unwrap_or_else(|| uid.clone());
        Some(Self {
            cgroup_uid,
            uid,
            namespace,
            name,
            labels: meta.labels.clone().unwrap_or_default(),
            qos: status.and_then(|s| s.qos_class.clone()),
            host_network,
            runtime_class,
            finished: matches!(phase, Some("Succeeded" | "Failed")),
            nameservers,
            cluster_first: match spec.and_then(|s| s.dns_policy.as_deref()) {
                Some("ClusterFirstWithHostNet") => true,
                None | Some("ClusterFirst") => !host_network,
                Some(_) => false,
            },
            gaps,
            ips: pod_ips(status),
        })
    }
}

fn pod_ips(status: Option<&k8s_openapi::api::core::v1::PodStatus>) -> Vec<IpAddr> {
    let Some(st) = status else { return Vec::new() };
    let listed = st.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let mut ips: Vec<IpAddr> = st.pod_ip.as_deref().into_iter().chain(listed).filter_map(|s| s.parse().ok()).collect();
    ips.sort_unstable();
    ips.dedup();
    ips
}

/// Whether a container keeps capability `cap`: added (or `ALL`), or in the
/// runtime's default set (`by_default`) and not dropped.
fn keeps_cap(ctx: Option<&SecurityContext>, cap: &str, by_default: bool) -> bool {
    let caps = ctx.and_then(|c| c.capabilities.as_ref());
    let named = |list: Option<&Vec<String>>| {
        list.into_iter().flatten().any(|c| {
            let c = c.strip_prefix("CAP_").unwrap_or(c);
            c.eq_ignore_ascii_case(cap) || c.eq_ignore_ascii_case("ALL")
        })
    };
    let added = named(caps.and_then(|c| c.add.as_ref()));
    let dropped = named(caps.and_then(|c| c.drop.as_ref()));
    added || (by_default && !dropped)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(spec: serde_json::Value) -> PodInfo {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "ws-acme-corp", "uid": "u-1", "labels": {"app": "agent"}},
            "spec": spec,
            "status": {"qosClass": "Burstable", "phase": "Running"}
        }))
        .unwrap();
        PodInfo::from_pod(&p, &["gvisor".into(), "kata*".into()]).unwrap()
    }

    #[test]
    fn gaps_are_read_off_the_spec() {
        let dropped = json!({"containers": [{"name": "c", "securityContext": {"capabilities": {"drop": ["ALL"]}}}]});
        assert_eq!(pod(dropped).gaps, vec![]);
        let default = json!({"containers": [{"name": "c"}]});
        assert_eq!(pod(default).gaps, vec![Gap::NetRaw], "runtimes grant NET_RAW unless dropped");
        let admin = json!({"containers": [{"name": "c", "securityContext": {"capabilities": {"drop": ["NET_RAW"], "add": ["CAP_NET_ADMIN"]}}}]});
        assert_eq!(pod(admin).gaps, vec![Gap::NetAdmin]);
        let init = json!({"containers": [{"name": "c", "securityContext": {"capabilities": {"drop": ["ALL"]}}}],
            "initContainers": [{"name": "i", "securityContext": {"privileged": true}}]});
        assert_eq!(pod(init).gaps, vec![Gap::Privileged, Gap::NetRaw, Gap::NetAdmin], "init containers count");
        let sandboxed = json!({"runtimeClassName": "kata-qemu", "hostNetwork": true,
            "containers": [{"name": "c", "securityContext": {"capabilities": {"drop": ["ALL"]}}}]});
        assert_eq!(pod(sandboxed).gaps, vec![Gap::HostNetwork, Gap::SandboxedRuntime]);
    }

    #[test]
    fn identity_qos_and_dns_config() {
        let p = pod(json!({"containers": [{"name": "c"}], "dnsPolicy": "None", "dnsConfig": {"nameservers": ["192.0.2.53"]}}));
        assert_eq!((p.uid.as_str(), p.namespace.as_str(), p.name.as_str()), ("u-1", "ws-acme-corp", "a"));
        assert_eq!(p.qos.as_deref(), Some("Burstable"));
        assert_eq!(p.nameservers, Some(vec!["192.0.2.53".to_owned()]));
        assert!(!p.finished);
        let cluster_first = pod(json!({"containers": [{"name": "c"}], "dnsConfig": {"nameservers": ["192.0.2.53"]}}));
        assert_eq!(cluster_first.nameservers, None, "ClusterFirst: the cluster's DNS");
        assert!(cluster_first.cluster_first);
        let host = pod(json!({"containers": [{"name": "c"}], "hostNetwork": true}));
        assert!(!host.cluster_first, "hostNetwork with ClusterFirst: the node's resolvers");
        let with_host = pod(json!({"containers": [{"name": "c"}], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}));
        assert!(with_host.cluster_first);
    }
}

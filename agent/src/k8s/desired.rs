//! What each pod on this node should get, from the API objects alone
//! (pure: no disk, no kernel): the union of the allows of every policy that
//! selects it, `toServices` turned into the Services' ClusterIPs, and its
//! mode. Semantics (docs/ARCHITECTURE.md "Kubernetes"):
//! - allows are unioned, as NetworkPolicy's are (there are no deny rules);
//! - a pod no policy selects gets nothing but DNS to its resolvers;
//! - enforce wins over audit;
//! - `dns.servers`: the union of the lists policies set, or the pod's own
//!   resolvers if none sets one; `dns.allowNames`: the union;
//! - the agent's own pod and pods of exempt namespaces are exempt.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use super::{crd::PolicyMode, pods::PodInfo, policies::PolicyBook};
use crate::{
    enforcer::Mode,
    policy::{PolicySpec, model::EgressRuleSpec},
};

/// Node settings the reconciler applies.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Namespaces whose pods are exempt (system namespaces).
    pub exempt_namespaces: Vec<String>,
    /// The agent's own pod (`POD_UID`): exempt first, without the API.
    pub own_pod: Option<String>,
}

/// The ClusterIPs of the Services on record, by (namespace, name).
pub type ServiceIps = HashMap<(String, String), Vec<IpAddr>>;

/// One pod's desired endpoint, before its cgroup and resolvers are found.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    pub pod: PodInfo,
    pub mode: Mode,
    /// The union, `toServices` already expanded into `toCIDRs`.
    pub spec: PolicySpec,
    /// Per rule of `spec.egress`: the policy and its index there.
    pub origins: Vec<(Arc<str>, usize)>,
    /// The policies that select it, sorted.
    pub policies: Vec<Arc<str>>,
    /// `toServices` entries with no ClusterIP on record (not found, or
    /// headless): they open nothing until they have one.
    pub unresolved: Vec<String>,
}

/// The desired endpoint of every pod given (finished pods get none).
pub fn desired(
    pods: &[PodInfo],
    namespaces: &HashMap<String, BTreeMap<String, String>>,
    book: &PolicyBook,
    services: &ServiceIps,
    settings: &Settings,
) -> Vec<Want> {
    let mut out = Vec::with_capacity(pods.len());
    for pod in pods.iter().filter(|p| !p.finished) {
        let exempt = settings.own_pod.as_deref() == Some(pod.uid.as_str()) || settings.exempt_namespaces.contains(&pod.namespace);
        if exempt {
            out.push(Want {
                pod: pod.clone(),
                mode: Mode::Exempt,
                spec: PolicySpec::default(),
                origins: Vec::new(),
                policies: Vec::new(),
                unresolved: Vec::new(),
            });
            continue;
        }
        let mut selecting: Vec<_> =
            book.valid().filter(|p| p.selects(&pod.namespace, namespaces.get(&pod.namespace), &pod.labels)).collect();
        selecting.sort_by(|a, b| a.name.cmp(&b.name));
        out.push(union(pod, &selecting, services));
    }
    out
}

fn union(pod: &PodInfo, selecting: &[&super::policies::ValidPolicy], services: &ServiceIps) -> Want {
    let mode =
        if !selecting.is_empty() && selecting.iter().all(|p| p.mode == PolicyMode::Audit) { Mode::Audit } else { Mode::Enforce };
    // Enforced, an audit policy's rules allow nothing: trying a rule out in
    // audit must not grant it to pods another policy enforces.
    let selecting: Vec<&super::policies::ValidPolicy> =
        selecting.iter().copied().filter(|p| mode == Mode::Audit || p.mode == PolicyMode::Enforce).collect();
    let mut spec = PolicySpec::default();
    let mut origins = Vec::new();
    let mut unresolved = Vec::new();
    let mut servers: Option<Vec<String>> = None;
    let mut allow_names = BTreeSet::new();
    for p in &selecting {
        for (i, rule) in p.spec.egress.iter().enumerate() {
            let rule = match &rule.to_services {
                None => rule.clone(),
                Some(list) => {
                    let mut ips: Vec<String> = Vec::new();
                    for s in list {
                        match services.get(&(s.namespace.clone(), s.name.clone())).filter(|v| !v.is_empty()) {
                            Some(v) => ips.extend(v.iter().map(IpAddr::to_string)),
                            None => unresolved.push(format!("{}/{} ({} egress[{i}])", s.namespace, s.name, p.name)),
                        }
                    }
                    if ips.is_empty() {
                        continue;
                    }
                    EgressRuleSpec { to_cidrs: Some(ips), to_services: None, ..rule.clone() }
                }
            };
            spec.egress.push(rule);
            origins.push((p.name.clone(), i));
        }
        if let Some(list) = &p.spec.dns.servers {
            let all = servers.get_or_insert_with(Vec::new);
            for s in list {
                if !all.contains(s) {
                    all.push(s.clone());
                }
            }
        }
        allow_names.extend(p.spec.dns.allow_names.iter().cloned());
    }
    spec.dns.servers = servers;
    spec.dns.allow_names = allow_names.into_iter().collect();
    Want { pod: pod.clone(), mode, spec, origins, policies: selecting.iter().map(|p| p.name.clone()).collect(), unresolved }
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;

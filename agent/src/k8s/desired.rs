//! What each pod on this node should get, from the API objects alone
//! (pure: no disk, no kernel): the union of the allows of every policy that
//! selects it, `toServices` turned into the Services' ClusterIPs and
//! backends (`services.rs`), and its mode. Semantics (docs/ARCHITECTURE.md "Kubernetes"):
//! - allows are unioned, as NetworkPolicy's are (there are no deny rules);
//! - a pod no policy selects gets nothing but DNS to its resolvers;
//! - enforce wins over audit;
//! - `dns.servers`: the union of the lists policies set, or the pod's own
//!   resolvers if none sets one; `dns.allowNames`: the union;
//! - the agent's own pod and pods of exempt namespaces are exempt.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

pub use super::services::ServiceIps;
use super::{crd::PolicyMode, pods::PodInfo, policies::PolicyBook, services::MAX_BACKENDS_PER_RULE};
use crate::{enforcer::Mode, policy::PolicySpec};

/// Node settings the reconciler applies.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Namespaces whose pods are exempt (system namespaces).
    pub exempt_namespaces: Vec<String>,
    /// The agent's own pod (`POD_UID`): exempt first, without the API.
    pub own_pod: Option<String>,
}

/// One pod's desired endpoint, before its cgroup and resolvers are found.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    pub pod: PodInfo,
    pub mode: Mode,
    /// The union, `toServices` already expanded into `toCIDRs` (the
    /// ClusterIPs, then the backends: one origin may have several rules).
    pub spec: PolicySpec,
    /// Per rule of `spec.egress`: the policy and its index there.
    pub origins: Vec<(Arc<str>, usize)>,
    /// The policies that select it, sorted.
    pub policies: Vec<Arc<str>>,
    /// `toServices` entries that open nothing (not found, or neither a
    /// ClusterIP nor a backend) until the Service has one.
    pub unresolved: Vec<String>,
    /// `toServices` rules with more backends than the cap: only the first
    /// `MAX_BACKENDS_PER_RULE` are opened.
    pub capped: Vec<String>,
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
                capped: Vec::new(),
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
    let mut capped = Vec::new();
    let mut servers: Option<Vec<String>> = None;
    let mut allow_names = BTreeSet::new();
    for p in &selecting {
        for (i, rule) in p.spec.egress.iter().enumerate() {
            let Some(list) = &rule.to_services else {
                spec.egress.push(rule.clone());
                origins.push((p.name.clone(), i));
                continue;
            };
            let x = services.expand(rule, list);
            unresolved.extend(x.unresolved.iter().map(|s| format!("{s} ({} egress[{i}])", p.name)));
            if let Some(n) = x.capped {
                capped.push(format!("{} egress[{i}]: {n} backends, {MAX_BACKENDS_PER_RULE} opened", p.name));
            }
            origins.extend(x.rules.iter().map(|_| (p.name.clone(), i)));
            spec.egress.extend(x.rules);
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
    let policies = selecting.iter().map(|p| p.name.clone()).collect();
    Want { pod: pod.clone(), mode, spec, origins, policies, unresolved, capped }
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;

//! The policy objects the node knows, each validated once per change.
//! An object that does not validate (a selector or a field the agent
//! cannot use) is reported (log, `portcullis_k8s_policies_invalid`) and
//! changes nothing: the pods it selected keep what its last valid version
//! gave them, and a new invalid object gives nobody anything.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use kube::ResourceExt as _;
use tracing::{error, info};

use super::{
    crd::{ClusterEgressPolicy, EgressPolicy, PolicyMode},
    select::Selector,
};
use crate::policy::{Policy, PolicySpec};

/// Whether the object's spec validates and compiles into what the kernel
/// holds (e.g. at most `CIDR_MAX_PORTS` port ranges per CIDR): checked per
/// object, so a policy the agent cannot use is reported as such, not only
/// as a failure of every pod it selects. Its Services and resolvers are
/// stand-ins here (the real ones are known per pod).
fn compiles(p: &ValidPolicy) -> Result<(), String> {
    let mut spec = p.spec.clone();
    for rule in &mut spec.egress {
        if rule.to_services.take().is_some() {
            rule.to_cidrs = Some(vec!["192.0.2.1".to_owned()]);
        }
    }
    spec.dns.servers.get_or_insert_with(Vec::new);
    let policy = Policy::from_spec(&spec, &p.name).map_err(|e| e.to_string())?;
    crate::policy::compile(&policy, || Ok::<_, std::io::Error>(Vec::new())).map_err(|e| format!("{}: {e}", p.name))?;
    Ok(())
}

/// A validated policy object.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPolicy {
    /// `egresspolicy ns/name` or `clusteregresspolicy name`: rule origins
    /// and logs name it so.
    pub name: Arc<str>,
    /// `Some(ns)`: an EgressPolicy, selecting pods of that namespace only.
    pub namespace: Option<String>,
    /// ClusterEgressPolicy: the namespaces it may select pods in.
    pub namespaces: Option<Selector>,
    pub pods: Selector,
    pub mode: PolicyMode,
    pub spec: PolicySpec,
}

impl ValidPolicy {
    /// Whether it selects a pod with `labels` in namespace `ns` (whose
    /// labels are `ns_labels`; an unknown namespace has none).
    pub fn selects(
        &self,
        ns: &str,
        ns_labels: Option<&std::collections::BTreeMap<String, String>>,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        let ns_ok = match (&self.namespace, &self.namespaces) {
            (Some(own), _) => own == ns,
            (None, Some(sel)) => ns_labels.is_some_and(|l| sel.matches(l)),
            (None, None) => false,
        };
        ns_ok && self.pods.matches(labels)
    }
}

struct Entry {
    /// The object's resourceVersion when last looked at.
    version: String,
    /// Its last valid form, if any.
    good: Option<ValidPolicy>,
    /// Why the current version is refused.
    problem: Option<String>,
}

/// A policy object as watched: typed, or why not.
pub type Decoded<K> = Result<Arc<K>, Undecodable>;

/// An object that does not decode into its kind (e.g. a field newer than
/// this agent): refused like an invalid one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    pub namespace: Option<String>,
    pub name: String,
    pub version: String,
    pub error: String,
}

/// Every policy object, keyed by name.
#[derive(Default)]
pub struct PolicyBook {
    entries: HashMap<Arc<str>, Entry>,
}

impl PolicyBook {
    /// Brings the book up to the objects given (the reflectors' stores):
    /// new and changed objects are validated, deleted ones forgotten.
    /// Returns whether anything changed.
    pub fn update(&mut self, namespaced: &[Decoded<EgressPolicy>], cluster: &[Decoded<ClusterEgressPolicy>]) -> bool {
        let mut seen: HashSet<Arc<str>> = HashSet::with_capacity(namespaced.len() + cluster.len());
        let mut changed = false;
        let undecodable =
            namespaced.iter().filter_map(|d| d.as_ref().err()).chain(cluster.iter().filter_map(|d| d.as_ref().err()));
        for u in undecodable {
            let name: Arc<str> = match &u.namespace {
                Some(ns) => format!("egresspolicy {ns}/{}", u.name),
                None => format!("clusteregresspolicy {}", u.name),
            }
            .into();
            changed |= self.look(&name, &u.version, || Err(format!("does not decode: {}", u.error)));
            seen.insert(name);
        }
        for p in namespaced.iter().filter_map(|d| d.as_ref().ok()) {
            let ns = p.namespace().unwrap_or_default();
            let name: Arc<str> = format!("egresspolicy {ns}/{}", p.name_any()).into();
            changed |= self.look(&name, &p.resource_version().unwrap_or_default(), || {
                let pods = Selector::new(&p.spec.pod_selector).map_err(|e| format!("podSelector.{e}"))?;
                Ok(ValidPolicy {
                    name: name.clone(),
                    namespace: Some(ns.clone()),
                    namespaces: None,
                    pods,
                    mode: p.spec.mode,
                    spec: p.spec.policy(),
                })
            });
            seen.insert(name);
        }
        for p in cluster.iter().filter_map(|d| d.as_ref().ok()) {
            let name: Arc<str> = format!("clusteregresspolicy {}", p.name_any()).into();
            changed |= self.look(&name, &p.resource_version().unwrap_or_default(), || {
                let pods = Selector::new(&p.spec.pod_selector).map_err(|e| format!("podSelector.{e}"))?;
                let namespaces = Selector::new(&p.spec.namespace_selector).map_err(|e| format!("namespaceSelector.{e}"))?;
                Ok(ValidPolicy {
                    name: name.clone(),
                    namespace: None,
                    namespaces: Some(namespaces),
                    pods,
                    mode: p.spec.mode,
                    spec: p.spec.policy(),
                })
            });
            seen.insert(name);
        }
        let before = self.entries.len();
        self.entries.retain(|k, _| seen.contains(k));
        changed || self.entries.len() != before
    }

    /// Validates `name` at `version` unless already done.
    fn look(&mut self, name: &Arc<str>, version: &str, build: impl FnOnce() -> Result<ValidPolicy, String>) -> bool {
        if self.entries.get(name).is_some_and(|e| e.version == version) {
            return false;
        }
        let checked = build().and_then(|p| compiles(&p).map(|()| p));
        let entry = self.entries.entry(name.clone()).or_insert(Entry { version: String::new(), good: None, problem: None });
        entry.version = version.to_owned();
        match checked {
            Ok(p) => {
                if entry.problem.take().is_some() {
                    info!(policy = %name, "policy valid again");
                }
                let changed = entry.good.as_ref() != Some(&p);
                entry.good = Some(p);
                changed
            }
            Err(problem) => {
                error!(policy = %name, error = %problem, kept = entry.good.is_some(),
                    "policy refused: it changes nothing (its last valid version stays in force, if any)");
                entry.problem = Some(problem);
                false
            }
        }
    }

    /// The policies in force (the last valid version of each object).
    pub fn valid(&self) -> impl Iterator<Item = &ValidPolicy> {
        self.entries.values().filter_map(|e| e.good.as_ref())
    }

    /// Objects whose current version is refused, with why.
    pub fn problems(&self) -> Vec<(Arc<str>, String)> {
        let mut out: Vec<_> = self.entries.iter().filter_map(|(k, e)| Some((k.clone(), e.problem.clone()?))).collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn egp(name: &str, version: &str, spec: serde_json::Value) -> Decoded<EgressPolicy> {
        Ok(Arc::new(
            serde_json::from_value(json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "EgressPolicy",
                "metadata": {"name": name, "namespace": "ws-a", "resourceVersion": version}, "spec": spec}))
            .unwrap(),
        ))
    }

    fn names(b: &PolicyBook) -> Vec<String> {
        let mut v: Vec<String> =
            b.valid().map(|p| format!("{}:{}", p.name, serde_json::to_string(&p.spec.egress).unwrap())).collect();
        v.sort();
        v
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_valid_version_and_a_new_invalid_object_gives_nothing() {
        let mut b = PolicyBook::default();
        let good = json!({"podSelector": {}, "egress": [{"toFQDNs": [{"matchName": "a.test"}]}]});
        let bad = json!({"podSelector": {}, "egress": [{"toFQDNs": [{"matchName": "a.test"}], "toCIDRs": ["192.0.2.0/24"]}]});
        assert!(b.update(&[egp("p", "1", good)], &[]));
        let before = names(&b);
        assert!(!b.update(&[egp("p", "2", bad.clone())], &[]), "a refused edit changes nothing");
        assert_eq!(names(&b), before);
        assert_eq!(b.problems().len(), 1);
        assert!(b.problems()[0].1.contains("egress[0]: set exactly one of"), "{:?}", b.problems());
        assert!(!b.update(&[egp("p", "2", bad.clone()), egp("q", "3", bad)], &[]));
        assert_eq!(names(&b), before, "a new invalid object gives nothing");
        let bad_selector = json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals"}]}});
        b.update(&[egp("p", "4", bad_selector)], &[]);
        assert!(b.problems().iter().any(|(n, e)| n.ends_with("ws-a/p") && e.starts_with("podSelector.matchExpressions[0]")));
        let ports: Vec<_> = (1..=9).map(|i| json!({"port": i * 100})).collect();
        let too_many = json!({"podSelector": {}, "egress": [{"toCIDRs": ["192.0.2.0/24"], "ports": ports}]});
        b.update(&[egp("p", "4b", too_many)], &[]);
        assert!(b.problems().iter().any(|(_, e)| e.contains("port ranges")), "compiled per object: {:?}", b.problems());
        let undecodable = Err(Undecodable {
            namespace: Some("ws-a".into()),
            name: "p".into(),
            version: "4c".into(),
            error: "unknown field `toPlanets`".into(),
        });
        b.update(&[undecodable], &[]);
        assert!(b.problems().iter().any(|(n, e)| n.ends_with("ws-a/p") && e.contains("does not decode")), "{:?}", b.problems());
        assert!(b.update(&[egp("p", "5", json!({"podSelector": {}}))], &[]), "valid again");
        assert!(b.problems().is_empty());
        assert!(b.update(&[], &[]), "deleted");
        assert_eq!(b.valid().count(), 0);
    }
}

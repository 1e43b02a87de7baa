//! Bringing a running agent to a desired set of endpoints (a reloaded
//! `run` config, or what the Kubernetes agent derives from the API):
//! only the difference. Endpoints are matched by cgroup (its id): one the
//! desired set drops is removed, a new one added, one whose identity,
//! policy or mode changed gets them in place (`Agent::set_policy`), and
//! the others are not touched at all (no re-attach, no lost learned
//! state, no cache flush).

use std::collections::{HashMap, HashSet};

use anyhow::{Context as _, Result};
use tracing::{info, warn};

use std::path::PathBuf;

use crate::{
    agent::Agent,
    enforcer::{Identity, Mode},
    policy::CompiledPolicy,
};

/// One endpoint, checked and compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub identity: Identity,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub policy: CompiledPolicy,
    pub mode: Mode,
}

/// What the agent enforces now, by cgroup id: its endpoint id and config.
pub type Enforced = HashMap<u64, (u32, Prepared)>;

/// The difference between what is enforced and a new config.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub add: Vec<Prepared>,
    /// (endpoint id, its new config).
    pub change: Vec<(u32, Prepared)>,
    /// (endpoint id, cgroup id).
    pub remove: Vec<(u32, u64)>,
    pub untouched: usize,
}

impl Plan {
    pub fn new(now: &Enforced, next: Vec<Prepared>) -> Self {
        let mut plan = Self::default();
        let keep: HashSet<u64> = next.iter().map(|p| p.cgroup_id).collect();
        for p in next {
            match now.get(&p.cgroup_id) {
                None => plan.add.push(p),
                Some((_, old)) if *old == p => plan.untouched += 1,
                Some((id, _)) => plan.change.push((*id, p)),
            }
        }
        let mut remove: Vec<(u32, u64)> = now.iter().filter(|(c, _)| !keep.contains(c)).map(|(c, (id, _))| (*id, *c)).collect();
        remove.sort_unstable();
        plan.remove = remove;
        plan
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.change.is_empty() && self.remove.is_empty()
    }
}

/// Where the programs go for a new endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachEach {
    /// To the endpoint's own cgroup (`run`).
    Endpoint,
    /// Nowhere: one attach point above every endpoint covers it (the
    /// Kubernetes agent's kubelet pod parent).
    Parent,
}

/// Adds one endpoint to a running agent (and attaches it, `how`):
/// enforcing when this returns. A failure leaves nothing of it behind.
pub fn add(agent: &mut Agent, ep: &Prepared, how: AttachEach) -> Result<u32> {
    let id = agent.add_endpoint(ep.identity.clone(), ep.cgroup_id, ep.policy.clone(), ep.mode)?;
    if how == AttachEach::Parent {
        agent.open_dns_gates(id, &crate::cgroup::procs_below(&ep.cgroup));
        return Ok(id);
    }
    if let Err(e) = agent.attach(&ep.cgroup, ep.cgroup_id) {
        if let Err(undo) = agent.remove_endpoint(id) {
            warn!(error = %undo, endpoint = %ep.identity.name, "undoing a failed add failed");
        }
        return Err(e);
    }
    agent.open_dns_gates(id, &crate::cgroup::procs_below(&ep.cgroup));
    Ok(id)
}

/// Applies `plan`: changes first, then additions, then removals. Goes on
/// past a failure (the rest still applies; a failed endpoint keeps what it
/// had) and returns the first.
pub fn apply(agent: &mut Agent, enforced: &mut Enforced, plan: Plan, how: AttachEach) -> Result<()> {
    let mut first: Result<()> = Ok(());
    for (id, p) in plan.change {
        let pids = crate::cgroup::procs_below(&p.cgroup);
        match agent.set_policy(id, p.identity.clone(), p.policy.clone(), p.mode, &pids) {
            Ok(c) => {
                info!(endpoint = %p.identity.name, revoked_pairs = c.revoked_pairs, keys_removed = c.keys_removed,
                    keys_written = c.keys_written, "policy changed");
                enforced.insert(p.cgroup_id, (id, p));
            }
            Err(e) => first = first.and(Err(e.context(format!("changing endpoint {}", p.identity.name)))),
        }
    }
    for p in plan.add {
        match add(agent, &p, how) {
            Ok(id) => {
                info!(endpoint = %p.identity.name, cgroup = %p.cgroup.display(), "enforcing");
                enforced.insert(p.cgroup_id, (id, p));
            }
            Err(e) => first = first.and(Err(e.context(format!("adding endpoint {}", p.identity.name)))),
        }
    }
    for (id, cgroup_id) in plan.remove {
        let name = enforced.get(&cgroup_id).map(|(_, p)| p.identity.name.clone()).unwrap_or_default();
        match agent.remove_endpoint(id).with_context(|| format!("removing endpoint {name}")) {
            Ok(()) => {
                info!(endpoint = %name, "no longer enforced: gone from the desired endpoints");
                enforced.remove(&cgroup_id);
            }
            Err(e) => first = first.and(Err(e)),
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, compile};

    fn ep(cgroup_id: u64, name: &str, allow: &str) -> Prepared {
        let yaml = format!(
            "egress:\n  - toFQDNs: [{{matchName: {allow}}}]\n    ports: [{{port: 443}}]\ndns:\n  servers: [\"192.0.2.53\"]\n"
        );
        let policy = compile(&Policy::from_yaml_str(&yaml, "test").expect("policy"), || Ok::<_, std::io::Error>(Vec::new()))
            .expect("compiles");
        Prepared {
            identity: Identity { name: name.into(), ..Identity::default() },
            cgroup: PathBuf::from(format!("/cg/{name}")),
            cgroup_id,
            policy,
            mode: Mode::Enforce,
        }
    }

    #[test]
    fn a_plan_holds_only_the_difference() {
        let now: Enforced =
            [(1, (10, ep(1, "same", "a.test"))), (2, (20, ep(2, "narrowed", "a.test"))), (3, (30, ep(3, "gone", "a.test")))]
                .into();
        let plan = Plan::new(&now, vec![ep(1, "same", "a.test"), ep(2, "narrowed", "b.test"), ep(4, "new", "a.test")]);
        assert_eq!(plan.untouched, 1);
        assert_eq!(plan.change, [(20, ep(2, "narrowed", "b.test"))]);
        assert_eq!(plan.add, [ep(4, "new", "a.test")]);
        assert_eq!(plan.remove, [(30, 3)]);
        let mut audit = ep(1, "same", "a.test");
        audit.mode = Mode::Audit;
        let plan = Plan::new(&now, vec![audit.clone(), ep(2, "narrowed", "a.test"), ep(3, "gone", "a.test")]);
        assert_eq!(plan.change, [(10, audit)], "the audit flag is part of an endpoint");
        assert!(Plan::new(&now, vec![ep(1, "same", "a.test"), ep(2, "narrowed", "a.test"), ep(3, "gone", "a.test")]).is_empty());
    }
}

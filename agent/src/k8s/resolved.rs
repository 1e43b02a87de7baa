//! A pod's endpoint with everything found (its cgroup, its resolvers),
//! in a form that is saved to the state directory after every change and
//! read back at start-up: an agent restarted while the API server is
//! unreachable enforces every pod it knew, exactly as before, and prunes
//! nothing until the API has been listed again.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::{
    enforcer::{Identity, Mode},
    policy::{Policy, PolicySpec, RuleOrigin, compile},
    reconcile::Prepared,
};

/// The file under the state directory.
pub const FILE: &str = "k8s-endpoints.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    /// `enforce`, `audit` or `exempt`.
    pub mode: String,
    /// The union of the pod's policies, `toServices` expanded (ClusterIPs
    /// and backends: a restart without the API server keeps both) and
    /// `dns.servers` always set.
    pub spec: PolicySpec,
    /// Per rule: the policy it came from and its index there.
    pub origins: Vec<(String, usize)>,
}

fn mode_of(s: &str) -> Result<Mode> {
    Ok(match s {
        "enforce" => Mode::Enforce,
        "audit" => Mode::Audit,
        "exempt" => Mode::Exempt,
        other => return Err(anyhow!("unknown mode {other:?}")),
    })
}

impl Resolved {
    pub fn identity(&self) -> Identity {
        Identity {
            name: format!("{}/{}", self.namespace, self.pod),
            namespace: Some(self.namespace.clone()),
            pod: Some(self.pod.clone()),
        }
    }

    /// Validates and compiles it.
    pub fn prepare(&self) -> Result<Prepared> {
        let origin = format!("pod {}/{}", self.namespace, self.pod);
        let mut policy = Policy::from_spec(&self.spec, &origin)?;
        for (rule, (name, index)) in policy.egress.iter_mut().zip(&self.origins) {
            rule.origin = RuleOrigin::Named { policy: Arc::from(name.as_str()), index: *index };
        }
        // `dns.servers` is always set here: the fallback is never asked.
        let policy = compile(&policy, || Ok::<_, std::io::Error>(Vec::new())).with_context(|| origin.clone())?;
        Ok(Prepared {
            identity: self.identity(),
            cgroup: self.cgroup.clone(),
            cgroup_id: self.cgroup_id,
            policy,
            mode: mode_of(&self.mode)?,
        })
    }
}

/// Writes the endpoints (atomically: a crash leaves the old file or the
/// new one).
pub fn save(dir: &Path, all: &[Resolved]) -> Result<()> {
    let path = dir.join(FILE);
    // Per process: an agent starting next to the one it takes over from
    // must not write into the other's temporary file.
    let tmp = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec(all)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
}

/// Reads what the previous agent saved; missing: none.
pub fn load(dir: &Path) -> Result<Vec<Resolved>> {
    match std::fs::read(dir.join(FILE)) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("parsing {}", dir.join(FILE).display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.join(FILE).display())),
    }
}

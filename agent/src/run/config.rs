//! The node config of `portcullis run`: what it holds, and turning it into
//! endpoints ready to enforce. Everything is checked before anything is
//! applied (policies compile, cgroups exist, no cgroup named twice), and
//! every error names its place in the file.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;

use crate::{
    cgroup::cgroup_id,
    check::BadPolicy,
    enforcer::{Caps, Identity, Mode},
    policy::{Policy, PolicySpec, compile, system_resolvers},
    reconcile::Prepared,
};

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeConfig {
    /// The blocked-connection log's file (JSON lines, rotated by size as
    /// `--blocked-log-max-bytes` and `--blocked-log-files` say); the records
    /// also go to stdout.
    #[serde(default)]
    pub log: Option<PathBuf>,
    /// Prometheus `/metrics` listen address (e.g. `0.0.0.0:9464`).
    #[serde(default)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[serde(default = "default_min_ttl")]
    pub min_ttl_seconds: u64,
    #[serde(default = "default_max_ttl")]
    pub max_ttl_seconds: u64,
    /// Open DNS gates in the endpoints' network namespaces (default true;
    /// see docs/ARCHITECTURE.md "The DNS gate").
    #[serde(default = "default_true")]
    pub dns_gates: bool,
    /// `nxdomain` (default) or `refused` for queries of names not allowed.
    #[serde(default)]
    pub dns_deny_rcode: Option<String>,
    /// Most addresses an endpoint may learn for one DNS name (LRU beyond).
    #[serde(default = "default_max_ips_per_name")]
    pub max_ips_per_name: usize,
    /// Most DNS names an endpoint may hold learned addresses for (LRU beyond).
    #[serde(default = "default_max_names")]
    pub max_names_per_endpoint: usize,
    pub endpoints: Vec<EndpointConfig>,
}

const fn default_true() -> bool {
    true
}
const fn default_min_ttl() -> u64 {
    30
}
const fn default_max_ttl() -> u64 {
    3600
}
fn default_max_ips_per_name() -> usize {
    Caps::default().ips_per_name
}
fn default_max_names() -> usize {
    Caps::default().names_per_endpoint
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointConfig {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub pod: Option<String>,
    /// An existing cgroup v2 directory; its descendants are covered too.
    pub cgroup: PathBuf,
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
    #[serde(default)]
    pub policy: Option<PolicySpec>,
    #[serde(default)]
    pub audit: bool,
}

impl NodeConfig {
    /// The settings a reload cannot change (they shape the running agent),
    /// without the endpoints.
    pub fn settings_differ(&self, other: &Self) -> bool {
        let strip =
            |c: &Self| NodeConfig { endpoints: Vec::new(), dns_deny_rcode: c.dns_deny_rcode.clone(), log: c.log.clone(), ..*c };
        strip(self) != strip(other)
    }
}

/// Checks and compiles every endpoint of `cfg` (policy files relative to
/// `base`). A policy error is a `BadPolicy`; a missing cgroup is not.
pub fn prepare(cfg: &NodeConfig, base: &Path) -> Result<Vec<Prepared>> {
    if cfg.endpoints.is_empty() {
        bail!("endpoints: at least one endpoint is needed");
    }
    if cfg.max_ips_per_name == 0 || cfg.max_names_per_endpoint == 0 {
        return Err(BadPolicy(anyhow!("maxIpsPerName and maxNamesPerEndpoint must be at least 1")).into());
    }
    let mut out: Vec<Prepared> = Vec::new();
    let mut seen: HashMap<u64, String> = HashMap::new();
    for (i, ep) in cfg.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}] ({})", ep.name);
        let policy = match (&ep.policy_file, &ep.policy) {
            (Some(f), None) => Policy::from_file(base.join(f)).map_err(|e| BadPolicy(anyhow!("{field}: {e}")))?,
            (None, Some(spec)) => Policy::from_spec(spec, &field).map_err(|e| BadPolicy(e.into()))?,
            _ => return Err(BadPolicy(anyhow!("{field}: exactly one of policyFile and policy is required")).into()),
        };
        let compiled = compile(&policy, system_resolvers).map_err(|e| BadPolicy(anyhow!("{field}: {e}")))?;
        let cgroup_id = cgroup_id(&ep.cgroup).with_context(|| format!("{field}: cgroup"))?;
        if let Some(first) = seen.insert(cgroup_id, field.clone()) {
            bail!("{field}: cgroup {} is already {first}'s", ep.cgroup.display());
        }
        out.push(Prepared {
            identity: Identity { name: ep.name.clone(), namespace: ep.namespace.clone(), pod: ep.pod.clone() },
            cgroup: ep.cgroup.clone(),
            cgroup_id,
            policy: compiled,
            mode: Mode::from_audit(ep.audit),
        });
    }
    Ok(out)
}

pub fn load_config(path: &Path) -> Result<NodeConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text).map_err(|e| BadPolicy(anyhow!("{}: {e}", path.display())).into())
}

/// Reads and prepares the config at `path`.
pub fn read(path: &Path) -> Result<(NodeConfig, Vec<Prepared>)> {
    let cfg = load_config(path)?;
    let prepared = prepare(&cfg, path.parent().unwrap_or(Path::new(".")))?;
    Ok((cfg, prepared))
}

/// A hash of what the config at `path` says: its text and the text of
/// every policy file it names (read through symlinks, so a Kubernetes
/// ConfigMap update, which swaps a symlink, changes it). An unreadable
/// file hashes its error.
pub fn fingerprint(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    let text = std::fs::read_to_string(path);
    match &text {
        Ok(t) => t.hash(&mut h),
        Err(e) => e.kind().hash(&mut h),
    }
    let base = path.parent().unwrap_or(Path::new("."));
    if let Some(cfg) = text.ok().and_then(|t| serde_saphyr::from_str::<NodeConfig>(&t).ok()) {
        for f in cfg.endpoints.iter().filter_map(|e| e.policy_file.as_ref()) {
            match std::fs::read(base.join(f)) {
                Ok(b) => b.hash(&mut h),
                Err(e) => e.kind().hash(&mut h),
            }
        }
    }
    h.finish()
}

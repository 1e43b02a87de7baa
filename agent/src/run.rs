//! `portcullis run`: standalone node mode without Kubernetes. A config file
//! lists existing cgroups, each with a policy; all are enforced until
//! SIGINT/SIGTERM. The whole config is validated before anything attaches.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{SigSet, Signal};
use serde::Deserialize;
use tracing::info;

use crate::{
    cgroup::cgroup_id,
    check::BadPolicy,
    cli::{RunArgs, UnpinArgs},
    ebpf::{Pins, pin},
    gate::{GateOptions, parse_deny_rcode},
    handover,
    policy::{CompiledPolicy, Policy, PolicySpec, compile, system_resolvers},
    runtime::{Agent, AgentOptions, lock},
    state::{Caps, Identity, TtlBounds},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeConfig {
    /// Blocked-connection log (JSON lines); default stderr.
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

fn default_true() -> bool {
    true
}
fn default_min_ttl() -> u64 {
    30
}
fn default_max_ttl() -> u64 {
    3600
}
fn default_max_ips_per_name() -> usize {
    Caps::default().ips_per_name
}
fn default_max_names() -> usize {
    Caps::default().names_per_endpoint
}

#[derive(Debug, Deserialize)]
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

struct Prepared {
    identity: Identity,
    cgroup: PathBuf,
    cgroup_id: u64,
    policy: CompiledPolicy,
    audit: bool,
}

fn prepare(cfg: &NodeConfig, base: &Path) -> Result<Vec<Prepared>> {
    if cfg.endpoints.is_empty() {
        bail!("endpoints: at least one endpoint is needed");
    }
    if cfg.max_ips_per_name == 0 || cfg.max_names_per_endpoint == 0 {
        return Err(BadPolicy(anyhow::anyhow!("maxIpsPerName and maxNamesPerEndpoint must be at least 1")).into());
    }
    let mut out = Vec::new();
    for (i, ep) in cfg.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}] ({})", ep.name);
        let policy = match (&ep.policy_file, &ep.policy) {
            (Some(f), None) => Policy::from_file(base.join(f)).map_err(|e| BadPolicy(anyhow::anyhow!("{field}: {e}")))?,
            (None, Some(spec)) => Policy::from_spec(spec, &field).map_err(|e| BadPolicy(e.into()))?,
            _ => return Err(BadPolicy(anyhow::anyhow!("{field}: exactly one of policyFile and policy is required")).into()),
        };
        let compiled = compile(&policy, system_resolvers).map_err(|e| BadPolicy(anyhow::anyhow!("{field}: {e}")))?;
        let cgroup_id = cgroup_id(&ep.cgroup).with_context(|| format!("{field}: cgroup"))?;
        out.push(Prepared {
            identity: Identity { name: ep.name.clone(), namespace: ep.namespace.clone(), pod: ep.pod.clone() },
            cgroup: ep.cgroup.clone(),
            cgroup_id,
            policy: compiled,
            audit: ep.audit,
        });
    }
    Ok(out)
}

pub fn load_config(path: &Path) -> Result<NodeConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text).map_err(|e| BadPolicy(anyhow::anyhow!("{}: {e}", path.display())).into())
}

pub fn run(args: &RunArgs) -> Result<()> {
    let cfg = load_config(&args.config)?;
    let base = args.config.parent().unwrap_or(Path::new("."));
    let endpoints = prepare(&cfg, base)?;
    let deny_rcode = match &cfg.dns_deny_rcode {
        Some(s) => parse_deny_rcode(s).map_err(|e| BadPolicy(anyhow::anyhow!("dnsDenyRcode: {e}")))?,
        None => GateOptions::default().deny_rcode,
    };
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking signals")?;
    let log = crate::events::open_log(cfg.log.as_deref())?;
    let pins = args.pin_path.as_deref().map(Pins::open).transpose().context("--pin-path")?;
    let mut agent = Agent::start(AgentOptions {
        ttl: TtlBounds {
            min: Duration::from_secs(cfg.min_ttl_seconds),
            max: Duration::from_secs(cfg.max_ttl_seconds.max(cfg.min_ttl_seconds)),
        },
        caps: Caps { ips_per_name: cfg.max_ips_per_name, names_per_endpoint: cfg.max_names_per_endpoint, ..Caps::default() },
        log,
        unmanaged_allow: true,
        events_per_sec: 50,
        events_burst: 200,
        gate: GateOptions { deny_rcode, dns_gates: cfg.dns_gates },
        one_attach_point: false,
        attachment: crate::ebpf::loader::Attachment::Links,
        pins,
        state_dir: args.pin_path.as_ref().map(|_| args.state_dir.clone()),
        metrics_addr: args.metrics_addr.or(cfg.metrics_addr),
    })?;
    let result = (|| -> Result<()> {
        // Policy entries first (adopted endpoints keep their ids), then the
        // handover (the old agent stops consuming), then consume, then swap
        // programs into the links: the old programs enforce until the new
        // ones replace them, and both feed the same pinned rings.
        let mut ids = Vec::with_capacity(endpoints.len());
        for ep in &endpoints {
            ids.push(agent.add_endpoint(ep.identity.clone(), ep.cgroup_id, ep.policy.clone(), ep.audit)?);
        }
        let handover = agent.take_over()?;
        agent.go(handover.as_ref())?;
        let ids_by_order = ids.clone();
        for (ep, id) in endpoints.iter().zip(ids) {
            agent.attach(&ep.cgroup, ep.cgroup_id)?;
            agent.open_dns_gates(id, &crate::cgroup::procs_below(&ep.cgroup));
            info!(endpoint = %ep.identity.name, cgroup = %ep.cgroup.display(), "enforcing");
        }
        info!("ready");
        let watched: Vec<(u32, PathBuf, String)> =
            endpoints.iter().zip(&ids_by_order).map(|(ep, id)| (*id, ep.cgroup.clone(), ep.identity.name.clone())).collect();
        watch_coverage(agent.state.clone(), watched);
        let sig = set.wait().context("waiting for a signal")?;
        info!(signal = %sig, "stopping");
        let st = lock(&agent.state);
        info!(endpoints = st.endpoints().count(), "shutting down");
        Ok(())
    })();
    agent.shutdown();
    result
}

/// How often node mode looks at what the pods' processes hold.
const COVERAGE_EVERY: Duration = Duration::from_secs(5);

/// Checks, now and every `COVERAGE_EVERY`, which capabilities the
/// endpoints' processes hold that the cgroup hooks cannot contain
/// (`coverage`), for the metrics, and warns when an endpoint's set changes:
/// such a pod is not fully enforced. A thread of its own: reading /proc
/// never waits on the DNS or connect path (the state lock is taken only to
/// store the result).
fn watch_coverage(state: std::sync::Arc<std::sync::Mutex<crate::state::State>>, endpoints: Vec<(u32, PathBuf, String)>) {
    let spawned = std::thread::Builder::new().name("coverage".into()).spawn(move || loop {
        for (id, cgroup, name) in &endpoints {
            let held = crate::coverage::scan(cgroup);
            let mut st = lock(&state);
            let Some(ep) = st.endpoint_mut(*id) else { continue };
            if ep.uncontained == held {
                continue;
            }
            ep.uncontained = held.clone();
            drop(st);
            if held.is_empty() {
                info!(endpoint = %name, "no process holds a capability the cgroup hooks cannot contain");
            } else {
                let caps: Vec<String> = held.iter().map(|(c, n)| format!("{c} ({n} processes)")).collect();
                tracing::warn!(endpoint = %name, capabilities = %caps.join(", "),
                    "not fully enforced: these processes can send through packet sockets or TUN devices, which cgroup hooks never see");
            }
        }
        std::thread::sleep(COVERAGE_EVERY);
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the capability watch; pods holding CAP_NET_RAW are not reported");
    }
}

/// `portcullis unpin`: removes what `run --pin-path` left pinned, so its
/// programs detach and its maps are freed, and the state snapshot.
pub fn unpin(args: &UnpinArgs) -> Result<()> {
    pin::remove_all(&args.pin_path).with_context(|| format!("unpinning {}", args.pin_path.display()))?;
    for f in [handover::SNAPSHOT, handover::SOCKET] {
        match std::fs::remove_file(args.state_dir.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", args.state_dir.join(f).display())),
        }
    }
    info!(pin_path = %args.pin_path.display(), "unpinned: enforcement stopped");
    Ok(())
}

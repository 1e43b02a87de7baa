//! `portcullis run`: standalone node mode without Kubernetes. A config file
//! lists existing cgroups, each with a policy; all are enforced until
//! SIGINT/SIGTERM. The config is live: SIGHUP, or a change of the file or
//! of a policy file it names, reloads it (`reload`), and an invalid one is
//! refused with the previous enforcement left exactly as it was.

mod config;
mod coverage;

use std::{
    path::Path,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info, warn};

pub use config::{EndpointConfig, NodeConfig, load_config};

use self::config::fingerprint;
use crate::{
    agent::{Agent, AgentOptions},
    check::BadPolicy,
    cli::{RunArgs, UnpinArgs},
    datapath::{Pins, pin},
    dnsgate::{GateOptions, parse_deny_rcode},
    enforcer::{Caps, TtlBounds},
    handover,
    reconcile::{self as reload, Enforced, Plan, Prepared},
};

/// How often the config file is looked at; a change is applied once it
/// has stayed the same for one more look (an editor's or a ConfigMap's
/// write is done by then).
const CONFIG_POLL: Duration = Duration::from_millis(500);

/// Waits until the config file exists (a restarted agent may start before
/// its config is mounted: until then nothing is loaded, so whatever a
/// previous agent left pinned keeps enforcing, untouched). `false` if a
/// stop signal came first.
fn wait_for_config(path: &Path, signals: &SigSet) -> Result<bool> {
    let mut told = false;
    while !path.exists() {
        if !told {
            info!(config = %path.display(), "waiting for the config file");
            told = true;
        }
        if wait_signal(signals, CONFIG_POLL)?.is_some_and(|s| s != Signal::SIGHUP) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The next signal of `set` within `timeout`, if any.
pub(crate) fn wait_signal(set: &SigSet, timeout: Duration) -> Result<Option<Signal>> {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: libc::c_long::from(timeout.subsec_nanos()) };
    // SAFETY: the set and timespec outlive the call; no siginfo is asked for.
    let rc = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &raw const ts) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => Ok(None),
            _ => Err(e).context("waiting for a signal"),
        };
    }
    Ok(Signal::try_from(rc).ok())
}

fn agent_options(cfg: &NodeConfig, args: &RunArgs) -> Result<AgentOptions> {
    let node = args.node_name.clone().unwrap_or_else(crate::blocked::hostname);
    let clickhouse = crate::clickhouse::Pipeline::from_args(&args.clickhouse, &node).map_err(anyhow::Error::msg)?;
    let extra = clickhouse.iter().map(|p| crate::blocked::clickhouse::tap(p.blocked.clone())).collect();
    let deny_rcode = match &cfg.dns_deny_rcode {
        Some(s) => parse_deny_rcode(s).map_err(|e| BadPolicy(anyhow::anyhow!("dnsDenyRcode: {e}")))?,
        None => GateOptions::default().deny_rcode,
    };
    Ok(AgentOptions {
        ttl: TtlBounds {
            min: Duration::from_secs(cfg.min_ttl_seconds),
            max: Duration::from_secs(cfg.max_ttl_seconds.max(cfg.min_ttl_seconds)),
        },
        caps: Caps { ips_per_name: cfg.max_ips_per_name, names_per_endpoint: cfg.max_names_per_endpoint, ..Caps::default() },
        log: crate::blocked::node_log(node, &args.blocked_log, cfg.log.as_deref(), None, extra)?,
        unmanaged_allow: true,
        events_per_sec: 50,
        events_burst: 200,
        gate: GateOptions { deny_rcode, dns_gates: cfg.dns_gates },
        one_attach_point: false,
        attachment: crate::datapath::loader::Attachment::Links,
        pins: args.pin_path.as_deref().map(Pins::open).transpose().context("--pin-path")?,
        state_dir: args.pin_path.as_ref().map(|_| args.state_dir.clone()),
        explain_dir: None,
        metrics_addr: args.metrics_addr.or(cfg.metrics_addr),
        metrics_pod_grace: args.metrics_pod_grace,
        node_netns: None,
        clickhouse,
    })
}

pub fn run(args: &RunArgs) -> Result<()> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;
    if !wait_for_config(&args.config, &signals)? {
        info!("stopped before the config file appeared");
        return Ok(());
    }
    let mut applied_fp = fingerprint(&args.config);
    let (cfg, endpoints) = config::read(&args.config)?;
    let mut agent = Agent::start(agent_options(&cfg, args)?)?;
    let result = (|| -> Result<()> {
        let enforced = start(&mut agent, endpoints)?;
        info!("ready");
        let watch = coverage::watch(agent.coverage.clone(), &enforced);
        let mut node = Node { agent: &mut agent, cfg, enforced, watch };
        // A change is applied once it has been seen twice in a row.
        let mut pending: Option<u64> = None;
        loop {
            match wait_signal(&signals, CONFIG_POLL)? {
                Some(Signal::SIGHUP) => {
                    info!("SIGHUP: reloading the config");
                    applied_fp = fingerprint(&args.config);
                    pending = None;
                    node.reload(&args.config);
                }
                Some(sig) => {
                    info!(signal = %sig, endpoints = node.enforced.len(), "stopping");
                    return Ok(());
                }
                None => {
                    let fp = fingerprint(&args.config);
                    if fp == applied_fp {
                        pending = None;
                    } else if pending == Some(fp) {
                        info!(config = %args.config.display(), "the config changed: reloading");
                        applied_fp = fp;
                        pending = None;
                        node.reload(&args.config);
                    } else {
                        pending = Some(fp);
                    }
                }
            }
        }
    })();
    agent.shutdown();
    result
}

/// Policy entries first (adopted endpoints keep their ids), then the
/// handover (the old agent stops consuming, and what it enforced that this
/// config does not name goes: the config is this agent's complete view),
/// then consume, then swap programs into the links: the old programs
/// enforce until the new ones replace them, and both feed the same pinned
/// rings.
fn start(agent: &mut Agent, endpoints: Vec<Prepared>) -> Result<Enforced> {
    let mut ids = Vec::with_capacity(endpoints.len());
    for ep in &endpoints {
        ids.push(agent.add_endpoint(ep.identity.clone(), ep.cgroup_id, ep.policy.clone(), ep.mode)?);
    }
    let handover = agent.take_over()?;
    agent.go(handover.as_ref())?;
    let mut enforced = Enforced::new();
    for (ep, id) in endpoints.into_iter().zip(ids) {
        agent.attach(&ep.cgroup, ep.cgroup_id)?;
        agent.open_dns_gates(id, &crate::cgroup::procs_below(&ep.cgroup));
        info!(endpoint = %ep.identity.name, cgroup = %ep.cgroup.display(), "enforcing");
        enforced.insert(ep.cgroup_id, (id, ep));
    }
    agent.retire_old_pins()?;
    Ok(enforced)
}

/// A running node: the agent, the config it runs with, what it enforces.
struct Node<'a> {
    agent: &'a mut Agent,
    cfg: NodeConfig,
    enforced: Enforced,
    watch: coverage::Watched,
}

impl Node<'_> {
    /// Reads the config again and applies the difference; an invalid one
    /// changes nothing.
    fn reload(&mut self, path: &Path) {
        let started = Instant::now();
        let stats = self.agent.config_stats.clone();
        let (cfg, next) = match config::read(path) {
            Ok(c) => c,
            Err(e) => {
                stats.invalid.fetch_add(1, Relaxed);
                error!(error = %format!("{e:#}"), config = %path.display(), "config refused; enforcement unchanged");
                return;
            }
        };
        if cfg.settings_differ(&self.cfg) {
            warn!("settings other than the endpoints changed; they take effect at the next restart");
        }
        let plan = Plan::new(&self.enforced, next);
        if plan.is_empty() {
            stats.applied.fetch_add(1, Relaxed);
            info!(untouched = plan.untouched, "config reloaded: no endpoint changed");
            self.cfg = cfg;
            return;
        }
        let (added, changed, removed, untouched) = (plan.add.len(), plan.change.len(), plan.remove.len(), plan.untouched);
        let outcome = reload::apply(self.agent, &mut self.enforced, plan, reload::AttachEach::Endpoint);
        coverage::update(&self.watch, &self.enforced);
        match outcome {
            Ok(()) => {
                stats.applied.fetch_add(1, Relaxed);
                info!(added, changed, removed, untouched, ms = started.elapsed().as_millis() as u64, "config reloaded");
            }
            Err(e) => {
                stats.failed.fetch_add(1, Relaxed);
                error!(error = %format!("{e:#}"), added, changed, removed, "config reload partly failed; the failed endpoints keep what they had");
            }
        }
        self.cfg = cfg;
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

//! The Kubernetes node agent (`portcullis agent`): finds this node's pods
//! and their EgressPolicies through the API server and enforces them.
//!
//! Start-up order (docs/ARCHITECTURE.md "Kubernetes"), so that no pod ever
//! runs unenforced and nothing is pruned on a partial view:
//! 1. load, adopting what a previous agent pinned, and try the attach with
//!    throwaway links before anything is written or taken over;
//! 2. exempt the agent's own pod (without the API server: a new agent pod
//!    must never be denied the egress it needs to learn it is exempt);
//! 3. enforce the pods the previous agent saved (state directory);
//! 4. take over from the previous agent (what neither names goes), start
//!    consuming, and attach once at the kubelet's pod parent cgroup with
//!    unknown cgroups below it denied: from here a pod not classified yet
//!    is denied, not open;
//! 5. list and watch; once every watch has listed everything, reconcile on
//!    every change (nothing is applied from a partial picture);
//! 6. ready (`/readyz`, `--ready-file`).

pub mod crd;
pub mod desired;
pub mod events;
pub mod node;
pub mod podcgroup;
pub mod pods;
pub mod policies;
pub mod resolved;
pub mod select;
pub mod services;
mod veths;
pub mod watch;

use std::{
    net::SocketAddr,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info, warn};

use self::{
    desired::Settings,
    node::{Node, Snapshot},
    podcgroup::Kubepods,
    resolved::Resolved,
};
use crate::{
    agent::{Agent, AgentOptions},
    cli::AgentArgs,
    datapath::{Pins, loader::Attachment},
    dnsgate::GateOptions,
    enforcer::{Caps, Mode, TtlBounds},
    telemetry::k8s::K8sStats,
};

/// How long the loop waits when nothing is pending; a pass runs at least
/// this often (level-based: it repairs anything an event missed).
const RESYNC: Duration = Duration::from_secs(2);
/// How often pods waiting for their cgroup or resolvers are looked at
/// (a few `stat`s each; a full pass only once one is there).
const PENDING_TICK: Duration = Duration::from_millis(2);
/// How often a pod whose veth is not found yet is looked at again.
const VETH_TICK: Duration = Duration::from_millis(10);

fn open_netns(path: &std::path::Path) -> Result<std::os::fd::OwnedFd> {
    Ok(std::fs::File::open(path).with_context(|| format!("opening the node's network namespace {}", path.display()))?.into())
}

pub fn run(args: &AgentArgs) -> Result<()> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;
    if let Some(f) = &args.ready_file {
        // A restarted container keeps its emptyDir: not ready until this
        // agent is.
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing the old ready file {}", f.display())),
        }
    }
    let root = match &args.cgroup_root {
        Some(r) => r.clone(),
        None => crate::cgroup::cgroup2_mount().context("finding the cgroup2 mount (--cgroup-root)")?,
    };
    let kubepods = Kubepods::find(&root, args.kubepods.as_deref())?;
    let kubepods_dir = kubepods.dir.clone();
    info!(kubepods = %kubepods.dir.display(), driver = ?kubepods.driver, node = %args.node_name, "starting");
    // Pinned, always: without pins the programs would go with the agent,
    // and every pod would run unenforced while none runs.
    let pins = Some(Pins::open(&args.pin_path).context("--pin-path")?);
    std::fs::create_dir_all(&args.state_dir).with_context(|| format!("creating {}", args.state_dir.display()))?;
    let mut pod_events = None;
    let mut extra = Vec::new();
    if args.pod_events {
        let (tap, rx) = events::tap(Box::new(std::io::sink()));
        extra.push(crate::blocked::Output::Stream(Box::new(tap)));
        pod_events = Some(rx);
    }
    // Records on stdout (tracing is on stderr) and in rotated files on the
    // node, where `portcullis blocked` reads them.
    let clickhouse = crate::clickhouse::Pipeline::from_args(&args.clickhouse, &args.node_name).map_err(anyhow::Error::msg)?;
    extra.extend(clickhouse.iter().map(|p| crate::blocked::clickhouse::tap(p.blocked.clone())));
    let log =
        crate::blocked::node_log(args.node_name.clone(), &args.blocked_log, args.log.as_deref(), Some(&args.state_dir), extra)?;
    let mut agent = Agent::start(AgentOptions {
        ttl: TtlBounds::default(),
        caps: Caps::default(),
        log,
        // A cgroup below the pod parent that is no endpoint is a pod not
        // classified yet: denied.
        unmanaged_allow: false,
        events_per_sec: 50,
        events_burst: 200,
        gate: GateOptions::default(),
        one_attach_point: false,
        attachment: Attachment::Links,
        state_dir: pins.as_ref().map(|_| args.state_dir.clone()),
        explain_dir: None,
        pins,
        metrics_addr: args.metrics_addr,
        metrics_pod_grace: args.metrics_pod_grace,
        node_netns: match args.no_pod_veths {
            true => None,
            false => Some(open_netns(&args.node_netns)?),
        },
        clickhouse,
    })?;
    // Before anything is written or taken over: an agent that cannot
    // attach must not have stopped the running one, nor touched its maps.
    if let Err(e) = probe(&agent, &kubepods_dir) {
        agent.shutdown();
        return Err(e);
    }
    let stats = Arc::new(K8sStats::default());
    agent.k8s = Some(stats.clone());
    let exempt_namespaces = args.exempt_namespaces.iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
    let settings = Settings { exempt_namespaces, own_pod: Some(args.pod_uid.clone()) };
    let mut cluster_dns: Vec<SocketAddr> = args.cluster_dns.iter().map(|ip| SocketAddr::new(*ip, 53)).collect();
    if cluster_dns.is_empty() {
        cluster_dns = kubelet_cluster_dns(&args.kubelet_config);
    }
    let mut node = Node::new(kubepods, settings, cluster_dns, Some(args.state_dir.clone()));
    if !args.no_pod_veths {
        node.veths = Some(veths::PodVeths::new(open_netns(&args.node_netns)?));
    }
    node.node_dns = crate::policy::system_resolvers().unwrap_or_else(|e| {
        warn!(error = %e, "cannot read the node's resolvers (/etc/resolv.conf): dnsPolicy Default pods get no DNS");
        Vec::new()
    });
    node.cluster_dns_service = args.cluster_dns_service.split_once('/').map(|(ns, n)| (ns.to_owned(), n.to_owned()));
    node.stats = stats.clone();
    let result = (|| -> Result<()> {
        start(&mut agent, &mut node, args)?;
        watch_and_reconcile(&mut agent, &mut node, args, &signals, &stats, pod_events)
    })();
    agent.shutdown();
    result
}

/// Steps 2-4.
fn start(agent: &mut Agent, node: &mut Node, args: &AgentArgs) -> Result<()> {
    let uid = &args.pod_uid;
    match own_pod(&node.kubepods, uid, args) {
        Some(r) => {
            node.restore(agent, r).context("exempting the agent's own pod")?;
            info!(uid = %uid, "own pod exempt");
        }
        None => warn!(uid = %uid, "the agent's own pod cgroup is not under the kubelet pod parent; nothing to exempt"),
    }
    let saved = resolved::load(&args.state_dir).unwrap_or_else(|e| {
        warn!(error = %format!("{e:#}"), "ignoring the saved pods; they are denied until the API server is listed");
        Vec::new()
    });
    let mut restored = 0;
    for r in saved {
        let same = crate::cgroup::cgroup_id(&r.cgroup).is_ok_and(|id| id == r.cgroup_id);
        if !same || r.uid == args.pod_uid {
            continue;
        }
        let name = format!("{}/{}", r.namespace, r.pod);
        match node.restore(agent, r) {
            Ok(()) => restored += 1,
            Err(e) => {
                warn!(pod = %name, error = %format!("{e:#}"), "a saved pod could not be restored; it is denied until listed")
            }
        }
    }
    info!(restored, "pods of the previous agent enforced");
    let h = agent.take_over()?;
    agent.go(h.as_ref())?;
    let dir = node.kubepods.dir.clone();
    let id = crate::cgroup::cgroup_id(&dir)?;
    agent.attach(&dir, id)?;
    agent.retire_old_pins()?;
    info!(at = %dir.display(), "attached: pods not classified yet are denied");
    Ok(())
}

/// Whether every program can be attached at `dir` (throwaway links).
fn probe(agent: &Agent, dir: &std::path::Path) -> Result<()> {
    let Err(e) = agent.probe_attach(dir) else { return Ok(()) };
    let text = format!("{e:#}");
    if text.contains("os error 1)") {
        bail!(
            "attaching at {} is refused (EPERM): a program of the same type is attached above it without \
             BPF_F_ALLOW_MULTI. Cilium installed before 1.14 and upgraded keeps its socket LB attached this way at \
             the cgroup root; reinstall Cilium's socket LB as links (recreate its cgroup programs, or a fresh \
             install) and start again. Not running half-attached. ({text})",
            dir.display()
        );
    }
    Err(anyhow::Error::new(e).context(format!("attaching at {}", dir.display())))
}

/// The agent's own pod as an exempt endpoint (its identity from the
/// downward API, before the API server is asked).
fn own_pod(kubepods: &Kubepods, uid: &str, args: &AgentArgs) -> Option<Resolved> {
    let cgroup = kubepods.find_pod(uid, None)?;
    let cgroup_id = crate::cgroup::cgroup_id(&cgroup).ok()?;
    let mut spec = crate::policy::PolicySpec::default();
    spec.dns.servers = Some(Vec::new());
    Some(Resolved {
        namespace: args.pod_namespace.clone().unwrap_or_else(|| "portcullis-system".into()),
        pod: args.pod_name.clone().unwrap_or_else(|| "portcullis".into()),
        uid: uid.to_owned(),
        cgroup,
        cgroup_id,
        mode: Mode::Exempt.as_str().to_owned(),
        spec,
        origins: Vec::new(),
    })
}

/// Steps 5-6, until SIGINT/SIGTERM.
fn watch_and_reconcile(
    agent: &mut Agent,
    node: &mut Node,
    args: &AgentArgs,
    signals: &SigSet,
    stats: &K8sStats,
    pod_events: Option<tokio::sync::mpsc::Receiver<events::Blocked>>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("portcullis-kube")
        .enable_all()
        .build()
        .context("starting the Kubernetes client runtime")?;
    let client = rt.block_on(client(args.api_server.as_deref()))?;
    let (poke, poked) = mpsc::sync_channel(1);
    let links = if args.no_pod_veths { None } else { Some(guard_new_veths(agent, args, poke.clone())?) };
    // The watcher stops with this function (also on an error).
    let _stop_links = StopOnDrop(links.as_ref().map(|(_, s)| s.clone()));
    let stores = watch::start(rt.handle(), &client, &args.node_name, poke);
    if let Some(rx) = pod_events {
        rt.spawn(events::publish(client, args.node_name.clone(), stores.pods(), rx));
        info!("posting Kubernetes Events on pods for blocked egress (at most one per pod per 10 minutes)");
    }
    let mut pending = 0;
    let mut last = Instant::now();
    let mut last_veths = Instant::now();
    let mut retired = false;
    loop {
        let wait = if pending > 0 || node.veths_waiting > 0 { PENDING_TICK } else { RESYNC };
        if let Some(sig) = crate::run::wait_signal(signals, Duration::ZERO)? {
            info!(signal = %sig, "stopping");
            return Ok(());
        }
        if agent.handed_over() {
            // A newer agent took over (rolling update): the maps, the saved
            // pods and the endpoint ids are its now. Change nothing; wait
            // to be stopped.
            if !retired {
                info!("handed over to a newer agent: no longer reconciling");
                retired = true;
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let woke = poked.recv_timeout(wait.min(Duration::from_millis(200))).is_ok();
        if let Some((rx, _)) = &links {
            for ev in rx.try_iter() {
                link_event(agent, ev);
            }
        }
        if node.veths_waiting > 0 && last_veths.elapsed() >= VETH_TICK {
            // A pod's first process (its network namespace) or its veth
            // is not there yet: look again, without a whole pass.
            node.veths_waiting = node.sync_veths(agent);
            last_veths = Instant::now();
        }
        let due = last.elapsed() >= RESYNC || (pending > 0 && node.wait_over());
        if !woke && !due {
            continue;
        }
        if woke {
            // Let a burst of events land: one pass for all of them.
            std::thread::sleep(Duration::from_millis(5));
            while poked.try_recv().is_ok() {}
        }
        let snap: Snapshot = stores.snapshot(&args.sandboxed_runtimes);
        pending = node.reconcile(agent, &snap);
        last = Instant::now();
        if snap.synced && !stats.ready() {
            stats.set_ready();
            if let Some(f) = &args.ready_file
                && let Err(e) = std::fs::write(f, b"ready\n")
            {
                warn!(file = %f.display(), error = %e, "cannot write the ready file");
            }
            info!(pods = snap.pods.len(), endpoints = node.enforced.len(), "ready: every watch listed, pods reconciled");
        }
    }
}

/// Every pod veth of the node gets the veth programs the moment it
/// appears (`veth::watch`), before the agent knows its pod: it drops
/// everything until assigned (a gVisor or Kata pod's traffic is seen
/// nowhere else). Those there now get them at once. Returns the events of
/// the ones to come, and the watcher's stop flag.
fn guard_new_veths(
    agent: &mut Agent,
    args: &AgentArgs,
    poke: mpsc::SyncSender<()>,
) -> Result<(mpsc::Receiver<crate::veth::watch::LinkEvent>, Arc<std::sync::atomic::AtomicBool>)> {
    use crate::veth::watch::{LinkWatch, PodVethFilter};
    let filter = PodVethFilter { prefixes: args.pod_veth_prefixes.clone(), exclude: args.pod_veth_exclude.clone() };
    let ns = open_netns(&args.node_netns)?;
    let watch = LinkWatch::open(std::os::fd::AsFd::as_fd(&ns), filter).context("watching the node's pod veths")?;
    for (ifindex, name) in watch.initial() {
        if let Err(e) = agent.guard_veth(*ifindex) {
            warn!(interface = %name, error = %format!("{e:#}"), "cannot attach the veth programs");
        }
    }
    info!(veths = watch.initial().len(), "veth programs on the node's pod veths; new ones get them as they appear");
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    watch
        .spawn(
            tx,
            move || {
                let _ = poke.try_send(());
            },
            stop.clone(),
        )
        .context("starting the veth watcher")?;
    Ok((rx, stop))
}

struct StopOnDrop(Option<Arc<std::sync::atomic::AtomicBool>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn link_event(agent: &mut Agent, ev: crate::veth::watch::LinkEvent) {
    use crate::veth::watch::LinkEvent;
    let done = match &ev {
        LinkEvent::New { ifindex, .. } => agent.guard_veth(*ifindex),
        LinkEvent::Gone { ifindex } => agent.forget_veth(*ifindex),
    };
    if let Err(e) = done {
        warn!(event = ?ev, error = %format!("{e:#}"), "veth programs");
    }
}

/// `clusterDNS` of kubelet's config file, if it is there and says.
fn kubelet_cluster_dns(path: &std::path::Path) -> Vec<SocketAddr> {
    #[derive(serde::Deserialize)]
    struct KubeletConfig {
        #[serde(default, rename = "clusterDNS")]
        cluster_dns: Vec<std::net::IpAddr>,
    }
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    match serde_saphyr::from_str::<KubeletConfig>(&text) {
        Ok(c) => {
            info!(file = %path.display(), cluster_dns = ?c.cluster_dns, "kubelet's clusterDNS");
            c.cluster_dns.into_iter().map(|ip| SocketAddr::new(ip, 53)).collect()
        }
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read clusterDNS from kubelet's config");
            Vec::new()
        }
    }
}

/// The API client: in-cluster (service account) or kubeconfig, or a plain
/// URL without credentials (`--api-server`, tests).
async fn client(url: Option<&str>) -> Result<kube::Client> {
    match url {
        Some(u) => {
            let cfg = kube::Config::new(u.parse().with_context(|| format!("--api-server {u}"))?);
            kube::Client::try_from(cfg).context("building the API client")
        }
        None => kube::Client::try_default().await.map_err(|e| {
            error!(error = %e, "no API server configuration");
            anyhow::Error::new(e).context("in-cluster or kubeconfig API configuration")
        }),
    }
}

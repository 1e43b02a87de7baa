//! A running agent: loaded datapath, shared state, the DNS gate thread and
//! a small tokio runtime (blocked-connection log, expiry). Used by both
//! `portcullis exec` and `portcullis run`.

mod findings;
mod flows;
mod options;
mod tasks;
mod veth;

pub use options::AgentOptions;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Instant,
};

use agent_common::Config;
use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::sync::watch;
use tracing::{info, warn};

use self::tasks::{expire_learned, gate_opener, kernel_log_task};
use crate::{
    blocked::{self, LogSink},
    datapath::{
        Datapath, Pins,
        loader::{Attachment, current_netns_cookie},
    },
    dnsgate::netns::NamespaceGates,
    dnsgate::{
        DnsStats,
        hold::{HoldPath, PendingQueries},
        ratelimit::RecordLimit,
    },
    enforcer::live::LiveConns,
    enforcer::{Enforcer, Identity, Mode, PolicyChange, State},
    handover::{self, Handover},
    policy::CompiledPolicy,
    telemetry::{
        coverage::Coverage,
        grace::Departed,
        metrics::{ConfigStats, Sources},
    },
    util::lock,
};

/// The consumers of the kernel's rings and the expiry task, while this
/// agent is the one consuming.
struct Consumers {
    stop_gate: Arc<AtomicBool>,
    gate_thread: JoinHandle<PendingQueries>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What `go` starts: built in `start`, so endpoints can be added first.
struct Idle {
    gate: HoldPath,
    hold: RingBuf<MapData>,
    denied: RingBuf<MapData>,
    log: LogSink,
    /// The kernel's rare events (aya-log), if its ring was found.
    kernel_log: Option<crate::datapath::kernel_log::KernelLog>,
}

/// The part a handover request (from another thread) needs.
struct Core {
    enforcer: Enforcer,
    /// The gate's counters, carried to the next agent.
    gate_stats: Arc<DnsStats>,
    running: Mutex<Option<Consumers>>,
    rt: tokio::runtime::Handle,
}

impl Core {
    /// Stops consuming (at a record boundary) and returns what the next
    /// agent needs; `None` if this agent already handed over.
    fn hand_over(&self) -> Option<Handover> {
        let c = lock(&self.running).take()?;
        c.stop_gate.store(true, Ordering::Relaxed);
        let pending = c.gate_thread.join().map(|p| p.export(Instant::now())).unwrap_or_default();
        let _ = c.stop.send(true);
        self.rt.block_on(async {
            for t in c.tasks {
                let _ = t.await;
            }
        });
        let learned = self.enforcer.export_learned();
        let counters = crate::telemetry::carry::export_value(&self.enforcer, &self.gate_stats);
        Some(Handover { pending, learned, counters })
    }
}

pub struct Agent {
    pub enforcer: Enforcer,
    pub gate_stats: Arc<DnsStats>,
    /// What the blocked log wrote, folded, held back (for metrics).
    pub blocked_stats: Arc<blocked::LogStats>,
    datapath: Datapath,
    rt: tokio::runtime::Runtime,
    core: Arc<Core>,
    idle: Option<Idle>,
    dns_gates: Arc<NamespaceGates>,
    pins: Option<Pins>,
    attachment: Attachment,
    state_dir: Option<PathBuf>,
    explain_dir: Option<PathBuf>,
    metrics_addr: Option<std::net::SocketAddr>,
    /// Answers the next agent's handover request.
    listener: Option<handover::Server>,
    /// Where the programs are attached: (cgroup directory, cgroup id).
    attached: Vec<(PathBuf, u64)>,
    /// Live connections per endpoint, for the learned-address caps.
    live: Arc<LiveConns>,
    /// Outcomes of config reloads (`run`), for the metrics.
    pub config_stats: Arc<ConfigStats>,
    /// What the endpoints' processes hold that cgroup hooks cannot contain.
    pub coverage: Arc<Coverage>,
    /// The Kubernetes agent's per-pod report and readiness (set before `go`).
    pub k8s: Option<Arc<crate::telemetry::k8s::K8sStats>>,
    /// Removed endpoints' final series, for the grace period.
    departed: Arc<Departed>,
    /// The veth programs' interfaces (with `AgentOptions::node_netns`).
    veths: Option<veth::Veths>,
    /// The ClickHouse output, if any.
    clickhouse: Option<flows::Output>,
}

/// A random non-zero mark for re-injected answers: a workload cannot guess
/// it, and no other agent on the node uses it.
fn random_mark() -> u32 {
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        b = (std::process::id() ^ 0x5043_4c53).to_ne_bytes();
    }
    u32::from_ne_bytes(b) | 0x8000_0000
}

impl Agent {
    /// Loads the datapath (adopting pinned maps and a previous agent's
    /// endpoints in node mode). Nothing consumes the rings until `go`.
    pub fn start(opts: AgentOptions) -> Result<Self> {
        let cfg = Config {
            host_netns_cookie: current_netns_cookie()?,
            inject_mark: random_mark(),
            unmanaged_allow: u32::from(opts.unmanaged_allow),
            events_per_sec: opts.events_per_sec,
            events_burst: opts.events_burst,
            dns_gates: u32::from(opts.gate.dns_gates),
            ..Config::default()
        };
        let mut datapath = Datapath::load(cfg, opts.pins.as_ref(), opts.one_attach_point).context("loading the eBPF programs")?;
        let maps = datapath.take_maps().context("policy maps already taken")?;
        let hold = datapath.take_dns_hold().context("DNS hold ring missing")?;
        let denied = datapath.take_denied_events().context("event ring missing")?;
        let kernel_log = datapath.take_kernel_log();
        // A previous agent's mark when adopting: its re-injected answers
        // and ours must both pass while the two overlap.
        let mark = maps.config().inject_mark;
        let mut st = State::with_caps(maps, opts.ttl, opts.caps);
        let live = Arc::new(LiveConns::default());
        st.set_live_conns(live.clone());
        if opts.pins.is_some() {
            let n = st.adopt_kernel_endpoints();
            if n > 0 {
                info!(endpoints = n, "adopting pinned state of a previous agent");
            }
        }
        let enforcer = Enforcer::new(st);
        let log = opts.log;
        let blocked_stats = log.stats();
        let records = RecordLimit::new(opts.events_per_sec, opts.events_burst);
        let gate = HoldPath::new(enforcer.clone(), mark, log.clone(), opts.gate, records);
        let gate_stats = gate.engine().stats.clone();
        let clickhouse = opts.clickhouse.map(|p| flows::Output::new(p, gate_stats.clone()));
        let mut dns_gates = NamespaceGates::new(gate.engine().clone(), enforcer.clone(), opts.gate.dns_gates, mark, live.clone());
        let (gate, veths) = match opts.node_netns {
            Some(ns) => {
                dns_gates = dns_gates.forward_from(ns.try_clone().context("node namespace")?);
                let (gate, veths) = veth::start(gate, &datapath, &enforcer, ns, mark, opts.pins.clone())?;
                (gate, Some(veths))
            }
            None => (gate, None),
        };
        let dns_gates = Arc::new(dns_gates);
        let gate = gate.with_dns_gates(dns_gates.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-rt")
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        let core = Arc::new(Core {
            enforcer: enforcer.clone(),
            gate_stats: gate_stats.clone(),
            running: Mutex::new(None),
            rt: rt.handle().clone(),
        });
        Ok(Self {
            enforcer,
            gate_stats,
            blocked_stats,
            datapath,
            rt,
            core,
            idle: Some(Idle { gate, hold, denied, log, kernel_log }),
            dns_gates,
            pins: opts.pins,
            attachment: opts.attachment,
            state_dir: opts.state_dir,
            explain_dir: opts.explain_dir,
            metrics_addr: opts.metrics_addr,
            listener: None,
            attached: Vec::new(),
            live,
            config_stats: Arc::default(),
            coverage: Arc::default(),
            k8s: None,
            departed: Arc::new(Departed::new(opts.metrics_pod_grace)),
            veths,
            clickhouse,
        })
    }

    /// Node mode: takes over from the agent that ran before, if any: a live
    /// one hands over over its socket (and stops consuming); else the
    /// snapshot it left. Call after the endpoints are added, before `go`.
    pub fn take_over(&mut self) -> Result<Option<Handover>> {
        let Some(dir) = self.state_dir.clone() else { return Ok(None) };
        let h = match handover::request(&dir)? {
            Some(h) => {
                info!(pending = h.pending.len(), learned = h.learned.len(), "took over from the running agent");
                Some(h)
            }
            None => match handover::read_snapshot(&dir) {
                Ok(h) => h,
                Err(e) => {
                    warn!(error = %e, "ignoring the learned-state snapshot");
                    None
                }
            },
        };
        // The previous agent's DNS gates die with it (ours open later); its
        // endpoints this agent's source did not name go.
        let (gone, ports, n, orphans) = self.enforcer.adopt(h.as_ref().map_or(&[][..], |h| &h.learned))?;
        self.dns_gates.retire_ports(ports);
        info!(pairs = n, orphans, "adopted learned names");
        if let Some(h) = &h {
            let carried = crate::telemetry::carry::import_value(&self.enforcer, &self.gate_stats, h.counters.as_ref());
            info!(endpoints = carried, "carried the previous agent's DNS counters over");
        }
        if let Some(p) = &self.pins {
            for cg in gone {
                p.unlink_cgroup(cg)?;
            }
        }
        Ok(h)
    }

    /// Starts consuming: the DNS gate thread, the blocked log, expiry (and
    /// in node mode the snapshot and the handover listener).
    pub fn go(&mut self, handover: Option<&Handover>) -> Result<()> {
        let Some(Idle { mut gate, hold, denied, log, kernel_log }) = self.idle.take() else { return Ok(()) };
        if let Some(h) = handover {
            gate.import_pending(&h.pending);
        }
        // The DNS gate is on the latency-critical path of every lookup: a
        // dedicated thread blocked in poll(2) on its ring. Everything else
        // (the blocked log, expiry) runs on a small tokio runtime.
        let stop_gate = Arc::new(AtomicBool::new(false));
        let gate_thread = {
            let stop = stop_gate.clone();
            thread::Builder::new().name("dns-gate".into()).spawn(move || gate.run(hold, stop))?
        };
        let (stop, stop_rx) = watch::channel(false);
        let minutes = self.clickhouse.as_mut().and_then(|ch| ch.start(self.rt.handle(), &self.enforcer, stop_rx.clone()));
        let opener = gate_opener(self.dns_gates.clone());
        let mut tasks = vec![
            self.rt.spawn(blocked::run(denied, self.enforcer.clone(), log, opener, stop_rx.clone())),
            self.rt.spawn(kernel_log_task(kernel_log, stop_rx.clone())),
            self.rt.spawn(expire_learned(
                self.enforcer.clone(),
                self.gate_stats.clone(),
                self.dns_gates.clone(),
                self.state_dir.clone(),
                stop_rx.clone(),
            )),
        ];
        tasks.extend(minutes);
        if let Some(addr) = self.metrics_addr {
            let listener = {
                let _rt = self.rt.enter();
                crate::telemetry::server::bind(addr).with_context(|| format!("metrics address {addr}"))?
            };
            tasks.push(self.rt.spawn(crate::telemetry::server::serve(listener, self.metric_sources(), stop_rx)));
        }
        *lock(&self.core.running) = Some(Consumers { stop_gate, gate_thread, stop, tasks });
        // Only now may the kernel hold answers for us: someone is listening.
        self.enforcer.set_agent_ready()?;
        let enforcer = self.enforcer.clone();
        let ask: handover::Ask = Arc::new(move |q: &str| crate::explain::answer(&enforcer, q));
        if let Some(dir) = &self.state_dir {
            let core = self.core.clone();
            let hand_over: handover::HandOver = Box::new(move || core.hand_over().unwrap_or_default());
            self.listener = Some(handover::Server::start(dir, Some(hand_over), Some(ask))?);
        } else if let Some(dir) = &self.explain_dir {
            self.listener = Some(handover::Server::start(dir, None, Some(ask))?);
        }
        Ok(())
    }

    /// What the metrics read.
    fn metric_sources(&self) -> Sources {
        Sources {
            enforcer: self.enforcer.clone(),
            coverage: self.coverage.clone(),
            gate: self.gate_stats.clone(),
            config: self.config_stats.clone(),
            departed: self.departed.clone(),
            blocked: self.blocked_stats.clone(),
            k8s: self.k8s.clone(),
            clickhouse: self.clickhouse.as_ref().map(flows::Output::stats),
        }
    }

    /// Whether this agent has handed over to a newer one (a rolling
    /// update): from then on the kernel state is the new agent's, and this
    /// one must change nothing.
    pub fn handed_over(&self) -> bool {
        self.idle.is_none() && lock(&self.core.running).is_none()
    }

    pub fn add_endpoint(&self, identity: Identity, cgroup_id: u64, policy: CompiledPolicy, mode: Mode) -> Result<u32> {
        Ok(self.enforcer.add_endpoint(identity, cgroup_id, policy, mode)?)
    }

    /// Gives a running endpoint a new identity, policy and audit flag
    /// (`State::set_policy`): in force when this returns. Gates to
    /// resolvers the new policy no longer trusts close; gates to new ones
    /// open with the next query from the endpoint's namespaces (or now, for
    /// `pids`).
    pub fn set_policy(
        &self,
        id: u32,
        identity: Identity,
        policy: CompiledPolicy,
        mode: Mode,
        pids: &[u32],
    ) -> Result<PolicyChange> {
        let resolvers = policy.dns_servers.clone();
        let change = self.enforcer.set_policy(id, identity, policy, mode)?;
        self.dns_gates.close(id, &resolvers);
        if self.idle.is_none() {
            self.open_dns_gates(id, pids);
        }
        Ok(change)
    }

    /// Stops enforcing endpoint `id`: its programs detach from its cgroup
    /// (links closed or unpinned, with its own load and cache), its DNS
    /// gates close, and every kernel entry it had goes (`State::
    /// remove_endpoint`). A cgroup nested in it or around it keeps its own
    /// attach point; their verdict caches are planned again.
    pub fn remove_endpoint(&mut self, id: u32) -> Result<()> {
        let Some(view) = self.enforcer.endpoint(id) else { return Ok(()) };
        let cgroup_id = view.cgroup_id;
        // Its final values, before its counters are forgotten.
        let (labels, values) = crate::telemetry::metrics::final_values(&self.metric_sources(), &view);
        if let Some(ch) = &self.clickhouse {
            let dests = self.enforcer.flow_dests().remove(&id);
            ch.flows.depart(&view, Some(&values.flow), dests.as_deref());
        }
        self.detach_veths_of(id)?;
        if self.attached.iter().any(|(_, c)| *c == cgroup_id) {
            self.datapath.detach(cgroup_id, self.pins.as_ref()).with_context(|| format!("detaching from cgroup {cgroup_id}"))?;
            self.attached.retain(|(_, c)| *c != cgroup_id);
        }
        self.dns_gates.close(id, &[]);
        self.enforcer.remove_endpoint(id)?;
        self.gate_stats.forget(id);
        self.coverage.forget(id);
        self.departed.depart(labels, values, Instant::now());
        self.live.unwatch_cgroup(cgroup_id);
        self.refresh_verdict_caches()
    }

    /// Node mode, once every endpoint is attached: removes what a previous
    /// release pinned in its own layout, now that this agent's programs
    /// enforce in its links (`Pins::retire_old`).
    pub fn retire_old_pins(&mut self) -> Result<()> {
        if let Some(p) = &mut self.pins {
            p.retire_old().context("removing the previous layout's pins")?;
        }
        Ok(())
    }

    /// Opens the endpoint's TCP DNS gates in the network namespace of each
    /// process given (DNS over TCP from a namespace without one is refused
    /// until a UDP query from there opens it).
    pub fn open_dns_gates(&self, endpoint: u32, pids: &[u32]) {
        for &pid in pids {
            if let Err(e) = self.dns_gates.ensure(pid, None, endpoint) {
                warn!(error = %e, endpoint, pid, "cannot open a TCP DNS gate");
            }
        }
    }

    /// Whether every program can be attached at `cgroup`
    /// (`Datapath::probe_attach`), before attaching any.
    pub fn probe_attach(&self, cgroup: &Path) -> Result<(), crate::datapath::LoadError> {
        self.datapath.probe_attach(cgroup, self.pins.as_ref())
    }

    /// Attaches the programs to `cgroup` (pinned links in node mode; a
    /// previous agent's pinned links get this agent's programs).
    pub fn attach(&mut self, cgroup: &Path, cgroup_id: u64) -> Result<()> {
        let own_cache = match &self.pins {
            Some(p) => self.datapath.attach_pinned(cgroup, cgroup_id, p),
            None => self.datapath.attach(cgroup, cgroup_id, self.attachment),
        }
        .with_context(|| format!("attaching to {}", cgroup.display()))?;
        if let Some(cache) = own_cache {
            self.enforcer.set_cache_home(cgroup_id, cache);
        }
        self.attached.push((cgroup.canonicalize().unwrap_or_else(|_| cgroup.to_owned()), cgroup_id));
        self.live.watch_cgroup(cgroup_id, cgroup);
        self.refresh_verdict_caches()
    }

    /// Turns the socket hooks' verdict cache on at each attach point that is
    /// an endpoint's own cgroup with no other attach point below it (then
    /// every socket there belongs to that endpoint), and off elsewhere.
    /// Failing to turn it on only costs speed; failing to turn it off is an
    /// error.
    fn refresh_verdict_caches(&mut self) -> Result<()> {
        self.enforcer.refresh_caches(&self.attached).map_err(|(cgroup_id, e)| {
            anyhow::Error::new(e).context(format!("turning the verdict cache off at cgroup {cgroup_id}"))
        })
    }

    /// Stops the workers (the log drains what is queued). Unpinned, the
    /// programs detach. Pinned, they stay and keep enforcing: the learned
    /// state and the pending queries go to the snapshot for the next agent,
    /// unless a next agent already took them over.
    pub fn shutdown(mut self) {
        if lock(&self.core.running).is_some() {
            // Still the consuming agent: new DNS is caught in the kernel
            // first (answered by the next agent), then the gates drain.
            self.dns_gates.unpublish();
        }
        self.dns_gates.shutdown();
        self.stop_veths();
        if let Some(server) = self.listener.take() {
            server.stop();
            if let Some(dir) = &self.explain_dir {
                let _ = std::fs::remove_file(dir.join(handover::SOCKET));
            }
        }
        let h = self.core.hand_over();
        // After the consumers stopped (the blocked log's last records and
        // the minute so far are buffered): what ClickHouse has not taken.
        if let Some(ch) = self.clickhouse.take() {
            self.rt.block_on(ch.finish());
        }
        if let (Some(h), Some(dir)) = (h, &self.state_dir)
            && let Err(e) = handover::write_snapshot(dir, &h)
        {
            warn!(error = %e, "writing the state snapshot failed; the next agent starts without it");
        }
        drop(self.datapath);
    }
}

//! A running agent: loaded datapath, shared state, the DNS gate thread and
//! a small tokio runtime (blocked-connection log, expiry). Used by both
//! `portcullis exec` and `portcullis run`.

use std::{
    io::Write,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use agent_common::Config;
use anyhow::{Context as _, Result};
use tokio::sync::watch;
use tracing::warn;

use crate::{
    ebpf::{Datapath, loader::current_netns_cookie},
    events,
    gate::{Gate, GateOptions, GateStats},
    state::{Caps, Identity, State, TtlBounds},
    policy::CompiledPolicy,
};

pub struct AgentOptions {
    pub ttl: TtlBounds,
    /// Limits on what endpoints learn from DNS.
    pub caps: Caps,
    /// Where blocked-connection records go (JSON lines).
    pub log: Box<dyn Write + Send>,
    /// Let cgroups below an attach point that are not endpoints pass.
    pub unmanaged_allow: bool,
    /// Denied-attempt events per endpoint per second (per CPU) and burst.
    pub events_per_sec: u32,
    pub events_burst: u32,
    pub gate: GateOptions,
}

pub struct Agent {
    pub state: Arc<Mutex<State>>,
    pub gate_stats: Arc<GateStats>,
    datapath: Datapath,
    rt: tokio::runtime::Runtime,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop_gate: Arc<AtomicBool>,
    gate_thread: JoinHandle<()>,
}

/// Drops expired learned IPs from the maps (the kernel refuses them at
/// connect time already; this keeps the maps and bookkeeping small).
async fn expire_learned(state: Arc<Mutex<State>>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = lock(&state).expire() {
                    warn!(error = %e, "expiring learned IPs failed");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// A random non-zero mark for re-injected answers: a workload cannot guess
/// it, and no other agent on the node uses it.
fn random_mark() -> u32 {
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        b = (std::process::id() ^ 0x5043_4c53).to_ne_bytes();
    }
    u32::from_ne_bytes(b) | 0x8000_0000
}

impl Agent {
    pub fn start(opts: AgentOptions) -> Result<Self> {
        let mut cfg = Config {
            host_netns_cookie: current_netns_cookie()?,
            inject_mark: random_mark(),
            unmanaged_allow: u32::from(opts.unmanaged_allow),
            events_per_sec: opts.events_per_sec,
            events_burst: opts.events_burst,
            ..Config::default()
        };
        let mut datapath = Datapath::load(cfg).context("loading the eBPF programs")?;
        let maps = datapath.take_maps().context("policy maps already taken")?;
        let hold = datapath.take_dns_hold().context("DNS hold ring missing")?;
        let denied = datapath.take_denied_events().context("event ring missing")?;
        let state = Arc::new(Mutex::new(State::with_caps(maps, opts.ttl, opts.caps)));
        let log = events::log_sink(opts.log);
        let gate = Gate::new(state.clone(), cfg.inject_mark, log.clone(), opts.gate);
        let gate_stats = gate.stats.clone();
        // The DNS gate is on the latency-critical path of every lookup: a
        // dedicated thread blocked in poll(2) on its ring. Everything else
        // (the blocked log, expiry) runs on a small tokio runtime.
        let stop_gate = Arc::new(AtomicBool::new(false));
        let gate_thread = {
            let stop = stop_gate.clone();
            thread::Builder::new().name("dns-gate".into()).spawn(move || gate.run(hold, stop))?
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-rt")
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            rt.spawn(events::run(denied, state.clone(), log, stop_rx.clone())),
            rt.spawn(expire_learned(state.clone(), stop_rx)),
        ];
        // Only now may the kernel hold answers for us: someone is listening.
        {
            let mut st = lock(&state);
            cfg = st.maps.config();
            cfg.agent_ready = 1;
            st.maps.set_config(&cfg)?;
        }
        Ok(Self { state, gate_stats, datapath, rt, stop, tasks, stop_gate, gate_thread })
    }

    pub fn add_endpoint(&self, identity: Identity, cgroup_id: u64, policy: CompiledPolicy, audit: bool) -> Result<u32> {
        Ok(lock(&self.state).add_endpoint(identity, cgroup_id, policy, audit)?)
    }

    pub fn attach(&mut self, cgroup: &Path) -> Result<()> {
        self.datapath.attach(cgroup).with_context(|| format!("attaching to {}", cgroup.display()))
    }

    /// Kernel loss counters worth telling a human about, as (what, count).
    pub fn losses(&self) -> Vec<(&'static str, u64)> {
        use agent_common::loss;
        let Ok(c) = lock(&self.state).maps.counters() else { return Vec::new() };
        let at = |i: u32| c.get(i as usize).copied().unwrap_or(0);
        [
            ("blocked-attempt records suppressed by the rate limit", at(loss::EVENT_RATE_LIMITED)),
            ("blocked-attempt records lost (ring buffer full)", at(loss::EVENT_RINGBUF_FULL)),
            ("DNS answers dropped (hold buffer full)", at(loss::DNS_RINGBUF_FULL)),
            ("DNS answers dropped (no owning process recorded)", at(loss::DNS_NO_OWNER)),
            ("DNS answers dropped (larger than the hold buffer)", at(loss::DNS_TOO_LARGE)),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }

    /// DNS-gate findings worth telling a human about, as (what, count).
    pub fn dns_findings(&self) -> Vec<(&'static str, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let g = &self.gate_stats;
        let mut suspicious = 0;
        if let Ok(m) = g.per_endpoint.lock() {
            suspicious = m.values().map(|s| s.suspicious_long_label + s.suspicious_entropy + s.high_rate).sum();
        }
        [
            ("DNS answers dropped: they matched no query (forged, unsolicited or late)", g.answers_unsolicited.load(Relaxed)),
            ("DNS queries with names that look like tunnelled data, or too many per second", suspicious),
            ("addresses not learned because a cap was reached and all older ones had live connections", g.ips_refused_cap.load(Relaxed)),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }

    /// Stops the workers (the log drains what is queued) and detaches.
    pub fn shutdown(self) {
        self.stop_gate.store(true, Ordering::Relaxed);
        let _ = self.gate_thread.join();
        let _ = self.stop.send(true);
        let tasks = self.tasks;
        self.rt.block_on(async {
            for t in tasks {
                let _ = t.await;
            }
        });
        drop(self.datapath);
    }
}

/// Locks, recovering from a poisoned lock: a panic elsewhere must not stop
/// enforcement bookkeeping or the blocked log (the data stays consistent:
/// every writer finishes its map update before it could panic).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

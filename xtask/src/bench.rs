//! `cargo xtask bench`: the cost of enforcement, measured side by side in
//! one run on the netns bench. These machines are noisy (identical runs
//! differ by up to ±20 %), so every configuration keeps one client process
//! alive in a pod of its own and the configurations take turns in short
//! slices, rotating the order each round; we report the median of the
//! per-round ratios with their spread. Nothing is switched between slices
//! (no table loaded, no process stopped), so a slice starts the moment the
//! previous one ends and the slices of one round see the same machine.
//! Per-program cost comes from the kernel's own BPF statistics
//! (`kernel.bpf_stats_enabled`: run_time_ns / run_cnt), which that noise
//! does not touch, read in separate slices of portcullis, uncounted and the
//! floor: statistics add ~70 ns to every program run, so they are off in
//! the ratio slices. Every instance of a program has the same name, so a
//! statistics slice reads all of them and only the client that runs makes
//! them run.
//!
//! Configurations, each with its client in its own pod namespace of the
//! bench (identical veths to the node namespace):
//! - `baseline`: no enforcement (pod `base`);
//! - `portcullis`: under `portcullis exec`, 1,000 IPs learned first (the
//!   bench's answers live an hour, so they stay learned for the whole run)
//!   (pod `pc`);
//! - `nftables`: the iptables/ipset way for reference: an nftables set of
//!   1,000 IPs in the pod's namespace, default drop (pod `nft`);
//! - `veth`: the pod's veth alone (`exec --veth-only`: what a gVisor or
//!   Kata pod gets), DNS taken off the wire (pod `veth`);
//! - `backstop`: `portcullis` plus the veth programs on the pod's veth
//!   (what every pod on a Kubernetes node gets) (pod `pcv`);
//! - `uncounted`: `portcullis` loaded with `--no-flow-counters` (the
//!   verifier removes every per-endpoint counting branch), same policy and
//!   prelearning: portcullis / uncounted, per round, and the programs'
//!   cost with counting on minus off in the statistics slices are what
//!   counting costs (pod `pcnc`).
//!
//! - `floor`, for the statistics slices only: an empty program at our
//!   hooks (`floor`), so the report can show what our code adds there.
//! - `runmode`, for the statistics slices only: `portcullis run` with
//!   metrics (`bench_load`), whose lookups are measured quiet and while
//!   `/metrics` is scraped 50 times a second and a blocked-log flood runs,
//!   next to baseline lookups under the same load (pod `pcrun`).
//!
//! The agents run all along; their CPU time during the portcullis and
//! uncounted slices is reported. The report is printed by `bench_report`.

use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use portcullis_tests::{Bench, ChildGuard};
use serde_json::Value;

use crate::{
    bench_client::{Client, pinning},
    bench_env::{BpfStats, ProgStats, nft, nft_script},
    bench_load::{Load, RunAgent},
    demo::workspace_root,
    floor::Floor,
    setup::Env,
    util,
};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Rounds: in each, every configuration runs each workload once.
    #[arg(long, default_value = "301")]
    pub rounds: usize,
    /// Seconds per ratio slice (one workload, one configuration).
    #[arg(long, default_value = "0.1")]
    pub secs: f64,
    /// Rounds of portcullis-only slices with BPF statistics on (program
    /// costs) and of DNS latency, spread over the run.
    #[arg(long, default_value = "11")]
    pub stats_rounds: usize,
    /// Pods for the Kubernetes agent's time-to-enforce row (0: skip it).
    #[arg(long, default_value = "20")]
    pub k8s_pods: usize,
    /// Only the time-to-enforce row.
    #[arg(long)]
    pub only_k8s: bool,
}

/// Also each configuration's index in the run's list of clients.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Config {
    Baseline = 0,
    Portcullis = 1,
    Nftables = 2,
    /// The veth programs alone (`exec --veth-only`).
    Veth = 3,
    /// The cgroup hooks and the veth programs.
    Backstop = 4,
    /// `portcullis` without flow counting (`--no-flow-counters`).
    Uncounted = 5,
    /// Statistics slices only: the empty programs of `floor`.
    Floor = 6,
    /// DNS slices only: `portcullis run` with metrics (`bench_load`).
    RunMode = 7,
}

/// The configurations, in client order (`Config as usize`).
const CONFIGS: [Config; 8] = [
    Config::Baseline,
    Config::Portcullis,
    Config::Nftables,
    Config::Veth,
    Config::Backstop,
    Config::Uncounted,
    Config::Floor,
    Config::RunMode,
];
/// The ratio slices rotate the clients before the floor.
const RATIO_CONFIGS: usize = Config::Floor as usize;
const PC: usize = Config::Portcullis as usize;
const NC: usize = Config::Uncounted as usize;
const FLOOR: usize = Config::Floor as usize;

impl Config {
    pub fn pod(self) -> &'static str {
        match self {
            Config::Baseline => "base",
            Config::Portcullis => "pc",
            Config::Nftables => "nft",
            Config::Veth => "veth",
            Config::Backstop => "pcv",
            Config::Uncounted => "pcnc",
            Config::Floor => "floor",
            Config::RunMode => crate::bench_load::POD,
        }
    }
}

const POLICY: &str = "\
egress:
  - toFQDNs: [{matchPattern: \"*.test\"}, {matchPattern: \"**.example.test\"}]
    ports: [{port: 7001}, {port: 7002}, {port: 80}]
dns:
  servers: [\"198.51.100.53\"]
";

/// The workloads, as (mode, target) for `load client`.
const CRR: (&str, &str) = ("crr", "api.example.test:7001");
const BULK: (&str, &str) = ("bulk", "api.example.test:7002");

/// Length of the slices with BPF statistics on and of the DNS slices.
const STATS_SECS: f64 = 1.0;

pub type Results = BTreeMap<(&'static str, Config), Vec<f64>>;
/// Per workload and configuration (portcullis, uncounted, floor): each
/// statistics round's program statistics, with the `bpf_stats` overhead
/// measured in the same round; the n-th entries of one workload are of the
/// same round.
pub type Progs = BTreeMap<(&'static str, Config), Vec<(ProgStats, f64)>>;
/// Per configuration that runs an agent: its CPU time and the wall time
/// of its slices, per workload.
pub type Cpu = Vec<(Config, BTreeMap<String, (u64, u64)>)>;

pub fn run(args: &BenchArgs, env: &Env) -> Result<()> {
    if args.rounds == 0 || !(0.05..=60.0).contains(&args.secs) {
        bail!("--rounds must be at least 1 and --secs within 0.05..=60");
    }
    let root = workspace_root()?;
    println!("bench: building portcullis (release) ...");
    util::run(Command::new("cargo").args(["build", "--quiet", "--release", "-p", "portcullis"]).current_dir(&root))?;
    let pods: Vec<&str> = CONFIGS.iter().map(|c| c.pod()).collect();
    let cgroup2 = env.cgroup2.as_deref().context("the bench needs cgroup v2")?;
    let floor = Floor::new(cgroup2)?;
    // Answers live an hour: the 1,000 prelearned IPs stay learned all run.
    let mut bench = Bench::builder().pods(&pods).race_names(true).dns_ttl(3600).start().context("starting the bench")?;
    let xtask = std::env::current_exe()?;
    let server = ChildGuard::spawn({
        let mut c = bench.cmd_in_inet(&xtask.to_string_lossy());
        c.args(["load", "serve", "--crr", "[::]:7001", "--bulk", "[::]:7002"]).stdout(Stdio::null());
        if let Some((_, server)) = pinning() {
            c.args(["--cpu", &server.to_string()]);
        }
        c
    })?;
    bench.adopt(server);
    thread::sleep(Duration::from_millis(300));
    let portcullis =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from).join("release/portcullis");
    let k8s_row = |bench: &Bench| -> Result<Option<String>> {
        if args.k8s_pods == 0 {
            return Ok(None);
        }
        println!("bench: Kubernetes agent, time to enforce ({} pods) ...", args.k8s_pods);
        let ms = crate::bench_k8s::time_to_enforce(
            bench,
            bench.pod_ns_name(Config::Portcullis.pod()),
            &portcullis,
            cgroup2,
            args.k8s_pods,
        )?;
        Ok(Some(crate::bench_k8s::summary(&ms)))
    };
    if args.only_k8s {
        if let Some(line) = k8s_row(&bench)? {
            println!("Kubernetes agent: time from a pod's cgroup appearing to its policy in force: {line}");
        }
        return Ok(());
    }
    let policy = bench.workdir().join("bench-policy.yaml");
    fs::write(&policy, POLICY)?;
    nft(&bench, Config::Nftables.pod(), &["-f", "-"], Some(&nft_script("pcbench")))?;
    let stats = BpfStats::take()?;
    let run_agent = RunAgent::start(&bench, &portcullis, POLICY, cgroup2).context("starting portcullis run")?;
    if let Some((client, server)) = pinning() {
        println!("bench: load clients pinned to CPU {client}, servers to CPU {server}");
    }
    println!("bench: starting the clients (each resolves 1,000 names first) ...");
    let mut clients = Vec::new();
    for cfg in CONFIGS {
        clients.push(Client::start(&bench, cfg, &portcullis, &policy, &floor, &run_agent)?);
    }
    let (results, progs) = measure(&mut clients, &stats, args, (&bench, &run_agent))?;
    let cpu: Cpu = [PC, NC].iter().map(|&k| (clients[k].cfg, clients[k].cpu.clone())).collect();
    for c in clients {
        c.finish()?;
    }
    let log = run_agent.log_summary();
    // The report first: a failed row at the end must not lose the run.
    crate::bench_report::report(&results, &progs, &cpu, args, log);
    let k8s = k8s_row(&bench)?;
    if let Some(line) = k8s {
        println!("\nKubernetes agent: time from a pod's cgroup appearing to its policy in force: {line}");
    }
    drop(run_agent);
    drop(floor);
    drop(bench);
    Ok(())
}

/// The rounds: each configuration runs crr and bulk in turn (order rotated
/// per round so drift hits all alike) with BPF statistics off. Every few
/// rounds, with them on, portcullis, uncounted and the floor run crr, bulk
/// and crr-spread in turn for the programs' costs, and baseline and
/// portcullis getaddrinfo latency.
fn measure(clients: &mut [Client], bpf_stats: &BpfStats, args: &BenchArgs, side: Side<'_>) -> Result<(Results, Progs)> {
    let (mut results, mut progs) = (Results::new(), Progs::new());
    // The clients before the floor take turns; the floor and run-mode
    // clients run in the statistics and DNS slices only.
    let n = RATIO_CONFIGS;
    let every = (args.rounds / args.stats_rounds.max(1)).max(1);
    let started = Instant::now();
    for round in 0..args.rounds {
        for (mode, target) in [CRR, BULK] {
            for k in 0..n {
                let c = &mut clients[(k + round) % n];
                let (r, _) = c.run(mode, target, args.secs, false)?;
                let v = r.get("per_sec").and_then(Value::as_f64).context("per_sec missing")?;
                results.entry((mode, c.cfg)).or_default().push(v);
            }
        }
        if args.stats_rounds > 0 && round % every == every / 2 {
            stats_round(clients, bpf_stats, round, &mut results, &mut progs)?;
            dns_under_load(clients, side, round, &mut results)?;
        }
        if (round + 1) % 10 == 0 || round + 1 == args.rounds {
            println!("bench: round {}/{} done ({:.0} s)", round + 1, args.rounds, started.elapsed().as_secs_f64());
        }
    }
    Ok((results, progs))
}

fn stats_round(
    clients: &mut [Client],
    bpf_stats: &BpfStats,
    round: usize,
    results: &mut Results,
    progs: &mut Progs,
) -> Result<()> {
    bpf_stats.set(true)?;
    // What the statistics themselves add per run, measured now: the
    // machine's speed drifts over a run (it leaves them on).
    let overhead = crate::calibrate::stats_overhead_ns().context("calibrating bpf_stats overhead")?;
    // crr-spread: every connection to another address (64 in turn), so
    // the connect hooks' verdict cache never hits: the full lookup's cost.
    // Portcullis, uncounted (counting's cost) and, for crr and bulk, the
    // floor client run each workload back to back, order rotated by round.
    let mut trio = [PC, NC, FLOOR];
    trio.rotate_left(round % 3);
    let pair = if round.is_multiple_of(2) { [PC, NC] } else { [NC, PC] };
    for (key, target) in [CRR, BULK, ("crr-spread", "spread:64:7001")] {
        let mode = if key == "bulk" { "bulk" } else { "crr" };
        let who: &[usize] = if key == "crr-spread" { &pair } else { &trio };
        for &k in who {
            if let (_, Some(stats)) = clients[k].run(mode, target, STATS_SECS, true)? {
                progs.entry((key, clients[k].cfg)).or_default().push((stats, overhead));
            }
        }
    }
    // getaddrinfo latency: baseline (0) and portcullis (1), order alternating.
    for k in [round % 2, 1 - round % 2] {
        let c = &mut clients[k];
        let (r, stats) = c.run("dns", "api.example.test", STATS_SECS, k == PC)?;
        if let Some(stats) = stats {
            progs.entry(("dns", c.cfg)).or_default().push((stats, overhead));
        }
        for (key, field) in [("dns-p50", "p50_ns"), ("dns-p99", "p99_ns")] {
            results.entry((key, c.cfg)).or_default().push(r.get(field).and_then(Value::as_f64).unwrap_or(0.0));
        }
    }
    bpf_stats.set(false)
}

/// The bench and the run-mode agent, for the loaded DNS slices.
type Side<'a> = (&'a Bench, &'a RunAgent);

/// getaddrinfo latency through `portcullis run`'s gate, quiet, and while
/// its `/metrics` is scraped 50 times a second and a pod of its makes
/// denied connects as fast as it can (`bench_load`); baseline lookups run
/// under the same load, so the difference is what the gate adds under it.
fn dns_under_load(clients: &mut [Client], (bench, run): Side<'_>, round: usize, results: &mut Results) -> Result<()> {
    const RUN: usize = Config::RunMode as usize;
    const BASE: usize = Config::Baseline as usize;
    let target = "api.example.test";
    let mut record = |key: [&'static str; 2], cfg: Config, r: &Value| {
        for (key, field) in key.into_iter().zip(["p50_ns", "p99_ns"]) {
            results.entry((key, cfg)).or_default().push(r.get(field).and_then(Value::as_f64).unwrap_or(0.0));
        }
    };
    let (r, _) = clients[RUN].run("dns", target, STATS_SECS, false)?;
    record(["dns-p50", "dns-p99"], Config::RunMode, &r);
    let load = Load::start(bench, run, 2.0 * STATS_SECS)?;
    for k in if round.is_multiple_of(2) { [BASE, RUN] } else { [RUN, BASE] } {
        let (r, _) = clients[k].run("dns", target, STATS_SECS, false)?;
        record(["dns-load-p50", "dns-load-p99"], clients[k].cfg, &r);
    }
    let seen = load.finish()?;
    for (key, v) in [("load-scrapes", seen.scrapes_per_sec), ("load-denied", seen.denied_per_sec)] {
        results.entry((key, Config::RunMode)).or_default().push(v);
    }
    results.entry(("load-scrape-failures", Config::RunMode)).or_default().push(seen.scrape_failures as f64);
    Ok(())
}

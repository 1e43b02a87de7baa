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
//! does not touch, read in separate portcullis slices: statistics add ~70 ns
//! to every program run, so they are off in the ratio slices.
//!
//! Configurations, each with its client in its own pod namespace of the
//! bench (identical veths to the node namespace):
//! - `baseline`: no enforcement (pod `base`);
//! - `portcullis`: under `portcullis exec`, 1,000 IPs learned first (the
//!   bench's answers live an hour, so they stay learned for the whole run)
//!   (pod `pc`);
//! - `nftables`: the iptables/ipset way for reference: an nftables set of
//!   1,000 IPs in the pod's namespace, default drop (pod `nft`).
//!
//! The agent runs all along; its CPU time during the portcullis slices is
//! reported.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use portcullis_tests::{Bench, ChildGuard};
use serde_json::Value;

use crate::{
    bench_env::{BpfStats, ProgStats, cpu_ns, nft, nft_script, prog_delta, prog_snapshot},
    demo::workspace_root,
    floor::{self, Floor},
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
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Config {
    Baseline,
    Portcullis,
    Nftables,
    /// Statistics slices only: the empty programs of `floor`.
    Floor,
}

impl Config {
    fn pod(self) -> &'static str {
        match self {
            Config::Baseline => "base",
            Config::Portcullis => "pc",
            Config::Nftables => "nft",
            Config::Floor => "floor",
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

/// Length of the slices with BPF statistics on and of the DNS slices.
const STATS_SECS: f64 = 1.0;

/// One configuration's load client, alive for the whole run: it prelearns
/// once, then runs one workload per request (`load client --sync`).
struct Client {
    cfg: Config,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
    guard: ChildGuard,
    /// portcullis: the agent's CPU time and the wall time of its slices,
    /// per workload.
    cpu: BTreeMap<String, (u64, u64)>,
}

impl Client {
    fn start(bench: &Bench, cfg: Config, portcullis: &PathBuf, policy: &PathBuf, floor: &Floor) -> Result<Self> {
        let xtask = std::env::current_exe()?;
        let load = ["load", "client", "--mode", "crr", "--target", "-", "--prelearn", "1000", "--sync"];
        let pin = pinning().map(|(client, _)| client.to_string());
        let mut cmd = match cfg {
            Config::Portcullis => {
                let mut c = Command::new(portcullis);
                c.arg("exec").arg("--policy").arg(policy);
                c.args(["--", "ip", "netns", "exec", bench.pod_ns_name(cfg.pod())]).arg(&xtask);
                c
            }
            Config::Floor => {
                // Into the floor's cgroup first: `ip netns exec` remounts /sys.
                let mut c = Command::new("sh");
                c.args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""]).arg(floor.dir());
                c.args(["ip", "netns", "exec", bench.pod_ns_name(cfg.pod())]).arg(&xtask);
                c
            }
            Config::Baseline | Config::Nftables => bench.cmd_in_pod(cfg.pod(), &xtask.to_string_lossy()),
        };
        cmd.args(load).args(pin.iter().flat_map(|c| ["--cpu", c])).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut guard = ChildGuard::spawn(cmd).context("starting a load client")?;
        let child = guard.child_mut();
        let (stdin, stdout) = (child.stdin.take().context("no stdin")?, child.stdout.take().context("no stdout")?);
        let mut c = Self { cfg, stdin: Some(stdin), out: BufReader::new(stdout), guard, cpu: BTreeMap::new() };
        c.expect("prelearned")?;
        Ok(c)
    }

    fn expect(&mut self, want: &str) -> Result<String> {
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        if want.is_empty() || line.trim() == want {
            return Ok(line);
        }
        bail!("{:?} load client: expected {want:?}, got {line:?}", self.cfg)
    }

    /// One timed workload of `secs`. For portcullis, also the agent's CPU
    /// time during it and, if `progs`, the programs' own cost (read with
    /// bpftool, so only in the statistics slices).
    fn run(&mut self, mode: &str, target: &str, secs: f64, agent: u32, progs: bool) -> Result<(Value, Option<ProgStats>)> {
        let mine = self.cfg == Config::Portcullis;
        let snapshot = progs.then(prog_snapshot);
        let before = mine.then(|| (cpu_ns(agent), Instant::now()));
        let stdin = self.stdin.as_mut().context("client closed")?;
        writeln!(stdin, "go {mode} {target} {secs}")?;
        stdin.flush()?;
        let result = self.expect("")?;
        self.expect("done")?;
        if let Some((cpu, t)) = before {
            let e = self.cpu.entry(format!("{mode} {target}")).or_default();
            e.0 += cpu_ns(agent).saturating_sub(cpu);
            e.1 += t.elapsed().as_nanos() as u64;
        }
        let stats = snapshot.map(|s| prog_delta(&s, &prog_snapshot()));
        let last = result.trim();
        Ok((serde_json::from_str(last).with_context(|| format!("client output {last}"))?, stats))
    }

    /// Ends the client (end of input) and, for portcullis, the agent.
    fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = self.guard.child_mut().wait()?;
        if !status.success() {
            bail!("{:?} load client failed: {status}", self.cfg);
        }
        Ok(())
    }
}

/// CPUs for the load client and server: the first two this process may
/// use, so each run has them on different cores (none on a 1-CPU machine).
fn pinning() -> Option<(usize, usize)> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) == 0).then_some(set)?
    };
    // SAFETY: CPU_ISSET reads within the set.
    let mut cpus = (0..libc::CPU_SETSIZE as usize).filter(|c| unsafe { libc::CPU_ISSET(*c, &set) });
    Some((cpus.next()?, cpus.next()?))
}

/// A distribution-free 95 % confidence interval of the median of sorted
/// `v`: the order statistics n/2 -+ 1.96 sqrt(n)/2 (normal approximation
/// of the binomial; every round's ratio is one independent draw).
fn median_ci(sorted: &[f64]) -> (f64, f64) {
    let n = sorted.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let half = 1.96 * (n as f64).sqrt() / 2.0;
    let at = |r: f64| sorted[(r.round().max(0.0) as usize).min(n - 1)];
    (at((n as f64 - 1.0) / 2.0 - half), at((n as f64 - 1.0) / 2.0 + half))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

type Results = BTreeMap<(&'static str, Config), Vec<f64>>;
/// Per workload: each slice's program statistics, with the `bpf_stats`
/// overhead measured in the same round.
type Progs = BTreeMap<&'static str, Vec<(ProgStats, f64)>>;

pub fn run(args: &BenchArgs, env: &Env) -> Result<()> {
    if args.rounds == 0 || !(0.05..=60.0).contains(&args.secs) {
        bail!("--rounds must be at least 1 and --secs within 0.05..=60");
    }
    let root = workspace_root()?;
    println!("bench: building portcullis (release) ...");
    util::run(Command::new("cargo").args(["build", "--quiet", "--release", "-p", "portcullis"]).current_dir(&root))?;
    let configs = [Config::Baseline, Config::Portcullis, Config::Nftables, Config::Floor];
    let pods: Vec<&str> = configs.iter().map(|c| c.pod()).collect();
    let floor = Floor::new(env.cgroup2.as_deref().context("the bench needs cgroup v2")?)?;
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
    let policy = bench.workdir().join("bench-policy.yaml");
    fs::write(&policy, POLICY)?;
    nft(&bench, Config::Nftables.pod(), &["-f", "-"], Some(&nft_script("pcbench")))?;
    let stats = BpfStats::take()?;
    let portcullis = root.join("target/release/portcullis");
    if let Some((client, server)) = pinning() {
        println!("bench: load clients pinned to CPU {client}, servers to CPU {server}");
    }
    println!("bench: starting the clients (each resolves 1,000 names first) ...");
    let mut clients = Vec::new();
    for cfg in configs {
        clients.push(Client::start(&bench, cfg, &portcullis, &policy, &floor)?);
    }
    let agent = clients[1].guard.pid();
    let (results, progs) = measure(&mut clients, agent, &stats, args)?;
    let cpu = clients[1].cpu.clone();
    for c in clients {
        c.finish()?;
    }
    report(&results, &progs, cpu, args);
    drop(floor);
    drop(bench);
    Ok(())
}

/// The rounds: each configuration runs crr and bulk in turn (order rotated
/// per round so drift hits all alike) with BPF statistics off. Every few
/// rounds, with them on, portcullis alone runs crr, bulk and crr-spread for
/// the programs' costs, and baseline and portcullis getaddrinfo latency.
fn measure(clients: &mut [Client], agent: u32, bpf_stats: &BpfStats, args: &BenchArgs) -> Result<(Results, Progs)> {
    let (mut results, mut progs) = (Results::new(), Progs::new());
    // Baseline, portcullis, nftables take turns; the floor client runs in
    // the statistics slices only.
    let n = 3;
    let (crr, bulk) = (("crr", "api.example.test:7001"), ("bulk", "api.example.test:7002"));
    let every = (args.rounds / args.stats_rounds.max(1)).max(1);
    let started = Instant::now();
    for round in 0..args.rounds {
        for (mode, target) in [crr, bulk] {
            for k in 0..n {
                let c = &mut clients[(k + round) % n];
                let (r, _) = c.run(mode, target, args.secs, agent, false)?;
                let v = r.get("per_sec").and_then(Value::as_f64).context("per_sec missing")?;
                results.entry((mode, c.cfg)).or_default().push(v);
            }
        }
        if args.stats_rounds > 0 && round % every == every / 2 {
            stats_round(clients, agent, bpf_stats, round, &mut results, &mut progs)?;
        }
        if (round + 1) % 10 == 0 || round + 1 == args.rounds {
            println!("bench: round {}/{} done ({:.0} s)", round + 1, args.rounds, started.elapsed().as_secs_f64());
        }
    }
    Ok((results, progs))
}

fn stats_round(
    clients: &mut [Client], agent: u32, bpf_stats: &BpfStats, round: usize, results: &mut Results, progs: &mut Progs,
) -> Result<()> {
    let (crr, bulk) = (("crr", "api.example.test:7001"), ("bulk", "api.example.test:7002"));
    bpf_stats.set(true)?;
    // What the statistics themselves add per run, measured now: the
    // machine's speed drifts over a run (it leaves them on).
    let overhead = crate::calibrate::stats_overhead_ns().context("calibrating bpf_stats overhead")?;
    // crr-spread: every connection to another address (64 in turn), so
    // the connect hooks' verdict cache never hits: the full lookup's cost.
    // crr and bulk also run on the floor client, next to portcullis's
    // slice (order alternating by round).
    let pair = if round.is_multiple_of(2) { [1, 3] } else { [3, 1] };
    for (key, target) in [crr, bulk, ("crr-spread", "spread:64:7001")] {
        let mode = if key == "bulk" { "bulk" } else { "crr" };
        let who: &[usize] = if key == "crr-spread" { &[1] } else { &pair };
        for &k in who {
            let (_, stats) = clients[k].run(mode, target, STATS_SECS, agent, true)?;
            progs.entry(key).or_default().extend(stats.map(|s| (s, overhead)));
        }
    }
    for k in [round % 2, 1 - round % 2] {
        let c = &mut clients[k];
        let (r, stats) = c.run("dns", "api.example.test", STATS_SECS, agent, k == 1)?;
        progs.entry("dns").or_default().extend(stats.map(|s| (s, overhead)));
        for (key, field) in [("dns-p50", "p50_ns"), ("dns-p99", "p99_ns")] {
            results.entry((key, c.cfg)).or_default().push(r.get(field).and_then(Value::as_f64).unwrap_or(0.0));
        }
    }
    bpf_stats.set(false)
}

fn report(results: &Results, progs: &Progs, cpu: BTreeMap<String, (u64, u64)>, args: &BenchArgs) {
    println!(
        "\nbench: {} rounds x {} s slices, 1,000 learned IPs, each client in its own pod netns, server in inet",
        args.rounds, args.secs
    );
    for (mode, label, unit, target) in [("crr", "short TCP connections/s", 1.0, 0.95), ("bulk", "bulk TCP throughput MB/s", 1e6, 0.97)] {
        let base = &results[&(mode, Config::Baseline)];
        for cfg in [Config::Portcullis, Config::Nftables] {
            let other = &results[&(mode, cfg)];
            let mut ratios: Vec<f64> = base.iter().zip(other).map(|(b, o)| o / b).collect();
            let (lo, hi) = ratios.iter().fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
            let med = median(&mut ratios);
            let q = |p: f64| ratios[((ratios.len() - 1) as f64 * p).round() as usize];
            let (ci_lo, ci_hi) = median_ci(&ratios);
            let (mut b, mut o) = (base.clone(), other.clone());
            println!(
                "  {label:<26} {:<10} ratio {med:.3} (95% CI of the median {ci_lo:.3}-{ci_hi:.3}; quartiles {:.3}-{:.3}, min {lo:.3}, max {hi:.3})  [{:.0} vs baseline {:.0}]{}",
                format!("{cfg:?}").to_lowercase(),
                q(0.25),
                q(0.75),
                median(&mut o) / unit,
                median(&mut b) / unit,
                if cfg == Config::Portcullis { format!("  target >= {target}") } else { String::new() },
            );
            let deciles: Vec<String> = (1..10).map(|d| format!("{:.2}", q(d as f64 / 10.0))).collect();
            println!("  {:<26} {:<10} per-round deciles: {}", "", "", deciles.join(" "));
        }
    }
    let med = |k: &'static str, cfg| median(&mut results.get(&(k, cfg)).cloned().unwrap_or_default());
    let (b50, b99, p50, p99) =
        (med("dns-p50", Config::Baseline), med("dns-p99", Config::Baseline), med("dns-p50", Config::Portcullis), med("dns-p99", Config::Portcullis));
    println!(
        "  DNS lookup (getaddrinfo)   p50 {:.0} us vs {:.0} us (+{:.0} us), p99 {:.0} us vs {:.0} us (+{:.0} us)  target p99 added <= 1000 us",
        p50 / 1e3, b50 / 1e3, (p50 - b50) / 1e3, p99 / 1e3, b99 / 1e3, (p99 - b99) / 1e3
    );
    // The agent's own work (DNS gates, TTL sweeps, events) while each
    // workload ran: part of what the ratios above measure.
    let share: Vec<String> = cpu
        .iter()
        .map(|(w, (cpu, busy))| format!("{w}: {:.2} %", *cpu as f64 / (*busy).max(1) as f64 * 100.0))
        .collect();
    println!("  agent CPU time, % of one core, during the portcullis slices: {}", share.join(", "));
    let mut overheads: Vec<f64> = progs.values().flatten().map(|(_, o)| *o).collect();
    let (lo, hi) = overheads.iter().fold((f64::MAX, f64::MIN), |(l, h), o| (l.min(*o), h.max(*o)));
    let overhead = median(&mut overheads);
    println!(
        "  per-program cost, kernel bpf_stats run_time_ns/run_cnt in portcullis-only slices (statistics are off in the\n  \
         ratio slices above, as they add to every program run), as measured and (net) minus what bpf_stats itself\n  \
         adds per run, measured each round (2-instruction program, BPF_PROG_TEST_RUN, stats off vs on: median\n  \
         {overhead:.0} ns, {lo:.0}-{hi:.0} ns over the rounds).\n  \
         Even so, a run that follows a whole connection measures more than that hot loop: the hook's cold entry and\n  \
         the clock reads. So an empty program (r0 = 1) attached at the same hooks of a client of its own ran crr and\n  \
         bulk next to each portcullis slice: \"over an empty program\" is what our code adds at that hook.\n  \
         Target <= 100 ns per run: per packet (pc_egress, pc_ingress) and per connection (pc_connect4, crr: a\n  \
         destination connected to before, decided from the verdict cache). crr-spread: every connection to another of\n  \
         64 addresses, so the cache never hits (the full lookup); dns: the DNS path (gate redirect, ring copies):"
    );
    for (mode, runs) in progs {
        // name -> (total ns, total ns net of that round's overhead, runs)
        let mut sum: BTreeMap<&str, (f64, f64, u64)> = BTreeMap::new();
        for (run, overhead) in runs {
            for (name, (ns, cnt)) in run {
                let e = sum.entry(name.as_str()).or_default();
                e.0 += ns * *cnt as f64;
                e.1 += (ns - overhead) * *cnt as f64;
                e.2 += cnt;
            }
        }
        let gross = |n: &str| sum.get(n).filter(|(_, _, cnt)| *cnt > 0).map(|(ns, _, cnt)| ns / *cnt as f64);
        let line: Vec<String> = sum
            .iter()
            .filter(|(n, (_, _, cnt))| *cnt > 0 && !floor::is_twin(n))
            .map(|(n, (ns, net, cnt))| {
                let c = *cnt as f64;
                let over = match floor::twin_of(n).and_then(gross) {
                    Some(empty) => format!("; {:.0} over an empty program there, {empty:.0} ns", (ns / c - empty).max(0.0)),
                    None => String::new(),
                };
                format!("{n} {:.0} ns (net {:.0}{over}; {cnt} runs)", ns / c, (net / c).max(0.0))
            })
            .collect();
        println!("    {mode:<5} {}", line.join("\n          "));
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_ci_spans_the_middle_order_statistics() {
        let v: Vec<f64> = (0..301).map(f64::from).collect();
        // n = 301: median at rank 150, half-width 1.96 * sqrt(301) / 2 = 17.
        assert_eq!(median_ci(&v), (133.0, 167.0));
        assert_eq!(median_ci(&[1.0]), (1.0, 1.0));
        assert_eq!(median_ci(&[]), (0.0, 0.0));
        let (lo, hi) = median_ci(&[1.0, 2.0, 3.0]);
        assert!(lo <= 2.0 && hi >= 2.0 && lo >= 1.0 && hi <= 3.0);
    }
}

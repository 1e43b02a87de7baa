//! `cargo xtask bench`: the cost of enforcement, measured side by side in
//! one run on the netns bench. These machines are noisy (identical runs
//! differ by up to ±20 %), so every workload runs in several rounds,
//! alternating configurations, and we report median ratios with their
//! spread. Per-program cost comes from the kernel's own BPF statistics
//! (`kernel.bpf_stats_enabled`: run_time_ns / run_cnt), which that noise
//! does not touch.
//!
//! Configurations, all with the client in the bench's pod namespace:
//! - `baseline`: no enforcement;
//! - `portcullis`: under `portcullis exec`, 1,000 IPs learned first;
//! - `nftables`: the iptables/ipset way for reference: an nftables set of
//!   1,000 IPs in the pod's namespace, default drop.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use portcullis_tests::{Bench, ChildGuard, addr, dns::race_addr};
use serde_json::Value;

use crate::{demo::workspace_root, setup::Env, util};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Rounds per workload (configurations alternate within each round).
    #[arg(long, default_value = "7")]
    pub rounds: usize,
    /// Seconds per measurement.
    #[arg(long, default_value = "2")]
    pub secs: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Config {
    Baseline,
    Portcullis,
    Nftables,
}

const POLICY: &str = "\
egress:
  - toFQDNs: [{matchPattern: \"*.test\"}, {matchPattern: \"**.example.test\"}]
    ports: [{port: 7001}, {port: 7002}, {port: 80}]
dns:
  servers: [\"198.51.100.53\"]
";

const PROGRAMS: [&str; 9] = [
    "pc_connect4", "pc_connect6", "pc_sendmsg4", "pc_sendmsg6", "pc_recvmsg4", "pc_recvmsg6", "pc_egress", "pc_ingress",
    "pc_release",
];

struct Ctx<'a> {
    bench: &'a Bench,
    portcullis: PathBuf,
    xtask: PathBuf,
    policy: PathBuf,
    secs: f64,
}

impl Ctx<'_> {
    /// Runs one workload; for `portcullis`, also the programs' own cost
    /// during the timed part only (prelearning is excluded).
    fn client(&self, cfg: Config, mode: &str, target: &str) -> Result<(Value, Option<ProgStats>)> {
        let pod = self.bench.pod_ns_name("pod");
        let secs = self.secs.to_string();
        let load = ["load", "client", "--mode", mode, "--target", target, "--secs", &secs, "--prelearn", "1000", "--sync"];
        let mut cmd = match cfg {
            Config::Portcullis => {
                let mut c = Command::new(&self.portcullis);
                c.arg("exec").arg("--policy").arg(&self.policy).args(["--", "ip", "netns", "exec", pod]).arg(&self.xtask);
                c
            }
            Config::Baseline | Config::Nftables => self.bench.cmd_in_pod("pod", &self.xtask.to_string_lossy()),
        };
        cmd.args(load).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting the load client")?;
        let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "prelearned" {
            let _ = child.kill();
            bail!("load client: expected `prelearned`, got {line:?}");
        }
        // Two snapshots of the programs' statistics, taken while the client
        // waits: nothing else runs on these 2 cores during the workload.
        let before = (cfg == Config::Portcullis).then(prog_snapshot);
        let mut stdin = child.stdin.take().context("no stdin")?;
        stdin.write_all(b"go\n")?;
        let mut result = String::new();
        out.read_line(&mut result)?;
        line.clear();
        out.read_line(&mut line)?;
        if line.trim() != "done" {
            let _ = child.kill();
            bail!("load client: expected `done`, got {line:?} after {result:?}");
        }
        let stats = before.map(|b| prog_delta(&b, &prog_snapshot()));
        stdin.write_all(b"bye\n")?;
        drop(stdin);
        let mut rest = String::new();
        out.read_to_string(&mut rest)?;
        let status = child.wait()?;
        if !status.success() {
            bail!("load client failed: {status}");
        }
        let last = result.trim();
        Ok((serde_json::from_str(last).with_context(|| format!("client output {last}"))?, stats))
    }
}

type ProgStats = BTreeMap<String, (f64, u64)>;

/// (name, run_time_ns, run_cnt) per program id, for our programs.
fn prog_snapshot() -> BTreeMap<u64, (String, u64, u64)> {
    let mut m = BTreeMap::new();
    let Ok(out) = Command::new("bpftool").args(["-j", "prog", "show"]).output() else { return m };
    let Ok(Value::Array(progs)) = serde_json::from_slice::<Value>(&out.stdout) else { return m };
    for p in progs {
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        if !PROGRAMS.contains(&name) {
            continue;
        }
        if let (Some(id), Some(ns), Some(cnt)) = (
            p.get("id").and_then(Value::as_u64),
            p.get("run_time_ns").and_then(Value::as_u64),
            p.get("run_cnt").and_then(Value::as_u64),
        ) {
            m.insert(id, (name.to_owned(), ns, cnt));
        }
    }
    m
}

/// ns per run and runs of each program between two snapshots.
fn prog_delta(before: &BTreeMap<u64, (String, u64, u64)>, after: &BTreeMap<u64, (String, u64, u64)>) -> ProgStats {
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (id, (name, ns, cnt)) in after {
        let (ns0, cnt0) = before.get(id).map_or((0, 0), |(_, n, c)| (*n, *c));
        let e = sums.entry(name.clone()).or_default();
        e.0 += ns.saturating_sub(ns0);
        e.1 += cnt.saturating_sub(cnt0);
    }
    sums.into_iter().map(|(n, (ns, cnt))| (n, (if cnt > 0 { ns as f64 / cnt as f64 } else { 0.0 }, cnt))).collect()
}

/// Turns BPF run-time statistics on for the run and back to what they were.
struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    fn enable() -> Result<Self> {
        let old = fs::read_to_string(Self::PATH).context("reading bpf_stats_enabled")?;
        fs::write(Self::PATH, "1").context("enabling bpf_stats")?;
        Ok(Self(old.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(Self::PATH, &self.0);
    }
}

fn nft_script(table: &str) -> String {
    // 1,000 IPv4 elements: the target, the 500 race IPv4s, and filler.
    let mut elems: Vec<String> = vec![addr::API_V4.to_string()];
    elems.extend((1..=500).map(|n| race_addr(n).to_string()));
    let mut i = 0u32;
    while elems.len() < 1000 {
        elems.push(format!("100.64.{}.{}", 10 + i / 250, 1 + i % 250));
        i += 1;
    }
    let mut s = String::new();
    let _ = writeln!(s, "table inet {table} {{");
    let _ = writeln!(s, "  set allowed {{ type ipv4_addr; elements = {{ {} }} }}", elems.join(", "));
    let _ = writeln!(s, "  chain out {{ type filter hook output priority 0; policy drop;");
    let _ = writeln!(s, "    oif \"lo\" accept");
    let _ = writeln!(s, "    ip daddr {} udp dport 53 accept", addr::DNS_V4);
    let _ = writeln!(s, "    ip daddr {} tcp dport 53 accept", addr::DNS_V4);
    let _ = writeln!(s, "    ip daddr @allowed tcp dport {{ 80, 7001, 7002 }} accept");
    let _ = writeln!(s, "  }}\n}}");
    s
}

fn nft(bench: &Bench, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut cmd = bench.cmd_in_pod("pod", "nft");
    cmd.args(args).stdin(Stdio::piped());
    let mut child = cmd.spawn().context("starting nft")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("nft {args:?} failed: {status}");
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub fn run(args: &BenchArgs, _env: &Env) -> Result<()> {
    let root = workspace_root()?;
    println!("bench: building portcullis (release) ...");
    util::run(Command::new("cargo").args(["build", "--quiet", "--release", "-p", "portcullis"]).current_dir(&root))?;
    let mut bench = Bench::builder().race_names(true).start().context("starting the bench")?;
    let xtask = std::env::current_exe()?;
    let server = ChildGuard::spawn({
        let mut c = bench.cmd_in_inet(&xtask.to_string_lossy());
        c.args(["load", "serve", "--crr", "[::]:7001", "--bulk", "[::]:7002"]).stdout(Stdio::null());
        c
    })?;
    bench.adopt(server);
    thread::sleep(Duration::from_millis(300));
    let policy = bench.workdir().join("bench-policy.yaml");
    fs::write(&policy, POLICY)?;
    let ctx = Ctx { bench: &bench, portcullis: root.join("target/release/portcullis"), xtask, policy, secs: args.secs };
    let overhead = crate::calibrate::stats_overhead_ns().context("calibrating bpf_stats overhead")?;
    let _stats = BpfStats::enable()?;
    // Per-program cost per workload: each portcullis run is polled on its own.
    let mut progs: BTreeMap<&str, Vec<BTreeMap<String, (f64, u64)>>> = BTreeMap::new();

    let target_crr = "api.example.test:7001";
    let target_bulk = "api.example.test:7002";
    let mut results: BTreeMap<(&str, Config), Vec<f64>> = BTreeMap::new();
    let configs = [Config::Baseline, Config::Portcullis, Config::Nftables];
    for round in 0..args.rounds {
        for (mode, target) in [("crr", target_crr), ("bulk", target_bulk)] {
            // Rotate the order each round so drift hits every configuration.
            for k in 0..configs.len() {
                let cfg = configs[(k + round) % configs.len()];
                if cfg == Config::Nftables {
                    nft(&bench, &["-f", "-"], Some(&nft_script("pcbench")))?;
                }
                let r = ctx.client(cfg, mode, target);
                if cfg == Config::Nftables {
                    nft(&bench, &["delete", "table", "inet", "pcbench"], None)?;
                }
                let (r, stats) = r?;
                if let Some(st) = stats {
                    progs.entry(mode).or_default().push(st);
                }
                let v = r.get("per_sec").and_then(Value::as_f64).context("per_sec missing")?;
                results.entry((mode, cfg)).or_default().push(v);
            }
        }
        // Every connection to another address (64 in turn): the connect
        // hooks' verdict cache never hits, so this is the full lookup's cost.
        let (_, stats) = ctx.client(Config::Portcullis, "crr", "spread:64:7001")?;
        if let Some(st) = stats {
            progs.entry("crr-spread").or_default().push(st);
        }
        println!("bench: round {}/{} done", round + 1, args.rounds);
    }
    let mut dns: BTreeMap<Config, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for round in 0..args.rounds {
        for cfg in if round % 2 == 0 { [Config::Baseline, Config::Portcullis] } else { [Config::Portcullis, Config::Baseline] } {
            let (r, stats) = ctx.client(cfg, "dns", "api.example.test")?;
            if let Some(st) = stats {
                progs.entry("dns").or_default().push(st);
            }
            let e = dns.entry(cfg).or_default();
            e.0.push(r.get("p50_ns").and_then(Value::as_f64).unwrap_or(0.0));
            e.1.push(r.get("p99_ns").and_then(Value::as_f64).unwrap_or(0.0));
        }
    }
    report(&results, &mut dns, &progs, overhead, args);
    drop(bench);
    Ok(())
}

fn report(
    results: &BTreeMap<(&str, Config), Vec<f64>>,
    dns: &mut BTreeMap<Config, (Vec<f64>, Vec<f64>)>,
    progs: &BTreeMap<&str, Vec<BTreeMap<String, (f64, u64)>>>,
    overhead: f64,
    args: &BenchArgs,
) {
    println!("\nbench: {} rounds x {}s, 1,000 learned IPs, client in the pod netns, server in inet", args.rounds, args.secs);
    for (mode, label, unit, target) in [("crr", "short TCP connections/s", 1.0, 0.95), ("bulk", "bulk TCP throughput MB/s", 1e6, 0.97)] {
        let base = &results[&(mode, Config::Baseline)];
        for cfg in [Config::Portcullis, Config::Nftables] {
            let other = &results[&(mode, cfg)];
            let mut ratios: Vec<f64> = base.iter().zip(other).map(|(b, o)| o / b).collect();
            let (lo, hi) = ratios.iter().fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
            let rounds: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            let med = median(&mut ratios);
            let (mut b, mut o) = (base.clone(), other.clone());
            println!(
                "  {label:<26} {:<10} ratio {med:.3} (min {lo:.3}, max {hi:.3})  [{:.0} vs baseline {:.0}]{}",
                format!("{cfg:?}").to_lowercase(),
                median(&mut o) / unit,
                median(&mut b) / unit,
                if cfg == Config::Portcullis { format!("  target >= {target}") } else { String::new() },
            );
            println!("  {:<26} {:<10} per round: {}", "", "", rounds.join(" "));
        }
    }
    if let (Some((b50, b99)), Some((p50, p99))) = (dns.get(&Config::Baseline).cloned(), dns.get(&Config::Portcullis).cloned()) {
        let (mut b50, mut b99, mut p50, mut p99) = (b50, b99, p50, p99);
        let (b50, b99, p50, p99) = (median(&mut b50), median(&mut b99), median(&mut p50), median(&mut p99));
        println!(
            "  DNS lookup (getaddrinfo)   p50 {:.0} us vs {:.0} us (+{:.0} us), p99 {:.0} us vs {:.0} us (+{:.0} us)  target p99 added <= 1000 us",
            p50 / 1e3, b50 / 1e3, (p50 - b50) / 1e3, p99 / 1e3, b99 / 1e3, (p99 - b99) / 1e3
        );
    }
    println!(
        "  per-program cost, kernel bpf_stats run_time_ns/run_cnt during each timed workload, as measured and (net) minus the\n  \
         {overhead:.0} ns that bpf_stats itself adds per run on this machine (2-instruction program, BPF_PROG_TEST_RUN, stats off vs on).\n  \
         Target <= 100 ns per run: per packet (pc_egress, pc_ingress) and per connection (pc_connect4, crr: a\n  \
         destination connected to before, decided from the verdict cache). crr-spread: every connection to another of\n  \
         64 addresses, so the cache never hits (the full lookup); dns: the DNS path (gate redirect, ring copies):"
    );
    for (mode, runs) in progs {
        let mut sum: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
        for run in runs {
            for (name, (ns, cnt)) in run {
                let e = sum.entry(name.as_str()).or_default();
                e.0 += ns * *cnt as f64;
                e.1 += cnt;
            }
        }
        let line: Vec<String> = sum
            .iter()
            .filter(|(_, (_, cnt))| *cnt > 0)
            .map(|(n, (ns, cnt))| {
                let avg = ns / *cnt as f64;
                format!("{n} {avg:.0} ns (net {:.0}, {cnt} runs)", (avg - overhead).max(0.0))
            })
            .collect();
        println!("    {mode:<5} {}", line.join("\n          "));
    }
}


//! What `cargo xtask bench` prints: median ratios with their confidence
//! intervals, DNS latency, the agent's CPU time and each program's cost.

use std::collections::BTreeMap;

use crate::{
    bench::{BenchArgs, Config, Cpu, Progs, Results},
    floor,
};

/// A distribution-free 95 % confidence interval of the median of sorted
/// `v`: the order statistics n/2 -+ 1.96 sqrt(n)/2 (normal approximation
/// of the binomial; every round's ratio is one independent draw).
pub fn median_ci(sorted: &[f64]) -> (f64, f64) {
    let n = sorted.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let half = 1.96 * (n as f64).sqrt() / 2.0;
    let at = |r: f64| sorted[(r.round().max(0.0) as usize).min(n - 1)];
    (at((n as f64 - 1.0) / 2.0 - half), at((n as f64 - 1.0) / 2.0 + half))
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// The median and its 95 % CI of `num / den`, round by round (both ran in
/// every round of `mode`).
pub fn ratio(results: &Results, mode: &'static str, num: Config, den: Config) -> Option<(f64, f64, f64)> {
    let (d, n) = (results.get(&(mode, den))?, results.get(&(mode, num))?);
    let mut ratios: Vec<f64> = d.iter().zip(n).map(|(d, n)| n / d).collect();
    let med = median(&mut ratios);
    let (lo, hi) = median_ci(&ratios);
    Some((med, lo, hi))
}

pub fn report(results: &Results, progs: &Progs, cpu: &Cpu, args: &BenchArgs, log: (usize, u64)) {
    println!(
        "\nbench: {} rounds x {} s slices, 1,000 learned IPs, each client in its own pod netns, server in inet",
        args.rounds, args.secs
    );
    for (mode, label, unit, target) in
        [("crr", "short TCP connections/s", 1.0, 0.95), ("bulk", "bulk TCP throughput MB/s", 1e6, 0.97)]
    {
        let base = &results[&(mode, Config::Baseline)];
        for cfg in [Config::Portcullis, Config::Nftables, Config::Veth, Config::Backstop, Config::Uncounted] {
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
                if matches!(cfg, Config::Portcullis | Config::Veth) { format!("  target >= {target}") } else { String::new() },
            );
            let deciles: Vec<String> = (1..10).map(|d| format!("{:.2}", q(d as f64 / 10.0))).collect();
            println!("  {:<26} {:<10} per-round deciles: {}", "", "", deciles.join(" "));
        }
    }
    backstop_vs_cgroup(results);
    crate::bench_counting::ratios(results);
    let med = |k: &'static str, cfg| median(&mut results.get(&(k, cfg)).cloned().unwrap_or_default());
    let (b50, b99, p50, p99) = (
        med("dns-p50", Config::Baseline),
        med("dns-p99", Config::Baseline),
        med("dns-p50", Config::Portcullis),
        med("dns-p99", Config::Portcullis),
    );
    println!(
        "  DNS lookup (getaddrinfo)   p50 {:.0} us vs {:.0} us (+{:.0} us), p99 {:.0} us vs {:.0} us (+{:.0} us)  target p99 added <= 1000 us",
        p50 / 1e3,
        b50 / 1e3,
        (p50 - b50) / 1e3,
        p99 / 1e3,
        b99 / 1e3,
        (p99 - b99) / 1e3
    );
    dns_under_load(results, log);
    // The agent's own work (DNS gates, TTL sweeps, events) while each
    // workload ran: part of what the ratios above measure.
    for (cfg, cpu) in cpu {
        let share: Vec<String> =
            cpu.iter().map(|(w, (cpu, busy))| format!("{w}: {:.2} %", *cpu as f64 / (*busy).max(1) as f64 * 100.0)).collect();
        println!(
            "  agent CPU time, % of one core, during the {} slices: {}",
            format!("{cfg:?}").to_lowercase(),
            share.join(", ")
        );
    }
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
    let empty = Vec::new();
    for ((mode, _), runs) in progs.iter().filter(|((_, cfg), _)| *cfg == Config::Portcullis) {
        // name -> (total ns, total ns net of that round's overhead, runs),
        // of ours in portcullis's slices and of the empty programs in the
        // floor's: a slice reads every program, and runs of ours that some
        // other process makes during a floor slice are no part of either.
        let mut sum: BTreeMap<&str, (f64, f64, u64)> = BTreeMap::new();
        let floor_runs = progs.get(&(mode, Config::Floor)).unwrap_or(&empty);
        for ((run, overhead), in_floor) in runs.iter().map(|r| (r, false)).chain(floor_runs.iter().map(|r| (r, true))) {
            for (name, (ns, cnt)) in run.iter().filter(|(n, _)| floor::is_twin(n) == in_floor) {
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
    crate::bench_counting::programs(progs);
}

/// The backstop's own cost: the cgroup hooks with the veth programs next
/// to the cgroup hooks alone, round by round (both ran in every round).
fn backstop_vs_cgroup(results: &Results) {
    for (mode, label) in [("crr", "short TCP connections/s"), ("bulk", "bulk TCP throughput MB/s")] {
        let Some((med, ci_lo, ci_hi)) = ratio(results, mode, Config::Backstop, Config::Portcullis) else { continue };
        println!(
            "  {label:<26} backstop / portcullis ratio {med:.3} (95% CI of the median {ci_lo:.3}-{ci_hi:.3})  target >= 0.98"
        );
    }
}

/// The run-mode rows: the same lookups quiet and under the side load
/// (`bench_load`), each against baseline lookups in the same conditions.
fn dns_under_load(results: &Results, (records, limited): (usize, u64)) {
    let med = |k: &'static str, cfg| median(&mut results.get(&(k, cfg)).cloned().unwrap_or_default());
    let us = |v: f64| v / 1e3;
    let (b50, b99) = (med("dns-p50", Config::Baseline), med("dns-p99", Config::Baseline));
    let (q50, q99) = (med("dns-p50", Config::RunMode), med("dns-p99", Config::RunMode));
    let (lb50, lb99) = (med("dns-load-p50", Config::Baseline), med("dns-load-p99", Config::Baseline));
    let (l50, l99) = (med("dns-load-p50", Config::RunMode), med("dns-load-p99", Config::RunMode));
    println!(
        "  DNS lookup, run mode, quiet p50 {:.0} us vs {:.0} us (+{:.0} us), p99 {:.0} us vs {:.0} us (+{:.0} us)",
        us(q50),
        us(b50),
        us(q50 - b50),
        us(q99),
        us(b99),
        us(q99 - b99)
    );
    println!(
        "  DNS lookup, run mode, /metrics 50/s + blocked-log flood: p50 {:.0} us vs {:.0} us (+{:.0} us), p99 {:.0} us vs {:.0} us \
         (+{:.0} us; +{:.0} us over the quiet baseline)  target p99 added <= 1000 us",
        us(l50),
        us(lb50),
        us(l50 - lb50),
        us(l99),
        us(lb99),
        us(l99 - lb99),
        us(l99 - b99)
    );
    println!(
        "  {:<26} (baseline under the same load; medians over the rounds of: {:.1} scrapes/s, {} failed, {:.0} denied connects/s; \
         blocked log: {records} records written, {limited} denied events held back by the kernel's rate limit)",
        "",
        med("load-scrapes", Config::RunMode),
        results.get(&("load-scrape-failures", Config::RunMode)).map_or(0.0, |v| v.iter().sum()),
        med("load-denied", Config::RunMode),
    );
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

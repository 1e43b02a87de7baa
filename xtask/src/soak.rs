//! `cargo xtask soak`: cilium/cilium#47128 (the agent grew from 103 MiB to
//! 3.4 GiB in 12 h under 10,000 new subdomains an hour, TTL 5 s) compressed
//! into minutes. `portcullis run` (release build) enforces `--endpoints`
//! cgroups of one bench pod; `--names` distinct names, each resolved once
//! through the DNS gate with a short TTL. Two runs, each with a fresh
//! agent: every name through the gate of one endpoint, then every name
//! spread evenly over `--endpoints` endpoints (`portcullis_tests::soak`).
//! Each prints the agent's RSS, the kernel maps' entries and the lookups so
//! far after warm-up (the caps reached and cycled), at every tenth and at
//! the end, then the verdicts; fails if any does.

use std::process::Command;

use anyhow::{Result, bail};
use clap::Args;
use portcullis_tests::soak::{self, Options, Sample};

use crate::{demo::workspace_root, util};

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// Distinct names per run.
    #[arg(long, default_value = "120000")]
    pub names: u64,
    /// Endpoints (cgroups) of the second run.
    #[arg(long, default_value = "20")]
    pub endpoints: u32,
    /// Lookups per second, in all.
    #[arg(long, default_value = "2000")]
    pub rate: f64,
    /// Lookups in flight at most, in all.
    #[arg(long, default_value = "64")]
    pub window: u32,
    /// The TTL of every answer.
    #[arg(long, default_value = "5")]
    pub dns_ttl: u32,
    /// The agent's minTtlSeconds (its own default, 30, would keep each name
    /// six times longer than the answer's TTL says).
    #[arg(long, default_value = "5")]
    pub min_ttl: u32,
    /// The agent's maxNamesPerEndpoint (default: the agent's, 10,000).
    #[arg(long)]
    pub max_names: Option<usize>,
    /// Fraction of the names after which the reference RSS is taken.
    #[arg(long, default_value = "0.25")]
    pub warmup: f64,
    /// Run this instead of the release build of the agent (e.g. a script
    /// that `exec`s it under a heap profiler's LD_PRELOAD).
    #[arg(long)]
    pub agent: Option<std::path::PathBuf>,
}

fn print_sample(s: &Sample) {
    let maps: Vec<String> = s.maps.iter().map(|(n, c)| format!("{n} {c}")).collect();
    let fails: Vec<String> = s.failures.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "soak: {:>8} {:>6} names {:>5.1} s | RSS {} KiB ({}) HWM {} threads {} | LEARNED {} (one endpoint: {} agent, {} walk) {} | \
         evicted {} | sent {} failed {}{} | {:.0}/s p99 {:.1} ms",
        s.label,
        s.done,
        s.secs,
        s.rss_kib,
        s.rss_kinds.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
        s.hwm_kib,
        s.threads,
        s.learned,
        s.learned_agent_max_ep,
        s.learned_walk_max_ep,
        maps.join(" "),
        s.evicted,
        s.sent,
        s.failed,
        if fails.is_empty() { String::new() } else { format!(" ({})", fails.join(", ")) },
        s.qps,
        s.p99_ms,
    );
}

pub fn run(args: &SoakArgs) -> Result<()> {
    let root = workspace_root()?;
    println!("soak: building portcullis (release) ...");
    util::run(Command::new("cargo").args(["build", "--quiet", "--release", "-p", "portcullis"]).current_dir(&root))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), Into::into);
    let mut failed = false;
    for endpoints in [1, args.endpoints] {
        let opts = Options {
            names: args.names,
            endpoints,
            rate: args.rate,
            window: args.window,
            dns_ttl: args.dns_ttl,
            min_ttl: args.min_ttl,
            max_names: args.max_names,
            warmup: args.warmup,
            spread_from: 0.0,
            agent: args.agent.clone().unwrap_or_else(|| target.join("release/portcullis")),
        };
        println!(
            "soak: {} names (*.{}) spread over {} endpoint(s) (cgroups in one pod netns); {}/s, DNS TTL {} s, \
             minTtlSeconds {}, maxNamesPerEndpoint {}; reference RSS after {:.0} % of the names",
            opts.names,
            soak::DOMAIN,
            opts.endpoints,
            opts.rate,
            opts.dns_ttl,
            opts.min_ttl,
            opts.max_names.unwrap_or(soak::DEFAULT_NAMES_PER_ENDPOINT),
            opts.warmup * 100.0,
        );
        let out = soak::run(&opts, print_sample)?;
        println!(
            "soak: gate-opening lookups (one per endpoint, before the run): {}, failed {}",
            out.warmup_lookups.0, out.warmup_lookups.1
        );
        for (what, ok) in out.verdicts() {
            println!("soak: {} {what}", if ok { "PASS" } else { "FAIL" });
            failed |= !ok;
        }
    }
    if failed {
        bail!("soak failed");
    }
    Ok(())
}

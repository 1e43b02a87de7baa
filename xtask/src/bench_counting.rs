//! What per-endpoint flow counting costs, in `cargo xtask bench`'s report:
//! `portcullis` (counting on) against `uncounted` (`--no-flow-counters`:
//! `FLOW_COUNTING` is 0 in `.rodata`, so the verifier removes every
//! counting branch), same policy, same learned IPs, same rounds.
//! Throughput: portcullis / uncounted, round by round (both ran in every
//! round), median and its CI. Per run: each program's run_time_ns /
//! run_cnt with counting on minus off, from the statistics slices, where
//! both ran the same workload back to back; pooled over the run, and the
//! median of the per-round differences with its CI (the machine's speed
//! drifts between rounds, not within one).

use crate::{
    bench::{Config, Progs, Results},
    bench_env::ProgStats,
    bench_report::{median, median_ci, ratio},
};

/// Fewer runs than this over the run (connects in bulk) say nothing.
const MIN_RUNS: u64 = 100;

/// The programs counting adds to, and what one run of each is.
const PROGRAMS: [(&str, &str); 4] = [
    ("pc_egress", "per packet"),
    ("pc_ingress", "per packet"),
    ("pc_connect4", "per connection"),
    ("pc_connect6", "per connection"),
];

/// The ratio rows, next to the other ratios.
pub fn ratios(results: &Results) {
    for (mode, label, target) in [("crr", "short TCP connections/s", Some(0.98)), ("bulk", "bulk TCP throughput MB/s", None)] {
        let Some((med, lo, hi)) = ratio(results, mode, Config::Portcullis, Config::Uncounted) else { continue };
        println!(
            "  {label:<26} counting on / off (portcullis / uncounted) ratio {med:.3} (95% CI of the median {lo:.3}-{hi:.3}){}",
            target.map_or(String::new(), |t| format!("  target >= {t}"))
        );
    }
}

/// The per-program rows, after the per-program costs.
pub fn programs(progs: &Progs) {
    println!(
        "  added by flow counting: bpf_stats run_time_ns/run_cnt, portcullis (on) minus uncounted (off), pooled over the\n  \
         statistics slices; per round: median of the rounds' differences and its 95% CI.  target <= 10 ns per packet:"
    );
    for mode in ["crr", "bulk", "crr-spread"] {
        let (Some(on), Some(off)) = (progs.get(&(mode, Config::Portcullis)), progs.get(&(mode, Config::Uncounted))) else {
            continue;
        };
        let line: Vec<String> = PROGRAMS
            .iter()
            .filter_map(|(name, unit)| {
                let added = added(on, off, name)?;
                Some(format!(
                    "{name} {:.1} vs {:.1} ns: {:+.1} ns {unit} (per round {:+.1}, CI {:+.1} to {:+.1}; {} / {} runs)",
                    added.on, added.off, added.pooled, added.per_round, added.ci.0, added.ci.1, added.runs.0, added.runs.1
                ))
            })
            .collect();
        println!("    {mode:<10} {}", line.join("\n               "));
    }
}

/// One program's cost with counting on and off.
#[derive(Debug, PartialEq)]
struct Added {
    on: f64,
    off: f64,
    /// `on - off`.
    pooled: f64,
    /// The median of the rounds' differences, and its CI.
    per_round: f64,
    ci: (f64, f64),
    /// Runs on and off.
    runs: (u64, u64),
}

/// `name`'s cost in runs `on` and `off` (the n-th of each from the same
/// round); None unless it ran `MIN_RUNS` times in both.
fn added(on: &[(ProgStats, f64)], off: &[(ProgStats, f64)], name: &str) -> Option<Added> {
    let ((on_ns, on_runs), (off_ns, off_runs)) = (pooled(on, name)?, pooled(off, name)?);
    let ran = |s: &ProgStats| s.get(name).filter(|(_, cnt)| *cnt > 0).map(|(ns, _)| *ns);
    let mut diffs: Vec<f64> = on.iter().zip(off).filter_map(|((a, _), (b, _))| Some(ran(a)? - ran(b)?)).collect();
    let per_round = median(&mut diffs);
    let runs = (on_runs, off_runs);
    Some(Added { on: on_ns, off: off_ns, pooled: on_ns - off_ns, per_round, ci: median_ci(&diffs), runs })
}

/// ns per run of `name` over all of `runs`, and its runs, if `MIN_RUNS`.
fn pooled(runs: &[(ProgStats, f64)], name: &str) -> Option<(f64, u64)> {
    let (ns, cnt) =
        runs.iter().filter_map(|(s, _)| s.get(name)).fold((0.0, 0u64), |(ns, cnt), (avg, n)| (ns + avg * *n as f64, cnt + n));
    (cnt >= MIN_RUNS).then(|| (ns / cnt as f64, cnt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(ns: f64, cnt: u64) -> (ProgStats, f64) {
        (ProgStats::from([("pc_egress".to_owned(), (ns, cnt))]), 70.0)
    }

    #[test]
    fn added_cost_pools_by_runs_and_pairs_rounds() {
        let on = [stats(30.0, 100), stats(20.0, 300), stats(25.0, 100)];
        let off = [stats(24.0, 100), stats(18.0, 100), stats(0.0, 0)];
        let a = added(&on, &off, "pc_egress").unwrap();
        // Pooled: (3000 + 6000 + 2500) / 500 = 23; (2400 + 1800) / 200 = 21.
        assert_eq!((a.on, a.off, a.pooled, a.runs), (23.0, 21.0, 2.0, (500, 200)));
        // Rounds in which both ran: +6 and +2; the third is left out.
        assert_eq!(a.per_round, 6.0);
        assert!(added(&on, &off, "pc_ingress").is_none());
        assert!(added(&on, &[stats(0.0, 0)], "pc_egress").is_none());
        // Too few runs to say anything (connects in bulk).
        assert!(added(&on, &[stats(5000.0, 3)], "pc_egress").is_none());
    }
}

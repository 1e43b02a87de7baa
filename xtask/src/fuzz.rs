//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `agent/fuzz/` (every
//! parser of bytes a workload or a resolver controls) for a bounded time
//! each; `cargo xtask test` runs the same as its last step.
//!
//! - Toolchain: `cargo +nightly fuzz` (cargo-fuzz is installed by `setup`).
//! - `PORTCULLIS_SKIP_EBPF=1` is set for the build: the fuzz crate only needs
//!   the `portcullis` library's pure code, and `agent/build.rs` then writes an
//!   empty eBPF object instead of building `agent-ebpf` with bpf-linker.
//! - Time: `--secs`, else `$PORTCULLIS_FUZZ_SECS`, else 6 s per target
//!   (`-max_total_time`), after one `cargo fuzz build` of all targets.
//! - Corpus: the checked-in seeds `agent/fuzz/corpus/<target>/` are read
//!   only; libFuzzer writes what it finds to the first corpus directory,
//!   `agent/fuzz/target/corpus/<target>/` (ignored by git, kept between
//!   local runs), so a run never dirties the checkout.
//! - A crash fails the command; libFuzzer's input lands in
//!   `agent/fuzz/artifacts/<target>/`. Keep it as
//!   `agent/fuzz/regressions/<target>/<name>`; `--regressions` replays those
//!   (never part of the timed run, which must pass while a bug is open).
//! - Output: libFuzzer's progress goes to `agent/fuzz/target/logs/<target>.log`;
//!   one summary line per target is printed, the log's tail on failure.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    demo::workspace_root,
    util::{self, cmd},
};

/// Seconds per target, overriding the default (`0` skips the fuzz step of
/// `cargo xtask test`, except under `CI=true`).
pub const SECS_ENV: &str = "PORTCULLIS_FUZZ_SECS";
pub const DEFAULT_SECS: u64 = 6;
/// A single input running longer than this is reported as a hang.
const INPUT_TIMEOUT_SECS: u64 = 10;

#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// Targets to run (default: every `agent/fuzz/fuzz_targets/*.rs`).
    pub targets: Vec<String>,
    /// Seconds per target (default: $PORTCULLIS_FUZZ_SECS, else 20).
    #[arg(long)]
    pub secs: Option<u64>,
    /// Replay `agent/fuzz/regressions/<target>/*` once instead of fuzzing.
    #[arg(long)]
    pub regressions: bool,
}

/// Seconds per target from `$PORTCULLIS_FUZZ_SECS` (unset or empty: default).
pub fn secs_from_env() -> anyhow::Result<u64> {
    match std::env::var(SECS_ENV) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().with_context(|| format!("{SECS_ENV}={v:?} is not a number of seconds")),
        _ => Ok(DEFAULT_SECS),
    }
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let dir = fuzz_dir()?;
    let all = targets(&dir)?;
    let chosen: Vec<String> = if args.targets.is_empty() {
        all
    } else {
        for t in &args.targets {
            if !all.contains(t) {
                bail!("no fuzz target {t:?} (have: {})", all.join(", "));
            }
        }
        args.targets.clone()
    };
    if args.regressions {
        return regressions(&dir, &chosen);
    }
    let secs = match args.secs {
        Some(s) => s,
        None => secs_from_env()?,
    };
    if secs == 0 {
        bail!("--secs 0 / {SECS_ENV}=0: nothing to run");
    }
    fuzz_all(&dir, &chosen, secs)
}

/// The fuzz step of `cargo xtask test`: every target, `$PORTCULLIS_FUZZ_SECS`
/// (default 20) seconds each.
pub fn test_step() -> anyhow::Result<()> {
    let secs = secs_from_env()?;
    if secs == 0 {
        if util::env_flag("CI") {
            bail!("{SECS_ENV}=0 is not allowed with CI=true: CI runs the fuzz targets");
        }
        println!("xtask test: fuzz targets were NOT run ({SECS_ENV}=0)");
        return Ok(());
    }
    let dir = fuzz_dir()?;
    let all = targets(&dir)?;
    println!("xtask test: fuzzing {} targets, {secs} s each ({SECS_ENV} to change)", all.len());
    fuzz_all(&dir, &all, secs)
}

fn fuzz_dir() -> anyhow::Result<PathBuf> {
    Ok(workspace_root()?.join("agent").join("fuzz"))
}

/// `cargo +nightly fuzz <sub>` in `agent/fuzz`, without the eBPF build.
fn cargo_fuzz(dir: &Path, sub: &[&str]) -> Command {
    let mut c = cmd("cargo", ["+nightly", "fuzz"]);
    c.args(sub).current_dir(dir).env("PORTCULLIS_SKIP_EBPF", "1");
    c
}

/// Target names: the file stems of `fuzz_targets/*.rs`, sorted.
fn targets(dir: &Path) -> anyhow::Result<Vec<String>> {
    let src = dir.join("fuzz_targets");
    let mut names = Vec::new();
    for entry in fs::read_dir(&src).with_context(|| format!("listing {}", src.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("no fuzz targets in {}", src.display());
    }
    Ok(names)
}

fn fuzz_all(dir: &Path, targets: &[String], secs: u64) -> anyhow::Result<()> {
    let mut build = cargo_fuzz(dir, &["build"]);
    println!("xtask fuzz: running `{}`", util::display(&build));
    util::run(&mut build)?;
    let started = Instant::now();
    let mut failed = Vec::new();
    for t in targets {
        if let Err(e) = fuzz_one(dir, t, secs) {
            eprintln!("xtask fuzz: {t}: {e:#}");
            failed.push(t.as_str());
        }
    }
    println!("xtask fuzz: {} targets in {:.0} s, {} failed", targets.len(), started.elapsed().as_secs_f64(), failed.len());
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

fn fuzz_one(dir: &Path, target: &str, secs: u64) -> anyhow::Result<()> {
    let seeds = dir.join("corpus").join(target);
    let work = dir.join("target").join("corpus").join(target);
    let logs = dir.join("target").join("logs");
    for d in [&work, &logs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut c = cargo_fuzz(dir, &["run", target]);
    // The writable corpus first: libFuzzer adds new inputs to it only.
    c.arg(&work);
    if seeds.is_dir() {
        c.arg(&seeds);
    }
    c.arg("--").arg(format!("-max_total_time={secs}")).arg(format!("-timeout={INPUT_TIMEOUT_SECS}"));
    let dict = dir.join("dicts").join(format!("{target}.dict"));
    if dict.is_file() {
        c.arg(format!("-dict={}", dict.display()));
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    println!("xtask fuzz: {target}: {secs} s (log: {})", log_path.display());
    let status = c
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot start `{}`", util::display(&c)))?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    if status.success() {
        println!("xtask fuzz: {target}: ok, {}", summary(&text));
        return Ok(());
    }
    eprintln!("---- last lines of {} ----", log_path.display());
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines[lines.len().saturating_sub(60)..] {
        eprintln!("{l}");
    }
    eprintln!("----");
    eprintln!(
        "xtask fuzz: {target}: the crashing input is in {} (see above); copy it to {} \
         and report it; `cargo xtask fuzz --regressions {target}` replays those",
        dir.join("artifacts").join(target).display(),
        dir.join("regressions").join(target).display()
    );
    bail!("`{}` failed ({status})", util::display(&c))
}

/// `N runs, cov: C ft: F corp: K` from libFuzzer's output, or a fallback.
pub fn summary(log: &str) -> String {
    let runs = log.lines().rev().find_map(|l| l.strip_prefix("Done ")?.split_whitespace().next().map(str::to_owned));
    let stats = log.lines().rev().find_map(|l| {
        let at = l.find("cov: ")?;
        let rest = &l[at..];
        let end = rest.find(" lim:").or_else(|| rest.find(" exec/s")).unwrap_or(rest.len());
        Some(rest[..end].trim().to_owned())
    });
    match (runs, stats) {
        (Some(r), Some(s)) => format!("{r} runs, {s}"),
        (Some(r), None) => format!("{r} runs"),
        (None, Some(s)) => s,
        (None, None) => "no libFuzzer statistics in the log".to_owned(),
    }
}

/// Runs every saved crash input once; fails if any still crashes.
fn regressions(dir: &Path, targets: &[String]) -> anyhow::Result<()> {
    let mut build = cargo_fuzz(dir, &["build"]);
    util::run(&mut build)?;
    let (mut ran, mut failed) = (0, Vec::new());
    for t in targets {
        let rdir = dir.join("regressions").join(t);
        let Ok(entries) = fs::read_dir(&rdir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.is_file()).collect();
        files.sort();
        for f in files {
            ran += 1;
            let mut c = cargo_fuzz(dir, &["run", t]);
            c.arg(&f);
            println!("xtask fuzz: replaying {}", f.display());
            if !c.status().with_context(|| format!("cannot start `{}`", util::display(&c)))?.success() {
                failed.push(f.display().to_string());
            }
        }
    }
    println!("xtask fuzz: {ran} regression inputs, {} still fail", failed.len());
    if !failed.is_empty() {
        bail!("still failing: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_summary() {
        let log = "INFO: Seed: 1\n\
                   #2\tINITED cov: 10 ft: 11 corp: 3/120b exec/s: 0 rss: 40Mb\n\
                   #40960\tpulse  cov: 812 ft: 2301 corp: 301/12Kb lim: 400 exec/s: 2048 rss: 80Mb\n\
                   #51234\tDONE   cov: 815 ft: 2310 corp: 305/13Kb lim: 408 exec/s: 2561 rss: 81Mb\n\
                   Done 51234 runs in 21 second(s)\n";
        assert_eq!(summary(log), "51234 runs, cov: 815 ft: 2310 corp: 305/13Kb");
        assert_eq!(summary("nothing"), "no libFuzzer statistics in the log");
    }
}

//! `cargo xtask test`: setup, build, clippy (`-D warnings`), the deploy
//! manifests (`deploy_check.rs`, also with `--no-privileged`), unit tests (parallel), then every
//! integration-test target (privileged: namespaces, BPF programs) with
//! `--test-threads=1`, then the kernel matrix (the privileged suites again
//! in QEMU guests of Linux 6.1 and 6.12, `kernel_matrix.rs`), then the fuzz targets for a bounded time each
//! (`fuzz.rs`; also with `--no-privileged`, whatever `--filter` says).
//! Stops at the first failing step and always closes with
//! `summary: N passed, M failed`, summed from cargo's `test result:` lines.

use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::Value;

use crate::{
    kernel_matrix, setup,
    util::{self, cmd},
};

/// The package of the root end-to-end tests: run last.
const E2E_PACKAGE: &str = "portcullis-tests";

#[derive(Args, Debug)]
pub struct TestArgs {
    /// Run only tests whose name contains this (passed to the test harness).
    #[arg(long, value_name = "SUBSTR")]
    pub filter: Option<String>,
    /// Run only unit and doc tests, not the privileged integration tests.
    #[arg(long)]
    pub no_privileged: bool,
    /// Skip the kernel matrix (the privileged suites in QEMU guests of
    /// Linux 6.1 and 6.12, `kernel_matrix.rs`); not with CI=true.
    #[arg(long)]
    pub no_vm: bool,
}

/// Sum of cargo's `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

/// Parses `test result: ok. 3 passed; 1 failed; 0 ignored; ...`.
pub fn parse_test_result(line: &str) -> Option<Tally> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let mut tally = Tally::default();
    let (mut saw_passed, mut saw_failed) = (false, false);
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(word), Some(count)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        match word {
            "passed" => (tally.passed, saw_passed) = (count, true),
            "failed" => (tally.failed, saw_failed) = (count, true),
            _ => {}
        }
    }
    (saw_passed && saw_failed).then_some(tally)
}

/// The workspace as `cargo metadata` sees it.
struct Workspace {
    root: PathBuf,
    target_dir: PathBuf,
    /// Default members with integration-test targets: (package, targets).
    integration: Vec<(String, Vec<String>)>,
    any_doctest: bool,
    /// `--lib`/`--bins` for the unit tests: cargo rejects `--lib` when no
    /// selected package has a library.
    unit_flags: Vec<&'static str>,
}

impl Workspace {
    fn load() -> anyhow::Result<Self> {
        let json = util::output(&mut cmd("cargo", ["metadata", "--format-version", "1", "--no-deps"]))?;
        let meta: Value = serde_json::from_str(&json).context("parsing cargo metadata")?;
        let path = |key: &str| -> anyhow::Result<PathBuf> {
            meta[key].as_str().map(PathBuf::from).with_context(|| format!("cargo metadata: no {key}"))
        };
        let (root, target_dir) = (path("workspace_root")?, path("target_directory")?);
        let members: Vec<&str> = meta["workspace_default_members"]
            .as_array()
            .context("cargo metadata: no workspace_default_members")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let (mut integration, mut any_doctest) = (Vec::new(), false);
        let (mut any_lib, mut any_bin) = (false, false);
        for pkg in meta["packages"].as_array().context("cargo metadata: no packages")? {
            if !pkg["id"].as_str().is_some_and(|id| members.contains(&id)) {
                continue;
            }
            let mut tests = Vec::new();
            for target in pkg["targets"].as_array().into_iter().flatten() {
                let kinds: Vec<&str> = target["kind"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                let name = target["name"].as_str().unwrap_or_default().to_owned();
                let lib = kinds.iter().any(|k| k.ends_with("lib") || *k == "proc-macro");
                any_lib |= lib;
                any_bin |= kinds.contains(&"bin");
                if kinds.contains(&"test") && target["test"].as_bool().unwrap_or(true) {
                    tests.push(name);
                } else if lib && target["doctest"].as_bool().unwrap_or(true) {
                    any_doctest = true;
                }
            }
            if !tests.is_empty() {
                integration.push((pkg["name"].as_str().unwrap_or_default().to_owned(), tests));
            }
        }
        // Lower-level integration tests first, the end-to-end bench last.
        integration.sort_by_key(|(name, _)| name == E2E_PACKAGE);
        let unit_flags =
            [(any_lib, "--lib"), (any_bin, "--bins")].into_iter().filter_map(|(any, flag)| any.then_some(flag)).collect();
        Ok(Self { root, target_dir, integration, any_doctest, unit_flags })
    }
}

/// Runs `cargo`, streaming its output while adding up `test result:` lines.
fn cargo_counting(mut command: Command, tally: &mut Tally) -> anyhow::Result<()> {
    let shown = util::display(&command);
    println!("xtask test: running `{shown}`");
    let mut child = command.stdout(Stdio::piped()).spawn().with_context(|| format!("cannot start `{shown}`"))?;
    let mut pipe = child.stdout.take().context("no stdout pipe")?;
    let (mut buf, mut line) = ([0u8; 8192], Vec::new());
    let mut out = std::io::stdout();
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading cargo's output"),
        };
        out.write_all(&buf[..n])?;
        out.flush()?;
        for &b in &buf[..n] {
            if b == b'\n' {
                if let Some(t) = parse_test_result(&String::from_utf8_lossy(&line)) {
                    tally.passed += t.passed;
                    tally.failed += t.failed;
                }
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

#[expect(clippy::exit, reason = "the exit status is the test verdict")]
pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    let ci = util::env_flag("CI");
    let root = util::is_root();
    if ci && !root {
        bail!("CI=true but not running as root: the privileged tests must not be skipped in CI");
    }
    if ci && (args.no_privileged || args.no_vm) {
        bail!("--no-privileged and --no-vm are not allowed with CI=true: CI runs every test on every kernel");
    }
    setup::run(setup::Mode::Quiet)?;
    let ws = Workspace::load()?;
    let bin = ws.target_dir.join("debug").join("portcullis");
    // Before the build below, which puts the current binary back.
    let previous = crate::previous::build(&ws.root, &ws.target_dir)?;
    let base = |sub: &[&str]| {
        let mut c = cmd("cargo", sub);
        c.current_dir(&ws.root).env("PORTCULLIS_BIN", &bin).env("PORTCULLIS_PREVIOUS_BIN", &previous);
        if ci {
            c.env("PORTCULLIS_REQUIRE_PRIVILEGED", "1");
        }
        c
    };
    let with_filter = |mut c: Command, threads_one: bool| {
        c.args(args.filter.as_deref());
        if threads_one {
            c.args(["--", "--test-threads=1"]);
        }
        c
    };

    let mut tally = Tally::default();
    let result = (|| -> anyhow::Result<()> {
        // The default members: agent-ebpf only builds for the BPF target (agent/build.rs does that).
        let mut build = base(&["build"]);
        println!("xtask test: running `{}`", util::display(&build));
        util::run(&mut build)?;
        if !bin.exists() {
            bail!("the build did not produce {}", bin.display());
        }
        // Formatting and lints are part of the test: every crate, every
        // target, no warning. The BPF crate only builds for its own target,
        // with the nightly toolchain that builds it (its own target dir, so
        // the host build is not invalidated).
        let mut fmt = base(&["fmt", "--all", "--check"]);
        println!("xtask test: running `{}`", util::display(&fmt));
        util::run(&mut fmt).context("the workspace is not rustfmt-clean: run `cargo fmt --all`")?;
        let mut clippy = base(&["clippy", "--all-targets", "--quiet", "--", "-D", "warnings"]);
        println!("xtask test: running `{}`", util::display(&clippy));
        util::run(&mut clippy)?;
        let mut clippy_bpf = base(&[
            "+nightly",
            "clippy",
            "-p",
            "agent-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ]);
        clippy_bpf.env("CARGO_TARGET_DIR", ws.target_dir.join("ebpf-clippy"));
        println!("xtask test: running `{}`", util::display(&clippy_bpf));
        util::run(&mut clippy_bpf)?;
        println!("xtask test: the deploy manifests (kustomize, kubernetes-validate, checkov, CRD schemas)");
        crate::deploy_check::run(&ws.root, &ws.target_dir.join("deploy-check"))?;
        if !ws.unit_flags.is_empty() {
            let mut unit = base(&["test"]);
            unit.args(&ws.unit_flags);
            cargo_counting(with_filter(unit, false), &mut tally)?;
        }
        if ws.any_doctest {
            cargo_counting(with_filter(base(&["test", "--doc"]), false), &mut tally)?;
        }
        if args.no_privileged {
            let skipped: Vec<String> =
                ws.integration.iter().flat_map(|(pkg, tests)| tests.iter().map(move |t| format!("{pkg}/{t}"))).collect();
            println!(
                "xtask test: privileged tests were NOT run (--no-privileged): {}",
                if skipped.is_empty() { "none exist yet".to_owned() } else { skipped.join(", ") }
            );
            return crate::fuzz::test_step();
        }
        if !root {
            println!("xtask test: not root: privileged tests may skip themselves");
        }
        for (pkg, tests) in &ws.integration {
            let mut c = base(&["test", "-p", pkg]);
            for t in tests {
                c.args(["--test", t]);
            }
            cargo_counting(with_filter(c, true), &mut tally)?;
        }
        if args.no_vm {
            println!("xtask test: the kernel matrix was NOT run (--no-vm): {}", kernel_matrix::KERNELS.join(", "));
        } else {
            let bins = kernel_matrix::binaries(&ws.root)?;
            for kernel in kernel_matrix::KERNELS {
                let line = kernel_matrix::guest_line(kernel, &bins, args.filter.as_deref());
                println!("xtask test: the kernel matrix on Linux {kernel} (QEMU)");
                let mut guest = kernel_matrix::guest_command(kernel, &line, &bin, ci)?;
                guest.env("PORTCULLIS_PREVIOUS_BIN", &previous);
                cargo_counting(guest, &mut tally)?;
            }
        }
        crate::fuzz::test_step()
    })();
    if let Err(e) = &result {
        eprintln!("xtask test: {e:#}");
    }
    println!("summary: {} passed, {} failed", tally.passed, tally.failed);
    if result.is_err() || tally.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_result_lines_are_parsed() {
        let ok = "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 3 filtered out; finished in 0.02s";
        assert_eq!(parse_test_result(ok), Some(Tally { passed: 12, failed: 0 }));
        let bad = "test result: FAILED. 4 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.50s";
        assert_eq!(parse_test_result(bad), Some(Tally { passed: 4, failed: 2 }));
        assert_eq!(
            parse_test_result("   test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\r"),
            Some(Tally::default())
        );
    }

    #[test]
    fn other_lines_are_not_results() {
        for line in [
            "test foo::bar ... ok",
            "running 3 tests",
            "test result: ok.",
            "error: test failed, to rerun pass `--lib`",
            "summary: 3 passed, 0 failed",
        ] {
            assert_eq!(parse_test_result(line), None, "{line}");
        }
    }
}

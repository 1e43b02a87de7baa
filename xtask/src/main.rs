//! `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! - `setup`: idempotent machine setup (rust-src, bpf-linker, Debian packages,
//!   bpffs); every other command runs it first, quietly.
//! - `test`: build, then unit tests, then the privileged integration tests one
//!   at a time; ends with `summary: N passed, M failed`. CI runs it via
//!   `.ci/run`.
//! - `demo`, `bench`, `soak`: see their modules.
//! - `fuzz`: the cargo-fuzz targets of `agent/fuzz/`, bounded (`fuzz.rs`);
//!   `test` runs them too.
//! - `vm`: a command as root in a QEMU guest of another kernel (6.1, 6.12)
//!   on the host's root filesystem (`vm.rs`).
//! - `deploy-check`: the Kubernetes manifests of `deploy/` rendered and
//!   validated without a cluster (`deploy_check.rs`); `test` runs it too.

mod bench;
mod bench_client;
mod bench_counting;
mod bench_env;
mod bench_k8s;
mod bench_load;
mod bench_report;
mod calibrate;
mod demo;
mod deploy_check;
mod floor;
mod fuzz;
mod kernel_matrix;
mod linker;
mod load;
#[cfg(test)]
mod modgraph;
mod previous;
mod setup;
mod soak;
mod test;
mod util;
mod vm;
mod vm_install;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Portcullis developer tasks", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent; needs root for apt/mount).
    Setup,
    /// Build the workspace and run every test target once (see `.ci/run`).
    Test(test::TestArgs),
    /// Run the demo.
    Demo(demo::DemoArgs),
    /// Run the benchmarks.
    Bench(bench::BenchArgs),
    /// Soak the DNS gate with a stream of new names (cilium/cilium#47128): RSS, map entries, failed lookups.
    Soak(soak::SoakArgs),
    /// Run the fuzz targets (agent/fuzz) for a bounded time each.
    Fuzz(fuzz::FuzzArgs),
    /// Regenerate deploy/crds/ from the Rust types (agent/src/k8s/crd.rs).
    Crds,
    /// Run a command as root in a QEMU guest of another kernel (6.1, 6.12, or an image).
    Vm(vm::VmArgs),
    /// Render deploy/ with kustomize and validate it (schemas, checkov, CRD schemas of the examples).
    DeployCheck,
    /// Benchmark workloads (run by `bench` inside the bench's namespaces).
    #[command(hide = true)]
    Load(load::LoadArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the whole cause chain on one line, never a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Setup => setup::run(setup::Mode::Verbose).map(drop),
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => {
            let env = setup::run(setup::Mode::Quiet)?;
            demo::run(&args, &env)
        }
        Command::Load(args) => load::run(&args),
        Command::Vm(args) => vm::run(&args),
        Command::Crds => {
            let out = demo::workspace_root()?.join("deploy/crds");
            let mut c = util::cmd("cargo", ["run", "-q", "-p", "portcullis", "--", "crds", "--out"]);
            util::run(c.arg(out))
        }
        Command::DeployCheck => deploy_check::command(),
        Command::Fuzz(args) => {
            setup::run(setup::Mode::Quiet)?;
            fuzz::run(&args)
        }
        Command::Soak(args) => {
            setup::run(setup::Mode::Quiet)?;
            soak::run(&args)
        }
        Command::Bench(args) => {
            let env = setup::run(setup::Mode::Quiet)?;
            bench::run(&args, &env)
        }
    }
}

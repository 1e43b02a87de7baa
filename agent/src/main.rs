//! `portcullis`: see `portcullis --help` and docs/ARCHITECTURE.md.

use std::process::ExitCode;

use clap::Parser as _;
use portcullis::{
    check::{self, BadPolicy},
    cli::{Cli, Command},
    exec, run,
};

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG_LEVEL")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// glibc gives each thread that allocates its own arena (up to eight per
/// core), and memory freed in one is not reused by another: with a thread
/// per namespace gate, the agent's RSS would follow its busiest moment per
/// thread rather than what it holds (measured by `cargo xtask soak`). Two
/// arenas keep it near what is live; nothing here allocates hot.
fn limit_malloc_arenas() {
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    portcullis::datapath::programs::set_flow_counting(!cli.no_flow_counters);
    let result = match &cli.command {
        Command::Exec(args) => {
            init_tracing(false);
            exec::run(args)
        }
        Command::Run(args) => {
            init_tracing(true);
            run::run(args).map(|()| 0)
        }
        #[cfg(feature = "k8s")]
        Command::Agent(args) => {
            init_tracing(true);
            portcullis::k8s::run(args).map(|()| 0)
        }
        #[cfg(not(feature = "k8s"))]
        Command::Agent(_) | Command::Crds(_) => Err(anyhow::anyhow!("built without the `k8s` feature")),
        Command::Unpin(args) => {
            init_tracing(false);
            run::unpin(args).map(|()| 0)
        }
        Command::CheckPolicy(args) => check::run(args).map(|()| 0).map_err(Into::into),
        Command::Explain(args) => portcullis::explain::run(args),
        Command::Blocked(args) => Ok(portcullis::blocked::blocked(args)),
        Command::Suggest(args) => Ok(portcullis::blocked::suggest::run(args)),
        #[cfg(feature = "k8s")]
        Command::Crds(args) => portcullis::k8s::crd::print(args.out.as_deref()).map(|()| 0),
    };
    match result {
        Ok(code) => exit(code),
        Err(e) if e.downcast_ref::<BadPolicy>().is_some() => {
            eprintln!("portcullis: {e:#}");
            exit(2)
        }
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            exit(exec::EXIT_AGENT_FAILED)
        }
    }
}

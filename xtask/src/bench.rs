//! `cargo xtask bench` — PLACEHOLDER, to be replaced by the benchmarks' author.
//!
//! `main.rs` has already run `setup` (quietly) before calling [`run`]; add
//! flags to [`BenchArgs`] without touching `main.rs`.

use clap::Args;

use crate::setup::Env;

/// Flags of `cargo xtask bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {}

pub fn run(_args: &BenchArgs, _env: &Env) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask bench` is not implemented yet")
}

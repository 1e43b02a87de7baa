//! Portcullis integration-test support: a network-namespace test bench.
//!
//! A [`Bench`] is a Kubernetes-like node built out of network namespaces:
//! one or more *pod* namespaces behind a *node* namespace (where the agent
//! runs, forwarding enabled there only), which routes to an *inet* namespace
//! hosting every "internet" address the tests use (see [`addr`]): HTTP/UDP
//! servers (`servers/hostd.py`) and a real dnsmasq resolver. Deny targets such
//! as 169.254.169.254 are hosts *inside inet*, so a failed enforcement never
//! lets a packet leave the machine. Nothing is added to the root namespace.
//! Opt-in extras: a misbehaving resolver (`servers/baddns.py` on
//! [`addr::BAD_DNS_V4`], [`BenchBuilder::bad_dns`]) and a TCP echo port
//! ([`BenchBuilder::tcp_echo`]).
//!
//! ```no_run
//! use portcullis_tests::{Bench, require_root};
//! if !require_root() { return; }
//! let bench = Bench::builder().pods(&["pod"]).race_names(true).start().unwrap();
//! let out = bench.cmd_in_pod("pod", "curl").args(["-s", "http://api.example.test/"]).output().unwrap();
//! assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello from "));
//! // dropped: namespaces, veths, /etc/netns dirs, servers all gone
//! ```
//!
//! Set `BENCH_TRACE=1` to print start/teardown timings.
//!
//! Also [`fakeapi`]: an in-process fake Kubernetes API server that the real
//! `kube::Client` talks to over 127.0.0.1, for the agent's Kubernetes side.
//! And [`gvisor`]: a command in a real gVisor sandbox (Debian's `runsc`) on
//! a bench pod's network namespace, for the TC datapath's sandboxed pods.
//! And [`kata`]: a bench pod in Kata Containers' tcfilter network shape,
//! with a namespace as the guest and a relay process as the VMM.
//! And [`clickhouse`]: a private `clickhouse-server` on loopback.

pub mod addr;
mod bench;
pub mod bpfmap;
mod builder;
pub mod clickhouse;
pub mod dns;
pub mod fakeapi;
mod guard;
pub mod gvisor;
pub mod kata;
pub mod netns;
pub mod servers;
pub mod soak;
mod topology;

pub use bench::Bench;
pub use builder::BenchBuilder;
pub use guard::ChildGuard;
pub use topology::{INET_DOWNLINK_IF, NODE_UPLINK_IF, POD_IF};

use std::path::PathBuf;

/// `true` when running as root. Otherwise a privileged test cannot run: under
/// CI ([`must_not_skip`]) that is a failure (panic), locally the test prints
/// a SKIP line and should return early.
pub fn require_root() -> bool {
    nix::unistd::geteuid().is_root() || skip("needs root (network namespaces)")
}

/// Whether a test must fail instead of skipping itself for a missing
/// prerequisite: under CI (`CI=true`, or `PORTCULLIS_REQUIRE_PRIVILEGED` set,
/// as `cargo xtask test` does in CI).
pub fn must_not_skip() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") || std::env::var_os("PORTCULLIS_REQUIRE_PRIVILEGED").is_some()
}

/// A test cannot run because `why`: panics under CI ([`must_not_skip`]),
/// else prints `SKIP <test>: <why>` and returns `false` (for an early return).
pub(crate) fn skip(why: &str) -> bool {
    let what = std::thread::current().name().unwrap_or("test").to_owned();
    if must_not_skip() {
        panic!("privileged test cannot run: {what} {why}, and CI=true");
    }
    // Written to the real stderr, not `eprintln!`, so libtest's output
    // capture does not hide that the test was skipped.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {what}: {why}");
    false
}

/// Path of the agent binary: `$PORTCULLIS_BIN` if set, else the first
/// existing of `$CARGO_TARGET_DIR/debug/portcullis` and
/// `<workspace>/target/debug/portcullis`.
pub fn portcullis_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PORTCULLIS_BIN") {
        let p = PathBuf::from(p);
        anyhow::ensure!(p.is_file(), "PORTCULLIS_BIN={} is not a file", p.display());
        return Ok(p);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates: Vec<PathBuf> = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([workspace.join("target")])
        .map(|t| t.join("debug/portcullis"))
        .collect();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        anyhow::anyhow!("agent binary not found at {candidates:?}: build it with `cargo xtask test` (or set PORTCULLIS_BIN)")
    })
}

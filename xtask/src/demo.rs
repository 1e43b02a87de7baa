//! `cargo xtask demo`: the main job. Builds Portcullis, builds a small
//! Kubernetes-like node out of network namespaces (see `tests/src`), runs a
//! prompt-injected "AI agent" script under `portcullis exec` with
//! `deploy/examples/agent-policy.yaml`, and tells the story: what was
//! allowed, what was blocked and why, with the blocked-connection records.
//! Everything stays inside the bench's namespaces; nothing leaves the machine.

use std::{fs, path::Path, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use portcullis_tests::{Bench, addr};
use serde_json::Value;

use crate::{setup::Env, util};

/// Flags of `cargo xtask demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Policy to run the agent under.
    #[arg(long, default_value = "deploy/examples/agent-policy.yaml")]
    pub policy: String,
}

/// What the agent script attempts, in order (bit i of its exit status is
/// set when attempt i got through), and whether the policy should allow it.
const EXPECTED: [(&str, bool); 7] = [
    ("model API (api.openai.com:443)", true),
    ("cloud metadata by IP (169.254.169.254)", false),
    ("cloud metadata by name (metadata.google.internal)", false),
    ("in-cluster service (10.96.0.10)", false),
    ("host not in the policy (other.example.test)", false),
    ("model API on port 80", false),
    ("DNS tunnel via rogue resolver (198.51.100.99)", false),
];

pub fn run(args: &DemoArgs, env: &Env) -> Result<()> {
    let root = workspace_root()?;
    println!("demo: building portcullis ...");
    util::run(Command::new("cargo").args(["build", "--quiet", "-p", "portcullis"]).current_dir(&root))?;
    let bin = root.join("target/debug/portcullis");
    let policy = root.join(&args.policy);
    let script = root.join("deploy/examples/demo-agent.py");
    let _ = env;

    let started = Instant::now();
    let bench = Bench::start().context("building the network-namespace bench")?;
    println!(
        "demo: bench up in {:.2}s: pod {} -> node -> internet ({} = api.openai.com, DNS {})",
        started.elapsed().as_secs_f64(),
        bench.pod_v4("pod"),
        addr::API_V4,
        addr::DNS_V4
    );
    println!("demo: policy {}:\n{}", args.policy, indent(&fs::read_to_string(&policy)?));

    let log = bench.workdir().join("blocked.jsonl");
    println!(
        "demo: $ portcullis exec --policy {} --log blocked.jsonl --netns /run/netns/<pod> -- python3 demo-agent.py\n",
        args.policy
    );
    let status = Command::new(&bin)
        .arg("exec")
        .arg("--policy")
        .arg(&policy)
        .arg("--log")
        .arg(&log)
        .args(["--name", "demo-agent", "--netns"])
        .arg(bench.pod_netns_path("pod"))
        .arg("--")
        .arg("python3")
        .arg(&script)
        .status()
        .context("running portcullis exec")?;
    let reached = status.code().context("agent script killed by a signal")?;

    println!("\ndemo: blocked-connection log ({}):", log.display());
    let records = read_log(&log)?;
    for r in &records {
        println!("  {}", r);
    }
    print_table(&records);

    println!("\ndemo: verdicts");
    let mut wrong = Vec::new();
    for (i, (what, allowed)) in EXPECTED.iter().enumerate() {
        let got = reached & (1 << i) != 0;
        let mark = if got == *allowed { "ok " } else { "BAD" };
        println!("  [{mark}] {:<52} {}", what, if got { "allowed" } else { "blocked" });
        if got != *allowed {
            wrong.push(*what);
        }
    }
    println!("demo: finished in {:.1}s after the build; tearing the bench down", started.elapsed().as_secs_f64());
    drop(bench);
    if !wrong.is_empty() {
        bail!("enforcement did not behave as the policy says for: {}", wrong.join(", "));
    }
    if records.is_empty() {
        bail!("no blocked-connection records were written");
    }
    Ok(())
}

fn read_log(path: &Path) -> Result<Vec<Value>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines().map(|l| serde_json::from_str(l).with_context(|| format!("bad log line {l}"))).collect()
}

fn print_table(records: &[Value]) {
    println!("\n  {:<10} {:<18} {:<22} {:>5}  {:<26} {:<9} HOOK", "VERDICT", "REASON", "DESTINATION", "PORT", "HOST", "COMM");
    for r in records {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
        let port = r.get("dport").and_then(Value::as_u64).unwrap_or(0);
        println!(
            "  {:<10} {:<18} {:<22} {:>5}  {:<26} {:<9} {}",
            s("verdict"),
            s("reason"),
            s("dst"),
            port,
            s("host"),
            s("comm"),
            s("hook")
        );
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

pub fn workspace_root() -> Result<std::path::PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest.parent().context("xtask has no parent directory")?.to_owned())
}

//! gVisor pods enforced on their veth alone (`portcullis exec --veth-pod
//! POD --veth-netns NODE --veth-only`): a real gVisor sandbox (runsc,
//! netstack on the pod's `eth0` through a packet socket, so no cgroup hook
//! sees its traffic) runs `clients/veth_probe.py` on a bench pod, once
//! without the agent (every attack works, seen at the targets) and once
//! with it (the allowed name works; other names, direct IPs, metadata by
//! address and by a rebinding name, cluster addresses, IPv6 forms, a rogue
//! resolver, UDP and ICMP fail, nothing of them reaches a target, each has
//! its `tc-egress` record; 1,000 of 1,000 resolve-then-connect trials
//! succeed). Needs root and Debian's `runsc`.

mod common;

use common::probe::{self, Window};
use common::{TestCgroup, target::Recorder};
use portcullis_tests::gvisor::{self, Sandbox};
use portcullis_tests::{Bench, require_root};
use serde_json::Value;
use std::time::Duration;

/// One sandbox run: the probe's cases, and the 1,000 race trials under
/// gVisor's ptrace platform.
const LIMIT: Duration = Duration::from_secs(120);

fn run_probe(sandbox: &Sandbox<'_>, bench: &Bench, tag: &str, race: bool) -> Value {
    let cmd = probe::command(bench, tag, race);
    let run = sandbox.run(&cmd.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    eprintln!("gvisor run ({tag}) took {:?}", run.elapsed);
    assert_eq!(run.code, 0, "{run:?}");
    probe::parse(&run.stdout, &run)
}

#[test]
fn gvisor_sandbox_is_enforced_on_its_pods_veth() {
    if !require_root() || !gvisor::require_runsc() {
        return;
    }
    let bench = Bench::builder().race_names(true).start().unwrap();
    let cg = TestCgroup::create("gvisor-veth");
    let sniffer = Recorder::sniff_inet(&bench);
    let sandbox = Sandbox::new(&bench, "pod", &cg.path).timeout(LIMIT);

    // Without the agent: every attack reaches its target.
    let w = Window::open(&bench, &sniffer);
    let v = run_probe(&sandbox, &bench, "base", false);
    probe::assert_unenforced(&bench, &v, &w, &sniffer, "base");

    // The agent on the pod's veth (attached while the pod's eth0 still has
    // its addresses: runsc takes them into the Sentry when the sandbox starts).
    let agent = probe::veth_only_agent(&bench);
    let from = agent.mark(&bench);
    let w = Window::open(&bench, &sniffer);
    let v = run_probe(&sandbox, &bench, "veth", true);
    // explain agrees with every verdict of the run: each record, and each
    // arrival (the allowed name, 1,000 race addresses).
    let agreed = agent.agree(&bench, "pod", from);
    assert!(agreed.allowances >= 1000 && agreed.denials >= 8, "{agreed:?}");
    let out = agent.stop();
    // SIGTERM went to `sleep`; the agent passed its status on and exited.
    out.expect_code(143);
    probe::assert_enforced(&bench, &v, &out.log, &w, &sniffer, "veth");
    probe::assert_race(&v);
}

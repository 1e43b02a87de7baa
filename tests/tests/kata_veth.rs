//! A Kata-shaped pod enforced on its veth alone, without a VM
//! (`portcullis_tests::kata`: Kata's tcfilter model on a bench pod, a
//! namespace as the guest, a relay process as the VMM). A client in the
//! guest sends every frame through the relay, the tap and the mirred
//! filters onto the pod's veth, where no socket hook sees it.
//! `clients/veth_probe.py` runs there once without the agent (every attack
//! reaches its target) and once with `portcullis exec --veth-pod POD
//! --veth-netns NODE --veth-only` (the allowed name works; other names,
//! direct IPs, metadata by address and by rebinding names, cluster
//! addresses, IPv6 forms, a rogue resolver, UDP and ICMP fail, nothing of
//! them reaches a target, each has its record; 1,000 of 1,000
//! resolve-then-connect trials succeed). Needs root.

mod common;

use common::probe::{self, Window};
use common::{run_with_deadline, target::Recorder};
use portcullis_tests::kata::{self, KataPod};
use portcullis_tests::{Bench, POD_IF, netns, require_root, servers::python};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// One probe run in the guest, with the 1,000 race trials.
const LIMIT: Duration = Duration::from_secs(120);

fn run_probe(kata: &KataPod, bench: &Bench, tag: &str, race: bool) -> Value {
    let cmd = probe::command(bench, tag, race);
    let mut c = kata.cmd_in_guest(&python().display().to_string());
    c.args(&cmd[1..]);
    let run = run_with_deadline(bench.workdir(), c, LIMIT);
    eprintln!("guest run ({tag}) took {:?}", run.elapsed);
    assert_eq!(run.code, 0, "{run:?}");
    probe::parse(&run.stdout, &run)
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Nothing of the Kata shape is left, and the pod is a plain bench pod
/// again: its own kernel reaches the API host over v4 and v6.
fn assert_torn_down(bench: &Bench, guest: &str) {
    let pod_ns = bench.pod_ns_name("pod");
    assert!(!netns::exists(guest), "guest namespace {guest} left");
    assert!(!netns::etc_netns_dir(guest).exists(), "/etc/netns/{guest} left");
    for dev in [kata::TAP_IF, kata::VM_IF] {
        let st = Command::new("ip").args(["-n", pod_ns, "link", "show", "dev", dev]).output().unwrap();
        assert!(!st.status.success(), "{dev} left in the pod namespace");
    }
    let qdiscs = ok(Command::new("tc").args(["-n", pod_ns, "qdisc", "show", "dev", POD_IF]));
    assert!(!qdiscs.contains("ingress"), "ingress qdisc left on eth0: {qdiscs}");
    for (flag, want) in [("-4", "hello from 203.0.113.10:80\n"), ("-6", "hello from [2001:db8:100::10]:80\n")] {
        let body = ok(bench.cmd_in_pod("pod", "curl").args(["-sS", "--max-time", "3", flag, "http://api.example.test/"]));
        assert_eq!(body, want);
    }
}

#[test]
fn kata_shaped_pod_is_enforced_on_its_pods_veth() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().race_names(true).start().unwrap();
    let sniffer = Recorder::sniff_inet(&bench);

    // Without the agent: every attack from the guest reaches its target.
    let kata = KataPod::start(&bench, "pod").unwrap();
    let w = Window::open(&bench, &sniffer);
    let v = run_probe(&kata, &bench, "base", false);
    probe::assert_unenforced(&bench, &v, &w, &sniffer, "base");
    let guest = kata.guest_ns_name().to_owned();
    kata.close().unwrap();
    assert_torn_down(&bench, &guest);

    // The agent first (it reads the pod's addresses off eth0), then the
    // "VM" takes them.
    let agent = probe::veth_only_agent(&bench);
    let from = agent.mark(&bench);
    let kata = KataPod::start(&bench, "pod").unwrap();
    let w = Window::open(&bench, &sniffer);
    let v = run_probe(&kata, &bench, "veth", true);
    // explain agrees with every verdict of the run: each record, and each
    // arrival (the allowed name, 1,000 race addresses).
    let agreed = agent.agree(&bench, "pod", from);
    assert!(agreed.allowances >= 1000 && agreed.denials >= 8, "{agreed:?}");
    let out = agent.stop();
    // SIGTERM went to `sleep`; the agent passed its status on and exited.
    out.expect_code(143);
    probe::assert_enforced(&bench, &v, &out.log, &w, &sniffer, "veth");
    probe::assert_race(&v);
    // Every trial's frames took Kata's path: guest, relay, tap, mirred.
    let (from_guest, to_guest) = kata.tap_frames().unwrap();
    assert!(from_guest > 5000 && to_guest > 5000, "tap0: {from_guest} frames from the guest, {to_guest} to it");
    assert_eq!(kata.relay_log(), "", "the relay lost frames");
}

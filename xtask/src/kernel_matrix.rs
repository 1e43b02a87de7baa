//! The kernel matrix of `cargo xtask test`: the privileged suites that
//! must hold on every kernel a node may run (BPF_PROG_TEST_RUN, the `exec`
//! end-to-end cases and bypasses, the DNS gates, the restart/takeover, the
//! start-up log of program variants) run again inside QEMU guests of Linux
//! 6.1 and 6.12 LTS (`vm.rs`), besides the host kernel. Software emulation
//! makes them 6-14x slower than on the host, so this is a subset (`SUITES`),
//! chosen to keep the whole test command under 30 minutes on 2 cores.

use std::{path::PathBuf, process::Command};

use anyhow::bail;
use serde_json::Value;

use crate::util::{self, cmd};

/// The guests' kernels (`vm_install::SERIES`).
pub const KERNELS: [&str; 2] = ["6.1", "6.12"];

/// (package, test target, harness arguments, space-separated: a filter,
/// `--skip NAME`; whether it runs on the newer LTS too): what runs in
/// each guest. Everything runs on 6.1, the oldest kernel a node may run;
/// 6.12 runs the program loads and verdicts of both datapaths
/// (BPF_PROG_TEST_RUN) and the program variants; the rest runs on 6.1 and
/// on the host, the kernels either side of it. `exec`'s sandbox
/// (capabilities, cgroup namespace: user space) runs on the host only.
/// Kept so to hold the test command under 30 minutes.
const SUITES: [(&str, &str, Option<&str>, bool); 10] = [
    ("portcullis", "prog_test_run", None, true),
    // The veth programs: verified and judged on both; end to end on the
    // oldest, where they attach as clsact filters (tcx is the host's;
    // the host runs the veth suites with clsact forced as well).
    ("portcullis", "veth_test_run", None, true),
    ("portcullis-tests", "veth_mode", Some("names_and"), false),
    ("portcullis-tests", "bypass_flows", None, false),
    ("portcullis-tests", "enforce_basic", None, false),
    // The DNS gates' hooks (dns_udp_gate's UDP variants, 2 min under
    // emulation, run on the host).
    ("portcullis-tests", "dns_gate", None, false),
    ("portcullis-tests", "dns_tcp", None, false),
    // Pinning, a SIGKILL and the restart that adopts the pins; the
    // takeovers (and the upgrade, the same takeover from the previous
    // release's pins) run on the host only: each costs most of a minute
    // under emulation.
    ("portcullis-tests", "restart", Some("pinned_enforcement"), false),
    ("portcullis-tests", "run_mode", Some("variants"), true),
    // The Kubernetes agent's attach at the kubelet pod parent next to
    // another agent's cgroup programs: the kernel's program order and
    // its EPERM under a flag-less ancestor, on the oldest kernel.
    ("portcullis-tests", "k8s_cilium", None, false),
];

/// The first kernel, which runs every suite.
const OLDEST: &str = KERNELS[0];

/// How much slower the guests run timed test steps (passed to the tests as
/// `PORTCULLIS_TEST_TIME_SCALE`).
const TIME_SCALE: &str = "3";

/// The test binaries of `SUITES`, built on the host.
pub fn binaries(root: &std::path::Path) -> anyhow::Result<Vec<(PathBuf, Option<&'static str>, bool)>> {
    let mut c = cmd("cargo", ["test", "--no-run", "--message-format=json"]);
    c.current_dir(root);
    for (pkg, target, _, _) in SUITES {
        c.args(["-p", pkg, "--test", target]);
    }
    let out = util::output(&mut c)?;
    let mut found = Vec::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) else { continue };
        if let Some((_, _, filter, newer)) = SUITES.iter().find(|(_, t, _, _)| *t == name) {
            found.push((PathBuf::from(exe), *filter, *newer));
        }
    }
    if found.len() != SUITES.len() {
        bail!("built {} of the {} kernel-matrix test binaries", found.len(), SUITES.len());
    }
    // The order of SUITES, not of the build.
    found.sort_by_key(|(exe, _, _)| {
        SUITES.iter().position(|(_, t, _, _)| exe.file_name().is_some_and(|f| f.to_string_lossy().starts_with(&format!("{t}-"))))
    });
    Ok(found)
}

/// The guest's shell line: every binary, one test at a time, all of them
/// whatever fails, exiting non-zero if any failed.
pub fn guest_line(kernel: &str, bins: &[(PathBuf, Option<&str>, bool)], extra_filter: Option<&str>) -> String {
    let mut s = String::from("rc=0; ");
    for (exe, filter, newer) in bins {
        if kernel != OLDEST && !newer {
            continue;
        }
        let filter = match (extra_filter, filter) {
            (Some(f), _) => format!(" {}", crate::vm::sh_quote(f)),
            (None, Some(args)) => args.split_whitespace().map(|a| format!(" {}", crate::vm::sh_quote(a))).collect(),
            (None, None) => String::new(),
        };
        s.push_str(&format!("{}{filter} --test-threads=1 || rc=1; ", crate::vm::sh_quote(&exe.to_string_lossy())));
    }
    s.push_str("exit $rc");
    s
}

/// `cargo xtask vm --kernel K -- LINE`, with the tests' environment.
pub fn guest_command(kernel: &str, line: &str, bin: &std::path::Path, ci: bool) -> anyhow::Result<Command> {
    // This very binary, through the kernel's link: `cargo build` of the
    // workspace relinks target/debug/xtask under the running test command
    // (features unify differently), after which the path names a deleted
    // file but /proc/self/exe still reaches it.
    let mut c = Command::new("/proc/self/exe");
    c.args(["vm", "--kernel", kernel, "--", line]);
    c.env("PORTCULLIS_BIN", bin).env("PORTCULLIS_TEST_TIME_SCALE", TIME_SCALE);
    if ci {
        c.env("PORTCULLIS_REQUIRE_PRIVILEGED", "1");
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_line_runs_every_binary_and_fails_if_any_does() {
        let bins = vec![(PathBuf::from("/t/a-1"), None, true), (PathBuf::from("/t/b-2"), Some("variants"), true)];
        assert_eq!(
            guest_line("6.1", &bins, None),
            "rc=0; '/t/a-1' --test-threads=1 || rc=1; '/t/b-2' 'variants' --test-threads=1 || rc=1; exit $rc"
        );
        assert!(guest_line("6.1", &bins, Some("x y")).contains("'/t/b-2' 'x y' --test-threads"));
        let skip = vec![(PathBuf::from("/t/c-3"), Some("--skip slow"), false)];
        assert!(guest_line("6.1", &skip, None).contains("'/t/c-3' '--skip' 'slow' --test-threads"));
        assert_eq!(guest_line("6.12", &skip, None), "rc=0; exit $rc", "the oldest kernel only");
    }
}

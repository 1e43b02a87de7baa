//! The kernel matrix of `cargo xtask test`: the privileged suites that
//! must hold on every kernel a node may run (BPF_PROG_TEST_RUN, the `exec`
//! end-to-end cases and bypasses, the DNS gates, the restart/takeover, the
//! start-up log of program variants) run again inside QEMU guests of Linux
//! 6.1 and 6.12 LTS (`vm.rs`), besides the host kernel. Software emulation
//! makes them ~6x slower than on the host, so this is a subset, chosen to
//! keep the whole test command under 30 minutes on 2 cores.

use std::{path::PathBuf, process::Command};

use anyhow::bail;
use serde_json::Value;

use crate::util::{self, cmd};

/// The guests' kernels (`vm_install::SERIES`).
pub const KERNELS: [&str; 2] = ["6.1", "6.12"];

/// (package, test target, harness filter): what runs in each guest.
const SUITES: [(&str, &str, Option<&str>); 9] = [
    ("portcullis", "prog_test_run", None),
    ("portcullis-tests", "bypass_flows", None),
    ("portcullis-tests", "bypass_exec", None),
    ("portcullis-tests", "enforce_basic", None),
    ("portcullis-tests", "dns_gate", None),
    ("portcullis-tests", "dns_udp_gate", None),
    ("portcullis-tests", "dns_tcp", None),
    ("portcullis-tests", "restart", None),
    ("portcullis-tests", "run_mode", Some("variants")),
];

/// How much slower the guests run timed test steps (passed to the tests as
/// `PORTCULLIS_TEST_TIME_SCALE`).
const TIME_SCALE: &str = "3";

/// The test binaries of `SUITES`, built on the host.
pub fn binaries(root: &std::path::Path) -> anyhow::Result<Vec<(PathBuf, Option<&'static str>)>> {
    let mut c = cmd("cargo", ["test", "--no-run", "--message-format=json"]);
    c.current_dir(root);
    for (pkg, target, _) in SUITES {
        c.args(["-p", pkg, "--test", target]);
    }
    let out = util::output(&mut c)?;
    let mut found = Vec::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) else { continue };
        if let Some((_, _, filter)) = SUITES.iter().find(|(_, t, _)| *t == name) {
            found.push((PathBuf::from(exe), *filter));
        }
    }
    if found.len() != SUITES.len() {
        bail!("built {} of the {} kernel-matrix test binaries", found.len(), SUITES.len());
    }
    // The order of SUITES, not of the build.
    found.sort_by_key(|(exe, _)| {
        SUITES.iter().position(|(_, t, _)| exe.file_name().is_some_and(|f| f.to_string_lossy().starts_with(&format!("{t}-"))))
    });
    Ok(found)
}

/// The guest's shell line: every binary, one test at a time, all of them
/// whatever fails, exiting non-zero if any failed.
pub fn guest_line(bins: &[(PathBuf, Option<&str>)], extra_filter: Option<&str>) -> String {
    let mut s = String::from("rc=0; ");
    for (exe, filter) in bins {
        let filter = extra_filter.or(*filter).map(|f| format!(" {}", crate::vm::sh_quote(f))).unwrap_or_default();
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
        let bins = vec![(PathBuf::from("/t/a-1"), None), (PathBuf::from("/t/b-2"), Some("variants"))];
        assert_eq!(
            guest_line(&bins, None),
            "rc=0; '/t/a-1' --test-threads=1 || rc=1; '/t/b-2' 'variants' --test-threads=1 || rc=1; exit $rc"
        );
        assert!(guest_line(&bins, Some("x y")).contains("'/t/b-2' 'x y' --test-threads"));
    }
}

//! Shared by the privileged agent tests (`BPF_PROG_TEST_RUN`).

use portcullis::cgroup::{cgroup2_mount, cgroup_id};

/// Root, or a clear skip; under CI (or `PORTCULLIS_REQUIRE_PRIVILEGED`) a
/// privileged test that cannot run is a failure, never a skip.
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var_os("PORTCULLIS_REQUIRE_PRIVILEGED").is_some();
    assert!(!required, "privileged test cannot run: not root (CI requires it)");
    eprintln!("SKIP: BPF_PROG_TEST_RUN needs root");
    false
}

/// The cgroup id of this test process: `BPF_PROG_TEST_RUN` gives the
/// synthetic skb a socket in the caller's cgroup (net/bpf/test_run.c), so
/// registering this cgroup as an endpoint is all a verdict test needs.
pub fn own_cgroup_id() -> u64 {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let rel = text.lines().find_map(|l| l.strip_prefix("0::")).expect("cgroup v2 entry");
    let path = cgroup2_mount().expect("cgroup2 mount").join(rel.trim_start_matches('/'));
    cgroup_id(&path).expect("cgroup id")
}

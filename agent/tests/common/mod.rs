//! Shared by the privileged agent tests (`BPF_PROG_TEST_RUN`).
#![allow(dead_code, reason = "each test binary uses a different part of this harness")]

use portcullis::cgroup::{cgroup_id, cgroup2_mount};

/// Root, or a clear skip; under CI (or `PORTCULLIS_REQUIRE_PRIVILEGED`) a
/// privileged test that cannot run is a failure, never a skip.
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let required = std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var_os("PORTCULLIS_REQUIRE_PRIVILEGED").is_some();
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

/// The config the verdict tests load the programs with: no real host netns
/// (the synthetic skb's socket is in ours), a fixed inject mark, ready.
pub fn test_config(unmanaged_allow: bool) -> agent_common::Config {
    agent_common::Config {
        host_netns_cookie: u64::MAX,
        inject_mark: INJECT_MARK,
        unmanaged_allow: u32::from(unmanaged_allow),
        events_per_sec: 100,
        events_burst: 100,
        agent_ready: 1,
        ..agent_common::Config::default()
    }
}

pub const INJECT_MARK: u32 = 0x8000_1234;

/// Loads the programs (unattached) and registers this test's cgroup as one
/// endpoint with `policy_yaml`, through the real path (YAML -> compile ->
/// `State`). Returns the datapath, the state and the endpoint id.
pub fn load_endpoint(
    cfg: agent_common::Config,
    caps: portcullis::enforcer::Caps,
    policy_yaml: &str,
) -> (portcullis::datapath::Datapath, portcullis::enforcer::State, u32) {
    load_endpoint_at(cfg, caps, policy_yaml, own_cgroup_id())
}

/// `load_endpoint` for the cgroup `cgroup_id`.
pub fn load_endpoint_at(
    cfg: agent_common::Config,
    caps: portcullis::enforcer::Caps,
    policy_yaml: &str,
    cgroup_id: u64,
) -> (portcullis::datapath::Datapath, portcullis::enforcer::State, u32) {
    load_endpoint_with(cfg, caps, policy_yaml, cgroup_id, false)
}

/// `load_endpoint_at`, loaded for one attach point (as `exec` does) or any
/// number (as `run` does): see `Datapath::load`.
pub fn load_endpoint_with(
    cfg: agent_common::Config,
    caps: portcullis::enforcer::Caps,
    policy_yaml: &str,
    cgroup_id: u64,
    one_attach_point: bool,
) -> (portcullis::datapath::Datapath, portcullis::enforcer::State, u32) {
    use portcullis::{
        enforcer::{Identity, State, TtlBounds},
        policy::{Policy, compile},
    };
    let mut dp = portcullis::datapath::Datapath::load(cfg, None, one_attach_point).expect("load programs");
    let maps = dp.take_maps().expect("maps");
    let ttl = TtlBounds { min: std::time::Duration::ZERO, max: std::time::Duration::from_secs(3600) };
    let mut state = State::with_caps(maps, ttl, caps);
    let policy = Policy::from_yaml_str(policy_yaml, "test").expect("policy");
    let compiled = compile(&policy, || Ok::<_, std::io::Error>(vec![])).expect("compile");
    let ep = state
        .add_endpoint(
            Identity { name: "t".into(), ..Default::default() },
            cgroup_id,
            compiled,
            portcullis::enforcer::Mode::Enforce,
        )
        .expect("endpoint");
    (dp, state, ep)
}

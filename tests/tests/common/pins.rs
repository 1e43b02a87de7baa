//! Node mode's pinned objects, seen from outside the agent: a pin
//! directory that cleans up after itself, and what the pinned maps hold
//! per endpoint (bpftool, raw bytes: the maps carry no BTF).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use portcullis_tests::{Bench, ChildGuard};
use serde_json::Value;

use super::{agent_cmd, fresh_path, kernel::bpftool_json, wait_for};

/// The previous release's layout directory (`agent/src/datapath/pin.rs`).
pub const LEGACY_LAYOUT: &str = "v3";

/// A pin directory of this test under /sys/fs/bpf, removed on drop (also on
/// panic): unpinning detaches whatever the agents left.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> Self {
        let p = PathBuf::from(format!("/sys/fs/bpf/portcullis-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Self(p)
    }

    /// A map's pin, at this release's version of it
    /// (`agent/src/datapath/programs.rs` `MAPS`).
    pub fn map(&self, name: &str) -> PathBuf {
        let version = match name {
            // 2: its value carries the rule that allowed the name.
            "LEARNED" => 2,
            _ => 1,
        };
        self.0.join("maps").join(format!("{name}@{version}"))
    }

    /// Everything pinned for the attach point `cgroup_id` (links, its own
    /// load's cache).
    pub fn links_of(&self, cgroup_id: u64) -> Vec<String> {
        let prefix = format!("{cgroup_id}-");
        let dir = self.0.join("links");
        let mut out: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        out.retain(|n| n.starts_with(&prefix));
        out.sort();
        out
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `["0x01", "0x00", ...]` (bpftool's JSON for a map without BTF) as bytes.
pub fn hex_bytes(v: &Value) -> Vec<u8> {
    let a = v.as_array().unwrap_or_else(|| panic!("not raw bytes: {v}"));
    a.iter().map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()).collect()
}

/// Every (key, value) of a pinned map that is not per-CPU.
pub fn entries(pin: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let dump = bpftool_json(&["map", "dump", "pinned", pin.to_str().unwrap()]);
    dump.as_array().unwrap().iter().map(|e| (hex_bytes(&e["key"]), hex_bytes(&e["value"]))).collect()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

/// cgroup id -> endpoint id, from `ENDPOINTS`.
pub fn endpoints(pins: &PinDir) -> BTreeMap<u64, u32> {
    entries(&pins.map("ENDPOINTS"))
        .into_iter()
        .map(|(k, v)| (u64::from_ne_bytes(k[..8].try_into().unwrap()), u32_at(&v, 0)))
        .collect()
}

/// Per map, the entries that belong to endpoint `id` (agent-common's key
/// and value layouts): what must be gone once the endpoint is removed.
pub fn entries_of(pins: &PinDir, id: u32) -> BTreeMap<&'static str, usize> {
    let count = |map: &str, f: &dyn Fn(&[u8], &[u8]) -> bool| entries(&pins.map(map)).iter().filter(|(k, v)| f(k, v)).count();
    BTreeMap::from([
        ("ENDPOINTS", count("ENDPOINTS", &|_, v| u32_at(v, 0) == id)),
        ("LEARNED", count("LEARNED", &|k, _| u32_at(k, 0) == id)),
        // LPM key: prefix length, then the endpoint in network byte order.
        ("CIDRS", count("CIDRS", &|k, _| k[4..8] == id.to_be_bytes())),
        ("DNS_SERVERS", count("DNS_SERVERS", &|k, _| u32_at(k, 0) == id)),
        ("GATES", count("GATES", &|k, _| u32_at(k, 8) == id)),
        ("GATE_PORTS", count("GATE_PORTS", &|_, v| u32_at(v, 20) == id)),
        ("DNS_SOCKS", count("DNS_SOCKS", &|_, v| u32_at(v, 4) == id)),
        ("INBOUND", count("INBOUND", &|k, _| u32_at(k, 0) == id)),
    ])
}

/// The learned keys of endpoint `id`, with their values (expiry).
pub fn learned_of(pins: &PinDir, id: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v: Vec<_> = entries(&pins.map("LEARNED")).into_iter().filter(|(k, _)| u32_at(k, 0) == id).collect();
    v.sort();
    v
}

/// `portcullis run --pin-path` with its tracing (JSON) in a file.
pub struct NodeAgent {
    pub child: ChildGuard,
    pub stderr: PathBuf,
}

impl NodeAgent {
    /// Starts `run` without waiting for anything.
    pub fn spawn(bench: &Bench, cfg: &Path, pins: &PinDir, state: &Path) -> Self {
        Self::spawn_bin(None, bench, cfg, pins, state)
    }

    /// Starts `run` of the agent binary `bin` (default: this build's).
    pub fn spawn_bin(bin: Option<&Path>, bench: &Bench, cfg: &Path, pins: &PinDir, state: &Path) -> Self {
        let stderr = fresh_path(bench.workdir(), "run.stderr");
        let mut c = agent_cmd();
        if let Some(b) = bin {
            let env: Vec<(std::ffi::OsString, std::ffi::OsString)> =
                c.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))).collect();
            c = Command::new(b);
            c.envs(env);
        }
        c.args(["run", "--config"])
            .arg(cfg)
            .arg("--pin-path")
            .arg(&pins.0)
            .arg("--state-dir")
            .arg(state)
            .env("PORTCULLIS_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        Self { child: ChildGuard::spawn(c).unwrap(), stderr }
    }

    /// Starts the agent with `args` (any command) without waiting.
    pub fn spawn_args<S: AsRef<std::ffi::OsStr>>(bench: &Bench, args: &[S]) -> Self {
        Self::spawn_args_env(bench, args, &[])
    }

    /// `spawn_args` with environment variables for the agent.
    pub fn spawn_args_env<S: AsRef<std::ffi::OsStr>>(bench: &Bench, args: &[S], env: &[(&str, &str)]) -> Self {
        let stderr = fresh_path(bench.workdir(), "agent.stderr");
        let mut c = agent_cmd();
        c.args(args)
            .envs(env.iter().copied())
            .env("PORTCULLIS_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        Self { child: ChildGuard::spawn(c).unwrap(), stderr }
    }

    /// Starts `run` and waits for "ready".
    pub fn start(bench: &Bench, cfg: &Path, pins: &PinDir, state: &Path) -> Self {
        Self::start_bin(None, bench, cfg, pins, state)
    }

    pub fn start_bin(bin: Option<&Path>, bench: &Bench, cfg: &Path, pins: &PinDir, state: &Path) -> Self {
        let mut a = Self::spawn_bin(bin, bench, cfg, pins, state);
        a.wait_message("ready");
        a
    }

    /// The `fields` of every tracing line so far.
    pub fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.stderr)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|l| l["fields"].clone())
            .collect()
    }

    /// Waits for the first line whose message is `msg`.
    pub fn wait_message(&mut self, msg: &str) -> Value {
        self.wait_nth(msg, 1)
    }

    /// Waits for the `n`th line whose message is `msg` (1: the first).
    pub fn wait_nth(&mut self, msg: &str, n: usize) -> Value {
        let stderr = self.stderr.clone();
        wait_for(&format!("agent to log {msg:?} ({n})"), Duration::from_secs(15), || {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("agent exited ({st}): {}", std::fs::read_to_string(&stderr).unwrap());
            }
            self.messages().into_iter().filter(|l| l["message"] == msg).nth(n - 1)
        })
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own, not yet reaped child.
        assert_eq!(unsafe { libc::kill(self.child.pid() as i32, sig) }, 0);
    }

    pub fn sigterm(&mut self) {
        self.signal(libc::SIGTERM);
        let st = wait_for("agent to exit", Duration::from_secs(10), || self.child.try_wait().unwrap());
        assert_eq!(st.code(), Some(0), "{}", std::fs::read_to_string(&self.stderr).unwrap());
    }

    pub fn sigkill(&mut self) {
        self.signal(libc::SIGKILL);
        wait_for("agent to die", Duration::from_secs(10), || self.child.try_wait().unwrap());
    }
}

/// `sh -c 'echo $$ > CG/cgroup.procs; exec ip netns exec POD argv...'`.
pub fn in_cgroup_cmd(bench: &Bench, cg: &Path, argv: &str) -> Command {
    in_cgroup_cmd_of(bench, cg, "pod", argv)
}

/// `in_cgroup_cmd` in the bench pod `pod`'s network namespace.
pub fn in_cgroup_cmd_of(bench: &Bench, cg: &Path, pod: &str, argv: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("echo $$ > {}/cgroup.procs && exec ip netns exec {} {argv}", cg.display(), bench.pod_ns_name(pod)));
    c
}

/// The previous release's agent (`PORTCULLIS_PREVIOUS_BIN`, built by
/// `cargo xtask test` from git: `xtask/src/previous.rs`). `None` skips the
/// test, which `PORTCULLIS_REQUIRE_PRIVILEGED` (CI) forbids.
pub fn previous_release() -> Option<PathBuf> {
    match std::env::var_os("PORTCULLIS_PREVIOUS_BIN").map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        other => {
            let why =
                format!("PORTCULLIS_PREVIOUS_BIN ({other:?}) names no file; `cargo xtask test` builds the previous release");
            assert!(std::env::var_os("PORTCULLIS_REQUIRE_PRIVILEGED").is_none(), "{why}");
            eprintln!("skipped: {why}");
            None
        }
    }
}

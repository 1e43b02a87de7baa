//! Shared helpers of the end-to-end enforcement tests: run a command (or a
//! script of client steps) under `portcullis exec` inside a bench pod, and
//! inspect exit codes, outputs and the blocked-connection log.
//!
//! Every test builds its own [`Bench`]; the agent runs in the root namespace
//! and puts the command into the pod (`ip netns exec`, so getaddrinfo uses the
//! bench DNS; or `nsenter`, explicit DNS servers only).
#![allow(dead_code, unused_imports, reason = "each test binary uses a different part of this harness")]

use portcullis_tests::{Bench, ChildGuard, portcullis_bin, servers::python};
use serde_json::Value;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const SOCK_PY: &str = include_str!("../../clients/sock.py");
pub const RACE_PY: &str = include_str!("../../clients/race.py");
pub const DNSQ_PY: &str = include_str!("../../clients/dnsq.py");
pub const HOLD_PY: &str = include_str!("../../clients/hold.py");
pub const ATTACK_PY: &str = target::ATTACK_PY;
pub const AGREE_PY: &str = include_str!("../../clients/agree.py");

/// The policy most tests start from: `api.example.test` on 443, DNS only
/// to the bench's resolver.
pub const API_POLICY: &str = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}]
    ports: [{port: 443}]
dns:
  servers: ["198.51.100.53"]
"#;

/// The trusted resolver's policy fragment, for policies written by tests.
pub const DNS_TRUSTED: &str = "dns:\n  servers: [\"198.51.100.53\"]\n";

/// Environment variables of the agent's CLI that must not leak in from the
/// caller's environment.
pub mod agree;
pub mod cni;
mod kernel;
mod log;
mod outcome;
pub mod pins;
pub mod probe;
mod running;
pub mod target;
pub use kernel::*;
pub use log::*;
pub use outcome::{Outcome, Step, Steps};
pub use running::{Running, VETH_ATTACHED};

const AGENT_ENV: [&str; 18] = [
    "PORTCULLIS_BLOCKED_LOG_DIR",
    "PORTCULLIS_BLOCKED_LOG_MAX_BYTES",
    "PORTCULLIS_BLOCKED_LOG_FILES",
    "PORTCULLIS_BLOCKED_LOG_FOLD",
    "PORTCULLIS_STATE_DIR",
    "PORTCULLIS_POLICY",
    "PORTCULLIS_AUDIT",
    "PORTCULLIS_LOG",
    "PORTCULLIS_MIN_TTL",
    "PORTCULLIS_MAX_TTL",
    "PORTCULLIS_NAME",
    "PORTCULLIS_CONFIG",
    "PORTCULLIS_LOG_LEVEL",
    "PORTCULLIS_NODE_NAME",
    "PORTCULLIS_CLICKHOUSE_URL",
    "PORTCULLIS_CLICKHOUSE_USER",
    "PORTCULLIS_CLICKHOUSE_PASSWORD",
    "PORTCULLIS_CLICKHOUSE_PASSWORD_FILE",
];

pub(crate) static SEQ: AtomicU32 = AtomicU32::new(0);

/// How much slower than the host this machine runs (the kernel matrix's
/// emulated guests set `PORTCULLIS_TEST_TIME_SCALE`): test windows whose
/// length is not the point of the test are stretched by it. 1 on the host.
pub fn time_scale() -> u32 {
    std::env::var("PORTCULLIS_TEST_TIME_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1).clamp(1, 10)
}

/// Whether `Exec` runs check that explain agrees with the datapath
/// (`agree`): on the host. The kernel matrix's emulated guests run the
/// same suites for the kernel's side; explain is user space, checked on
/// every step on the host, and a Python start per step there would cost
/// the test command minutes.
pub fn checks_agreement() -> bool {
    time_scale() == 1
}

/// A fresh path `<dir>/<n>-<name>` (e.g. in the bench's work dir, which
/// is removed with the bench).
pub fn fresh_path(dir: &Path, name: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{n}-{name}"))
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = fresh_path(dir, name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A temp dir for tests that need no bench; removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("pc-e2e-{}-{n}-{tag}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent command with a clean environment.
pub fn agent_cmd() -> Command {
    let bin = portcullis_bin().expect("agent binary (set PORTCULLIS_BIN)");
    let mut cmd = Command::new(bin);
    for v in AGENT_ENV {
        cmd.env_remove(v);
    }
    // Debugging a test: PORTCULLIS_TEST_AGENT_LOG=debug shows the agent's
    // logs in the failure output (its stderr).
    if let Ok(level) = std::env::var("PORTCULLIS_TEST_AGENT_LOG") {
        cmd.env("PORTCULLIS_LOG_LEVEL", level);
    }
    cmd
}

/// Exit status as a shell reports it: the code, or 128+N for signal N.
pub fn shell_code(st: ExitStatus) -> i32 {
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// Runs `cmd` (stdout/stderr to files) with a deadline; on timeout the child
/// is stopped (SIGTERM, then SIGKILL) and the test fails.
pub fn run_with_deadline(dir: &Path, mut cmd: Command, limit: Duration) -> Ran {
    let (out, err) = (fresh_path(dir, "stdout"), fresh_path(dir, "stderr"));
    cmd.stdin(Stdio::null()).stdout(std::fs::File::create(&out).unwrap()).stderr(std::fs::File::create(&err).unwrap());
    let started = Instant::now();
    let mut child = ChildGuard::spawn(cmd).expect("spawn");
    let pid = child.pid();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > limit {
            child.stop();
            panic!("timed out after {limit:?}; stdout:\n{}\nstderr:\n{}", read(&out), read(&err));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ran { pid, code: shell_code(status), stdout: read(&out), stderr: read(&err), elapsed: started.elapsed() }
}

pub(crate) fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[derive(Debug)]
pub struct Ran {
    /// PID of the process run (for `portcullis exec`: its cgroup's suffix).
    pub pid: u32,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// How the command gets into the pod's network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enter {
    /// `portcullis exec --netns /run/netns/<pod-ns>`: the bench
    /// resolv.conf applies (/etc/netns/<pod-ns>/, as `ip netns exec`).
    NetnsExec,
    /// `nsenter --net=/run/netns/<pod-ns> ...`: no resolv.conf.
    Nsenter,
    /// The command as given (it enters a namespace itself, or none).
    AsIs,
}

/// One `portcullis exec` invocation.
pub struct Exec<'b> {
    bench: &'b Bench,
    pod: String,
    policy: Option<String>,
    args: Vec<String>,
    enter: Enter,
    limit: Duration,
    env: Vec<(String, String)>,
}

impl<'b> Exec<'b> {
    pub fn new(bench: &'b Bench) -> Self {
        Self {
            bench,
            pod: "pod".into(),
            policy: None,
            args: vec![],
            enter: Enter::NetnsExec,
            limit: Duration::from_secs(30) * time_scale(),
            env: vec![],
        }
    }
    /// Policy YAML, written to a file and passed as `--policy`.
    pub fn policy(mut self, yaml: &str) -> Self {
        self.policy = Some(yaml.to_owned());
        self
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }
    pub fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }
    pub fn enter(mut self, e: Enter) -> Self {
        self.enter = e;
        self
    }
    pub fn pod(mut self, pod: &str) -> Self {
        self.pod = pod.to_owned();
        self
    }
    pub fn limit(mut self, d: Duration) -> Self {
        self.limit = d;
        self
    }
    /// An environment variable for the agent.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Runs `portcullis exec [--policy P] --log L ARGS <enter> -- CMD...`.
    /// CMD runs under a small `sh` wrapper that, once it exited, asks the
    /// agent's `explain` about every verdict of the run (`agree`) and exits
    /// with CMD's status.
    pub fn run(&self, cmd: &[&str]) -> Outcome {
        if self.args.iter().any(|a| a == "--user") || !checks_agreement() {
            // Another user can neither write the wrapper's files nor ask
            // the root-only socket: CMD as is.
            let log = fresh_path(self.bench.workdir(), "blocked.jsonl");
            return self.run_logging(&log, None, cmd);
        }
        let dir = fresh_path(self.bench.workdir(), "run");
        std::fs::create_dir(&dir).unwrap();
        let agree = agree::Agree::new(self, &dir);
        let wrapper = dir.join("run.sh");
        let (started, err) = (dir.join("started"), dir.join("agree.err"));
        std::fs::write(
            &wrapper,
            format!(
                ": >{}\n\"$@\"\nrc=$?\n{} {} 0 {} 2>{}\nexit $rc\n",
                started.display(),
                python().display(),
                client(self.bench, "agree.py", AGREE_PY).display(),
                agree.args,
                err.display()
            ),
        )
        .unwrap();
        let mut wrapped = vec!["sh", wrapper.to_str().unwrap()];
        wrapped.extend_from_slice(cmd);
        let outcome = self.run_logging(&agree.log, Some(&agree.state), &wrapped);
        if started.exists() {
            agree.check(1, &read(&err), &|_| format!("`{}`", cmd.join(" ")));
        }
        outcome
    }

    fn run_logging(&self, log: &Path, state: Option<&Path>, cmd: &[&str]) -> Outcome {
        let ran = run_with_deadline(self.bench.workdir(), self.command(log, state, cmd), self.limit);
        Outcome { log: Log::read(log), ran }
    }

    /// `portcullis exec [--policy P] --log LOG [--state-dir STATE] ARGS
    /// <enter> -- CMD...`.
    fn command(&self, log: &Path, state: Option<&Path>, cmd: &[&str]) -> Command {
        let work = self.bench.workdir();
        let mut c = agent_cmd();
        c.arg("exec");
        if let Some(p) = &self.policy {
            c.arg("--policy").arg(write_file(work, "policy.yaml", p));
        }
        if let Some(dir) = state {
            c.arg("--state-dir").arg(dir);
        }
        c.arg("--log").arg(log).args(&self.args);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        match self.enter {
            Enter::NetnsExec => {
                c.arg("--netns").arg(self.bench.pod_netns_path(&self.pod)).arg("--");
            }
            Enter::Nsenter => {
                // nsenter needs CAP_SYS_ADMIN, which the command only keeps
                // with --keep-caps.
                c.args(["--keep-caps", "--"]).args(self.bench.nsenter_args(&self.pod));
            }
            Enter::AsIs => {
                c.arg("--");
            }
        }
        c.args(cmd);
        c
    }

    /// Runs a script of named shell steps in one agent run; each step's
    /// exit code, output and duration are collected separately. Steps see
    /// `$PY` (python3), `$SOCK` (clients/sock.py), `$RACE` (clients/race.py),
    /// `$DNSQ` (clients/dnsq.py), `$HOLD` (clients/hold.py) and `$ATTACK`
    /// (clients/attack.py).
    ///
    /// After each step, `clients/agree.py` asks the agent's `explain` about
    /// every verdict the step produced (`agree`): a disagreement fails the
    /// test, whatever the test itself checks.
    pub fn steps(&self, steps: &[(&str, &str)]) -> Steps {
        let dir = fresh_path(self.bench.workdir(), "steps");
        std::fs::create_dir(&dir).unwrap();
        let agree = agree::Agree::new(self, &dir);
        let mut sh = String::from("#!/bin/sh\n");
        sh += &format!(
            "PY={}\nSOCK={}\nRACE={}\nDNSQ={}\nHOLD={}\nATTACK={}\n",
            python().display(),
            client(self.bench, "sock.py", SOCK_PY).display(),
            client(self.bench, "race.py", RACE_PY).display(),
            client(self.bench, "dnsq.py", DNSQ_PY).display(),
            client(self.bench, "hold.py", HOLD_PY).display(),
            client(self.bench, "attack.py", ATTACK_PY).display()
        );
        let agree_cmd = if checks_agreement() { "$PY $AGREE" } else { ":" };
        sh += &format!("AGREE={}\n", client(self.bench, "agree.py", AGREE_PY).display());
        for (i, (_, cmd)) in steps.iter().enumerate() {
            let d = dir.display();
            sh += &format!(
                "s=$(date +%s%N); ( {cmd}\n) >{d}/{i}.out 2>{d}/{i}.err </dev/null; rc=$?; \
                 e=$(date +%s%N); echo \"$rc $(( (e - s) / 1000000 ))\" >{d}/{i}.rc\n\
                 {agree_cmd} {i} {}\n",
                agree.args
            );
        }
        let script = dir.join("script.sh");
        std::fs::write(&script, sh).unwrap();
        let outcome = self.run_logging(&agree.log, Some(&agree.state), &["sh", script.to_str().unwrap()]);
        let results = steps
            .iter()
            .enumerate()
            .map(|(i, (name, cmd))| {
                let rc = read(&dir.join(format!("{i}.rc")));
                let (code, ms) = rc.trim().split_once(' ').unwrap_or_else(|| {
                    panic!("step {name} did not run (agent exit {}); stderr:\n{}", outcome.ran.code, outcome.ran.stderr)
                });
                Step {
                    name: name.to_string(),
                    cmd: cmd.to_string(),
                    code: code.parse().unwrap(),
                    ms: ms.parse().unwrap(),
                    stdout: read(&dir.join(format!("{i}.out"))),
                    stderr: read(&dir.join(format!("{i}.err"))),
                }
            })
            .collect::<Vec<Step>>();
        let step_name = |i: usize| steps.get(i).map(|(n, c)| format!("step {n} `{c}`")).unwrap_or_default();
        let agreement = if checks_agreement() {
            agree.check(steps.len(), &outcome.ran.stderr, &step_name)
        } else {
            agree::Agreement::default()
        };
        Steps { outcome, results, agreement }
    }
}

/// Writes a client script into the bench's work dir (once per bench).
pub fn client(bench: &Bench, name: &str, text: &str) -> PathBuf {
    let p = bench.workdir().join(name);
    if !p.exists() {
        std::fs::write(&p, text).unwrap();
    }
    p
}

/// GET `http://addr/metrics` (loopback of the root namespace, where the
/// agent runs) with a plain socket.
pub fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    text
}

/// The value of the series `name{labels}` (labels exactly as rendered).
pub fn series(text: &str, name_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name_labels)?.strip_prefix(' ')?.parse().ok())
}

//! gVisor sandboxes on a bench pod: runs a command under Debian's `runsc`
//! (0.0~20221219) with gVisor's own network stack (`--network=sandbox`) on
//! a pod's network namespace, as containerd's runsc shim runs a pod with a
//! gVisor RuntimeClass. The Sentry takes over the pod's `eth0` through an
//! `AF_PACKET` socket, so no cgroup hook sees its traffic; every frame still
//! crosses the pod's veth, where the TC datapath hooks.
//!
//! How a run goes, and why:
//! - `runsc spec`, edited: root is the host's `/`, read-only, behind an
//!   in-memory overlay (`--overlay2=root:memory`), so scripts written to the
//!   bench's work dir run as they are; the pod's bench `resolv.conf` is bound
//!   over `/etc/resolv.conf`; no `cgroupsPath` (runsc leaves cgroups alone).
//! - `--platform=ptrace`: KVM (nested here) spins forever at boot.
//! - One `runsc run`, started in the caller's pod cgroup, so the sandbox and
//!   gofer it spawns live there too. Not `create` + `start` + `wait`: only
//!   the sandbox's parent learns its exit status once it is gone, and a
//!   short command is gone before a separate `runsc wait` connects. The
//!   container's stdio is `run`'s stdio (files here).
//! - This runsc refuses `--network=sandbox` on kernels where
//!   `/proc/sys/net/core/rmem_default` exists in every netns ("cannot run
//!   with network enabled in root network namespace"; gVisor #10704), so
//!   `run` goes in a private mount namespace where a tmpfs hides the pod
//!   netns' `/proc/sys/net/core` (mounted from inside the pod netns: sysctl
//!   dentries are per netns). `run` itself stays in the root netns: the
//!   sandbox's control socket is an abstract unix socket there. (KVM would
//!   break in that mount namespace, ptrace does not.)
//! - runsc moves the IP addresses of `eth0` into the Sentry and never gives
//!   them back; the kernel-side addresses and default routes are re-added
//!   after the run, so one pod serves many runs (one at a time).
//! - Capabilities: runsc's default spec (`CAP_AUDIT_WRITE`, `CAP_KILL`,
//!   `CAP_NET_BIND_SERVICE`) and no raw sockets; [`Sandbox::net_raw`] adds
//!   `CAP_NET_RAW` and `--net-raw`, for crafted-packet attacks.
//!
//! Cleanup is RAII, also on panic or timeout: `runsc delete --force` (runsc
//! kills the sandbox and gofer it started), addresses back, files removed.
//! If the test process is killed, `runsc run` dies with it (the bench's
//! death signal) and takes its sandbox and gofer along (runsc's own).

use crate::guard::ChildGuard;
use crate::netns::IfSnapshot;
use crate::{Bench, POD_IF};
use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The only variable the contained process gets.
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long `runsc delete --force` may take at cleanup (1.5 s for a live sandbox here).
const DELETE_LIMIT: Duration = Duration::from_secs(20);
/// `sh -c` script that moves itself into the cgroup `$0`, then runs `$@`.
const IN_CGROUP: &str = "echo $$ > \"$0/cgroup.procs\" && exec \"$@\"";
/// `sh -c` script (run in a private mount namespace) that hides the netns
/// `$0`'s `/proc/sys/net/core` from runsc's root-netns check, then runs `$@`.
const HIDE_NET_CORE: &str = "nsenter --net=\"$0\" mount -t tmpfs none /proc/sys/net/core && exec \"$@\"";

/// What a sandboxed command did.
#[derive(Debug)]
pub struct GvisorRun {
    /// The exit code, or 128+N for signal N (as `runsc run` reports it).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The whole `runsc run`: sandbox start, command, sandbox exit.
    pub elapsed: Duration,
}

/// `runsc` from `PATH` (Debian: `/usr/bin/runsc`).
pub fn runsc_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("runsc")).find(|p| p.is_file())
}

/// `true` if runsc is installed. Otherwise the test cannot run: a failure
/// under CI, locally a SKIP line (as [`crate::require_root`]).
pub fn require_runsc() -> bool {
    runsc_path().is_some() || crate::skip("needs runsc (Debian package `runsc`; `cargo xtask setup` installs it)")
}

/// Runs `args` in a gVisor sandbox on `pod`'s network namespace, all runsc
/// processes starting in `cgroup` (a cgroup v2 dir the caller made, the "pod
/// cgroup"). Blocks until the command exits; after `timeout` the sandbox is
/// killed and this fails. See [`Sandbox`] for options.
pub fn run(bench: &Bench, pod: &str, cgroup: &Path, args: &[&str], timeout: Duration) -> Result<GvisorRun> {
    Sandbox::new(bench, pod, cgroup).timeout(timeout).run(args)
}

/// One sandbox configuration; [`run`](Self::run) may be called repeatedly.
#[derive(Debug, Clone)]
pub struct Sandbox<'b> {
    bench: &'b Bench,
    pod: String,
    cgroup: PathBuf,
    timeout: Duration,
    net_raw: bool,
}

impl<'b> Sandbox<'b> {
    /// Defaults: 30 s timeout, no raw sockets.
    pub fn new(bench: &'b Bench, pod: &str, cgroup: &Path) -> Self {
        Self { bench, pod: pod.to_owned(), cgroup: cgroup.to_owned(), timeout: Duration::from_secs(30), net_raw: false }
    }
    /// How long the whole run may take before the sandbox is killed.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }
    /// Raw sockets: `CAP_NET_RAW` in every capability set and `--net-raw`
    /// (runsc disables them otherwise, whatever the capabilities say).
    pub fn net_raw(mut self, on: bool) -> Self {
        self.net_raw = on;
        self
    }

    /// Runs `args` in a fresh sandbox (0.2-0.5 s here for a short command),
    /// cleaning up whatever happens; see [`run`].
    pub fn run(&self, args: &[&str]) -> Result<GvisorRun> {
        ensure!(!args.is_empty(), "no command to run in the sandbox");
        let runsc = runsc_path().context("runsc not found in PATH: install Debian's `runsc` package (`cargo xtask setup`)")?;
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let id = format!("pc{}g{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let dir = self.bench.workdir().join(format!("gvisor-{id}"));
        let ns = self.bench.pod_ns_name(&self.pod);
        let mut ctr = Container { runsc, dir, id, net: Some(IfSnapshot::take(ns, POD_IF)?) };
        let bundle = ctr.dir.join("bundle");
        std::fs::create_dir_all(&bundle).with_context(|| format!("create {}", bundle.display()))?;
        self.write_spec(&ctr.runsc, &bundle, args)?;

        let mut cmd = Command::new("sh");
        // Every runsc process (run, sandbox, gofer) starts in the pod cgroup,
        // in a private mount namespace that hides the pod's net/core sysctls.
        cmd.args(["-c", IN_CGROUP]).arg(&self.cgroup).args(["unshare", "--mount", "--propagation", "private"]);
        cmd.args(["sh", "-c", HIDE_NET_CORE]).arg(self.bench.pod_netns_path(&self.pod)).arg(&ctr.runsc);
        cmd.arg(format!("--root={}", ctr.dir.join("state").display()));
        cmd.args(["--network=sandbox", "--platform=ptrace", "--overlay2=root:memory"]);
        // runsc's own messages, kept out of the container's stdio.
        cmd.arg(format!("--log={}", ctr.dir.join("runsc.log").display()));
        cmd.arg(format!("--panic-log={}", ctr.dir.join("runsc-panic.log").display()));
        if self.net_raw {
            cmd.arg("--net-raw");
        }
        cmd.args(["run", "--bundle", &bundle.to_string_lossy(), &ctr.id]);

        let (stdout, stderr) = (ctr.dir.join("stdout"), ctr.dir.join("stderr"));
        let started = Instant::now();
        let status = step(cmd, &stdout, &stderr, started + self.timeout).with_context(|| ctr.diagnostics("runsc run"))?;
        let elapsed = started.elapsed();
        let code = status.code().with_context(|| ctr.diagnostics("runsc run was killed"))?;
        // runsc creates its log at once: without it, the cgroup move, the
        // unshare or the tmpfs mount before it failed (on stderr).
        let log = ctr.dir.join("runsc.log");
        ensure!(log.exists(), "{}", ctr.diagnostics(&format!("runsc did not start (exit {code})")));
        // runsc exits with the command's code (128+N for signal N), or 128
        // when it failed itself, which it then logs.
        if code == 128 && read(&log).contains(r#""level":"error""#) {
            bail!("{}", ctr.diagnostics("runsc run failed"));
        }
        let run = GvisorRun { code, stdout: read(&stdout), stderr: read(&stderr), elapsed };
        ctr.close()?;
        Ok(run)
    }

    /// `runsc spec`, edited (see the module doc).
    fn write_spec(&self, runsc: &Path, bundle: &Path, args: &[&str]) -> Result<()> {
        let out = Command::new(runsc).arg("spec").current_dir(bundle).output().context("run `runsc spec`")?;
        ensure!(out.status.success(), "runsc spec: {}", String::from_utf8_lossy(&out.stderr).trim());
        let path = bundle.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let mut spec: Value = serde_json::from_str(&text).context("parse runsc's config.json")?;
        spec["root"] = json!({"path": "/", "readonly": true});
        let process = &mut spec["process"];
        process["args"] = json!(args);
        process["terminal"] = json!(false);
        process["env"] = json!([PATH_ENV]);
        process["cwd"] = json!("/");
        if self.net_raw {
            let caps = process["capabilities"].as_object_mut().context("spec has no process.capabilities")?;
            for set in caps.values_mut() {
                set.as_array_mut().context("capability set is not a list")?.push(json!("CAP_NET_RAW"));
            }
        }
        let resolv = self.bench.resolv_conf_dir(&self.pod).join("resolv.conf");
        ensure!(resolv.is_file(), "the bench wrote no {}", resolv.display());
        let mounts = spec["mounts"].as_array_mut().context("spec has no mounts")?;
        mounts.push(json!({"destination": "/etc/resolv.conf", "type": "bind", "source": resolv, "options": ["rbind", "ro"]}));
        let linux = spec["linux"].as_object_mut().context("spec has no linux section")?;
        linux.remove("cgroupsPath");
        let namespaces = linux.get_mut("namespaces").and_then(Value::as_array_mut).context("spec has no namespaces")?;
        let net = namespaces.iter_mut().find(|n| n["type"] == "network").context("spec has no network namespace")?;
        net["path"] = json!(self.bench.pod_netns_path(&self.pod));
        std::fs::write(&path, serde_json::to_vec_pretty(&spec)?).with_context(|| format!("write {}", path.display()))
    }
}

/// Runs `cmd` (stdout, stderr to files) to completion, or stops it at
/// `deadline` and fails.
fn step(mut cmd: Command, stdout: &Path, stderr: &Path, deadline: Instant) -> Result<ExitStatus> {
    let file = |p: &Path| std::fs::File::create(p).with_context(|| format!("create {}", p.display()));
    cmd.stdin(Stdio::null()).stdout(file(stdout)?).stderr(file(stderr)?);
    let shown = format!("{cmd:?}");
    let mut child = ChildGuard::spawn(cmd).with_context(|| format!("spawn {shown}"))?;
    loop {
        if let Some(status) = child.try_wait().context("wait for runsc")? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            // SIGTERM first: runsc forwards it to the command.
            child.stop();
            bail!("{shown} timed out");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// One container's state dir, bundle and outputs, and the pod network to
/// give back. Dropping it (e.g. on a panic or timeout) cleans up.
struct Container {
    runsc: PathBuf,
    dir: PathBuf,
    id: String,
    net: Option<IfSnapshot>,
}

impl Container {
    /// What went wrong so far: the container's output and runsc's log.
    fn diagnostics(&self, what: &str) -> String {
        let tail = |name: &str| {
            let text = read(&self.dir.join(name));
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!(
            "{what} (container {}); stdout:\n{}\nstderr:\n{}\nrunsc log (tail):\n{}\n{}",
            self.id,
            tail("stdout"),
            tail("stderr"),
            tail("runsc.log"),
            tail("runsc-panic.log")
        )
    }

    /// Deletes the container if runsc knows it (killing its sandbox), gives
    /// the pod its addresses back and removes the files. Idempotent.
    fn close(&mut self) -> Result<()> {
        let state = self.dir.join("state");
        let known = std::fs::read_dir(&state).is_ok_and(|mut entries| entries.next().is_some());
        let mut result = Ok(());
        if known {
            let mut delete = Command::new(&self.runsc);
            delete.arg(format!("--root={}", state.display())).args(["delete", "--force", &self.id]);
            let deadline = Instant::now() + DELETE_LIMIT;
            let (out, err) = (self.dir.join("delete.out"), self.dir.join("delete.err"));
            result = match step(delete, &out, &err, deadline) {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(anyhow!("{status}: {}", read(&err).trim())),
                Err(e) => Err(e),
            }
            .with_context(|| format!("delete gVisor container {}", self.id));
        }
        if let Some(net) = self.net.take() {
            result = result.and(net.restore().context("give the pod its addresses back"));
        }
        if result.is_ok() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        result
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Never panic here: this may run while unwinding.
        if let Err(e) = self.close() {
            eprintln!("gvisor cleanup: {e:#}");
        }
    }
}

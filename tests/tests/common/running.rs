//! `portcullis exec` in the background, for a workload that is not its
//! command's child: a gVisor sandbox or a Kata-shaped guest on a pod whose
//! veth the agent judges (`--veth-pod`, `--veth-only`), while the command
//! is a placeholder (`sleep`, as a pod's pause container).

use super::agree::{self, Agreement};
use super::{Exec, Log, Outcome, Ran, fresh_path, read, shell_code, time_scale};
use portcullis_tests::{Bench, ChildGuard};
use std::fs::File;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Between SIGTERM and SIGKILL at stop: the agent forwards SIGTERM to the
/// command, then detaches its programs and removes its cgroup.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The agent's stderr line once every veth of the pod carries the veth
/// programs and their maps are filled (`exec::attach_veths`, info level).
pub const VETH_ATTACHED: &str = "veth programs attached";

/// A running agent; stopped on drop (SIGTERM to its PID, which it forwards
/// to its command, then exits), also when a test panics.
pub struct Running {
    child: ChildGuard,
    log: PathBuf,
    /// Its `--state-dir` (the explain socket).
    pub state: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl Exec<'_> {
    /// Starts `portcullis exec ... -- CMD...` and returns at once; see
    /// [`Running::wait_for`] for when it enforces.
    pub fn spawn(&self, cmd: &[&str]) -> Running {
        let work = self.bench.workdir();
        let log = fresh_path(work, "blocked.jsonl");
        let (stdout, stderr) = (fresh_path(work, "stdout"), fresh_path(work, "stderr"));
        let state = fresh_path(work, "state");
        let mut c = self.command(&log, Some(&state), cmd);
        // The readiness line is an info message of the exec module; the
        // rest stays at the agent's default (or the debugging level asked for).
        let base = std::env::var("PORTCULLIS_TEST_AGENT_LOG").unwrap_or_else(|_| "warn".into());
        c.env("PORTCULLIS_LOG_LEVEL", format!("{base},portcullis::exec=info"));
        c.stdin(Stdio::null()).stdout(File::create(&stdout).unwrap()).stderr(File::create(&stderr).unwrap());
        let child = ChildGuard::spawn(c).expect("spawn portcullis exec").with_grace(STOP_GRACE);
        Running { child, log, state, stdout, stderr, started: Instant::now() }
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Waits until the agent's stderr has a line containing `what` (e.g.
    /// [`VETH_ATTACHED`]). Panics, showing its output, if the agent exits
    /// first or `limit` passes.
    pub fn wait_for(&mut self, what: &str, limit: Duration) -> &mut Self {
        let deadline = Instant::now() + limit * time_scale();
        loop {
            if read(&self.stderr).lines().any(|l| l.contains(what)) {
                return self;
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "the agent exited ({st}) before {what:?}; stdout:\n{}\nstderr:\n{}",
                    read(&self.stdout),
                    read(&self.stderr)
                );
            }
            assert!(Instant::now() < deadline, "no {what:?} from the agent after {limit:?}; stderr:\n{}", read(&self.stderr));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks this agent's `explain` about every verdict it logged and every
    /// arrival at a bench host from `pod` after `from`, as `Exec::steps`
    /// does after each step; panics on a disagreement.
    pub fn agree(&self, bench: &Bench, pod: &str, from: agree::Mark) -> Agreement {
        let pods = format!("{},{}", bench.pod_v4(pod), bench.pod_v6(pod));
        agree::ask_all(bench, &self.state, &self.log, from, &pods)
    }

    /// Where [`Running::agree`] starts.
    pub fn mark(&self, bench: &Bench) -> agree::Mark {
        agree::mark(bench, &self.log)
    }

    /// The blocked-connection log so far.
    pub fn log(&self) -> Log {
        Log::read(&self.log)
    }

    /// Ends the agent: SIGTERM (forwarded to the command, which exits, and
    /// the agent with it), SIGKILL after a grace period. Its outputs and log.
    pub fn stop(mut self) -> Outcome {
        let pid = self.child.pid();
        let status = self.child.stop().expect("the agent's exit status");
        let ran = Ran {
            pid,
            code: shell_code(status),
            stdout: read(&self.stdout),
            stderr: read(&self.stderr),
            elapsed: self.started.elapsed(),
        };
        Outcome { log: Log::read(&self.log), ran }
    }
}

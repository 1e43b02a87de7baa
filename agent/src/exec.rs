//! `portcullis exec`: a fresh cgroup, the programs attached to it, the
//! command run inside it, its exit status passed through, and everything
//! removed on every exit path (normal exit, error, Ctrl-C, SIGTERM).

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::{CommandExt as _, ExitStatusExt as _}},
    process::Command,
    sync::{Arc, atomic::{AtomicI32, Ordering}},
    thread,
};

use anyhow::{Context as _, Result};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

use crate::{
    cgroup::{OwnedCgroup, cgroup2_mount},
    check::load_policy,
    cli::ExecArgs,
    gate::GateOptions,
    runtime::{Agent, AgentOptions},
    state::{Caps, Identity, TtlBounds},
};

/// Signals forwarded to the command instead of killing the agent.
const FORWARDED: [Signal; 4] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT];

fn forwarded_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set
}

/// `portcullis exec`'s cgroup: this, then its PID, under the v2 root. A run
/// killed by SIGKILL cannot remove it; the next run does (`sweep_stale`).
const EXEC_CGROUP_PREFIX: &str = "portcullis-exec-";

/// Exit status of `portcullis exec` when the agent itself fails.
pub const EXIT_AGENT_FAILED: i32 = 125;

pub fn run(args: &ExecArgs) -> Result<i32> {
    let policy = load_policy(args.policy.policy.as_deref(), &args.policy)?;
    // Block the forwarded signals before any thread exists, so every thread
    // inherits the mask and only our sigwait thread ever sees them.
    forwarded_set().thread_block().context("blocking signals")?;
    let log = crate::events::open_log(args.log.as_deref())?;
    let mount = cgroup2_mount()?;
    let pid = std::process::id();
    for left in crate::cgroup::sweep_stale(&mount, EXEC_CGROUP_PREFIX) {
        tracing::warn!(cgroup = %left.path.display(), pids = ?left.procs,
            "a killed portcullis exec left processes here, no longer enforced");
    }
    let cgroup = OwnedCgroup::create(&mount, &format!("{EXEC_CGROUP_PREFIX}{pid}"))?;
    let mut agent = Agent::start(AgentOptions {
        ttl: TtlBounds { min: args.min_ttl, max: args.max_ttl.max(args.min_ttl) },
        caps: Caps { ips_per_name: args.max_ips_per_name, names_per_endpoint: args.max_names, ..Caps::default() },
        log,
        unmanaged_allow: false,
        events_per_sec: 50,
        events_burst: 200,
        gate: GateOptions { deny_rcode: args.dns_deny_rcode, dns_gates: true },
        pins: None,
        one_attach_point: true,
        state_dir: None,
        metrics_addr: None,
    })?;
    agent.go(None)?;
    let name = args.name.clone().unwrap_or_else(|| format!("exec-{pid}"));
    let result = (|| -> Result<i32> {
        let id = agent.add_endpoint(Identity { name, ..Default::default() }, cgroup.id(), policy, args.audit)?;
        // The command starts in our network namespace.
        agent.open_dns_gates(id, &[std::process::id()]);
        agent.attach(cgroup.path(), cgroup.id())?;
        spawn_and_wait(args, &cgroup)
    })();
    for (what, n) in agent.losses().into_iter().chain(agent.dns_findings()) {
        eprintln!("portcullis: {n} {what}");
    }
    agent.shutdown();
    cgroup.remove()?;
    result
}

fn spawn_and_wait(args: &ExecArgs, cgroup: &OwnedCgroup) -> Result<i32> {
    let procs_path = cgroup.path().join("cgroup.procs");
    let procs = File::options().write(true).open(&procs_path)
        .with_context(|| format!("opening {}", procs_path.display()))?;
    let procs_fd = procs.as_raw_fd();
    let (program, rest) = args.command.split_first().context("no command given")?;
    let mut cmd = Command::new(program);
    cmd.args(rest);
    // SAFETY: only async-signal-safe calls between fork and exec: write(2)
    // to join the cgroup (before the command opens any socket: a socket
    // keeps the cgroup it was created in), sigprocmask to undo our mask.
    unsafe {
        cmd.pre_exec(move || {
            let zero = b"0";
            if libc::write(procs_fd, zero.as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            // If the agent dies (even SIGKILL), its links go and the command
            // would run on unenforced: take the command down with it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&raw mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        // Like a shell: 127 not found, 126 found but not executable.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("portcullis: {program}: command not found");
            return Ok(127);
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("portcullis: {program}: {e}");
            return Ok(126);
        }
        Err(e) => return Err(e).with_context(|| format!("starting {program}")),
    };
    drop(procs);
    let child_pid = Arc::new(AtomicI32::new(child.id() as i32));
    {
        let child_pid = child_pid.clone();
        thread::Builder::new().name("signals".into()).spawn(move || {
            let set = forwarded_set();
            while let Ok(sig) = set.wait() {
                let pid = child_pid.load(Ordering::Relaxed);
                if pid > 0 {
                    let _ = kill(Pid::from_raw(pid), sig);
                }
            }
        })?;
    }
    let status = child.wait().context("waiting for the command")?;
    child_pid.store(0, Ordering::Relaxed);
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

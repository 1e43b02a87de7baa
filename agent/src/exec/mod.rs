//! `portcullis exec`: a fresh cgroup, the programs attached to it, the
//! command run inside it (`sandbox`: its own cgroup namespace, the network
//! namespace asked for, without the capabilities that leave enforcement),
//! its exit status passed through, and everything removed on every exit
//! path (normal exit, error, Ctrl-C, SIGTERM): first what the command left
//! running, then, with the cgroup, the programs. A killed agent leaves
//! the programs attached to the cgroup (fail closed, `datapath::attach`).

mod sandbox;

use std::{
    fs::File,
    os::{
        fd::AsRawFd as _,
        unix::process::{CommandExt as _, ExitStatusExt as _},
    },
    process::{Child, Command},
    sync::{
        Arc,
        atomic::{AtomicI32, Ordering},
    },
    thread,
};

use anyhow::{Context as _, Result};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

use crate::{
    agent::{Agent, AgentOptions},
    cgroup::{OwnedCgroup, cgroup2_mount},
    check::load_policy,
    cli::ExecArgs,
    dnsgate::GateOptions,
    enforcer::{Caps, Identity, TtlBounds},
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
    let log = crate::blocked::exec_log(args.log.as_deref())?;
    let mount = cgroup2_mount()?;
    let pid = std::process::id();
    for left in crate::cgroup::sweep_stale(&mount, EXEC_CGROUP_PREFIX) {
        tracing::warn!(cgroup = %left.path.display(), pids = ?left.procs,
            "a killed portcullis exec left processes here: still enforced (its programs stay attached to the cgroup), \
             but nothing answers their DNS; end them to free the cgroup");
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
        attachment: crate::datapath::loader::Attachment::UntilCgroupRemoved,
        state_dir: None,
        explain_dir: args.state_dir.clone(),
        metrics_addr: None,
        metrics_pod_grace: crate::telemetry::grace::DEFAULT_GRACE,
        node_netns: match &args.veth_netns {
            Some(p) => Some(File::open(p).with_context(|| format!("opening {}", p.display()))?.into()),
            None => None,
        },
        clickhouse: None,
    })?;
    agent.go(None)?;
    let name = args.name.clone().unwrap_or_else(|| format!("exec-{pid}"));
    let result = (|| -> Result<i32> {
        let id = agent.add_endpoint(
            Identity { name, ..Default::default() },
            cgroup.id(),
            policy,
            crate::enforcer::Mode::from_audit(args.audit),
        )?;
        if args.netns.is_none() {
            // The command starts in our network namespace.
            agent.open_dns_gates(id, &[std::process::id()]);
        }
        if !args.veth_only {
            agent.attach(cgroup.path(), cgroup.id())?;
        }
        if let Some(node) = &args.veth_netns {
            let pod = args.veth_pod.as_ref().or(args.netns.as_ref()).context("--veth-netns needs --veth-pod or --netns")?;
            attach_veths(&mut agent, id, pod, node, args.veth_only)?;
        }
        let (mut child, child_pid) = match spawn(args, &cgroup)? {
            Spawned::Running(c, pid) => (c, pid),
            Spawned::Failed(code) => return Ok(code),
        };
        if args.netns.is_some() {
            // Its namespace, now that a process of it exists (a query sent
            // before the gates open is caught and answered: `dns-caught`).
            agent.open_dns_gates(id, &[child.id()]);
        }
        let status = child.wait().context("waiting for the command")?;
        child_pid.store(0, Ordering::Relaxed);
        Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    })();
    for (what, n) in agent.losses().into_iter().chain(agent.dns_findings()) {
        eprintln!("portcullis: {n} {what}");
    }
    // Enforcement stays until the cgroup is empty: what the command left
    // running is killed first, then the cgroup goes, and with it the
    // programs attached to it (kernel/bpf/cgroup.c `cgroup_bpf_release`).
    // If it cannot be emptied, the programs stay: fail closed.
    let removed = cgroup.remove();
    agent.shutdown();
    removed?;
    result
}

/// The veth programs on every veth of `netns` whose other end is in
/// `node`, before the command starts.
/// `veth_only`: no cgroup hooks see the command's traffic, so the veth
/// programs count its flows.
fn attach_veths(agent: &mut Agent, id: u32, netns: &std::path::Path, node: &std::path::Path, veth_only: bool) -> Result<()> {
    let open = |p: &std::path::Path| File::open(p).with_context(|| format!("opening {}", p.display()));
    let links = crate::veth::pod_links(open(netns)?, open(node)?)?;
    anyhow::ensure!(!links.is_empty(), "no veth leads from {} to {}", netns.display(), node.display());
    for l in links {
        agent.attach_veth(id, l.host_ifindex, &l.pod_addrs, veth_only)?;
        tracing::info!(pod_if = %l.pod_ifname, host_if = %l.host_ifname, host_ifindex = l.host_ifindex,
            mode = agent.veth_mode().unwrap_or("-"), addrs = ?l.pod_addrs, "veth programs attached");
    }
    Ok(())
}

enum Spawned {
    /// The command and the PID the signal thread forwards to (0 once reaped).
    Running(Child, Arc<AtomicI32>),
    /// Not started: the shell's exit status for why.
    Failed(i32),
}

fn spawn(args: &ExecArgs, cgroup: &OwnedCgroup) -> Result<Spawned> {
    let procs_path = cgroup.path().join("cgroup.procs");
    let procs = File::options().write(true).open(&procs_path).with_context(|| format!("opening {}", procs_path.display()))?;
    let sandbox = sandbox::Sandbox::new(procs.as_raw_fd(), args.netns.as_deref(), args.user.as_deref(), args.keep_caps)?;
    let (program, rest) = args.command.split_first().context("no command given")?;
    let mut cmd = Command::new(program);
    cmd.args(rest);
    // SAFETY: `Sandbox::apply` makes only system calls between fork and
    // exec (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || sandbox.apply());
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        // Like a shell: 127 not found, 126 found but not executable.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("portcullis: {program}: command not found");
            return Ok(Spawned::Failed(127));
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("portcullis: {program}: {e}");
            return Ok(Spawned::Failed(126));
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
    Ok(Spawned::Running(child, child_pid))
}

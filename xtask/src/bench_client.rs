//! One configuration's load client for `cargo xtask bench`, alive for the
//! whole run in its pod (see `bench` for the configurations), and the CPUs
//! the clients and servers are pinned to.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{ChildStdin, ChildStdout, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use portcullis_tests::{Bench, ChildGuard};
use serde_json::Value;

use crate::{
    bench::Config,
    bench_env::{ProgStats, cpu_ns, prog_delta, prog_snapshot},
    bench_load::RunAgent,
    floor::Floor,
};

/// One configuration's load client, alive for the whole run: it prelearns
/// once, then runs one workload per request (`load client --sync`).
pub struct Client {
    pub cfg: Config,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
    guard: ChildGuard,
    /// portcullis and uncounted: the agent's CPU time and the wall time of
    /// its slices, per workload.
    pub cpu: BTreeMap<String, (u64, u64)>,
}

impl Client {
    pub fn start(
        bench: &Bench,
        cfg: Config,
        portcullis: &PathBuf,
        policy: &PathBuf,
        floor: &Floor,
        run: &RunAgent,
    ) -> Result<Self> {
        let xtask = std::env::current_exe()?;
        let load = ["load", "client", "--mode", "crr", "--target", "-", "--prelearn", "1000", "--sync"];
        let pin = pinning().map(|(client, _)| client.to_string());
        let mut cmd = match cfg {
            Config::Portcullis | Config::Uncounted | Config::Veth | Config::Backstop => {
                let mut c = Command::new(portcullis);
                if cfg == Config::Uncounted {
                    c.arg("--no-flow-counters");
                }
                c.arg("exec").arg("--policy").arg(policy).arg("--netns").arg(bench.pod_netns_path(cfg.pod()));
                if matches!(cfg, Config::Veth | Config::Backstop) {
                    c.arg("--veth-netns").arg(bench.node_netns_path());
                }
                if cfg == Config::Veth {
                    c.arg("--veth-only");
                }
                c.arg("--").arg(&xtask);
                c
            }
            Config::Floor => {
                // Into the floor's cgroup first: `ip netns exec` remounts /sys.
                let mut c = Command::new("sh");
                c.args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""]).arg(floor.dir());
                c.args(["ip", "netns", "exec", bench.pod_ns_name(cfg.pod())]).arg(&xtask);
                c
            }
            Config::RunMode => run.cmd(bench, &xtask),
            Config::Baseline | Config::Nftables => bench.cmd_in_pod(cfg.pod(), &xtask.to_string_lossy()),
        };
        cmd.args(load)
            .args(pin.iter().flat_map(|c| ["--cpu", c]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut guard = ChildGuard::spawn(cmd).context("starting a load client")?;
        let child = guard.child_mut();
        let (stdin, stdout) = (child.stdin.take().context("no stdin")?, child.stdout.take().context("no stdout")?);
        let mut c = Self { cfg, stdin: Some(stdin), out: BufReader::new(stdout), guard, cpu: BTreeMap::new() };
        c.expect("prelearned")?;
        Ok(c)
    }

    fn expect(&mut self, want: &str) -> Result<String> {
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        if want.is_empty() || line.trim() == want {
            return Ok(line);
        }
        bail!("{:?} load client: expected {want:?}, got {line:?}", self.cfg)
    }

    /// One timed workload of `secs`. For portcullis and uncounted, also the
    /// agent's CPU time during it (the agent is the process started, the
    /// client its child) and, if `progs`, the programs' own cost (read with
    /// bpftool, so only in the statistics slices).
    pub fn run(&mut self, mode: &str, target: &str, secs: f64, progs: bool) -> Result<(Value, Option<ProgStats>)> {
        let agent = matches!(self.cfg, Config::Portcullis | Config::Uncounted).then(|| self.guard.pid());
        let snapshot = progs.then(prog_snapshot);
        let before = agent.map(|pid| (pid, cpu_ns(pid), Instant::now()));
        let stdin = self.stdin.as_mut().context("client closed")?;
        writeln!(stdin, "go {mode} {target} {secs}")?;
        stdin.flush()?;
        let result = self.expect("")?;
        self.expect("done")?;
        if let Some((pid, cpu, t)) = before {
            let e = self.cpu.entry(format!("{mode} {target}")).or_default();
            e.0 += cpu_ns(pid).saturating_sub(cpu);
            e.1 += t.elapsed().as_nanos() as u64;
        }
        let stats = snapshot.map(|s| prog_delta(&s, &prog_snapshot()));
        let last = result.trim();
        Ok((serde_json::from_str(last).with_context(|| format!("client output {last}"))?, stats))
    }

    /// Ends the client (end of input) and, for portcullis, the agent.
    pub fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = self.guard.child_mut().wait()?;
        if !status.success() {
            bail!("{:?} load client failed: {status}", self.cfg);
        }
        Ok(())
    }
}

/// CPUs for the load client and server: the first two this process may
/// use, so each run has them on different cores (none on a 1-CPU machine).
pub fn pinning() -> Option<(usize, usize)> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) == 0).then_some(set)?
    };
    // SAFETY: CPU_ISSET reads within the set.
    let mut cpus = (0..libc::CPU_SETSIZE as usize).filter(|c| unsafe { libc::CPU_ISSET(*c, &set) });
    Some((cpus.next()?, cpus.next()?))
}

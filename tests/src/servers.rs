//! The "internet" hosts: `servers/hostd.py` run inside the inet namespace,
//! and (opt-in) the misbehaving resolver `servers/baddns.py`.

use crate::addr;
use crate::guard::ChildGuard;
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The script is compiled in and written to the bench's work dir, so a test
/// binary does not depend on where the source tree is at run time.
pub const HOSTD_PY: &str = include_str!("../servers/hostd.py");
pub const BADDNS_PY: &str = include_str!("../servers/baddns.py");

/// How long hostd may take to bind its sockets.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The Python 3 interpreter: `$PORTCULLIS_PYTHON`, else Debian's
/// `/usr/bin/python3`, else `python3` from `PATH`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_PYTHON") {
        return p.into();
    }
    let debian = Path::new("/usr/bin/python3");
    if debian.exists() { debian.into() } else { "python3".into() }
}

/// Starts hostd in `inet_ns` and returns once it printed `READY` (all
/// sockets bound). Its stderr log goes to `log`.
pub fn spawn_hostd(inet_ns: &str, workdir: &Path, log: &Path) -> Result<ChildGuard> {
    spawn_hostd_with(inet_ns, workdir, log, false)
}

/// [`spawn_hostd`], optionally with the TCP echo service on
/// [`addr::TCP_ECHO_PORT`] (off by default).
pub fn spawn_hostd_with(inet_ns: &str, workdir: &Path, log: &Path, tcp_echo: bool) -> Result<ChildGuard> {
    let script = workdir.join("hostd.py");
    std::fs::write(&script, HOSTD_PY)?;
    let tcp = addr::TCP_PORTS.map(|p| p.to_string()).join(",");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", inet_ns])
        .arg(python())
        .arg("-u")
        .arg(&script)
        .arg(format!("--tcp={tcp}"))
        .arg(format!("--udp={}", addr::UDP_ECHO_PORT));
    if tcp_echo {
        cmd.arg(format!("--tcp-echo={}", addr::TCP_ECHO_PORT));
    }
    spawn_until_ready(cmd, log, "hostd.py")
}

/// Starts `servers/baddns.py` in `inet_ns` on [`addr::BAD_DNS_V4`]:53; it
/// reads its mode from `mode_file` before every query.
pub fn spawn_baddns(
    inet_ns: &str,
    workdir: &Path,
    log: &Path,
    mode_file: &Path,
    ttl: u32,
    port: u16,
    v6: bool,
) -> Result<ChildGuard> {
    let script = workdir.join("baddns.py");
    std::fs::write(&script, BADDNS_PY)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", inet_ns])
        .arg(python())
        .arg("-u")
        .arg(&script)
        .arg(if v6 {
            format!("--addr={},{}", addr::BAD_DNS_V4, addr::BAD_DNS_V6)
        } else {
            format!("--addr={}", addr::BAD_DNS_V4)
        })
        .arg(format!("--port={port}"))
        .arg(format!("--ttl={ttl}"))
        .arg("--mode-file")
        .arg(mode_file);
    spawn_until_ready(cmd, log, "baddns.py")
}

/// Spawns a server script (stderr to `log`) and waits for `READY` on stdout.
pub fn spawn_until_ready(mut cmd: Command, log: &Path, what: &str) -> Result<ChildGuard> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(std::fs::File::create(log)?);
    let mut guard = ChildGuard::spawn(cmd).with_context(|| format!("spawn {what}"))?.with_grace(Duration::ZERO);

    // Read stdout on a helper thread so the wait can time out; the thread then
    // keeps draining stdout until hostd exits so the pipe never fills.
    let stdout = guard.child_mut().stdout.take().context("server stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.by_ref().map_while(Result::ok).any(|l| l.trim() == "READY");
        let _ = tx.send(ready);
        lines.for_each(drop);
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(true) => Ok(guard),
        Ok(false) | Err(_) => {
            let status = guard.stop();
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{what} did not become ready (exit: {status:?}); log:\n{log_text}")
        }
    }
}

//! The Kubernetes agent's time to enforce: from a pod's cgroup appearing
//! (kubelet's mkdir, after the API server told the node about the pod) to
//! its policy being in force, measured where it matters: a process moved
//! into the new cgroup (started beforehand in a cgroup outside the pod
//! parent, so its start-up is not counted) tries to connect to what its
//! policy allows, every 0.2 ms, and reports the CLOCK_MONOTONIC time of
//! its first success (before that, the cgroup is unknown below the pod
//! parent: denied).
//! `portcullis agent` runs against the in-tree fake API server
//! (`portcullis_tests::fakeapi`) on the bench.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portcullis_tests::{Bench, ChildGuard, fakeapi::FakeApi, servers::python};
use serde_json::json;

const PROBE: &str = r#"
import socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect((ip, port))
        print(repr(time.monotonic()), flush=True)
        break
    except OSError:
        time.sleep(0.0002)
    finally:
        s.close()
"#;

/// CLOCK_MONOTONIC now, in seconds (Python's `time.monotonic`).
fn monotonic() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// A test cgroup tree shaped like kubelet's (systemd driver), removed on drop.
struct Tree(PathBuf);

impl Drop for Tree {
    fn drop(&mut self) {
        fn rm(d: &Path) {
            let _ = std::fs::write(d.join("cgroup.kill"), "1");
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rm(&e.path());
                }
            }
            for _ in 0..500 {
                if std::fs::remove_dir(d).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        rm(&self.0);
    }
}

/// The agent's pin directory, removed on drop (its links detach).
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Milliseconds from mkdir to the first allowed connect, per pod.
pub fn time_to_enforce(bench: &Bench, pod_ns: &str, portcullis: &Path, cgroup2: &Path, pods: usize) -> Result<Vec<f64>> {
    let api = FakeApi::start().context("fake API server")?;
    let tree = Tree(cgroup2.join(format!("pc-bench-k8s-{}", std::process::id())));
    let kubepods = tree.0.join("kubepods.slice");
    std::fs::create_dir_all(kubepods.join("kubepods-besteffort.slice"))?;
    let state = bench.workdir().join("k8s-state");
    // The agent always pins (removed with the tree's guard below).
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/pc-bench-k8s-{}", std::process::id())));
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let stderr = std::fs::File::create(bench.workdir().join("k8s-agent.stderr"))?;
    let mut agent = ChildGuard::spawn({
        let mut c = Command::new(portcullis);
        c.args([
            "agent",
            "--node-name",
            "bench",
            "--pod-uid",
            "00000000-0000-4000-8000-00000000b00c",
            "--api-server",
            &api.url(),
        ])
        .arg("--pin-path")
        .arg(&pins.0)
        .arg("--kubepods")
        .arg(&kubepods)
        .arg("--state-dir")
        .arg(&state)
        .args(["--metrics-addr", &metrics.to_string()])
        .stdout(Stdio::null())
        .stderr(stderr);
        c
    })?;
    api.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ws-bench"}}))?;
    api.apply(&json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "EgressPolicy",
        "metadata": {"name": "api", "namespace": "ws-bench"},
        "spec": {"podSelector": {}, "egress": [{"toCIDRs": ["203.0.113.10/32"], "ports": [{"port": 443}]}],
            "dns": {"servers": ["198.51.100.53"]}}}))?;
    let started = Instant::now();
    while !ready(metrics) {
        if started.elapsed() > Duration::from_secs(20) || agent.try_wait()?.is_some() {
            bail!("portcullis agent did not become ready (see {})", bench.workdir().join("k8s-agent.stderr").display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let probe = bench.workdir().join("k8s-probe.py");
    std::fs::write(&probe, PROBE)?;
    let staging = tree.0.join("staging");
    std::fs::create_dir_all(&staging)?;
    let mut out = Vec::with_capacity(pods);
    for i in 0..pods {
        let stored = api.apply(&json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"), "namespace": "ws-bench"},
            "spec": {"nodeName": "bench", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "qosClass": "BestEffort"}}))?;
        let uid = stored["metadata"]["uid"].as_str().context("uid")?.replace('-', "_");
        let pod = kubepods.join(format!("kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice"));
        let container = pod.join(format!("cri-containerd-{i:064}.scope"));
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec ip netns exec {pod_ns} {} {} 203.0.113.10 443",
                staging.display(),
                python().display(),
                probe.display()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = ChildGuard::spawn(c)?;
        let mut stdin = child.child_mut().stdin.take().context("probe stdin")?;
        let mut stdout = BufReader::new(child.child_mut().stdout.take().context("probe stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        // The API event is out; kubelet creates the cgroup a moment later
        // and the runtime starts the container in it.
        std::thread::sleep(Duration::from_millis(5));
        let t0 = monotonic();
        std::fs::create_dir_all(&container)?;
        std::fs::write(container.join("cgroup.procs"), child.pid().to_string())?;
        std::io::Write::write_all(&mut stdin, b"go\n")?;
        line.clear();
        stdout.read_line(&mut line)?;
        let t1: f64 = line.trim().parse().with_context(|| format!("pod {i}: the probe never got through ({line:?})"))?;
        out.push((t1 - t0) * 1000.0);
    }
    drop(agent);
    drop(tree);
    drop(pins);
    Ok(out)
}

fn ready(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = write!(s, "GET /readyz HTTP/1.0\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    // HTTP/1.0 or 1.1: the server answers in the request's version.
    text.split_whitespace().nth(1) == Some("200")
}

/// The report line: median, p90 and worst of `ms`.
pub fn summary(ms: &[f64]) -> String {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!("{} pods: median {:.1} ms, p90 {:.1} ms, worst {:.1} ms", v.len(), at(0.5), at(0.9), at(1.0))
}

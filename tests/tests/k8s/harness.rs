//! A node as kubelet lays it out, for the Kubernetes agent's end-to-end
//! tests: cgroups named exactly as kubelet names them (systemd or cgroupfs
//! driver) under a test root, pod objects in the fake API server, workloads
//! (`reload.py`) in the pods' container cgroups and the bench's pod
//! namespace, and `portcullis agent` pointed at all of it.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{ChildStdin, ChildStdout, Stdio},
    time::Duration,
};

use portcullis_tests::{Bench, ChildGuard, fakeapi::FakeApi, servers::python};
use serde_json::{Value, json};

use crate::common::{
    TestCgroup,
    pins::{NodeAgent, PinDir, in_cgroup_cmd_of},
    wait_for,
};

pub const NODE: &str = "node-a";
/// The agent's own pod (`--pod-uid`, the downward API's `metadata.uid`).
pub const OWN_POD_UID: &str = "0f1e2d3c-0000-4000-8000-00000000a9e7";
const RELOAD_PY: &str = include_str!("../../clients/reload.py");

/// A container runtime, for its cgroup names.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
}

/// Kubelet's pod parent and its QoS levels.
pub struct Kubelet {
    /// Removed (with every pod below) when the test ends.
    _root: TestCgroup,
    pub kubepods: PathBuf,
    pub systemd: bool,
}

impl Kubelet {
    pub fn new(tag: &str, systemd: bool) -> Self {
        let root = TestCgroup::create(tag);
        let kubepods = root.path.join(if systemd { "kubepods.slice" } else { "kubepods" });
        for level in if systemd { ["kubepods-burstable.slice", "kubepods-besteffort.slice"] } else { ["burstable", "besteffort"] }
        {
            std::fs::create_dir_all(kubepods.join(level)).unwrap();
        }
        Self { _root: root, kubepods, systemd }
    }

    /// Creates the pod's cgroup and one container cgroup (containerd's
    /// name for it), as kubelet and the runtime do; returns the container's.
    pub fn create_pod(&self, uid: &str, qos: &str) -> PathBuf {
        self.create_pod_of(uid, qos, Runtime::Containerd)
    }

    /// The same, with `runtime`'s container cgroup names (CRI-O also puts
    /// its monitor, conmon, in a scope of its own next to the container's).
    pub fn create_pod_of(&self, uid: &str, qos: &str, runtime: Runtime) -> PathBuf {
        let id = format!("{:0>64}", uid.replace('-', ""));
        let (pod, container) = match (self.systemd, qos) {
            (true, "Guaranteed") => (self.kubepods.join(format!("kubepods-pod{}.slice", uid.replace('-', "_"))), None),
            (true, q) => {
                let l = q.to_ascii_lowercase();
                (self.kubepods.join(format!("kubepods-{l}.slice/kubepods-{l}-pod{}.slice", uid.replace('-', "_"))), None)
            }
            (false, "Guaranteed") => (self.kubepods.join(format!("pod{uid}")), Some(id.clone())),
            (false, q) => (self.kubepods.join(q.to_ascii_lowercase()).join(format!("pod{uid}")), Some(id.clone())),
        };
        let name = match (runtime, container, self.systemd) {
            (Runtime::Containerd, Some(id), _) => id,
            (Runtime::Containerd, None, _) => format!("cri-containerd-{id}.scope"),
            (Runtime::CriO, _, true) => format!("crio-{id}.scope"),
            (Runtime::CriO, _, false) => format!("crio-{id}"),
        };
        if runtime == Runtime::CriO {
            let conmon = if self.systemd { format!("crio-conmon-{id}.scope") } else { format!("crio-conmon-{id}") };
            std::fs::create_dir_all(pod.join(conmon)).unwrap();
        }
        let container = pod.join(name);
        std::fs::create_dir_all(&container).unwrap();
        container
    }
}

/// Creates a pod object (the API server gives it its UID) and returns
/// the UID.
pub fn create_pod(api: &FakeApi, ns: &str, name: &str, labels: Value) -> String {
    let stored = api.apply(&pod(ns, name, labels)).unwrap();
    stored["metadata"]["uid"].as_str().unwrap().to_owned()
}

pub fn pod(ns: &str, name: &str, labels: Value) -> Value {
    pod_qos(ns, name, labels, "BestEffort")
}

pub fn pod_qos(ns: &str, name: &str, labels: Value, qos: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": NODE, "containers": [{"name": "agent", "image": "agent:1",
            "securityContext": {"capabilities": {"drop": ["ALL"]}}}]},
        "status": {"phase": "Running", "qosClass": qos}})
}

pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// Applies every object of the YAML files of `dir` (the repository's
/// `deploy/examples/...`), as `kubectl apply -f dir` would.
pub fn apply_dir(api: &FakeApi, dir: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") || name == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        for obj in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
            api.apply(&obj).unwrap_or_else(|err| panic!("{name}: {err}"));
            n += 1;
        }
    }
    n
}

/// An EgressPolicy allowing `names` on 443 to the pods `selector` selects.
pub fn policy(ns: &str, name: &str, selector: Value, names: &[&str]) -> Value {
    let fqdns: Vec<Value> = names.iter().map(|n| json!({"matchName": n})).collect();
    json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "EgressPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": selector, "egress": [{"toFQDNs": fqdns, "ports": [{"port": 443}]}]}})
}

/// The agent under test.
pub fn start_agent(bench: &Bench, api: &FakeApi, kubelet: &Kubelet, pins: &PinDir, metrics: std::net::SocketAddr) -> NodeAgent {
    start_agent_with(bench, api, kubelet, pins, metrics, &[])
}

/// The agent under test, with more flags.
pub fn start_agent_with(
    bench: &Bench,
    api: &FakeApi,
    kubelet: &Kubelet,
    pins: &PinDir,
    metrics: std::net::SocketAddr,
    extra: &[&str],
) -> NodeAgent {
    start_agent_env(bench, api, kubelet, pins, metrics, extra, &[])
}

/// `start_agent_with`, with environment variables for the agent.
pub fn start_agent_env(
    bench: &Bench,
    api: &FakeApi,
    kubelet: &Kubelet,
    pins: &PinDir,
    metrics: std::net::SocketAddr,
    extra: &[&str],
    env: &[(&str, &str)],
) -> NodeAgent {
    let state = bench.workdir().join("state");
    let log = bench.workdir().join("blocked.jsonl");
    let kubepods = kubelet.kubepods.display().to_string();
    let (url, metrics) = (api.url(), metrics.to_string());
    // Never the machine's own kubelet config, if it has one.
    let kubelet_config = bench.workdir().join("kubelet-config.yaml");
    let ready = bench.workdir().join("ready");
    // The pods' veths live in the bench's node namespace, not ours.
    let node_ns = bench.node_netns_path().display().to_string();
    let mut args = vec![
        "agent",
        "--node-netns",
        &node_ns,
        "--pod-uid",
        OWN_POD_UID,
        "--node-name",
        NODE,
        "--api-server",
        &url,
        "--kubepods",
        &kubepods,
        "--pin-path",
        pins.0.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--metrics-addr",
        &metrics,
        "--log",
        log.to_str().unwrap(),
        "--kubelet-config",
        kubelet_config.to_str().unwrap(),
        "--ready-file",
        ready.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    NodeAgent::spawn_args_env(bench, &args, env)
}

pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A `reload.py` process in a container cgroup and the bench pod.
pub struct Workload {
    _child: ChildGuard,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub name: String,
    /// The agent's state dir and the pod's namespace: `reach` and
    /// `connect` ask explain about each verdict (`explained_by`).
    pub explained: Option<(PathBuf, String)>,
}

impl Workload {
    pub fn start(bench: &Bench, container: &Path, name: &str) -> Self {
        let script = crate::common::write_file(bench.workdir(), "reload.py", RELOAD_PY);
        // Each pod in a network namespace (and veth) of its own, as on a
        // node: the bench pod of the same name, if the bench has one.
        let netns = if bench.pod_names().contains(&name) { name } else { "pod" };
        let mut c = in_cgroup_cmd_of(bench, container, netns, &format!("{} -u {}", python().display(), script.display()));
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = ChildGuard::spawn(c).unwrap();
        let stdin = child.child_mut().stdin.take().unwrap();
        let stdout = BufReader::new(child.child_mut().stdout.take().unwrap());
        let mut w = Self { _child: child, stdin, stdout, name: name.to_owned(), explained: None };
        assert_eq!(w.ask_raw(None), json!({"ready": true}));
        w
    }

    fn ask_raw(&mut self, cmd: Option<&str>) -> Value {
        if let Some(cmd) = cmd {
            writeln!(self.stdin, "{cmd}").unwrap();
        }
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: {e}: {line:?}", self.name))
    }

    pub fn ask(&mut self, cmd: &str) -> Value {
        self.ask_raw(Some(cmd))
    }

    /// From now on, each `reach` and `connect` (not the `eventually`
    /// polls: a policy may change between a poll's connect and the
    /// question) asks the agent with state dir `state` about its verdict,
    /// as pod `namespace`/`self.name`: explain must agree.
    pub fn explained_by(mut self, state: &Path, namespace: &str) -> Self {
        self.explained = Some((state.to_owned(), namespace.to_owned()));
        self
    }

    fn check(&self, ip: &str, port: u16, connected: bool) {
        if let Some((state, namespace)) = &self.explained {
            let who = crate::common::agree::Who::Pod { namespace, pod: &self.name };
            // A pod the agent has not classified is denied (fail closed).
            crate::common::agree::expect_same(state, &who, false, ip, port, connected);
        }
    }

    /// Resolves `name` and connects to what it resolved to on `port`.
    pub fn reach(&mut self, name: &str, port: u16) -> Result<(), String> {
        let r = self.reach_unchecked(name, port);
        if let Some((ip, ok)) = &r {
            self.check(ip, port, *ok);
        }
        match r {
            Some((_, true)) => Ok(()),
            Some((ip, false)) => Err(format!("connect {ip}:{port} refused")),
            None => Err(format!("resolve {name} failed")),
        }
    }

    /// `Some((ip, connected))`, or `None` if `name` did not resolve.
    fn reach_unchecked(&mut self, name: &str, port: u16) -> Option<(String, bool)> {
        let r = self.ask(&format!("resolve {name}"));
        let ip = r["ips"].get(0).and_then(Value::as_str).map(str::to_owned)?;
        let c = self.ask(&format!("connect {ip} {port}"));
        Some((ip, c["ok"] == true))
    }

    /// Connects to an address directly.
    pub fn connect(&mut self, ip: &str, port: u16) -> Result<(), String> {
        let r = self.connect_unchecked(ip, port);
        self.check(ip, port, r.is_ok());
        r
    }

    fn connect_unchecked(&mut self, ip: &str, port: u16) -> Result<(), String> {
        let c = self.ask(&format!("connect {ip} {port}"));
        if c["ok"] == true { Ok(()) } else { Err(c.to_string()) }
    }

    /// An HTTP GET to an address directly: the body (hostd names the
    /// address and port that answered).
    pub fn get(&mut self, ip: &str, port: u16) -> Result<String, String> {
        let c = self.ask(&format!("get {ip} {port}"));
        match c["body"].as_str() {
            Some(body) if c["ok"] == true => Ok(body.to_owned()),
            _ => Err(c.to_string()),
        }
    }

    /// A datagram from an unconnected socket to an address (hostd's UDP
    /// echo), and its echo back.
    pub fn udp(&mut self, ip: &str, port: u16) -> Result<(), String> {
        let c = self.ask(&format!("udp {ip} {port}"));
        if c["ok"] == true { Ok(()) } else { Err(c.to_string()) }
    }

    /// Waits until `reach` gives `want` (the agent applies API changes
    /// asynchronously).
    pub fn eventually(&mut self, name: &str, port: u16, want: bool) {
        let who = self.name.clone();
        wait_for(&format!("{who}: {name}:{port} reachable={want}"), Duration::from_secs(10), || {
            (self.reach_unchecked(name, port).is_some_and(|(_, ok)| ok) == want).then_some(())
        });
    }

    pub fn eventually_ip(&mut self, ip: &str, port: u16, want: bool) {
        let who = self.name.clone();
        wait_for(&format!("{who}: {ip}:{port} reachable={want}"), Duration::from_secs(10), || {
            (self.connect_unchecked(ip, port).is_ok() == want).then_some(())
        });
    }
}

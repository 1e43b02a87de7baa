//! `portcullis run` with a live config: a reload (a ConfigMap-style symlink
//! swap, or SIGHUP) applies only the difference while workloads keep
//! running in their cgroups; an invalid config changes nothing; a removed
//! endpoint leaves nothing behind; a restarted agent whose config is late
//! detaches nothing.

mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{ChildStdin, ChildStdout, Stdio},
    time::Duration,
};

use common::{
    TestCgroup, attached, fresh_path,
    pins::{NodeAgent, PinDir, endpoints, entries_of, hex_bytes, in_cgroup_cmd, learned_of},
    wait_for,
};
use portcullis_tests::{Bench, ChildGuard, require_root, servers::python};
use serde_json::{Value, json};

const RELOAD_PY: &str = include_str!("../clients/reload.py");
const API: &str = "203.0.113.10";
const OTHER: &str = "203.0.113.20";

/// A `reload.py` process in a cgroup and the bench pod, answering commands.
struct Workload {
    _child: ChildGuard,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    name: &'static str,
    /// The agent's state dir: each connect's verdict is asked of its
    /// explain (`common::agree::expect_same`); `None` while no agent runs.
    state: Option<PathBuf>,
}

impl Workload {
    fn start(bench: &Bench, state: &Path, cg: &Path, name: &'static str) -> Self {
        let script = common::write_file(bench.workdir(), "reload.py", RELOAD_PY);
        let mut c = in_cgroup_cmd(bench, cg, &format!("{} -u {}", python().display(), script.display()));
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = ChildGuard::spawn(c).unwrap();
        let stdin = child.child_mut().stdin.take().unwrap();
        let stdout = BufReader::new(child.child_mut().stdout.take().unwrap());
        let mut w = Self { _child: child, stdin, stdout, name, state: Some(state.to_owned()) };
        assert_eq!(w.read(), json!({"ready": true}));
        w
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: {e}: {line:?}", self.name))
    }

    fn ask(&mut self, cmd: &str) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.read()
    }

    fn ok(&mut self, cmd: &str) {
        let r = self.ask(cmd);
        assert_eq!(r["ok"], true, "{}: {cmd}: {r}", self.name);
        self.explained(cmd, true);
    }

    /// `connect` is refused at once by the connect hook.
    fn eperm(&mut self, cmd: &str) {
        let r = self.ask(cmd);
        assert_eq!(r["errno"], "EPERM", "{}: {cmd}: {r}", self.name);
        self.explained(cmd, false);
    }

    /// `connect IP PORT` or `hold IP PORT`: explain agrees.
    fn explained(&self, cmd: &str, connected: bool) {
        if let (Some(state), ["connect" | "hold", ip, port]) = (&self.state, &cmd.split(' ').collect::<Vec<_>>()[..]) {
            let who = common::agree::Who::Endpoint(self.name);
            common::agree::expect_same(state, &who, true, ip, port.parse().unwrap(), connected);
        }
    }

    fn resolves(&mut self, name: &str, ip: &str) {
        let r = self.ask(&format!("resolve {name}"));
        assert_eq!(r["ips"], json!([ip]), "{}: {name}: {r}", self.name);
    }

    fn does_not_resolve(&mut self, name: &str) {
        let r = self.ask(&format!("resolve {name}"));
        assert_eq!(r["ok"], false, "{}: {name} resolved: {r}", self.name);
    }
}

/// One endpoint of a config: name, cgroup, and its egress rules (YAML).
type Ep<'a> = (&'a str, &'a Path, &'a str);

fn config(log: &Path, metrics: std::net::SocketAddr, eps: &[Ep<'_>]) -> String {
    let mut s = format!("log: {}\nmetricsAddr: {metrics}\nendpoints:\n", log.display());
    for (name, cg, egress) in eps {
        s.push_str(&format!(
            "  - name: {name}\n    cgroup: {}\n    policy:\n      egress:\n{egress}      dns:\n        servers: [\"198.51.100.53\"]\n",
            cg.display()
        ));
    }
    s
}

fn rule(name: &str, ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("{{port: {p}}}")).collect();
    format!("        - toFQDNs: [{{matchName: {name}}}]\n          ports: [{}]\n", ports.join(", "))
}

/// A Kubernetes ConfigMap volume: `node.yaml` -> `..data/node.yaml`,
/// `..data` -> `..data_N`; an update writes `..data_N+1` and swaps the
/// `..data` link atomically.
struct ConfigMap {
    dir: PathBuf,
    n: u32,
}

impl ConfigMap {
    fn new(dir: PathBuf, text: &str) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = Self { dir, n: 0 };
        m.update(text);
        std::os::unix::fs::symlink("..data/node.yaml", m.path()).unwrap();
        m
    }

    fn path(&self) -> PathBuf {
        self.dir.join("node.yaml")
    }

    fn update(&mut self, text: &str) {
        self.n += 1;
        let data = self.dir.join(format!("..data_{}", self.n));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("node.yaml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..data_{}", self.n), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

fn cgroup_id(cg: &Path) -> u64 {
    std::fs::metadata(cg).unwrap().ino()
}

/// Per CPU, the bytes of an attach point's own verdict cache (connect4).
fn solo_cache(pins: &PinDir, cg: &Path) -> Vec<Vec<u8>> {
    let pin = pins.0.join(format!("links/{}-SOLO_CACHE@1", cgroup_id(cg)));
    let dump = common::bpftool_json(&["map", "dump", "pinned", pin.to_str().unwrap()]);
    let entry = dump.as_array().unwrap().iter().find(|e| hex_bytes(&e["key"]) == [0, 0, 0, 0]).expect("key 0");
    entry["values"].as_array().unwrap().iter().map(|v| hex_bytes(&v["value"])).collect()
}

fn reloads(addr: std::net::SocketAddr, result: &str) -> String {
    let text = common::scrape(addr);
    let name = format!("portcullis_config_reloads_total{{result=\"{result}\"}}");
    common::series(&text, &name).unwrap_or_else(|| panic!("no {name}: {text}")).to_string()
}

#[test]
fn a_reload_applies_only_the_difference_and_a_removed_endpoint_leaves_nothing() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().tcp_echo(true).start().unwrap();
    let [same, narrow, widen, gone, new] = ["same", "narrow", "widen", "gone", "new"].map(TestCgroup::create);
    let pins = PinDir::new("reload");
    let state = bench.workdir().join("state");
    let log = fresh_path(bench.workdir(), "blocked.jsonl");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let api_echo = rule("api.example.test", &[443, 7]);
    let api = rule("api.example.test", &[443]);
    let other = rule("other.example.test", &[443]);
    let v1 = config(
        &log,
        metrics,
        &[
            ("same", &same.path, &api_echo),
            ("narrow", &narrow.path, &format!("{api_echo}{other}")),
            ("widen", &widen.path, &api),
            ("gone", &gone.path, &api),
        ],
    );
    let mut cm = ConfigMap::new(bench.workdir().join("configmap"), &v1);
    let mut agent = NodeAgent::start(&bench, &cm.path(), &pins, &state);
    let mut w = [(&same, "same"), (&narrow, "narrow"), (&widen, "widen"), (&gone, "gone"), (&new, "new")]
        .map(|(cg, name)| Workload::start(&bench, &state, &cg.path, name));
    let [ws, wn, ww, wg, wa] = w.each_mut();

    ws.resolves("api.example.test", API);
    ws.ok(&format!("hold {API} 7"));
    ws.ok("ping");
    for _ in 0..2 {
        ws.ok(&format!("connect {API} 443"));
    }
    wn.resolves("api.example.test", API);
    wn.resolves("other.example.test", OTHER);
    wn.ok(&format!("hold {API} 7"));
    // The second connect is answered from the verdict cache.
    for _ in 0..2 {
        wn.ok(&format!("connect {API} 443"));
    }
    ww.resolves("api.example.test", API);
    ww.ok(&format!("connect {API} 443"));
    ww.eperm(&format!("connect {API} 80"));
    ww.does_not_resolve("other.example.test");
    wg.resolves("api.example.test", API);
    wg.eperm(&format!("connect {OTHER} 443"));
    // Not an endpoint yet: nothing stops it.
    wa.ok(&format!("connect {OTHER} 443"));

    let eps = endpoints(&pins);
    let gone_id = eps[&cgroup_id(&gone.path)];
    let same_id = eps[&cgroup_id(&same.path)];
    assert_ne!(entries_of(&pins, gone_id)["LEARNED"], 0, "the endpoint to remove learned something");
    let gone_progs = attached(&gone.path).progs;
    let same_before = (attached(&same.path).progs, learned_of(&pins, same_id), solo_cache(&pins, &same.path));

    // One reload: same untouched, narrow loses api.example.test, widen
    // gains port 80 and other.example.test, gone goes, new comes.
    let v2 = config(
        &log,
        metrics,
        &[
            ("same", &same.path, &api_echo),
            ("narrow", &narrow.path, &other),
            ("widen", &widen.path, &format!("{}{other}", rule("api.example.test", &[443, 80]))),
            ("new", &new.path, &api),
        ],
    );
    cm.update(&v2);
    let done = agent.wait_message("config reloaded");
    assert_eq!([&done["added"], &done["changed"], &done["removed"], &done["untouched"]], [1, 2, 1, 1], "{done}");

    // Untouched: same programs, same learned keys, same cache; its
    // connection and its learned address work without a lookup.
    let same_after = (attached(&same.path).progs, learned_of(&pins, same_id), solo_cache(&pins, &same.path));
    assert_eq!(same_before, same_after, "an untouched endpoint saw a change");
    ws.ok("ping");
    ws.ok(&format!("connect {API} 443"));

    // Narrowed: the removed name's address is refused at the next connect,
    // the cached verdict included; what stays allowed needs no lookup; the
    // established connection keeps going (docs/ARCHITECTURE.md).
    wn.eperm(&format!("connect {API} 443"));
    wn.eperm(&format!("connect {API} 7"));
    wn.ok(&format!("connect {OTHER} 443"));
    wn.ok("ping");
    wn.does_not_resolve("api.example.test");

    // Widened: the new port works for the address learned before; the new
    // name from its next answer.
    ww.ok(&format!("connect {API} 80"));
    ww.resolves("other.example.test", OTHER);
    ww.ok(&format!("connect {OTHER} 443"));

    // Added: enforcing once the reload is logged.
    attached(&new.path).expect_all_hooks();
    wa.eperm(&format!("connect {OTHER} 443"));
    wa.resolves("api.example.test", API);
    wa.ok(&format!("connect {API} 443"));

    // Removed: no links, no pins, no map entries, no load of its own.
    assert!(attached(&gone.path).progs.is_empty(), "still attached to the removed endpoint's cgroup");
    assert_eq!(pins.links_of(cgroup_id(&gone.path)), Vec::<String>::new());
    assert!(entries_of(&pins, gone_id).values().all(|n| *n == 0), "{:?}", entries_of(&pins, gone_id));
    let own: Vec<u64> = gone_progs
        .iter()
        .filter(|(_, n, _)| ["pc_connect4", "pc_connect6", "pc_sendmsg4", "pc_sendmsg6"].contains(&n.as_str()))
        .map(|p| p.0)
        .collect();
    assert_eq!(own.len(), 4, "{gone_progs:?}");
    wait_for("the removed endpoint's own load to be freed", Duration::from_secs(5), || {
        let live = common::pc_prog_ids();
        own.iter().all(|id| !live.contains(id)).then_some(())
    });
    wg.ok(&format!("connect {OTHER} 443"));

    // Invalid configs change nothing and are counted.
    let missing = bench.workdir().join("no-such-cgroup");
    for (i, bad) in [
        v2.replace("endpoints:", "endpoints: [oops"),
        v2.replace("port: 80}", "port: 80, protocl: TCP}"),
        v2.replace(&new.path.display().to_string(), &missing.display().to_string()),
    ]
    .iter()
    .enumerate()
    {
        cm.update(bad);
        agent.wait_nth("config refused; enforcement unchanged", i + 1);
    }
    assert_eq!(reloads(metrics, "invalid"), "3");
    assert_eq!(reloads(metrics, "applied"), "1");
    wn.eperm(&format!("connect {API} 443"));
    ww.ok(&format!("connect {API} 80"));
    wa.eperm(&format!("connect {OTHER} 443"));
    ws.ok("ping");
    attached(&new.path).expect_all_hooks();

    // SIGHUP reloads the file as it is now: v2 again, nothing to change.
    cm.update(&v2);
    agent.signal(libc::SIGHUP);
    let again = agent.wait_message("config reloaded: no endpoint changed");
    assert_eq!(again["untouched"], 4, "{again}");
    agent.sigterm();
}

#[test]
fn a_restarted_agent_whose_config_is_late_detaches_nothing() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let cg = TestCgroup::create("late");
    let pins = PinDir::new("late");
    let state = bench.workdir().join("state");
    let log = fresh_path(bench.workdir(), "blocked.jsonl");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = config(&log, metrics, &[("late", &cg.path, &rule("api.example.test", &[443]))]);
    let cfg = common::write_file(bench.workdir(), "node.yaml", &text);
    let mut first = NodeAgent::start(&bench, &cfg, &pins, &state);
    let mut w = Workload::start(&bench, &state, &cg.path, "late");
    w.resolves("api.example.test", API);
    w.ok(&format!("connect {API} 443"));
    w.eperm(&format!("connect {OTHER} 443"));
    let links = pins.links_of(cgroup_id(&cg.path));
    assert!(!links.is_empty());

    // The agent dies; its successor starts before the config is there.
    first.sigkill();
    let later = cfg.with_extension("later");
    std::fs::rename(&cfg, &later).unwrap();
    let mut second = NodeAgent::spawn(&bench, &cfg, &pins, &state);
    second.wait_message("waiting for the config file");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pins.links_of(cgroup_id(&cg.path)), links, "links unpinned before the config came");
    // The pins enforce; no agent answers explain until its config came.
    let state_dir = w.state.take();
    w.eperm(&format!("connect {OTHER} 443"));
    w.ok(&format!("connect {API} 443"));
    w.state = state_dir;

    std::fs::rename(&later, &cfg).unwrap();
    second.wait_message("ready");
    w.eperm(&format!("connect {OTHER} 443"));
    w.resolves("api.example.test", API);
    w.ok(&format!("connect {API} 443"));
    second.sigterm();
}

//! A real Prometheus (Debian's `prometheus`) scrapes `portcullis run` on
//! the bench every second; after a known workload (allowed connections,
//! blocked ones of known reasons, refused DNS names) the values are read
//! back through Prometheus' query API. Every expression of the Grafana
//! dashboard and the alert rules runs there too: no error, and every metric
//! it names is in the scrape. And 10,000 distinct blocked destinations and
//! names add no series; a removed endpoint's series go after the grace.

mod common;

use common::{TestCgroup, agent_cmd, fresh_path, run_with_deadline, scrape, series, wait_for};
use portcullis_tests::{Bench, ChildGuard, require_root};
use serde_json::Value;
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

const POD: &str = r#"source_namespace="team-a",source_pod="pod-a""#;

fn config(log: &Path, cg: &Path, metrics: SocketAddr) -> String {
    format!(
        r#"log: {log}
metricsAddr: {metrics}
endpoints:
  - name: run-ep
    namespace: team-a
    pod: pod-a
    cgroup: {cg}
    policy:
      egress:
        - toFQDNs: [{{matchName: api.example.test}}]
          ports: [{{port: 443}}]
      dns:
        servers: ["198.51.100.53"]
"#,
        log = log.display(),
        cg = cg.display()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `ARGV` inside the bench pod, in cgroup `cg`.
fn in_cgroup(bench: &Bench, cg: &Path, argv: &str, deadline: Duration) -> common::Ran {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("echo $$ > {}/cgroup.procs && exec ip netns exec {} {argv}", cg.display(), bench.pod_ns_name("pod")));
    run_with_deadline(bench.workdir(), c, deadline)
}

/// `portcullis run` with metrics on a free loopback port, once it serves.
fn start_agent(bench: &Bench, cg: &Path, extra: &[&str], more_endpoints: &str) -> (ChildGuard, SocketAddr, PathBuf) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = fresh_path(bench.workdir(), "blocked.jsonl");
    let cfg = common::write_file(bench.workdir(), "node.yaml", &format!("{}{more_endpoints}", config(&log, cg, addr)));
    let stderr = fresh_path(bench.workdir(), "run.stderr");
    let mut c = agent_cmd();
    c.args(["run", "--config"])
        .arg(&cfg)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let mut agent = ChildGuard::spawn(c).unwrap();
    wait_for("the agent to serve /readyz", Duration::from_secs(15), || {
        if let Some(st) = agent.try_wait().unwrap() {
            panic!("run exited early ({st}): {}", std::fs::read_to_string(&stderr).unwrap());
        }
        (http_status(addr, "/readyz") == Some(200)).then_some(())
    });
    (agent, addr, cfg)
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A private Prometheus scraping `target` every second; killed (by PID)
/// and its data removed on drop.
struct Prometheus {
    _child: ChildGuard,
    addr: SocketAddr,
}

fn prometheus_bin() -> Option<PathBuf> {
    let found = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].into_iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "prometheus missing (apt package prometheus) with CI=true");
        eprintln!("skipping: no prometheus binary (apt-get install prometheus)");
    }
    found
}

impl Prometheus {
    fn start(bin: &Path, dir: &Path, target: SocketAddr) -> Self {
        let dir = dir.join("prometheus");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: portcullis\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut c = Command::new(bin);
        c.arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap());
        let child = ChildGuard::spawn(c).unwrap();
        let p = Self { _child: child, addr };
        wait_for("Prometheus to scrape the agent", Duration::from_secs(30), || {
            let v = p.query("up{job=\"portcullis\"}").ok()?;
            (v.first()?["value"][1] == "1").then_some(())
        });
        p
    }

    /// The result vector of an instant query, or Prometheus' error.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-G", "--data-urlencode"])
            .arg(format!("query={expr}"))
            .arg(format!("http://{}/api/v1/query", self.addr))
            .output()
            .map_err(|e| e.to_string())?;
        let v: Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))?;
        if v["status"] != "success" {
            return Err(format!("{expr}: {v}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The single value of `expr` (None: no series).
    fn value(&self, expr: &str) -> Option<f64> {
        let r = self.query(expr).unwrap();
        r.first().and_then(|s| s["value"][1].as_str()?.parse().ok())
    }

    /// Waits until `expr` has the value `want`.
    fn wait_value(&self, expr: &str, want: f64) {
        let mut last = None;
        let ok = (0..40).any(|_| {
            last = self.value(expr);
            if last == Some(want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(500));
            false
        });
        assert!(ok, "{expr}: want {want}, got {last:?}");
    }
}

/// The metric names an expression refers to.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("portcullis_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// Families only the Kubernetes agent has (checked against its source).
const K8S_ONLY: [&str; 2] = ["portcullis_k8s_synced", "portcullis_pod_enforcement_gaps"];

/// Every expression of the dashboard and the alert rules, with Grafana's
/// variables given values.
fn deploy_expressions() -> Vec<(String, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/grafana/portcullis.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push((format!("panel {:?}", p["title"]), t["expr"].as_str().unwrap().to_owned()));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        // label_values(METRIC{...}, label) is Grafana's: its metric part runs.
        if let Some(q) = v["query"]["query"].as_str().and_then(|q| q.strip_prefix("label_values(")) {
            let metric = q.rsplit_once(',').unwrap().0;
            out.push((format!("variable {:?}", v["name"]), metric.to_owned()));
        }
    }
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/portcullis-alerts.yaml")).unwrap();
    for l in rules.lines() {
        if let Some(e) = l.trim().strip_prefix("expr: ") {
            out.push(("alert".into(), e.to_owned()));
        }
    }
    assert!(out.len() > 20, "{out:?}");
    out.into_iter()
        .map(|(w, e)| {
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
                .replace("$source_namespace", ".*")
                .replace("$source_pod", ".*");
            (w, e)
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_agent_and_the_dashboard_and_alerts_query_real_series() {
    if !require_root() {
        return;
    }
    let Some(bin) = prometheus_bin() else { return };
    let bench = Bench::start().unwrap();
    let cg = TestCgroup::create("promscrape");
    let (_agent, addr, _) = start_agent(&bench, &cg.path, &[], "");
    assert_eq!(http_status(addr, "/healthz"), Some(200));
    assert_eq!(http_status(addr, "/nope"), Some(404));
    let prom = Prometheus::start(&bin, bench.workdir(), addr);
    // Born at 0, before any traffic.
    prom.wait_value(&format!(r#"sum(portcullis_dns_queries_total{{{POD},decision="refused"}})"#), 0.0);
    prom.wait_value(&format!(r#"count(portcullis_connections_total{{{POD}}})"#), 30.0);

    let curl = "curl -sS -o /dev/null --max-time 3";
    let t = Duration::from_secs(10);
    for _ in 0..3 {
        assert_eq!(in_cgroup(&bench, &cg.path, &format!("{curl} -4 http://api.example.test:443/"), t).code, 0);
    }
    for _ in 0..2 {
        assert_eq!(in_cgroup(&bench, &cg.path, &format!("{curl} http://169.254.169.254/"), t).code, 7);
        assert_eq!(in_cgroup(&bench, &cg.path, &format!("{curl} http://203.0.113.10:80/"), t).code, 7);
    }
    for name in ["a.denied.test", "b.denied.test", "c.denied.test"] {
        let r = in_cgroup(&bench, &cg.path, &format!("dig +short +time=2 +tries=1 -t A {name}"), t);
        assert_eq!(r.code, 0, "{r:?}");
    }

    prom.wait_value(&format!(r#"sum(portcullis_dns_queries_total{{{POD},decision="refused"}})"#), 3.0);
    prom.wait_value(&format!(r#"sum(portcullis_dns_queries_total{{{POD},decision="refused",rcode="NXDOMAIN"}})"#), 3.0);
    assert!(
        prom.value(&format!(r#"sum(portcullis_dns_queries_total{{{POD},decision="forwarded",rcode="NOERROR"}})"#)).unwrap()
            >= 1.0
    );
    assert!(prom.value(r#"portcullis_verdicts_total{hook="connect4",reason="allowed-fqdn"}"#).unwrap() >= 3.0);
    assert!(prom.value(r#"portcullis_verdicts_total{hook="connect4",reason="denied-range"}"#).unwrap() >= 2.0);
    assert!(prom.value(r#"portcullis_verdicts_total{hook="connect4",reason="denied-default"}"#).unwrap() >= 2.0);
    assert!(prom.value(&format!("portcullis_learned_entries{{{POD}}}")).unwrap() >= 1.0);
    assert_eq!(prom.value(r#"count(portcullis_build_info{version!=""})"#), Some(1.0));
    // The blocked log wrote the blocked attempts (folded or not).
    assert!(prom.value(r#"portcullis_blocked_log_total{what="records-written"}"#).unwrap() >= 2.0);
    assert_eq!(prom.value(r#"portcullis_endpoint_info{endpoint="run-ep",mode="enforce"}"#), Some(1.0));
    assert!(prom.value("histogram_quantile(0.5, sum by (le) (portcullis_dns_gate_answer_seconds_bucket))").unwrap() > 0.0);
    // Per-pod kernel counts (`FLOW_COUNTERS`): exact, by reason, range
    // and rule (the policy entry's text), and bytes.
    let conn = |reason: &str| format!(r#"portcullis_connections_total{{{POD},kind="connection",reason="{reason}"}}"#);
    prom.wait_value(&conn("denied-range"), 2.0);
    prom.wait_value(&conn("denied-default"), 2.0);
    prom.wait_value(&format!(r#"portcullis_denied_range_total{{{POD},range="metadata"}}"#), 2.0);
    assert!(prom.value(&conn("allowed-fqdn")).unwrap() >= 3.0);
    let by_rule =
        format!(r#"sum(portcullis_connections_by_rule_total{{{POD},rule=~"egress\\[0\\] toFQDNs api.example.test.*"}})"#);
    assert!(prom.value(&by_rule).unwrap() >= 3.0, "{by_rule}");
    // Bytes are counted on pods' veths (`veth_test_run`); `run` has none.
    assert_eq!(prom.value(&format!("portcullis_egress_bytes_total{{{POD}}}")), Some(0.0));

    // The dashboard's and the alerts' expressions: valid, over real series.
    let text = scrape(addr);
    let k8s_source = include_str!("../../agent/src/telemetry/k8s.rs");
    for (what, expr) in deploy_expressions() {
        prom.query(&expr).unwrap_or_else(|e| panic!("{what}: {e}"));
        for name in metric_names(&expr) {
            if K8S_ONLY.contains(&name.as_str()) {
                assert!(k8s_source.contains(&format!("\"{name}\"")), "{what}: {name} not in telemetry/k8s.rs");
                continue;
            }
            assert!(text.contains(&format!("\n{name}{{")) || text.contains(&format!("\n{name} ")), "{what}: {name} not scraped");
        }
    }
}

/// The agent's series (name and labels, not values).
fn series_set(addr: SocketAddr) -> BTreeSet<String> {
    scrape(addr).lines().filter(|l| l.starts_with("portcullis_")).map(|l| l.rsplit_once(' ').unwrap().0.to_owned()).collect()
}

const FLOOD_PY: &str = r#"
import socket, struct, sys, os
n = int(sys.argv[1])
# Blocked connections to n distinct destinations (192.0.2.0/24 x ports).
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(0.2)
    try:
        s.connect(("192.0.2.%d" % (i % 256), 1000 + i // 256))
    except OSError:
        pass
    s.close()
# Blocked datagrams to n distinct destinations.
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    try:
        u.sendto(b"x", ("192.0.2.%d" % (i % 256), 20000 + i // 256))
    except OSError:
        pass
# n distinct names the policy refuses, to the trusted resolver.
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d.settimeout(0.05)
for i in range(n):
    name = b"".join(bytes([len(l)]) + l for l in (b"n%d" % i, os.urandom(4).hex().encode(), b"flood", b"test")) + b"\0"
    d.sendto(struct.pack(">HHHHHH", i & 0xffff, 0x0100, 1, 0, 0, 0) + name + b"\0\1\0\1", ("198.51.100.53", 53))
    if i % 50 == 49:
        try:
            while True:
                d.recv(512)
        except OSError:
            pass
"#;

#[test]
fn ten_thousand_distinct_blocked_destinations_and_names_add_no_series() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let cg = TestCgroup::create("promcard");
    let (_agent, addr, _) = start_agent(&bench, &cg.path, &[], "");
    let before = series_set(addr);
    let refused_before = series(&scrape(addr), r#"portcullis_dns_answers_total{outcome="refused"}"#).unwrap();
    let script = common::write_file(bench.workdir(), "flood.py", FLOOD_PY);
    let r = in_cgroup(&bench, &cg.path, &format!("python3 {} 10000", script.display()), Duration::from_secs(240));
    assert_eq!(r.code, 0, "{r:?}");
    let text = scrape(addr);
    // The traffic reached the agent: blocked in the kernel, refused by the gate.
    let denied = series(&text, r#"portcullis_verdicts_total{hook="connect4",reason="denied-default"}"#).unwrap();
    assert!(denied >= 10_000.0, "{denied}");
    let refused = series(&text, r#"portcullis_dns_answers_total{outcome="refused"}"#).unwrap() - refused_before;
    assert!(refused >= 9_000.0, "only {refused} refused");
    let after = series_set(addr);
    let added: Vec<_> = after.difference(&before).collect();
    let gone: Vec<_> = before.difference(&after).collect();
    assert!(
        added.is_empty() && gone.is_empty(),
        "{} series before, {} after; added {added:?}, gone {gone:?}",
        before.len(),
        after.len()
    );
}

/// A removed endpoint's series keep their final values for the grace
/// period, then go.
#[test]
fn a_removed_pods_series_stay_for_the_grace_period_then_go() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let cg = TestCgroup::create("promgrace");
    let keep = TestCgroup::create("promgracekeep");
    let second = format!(
        "  - name: keep-ep\n    namespace: team-b\n    pod: pod-b\n    cgroup: {}\n    policy:\n      dns:\n        servers: [\"198.51.100.53\"]\n",
        keep.path.display()
    );
    let (agent, addr, cfg) = start_agent(&bench, &cg.path, &["--metrics-pod-grace", "4s"], &second);
    let t = Duration::from_secs(10);
    assert_eq!(in_cgroup(&bench, &cg.path, "dig +short +time=2 +tries=1 -t A gone.denied.test", t).code, 0);
    let refused = format!(r#"portcullis_dns_queries_total{{{POD},decision="refused",rcode="NXDOMAIN"}}"#);
    assert_eq!(series(&scrape(addr), &refused), Some(1.0));
    // The endpoint leaves the config; SIGHUP applies it.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{}endpoints:\n{second}", text.split("endpoints:").next().unwrap())).unwrap();
    // SAFETY: kill(2) on our own, not yet reaped child.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
    wait_for("the endpoint to go", Duration::from_secs(10), || {
        series(&scrape(addr), "portcullis_endpoints").filter(|n| *n == 1.0)
    });
    let now = scrape(addr);
    assert_eq!(series(&now, &refused), Some(1.0), "kept with its final value: {now}");
    assert!(!now.contains(&format!("portcullis_learned_entries{{{POD}}}")), "gauges go at once: {now}");
    wait_for("the grace period to end", Duration::from_secs(10), || (!scrape(addr).contains(POD)).then_some(()));
}

//! `portcullis run --config node.yaml`: node mode on a cgroup the test
//! created, with clients moved into that cgroup (and a child of it), until
//! SIGTERM; then exit 0 and nothing attached.

mod common;

use common::{Log, TestCgroup, agent_cmd, attached, fresh_path, run_with_deadline, s, scrape, series, wait_for};
use portcullis_tests::{Bench, ChildGuard, require_root};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn config(log: &Path, cg: &Path) -> String {
    format!(
        r#"log: {log}
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

/// `sh -c 'echo $$ > CG/cgroup.procs; exec ip netns exec POD-NS ARGV...'`.
fn in_cgroup(bench: &Bench, cg: &Path, argv: &str) -> common::Ran {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("echo $$ > {}/cgroup.procs && exec ip netns exec {} {argv}", cg.display(), bench.pod_ns_name("pod")));
    run_with_deadline(bench.workdir(), c, Duration::from_secs(10))
}

/// The agent's tracing lines (JSON) on stderr.
fn tracing_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Starts `portcullis run --config CFG` (tracing to a file) and waits for
/// its "ready" line.
fn start_run(bench: &Bench, cfg: &Path) -> (ChildGuard, std::path::PathBuf) {
    let stderr = fresh_path(bench.workdir(), "run.stderr");
    let mut c = agent_cmd();
    c.args(["run", "--config"])
        .arg(cfg)
        .env("PORTCULLIS_LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let mut agent = ChildGuard::spawn(c).unwrap();
    wait_for("portcullis run to log \"ready\"", Duration::from_secs(10), || {
        if let Some(st) = agent.try_wait().unwrap() {
            panic!("run exited early ({st}): {}", std::fs::read_to_string(&stderr).unwrap());
        }
        tracing_lines(&stderr).iter().any(|l| l["fields"]["message"] == "ready").then_some(())
    });
    (agent, stderr)
}

#[test]
fn run_mode_enforces_a_configured_cgroup_until_sigterm() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let cg = TestCgroup::create("run");
    let child_cg = cg.path.join("container");
    std::fs::create_dir(&child_cg).unwrap();
    let log = fresh_path(bench.workdir(), "blocked.jsonl");
    let cfg = common::write_file(bench.workdir(), "node.yaml", &config(&log, &cg.path));
    let (mut agent, stderr) = start_run(&bench, &cfg);
    let att = attached(&cg.path);
    att.expect_all_hooks();

    let curl = "curl -sS --max-time 3";
    for where_ in [&cg.path, &child_cg] {
        let ok = in_cgroup(&bench, where_, &format!("{curl} -4 http://api.example.test:443/"));
        assert_eq!((ok.code, ok.stdout.as_str()), (0, "hello from 203.0.113.10:443\n"), "{ok:?}");
        for url in ["-4 http://api.example.test:80/", "http://169.254.169.254/"] {
            let r = in_cgroup(&bench, where_, &format!("{curl} {url}"));
            assert_eq!(r.code, 7, "{url} from {}: {r:?}", where_.display());
        }
        // A name outside the policy: the gate answers NXDOMAIN.
        let r = in_cgroup(&bench, where_, &format!("{curl} -4 http://other.example.test:443/"));
        assert_eq!(r.code, 6, "other.example.test from {}: {r:?}", where_.display());
        let dig = in_cgroup(&bench, where_, "dig +short +time=1 +tries=1 @198.51.100.99 api.example.test");
        assert_eq!(dig.code, 9, "{dig:?}");
    }
    // Outside the configured cgroup nothing changes.
    let free = bench.cmd_in_pod("pod", "curl").args(["-sS", "--max-time", "3", "http://169.254.169.254/"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&free.stdout), "hello from 169.254.169.254:80\n");

    // SIGTERM: clean exit, nothing attached, the log flushed.
    // SAFETY: kill(2) on our own, not yet reaped child.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) }, 0);
    let status = wait_for("run to exit", Duration::from_secs(10), || agent.try_wait().unwrap());
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(&stderr).unwrap());
    att.expect_detached();
    assert!(cg.path.exists(), "run must not remove a cgroup it did not create");

    let log = Log::read(&log);
    log.expect_well_formed("run-ep");
    let who = [("endpoint", s("run-ep")), ("namespace", s("team-a")), ("pod", s("pod-a"))];
    // The refused lookup (one A query each time) names the host.
    let dns = log.records.iter().filter(|r| r["reason"] == "denied-dns-name").count();
    assert_eq!(dns, 2, "{}", log.raw);
    let mut want = who.to_vec();
    want.extend([("host", s("other.example.test")), ("hook", s("dns-gate")), ("protocol", s("dns"))]);
    log.expect("198.51.100.53", 53, &want);
    assert!(log.to("203.0.113.20", 443).is_empty(), "{}", log.raw);
    for (dst, port, reason) in [
        ("203.0.113.10", 80, "denied-default"),
        ("169.254.169.254", 80, "denied-range"),
        ("198.51.100.99", 53, "denied-dns-server"),
    ] {
        let mut want = who.to_vec();
        want.push(("reason", s(reason)));
        want.push(("verdict", s("blocked")));
        // Once from the endpoint cgroup, once from its child.
        let n = log.to(dst, port).iter().filter(|r| r["reason"] == reason).count();
        assert_eq!(n, 2, "{dst}:{port}: {}", log.raw);
        log.expect(dst, port, &want);
    }
}

#[test]
fn run_mode_rejects_a_bad_config_before_attaching() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let cg = TestCgroup::create("runbad");
    let log = fresh_path(bench.workdir(), "blocked.jsonl");
    let bad = config(&log, &cg.path).replace("port: 443", "port: 443, protocl: TCP");
    let cfg = common::write_file(bench.workdir(), "node.yaml", &bad);
    let mut c = agent_cmd();
    c.args(["run", "--config"]).arg(&cfg);
    let r = run_with_deadline(bench.workdir(), c, Duration::from_secs(10));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("protocl"), "{}", r.stderr);
    assert!(attached(&cg.path).progs.is_empty());
}

#[test]
fn run_mode_serves_per_endpoint_dns_counters_as_prometheus_metrics() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let cg = TestCgroup::create("runmetrics");
    let log = fresh_path(bench.workdir(), "blocked.jsonl");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let text = config(&log, &cg.path).replacen("endpoints:", &format!("metricsAddr: {addr}\nendpoints:"), 1);
    let cfg = common::write_file(bench.workdir(), "node.yaml", &text);
    let (mut agent, _stderr) = start_run(&bench, &cfg);
    let ep = r#"source_namespace="team-a",source_pod="pod-a""#;
    let refused_series = format!(r#"portcullis_dns_queries_total{{{ep},decision="refused",rcode="NXDOMAIN"}}"#);
    let before = scrape(addr);
    assert_eq!(series(&before, &refused_series), Some(0.0), "{before}");
    let info = format!(r#"portcullis_endpoint_info{{{ep},endpoint="run-ep",mode="enforce"}}"#);
    assert_eq!(series(&before, &info), Some(1.0), "{before}");

    let curl = "curl -sS --max-time 3";
    assert_eq!(in_cgroup(&bench, &cg.path, &format!("{curl} -4 http://api.example.test:443/")).code, 0);
    for name in ["other.example.test", "denied.example.test"] {
        let r = in_cgroup(&bench, &cg.path, &format!("dig +short +time=2 +tries=1 -t A {name}"));
        assert_eq!(r.code, 0, "{r:?}");
    }
    // A 50-character label: looks like data smuggled out in the name.
    let long = format!("{}.example.test", "x".repeat(50));
    in_cgroup(&bench, &cg.path, &format!("dig +short +time=2 +tries=1 -t A {long}"));
    assert_eq!(in_cgroup(&bench, &cg.path, &format!("{curl} http://169.254.169.254/")).code, 7);

    let after = scrape(addr);
    let refused = series(&after, &refused_series).unwrap();
    assert_eq!(refused, 3.0, "two refused names and the long one: {after}");
    let long_label = series(&after, &format!("portcullis_dns_suspicious_queries_total{{{ep},kind=\"long-label\"}}"));
    assert_eq!(long_label, Some(1.0), "{after}");
    assert!(series(&after, &format!("portcullis_learned_entries{{{ep}}}")).unwrap() >= 1.0, "{after}");
    assert!(series(&after, r#"portcullis_verdicts_total{hook="connect4",reason="allowed-fqdn"}"#).unwrap() >= 1.0, "{after}");
    assert!(series(&after, r#"portcullis_verdicts_total{hook="connect4",reason="denied-range"}"#).unwrap() >= 1.0, "{after}");
    assert_eq!(series(&after, "portcullis_endpoints"), Some(1.0));
    // SAFETY: kill(2) on our own, not yet reaped child.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) }, 0);
    let st = wait_for("run to exit", Duration::from_secs(10), || agent.try_wait().unwrap());
    assert_eq!(st.code(), Some(0));
}

/// A pod whose processes hold CAP_NET_RAW (packet sockets, which no cgroup
/// hook sees) is reported as not fully enforced: a warning and a gauge,
/// gone once no such process is left. A process without capabilities is
/// not reported.
#[test]
fn run_mode_reports_pods_holding_capabilities_the_hooks_cannot_contain() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let cg = TestCgroup::create("runcaps");
    let log = fresh_path(bench.workdir(), "blocked.jsonl");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let text = config(&log, &cg.path).replacen("endpoints:", &format!("metricsAddr: {addr}\nendpoints:"), 1);
    let cfg = common::write_file(bench.workdir(), "node.yaml", &text);
    let spawn_in_cgroup = |argv: &str| {
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!("echo $$ > {}/cgroup.procs && exec {argv}", cg.path.display()));
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        ChildGuard::spawn(c).unwrap()
    };
    // Without capabilities (another user): nothing to report.
    let quiet = spawn_in_cgroup("setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all sleep 60");
    let (mut agent, stderr) = start_run(&bench, &cfg);
    let ep = r#"source_namespace="team-a",source_pod="pod-a""#;
    let raw = format!("portcullis_endpoint_uncontained_processes{{{ep},capability=\"CAP_NET_RAW\"}}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(series(&scrape(addr), &raw), Some(0.0), "a process without capabilities was reported");
    // Root in the pod: CAP_NET_RAW and the rest.
    let mut loud = spawn_in_cgroup("sleep 60");
    let text = wait_for("the gauge", Duration::from_secs(15), || {
        let t = scrape(addr);
        (series(&t, &raw) == Some(1.0)).then_some(t)
    });
    assert_eq!(
        series(&text, &format!("portcullis_endpoint_uncontained_processes{{{ep},capability=\"CAP_NET_ADMIN\"}}")),
        Some(1.0)
    );
    let warned = tracing_lines(&stderr)
        .into_iter()
        .find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("not fully enforced")))
        .expect("a warning");
    assert_eq!(warned["level"], "WARN", "{warned}");
    assert!(warned["fields"]["capabilities"].as_str().unwrap().contains("CAP_NET_RAW (1 processes)"), "{warned}");
    loud.stop();
    wait_for("the gauge to go to 0", Duration::from_secs(15), || (series(&scrape(addr), &raw) == Some(0.0)).then_some(()));
    drop(quiet);
    // SAFETY: kill(2) on our own, not yet reaped child.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) }, 0);
    let st = wait_for("run to exit", Duration::from_secs(10), || agent.try_wait().unwrap());
    assert_eq!(st.code(), Some(0));
}

/// The kernel version as (major, minor), from uname.
fn kernel_version() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = r.trim().split(|c: char| !c.is_ascii_digit()).map(|n| n.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// At start the agent names each program variant it loaded and why: the
/// one this kernel supports (`bpf_get_netns_cookie` in `cgroup_skb` from
/// Linux 6.15), and the fallback when that feature is switched off, which
/// is logged as a warning, and which still enforces.
#[test]
fn run_mode_logs_the_program_variants_it_loaded() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let helper = kernel_version() >= (6, 15) && std::env::var("PORTCULLIS_DISABLE_KERNEL_FEATURES").is_err();
    for disabled in [false, true] {
        let cg = TestCgroup::create("runvariant");
        let log = fresh_path(bench.workdir(), "blocked.jsonl");
        let cfg = common::write_file(bench.workdir(), "node.yaml", &config(&log, &cg.path));
        let stderr = fresh_path(bench.workdir(), "run.stderr");
        let mut c = agent_cmd();
        c.args(["run", "--config"]).arg(&cfg).env("PORTCULLIS_LOG_LEVEL", "info");
        if disabled {
            c.env("PORTCULLIS_DISABLE_KERNEL_FEATURES", "skb-netns-cookie");
        }
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&stderr).unwrap());
        let mut agent = ChildGuard::spawn(c).unwrap();
        wait_for("ready", Duration::from_secs(10), || {
            tracing_lines(&stderr).iter().any(|l| l["fields"]["message"] == "ready").then_some(())
        });
        let lines = tracing_lines(&stderr);
        let variant = lines.iter().find(|l| l["fields"]["message"] == "program variant").expect("a variant line");
        let (want, level) =
            if helper && !disabled { ("skb-netns: helper", "INFO") } else { ("skb-netns: socket storage (degraded)", "WARN") };
        assert_eq!((variant["fields"]["variant"].as_str(), variant["level"].as_str()), (Some(want), Some(level)), "{variant}");
        assert!(variant["fields"]["why"].as_str().is_some_and(|w| !w.is_empty()), "{variant}");
        assert!(variant["fields"]["kernel"].as_str().is_some_and(|k| !k.is_empty()), "{variant}");
        // Either way it enforces: the metadata address is refused.
        let r = in_cgroup(&bench, &cg.path, "curl -sS --max-time 3 http://169.254.169.254/");
        assert_eq!(r.code, 7, "{r:?}");
        // SAFETY: kill(2) on our own, not yet reaped child.
        assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) }, 0);
        wait_for("run to exit", Duration::from_secs(10), || agent.try_wait().unwrap());
    }
}

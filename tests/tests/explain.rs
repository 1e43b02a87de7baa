//! `portcullis explain` against a running node agent (`run --pin-path`):
//! for every case, what the workload's real connection did and what explain
//! says (from the live maps, by the kernel's own decision function) agree;
//! the answer names the rule, the range or the refused name, and the
//! smallest change, never one for an always-denied range.

mod common;

use common::{
    TestCgroup, agent_cmd, fresh_path,
    pins::{NodeAgent, PinDir, in_cgroup_cmd},
    run_with_deadline,
};
use portcullis_tests::{Bench, require_root};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn config(log: &Path, cg: &Path) -> String {
    format!(
        r#"log: {log}
endpoints:
  - name: explained
    namespace: team-a
    pod: pod-a
    cgroup: {cg}
    policy:
      egress:
        - toFQDNs: [{{matchName: api.example.test}}]
          ports: [{{port: 443}}]
        - toCIDRs: ["198.51.100.0/24"]
          ports: [{{port: 8080}}]
      dns:
        servers: ["198.51.100.53"]
        allowNames: ["resolvable.example.test"]
"#,
        log = log.display(),
        cg = cg.display()
    )
}

/// `portcullis explain ... -o json`: (exit code, answer).
fn explain(state: &Path, target: &str) -> (i32, Value) {
    let out = agent_cmd()
        .args(["explain", "-n", "team-a", "--pod", "pod-a", "-o", "json", "--state-dir"])
        .arg(state)
        .arg(target)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("explain {target}: {e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn explain_agrees_with_the_datapath() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let cg = TestCgroup::create("explain");
    let pins = PinDir::new("explain");
    let state = bench.workdir().join("state");
    let log = fresh_path(bench.workdir(), "blocked.jsonl");
    let cfg = common::write_file(bench.workdir(), "node.yaml", &config(&log, &cg.path));
    let _agent = NodeAgent::start(&bench, &cfg, &pins, &state);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(state.join("agent.sock")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is root's only");

    // Before any lookup: the name is allowed, nothing learned yet.
    let (code, e) = explain(&state, "api.example.test:443");
    assert_eq!((code, e["verdict"].as_str()), (0, Some("allowed-after-lookup")), "{e}");
    assert!(e["addresses"].as_array().unwrap().is_empty(), "{e}");

    let curl = |url: &str| {
        let c = in_cgroup_cmd(&bench, &cg.path, &format!("curl -sS --max-time 3 {url}"));
        run_with_deadline(bench.workdir(), c, Duration::from_secs(10)).code
    };
    // (what the workload tries, what explain is asked, allowed?)
    let cases = [
        ("-4 http://api.example.test:443/", "api.example.test:443", true),
        ("-4 http://api.example.test:80/", "api.example.test:80", false),
        ("http://203.0.113.10:80/", "203.0.113.10:80", false),
        ("http://203.0.113.10:443/", "203.0.113.10:443", true),
        ("http://169.254.169.254/", "169.254.169.254:80", false),
        ("-4 http://other.example.test:443/", "other.example.test:443", false),
        ("http://198.51.100.80:8080/", "198.51.100.80:8080", true),
        ("http://198.51.100.80:9090/", "198.51.100.80:9090", false),
        ("http://10.1.2.3:80/", "10.1.2.3:80", false),
    ];
    for (url, target, allowed) in cases {
        let code = curl(url);
        // curl: 0 got an answer, 52 empty reply (connected); 7 refused
        // (EPERM at connect), 6 name refused, 28 timeout.
        let reached = code == 0 || code == 52 || code == 56;
        assert_eq!(reached, allowed, "curl {url}: exit {code}");
        let (exit, e) = explain(&state, target);
        let says = matches!(e["verdict"].as_str(), Some("allowed" | "allowed-after-lookup"));
        assert_eq!(says, allowed, "explain {target} disagrees with the datapath: {e:#}");
        assert_eq!(exit, if allowed { 0 } else { 1 }, "{e}");
    }

    let (_, e) = explain(&state, "api.example.test:443");
    let a = &e["addresses"][0];
    assert_eq!((a["ip"].as_str(), a["reason"].as_str()), (Some("203.0.113.10"), Some("allowed-fqdn")), "{e:#}");
    assert!(a["rule"].as_str().unwrap().contains("toFQDNs api.example.test"), "{e:#}");
    assert!(a["expires_in_s"].as_u64().unwrap() > 0, "{e:#}");

    let (_, e) = explain(&state, "169.254.169.254:80");
    assert_eq!(e["addresses"][0]["range"].as_str(), Some("metadata"), "{e:#}");
    assert!(e["change"].is_null() && e["why_no_change"].as_str().unwrap().contains("never suggested"), "{e:#}");

    let (_, e) = explain(&state, "10.1.2.3:80");
    assert_eq!(e["addresses"][0]["range"].as_str(), Some("private"), "{e:#}");
    assert!(e["change"].is_null(), "{e:#}");

    // An address this pod resolved: the change names the host, not the IP.
    let (_, e) = explain(&state, "203.0.113.10:80");
    assert_eq!(e["addresses"][0]["name"].as_str(), Some("api.example.test"), "{e:#}");
    assert!(e["change"].as_str().unwrap().contains("matchName: api.example.test"), "{e:#}");
    assert!(e["change"].as_str().unwrap().contains("port: 80"), "{e:#}");

    let (_, e) = explain(&state, "other.example.test:443");
    assert_eq!(e["dns"]["resolvable"], false, "{e:#}");
    assert!(e["change"].as_str().unwrap().contains("matchName: other.example.test"), "{e:#}");
    let (_, e) = explain(&state, "resolvable.example.test:443");
    assert_eq!((e["verdict"].as_str(), &e["dns"]["resolvable"]), (Some("blocked"), &Value::Bool(true)), "{e:#}");

    let (_, e) = explain(&state, "198.51.100.80:8080");
    assert!(e["addresses"][0]["rule"].as_str().unwrap().contains("toCIDRs 198.51.100.0/24"), "{e:#}");

    // The text a person reads.
    let out = agent_cmd()
        .args(["explain", "-n", "team-a", "--pod", "pod-a", "--state-dir"])
        .arg(&state)
        .arg("169.254.169.254:80")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("verdict: BLOCKED") && text.contains("metadata") && text.contains("no change suggested"), "{text}");

    // Bad questions get clear errors.
    for (args, want) in [
        (vec!["--pod", "nope", "api.example.test"], "no enforced endpoint"),
        (vec!["--pod", "pod-a", "host:99999"], "expected HOST"),
        (vec!["--pod", "pod-a", "bad host!"], "not a host name"),
    ] {
        let out = agent_cmd().arg("explain").args(&args).arg("--state-dir").arg(&state).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{args:?}: {err}");
    }
}

/// The cases of `enforce_ranges.rs` (always-denied ranges directly, through
/// allowed names, IPv4-mapped and NAT64; CIDR rules wider than and inside a
/// range), each tried for real, then asked of explain: the same verdict.
#[test]
fn explain_agrees_on_the_always_denied_ranges() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let names = TestCgroup::create("explain-names");
    let cidrs = TestCgroup::create("explain-cidrs");
    let pins = PinDir::new("explain-ranges");
    let state = bench.workdir().join("state");
    let log = fresh_path(bench.workdir(), "blocked.jsonl");
    let cfg = format!(
        r#"log: {log}
endpoints:
  - name: names
    namespace: team-a
    pod: by-name
    cgroup: {names}
    policy:
      egress:
        - toFQDNs:
            - matchName: meta.example.test
            - matchName: meta6.example.test
            - matchName: internal.example.test
            - matchName: api.example.test
          ports: [{{port: 80}}]
      dns:
        servers: ["198.51.100.53"]
  - name: cidrs
    namespace: team-a
    pod: by-cidr
    cgroup: {cidrs}
    policy:
      egress:
        - toCIDRs: ["0.0.0.0/0", "::/0"]
        - toCIDRs: ["10.96.0.10/32"]
          ports: [{{port: 80}}]
      dns:
        servers: ["198.51.100.53"]
"#,
        log = log.display(),
        names = names.path.display(),
        cidrs = cidrs.path.display()
    );
    let cfg = common::write_file(bench.workdir(), "node.yaml", &cfg);
    let _agent = NodeAgent::start(&bench, &cfg, &pins, &state);
    let py_connect = |ip: &str, port: u16| {
        format!(
            "python3 -c \"import socket,sys; s=socket.socket(socket.AF_INET6); s.settimeout(3); \
             sys.exit(0 if s.connect_ex(('{ip}', {port})) == 0 else 7)\""
        )
    };
    // (pod, command, explain's target, allowed?)
    let cases: Vec<(&str, &TestCgroup, String, &str, bool)> = vec![
        ("by-name", &names, "curl -sS --max-time 3 -4 http://api.example.test/".into(), "api.example.test:80", true),
        ("by-name", &names, "curl -sS --max-time 3 http://169.254.169.254:80/".into(), "169.254.169.254:80", false),
        ("by-name", &names, "curl -sS --max-time 3 -4 http://meta.example.test/".into(), "meta.example.test:80", false),
        ("by-name", &names, "curl -sS --max-time 3 http://100.100.100.200/".into(), "100.100.100.200:80", false),
        ("by-name", &names, "curl -sS --max-time 3 http://10.96.0.10/".into(), "10.96.0.10:80", false),
        ("by-name", &names, "curl -sS --max-time 3 -4 http://internal.example.test/".into(), "internal.example.test:80", false),
        ("by-name", &names, "curl -sS --max-time 3 -6 'http://[fd00:ec2::254]/'".into(), "[fd00:ec2::254]:80", false),
        ("by-name", &names, "curl -sS --max-time 3 -6 http://meta6.example.test/".into(), "meta6.example.test:80", false),
        ("by-name", &names, py_connect("::ffff:169.254.169.254", 8080), "[::ffff:169.254.169.254]:8080", false),
        ("by-name", &names, py_connect("64:ff9b::a9fe:a9fe", 80), "[64:ff9b::a9fe:a9fe]:80", false),
        ("by-cidr", &cidrs, "curl -sS --max-time 3 http://203.0.113.20:8443/".into(), "203.0.113.20:8443", true),
        ("by-cidr", &cidrs, "curl -sS --max-time 3 'http://[2001:db8:100::20]:8080/'".into(), "[2001:db8:100::20]:8080", true),
        ("by-cidr", &cidrs, "curl -sS --max-time 3 http://169.254.169.254/".into(), "169.254.169.254:80", false),
        ("by-cidr", &cidrs, "curl -sS --max-time 3 'http://[fd00:ec2::254]/'".into(), "[fd00:ec2::254]:80", false),
        ("by-cidr", &cidrs, "curl -sS --max-time 3 http://10.96.0.10/".into(), "10.96.0.10:80", true),
        ("by-cidr", &cidrs, "curl -sS --max-time 3 http://10.96.0.10:8080/".into(), "10.96.0.10:8080", false),
        ("by-cidr", &cidrs, py_connect("::ffff:169.254.169.254", 80), "[::ffff:169.254.169.254]:80", false),
        ("by-cidr", &cidrs, py_connect("::ffff:10.96.0.10", 80), "[::ffff:10.96.0.10]:80", true),
    ];
    // And other protocols (enforce_proto): ICMP echo, UDP.
    let ping = |ip: &str| format!("ping -c 1 -W 2 {ip}");
    let udp = |ip: &str, port: u16| {
        format!(
            "python3 -c \"import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             sys.exit(0 if s.sendto(b'x', ('{ip}', {port})) else 1)\""
        )
    };
    let proto_cases: Vec<(&str, &TestCgroup, String, &str, &str, bool)> = vec![
        ("by-cidr", &cidrs, ping("203.0.113.20"), "203.0.113.20", "icmp", true),
        ("by-cidr", &cidrs, ping("169.254.169.254"), "169.254.169.254", "icmp", false),
        ("by-name", &names, ping("203.0.113.10"), "203.0.113.10", "icmp", false),
        ("by-cidr", &cidrs, udp("203.0.113.20", 9999), "203.0.113.20:9999", "udp", true),
        ("by-cidr", &cidrs, udp("10.96.0.10", 80), "10.96.0.10:80", "udp", false),
        ("by-name", &names, udp("203.0.113.10", 80), "203.0.113.10:80", "udp", false),
    ];
    let cases: Vec<_> = cases.into_iter().map(|(p, c, cmd, t, a)| (p, c, cmd, t, "tcp", a)).chain(proto_cases).collect();
    for (pod, cg, cmd, target, protocol, allowed) in cases {
        let c = in_cgroup_cmd(&bench, &cg.path, &cmd);
        let code = run_with_deadline(bench.workdir(), c, Duration::from_secs(10)).code;
        assert_eq!(code == 0, allowed, "{pod}: {cmd}: exit {code}");
        let out = agent_cmd()
            .args([
                "explain",
                "-n",
                "team-a",
                "--pod",
                pod,
                "-o",
                "json",
                "--port",
                "8080",
                "--protocol",
                protocol,
                "--state-dir",
            ])
            .arg(&state)
            .arg(target)
            .output()
            .unwrap();
        let e: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|err| panic!("explain {target}: {err}: {}", String::from_utf8_lossy(&out.stderr)));
        let says = matches!(e["verdict"].as_str(), Some("allowed" | "allowed-after-lookup"));
        assert_eq!(says, allowed, "{pod}: explain {target} disagrees with the datapath: {e:#}");
        if e["addresses"][0]["reason"] == "denied-range" {
            assert!(e["change"].is_null(), "never a change for an always-denied range: {e:#}");
        }
    }
}

/// `portcullis exec --state-dir DIR`: its socket answers explain about its
/// one endpoint (no --pod needed), refuses a takeover (a pinned agent
/// started on the same directory starts fresh), and goes when exec ends.
/// In audit mode the verdict says what the datapath does: let through,
/// logged (`audit`, exit 1: enforcing would block it). Any IP protocol
/// can be asked about by number.
#[test]
fn an_exec_answers_about_its_own_endpoint() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let ask = |state: &Path, args: &[&str]| {
        let out = agent_cmd().args(["explain", "-o", "json", "--state-dir"]).arg(state).args(args).output().unwrap();
        let e: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|err| panic!("explain {args:?}: {err}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap_or(-1), e)
    };
    for (audit, verdict) in [(false, "blocked"), (true, "audit")] {
        let mut exec = common::Exec::new(&bench).policy(common::API_POLICY).enter(common::Enter::AsIs);
        if audit {
            exec = exec.arg("--audit");
        }
        let running = exec.spawn(&["sleep", "3600"]);
        let socket = running.state.join("agent.sock");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(std::time::Instant::now() < deadline, "no explain socket at {}", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        let (code, e) = ask(&running.state, &["169.254.169.254:80"]);
        assert_eq!((code, e["verdict"].as_str()), (1, Some(verdict)), "{e:#}");
        assert_eq!(e["addresses"][0]["range"], "metadata", "{e:#}");
        assert!(e["endpoint"].as_str().unwrap().starts_with("exec-"), "{e:#}");
        let (code, e) = ask(&running.state, &["203.0.113.20", "--protocol", "47"]);
        assert_eq!((code, e["verdict"].as_str()), (1, Some(verdict)), "{e:#}");
        assert_eq!((e["port"].as_u64(), e["addresses"][0]["reason"].as_str()), (Some(0), Some("denied-default")), "{e:#}");
        let (code, e) = ask(&running.state, &["api.example.test:443"]);
        assert_eq!((code, e["verdict"].as_str()), (0, Some("allowed-after-lookup")), "{e:#}");
        // A takeover request gets nothing: the asker finds nobody to take
        // over from, and the exec goes on answering.
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        use std::io::{Read as _, Write as _};
        writeln!(s, "takeover").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert_eq!(text, "", "an exec hands nothing over");
        assert_eq!(ask(&running.state, &["169.254.169.254:80"]).0, 1);
        let out = running.stop();
        assert!(!socket.exists(), "the socket outlived the exec: {}", out.ran.stderr);
    }
}

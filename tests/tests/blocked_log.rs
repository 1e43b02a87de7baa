//! The blocked log end to end: `portcullis run` enforcing a cgroup the test
//! made, real blocked attempts from the bench's pod namespace, then the
//! records as written (stdout and the rotated files, schema v1, repeats
//! folded), `portcullis blocked` (table, JSON, every filter, --summary,
//! --follow), rotation with a small size, `portcullis suggest` for the
//! workload, and the `kubectl portcullis` plugin against a fake kubectl.

mod common;

use common::{TestCgroup, agent_cmd, fresh_path, run_with_deadline, wait_for};
use portcullis_tests::{Bench, ChildGuard, require_root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const POLICY: &str = r#"
      egress:
        - toFQDNs: [{matchName: api.example.test}]
          ports: [{port: 443}]
      dns:
        servers: ["198.51.100.53"]
"#;

fn config(cg: &Path) -> String {
    format!(
        "endpoints:\n  - name: blk-ep\n    namespace: team-a\n    pod: pod-a\n    cgroup: {}\n    policy:{POLICY}",
        cg.display()
    )
}

/// `portcullis run` with its records on stdout (a file) and in `dir`.
struct Agent {
    child: ChildGuard,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Agent {
    fn start(bench: &Bench, cg: &Path, dir: &Path, extra: &[&str]) -> Self {
        let cfg = common::write_file(bench.workdir(), "node.yaml", &config(cg));
        let (stdout, stderr) = (fresh_path(bench.workdir(), "run.stdout"), fresh_path(bench.workdir(), "run.stderr"));
        let mut c = agent_cmd();
        c.args(["run", "--config"])
            .arg(&cfg)
            .arg("--blocked-log-dir")
            .arg(dir)
            .args(extra)
            .env("PORTCULLIS_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let mut child = ChildGuard::spawn(c).unwrap();
        wait_for("portcullis run to be ready", Duration::from_secs(10), || {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("run exited early ({st}): {}", std::fs::read_to_string(&stderr).unwrap());
            }
            std::fs::read_to_string(&stderr).unwrap_or_default().contains("\"message\":\"ready\"").then_some(())
        });
        Self { child, stdout, stderr }
    }

    fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own, not yet reaped child.
        assert_eq!(unsafe { libc::kill(self.child.pid() as i32, libc::SIGTERM) }, 0);
        let st = wait_for("run to exit", Duration::from_secs(10), || self.child.try_wait().unwrap());
        assert_eq!(st.code(), Some(0), "{}", std::fs::read_to_string(&self.stderr).unwrap());
        std::fs::read_to_string(&self.stdout).unwrap()
    }
}

/// `sh -c 'echo $$ > CG/cgroup.procs; exec ip netns exec POD-NS ARGV...'`.
fn in_cgroup(bench: &Bench, cg: &Path, argv: &str) -> common::Ran {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("echo $$ > {}/cgroup.procs && exec ip netns exec {} {argv}", cg.display(), bench.pod_ns_name("pod")));
    run_with_deadline(bench.workdir(), c, Duration::from_secs(10))
}

/// `portcullis ARGS...`: (exit code, stdout, stderr).
fn cli(bench: &Bench, args: &[&str]) -> (i32, String, String) {
    let mut c = agent_cmd();
    c.args(args);
    let r = run_with_deadline(bench.workdir(), c, Duration::from_secs(10));
    (r.code, r.stdout, r.stderr)
}

fn blocked(bench: &Bench, dir: &Path, args: &[&str]) -> String {
    let d = dir.to_str().unwrap();
    let mut all = vec!["blocked", "--dir", d];
    all.extend_from_slice(args);
    let (code, out, err) = cli(bench, &all);
    assert_eq!(code, 0, "portcullis {all:?}: {err}");
    out
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned()
}

const CURL: &str = "curl -sS --max-time 3";

#[test]
fn blocked_attempts_are_logged_folded_and_queried_followed_and_suggested() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let cg = TestCgroup::create("blocked");
    let dir = bench.workdir().join("blocked-log");
    let agent = Agent::start(&bench, &cg.path, &dir, &["--blocked-log-fold", "2s"]);

    // Three times the same blocked port of an allowed name: one record at
    // once, then one with the other two folded in when the window ends.
    for _ in 0..3 {
        assert_eq!(in_cgroup(&bench, &cg.path, &format!("{CURL} -4 http://api.example.test:80/")).code, 7);
    }
    assert_eq!(in_cgroup(&bench, &cg.path, &format!("{CURL} http://169.254.169.254/")).code, 7);
    assert_eq!(in_cgroup(&bench, &cg.path, &format!("{CURL} -4 http://other.example.test:443/")).code, 6);
    assert_eq!(in_cgroup(&bench, &cg.path, &format!("{CURL} http://203.0.113.20:443/")).code, 7);
    let live = dir.join("blocked.log");
    let folded = wait_for("the folded record", Duration::from_secs(10), || {
        let recs = json_lines(&std::fs::read_to_string(&live).unwrap_or_default());
        recs.into_iter().find(|r| r["dport"] == 80 && r["count"] == 2)
    });
    assert!(folded["first"].is_string() && folded["last"].is_string() && folded["first"] == folded["time"], "{folded}");

    // Every record: schema v1, the node, who, and the range that decided.
    let recs = json_lines(&blocked(&bench, &dir, &["-o", "json", "--last", "100"]));
    let node = hostname();
    for r in &recs {
        assert_eq!((r["v"].as_u64(), r["kind"].as_str()), (Some(1), Some("attempt")), "{r}");
        assert_eq!(
            (r["node"].as_str(), r["namespace"].as_str(), r["pod"].as_str()),
            (Some(&*node), Some("team-a"), Some("pod-a")),
            "{r}"
        );
        assert_eq!(r["verdict"], "blocked", "{r}");
    }
    let of = |reason: &str, port: u16| -> Vec<&Value> {
        recs.iter().filter(|r| r["reason"] == reason && r["dport"] == port).collect()
    };
    let api80 = of("denied-default", 80);
    assert_eq!(api80.iter().map(|r| r["count"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2], "{recs:?}");
    assert!(api80.iter().all(|r| r["host"] == "api.example.test" && r["dst"] == "203.0.113.10"), "{api80:?}");
    let meta = of("denied-range", 80);
    assert_eq!((meta.len(), meta[0]["range"].as_str(), meta[0]["dst"].as_str()), (1, Some("metadata"), Some("169.254.169.254")));
    let dns = of("denied-dns-name", 53);
    assert_eq!(
        (dns.len(), dns[0]["host"].as_str(), dns[0]["decision"].as_str()),
        (1, Some("other.example.test"), Some("nxdomain"))
    );
    let bare = of("denied-default", 443);
    assert_eq!((bare.len(), bare[0]["dst"].as_str()), (1, Some("203.0.113.20")));
    assert!(bare[0].get("host").is_none(), "{}", bare[0]);
    assert_eq!(recs.len(), 5, "{recs:?}");

    // The table a person reads.
    let table = blocked(&bench, &dir, &[]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TIME (UTC)") && lines[0].contains("POD") && lines[0].contains("COUNT"), "{table}");
    for want in [
        "team-a/pod-a",
        "denied-range (metadata)",
        "169.254.169.254:80/tcp",
        "api.example.test 203.0.113.10:80/tcp",
        "other.example.test (DNS lookup, nxdomain)",
        "203.0.113.20:443/tcp",
    ] {
        assert!(table.contains(want), "{want}:\n{table}");
    }
    let folded_row = lines.iter().find(|l| l.contains(":80/tcp") && l.contains("api.example.test") && l.contains("  2  curl"));
    assert!(folded_row.is_some(), "the folded count in the table:\n{table}");
    assert!(table.ends_with("6 attempts in 5 records; 0 attempts lost to the rate limit\n"), "{table}");

    // Filters.
    let count = |args: &[&str]| {
        let mut a = vec!["-o", "json"];
        a.extend_from_slice(args);
        json_lines(&blocked(&bench, &dir, &a)).len()
    };
    assert_eq!(count(&["--reason", "denied-range"]), 1);
    assert_eq!(count(&["--reason", "denied-range", "--reason", "denied-dns-name"]), 2);
    assert_eq!(count(&["--host", "api.*"]), 2);
    assert_eq!(count(&["--host", "*.example.test"]), 3);
    assert_eq!(count(&["--to-ip", "203.0.113.0/24"]), 3);
    assert_eq!(count(&["--to-ip", "203.0.113.0/24", "--port", "443"]), 1);
    assert_eq!(count(&["-n", "team-a", "--pod", "pod"]), 5);
    assert_eq!(count(&["--pod", "team-a/pod-a"]), 5);
    assert_eq!(count(&["--pod", "team-b/pod-a"]), 0);
    assert_eq!(count(&["-n", "team-b"]), 0);
    assert_eq!(count(&["--verdict", "audit"]), 0);
    assert_eq!(count(&["--verdict", "blocked", "--since", "1h"]), 5);
    assert_eq!(count(&["--until", "2000-01-01T00:00:00Z"]), 0);
    let last = json_lines(&blocked(&bench, &dir, &["-o", "json", "--last", "1"]));
    assert_eq!(last, [recs.last().unwrap().clone()], "the newest");
    assert_eq!(blocked(&bench, &dir, &["-n", "team-b"]), "no blocked attempts match\n");
    let compact = blocked(&bench, &dir, &["-o", "compact", "--reason", "denied-range"]);
    assert!(compact.contains("team-a/pod-a (curl) -> 169.254.169.254:80/tcp BLOCKED denied-range (metadata)"), "{compact}");
    // Bad arguments are refused with what was expected.
    for (bad, says) in [
        (&["--since", "yesterday"][..], "RFC 3339"),
        (&["--reason", "denied-everything"][..], "possible values"),
        (&["--to-ip", "203.0.113"][..], "not an IP address or CIDR"),
        (&["-o", "yaml"][..], "possible values"),
        (&["--port", "70000"][..], "70000"),
    ] {
        let d = dir.to_str().unwrap();
        let mut a = vec!["blocked", "--dir", d];
        a.extend_from_slice(bad);
        let (code, _, err) = cli(&bench, &a);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.contains(says), "{bad:?}: {err}");
    }
    let (code, _, err) = cli(&bench, &["blocked", "--dir", "/nonexistent-portcullis"]);
    assert!(code == 1 && err.contains("no blocked log in /nonexistent-portcullis"), "{err}");

    // The 3 a.m. view.
    let summary = blocked(&bench, &dir, &["--summary"]);
    assert!(summary.contains("6 attempts blocked to 4 destinations from 1 pod; 0 attempts lost"), "{summary}");
    let pod_row: Vec<&str> = summary.lines().find(|l| l.starts_with("team-a/pod-a ")).unwrap().split_whitespace().collect();
    assert_eq!(&pod_row[..4], ["team-a/pod-a", "6", "4", "0"], "{summary}");

    // --follow sees a new record.
    let follow_out = fresh_path(bench.workdir(), "follow.out");
    let mut f = agent_cmd();
    f.args(["blocked", "--dir", dir.to_str().unwrap(), "-f", "-o", "json"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&follow_out).unwrap())
        .stderr(Stdio::null());
    let follower = ChildGuard::spawn(f).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(in_cgroup(&bench, &cg.path, &format!("{CURL} -4 http://api.example.test:8080/")).code, 7);
    let seen = wait_for("--follow to print the new record", Duration::from_secs(5), || {
        json_lines(&std::fs::read_to_string(&follow_out).unwrap_or_default()).into_iter().find(|r| r["dport"] == 8080)
    });
    assert_eq!(seen["host"], "api.example.test");
    let followed = json_lines(&std::fs::read_to_string(&follow_out).unwrap());
    assert_eq!(followed.len(), 1, "nothing old, the new one once: {followed:?}");
    drop(follower);

    // What would allow it, for a person to review.
    let (code, yaml, err) =
        cli(&bench, &["suggest", "--dir", dir.to_str().unwrap(), "-n", "team-a", "--pod", "pod-a", "--since", "1h"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        yaml.contains("      - matchName: api.example.test\n    ports:\n      - {port: 80}\n      - {port: 8080}\n"),
        "{yaml}"
    );
    assert!(yaml.contains("      - matchName: other.example.test\n"), "{yaml}");
    assert!(
        yaml.contains("# WARNING 203.0.113.20") && yaml.contains("      - 203.0.113.20/32\n    ports:\n      - {port: 443}"),
        "{yaml}"
    );
    assert!(yaml.contains("169.254.169.254:80/tcp: 1 attempt, denied-range: always-denied range (metadata)"), "{yaml}");
    let code_lines: String = yaml.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    assert!(!code_lines.contains("169.254") && !code_lines.contains("198.51.100.53"), "{yaml}");
    let parsed: Value = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"));
    assert_eq!(parsed["egress"].as_array().map(Vec::len), Some(3), "{yaml}");

    // stdout has the same records (for kubectl logs and log shippers).
    let stdout = agent.stop();
    let on_disk = std::fs::read_to_string(&live).unwrap();
    assert_eq!(stdout, on_disk, "stdout and the file carry the same lines");
    assert_eq!(json_lines(&stdout).len(), 6);
}

#[test]
fn the_log_rotates_at_its_size_keeps_its_files_and_is_read_across_them() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let cg = TestCgroup::create("blkrot");
    let dir = bench.workdir().join("blocked-log");
    let agent = Agent::start(&bench, &cg.path, &dir, &["--blocked-log-max-bytes", "2000", "--blocked-log-files", "3"]);
    // 60 distinct destinations (ports), about 330 bytes a record.
    let py = "import socket\nfor p in range(20000, 20060):\n    s = socket.socket()\n    try: s.connect(('203.0.113.10', p))\n    except OSError: pass\n    s.close()\n";
    let script = common::write_file(bench.workdir(), "connects.py", py);
    let r = in_cgroup(&bench, &cg.path, &format!("python3 {}", script.display()));
    assert_eq!(r.code, 0, "{r:?}");
    let live = dir.join("blocked.log");
    let all_written = wait_for("the 60 records", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&agent.stdout).unwrap_or_default();
        (text.lines().count() >= 60).then_some(text)
    });
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["blocked.log", "blocked.log.1", "blocked.log.2"], "three files kept");
    let mut on_disk = String::new();
    for f in ["blocked.log.2", "blocked.log.1", "blocked.log"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(text.len() <= 2000, "{f}: {} bytes", text.len());
        assert!(text.ends_with('\n') && !text.is_empty(), "{f} holds whole lines");
        on_disk.push_str(&text);
    }
    assert!(all_written.ends_with(&on_disk), "the files hold the newest records, oldest first");
    let ports: Vec<u64> = json_lines(&blocked(&bench, &dir, &["-o", "json", "--last", "1000"]))
        .iter()
        .map(|r| r["dport"].as_u64().unwrap())
        .collect();
    let n = ports.len() as u64;
    assert!((9..60).contains(&n), "{n} records in three files of 2000 bytes");
    assert_eq!(ports, (20060 - n..20060).collect::<Vec<_>>(), "every record of every file, oldest first");
    assert!(live.exists());
    agent.stop();
}

/// `kubectl portcullis`: a fake kubectl on PATH answers the pod's node and
/// the agent pod on it, and records the exec.
#[test]
fn the_kubectl_plugin_runs_the_command_in_the_agent_pod_on_the_pods_node() {
    let tmp = common::TempDir::new("kubectl");
    let calls = tmp.path().join("calls");
    let fake = format!(
        r#"#!/bin/sh
printf '%s\n' "$*" >> {calls}
case "$*" in
  *"get pod -n team-a agent-a-0 -o jsonpath={{.spec.nodeName}}") echo node-7 ;;
  *"get pod -n team-a gone -o jsonpath={{.spec.nodeName}}") echo 'Error from server (NotFound): pods "gone" not found' >&2; exit 1 ;;
  *"get pods -n portcullis-system -l app.kubernetes.io/name=portcullis --field-selector spec.nodeName=node-7,status.phase=Running -o jsonpath={{.items[*].metadata.name}}") printf 'portcullis-abcde portcullis-fghij' ;;
  *"get pods -n portcullis-system -l app.kubernetes.io/name=portcullis --field-selector spec.nodeName=node-9,status.phase=Running -o jsonpath={{.items[*].metadata.name}}") ;;
  *" exec "*|exec*) echo "ran in the agent pod" ;;
  *) echo "unexpected: $*" >&2; exit 3 ;;
esac
"#,
        calls = calls.display()
    );
    let bin = tmp.path().join("kubectl");
    std::fs::write(&bin, fake).unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubectl-portcullis");
    let path = format!("{}:{}", tmp.path().display(), std::env::var("PATH").unwrap_or_default());
    let run = |args: &[&str]| {
        let _ = std::fs::remove_file(&calls);
        let out = Command::new("sh").arg(&plugin).args(args).env("PATH", &path).env_remove("KUBECTL").output().unwrap();
        let calls: Vec<String> = std::fs::read_to_string(&calls).unwrap_or_default().lines().map(str::to_owned).collect();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            calls,
        )
    };
    let exec = "exec -n portcullis-system -c agent portcullis-abcde -- portcullis";

    let (code, out, err, calls) = run(&["blocked", "-n", "team-a", "--pod", "agent-a-0", "--since", "1h", "-o", "json"]);
    assert_eq!((code, out.as_str()), (Some(0), "ran in the agent pod\n"), "{err}");
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[2], format!("{exec} blocked -n team-a --pod agent-a-0 --since 1h -o json"), "every argument passed on");

    // ns/pod, --flag=value forms, a quoted argument with a space, and the
    // plugin's own --node and --context.
    let (code, _, err, calls) = run(&["suggest", "--pod=team-a/agent-a-0", "--context", "prod", "--since", "24h"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(calls.iter().all(|c| c.starts_with("--context prod ")), "{calls:?}");
    assert_eq!(calls[2], format!("--context prod {exec} suggest --pod=team-a/agent-a-0 --since 24h"));
    let (code, _, err, calls) = run(&["blocked", "--node", "node-7", "--host", "*.example test", "--summary"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(calls.len(), 2, "no pod to look up: {calls:?}");
    assert_eq!(calls[1], format!("{exec} blocked --host *.example test --summary"));

    // Clear errors.
    for (args, says) in [
        (&["blocked", "-n", "team-a"][..], "give --pod"),
        (&["blocked", "--pod", "agent-a-0"][..], "namespace"),
        (&["blocked", "-n", "team-a", "--pod", "gone"][..], "pod team-a/gone not found"),
        (&["blocked", "--node", "node-9"][..], "no running portcullis agent pod on node node-9"),
        (&["blocked", "--pod"][..], "--pod needs a value"),
        (&["-n", "x"][..], "the first argument is the command"),
    ] {
        let (code, _, err, calls) = run(args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!calls.iter().any(|c| c.contains(" exec ")), "{args:?}: {calls:?}");
    }
}

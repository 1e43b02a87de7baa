//! `explain` agrees with the datapath, on every step of every suite that
//! runs [`Exec::steps`](super::Exec::steps): after each step,
//! `clients/agree.py` asks the running agent's explain socket about every
//! verdict the step produced, as the two ends saw them (a new record of the
//! blocked log: a denial; a connection or datagram that reached a bench
//! host from the pod: an allowance). This module judges the answers.

use portcullis_tests::{Bench, servers::python};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The denial reasons `agent_common::decide` gives, so `explain` must give
/// the same. Other records (a spoofed source, a malformed packet, a DNS
/// query that found no gate...) are not decided by the policy's
/// destination: explain has nothing to say about them.
const DECIDED: [&str; 4] = ["denied-default", "denied-range", "denied-dns-server", "denied-internal"];

/// What was checked, for tests that want to see it was not nothing.
#[derive(Debug, Default)]
pub struct Agreement {
    /// Blocked-log records explain agreed on.
    pub denials: usize,
    /// Arrivals at bench hosts explain agreed on.
    pub allowances: usize,
    /// Records about something the policy does not decide (skipped).
    pub undecided: usize,
}

/// One line of `agree.py`'s output: `Ok(true)` agreed, `Ok(false)` not a
/// policy decision, `Err(why)` a disagreement.
pub fn judge(line: &Value) -> Result<bool, String> {
    let answer = &line["answer"];
    let Some(e) = answer.get("ok") else {
        return Err(format!("explain gave no answer: {answer}"));
    };
    let verdict = e["verdict"].as_str().unwrap_or("?");
    let first = &e["addresses"][0];
    let seen = &line["seen"];
    match line["from"].as_str() {
        Some("arrival") => {
            // It reached the host: allowed, or let through by audit mode.
            if verdict == "allowed" || verdict == "audit" {
                Ok(true)
            } else {
                Err(format!("reached a bench host, but explain says {verdict}: {}", e["why"]))
            }
        }
        Some("blocked") => {
            let (reason, rec_verdict) = (seen["reason"].as_str().unwrap_or("?"), seen["verdict"].as_str().unwrap_or("?"));
            let want = if rec_verdict == "audit" { "audit" } else { "blocked" };
            if seen["protocol"] == "dns" {
                let refused = e["dns"]["resolvable"] == false;
                return match reason {
                    "denied-dns-name" if verdict == want && refused => Ok(true),
                    "denied-dns-name" => Err(format!("the gate refused the name, explain says {verdict}: {}", e["why"])),
                    "denied-range" if first["reason"] == "denied-range" => Ok(true),
                    "denied-range" => Err(format!("the gate stripped the address as always denied, explain: {first}")),
                    _ => Ok(false),
                };
            }
            if !DECIDED.contains(&reason) {
                return Ok(false);
            }
            if verdict != want || first["reason"] != reason {
                return Err(format!(
                    "logged {rec_verdict} ({reason}), explain says {verdict} ({}): {}",
                    first["reason"], e["why"]
                ));
            }
            if let Some(range) = seen.get("range")
                && first.get("range") != Some(range)
            {
                return Err(format!("logged range {range}, explain's {first}"));
            }
            Ok(true)
        }
        other => Err(format!("unknown line kind {other:?}")),
    }
}

/// Judges every line; panics listing every disagreement.
pub fn check(lines: &str, context: &dyn Fn(usize) -> String) -> Agreement {
    let mut a = Agreement::default();
    let mut bad = Vec::new();
    for l in lines.lines() {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("agree.py line is not JSON ({e}): {l}"));
        match judge(&v) {
            Ok(true) if v["from"] == "arrival" => a.allowances += 1,
            Ok(true) => a.denials += 1,
            Ok(false) => a.undecided += 1,
            Err(why) => {
                let step = v["step"].as_u64().unwrap_or(0) as usize;
                bad.push(format!("{}: {why}\n  seen: {}\n  asked: {}", context(step), v["seen"], v["asked"]));
            }
        }
    }
    assert!(bad.is_empty(), "explain disagrees with the datapath:\n{}", bad.join("\n"));
    a
}

/// Where a later `ask_all` starts: the end of hostd's log and of the
/// blocked log `log` once it has been quiet for a moment (records of
/// attempts made before, say while a policy was still on its way, are
/// written a moment after their verdict; they are not the later state's).
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    hostd: u64,
    blocked: u64,
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub fn mark(bench: &Bench, log: &Path) -> Mark {
    let mut last = size(log);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = size(log);
        if now == last {
            return Mark { hostd: size(bench.hostd_log_path()), blocked: now };
        }
        last = now;
    }
}

/// Runs `agree.py` once, from the test: every record of the blocked log
/// `log` after `from` (each asked of its own endpoint) and every arrival
/// at a bench host after it from the addresses in `pods` (`IP=NS/POD`,
/// `IP=@ENDPOINT`, or `IP` for a one-endpoint agent; comma-separated),
/// asked of the agent whose state dir is `state`. Call it while the state
/// the verdicts came from still holds.
pub fn ask_all(bench: &Bench, state: &Path, log: &Path, from: Mark, pods: &str) -> Agreement {
    let dir = super::fresh_path(bench.workdir(), "agree");
    std::fs::create_dir(&dir).unwrap();
    let (out, offsets) = (dir.join("agree.jsonl"), dir.join("offsets.json"));
    std::fs::write(&offsets, format!("{{\"blocked\": {}, \"hostd\": {}}}", from.blocked, from.hostd)).unwrap();
    let st = std::process::Command::new(python())
        .arg(super::client(bench, "agree.py", super::AGREE_PY))
        .arg("0")
        .args([&out, &state.join("agent.sock"), log, bench.hostd_log_path(), &offsets])
        .arg(pods)
        .status()
        .unwrap();
    assert!(st.success(), "agree.py: {st}");
    let agreement = check(&super::read(&out), &|_| "the run".to_owned());
    eprintln!("explain agreed with the datapath: {agreement:?}");
    agreement
}

/// `IP=NS/POD` for both addresses of bench pod `bench_pod`, which is the
/// Kubernetes pod `ns`/`pod`.
pub fn pod_addrs(bench: &Bench, bench_pod: &str, ns: &str, pod: &str) -> String {
    format!("{}={ns}/{pod},{}={ns}/{pod}", bench.pod_v4(bench_pod), bench.pod_v6(bench_pod))
}

/// One question (an explain request) to the agent whose state dir is
/// `state`: its answer
/// (`{"ok": explanation}` or `{"error": message}`).
pub fn ask(state: &Path, q: &Value) -> Value {
    use std::io::{BufRead as _, BufReader, Write as _};
    let mut s =
        std::os::unix::net::UnixStream::connect(state.join("agent.sock")).unwrap_or_else(|e| panic!("explain socket: {e}"));
    writeln!(s, "explain {q}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("explain's answer ({e}): {line:?}"))
}

/// Whom a question is about.
pub enum Who<'a> {
    Endpoint(&'a str),
    Pod { namespace: &'a str, pod: &'a str },
}

/// A workload's connection to `ip`:`port` just `connected` (or was
/// refused): explain, asked at once, must say the same of `who`. A
/// workload the agent does not know must have done what `unknown` says
/// (`run`: not enforced, connects; Kubernetes: not classified, denied).
pub fn expect_same(state: &Path, who: &Who<'_>, unknown_connects: bool, ip: &str, port: u16, connected: bool) {
    let (endpoint, namespace, pod) = match who {
        Who::Endpoint(e) => (Some(*e), None, None),
        Who::Pod { namespace, pod } => (None, Some(*namespace), Some(*pod)),
    };
    let a = ask(
        state,
        &serde_json::json!({"namespace": namespace, "pod": pod, "endpoint": endpoint, "host": ip, "port": port, "protocol": "tcp"}),
    );
    let endpoint = endpoint.map(str::to_owned).unwrap_or_else(|| format!("{}/{}", namespace.unwrap_or(""), pod.unwrap_or("")));
    let says = match (a["ok"]["verdict"].as_str(), a["error"].as_str()) {
        (Some(v), _) => v == "allowed" || v == "audit",
        (None, Some(e)) if e.starts_with("no enforced endpoint") => unknown_connects,
        _ => panic!("{endpoint}: explain {ip}:{port}: {a}"),
    };
    assert_eq!(
        says,
        connected,
        "{endpoint}: {ip}:{port} {}, explain disagrees: {a}",
        if connected { "connected" } else { "was refused" }
    );
}

/// The files of one run's `agree` checks (in `dir`), and the arguments
/// `clients/agree.py` takes after the step number.
pub(super) struct Agree {
    pub log: PathBuf,
    pub state: PathBuf,
    out: PathBuf,
    offsets: PathBuf,
    pub args: String,
}

impl Agree {
    pub fn new(exec: &super::Exec<'_>, dir: &Path) -> Self {
        let (log, state) = (dir.join("blocked.jsonl"), dir.join("state"));
        let (out, offsets) = (dir.join("agree.jsonl"), dir.join("offsets.json"));
        // Only what arrives at hostd from now on is this run's.
        let hostd_at = std::fs::metadata(exec.bench.hostd_log_path()).map(|m| m.len()).unwrap_or(0);
        std::fs::write(&offsets, format!("{{\"blocked\": 0, \"hostd\": {hostd_at}}}")).unwrap();
        let args = format!(
            "{} {} {} {} {} {},{}",
            out.display(),
            state.join("agent.sock").display(),
            log.display(),
            exec.bench.hostd_log_path().display(),
            offsets.display(),
            exec.bench.pod_v4(&exec.pod),
            exec.bench.pod_v6(&exec.pod)
        );
        Self { log, state, out, offsets, args }
    }

    /// `agree.py` ran `times` times (else `stderr` says why) and explain
    /// agreed with every verdict.
    pub fn check(&self, times: usize, stderr: &str, context: &dyn Fn(usize) -> String) -> Agreement {
        let checked: Value = serde_json::from_str(&super::read(&self.offsets)).unwrap_or_default();
        assert_eq!(checked["checked"].as_u64(), Some(times as u64), "agree.py did not run each time; stderr:\n{stderr}");
        let agreement = check(&super::read(&self.out), context);
        eprintln!("explain agreed with the datapath: {agreement:?}");
        agreement
    }
}

//! A workload flooding the DNS gate cannot grow the agent or its log: a
//! flood of refused names is logged within the per-endpoint record rate
//! limit (the rest counted), and idle DNS-over-TCP connections neither add
//! threads to the agent nor keep a real TCP query from being answered.

mod common;

use common::{Exec, Log, TestCgroup, agent_cmd, client, fresh_path, run_with_deadline, wait_for};
use portcullis_tests::{Bench, ChildGuard, require_root};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `flood.py udp SERVER N`: N queries for refused names, one after the
/// other, each waiting for its answer. `flood.py tcp SERVER N NAME`: N idle
/// TCP connections to SERVER:53 (every other one stalled inside a frame),
/// the agent's thread count around them, then one TCP query for NAME on a
/// new connection, and which of the idle ones the gate closed, at once and
/// after its idle timeout. Prints one JSON object.
const FLOOD_PY: &str = r#"
import json, os, select, socket, struct, sys, time

def query(txid, name):
    q = struct.pack("!6H", txid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", 1, 1)

def rcode(msg):
    return struct.unpack("!H", msg[2:4])[0] & 0xF

def agent_threads():
    # The nearest ancestor named portcullis: the agent (`portcullis exec`).
    pid = os.getppid()
    while pid > 1:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        with open(f"/proc/{pid}/status") as f:
            status = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
        if comm == "portcullis":
            return int(status["Threads"])
        pid = int(status["PPid"])
    raise SystemExit("no portcullis ancestor")

def closed(s):
    # Readable with nothing to read (or reset): the gate closed it.
    if not select.select([s], [], [], 0)[0]:
        return False
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True

def udp_flood(server, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((server, 53))
    s.settimeout(2)
    nx, start = 0, time.monotonic()
    for i in range(n):
        s.send(query(i, f"n{i}.refused.test"))
        try:
            if rcode(s.recv(4096)) == 3:
                nx += 1
        except socket.timeout:
            pass
    return {"sent": n, "nxdomain": nx, "secs": time.monotonic() - start}

def tcp_query(server, name):
    start = time.monotonic()
    buf = b""
    try:
        c = socket.create_connection((server, 53), timeout=5)
        q = query(0x4242, name)
        c.sendall(struct.pack("!H", len(q)) + q)
        while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
            chunk = c.recv(65535)
            if not chunk:
                break
            buf += chunk
        c.close()
    except OSError as e:
        return {"ok": False, "error": str(e), "ms": int((time.monotonic() - start) * 1000)}
    msg = buf[2:]
    ok = len(msg) >= 12 and msg[:2] == b"\x42\x42"
    return {"ok": ok, "rcode": rcode(msg) if ok else None, "ancount": struct.unpack("!H", msg[6:8])[0] if ok else 0,
            "ms": int((time.monotonic() - start) * 1000)}

def tcp_flood(server, n, name, idle_wait):
    # A UDP query first: it opens the gate in this namespace.
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect((server, 53))
    u.settimeout(3)
    u.send(query(1, name))
    u.recv(4096)
    time.sleep(0.3)
    before = agent_threads()
    idle = []
    for i in range(n):
        s = socket.create_connection((server, 53), timeout=5)
        if i % 2:
            # Stalled inside a frame: a length of 100, 3 bytes of it.
            try:
                s.sendall(b"\x00\x64abc")
            except OSError:
                pass
        idle.append(s)
    time.sleep(0.5)
    during = agent_threads()
    answer = tcp_query(server, name)
    time.sleep(0.5)
    closed_now = sum(closed(s) for s in idle)
    time.sleep(idle_wait)
    closed_later = sum(closed(s) for s in idle)
    return {"before": before, "during": during, "after": agent_threads(), "answer": answer,
            "closed_now": closed_now, "closed_later": closed_later, "idle": n}

mode, server, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = udp_flood(server, n) if mode == "udp" else tcp_flood(server, n, sys.argv[4], float(sys.argv[5]))
print(json.dumps(out), flush=True)
"#;

const POLICY: &str = common::API_POLICY;

/// `portcullis exec`'s record rate limit (`events_per_sec`, `events_burst`).
const PER_SEC: u64 = 50;
const BURST: u64 = 200;
/// Connections per TCP gate (`proxy::tcp::MAX_CONNS`).
const MAX_CONNS: u64 = 32;

/// The count on the agent's final `portcullis: N <what>` line, if any.
fn final_count(stderr: &str, what: &str) -> Option<u64> {
    stderr.lines().find_map(|l| l.strip_prefix("portcullis: ")?.strip_suffix(what)?.trim().parse().ok())
}

/// A node config with one endpoint per (name, cgroup), same policy.
fn node_config(log: &Path, endpoints: &[(&str, &Path)]) -> String {
    let mut cfg = format!("log: {}\nendpoints:\n", log.display());
    for (name, cg) in endpoints {
        cfg += &format!(
            "  - name: {name}\n    cgroup: {}\n    policy:\n      egress:\n        - toFQDNs: [{{matchName: api.example.test}}]\n          ports: [{{port: 443}}]\n      dns:\n        servers: [\"198.51.100.53\"]\n",
            cg.display()
        );
    }
    cfg
}

/// `flood.py udp 198.51.100.53 N` from cgroup `cg`, in the pod.
fn flood_from(bench: &Bench, cg: &Path, n: u64) -> Value {
    let flood = client(bench, "flood.py", FLOOD_PY);
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {} {} {} udp 198.51.100.53 {n}",
        cg.display(),
        bench.pod_ns_name("pod"),
        portcullis_tests::servers::python().display(),
        flood.display()
    ));
    let ran = run_with_deadline(bench.workdir(), c, Duration::from_secs(20));
    assert_eq!(ran.code, 0, "{ran:?}");
    serde_json::from_str(ran.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {ran:?}"))
}

/// The tests, in a module named after the file so that
/// `cargo xtask test --filter dns_flood` selects them.
mod dns_flood {
    use super::*;

    #[test]
    fn a_flood_of_refused_names_is_logged_within_the_rate_limit_and_the_rest_counted() {
        if !require_root() {
            return;
        }
        let bench = Bench::start().unwrap();
        let flood = client(&bench, "flood.py", FLOOD_PY);
        let sent = 3000;
        let r =
            Exec::new(&bench).policy(POLICY).steps(&[("flood", &format!("$PY {} udp 198.51.100.53 {sent}", flood.display()))]);
        r.outcome.expect_code(0);
        let step = r.get("flood");
        let out: Value = serde_json::from_str(step.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {step:?}"));
        assert_eq!(out["nxdomain"], sent, "every refused name gets NXDOMAIN: {out}");
        let records = r.log().records.iter().filter(|rec| rec["reason"] == "denied-dns-name").count() as u64;
        let secs = step.ms.div_ceil(1000) + 1;
        let bound = BURST + PER_SEC * secs;
        println!("{sent} refused queries in {} ms: {records} records (bound {bound})", step.ms);
        assert!(records >= BURST, "the burst is logged: {records}");
        assert!(records <= bound, "{records} records for {sent} refused queries in {} ms: over {bound}", step.ms);
        assert!(records < sent, "the limit held records back");
        // Every refused query is either logged or counted.
        let stderr = &r.outcome.ran.stderr;
        let suppressed = final_count(stderr, "DNS-gate records (refused names, rebinding) suppressed by the rate limit");
        assert_eq!(suppressed, Some(sent - records), "agent stderr:\n{stderr}");
    }

    #[test]
    fn idle_tcp_connections_add_no_threads_and_a_real_tcp_query_is_still_answered() {
        if !require_root() {
            return;
        }
        let bench = Bench::start().unwrap();
        let flood = client(&bench, "flood.py", FLOOD_PY);
        let idle = 150;
        let r = Exec::new(&bench)
            .policy(POLICY)
            .limit(Duration::from_secs(60))
            .steps(&[("tcp", &format!("$PY {} tcp 198.51.100.53 {idle} api.example.test 11", flood.display()))]);
        r.outcome.expect_code(0);
        let step = r.get("tcp");
        let out: Value = serde_json::from_str(step.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {step:?}"));
        println!("{out}");
        let n = |k: &str| out[k].as_u64().unwrap_or_else(|| panic!("{k}: {out}"));
        // (a) Served by the gate's own thread: no thread per connection.
        assert!(n("during") <= n("before") + 2, "agent threads grew with {idle} idle connections: {out}");
        // (b) A real query on a new connection is answered while they are
        // open (the longest idle one made room for it), and at once.
        let answer = &out["answer"];
        assert_eq!((answer["ok"].as_bool(), answer["rcode"].as_u64()), (Some(true), Some(0)), "{out}");
        assert!(answer["ancount"].as_u64() >= Some(1), "{out}");
        assert!(answer["ms"].as_u64() < Some(2000), "{out}");
        // The gate keeps at most MAX_CONNS; one was the real query's.
        let evicted = idle + 1 - MAX_CONNS;
        assert_eq!(n("closed_now"), evicted, "{out}");
        // The rest end after the idle timeout (10 s), stalled frames too.
        assert_eq!(n("closed_later"), idle, "{out}");
        let stderr = &r.outcome.ran.stderr;
        let what = "idle DNS-over-TCP connections closed to make room under the gate's connection cap";
        assert_eq!(final_count(stderr, what), Some(evicted), "agent stderr:\n{stderr}");
    }

    #[test]
    fn one_endpoint_s_flood_does_not_suppress_another_s_records() {
        if !require_root() {
            return;
        }
        let bench = Bench::start().unwrap();
        let (a, b) = (TestCgroup::create("flood-a"), TestCgroup::create("flood-b"));
        let log = fresh_path(bench.workdir(), "blocked.jsonl");
        let cfg = common::write_file(bench.workdir(), "node.yaml", &node_config(&log, &[("ep-a", &a.path), ("ep-b", &b.path)]));
        let stderr = fresh_path(bench.workdir(), "run.stderr");
        let mut c = agent_cmd();
        c.args(["run", "--config"])
            .arg(&cfg)
            .env("PORTCULLIS_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let mut agent = ChildGuard::spawn(c).unwrap();
        wait_for("portcullis run to be ready", Duration::from_secs(10), || {
            if let Some(st) = agent.try_wait().unwrap() {
                panic!("run exited early ({st}): {}", std::fs::read_to_string(&stderr).unwrap());
            }
            std::fs::read_to_string(&stderr).unwrap_or_default().contains("\"ready\"").then_some(())
        });
        let sent_a = 3000;
        let fa = flood_from(&bench, &a.path, sent_a);
        // Right after A's flood, while A's bucket is empty: B's own bucket.
        let sent_b = 50;
        let fb = flood_from(&bench, &b.path, sent_b);
        // SAFETY: kill(2) on our own, not yet reaped child.
        assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) }, 0);
        wait_for("run to exit", Duration::from_secs(10), || agent.try_wait().unwrap());
        let log = Log::read(&log);
        let refused =
            |ep: &str| log.records.iter().filter(|r| r["reason"] == "denied-dns-name" && r["endpoint"] == ep).count() as u64;
        let (ra, rb) = (refused("ep-a"), refused("ep-b"));
        println!("ep-a: {sent_a} refused in {:.3} s, {ra} records; ep-b: {sent_b} refused, {rb} records", fa["secs"]);
        assert_eq!((fa["nxdomain"].as_u64(), fb["nxdomain"].as_u64()), (Some(sent_a), Some(sent_b)), "{fa} {fb}");
        let secs = fa["secs"].as_f64().unwrap().ceil() as u64 + 1;
        assert!((BURST..=BURST + PER_SEC * secs).contains(&ra), "ep-a: {ra} records");
        assert_eq!(rb, sent_b, "ep-b's records are its own to lose:\n{}", log.raw);
    }
}

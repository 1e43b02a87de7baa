//! The ClickHouse output end to end, against Debian's real
//! `clickhouse-server` (18.16) on loopback with deploy/clickhouse/schema.sql
//! loaded: two `portcullis run` agents on the bench as two nodes (their
//! own node names, cgroups and pod namespaces) send their blocked records
//! and their allowed traffic per minute; ClickHouse is killed in the
//! middle and started again. Node A (a buffer large enough) loses nothing:
//! every record its files hold arrives, exactly once. Node B (a buffer of
//! 4 records) loses what did not fit, and its drop counter says exactly
//! how many. Then `portcullis blocked --clickhouse` with the filters people
//! use answers across both nodes what the nodes' files answer, in table,
//! JSON and compact form; the per-minute tables hold the allowed
//! connections and names; the retention script drops old days only.

mod common;

use common::{TestCgroup, agent_cmd, fresh_path, run_with_deadline, scrape, series, wait_for};
use portcullis_tests::{
    Bench, ChildGuard,
    clickhouse::{ClickHouse, PASSWORD, USER, server_bin},
    require_root,
};
use serde_json::Value;
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/clickhouse/schema.sql");
const RETENTION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/clickhouse/drop-old-partitions.sh");
const CURL: &str = "curl -sS -4 --max-time 3";
/// The rule the allowed connections are counted under.
const RULE: &str = "egress[0] toFQDNs api.example.test ports 443/tcp";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One node: `portcullis run` with its own node name, cgroup, pod
/// namespace, blocked-log file and metrics port.
struct Node {
    name: &'static str,
    pod_ns: String,
    cg: TestCgroup,
    log: PathBuf,
    metrics: SocketAddr,
    stderr: PathBuf,
    child: ChildGuard,
}

impl Node {
    fn start(bench: &Bench, name: &'static str, pod: &str, ch: &ClickHouse, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let cg = TestCgroup::create(name);
        let log = fresh_path(bench.workdir(), &format!("{name}.blocked.jsonl"));
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = format!(
            "log: {log}\nmetricsAddr: {metrics}\nendpoints:\n  - name: {name}-ep\n    namespace: team-{name}\n    pod: pod-{name}\n    cgroup: {cg}\n    policy:\n      egress:\n        - toFQDNs: [{{matchName: api.example.test}}]\n          ports: [{{port: 443}}]\n      dns:\n        servers: [\"198.51.100.53\"]\n",
            log = log.display(),
            cg = cg.path.display()
        );
        let cfg = common::write_file(bench.workdir(), &format!("{name}.yaml"), &cfg);
        let stderr = fresh_path(bench.workdir(), &format!("{name}.stderr"));
        let mut c = agent_cmd();
        c.args(["run", "--config"])
            .arg(&cfg)
            .args(["--node-name", &format!("node-{name}"), "--clickhouse-url", &ch.url(), "--clickhouse-user", USER])
            .args(["--clickhouse-flush-interval", "300ms"])
            .args(extra)
            .envs(env.iter().copied())
            .env("PORTCULLIS_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let mut child = ChildGuard::spawn(c).unwrap();
        wait_for("portcullis run to be ready", Duration::from_secs(15), || {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("run exited early ({st}): {}", std::fs::read_to_string(&stderr).unwrap());
            }
            std::fs::read_to_string(&stderr).unwrap_or_default().contains("\"message\":\"ready\"").then_some(())
        });
        Self { name, pod_ns: bench.pod_ns_name(pod).to_owned(), cg, log, metrics, stderr, child }
    }

    /// `ARGV` in this node's pod (its cgroup, its network namespace).
    fn run(&self, bench: &Bench, argv: &str) -> i32 {
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "echo $$ > {}/cgroup.procs && exec ip netns exec {} {argv}",
            self.cg.path.display(),
            self.pod_ns
        ));
        run_with_deadline(bench.workdir(), c, Duration::from_secs(10)).code
    }

    /// The records its blocked-log file holds.
    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// `portcullis_clickhouse_records_total{table="blocked",outcome}`.
    fn outcome(&self, outcome: &str) -> u64 {
        let text = scrape(self.metrics);
        series(&text, &format!("portcullis_clickhouse_records_total{{table=\"blocked\",outcome=\"{outcome}\"}}"))
            .unwrap_or_else(|| panic!("no {outcome} series:\n{text}")) as u64
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own, not yet reaped child.
        assert_eq!(unsafe { libc::kill(self.child.pid() as i32, libc::SIGTERM) }, 0);
        let st = wait_for("run to exit", Duration::from_secs(15), || self.child.try_wait().unwrap());
        assert_eq!(st.code(), Some(0), "{}", std::fs::read_to_string(&self.stderr).unwrap());
    }
}

/// Rows of `node` in the blocked table.
fn rows(ch: &ClickHouse, node: &str) -> u64 {
    ch.number(&format!("SELECT count() FROM portcullis.blocked WHERE node = '{node}'"))
}

/// Waits until ClickHouse holds every record of node `n`'s file (with
/// `lossless` false: but for those its drop counter counts); (records
/// written, rows, dropped).
fn settled(ch: &ClickHouse, n: &Node, lossless: bool) -> (u64, u64, u64) {
    wait_for(&format!("node {}'s records in ClickHouse", n.name), Duration::from_secs(15), || {
        let (file, held) = (n.records().len() as u64, rows(ch, &format!("node-{}", n.name)));
        let dropped = if lossless { 0 } else { n.outcome("dropped") };
        (held + dropped == file && held > 0).then_some((file, held, dropped))
    })
}

/// `portcullis blocked ARGS` (exit 0), with the ClickHouse password in the
/// environment when `--clickhouse` is given.
fn blocked(bench: &Bench, args: &[&str]) -> String {
    let mut c = agent_cmd();
    c.arg("blocked").args(args).env("PORTCULLIS_CLICKHOUSE_PASSWORD", PASSWORD);
    let r = run_with_deadline(bench.workdir(), c, Duration::from_secs(10));
    assert_eq!(r.code, 0, "portcullis blocked {args:?}: {}", r.stderr);
    // The SQL matched exactly what the filters match (the CLI checks
    // every row again and says when they disagree).
    assert!(!r.stderr.contains("did not match"), "portcullis blocked {args:?}: {}", r.stderr);
    r.stdout
}

fn json_set(text: &str) -> BTreeSet<String> {
    text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")).to_string()).collect()
}

/// The same filters over both nodes' files and over ClickHouse: ClickHouse
/// answers exactly the records of the files' answers that it holds.
fn same_answer(bench: &Bench, ch: &ClickHouse, a: &Node, b: &Node, held: &BTreeSet<String>, filters: &[&str]) -> usize {
    let mut from_files = BTreeSet::new();
    for n in [a, b] {
        let mut args = vec!["--file", n.log.to_str().unwrap(), "-o", "json", "--last", "100000"];
        args.extend_from_slice(filters);
        from_files.extend(json_set(&blocked(bench, &args)));
    }
    let want: BTreeSet<String> = from_files.intersection(held).cloned().collect();
    let url = ch.url();
    let mut args = vec!["--clickhouse", &url, "--clickhouse-user", USER, "-o", "json", "--last", "100000"];
    args.extend_from_slice(filters);
    let got = json_set(&blocked(bench, &args));
    assert_eq!(got, want, "filters {filters:?}");
    got.len()
}

#[test]
fn two_nodes_send_to_clickhouse_through_a_restart_and_blocked_queries_both() {
    if !require_root() {
        return;
    }
    let Some(bin) = server_bin() else { return };
    let t0 = Instant::now();
    let bench = Bench::builder().pods(&["pa", "pb"]).start().unwrap();
    let (mut ch, startup) = ClickHouse::start(&bin, &bench.workdir().join("clickhouse")).unwrap();
    ch.client_file(Path::new(SCHEMA), &["--allow_experimental_low_cardinality_type=1"]).unwrap();
    eprintln!("clickhouse-server answered after {startup:?}; schema loaded at {:?}", t0.elapsed());

    let password_file = common::write_file(bench.workdir(), "ch-password", &format!("{PASSWORD}\n"));
    let a = Node::start(
        &bench,
        "a",
        "pa",
        &ch,
        &["--clickhouse-password-file", password_file.to_str().unwrap(), "--blocked-log-fold", "1s"],
        &[],
    );
    let b = Node::start(
        &bench,
        "b",
        "pb",
        &ch,
        &["--clickhouse-buffer-records", "4"],
        &[("PORTCULLIS_CLICKHOUSE_PASSWORD", PASSWORD)],
    );

    // Allowed traffic, and blocked attempts of every kind, from both pods.
    let mut allowed = 0;
    for n in [&a, &b] {
        for _ in 0..2 {
            assert_eq!(n.run(&bench, &format!("{CURL} http://api.example.test:443/")), 0);
        }
        assert_eq!(n.run(&bench, &format!("{CURL} http://api.example.test:80/")), 7);
        assert_eq!(n.run(&bench, &format!("{CURL} http://169.254.169.254/")), 7);
        assert_eq!(n.run(&bench, &format!("{CURL} http://other.example.test:443/")), 6);
    }
    allowed += 2;
    // Node A again twice: folded into one record (count 2, first and last)
    // when its 1 s window ends.
    for _ in 0..2 {
        assert_eq!(a.run(&bench, &format!("{CURL} http://api.example.test:80/")), 7);
    }
    wait_for("the folded record", Duration::from_secs(10), || a.records().iter().any(|r| r["count"] == 2).then_some(()));
    let (file_a, _, _) = settled(&ch, &a, true);
    settled(&ch, &b, false);
    assert_eq!(file_a, 4, "{:?}", a.records());

    // ClickHouse crashes; both nodes keep being blocked while it is down.
    ch.kill();
    let down = Instant::now();
    for port in 1001..=1006 {
        assert_eq!(a.run(&bench, &format!("{CURL} http://203.0.113.20:{port}/")), 7);
    }
    for port in 2001..=2010 {
        assert_eq!(b.run(&bench, &format!("{CURL} http://203.0.113.21:{port}/")), 7);
    }
    for n in [&a, &b] {
        assert_eq!(n.run(&bench, &format!("{CURL} http://api.example.test:443/")), 0);
    }
    allowed += 1;
    wait_for("both nodes to have failed a batch", Duration::from_secs(10), || {
        (a.outcome("retried") > 0 && b.outcome("retried") > 0).then_some(())
    });
    let restart = ch.restart().unwrap();
    eprintln!("ClickHouse was down {:?}; it answered {restart:?} after its restart", down.elapsed());

    // Node A: everything, exactly once. Node B: what its 4 records held;
    // the rest is counted.
    let (file_a, held_a, _) = settled(&ch, &a, true);
    assert_eq!(file_a, 4 + 6);
    assert_eq!((a.outcome("sent"), a.outcome("dropped")), (held_a, 0));
    let (file_b, held_b, dropped_b) = settled(&ch, &b, false);
    assert_eq!(file_b, 3 + 10);
    assert!(dropped_b >= 6, "10 attempts into a buffer of 4 while ClickHouse was away: {dropped_b} dropped");
    assert_eq!(b.outcome("sent"), held_b);
    let distinct = ch.number("SELECT uniqExact(node, endpoint, time_ms, dst, dport, reason) FROM portcullis.blocked");
    assert_eq!(distinct, held_a + held_b, "no record twice");
    eprintln!(
        "records: node A {file_a} written, {held_a} in ClickHouse; node B {file_b} written, {held_b} in ClickHouse, {dropped_b} dropped"
    );

    // The same filters over the files and over ClickHouse.
    let url = ch.url();
    let everything = blocked(&bench, &["--clickhouse", &url, "--clickhouse-user", USER, "-o", "json", "--last", "100000"]);
    let held = json_set(&everything);
    assert_eq!(held.len() as u64, held_a + held_b);
    let nodes: BTreeSet<String> =
        held.iter().map(|r| serde_json::from_str::<Value>(r).unwrap()["node"].as_str().unwrap().to_owned()).collect();
    assert_eq!(nodes, BTreeSet::from(["node-a".to_owned(), "node-b".to_owned()]));
    let cases: [(&[&str], Option<usize>); 12] = [
        (&[], Some((held_a + held_b) as usize)),
        (&["--reason", "denied-range"], Some(2)),
        (&["--reason", "denied-range", "--reason", "denied-dns-name"], Some(4)),
        (&["-n", "team-a"], Some(held_a as usize)),
        (&["--pod", "team-b/pod-"], Some(held_b as usize)),
        (&["--pod", "pod-a", "--port", "80"], Some(3)),
        (&["--host", "*.EXAMPLE.test"], Some(5)),
        (&["--host", "api.example.tes?"], Some(3)),
        (&["--to-ip", "203.0.113.0/24"], None),
        (&["--to-ip", "203.0.113.20/32", "--port", "1003"], Some(1)),
        (&["--verdict", "audit"], Some(0)),
        (&["--since", "10m", "--until", "2100-01-01T00:00:00Z", "--verdict", "blocked"], Some((held_a + held_b) as usize)),
    ];
    for (filters, n) in cases {
        let got = same_answer(&bench, &ch, &a, &b, &held, filters);
        if let Some(n) = n {
            assert_eq!(got, n, "{filters:?}");
        }
    }
    assert_eq!(same_answer(&bench, &ch, &a, &b, &held, &["--until", "2000-01-01T00:00:00Z"]), 0);
    // Hostile input stays a literal: it matches nothing and breaks nothing.
    for hostile in ["x' OR '1'='1", "pod-a\\' OR 1=1 --", "%", "_"] {
        assert_eq!(same_answer(&bench, &ch, &a, &b, &held, &["--pod", hostile]), 0, "{hostile}");
    }

    // The table a person reads: a NODE column, both nodes, the total.
    let table = blocked(&bench, &["--clickhouse", &url, "--clickhouse-user", USER, "--reason", "denied-range"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TIME (UTC)") && lines[0].contains("  NODE  ") && lines[0].contains("POD"), "{table}");
    for (node, pod) in [("node-a", "team-a/pod-a"), ("node-b", "team-b/pod-b")] {
        let row = lines.iter().find(|l| l.contains(node)).unwrap_or_else(|| panic!("{node}:\n{table}"));
        assert!(
            row.contains(pod) && row.contains("denied-range (metadata)") && row.contains("169.254.169.254:80/tcp"),
            "{table}"
        );
    }
    assert!(table.ends_with("2 attempts in 2 records; 0 attempts lost to the rate limit\n"), "{table}");
    let compact =
        blocked(&bench, &["--clickhouse", &url, "--clickhouse-user", USER, "-o", "compact", "--reason", "denied-dns-name"]);
    assert_eq!(compact.lines().count(), 2, "{compact}");
    assert!(
        compact.contains("[node-a]: team-a/pod-a") && compact.contains("other.example.test (DNS lookup, nxdomain)"),
        "{compact}"
    );
    // --last: the newest across both nodes.
    let last = blocked(&bench, &["--clickhouse", &url, "--clickhouse-user", USER, "-o", "json", "--last", "3"]);
    let newest: Vec<String> = {
        let mut t: Vec<String> = held.iter().map(|r| time_of(r)).collect();
        t.sort_unstable();
        t.split_off(t.len() - 3)
    };
    assert_eq!(last.lines().map(time_of).collect::<Vec<_>>(), newest, "{last}");
    // A wrong password is an error, not an empty answer.
    let mut c = agent_cmd();
    c.args(["blocked", "--clickhouse", &url, "--clickhouse-user", USER]).env("PORTCULLIS_CLICKHOUSE_PASSWORD", "wrong");
    let r = run_with_deadline(bench.workdir(), c, Duration::from_secs(10));
    assert!(r.code == 1 && r.stderr.contains("Wrong password"), "{r:?}");

    // Stopped, each node writes the minute so far: the allowed connections
    // per policy entry and the names its pod resolved.
    a.stop();
    b.stop();
    for (node, pod) in [("node-a", "pod-a"), ("node-b", "pod-b")] {
        let conns = ch.number(&format!(
            "SELECT sum(allowed_connections_and_datagrams) FROM portcullis.allowed_by_rule WHERE node = '{node}' AND pod = '{pod}' AND rule = '{RULE}'"
        ));
        assert_eq!(conns, allowed, "{node}");
        let other =
            ch.number(&format!("SELECT count() FROM portcullis.allowed_by_rule WHERE node = '{node}' AND rule != '{RULE}'"));
        assert_eq!(other, 0, "{node}");
        // Every curl to api.example.test looked it up once (allowed, on
        // 443 or not); other.example.test is refused, never an allowed lookup.
        let names = ch
            .query(&format!(
                "SELECT name, ports, sum(lookups_answered), sum(addresses_learned) FROM portcullis.names_resolved \
             WHERE node = '{node}' AND pod = '{pod}' GROUP BY name, ports FORMAT TSV"
            ))
            .unwrap();
        let n = allowed + if node == "node-a" { 3 } else { 1 };
        assert_eq!(names.trim(), format!("api.example.test\t443/tcp\t{n}\t{n}"), "{node}");
        // Per destination name and port: every allowed connection, under
        // the name the pod resolved to the address it reached.
        let flows = ch
            .query(&format!(
                "SELECT destination, port, protocol, sum(connections) FROM portcullis.allowed_flows \
             WHERE node = '{node}' AND pod = '{pod}' GROUP BY destination, port, protocol FORMAT TSV"
            ))
            .unwrap();
        assert_eq!(flows.trim(), format!("api.example.test\t443\ttcp\t{allowed}"), "{node}");
    }
    eprintln!("{allowed} allowed connections per node in allowed_by_rule");
    // The on-call queries of deploy/README.md, for node A's pod.
    for sql in on_call_queries() {
        let sql = sql.replace("'ws-globex'", "'team-a'").replace("'agent-0'", "'pod-a'");
        let answer = ch.query(&sql).unwrap_or_else(|e| panic!("deploy/README.md's query fails: {e}"));
        assert!(!answer.trim().is_empty(), "no answer to {sql}");
    }

    // Retention without TTL (18.16): a day older than 30 days goes, today stays.
    ch.query(
        "INSERT INTO portcullis.blocked (time, node, kind) VALUES (toDateTime('2020-01-01 00:00:00'), 'node-old', 'attempt')",
    )
    .unwrap();
    let out = Command::new("sh").arg(RETENTION).arg("30").env("CLICKHOUSE_CLIENT", ch.client_command()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("dropping portcullis.blocked partition 20200101"));
    assert_eq!(rows(&ch, "node-old"), 0);
    assert_eq!(rows(&ch, "node-a"), held_a);
    eprintln!("the whole test took {:?}", t0.elapsed());
}

/// The SQL block of deploy/README.md that reads the tables, statement by
/// statement.
fn on_call_queries() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/README.md")).unwrap();
    let block = doc
        .split("```sql")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("FROM portcullis.blocked"))
        .expect("the on-call SQL in deploy/README.md");
    let code: String = block.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    let out: Vec<String> = code.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    assert_eq!(out.len(), 4, "{out:?}");
    out
}

/// A record's time (RFC 3339 in UTC with milliseconds: sorts as text).
fn time_of(record: &str) -> String {
    let v: Value = serde_json::from_str(record).unwrap();
    v["time"].as_str().unwrap().to_owned()
}

//! `portcullis run --pin-path`: enforcement outlives the agent, a restarted
//! agent adopts the pinned state and its learned names, and a new agent
//! takes over from a running one (a DaemonSet rolling update with
//! `maxSurge: 1`) with no failed lookup and no broken connection.

mod common;

use common::{
    TestCgroup, agent_cmd, attached, fresh_path,
    pins::{NodeAgent, PinDir, hex_bytes, in_cgroup_cmd},
    run_with_deadline,
};
use portcullis_tests::{Bench, ChildGuard, require_root, servers::python};
use serde_json::Value;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const TAKEOVER_PY: &str = include_str!("../clients/takeover.py");

fn config(log: &Path, cg: &Path) -> String {
    format!(
        r#"log: {log}
endpoints:
  - name: pinned-ep
    namespace: team-a
    pod: pod-a
    cgroup: {cg}
    policy:
      egress:
        - toFQDNs: [{{matchName: api.example.test}}]
          ports: [{{port: 443}}, {{port: 7}}]
        - toFQDNs: [{{matchPattern: "*.test"}}, {{matchName: ok.example.test}}]
          ports: [{{port: 443}}]
      dns:
        servers: ["198.51.100.53", "198.51.100.54"]
"#,
        log = log.display(),
        cg = cg.display()
    )
}

fn curl(bench: &Bench, cg: &Path, url: &str) -> (i32, String) {
    let c = in_cgroup_cmd(bench, cg, &format!("curl -sS --max-time 3 {url}"));
    let r = run_with_deadline(bench.workdir(), c, Duration::from_secs(10));
    (r.code, r.stdout)
}

/// The verdict cache of the attach point `cg`: in node mode with pins each
/// attach point's cached socket hooks are a load of their own, whose cache
/// is pinned next to the links (agent/src/ebpf/solo.rs). Its map id and the
/// connect4 value (index 0) of each CPU, as bytes.
fn solo_cache(pins: &PinDir, cg: &Path) -> (u64, Vec<Vec<u8>>) {
    use std::os::unix::fs::MetadataExt as _;
    let cgroup_id = std::fs::metadata(cg).unwrap().ino();
    let pin = pins.0.join(format!("links/{cgroup_id}-SOLO_CACHE@1"));
    assert!(pin.exists(), "{} not pinned", pin.display());
    let id = common::bpftool_json(&["map", "show", "pinned", pin.to_str().unwrap()])["id"].as_u64().unwrap();
    let dump = common::bpftool_json(&["map", "dump", "pinned", pin.to_str().unwrap()]);
    let entry = dump.as_array().unwrap().iter().find(|e| hex_bytes(&e["key"]) == [0, 0, 0, 0]).expect("key 0");
    let values = entry["values"].as_array().expect("per-CPU values").iter().map(|v| hex_bytes(&v["value"])).collect();
    (id, values)
}

/// Whether some CPU's cache is on (endpoint != 0) and holds `ip` (the slot's
/// address words: the IPv4-mapped address bytes in order).
fn caches(values: &[Vec<u8>], ip: [u8; 4]) -> bool {
    let needle = [0, 0, 0xff, 0xff, ip[0], ip[1], ip[2], ip[3]];
    values.iter().any(|v| v[..4] != [0; 4] && v.windows(8).any(|w| w == needle))
}

fn setup(tag: &str, echo: bool) -> (Bench, TestCgroup, PinDir, PathBuf, PathBuf) {
    let bench = Bench::builder().race_names(true).tcp_echo(echo).bad_dns(echo).start().unwrap();
    let cg = TestCgroup::create(tag);
    let pins = PinDir::new(tag);
    let state = bench.workdir().join("state");
    let log = fresh_path(bench.workdir(), "blocked.jsonl");
    let cfg = common::write_file(bench.workdir(), "node.yaml", &config(&log, &cg.path));
    (bench, cg, pins, state, cfg)
}

#[test]
fn pinned_enforcement_outlives_the_agent_and_a_restart_adopts_it() {
    if !require_root() {
        return;
    }
    let (bench, cg, pins, state, cfg) = setup("pinrestart", false);
    // Metrics, to see the per-pod counts go on over the restart.
    let metrics: std::net::SocketAddr =
        format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
            .parse()
            .unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replacen("endpoints:", &format!("metricsAddr: {metrics}\nendpoints:"), 1);
    std::fs::write(&cfg, text).unwrap();
    let pod = r#"source_namespace="team-a",source_pod="pod-a""#;
    let conn = |reason: &str| {
        let verdict = if reason.starts_with("allowed") { "allowed" } else { "denied" };
        format!(r#"portcullis_connections_total{{{pod},kind="connection",verdict="{verdict}",reason="{reason}"}}"#)
    };
    let mut a = NodeAgent::start(&bench, &cfg, &pins, &state);
    let first = attached(&cg.path);
    first.expect_all_hooks();
    let hello = "hello from 203.0.113.10:443\n".to_owned();
    assert_eq!(curl(&bench, &cg.path, "-4 http://api.example.test:443/"), (0, hello.clone()));
    // The pod's connect hooks use a cache of their own, and it works.
    assert_eq!(curl(&bench, &cg.path, "http://203.0.113.10:443/"), (0, hello.clone()));
    let (cache_a, values) = solo_cache(&pins, &cg.path);
    assert!(first.prog_uses("pc_connect4", cache_a), "connect4 must use the attach point's own cache");
    assert!(caches(&values, [203, 0, 113, 10]), "the allowance was cached");
    // Let the snapshot (about once a second) see the learned name: a crash
    // loses at most that second.
    std::thread::sleep(Duration::from_millis(1500));
    let text = common::scrape(metrics);
    assert_eq!(common::series(&text, &conn("allowed-fqdn")), Some(2.0), "{text}");
    let forwarded = format!(r#"portcullis_dns_queries_total{{{pod},decision="forwarded",rcode="NOERROR"}}"#);
    let dns_before = common::series(&text, &forwarded).unwrap();
    assert!(dns_before >= 1.0, "{text}");

    a.sigkill();
    // Down: the pinned programs still enforce. The learned address works
    // for a new connection; everything else stays denied.
    let att = attached(&cg.path);
    att.expect_all_hooks();
    assert_eq!(curl(&bench, &cg.path, "http://203.0.113.10:443/"), (0, hello.clone()), "learned IP while down");
    for url in ["http://169.254.169.254/", "http://203.0.113.20:443/", "http://10.96.0.10/"] {
        assert_eq!(curl(&bench, &cg.path, url).0, 7, "{url} while the agent is down");
    }

    // Restarted: adopts the pins (same programs' maps, the learned name).
    let mut b = NodeAgent::start(&bench, &cfg, &pins, &state);
    let adopted = b.wait_message("adopted learned names");
    assert!(adopted["pairs"].as_u64().unwrap() >= 1, "{adopted}");
    // The per-pod counts went on (pinned, counted by the kernel while no
    // agent ran): never back to 0. The gate's own (user-space) counts come
    // back from the snapshot.
    let text = common::scrape(metrics);
    assert_eq!(common::series(&text, &conn("allowed-fqdn")), Some(3.0), "{text}");
    assert_eq!(common::series(&text, &conn("denied-range")), Some(2.0), "{text}");
    assert_eq!(common::series(&text, &conn("denied-default")), Some(1.0), "{text}");
    let range = |r: &str| format!(r#"portcullis_denied_range_total{{{pod},range="{r}"}}"#);
    assert_eq!(common::series(&text, &range("metadata")), Some(1.0), "{text}");
    assert_eq!(common::series(&text, &range("private")), Some(1.0), "{text}");
    assert!(common::series(&text, &forwarded).unwrap() >= dns_before, "{text}");
    let after = attached(&cg.path);
    after.expect_all_hooks();
    assert_eq!(after.shared_maps, att.shared_maps, "a restart must keep the pinned maps");
    // ...and swaps in its own per-attach-point load, whose cache starts
    // off and is turned on; the previous one is unpinned.
    let (cache_b, values) = solo_cache(&pins, &cg.path);
    assert_ne!(cache_b, cache_a, "a new load, a new cache");
    assert!(after.prog_uses("pc_connect4", cache_b));
    assert!(values.iter().any(|v| v[..4] != [0; 4]), "the new cache is on");
    assert_eq!(curl(&bench, &cg.path, "http://203.0.113.10:443/"), (0, hello.clone()));
    assert_eq!(curl(&bench, &cg.path, "-4 http://api.example.test:443/"), (0, hello));
    assert_eq!(curl(&bench, &cg.path, "-4 http://race-7.test:443/").0, 0, "a new name learns");
    assert_eq!(curl(&bench, &cg.path, "http://169.254.169.254/").0, 7);
    // The restarted agent's explain agrees with what its adopted state did.
    let who = common::agree::Who::Endpoint("pinned-ep");
    for (ip, port, connected) in [("203.0.113.10", 443, true), ("169.254.169.254", 80, false)] {
        common::agree::expect_same(&state, &who, false, ip, port, connected);
    }

    // A clean stop leaves enforcement pinned; `unpin` ends it.
    b.sigterm();
    attached(&cg.path).expect_all_hooks();
    assert_eq!(curl(&bench, &cg.path, "http://203.0.113.20:443/").0, 7);
    let mut c = agent_cmd();
    c.arg("unpin").arg("--pin-path").arg(&pins.0).arg("--state-dir").arg(&state);
    let r = run_with_deadline(bench.workdir(), c, Duration::from_secs(10));
    assert_eq!(r.code, 0, "{r:?}");
    att.expect_detached();
    assert!(!state.join("state.json").exists());
}

#[test]
fn a_new_agent_takes_over_without_a_failed_lookup_or_a_broken_connection() {
    let Some(took) = takeover_under_load("takeover", false) else { return };
    // Through the gates, nothing was pending on the ring path.
    assert!(took["pending"].is_u64(), "{took}");
}

/// The same with DNS gates off (`dnsGates: false`): every query and answer
/// goes through the kernel's hold ring, so answers to queries the old agent
/// read arrive after the new one took over, and are paired only through the
/// handed-over pending queries.
#[test]
fn a_takeover_on_the_hold_path_hands_over_pending_queries() {
    let Some(took) = takeover_under_load("takeoverhold", true) else { return };
    assert!(took["pending"].as_u64().unwrap() >= 1, "{took}");
}

/// An upgrade: the previous release (pinned layout `v3`) runs, and this
/// build takes over from it in place under the same load: no failed
/// lookup, no refused connect, no broken connection; the old layout's pins
/// are gone once the new programs enforce, and the maps (the same kernel
/// objects, so learned state and counters) carry over.
#[test]
fn an_upgrade_takes_over_the_previous_releases_layout_with_no_failure() {
    if !require_root() {
        return;
    }
    let Some(previous) = common::pins::previous_release() else { return };
    let checked = std::cell::Cell::new(false);
    let ids = std::cell::RefCell::new(Vec::new());
    let id_of = |p: &Path| common::bpftool_json(&["map", "show", "pinned", p.to_str().unwrap()])["id"].as_u64().unwrap();
    // The hold path (no namespace gates): answers the old programs held in
    // the old ring must reach the new agent.
    let took = takeover_under_load_from("upgrade", true, Some(&previous), &|pins, before: bool| {
        let legacy = pins.0.join(common::pins::LEGACY_LAYOUT);
        // LEARNED changed its value (version 2): a new map, filled from
        // the handover; the others are adopted as they are.
        let maps = ["COUNTERS", "DNS_HOLD", "SK_FLOWS"];
        if before {
            assert!(legacy.join("maps/LEARNED").exists(), "the previous release pins its own layout");
            assert!(!pins.map("LEARNED").exists());
            let mut v: Vec<u64> = maps.iter().map(|m| id_of(&legacy.join("maps").join(m))).collect();
            v.push(id_of(&legacy.join("maps/LEARNED")));
            *ids.borrow_mut() = v;
        } else {
            assert!(!legacy.exists(), "the previous layout's pins are left: {}", legacy.display());
            let now: Vec<u64> = maps.iter().map(|m| id_of(&pins.map(m))).collect();
            assert_eq!(now, ids.borrow()[..maps.len()], "the maps of {maps:?} are the same kernel objects");
            assert_ne!(id_of(&pins.map("LEARNED")), ids.borrow()[maps.len()], "LEARNED@2 is a map of its own");
            checked.set(true);
        }
    });
    let Some(took) = took else { return };
    assert!(took["learned"].as_u64().unwrap() > 0, "learned state handed over: {took}");
    assert!(checked.get());
}

/// Runs a takeover under a resolve-and-connect loop; asserts no failure and
/// returns the new agent's "took over" log fields.
fn takeover_under_load(tag: &str, no_gates: bool) -> Option<Value> {
    takeover_under_load_from(tag, no_gates, None, &|_, _| {})
}

/// The same, with the old agent from `old_bin` (default: this build);
/// `check` looks at the pins before the new agent starts and after it is
/// ready.
fn takeover_under_load_from(tag: &str, no_gates: bool, old_bin: Option<&Path>, check: &dyn Fn(&PinDir, bool)) -> Option<Value> {
    if !require_root() {
        return None;
    }
    let (bench, cg, pins, state, cfg) = setup(tag, true);
    if no_gates {
        let text = std::fs::read_to_string(&cfg).unwrap().replacen("endpoints:", "dnsGates: false\nendpoints:", 1);
        std::fs::write(&cfg, text).unwrap();
    }
    let mut old = NodeAgent::start_bin(old_bin, &bench, &cfg, &pins, &state);
    check(&pins, true);
    // Answers 300 ms late: two client threads keep a query to it in flight.
    bench.set_bad_dns_mode("slow").unwrap();
    let script = common::client(&bench, "takeover.py", TAKEOVER_PY);
    let mut c = in_cgroup_cmd(
        &bench,
        &cg.path,
        &format!(
            "{} {} {} api.example.test 7 443 1 480 2 198.51.100.54",
            python().display(),
            script.display(),
            6 * common::time_scale()
        ),
    );
    c.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut client = ChildGuard::spawn(c).unwrap();
    let mut out = BufReader::new(client.child_mut().stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started", "client: {line:?}");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));

    // The rolling update: the new pod starts while the old one runs...
    let mut new = NodeAgent::start(&bench, &cfg, &pins, &state);
    let took = new.wait_message("took over from the running agent");
    check(&pins, false);
    old.wait_message("handed over to the next agent; enforcement stays pinned");
    std::thread::sleep(Duration::from_millis(500));
    // ...then the old pod is stopped.
    old.sigterm();
    let replaced_at = t0.elapsed();
    let window = Duration::from_secs(5 * u64::from(common::time_scale()));
    assert!(replaced_at < window, "takeover took too long for the client window: {replaced_at:?}");

    line.clear();
    let n = out.read_line(&mut line).unwrap();
    assert!(n > 0, "client printed nothing");
    let r: Value = serde_json::from_str(line.trim()).unwrap();
    eprintln!("takeover: {took}; client: {r}");
    if r["slow_failures"] != 0 {
        eprintln!(
            "old agent:\n{}\nnew agent:\n{}",
            std::fs::read_to_string(&old.stderr).unwrap(),
            std::fs::read_to_string(&new.stderr).unwrap()
        );
    }
    let lookups = r["lookups"].as_u64().unwrap();
    assert!(lookups >= 50, "too few lookups to judge: {r}");
    assert_eq!(r["lookup_failures"], 0, "{r}");
    assert_eq!(r["connect_failures"], 0, "{r}");
    assert!(r["pings"].as_u64().unwrap() >= 50, "{r}");
    assert_eq!(r["ping_failures"], 0, "established connection broken: {r}");
    assert!(r["slow_queries"].as_u64().unwrap() >= 10, "{r}");
    assert_eq!(r["slow_failures"], 0, "{r}");
    // Queries in flight at the takeover were answered: those the old
    // agent's DNS gates had forwarded by the old agent (it drains them
    // before it exits), those on the copy-and-hold path by the new one,
    // paired with the handed-over pending queries (`took["pending"]`).

    // The new agent consumes now: a fresh name still learns, denials hold.
    assert_eq!(curl(&bench, &cg.path, "-4 http://race-499.test:443/").0, 0);
    assert_eq!(curl(&bench, &cg.path, "http://169.254.169.254/").0, 7);
    new.sigterm();
    Some(took)
}

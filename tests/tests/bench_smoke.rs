//! Tests of the bench itself (no agent): topology, DNS, servers, cleanup.
//! All need root; see `require_root`.

use portcullis_tests::{Bench, addr, dns, netns, require_root};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn stdout_of(mut cmd: Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn curl(bench: &Bench, args: &[&str]) -> String {
    let mut cmd = bench.cmd_in_pod("pod", "curl");
    cmd.args(["-sS", "--max-time", "5"]).args(args);
    stdout_of(cmd)
}

fn dig(bench: &Bench, args: &[&str]) -> String {
    let mut cmd = bench.cmd_in_pod("pod", "dig");
    cmd.args(["+time=2", "+tries=1"]).args(args);
    stdout_of(cmd)
}

/// Minimal HTTP/1.0 GET from the calling thread's namespace; returns the body.
fn http_get(to: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap_or_else(|e| panic!("{to}: {e}"));
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.0 200 OK\r\n"), "{resp}");
    resp.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn hello(ip: IpAddr, port: u16) -> String {
    format!("hello from {}\n", SocketAddr::new(ip, port))
}

#[test]
fn pod_reaches_api_by_name_through_bench_dns() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    assert_eq!(curl(&bench, &["-4", "http://api.example.test:443/"]), "hello from 203.0.113.10:443\n");
    assert_eq!(curl(&bench, &["-6", "http://api.example.test:8080/"]), "hello from [2001:db8:100::10]:8080\n");
    assert!(curl(&bench, &["http://api.example.test:443/"]).starts_with("hello from "));
    assert_eq!(curl(&bench, &["-4", "http://api.openai.com/"]), "hello from 203.0.113.10:80\n");
    // The lookups went to the bench's dnsmasq, not the machine's resolver.
    let log = std::fs::read_to_string(bench.dns_log_path()).unwrap();
    assert!(log.contains("api.example.test from 198.18.1.2"), "{log}");
    assert!(log.contains("api.openai.com"), "{log}");
}

#[test]
fn race_names_resolve_and_every_race_address_is_live() {
    if !require_root() {
        return;
    }
    let bench = Bench::builder().race_names(true).start().unwrap();
    assert_eq!(dig(&bench, &["+short", "@198.51.100.53", "race-700.test", "AAAA"]).trim(), "2001:db8:1000::2bc");
    assert_eq!(dig(&bench, &["+short", "@198.51.100.53", "race-7.test"]).trim(), "192.0.2.7");
    let wanted: Vec<u32> = vec![1, 254, 255, 300, 500, 501, 999, 1000];
    bench
        .in_pod("pod", || {
            for n in wanted {
                let ip = dns::race_addr(n);
                let qtype = if ip.is_ipv4() { dns::Qtype::A } else { dns::Qtype::Aaaa };
                let got = dns::query(addr::DNS_V4.into(), &dns::race_name(n), qtype, Duration::from_secs(2)).unwrap();
                assert_eq!(got, vec![ip], "race-{n}");
            }
            // All 1,000 addresses at once, as a race test would use them.
            let mut conns: Vec<(IpAddr, TcpStream)> = (1..=dns::RACE_COUNT)
                .map(|n| {
                    let ip = dns::race_addr(n);
                    let s = TcpStream::connect_timeout(&SocketAddr::new(ip, 8443), Duration::from_secs(3));
                    (ip, s.unwrap_or_else(|e| panic!("{ip}: {e}")))
                })
                .collect();
            for (_, s) in &mut conns {
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            }
            for (ip, s) in &mut conns {
                let mut resp = String::new();
                s.read_to_string(&mut resp).unwrap();
                assert!(resp.ends_with(&hello(*ip, 8443)), "{ip}: {resp}");
            }
        })
        .unwrap();
}

#[test]
fn deny_targets_are_hosts_inside_our_inet_namespace() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    assert_eq!(curl(&bench, &["http://169.254.169.254:80/"]), "hello from 169.254.169.254:80\n");
    assert_eq!(curl(&bench, &["-4", "http://meta.example.test/"]), "hello from 169.254.169.254:80\n");
    for ip in [addr::METADATA_V6.into(), addr::CLUSTER_V4.into(), addr::ALIBABA_METADATA_V4.into()] {
        assert_eq!(bench.in_pod("pod", || http_get(SocketAddr::new(ip, 80))).unwrap(), hello(ip, 80));
    }
    // The rogue resolver answers too (a pod bypassing policy would succeed).
    assert_eq!(dig(&bench, &["+short", "@198.51.100.99", "internal.example.test"]).trim(), "10.96.0.10");
}

#[test]
fn udp_echo_replies_from_the_address_it_was_sent_to() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let targets: [IpAddr; 3] = [addr::OTHER_V4.into(), addr::OTHER_V6.into(), "192.0.2.77".parse().unwrap()];
    bench
        .in_pod("pod", || {
            for ip in targets {
                let sock = UdpSocket::bind(if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                // Connected socket: a reply from any other source would be dropped.
                sock.connect((ip, addr::UDP_ECHO_PORT)).unwrap();
                sock.send(b"ping portcullis").unwrap();
                let mut buf = [0u8; 64];
                let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("echo from {ip}: {e}"));
                assert_eq!(&buf[..n], b"ping portcullis");
            }
        })
        .unwrap();
    // socat works from the pod as well (what shell-style tests would use).
    let mut cmd = bench.cmd_in_pod("pod", "sh");
    cmd.args(["-c", "echo hi | socat -t0.5 - UDP:203.0.113.20:9999"]);
    assert_eq!(stdout_of(cmd), "hi\n");
}

#[test]
fn records_ttl_and_multiple_pods() {
    if !require_root() {
        return;
    }
    let custom: IpAddr = "203.0.113.77".parse().unwrap();
    let bench = Bench::builder()
        .pods(&["pod", "pod2"])
        .record("custom.test", [custom, "2001:db8:100::77".parse().unwrap()])
        .record("api.example.test", ["203.0.113.11".parse().unwrap()])
        .dns_ttl(7)
        .start()
        .unwrap();
    let answer = dig(&bench, &["+noall", "+answer", "@198.51.100.53", "custom.test"]);
    assert!(answer.contains("\t7\tIN\tA\t203.0.113.77"), "{answer}");
    assert_eq!(dig(&bench, &["+short", "@198.51.100.53", "api.example.test"]).trim(), "203.0.113.11");
    let nx = dig(&bench, &["@198.51.100.53", "nope.test"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    let body = bench.in_pod("pod2", || http_get(SocketAddr::new(custom, 80))).unwrap();
    assert_eq!(body, hello(custom, 80));
    assert_eq!(bench.pod_v4("pod2").to_string(), "198.18.2.2");
    let peer = bench.cmd_in_pod("pod2", "curl").args(["-sSi", "http://203.0.113.20/"]).output().unwrap();
    assert!(String::from_utf8_lossy(&peer.stdout).contains("X-Bench-Peer: 198.18.2.2:"));
}

#[test]
fn no_route_out_of_the_bench_and_nothing_in_root_namespace() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    // Route lookups only (no packets): inet has no default route.
    let out = bench.cmd_in_inet("ip").args(["route", "get", "192.88.99.1"]).output().unwrap();
    assert!(!out.status.success(), "inet must not route elsewhere");
    let out = bench.cmd_in_inet("ip").args(["-6", "route", "get", "2001:db9::1"]).output().unwrap();
    assert!(!out.status.success() || String::from_utf8_lossy(&out.stdout).contains("unreachable"));
    let root_links = stdout_of({
        let mut c = Command::new("ip");
        c.args(["-br", "link"]);
        c
    });
    assert!(!root_links.contains("veth-pod") && !root_links.contains("to-inet"), "{root_links}");
    // The node forwards; the root namespace's setting is untouched by design.
    let fwd = stdout_of({
        let mut c = bench.cmd_in_node("cat");
        c.arg("/proc/sys/net/ipv4/ip_forward");
        c
    });
    assert_eq!(fwd.trim(), "1");
}

/// What must be gone once a bench is dropped.
struct Footprint {
    namespaces: Vec<String>,
    etc_dirs: Vec<PathBuf>,
    pids: Vec<u32>,
    workdir: PathBuf,
}

fn footprint(b: &Bench) -> Footprint {
    let mut etc_dirs: Vec<PathBuf> = b.pod_names().iter().map(|p| b.resolv_conf_dir(p)).collect();
    etc_dirs.push(b.node_resolv_conf_dir());
    Footprint {
        namespaces: b.namespaces(),
        etc_dirs,
        pids: vec![b.hostd_pid(), b.dnsmasq_pid()],
        workdir: b.workdir().to_owned(),
    }
}

fn assert_gone(f: &Footprint) {
    let listed = stdout_of({
        let mut c = Command::new("ip");
        c.args(["netns", "list"]);
        c
    });
    for ns in &f.namespaces {
        assert!(!listed.lines().any(|l| l.split_whitespace().next() == Some(ns.as_str())), "{ns} left");
        assert!(!netns::exists(ns));
    }
    for dir in &f.etc_dirs {
        assert!(!dir.exists(), "{} left", dir.display());
    }
    for pid in &f.pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still alive");
    }
    assert!(!f.workdir.exists());
}

#[test]
fn drop_removes_everything_and_benches_coexist() {
    if !require_root() {
        return;
    }
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Bench::builder().pods(&["pod", "p2"]).start().unwrap());
        let b = s.spawn(|| Bench::start().unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.prefix(), b.prefix());
    for bench in [&a, &b] {
        assert!(curl(bench, &["-4", "http://other.example.test/"]).contains("203.0.113.20:80"));
        assert!(bench.resolv_conf_dir("pod").join("resolv.conf").exists());
    }
    let (fa, fb) = (footprint(&a), footprint(&b));
    drop(a);
    assert_gone(&fa);
    // b is unaffected by a's teardown.
    assert!(curl(&b, &["-4", "http://other.example.test/"]).contains("203.0.113.20:80"));
    drop(b);
    assert_gone(&fb);
}

#[test]
fn panic_mid_test_still_cleans_up() {
    if !require_root() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let bench = Bench::start().unwrap();
        tx.send(footprint(&bench)).unwrap();
        panic!("simulated test failure with a live bench");
    })
    .join();
    assert!(result.is_err());
    assert_gone(&rx.recv().unwrap());
}

/// Helper for `killed_test_process_is_cleaned_up`, run in a child process.
#[test]
#[ignore = "helper: run by killed_test_process_is_cleaned_up"]
fn helper_hold_bench_until_killed() {
    if std::env::var_os("BENCH_HOLD_HELPER").is_none() || !require_root() {
        return;
    }
    let b = Bench::start().unwrap();
    let f = footprint(&b);
    let mut out = std::io::stdout().lock();
    for ns in &f.namespaces {
        writeln!(out, "ns {ns}").unwrap();
    }
    for d in &f.etc_dirs {
        writeln!(out, "etc {}", d.display()).unwrap();
    }
    for p in &f.pids {
        writeln!(out, "pid {p}").unwrap();
    }
    writeln!(out, "work {}\nHOLDING", f.workdir.display()).unwrap();
    out.flush().unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

/// SIGKILL of a test process (no Drop runs): its servers die with it
/// (PR_SET_PDEATHSIG) and the next bench start sweeps its namespaces.
#[test]
fn killed_test_process_is_cleaned_up() {
    use std::io::BufRead;
    use std::process::Stdio;
    if !require_root() {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "helper_hold_bench_until_killed", "--nocapture"])
        .env("BENCH_HOLD_HELPER", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut f = Footprint { namespaces: vec![], etc_dirs: vec![], pids: vec![], workdir: PathBuf::new() };
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines().map_while(Result::ok) {
        match line.split_once(' ') {
            Some(("ns", v)) => f.namespaces.push(v.into()),
            Some(("etc", v)) => f.etc_dirs.push(v.into()),
            Some(("pid", v)) => f.pids.push(v.parse().unwrap()),
            Some(("work", v)) => f.workdir = v.into(),
            _ if line == "HOLDING" => break,
            _ => {}
        }
    }
    assert_eq!(f.pids.len(), 2, "helper did not report its bench");
    child.kill().unwrap(); // SIGKILL our own child, by PID
    child.wait().unwrap();
    // The death signal is delivered at once; give the exits a moment.
    for _ in 0..100 {
        if f.pids.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Namespaces outlive a SIGKILL; a parallel test's Bench start may already
    // have swept them, otherwise this does.
    netns::sweep_stale(&std::env::temp_dir()); // what every Bench start does
    assert_gone(&f);
}

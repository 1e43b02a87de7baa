//! The soak (`cargo xtask soak`, and its short version in
//! `tests/tests/soak_smoke.rs`): cilium/cilium#47128 compressed in time. A
//! stream of DNS names never seen before, each resolved once through the
//! agent's gate (`portcullis run`, node mode), with a short TTL: first all
//! through one endpoint, then spread over many. What must hold: the
//! agent's memory stays flat, the kernel's `LEARNED` map stays within the
//! caps, and every lookup succeeds.
//!
//! The names are `n<k>.soak.example.test` (the policy allows
//! `*.soak.example.test`), each with an address of its own in
//! 2001:db8:5000::/96 (served by dnsmasq from a hosts file, AAAA records;
//! never contacted). The endpoints are cgroups this module creates, all of
//! whose processes run in one pod namespace: the agent opens one gate per
//! (namespace, endpoint), so endpoints may share a namespace. Each
//! endpoint's lookups come from `clients/soak.py` in its cgroup.

use crate::bpfmap::{KernelMap, maps_of_cgroup, proc_status, rss_by_kind};
use crate::{Bench, ChildGuard, addr, servers::python};
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const SOAK_PY: &str = include_str!("../clients/soak.py");
pub const DOMAIN: &str = "soak.example.test";
/// The agent's defaults (agent/src/state/learned.rs `Caps::default`).
pub const DEFAULT_NAMES_PER_ENDPOINT: usize = 10_000;
pub const TOTAL_ENTRIES: usize = 200_000;
/// Kernel maps worth watching besides `LEARNED`.
const WATCHED: [&str; 5] = ["GATES", "GATE_CLIENTS", "DNS_SOCKS", "SOCK_OWNERS", "EP_CACHE"];

#[derive(Clone, Debug)]
pub struct Options {
    /// Distinct names in all (half per phase).
    pub names: u64,
    pub endpoints: u32,
    /// Lookups per second in all.
    pub rate: f64,
    /// Lookups in flight at most (in all; split over the endpoints).
    pub window: u32,
    pub dns_ttl: u32,
    /// The agent's `minTtlSeconds` (its own default is 30).
    pub min_ttl: u32,
    /// `maxNamesPerEndpoint`; `None`: the agent's default.
    pub max_names: Option<usize>,
    /// The fraction of the names after which the reference RSS is taken.
    pub warmup: f64,
    /// The fraction of the names sent from endpoint 0 alone before the rest
    /// is spread over every endpoint (0: spread from the start).
    pub spread_from: f64,
    pub agent: PathBuf,
}

#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub label: String,
    /// Names looked up so far, and seconds since the first.
    pub done: u64,
    pub secs: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// RSS by kind of mapping (`bpfmap::rss_by_kind`).
    pub rss_kinds: [(&'static str, u64); 4],
    pub threads: u64,
    /// `LEARNED` keys (exact: the kernel's element count).
    pub learned: usize,
    /// The most `LEARNED` keys of one endpoint: in a walk of the map (which
    /// runs while it changes), and as the agent counts them (`/metrics`).
    pub learned_walk_max_ep: usize,
    pub learned_agent_max_ep: usize,
    pub maps: Vec<(String, usize)>,
    pub sent: u64,
    pub failed: u64,
    /// Failures by kind (timeout, nxdomain, servfail, ...).
    pub failures: BTreeMap<String, u64>,
    /// The agent's evicted learned pairs (its metrics).
    pub evicted: u64,
    /// Lookups per second in the last chunk, and its latency p99 (ms).
    pub qps: f64,
    pub p99_ms: f64,
}

#[derive(Debug)]
pub struct Outcome {
    pub samples: Vec<Sample>,
    /// Index of the sample after warm-up.
    pub warm: usize,
    /// The most `LEARNED` keys seen (every 200 ms): in all (exact), and of
    /// one endpoint as the agent counts them; and of one endpoint in a walk
    /// of the map (at the samples).
    pub peak_learned: usize,
    pub peak_learned_ep: usize,
    pub peak_walk_ep: usize,
    pub names_cap: usize,
    /// Lookups that opened each endpoint's gate first, and their failures.
    pub warmup_lookups: (u64, u64),
}

impl Outcome {
    pub fn last(&self) -> &Sample {
        self.samples.last().expect("at least one sample")
    }

    /// RSS at the end over RSS after warm-up.
    pub fn rss_ratio(&self) -> f64 {
        self.last().rss_kib as f64 / self.samples[self.warm].rss_kib.max(1) as f64
    }

    /// (what, passed) for each criterion. Every name has one address and
    /// the policy one port, so an endpoint's keys are bounded by its names
    /// cap.
    pub fn verdicts(&self) -> Vec<(String, bool)> {
        let (warm, end) = (self.samples[self.warm].rss_kib, self.last().rss_kib);
        let failed = self.last().failed + self.warmup_lookups.1;
        vec![
            (
                format!(
                    "RSS at end {end} KiB vs {warm} KiB after warm-up: {:+.1} % (within 10 %)",
                    (self.rss_ratio() - 1.0) * 100.0
                ),
                (self.rss_ratio() - 1.0).abs() <= 0.10,
            ),
            (
                format!(
                    "LEARNED peak {} in all (cap {TOTAL_ENTRIES}), {} for one endpoint (cap {} names x 1 address x 1 port; \
                     a walk of the map, which runs while it changes, saw at most {})",
                    self.peak_learned, self.peak_learned_ep, self.names_cap, self.peak_walk_ep
                ),
                self.peak_learned <= TOTAL_ENTRIES && self.peak_learned_ep <= self.names_cap,
            ),
            (format!("failed lookups: {failed} of {}", self.last().sent + self.warmup_lookups.0), failed == 0),
        ]
    }
}

/// The address of name `k`.
pub fn name_addr(k: u64) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0x5000, 0, 0, 0, 0, 0)) + u128::from(k) + 1))
}

/// Cgroups under `<cgroup2>/portcullis-soak-<pid>`: killed and removed on drop.
struct Cgroups {
    parent: PathBuf,
    children: Vec<PathBuf>,
}

impl Cgroups {
    fn create(n: u32) -> Result<Self> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let root = info
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let dir = left.split_whitespace().nth(4)?;
                (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(dir))
            })
            .context("no cgroup2 mount")?;
        let parent = root.join(format!("portcullis-soak-{}", std::process::id()));
        std::fs::create_dir(&parent).with_context(|| format!("mkdir {}", parent.display()))?;
        let mut me = Self { parent, children: Vec::new() };
        for i in 0..n {
            let c = me.parent.join(format!("ep{i}"));
            std::fs::create_dir(&c)?;
            me.children.push(c);
        }
        Ok(me)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let _ = std::fs::write(self.parent.join("cgroup.kill"), "1");
        for dir in self.children.iter().chain([&self.parent]) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn config(workdir: &Path, metrics: SocketAddr, opts: &Options, cgroups: &Cgroups) -> String {
    let mut s =
        format!("log: {}\nmetricsAddr: {metrics}\nminTtlSeconds: {}\n", workdir.join("blocked.jsonl").display(), opts.min_ttl);
    if let Some(n) = opts.max_names {
        s.push_str(&format!("maxNamesPerEndpoint: {n}\n"));
    }
    s.push_str("endpoints:\n");
    for (i, cg) in cgroups.children.iter().enumerate() {
        s.push_str(&format!(
            "  - name: soak-ep{i}\n    namespace: soak\n    pod: soak-{i}\n    cgroup: {}\n    policy:\n      egress:\n        \
             - toFQDNs: [{{matchPattern: \"*.{DOMAIN}\"}}]\n          ports: [{{port: 443}}]\n      dns:\n        servers: [\"{}\"]\n",
            cg.display(),
            addr::DNS_V4
        ));
    }
    s
}

/// `GET /metrics` on the agent's address.
fn metrics_text(addr: SocketAddr) -> String {
    use std::io::Write as _;
    (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut t = String::new();
        s.read_to_string(&mut t)?;
        Ok(t)
    })()
    .unwrap_or_default()
}

/// The values of the series starting with `prefix`.
fn series(text: &str, prefix: &str) -> Vec<u64> {
    text.lines().filter_map(|l| l.strip_prefix(prefix)?.rsplit(' ').next()?.parse::<f64>().ok()).map(|v| v as u64).collect()
}

/// The agent's most learned entries of one endpoint.
fn agent_max_ep(addr: SocketAddr) -> usize {
    series(&metrics_text(addr), "portcullis_learned_entries{").into_iter().max().unwrap_or(0) as usize
}

struct Run<'a> {
    bench: &'a Bench,
    script: PathBuf,
    cgroups: &'a Cgroups,
    opts: &'a Options,
}

impl Run<'_> {
    /// Lookups of `prefix<start..start+count>` from endpoint `ep`'s cgroup.
    fn client(&self, ep: usize, prefix: &str, start: u64, count: u64, rate: f64, window: u32) -> Result<ChildGuard> {
        let mut c = Command::new("sh");
        c.arg("-c").arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"").arg(&self.cgroups.children[ep]);
        c.args(["ip", "netns", "exec", self.bench.pod_ns_name("soak")]).arg(python()).arg(&self.script);
        c.arg(addr::DNS_V4.to_string()).args(["--prefix", prefix, "--domain", DOMAIN]);
        c.args(["--start", &start.to_string(), "--count", &count.to_string(), "--rate", &rate.to_string()]);
        c.args(["--window", &window.to_string()]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        Ok(ChildGuard::spawn(c)?)
    }

    /// Runs clients to the end; their JSON results.
    fn wait_all(&self, clients: Vec<ChildGuard>) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for mut c in clients {
            let mut text = String::new();
            c.child_mut().stdout.take().context("stdout")?.read_to_string(&mut text)?;
            let st = c.child_mut().wait()?;
            ensure!(st.success(), "soak client failed ({st}): {text}");
            out.push(serde_json::from_str(text.trim()).with_context(|| format!("client output {text:?}"))?);
        }
        Ok(out)
    }

    /// Names [a, b): all from endpoint 0 in phase 1 (below `half`), else
    /// spread evenly over every endpoint.
    fn chunk(&self, a: u64, b: u64, half: u64) -> Result<Vec<Value>> {
        let n = self.cgroups.children.len() as u64;
        let (rate, window) = (self.opts.rate, self.opts.window);
        if b <= half {
            return self.wait_all(vec![self.client(0, "n", a, b - a, rate, window)?]);
        }
        let mut cs = Vec::new();
        for e in 0..n {
            let (lo, hi) = (a + (b - a) * e / n, a + (b - a) * (e + 1) / n);
            if hi > lo {
                cs.push(self.client(e as usize, "n", lo, hi - lo, rate / n as f64, (window / n as u32).max(4))?);
            }
        }
        self.wait_all(cs)
    }
}

/// Runs the soak; `on_sample` sees each sample as it is taken.
pub fn run(opts: &Options, mut on_sample: impl FnMut(&Sample)) -> Result<Outcome> {
    ensure!(opts.endpoints >= 1 && opts.names >= 100 && opts.rate > 0.0, "need endpoints >= 1, names >= 100, rate > 0");
    ensure!(opts.warmup > 0.0 && opts.warmup < 0.5, "warm-up fraction within (0, 0.5)");
    let mut hosts: Vec<(String, IpAddr)> = (0..opts.names).map(|k| (format!("n{k}.{DOMAIN}"), name_addr(k))).collect();
    hosts.extend((0..u64::from(opts.endpoints)).map(|e| (format!("w{e}.{DOMAIN}"), name_addr(opts.names + e))));
    let bench = Bench::builder().pods(&["soak"]).dns_ttl(opts.dns_ttl).hosts(hosts).start().context("starting the bench")?;
    let cgroups = Cgroups::create(opts.endpoints)?;
    let script = bench.workdir().join("soak.py");
    std::fs::write(&script, SOAK_PY)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
    let cfg = bench.workdir().join("soak.yaml");
    std::fs::write(&cfg, config(bench.workdir(), metrics, opts, &cgroups))?;
    let stderr = bench.workdir().join("agent.stderr");
    let mut cmd = Command::new(&opts.agent);
    cmd.args(["run", "--config"]).arg(&cfg).env("PORTCULLIS_LOG_LEVEL", "info");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&stderr)?);
    let mut agent = ChildGuard::spawn(cmd).context("starting portcullis run")?.with_grace(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&stderr)?.contains("\"message\":\"ready\"") {
        if agent.try_wait()?.is_some() || Instant::now() > deadline {
            bail!("portcullis run did not get ready: {}", std::fs::read_to_string(&stderr)?);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = agent.pid();
    let maps = maps_of_cgroup(&cgroups.children[0])?;
    let run = Run { bench: &bench, script, cgroups: &cgroups, opts };
    let result = soak(&run, pid, metrics, &maps, &mut on_sample);
    agent.stop();
    drop(cgroups);
    drop(bench);
    result
}

fn soak(
    run: &Run<'_>,
    pid: u32,
    metrics: SocketAddr,
    maps: &HashMap<String, KernelMap>,
    on_sample: &mut dyn FnMut(&Sample),
) -> Result<Outcome> {
    let opts = run.opts;
    let learned = maps.get("LEARNED").context("no LEARNED map")?;
    let empty = learned.memlock();
    // One lookup from each endpoint first: every gate is open before the
    // reference is taken (a gate is three threads and their buffers).
    let warm: Vec<ChildGuard> =
        (0..opts.endpoints as usize).map(|e| run.client(e, "w", e as u64, 1, 0.0, 1)).collect::<Result<_>>()?;
    let w = run.wait_all(warm)?;
    let warmup_lookups = (w.len() as u64, w.iter().map(|v| v["failed"].as_u64().unwrap_or(1)).sum());
    let names_cap = opts.max_names.unwrap_or(DEFAULT_NAMES_PER_ENDPOINT);
    let mut out =
        Outcome { samples: Vec::new(), warm: 0, peak_learned: 0, peak_learned_ep: 0, peak_walk_ep: 0, names_cap, warmup_lookups };
    let mut fracs = vec![opts.warmup];
    fracs.extend((1..=10).map(|t| f64::from(t) / 10.0).filter(|f| *f > opts.warmup + 1e-9));
    let half = (opts.names as f64 * opts.spread_from).round() as u64;
    let started = Instant::now();
    // Peaks every 200 ms: the exact total, and the agent's largest endpoint.
    let (stop, peak, peak_ep) = (AtomicBool::new(false), AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| -> Result<()> {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(learned.len_since(empty), Ordering::Relaxed);
                peak_ep.fetch_max(agent_max_ep(metrics), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let r = (|| -> Result<()> {
            let (mut done, mut total) = (0u64, Sample::default());
            for (i, f) in fracs.iter().enumerate() {
                let upto = if *f >= 1.0 { opts.names } else { (opts.names as f64 * f).round() as u64 };
                let t = Instant::now();
                let results = run.chunk(done, upto, half)?;
                let chunk_secs = t.elapsed().as_secs_f64();
                for r in &results {
                    total.sent += r["sent"].as_u64().unwrap_or(0);
                    total.failed += r["failed"].as_u64().unwrap_or(0);
                    for k in ["timeout", "nxdomain", "servfail", "refused", "empty", "rcode_other"] {
                        *total.failures.entry(k.into()).or_default() += r[k].as_u64().unwrap_or(0);
                    }
                }
                let text = metrics_text(metrics);
                let sample = Sample {
                    label: if i == 0 { "warm-up".into() } else { format!("{:.0} %", f * 100.0) },
                    done: upto,
                    secs: started.elapsed().as_secs_f64(),
                    rss_kib: proc_status(pid, "VmRSS"),
                    hwm_kib: proc_status(pid, "VmHWM"),
                    rss_kinds: rss_by_kind(pid),
                    threads: proc_status(pid, "Threads"),
                    learned: learned.len_since(empty),
                    learned_walk_max_ep: learned.count_by_u32_prefix().into_values().max().unwrap_or(0),
                    learned_agent_max_ep: series(&text, "portcullis_learned_entries{").into_iter().max().unwrap_or(0) as usize,
                    maps: WATCHED.iter().filter_map(|n| Some((n.to_string(), maps.get(*n)?.count()))).collect(),
                    evicted: series(&text, "portcullis_learned_ips_total{what=\"evicted\"}").first().copied().unwrap_or(0),
                    qps: (upto - done) as f64 / chunk_secs,
                    p99_ms: results.iter().filter_map(|r| r["p99_ms"].as_f64()).fold(0.0, f64::max),
                    ..total.clone()
                };
                peak.fetch_max(sample.learned, Ordering::Relaxed);
                peak_ep.fetch_max(sample.learned_agent_max_ep, Ordering::Relaxed);
                out.peak_walk_ep = out.peak_walk_ep.max(sample.learned_walk_max_ep);
                on_sample(&sample);
                out.samples.push(sample);
                done = upto;
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        r
    })?;
    out.peak_learned = peak.load(Ordering::Relaxed);
    out.peak_learned_ep = peak_ep.load(Ordering::Relaxed);
    Ok(out)
}

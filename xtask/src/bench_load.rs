//! DNS lookups under the agent's own side load, for `cargo xtask bench`:
//! `/metrics` scraped 50 times a second and a blocked-log flood (denied
//! connects as fast as they fail) from the enforced pod. `exec` serves no
//! metrics, so this runs a second agent, `portcullis run` with
//! `metricsAddr`, on a cgroup made here (a child of the cgroup v2 root,
//! like `floor`'s, removed on drop) whose client runs in pod `pcrun`. Its
//! lookups are measured quiet and loaded in the same rounds, next to
//! baseline lookups with the same load running.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portcullis_tests::{Bench, ChildGuard, addr};

/// The pod of the run-mode agent's client.
pub const POD: &str = "pcrun";
/// Scrapes per second.
const SCRAPES_PER_SEC: u32 = 50;
/// Prefix of the cgroup's name; the bench's PID follows.
const DIR_PREFIX: &str = "portcullis-bench-run-";

/// `portcullis run` enforcing one cgroup, with metrics on loopback.
pub struct RunAgent {
    guard: ChildGuard,
    pub cgroup: PathBuf,
    pub metrics: SocketAddr,
    pub log: PathBuf,
}

impl RunAgent {
    pub fn start(bench: &Bench, portcullis: &Path, policy: &str, cgroup2: &Path) -> Result<Self> {
        // Cgroups of bench runs that were killed: their programs went with
        // their agent (links), so only the directory is left.
        for e in fs::read_dir(cgroup2)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix(DIR_PREFIX).is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
                let _ = fs::remove_dir(e.path());
            }
        }
        let cgroup = cgroup2.join(format!("{DIR_PREFIX}{}", std::process::id()));
        fs::create_dir(&cgroup).with_context(|| format!("mkdir {}", cgroup.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = bench.workdir().join("run-blocked.jsonl");
        let mut cfg = format!(
            "log: {}\nmetricsAddr: {metrics}\nendpoints:\n  - name: bench-run\n    cgroup: {}\n    policy:\n",
            log.display(),
            cgroup.display()
        );
        cfg.extend(policy.lines().map(|l| format!("      {l}\n")));
        let file = bench.workdir().join("bench-run.yaml");
        fs::write(&file, cfg)?;
        let stderr = bench.workdir().join("run-agent.stderr");
        let mut c = Command::new(portcullis);
        c.args(["run", "--config"]).arg(&file).env("PORTCULLIS_LOG_LEVEL", "info");
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(fs::File::create(&stderr)?);
        // The cgroup goes on drop, also if the agent does not start.
        let mut me = Self { guard: ChildGuard::spawn(c)?.with_grace(Duration::from_secs(5)), cgroup, metrics, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs::read_to_string(&stderr)?.contains("\"message\":\"ready\"") {
            if me.guard.try_wait()?.is_some() || Instant::now() > deadline {
                bail!("portcullis run did not get ready: {}", fs::read_to_string(&stderr)?);
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    /// Blocked-log records written, and denied events the kernel held
    /// back (its per-endpoint rate limit), over the whole run.
    pub fn log_summary(&self) -> (usize, u64) {
        let records = fs::read_to_string(&self.log).map_or(0, |t| t.lines().count());
        let text = scrape(self.metrics).unwrap_or_default();
        let limited = text.lines().find_map(|l| l.strip_prefix("portcullis_kernel_losses_total{what=\"event-rate-limited\"} "));
        (records, limited.and_then(|v| v.trim().parse().ok()).unwrap_or(0))
    }

    /// `sh -c 'echo $$ > CG/cgroup.procs && exec ip netns exec NS PROGRAM'`.
    pub fn cmd(&self, bench: &Bench, program: &Path) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""]).arg(&self.cgroup);
        c.args(["ip", "netns", "exec", bench.pod_ns_name(POD)]).arg(program);
        c
    }
}

impl Drop for RunAgent {
    fn drop(&mut self) {
        self.guard.stop();
        let _ = fs::write(self.cgroup.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.cgroup).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The side load, running.
pub struct Load {
    stop: Arc<AtomicBool>,
    scrapes: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    scraper: Option<thread::JoinHandle<()>>,
    flood: ChildGuard,
    started: Instant,
}

/// What one loaded slice saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadStats {
    pub scrapes_per_sec: f64,
    pub scrape_failures: u64,
    pub denied_per_sec: f64,
}

/// `GET /metrics`: the whole response.
fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    if !body.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other("not 200"));
    }
    Ok(body)
}

impl Load {
    /// Starts the scraper and a flood of `secs` (a little longer than the
    /// slice it loads); both warm up for 200 ms before this returns.
    pub fn start(bench: &Bench, agent: &RunAgent, secs: f64) -> Result<Self> {
        let xtask = std::env::current_exe()?;
        let mut c = agent.cmd(bench, &xtask);
        let target = SocketAddr::from((addr::METADATA_V4, 80));
        c.args(["load", "flood", "--target", &target.to_string(), "--secs", &(secs + 0.4).to_string()]);
        let flood = ChildGuard::spawn({
            c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
            c
        })?;
        let (stop, scrapes, failed) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::default()), Arc::new(AtomicU64::default()));
        let (st, sc, fa, metrics) = (stop.clone(), scrapes.clone(), failed.clone(), agent.metrics);
        let scraper = thread::spawn(move || {
            let every = Duration::from_secs(1) / SCRAPES_PER_SEC;
            let mut next = Instant::now();
            while !st.load(Ordering::Relaxed) {
                match scrape(metrics) {
                    Ok(_) => sc.fetch_add(1, Ordering::Relaxed),
                    Err(_) => fa.fetch_add(1, Ordering::Relaxed),
                };
                next += every;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        thread::sleep(Duration::from_millis(200));
        Ok(Self { stop, scrapes, failed, scraper: Some(scraper), flood, started: Instant::now() })
    }

    /// Stops the scraper, waits for the flood to end; what they did.
    pub fn finish(mut self) -> Result<LoadStats> {
        self.stop.store(true, Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64() + 0.2;
        if let Some(t) = self.scraper.take() {
            let _ = t.join();
        }
        let mut out = String::new();
        self.flood.child_mut().stdout.take().context("flood stdout")?.read_to_string(&mut out)?;
        let status = self.flood.child_mut().wait()?;
        if !status.success() {
            bail!("blocked-log flood failed: {status}");
        }
        let v: serde_json::Value = serde_json::from_str(out.trim()).with_context(|| format!("flood output {out:?}"))?;
        Ok(LoadStats {
            scrapes_per_sec: self.scrapes.load(Ordering::Relaxed) as f64 / secs,
            scrape_failures: self.failed.load(Ordering::Relaxed),
            denied_per_sec: v["per_sec"].as_f64().unwrap_or(0.0),
        })
    }
}

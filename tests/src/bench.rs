//! [`Bench`]: a running topology plus its servers, and its accessors.

use crate::BenchBuilder;
use crate::addr;
use crate::dns::{self, Qtype};
use crate::guard::ChildGuard;
use crate::netns;
use crate::topology::Teardown;
use anyhow::{Context, Result, bail, ensure};
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Every bench name starts with `pc<pid>x<n>`; the stale sweep relies on it.
pub(crate) const NAME_PREFIX: &str = "pc";
pub(crate) const TMP_DIR_PREFIX: &str = "portcullis-bench-";
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const READY_NAME: &str = "ready.bench.test";

#[derive(Debug)]
pub(crate) struct Pod {
    pub(crate) name: String,
    pub(crate) ns: String,
    pub(crate) node_if: String,
    pub(crate) index: u8,
}

/// A running bench. Dropping it stops the servers and deletes every
/// namespace, veth, `/etc/netns` dir and temp file it created, also when a
/// test panics. Namespace names are unique per process and bench, so
/// benches can run concurrently (e.g. parallel tests).
#[derive(Debug)]
pub struct Bench {
    pub(crate) prefix: String,
    pub(crate) node_ns: String,
    pub(crate) inet_ns: String,
    pub(crate) pods: Vec<Pod>,
    pub(crate) workdir: PathBuf,
    pub(crate) dns_log: PathBuf,
    pub(crate) hostd_log: PathBuf,
    pub(crate) dnsmasq_pid: u32,
    pub(crate) hostd_pid: u32,
    pub(crate) dns_ttl: u32,
    /// baddns.py's mode file and log, when started.
    pub(crate) bad_dns: Option<(PathBuf, PathBuf)>,
    pub(crate) td: Teardown,
}

impl Bench {
    pub fn builder() -> BenchBuilder {
        BenchBuilder::default()
    }

    /// A bench with the defaults (one pod named `"pod"`).
    pub fn start() -> Result<Self> {
        BenchBuilder::default().start()
    }

    fn pod(&self, pod: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == pod).unwrap_or_else(|| panic!("bench has no pod {pod:?}"))
    }

    /// The `pc<pid>x<n>` prefix of every name this bench created.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn pod_names(&self) -> Vec<&str> {
        self.pods.iter().map(|p| p.name.as_str()).collect()
    }
    pub fn pod_ns_name(&self, pod: &str) -> &str {
        &self.pod(pod).ns
    }
    pub fn pod_netns_path(&self, pod: &str) -> PathBuf {
        netns::netns_path(&self.pod(pod).ns)
    }
    pub fn node_ns_name(&self) -> &str {
        &self.node_ns
    }
    pub fn node_netns_path(&self) -> PathBuf {
        netns::netns_path(&self.node_ns)
    }
    pub fn inet_ns_name(&self) -> &str {
        &self.inet_ns
    }
    pub fn inet_netns_path(&self) -> PathBuf {
        netns::netns_path(&self.inet_ns)
    }
    /// Every namespace name of this bench (node, inet, pods).
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.node_ns.clone(), self.inet_ns.clone()];
        all.extend(self.pods.iter().map(|p| p.ns.clone()));
        all
    }
    /// The pod's own addresses (on its `eth0`).
    pub fn pod_v4(&self, pod: &str) -> Ipv4Addr {
        addr::pod_v4(self.pod(pod).index)
    }
    pub fn pod_v6(&self, pod: &str) -> Ipv6Addr {
        addr::pod_v6(self.pod(pod).index)
    }
    /// Name of the pod's veth inside the node namespace (`veth-<pod>`).
    pub fn node_veth(&self, pod: &str) -> &str {
        &self.pod(pod).node_if
    }

    /// `ip netns exec <pod-ns> PROGRAM`: runs with the bench resolv.conf.
    pub fn cmd_in_pod(&self, pod: &str, program: &str) -> Command {
        cmd_in(&self.pod(pod).ns, program)
    }
    /// `ip netns exec <node-ns> PROGRAM` (also with the bench resolv.conf).
    pub fn cmd_in_node(&self, program: &str) -> Command {
        cmd_in(&self.node_ns, program)
    }
    pub fn cmd_in_inet(&self, program: &str) -> Command {
        cmd_in(&self.inet_ns, program)
    }
    /// `["nsenter", "--net=/run/netns/<pod-ns>", "--"]`; append the program.
    /// Note: unlike [`cmd_in_pod`](Self::cmd_in_pod) this does *not* apply
    /// the bench resolv.conf.
    pub fn nsenter_args(&self, pod: &str) -> Vec<String> {
        let path = self.pod_netns_path(pod);
        vec!["nsenter".into(), format!("--net={}", path.display()), "--".into()]
    }
    /// `/etc/netns/<pod-ns>` (holds the pod's `resolv.conf`).
    pub fn resolv_conf_dir(&self, pod: &str) -> PathBuf {
        netns::etc_netns_dir(&self.pod(pod).ns)
    }
    pub fn node_resolv_conf_dir(&self) -> PathBuf {
        netns::etc_netns_dir(&self.node_ns)
    }

    /// Runs `f` on a helper thread inside the pod's network namespace.
    pub fn in_pod<T: Send>(&self, pod: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
        netns::run_in(&self.pod_netns_path(pod), f)
    }
    pub fn in_node<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        netns::run_in(&self.node_netns_path(), f)
    }
    pub fn in_inet<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        netns::run_in(&self.inet_netns_path(), f)
    }

    /// Temp dir with the generated configs and logs; removed on drop.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }
    /// dnsmasq `--log-queries` output: shows which names were asked.
    pub fn dns_log_path(&self) -> &Path {
        &self.dns_log
    }
    pub fn hostd_log_path(&self) -> &Path {
        &self.hostd_log
    }
    pub fn dnsmasq_pid(&self) -> u32 {
        self.dnsmasq_pid
    }
    pub fn hostd_pid(&self) -> u32 {
        self.hostd_pid
    }
    pub fn dns_ttl(&self) -> u32 {
        self.dns_ttl
    }

    /// Selects baddns.py's behaviour for the following queries (see
    /// `servers/baddns.py`: `normal`, `spoof-extra`, `unsolicited`,
    /// `wrong-port`, `wrong-question`). Panics without
    /// [`BenchBuilder::bad_dns`].
    pub fn set_bad_dns_mode(&self, mode: &str) -> Result<()> {
        let (file, _) = self.bad_dns.as_ref().expect("bench started without bad_dns(true)");
        // Write then rename: the server never reads a half-written mode.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, mode)?;
        std::fs::rename(&tmp, file)?;
        Ok(())
    }
    /// baddns.py's log (one line per query), when started.
    pub fn bad_dns_log_path(&self) -> Option<&Path> {
        self.bad_dns.as_ref().map(|(_, log)| log.as_path())
    }

    /// Hands a process to the bench: it is stopped at teardown, before the
    /// namespaces go (e.g. an agent running in the node namespace).
    pub fn adopt(&mut self, child: ChildGuard) -> u32 {
        let pid = child.pid();
        self.td.children.push(child);
        pid
    }

    pub(crate) fn trace(&self, msg: &str) {
        if std::env::var_os("BENCH_TRACE").is_some() {
            eprintln!("bench {}: {msg}", self.prefix);
        }
    }

    /// Readiness: DNS answers from every pod, and every pod reaches the API
    /// host over v4 and v6 (exercises the veths, forwarding and return routes).
    pub(crate) fn wait_ready(&mut self, dns_err: &Path) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for i in 0..self.pods.len() {
            let path = netns::netns_path(&self.pods[i].ns);
            loop {
                for child in &mut self.td.children {
                    if let Some(status) = child.try_wait()? {
                        let err = std::fs::read_to_string(dns_err).unwrap_or_default();
                        bail!("server pid {} exited early ({status}); dnsmasq stderr:\n{err}", child.pid());
                    }
                }
                let r = netns::run_in(&path, || {
                    let ips = dns::query(addr::DNS_V4.into(), READY_NAME, Qtype::A, Duration::from_millis(200))?;
                    ensure!(ips.contains(&addr::API_V4.into()), "unexpected answer {ips:?}");
                    for ip in [IpAddr::V4(addr::API_V4), IpAddr::V6(addr::API_V6)] {
                        // A whole exchange: hostd logs a connection before it
                        // answers, so the probe's line is in its log before
                        // any test reads it (tests read what arrived after).
                        let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip, 80), Duration::from_millis(500))
                            .with_context(|| format!("connect {ip}:80"))?;
                        s.set_read_timeout(Some(Duration::from_millis(500)))?;
                        s.write_all(b"GET /bench-ready HTTP/1.0\r\n\r\n")?;
                        let mut reply = Vec::new();
                        s.read_to_end(&mut reply).with_context(|| format!("reply from {ip}:80"))?;
                        ensure!(reply.starts_with(b"HTTP/1.0 200"), "reply from {ip}:80: {:?}", String::from_utf8_lossy(&reply));
                    }
                    Ok(())
                })?;
                match r {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => {
                        let err = std::fs::read_to_string(dns_err).unwrap_or_default();
                        bail!("bench not ready from pod {}: {e:#}\ndnsmasq stderr:\n{err}", self.pods[i].name)
                    }
                    Err(e) => {
                        self.trace(&format!("not ready yet: {e:#}"));
                        std::thread::sleep(Duration::from_millis(20))
                    }
                }
            }
        }
        Ok(())
    }
}

fn cmd_in(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

impl Drop for Bench {
    fn drop(&mut self) {
        let t = Instant::now();
        drop(std::mem::take(&mut self.td));
        self.trace(&format!("torn down in {:?}", t.elapsed()));
    }
}

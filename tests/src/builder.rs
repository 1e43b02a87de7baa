//! [`BenchBuilder`]: options, and the start-up sequence of a [`Bench`].

use crate::addr;
use crate::bench::{Bench, NAME_PREFIX, Pod, READY_NAME, TMP_DIR_PREFIX};
use crate::dns;
use crate::netns;
use crate::topology::{self, Teardown};
use anyhow::{Context, Result, ensure};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// Configures a [`Bench`]. Defaults: one pod named `"pod"`, the default DNS
/// records, no race names, TTL 60 s, no misbehaving resolver, no TCP echo.
#[derive(Debug, Clone)]
pub struct BenchBuilder {
    pods: Vec<String>,
    records: Vec<(String, Vec<IpAddr>)>,
    race_names: bool,
    dns_ttl: u32,
    bad_dns: bool,
    bad_dns_port: u16,
    bad_dns_any: bool,
    tcp_echo: bool,
    hosts: Vec<(String, IpAddr)>,
}

impl Default for BenchBuilder {
    fn default() -> Self {
        Self {
            pods: vec!["pod".into()],
            records: dns::default_records(),
            race_names: false,
            dns_ttl: 60,
            bad_dns: false,
            bad_dns_port: 53,
            bad_dns_any: false,
            tcp_echo: false,
            hosts: Vec::new(),
        }
    }
}

impl BenchBuilder {
    /// Pod names (1..=254, each `[a-z0-9-]{1,10}`, not `node`/`inet`).
    pub fn pods(mut self, names: &[&str]) -> Self {
        self.pods = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Adds a DNS record, replacing any default record of the same name.
    pub fn record(mut self, name: &str, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.records.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.records.push((name.to_owned(), ips.into_iter().collect()));
        self
    }

    /// Serves `race-1.test` ..= `race-1000.test` (see [`dns::race_addr`]).
    pub fn race_names(mut self, on: bool) -> Self {
        self.race_names = on;
        self
    }

    /// TTL dnsmasq puts on every answer (`--local-ttl`).
    pub fn dns_ttl(mut self, secs: u32) -> Self {
        self.dns_ttl = secs;
        self
    }

    /// Also start `servers/baddns.py` on [`addr::BAD_DNS_V4`]:53 (UDP), a
    /// resolver whose misbehaviour [`Bench::set_bad_dns_mode`] selects. It
    /// is up once `start` returns, but not part of the readiness probe.
    pub fn bad_dns(mut self, on: bool) -> Self {
        self.bad_dns = on;
        self
    }

    /// The UDP port of `servers/baddns.py` (default 53).
    pub fn bad_dns_port(mut self, port: u16) -> Self {
        self.bad_dns_port = port;
        self
    }

    /// Also serve `servers/baddns.py` on [`addr::BAD_DNS_V6`].
    pub fn bad_dns_v6(mut self, on: bool) -> Self {
        self.bad_dns_any = on;
        self
    }

    /// Also let hostd echo TCP on [`addr::TCP_ECHO_PORT`] (every address).
    pub fn tcp_echo(mut self, on: bool) -> Self {
        self.tcp_echo = on;
        self
    }

    /// Also serves these (name, address) records from a hosts file
    /// (`addn-hosts`, hashed by dnsmasq: fit for 100,000s of names, unlike
    /// config lines). Only the record type of each address is answered.
    pub fn hosts(mut self, entries: Vec<(String, IpAddr)>) -> Self {
        self.hosts = entries;
        self
    }

    /// Builds the topology, starts hostd and dnsmasq, and returns once a pod
    /// can query the bench DNS and reach the API host over v4 and v6.
    /// On error everything created so far is torn down again.
    pub fn start(self) -> Result<Bench> {
        ensure!(!self.pods.is_empty() && self.pods.len() <= addr::MAX_PODS, "need 1..=254 pods");
        for (i, p) in self.pods.iter().enumerate() {
            let valid =
                (1..=10).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            ensure!(valid && p != "node" && p != "inet", "bad pod name {p:?}");
            ensure!(!self.pods[..i].contains(p), "duplicate pod name {p:?}");
        }
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("{NAME_PREFIX}{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let tmp = std::env::temp_dir();
        netns::sweep_stale(&tmp);

        let started = Instant::now();
        let mut td = Teardown::default();
        let workdir = tmp.join(format!("{TMP_DIR_PREFIX}{prefix}"));
        std::fs::create_dir_all(&workdir)?;
        td.workdir = Some(workdir.clone());

        let node_ns = format!("{prefix}-node");
        let inet_ns = format!("{prefix}-inet");
        let pods: Vec<Pod> = (1u8..)
            .zip(&self.pods)
            .map(|(index, name)| Pod {
                name: name.clone(),
                ns: format!("{prefix}-{name}"),
                node_if: format!("veth-{name}"),
                index,
            })
            .collect();

        for ns in [&node_ns, &inet_ns].into_iter().chain(pods.iter().map(|p| &p.ns)) {
            topology::add_namespace(&mut td, ns)?;
        }
        topology::add_inet(&mut td, &node_ns, &inet_ns)?;
        for pod in &pods {
            topology::add_pod(&mut td, &node_ns, &pod.ns, &pod.node_if, pod.index)?;
        }
        // `ip netns exec NS` bind-mounts these over /etc/resolv.conf, so pods
        // (and an agent in node) resolve only through the bench's dnsmasq.
        let resolv = format!("nameserver {}\noptions timeout:1 attempts:2\n", addr::DNS_V4);
        for ns in pods.iter().map(|p| &p.ns).chain([&node_ns]) {
            let dir = netns::etc_netns_dir(ns);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            td.etc_dirs.push(dir.clone());
            std::fs::write(dir.join("resolv.conf"), &resolv)?;
        }

        let t_topo = started.elapsed();
        let mut records = self.records;
        // Private name for the readiness probe, so overriding any public record is fine.
        records.push((READY_NAME.into(), vec![addr::API_V4.into()]));
        if self.race_names {
            records.extend((1..=dns::RACE_COUNT).map(|n| (dns::race_name(n), vec![dns::race_addr(n)])));
        }
        let conf = workdir.join("dnsmasq.conf");
        let mut conf_text = dns::conf_text(&records);
        if !self.hosts.is_empty() {
            let hosts = workdir.join("hosts");
            std::fs::write(&hosts, dns::hosts_text(&self.hosts))?;
            conf_text.push_str(&format!("addn-hosts={}\n", hosts.display()));
        }
        std::fs::write(&conf, conf_text)?;
        let dns_log = workdir.join("dnsmasq.log");
        let dns_err = workdir.join("dnsmasq.stderr");
        let dnsmasq = dns::spawn_dnsmasq(&inet_ns, &conf, &dns_log, &dns_err, self.dns_ttl)?;
        let dnsmasq_pid = dnsmasq.pid();
        td.children.push(dnsmasq);

        let t_dns = started.elapsed();
        let hostd_log = workdir.join("hostd.log");
        let hostd = crate::servers::spawn_hostd_with(&inet_ns, &workdir, &hostd_log, self.tcp_echo)?;
        let hostd_pid = hostd.pid();
        td.children.push(hostd);
        let bad_dns_mode = workdir.join("baddns.mode");
        let bad_dns_log = workdir.join("baddns.log");
        if self.bad_dns {
            let bad = crate::servers::spawn_baddns(
                &inet_ns,
                &workdir,
                &bad_dns_log,
                &bad_dns_mode,
                self.dns_ttl,
                self.bad_dns_port,
                self.bad_dns_any,
            )?;
            td.children.push(bad);
        }

        let mut bench = Bench {
            prefix,
            node_ns,
            inet_ns,
            pods,
            workdir,
            dns_log,
            hostd_log,
            dnsmasq_pid,
            hostd_pid,
            dns_ttl: self.dns_ttl,
            bad_dns: self.bad_dns.then_some((bad_dns_mode, bad_dns_log)),
            td,
        };
        let t_hostd = started.elapsed();
        bench.wait_ready(&dns_err)?;
        bench.trace(&format!("started in {:?} (topology {t_topo:?}, dnsmasq {t_dns:?}, hostd {t_hostd:?})", started.elapsed()));
        Ok(bench)
    }
}

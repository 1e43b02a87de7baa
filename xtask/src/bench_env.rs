//! What `cargo xtask bench` reads and sets around its workloads: the
//! kernel's per-program statistics, the agent's CPU time, the nftables
//! reference set.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use portcullis_tests::{Bench, addr, dns::race_addr};
use serde_json::Value;

/// Our programs and their empty twins (`floor`), by name, as bpftool
/// lists them (15 characters at most).
pub const PROGRAMS: [&str; 13] = [
    "pc_connect4",
    "pc_connect6",
    "pc_sendmsg4",
    "pc_sendmsg6",
    "pc_recvmsg4",
    "pc_recvmsg6",
    "pc_egress",
    "pc_ingress",
    "pc_release",
    "pc_floor_conn4",
    "pc_floor_egress",
    "pc_floor_ingres",
    "pc_floor_releas",
];

pub type ProgStats = BTreeMap<String, (f64, u64)>;

/// (name, run_time_ns, run_cnt) per program id, for our programs.
pub fn prog_snapshot() -> BTreeMap<u64, (String, u64, u64)> {
    let mut m = BTreeMap::new();
    let Ok(out) = Command::new("bpftool").args(["-j", "prog", "show"]).output() else { return m };
    let Ok(Value::Array(progs)) = serde_json::from_slice::<Value>(&out.stdout) else { return m };
    for p in progs {
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        if !PROGRAMS.contains(&name) {
            continue;
        }
        if let (Some(id), Some(ns), Some(cnt)) = (
            p.get("id").and_then(Value::as_u64),
            p.get("run_time_ns").and_then(Value::as_u64),
            p.get("run_cnt").and_then(Value::as_u64),
        ) {
            m.insert(id, (name.to_owned(), ns, cnt));
        }
    }
    m
}

/// ns per run and runs of each program between two snapshots.
pub fn prog_delta(before: &BTreeMap<u64, (String, u64, u64)>, after: &BTreeMap<u64, (String, u64, u64)>) -> ProgStats {
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (id, (name, ns, cnt)) in after {
        let (ns0, cnt0) = before.get(id).map_or((0, 0), |(_, n, c)| (*n, *c));
        let e = sums.entry(name.clone()).or_default();
        e.0 += ns.saturating_sub(ns0);
        e.1 += cnt.saturating_sub(cnt0);
    }
    sums.into_iter().map(|(n, (ns, cnt))| (n, (if cnt > 0 { ns as f64 / cnt as f64 } else { 0.0 }, cnt))).collect()
}

/// BPF run-time statistics, on only for the slices that read them (they
/// add ~70 ns to every program run), and back to what they were.
pub struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    /// Remembers the setting to restore; statistics start off.
    pub fn take() -> Result<Self> {
        let old = fs::read_to_string(Self::PATH).context("reading bpf_stats_enabled")?;
        let s = Self(old.trim().to_owned());
        s.set(false)?;
        Ok(s)
    }

    pub fn set(&self, on: bool) -> Result<()> {
        fs::write(Self::PATH, if on { "1" } else { "0" }).context("setting bpf_stats_enabled")
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(Self::PATH, &self.0);
    }
}

pub fn nft_script(table: &str) -> String {
    // 1,000 IPv4 elements: the target, the 500 race IPv4s, and filler.
    let mut elems: Vec<String> = vec![addr::API_V4.to_string()];
    elems.extend((1..=500).map(|n| race_addr(n).to_string()));
    let mut i = 0u32;
    while elems.len() < 1000 {
        elems.push(format!("100.64.{}.{}", 10 + i / 250, 1 + i % 250));
        i += 1;
    }
    let mut s = String::new();
    let _ = writeln!(s, "table inet {table} {{");
    let _ = writeln!(s, "  set allowed {{ type ipv4_addr; elements = {{ {} }} }}", elems.join(", "));
    let _ = writeln!(s, "  chain out {{ type filter hook output priority 0; policy drop;");
    let _ = writeln!(s, "    oif \"lo\" accept");
    let _ = writeln!(s, "    ip daddr {} udp dport 53 accept", addr::DNS_V4);
    let _ = writeln!(s, "    ip daddr {} tcp dport 53 accept", addr::DNS_V4);
    let _ = writeln!(s, "    ip daddr @allowed tcp dport {{ 80, 7001, 7002 }} accept");
    let _ = writeln!(s, "  }}\n}}");
    s
}

pub fn nft(bench: &Bench, pod: &str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut cmd = bench.cmd_in_pod(pod, "nft");
    cmd.args(args).stdin(Stdio::piped());
    let mut child = cmd.spawn().context("starting nft")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("nft {args:?} failed: {status}");
    }
    Ok(())
}

/// CPU time (user + system, all threads) of process `pid` so far, in ns.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // Fields after the command name, which may hold spaces: ") S ppid ...".
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 here.
    let ticks: u64 = [11, 12].iter().filter_map(|i| f.get(*i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000_000 / hz
}

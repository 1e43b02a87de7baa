//! `cargo xtask load ...` (hidden): the workloads `cargo xtask bench` runs
//! inside the bench's pod (client) and internet (server) namespaces. Plain
//! std so that what is measured is the kernel path, not a runtime.
//! Prints one JSON object on stdout.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct LoadArgs {
    #[command(subcommand)]
    cmd: LoadCmd,
}

#[derive(Subcommand, Debug)]
enum LoadCmd {
    /// Servers: `--crr` answers one byte per connection then closes;
    /// `--bulk` discards everything.
    Serve {
        #[arg(long)]
        crr: SocketAddr,
        #[arg(long)]
        bulk: SocketAddr,
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Client: resolve `--prelearn` race names first (so the endpoint has
    /// that many learned IPs), then run workloads of `--secs` each.
    Client {
        #[arg(long, value_parser = ["crr", "bulk", "dns"])]
        mode: String,
        /// host:port (crr, bulk) or a host name (dns).
        #[arg(long)]
        target: String,
        #[arg(long, default_value = "2")]
        secs: f64,
        #[arg(long, default_value = "0")]
        prelearn: u32,
        /// After prelearning print `prelearned`, then run a workload per
        /// `go [MODE TARGET [SECS]]` line on stdin, each followed by `done`.
        #[arg(long)]
        sync: bool,
        /// Run on this CPU only (the bench puts client and server on
        /// different cores, so no run depends on where the scheduler put
        /// them).
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Denied connects, one after the other as fast as they fail, for
    /// `--secs` (a blocked-log flood from an enforced pod); prints how many.
    Flood {
        /// A destination the policy denies (e.g. 169.254.169.254:80).
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        secs: f64,
    },
}

pub fn run(args: &LoadArgs) -> Result<()> {
    match &args.cmd {
        LoadCmd::Serve { crr, bulk, cpu } => {
            pin(*cpu)?;
            serve(*crr, *bulk)
        }
        LoadCmd::Flood { target, secs } => flood(*target, Duration::from_secs_f64(*secs)),
        LoadCmd::Client { mode, target, secs, prelearn, sync, cpu } => {
            pin(*cpu)?;
            for n in 1..=*prelearn {
                let _ = (format!("race-{n}.test"), 80).to_socket_addrs().with_context(|| format!("resolving race-{n}.test"))?;
            }
            if !*sync {
                return workload(mode, target, *secs);
            }
            println!("prelearned");
            std::io::stdout().flush()?;
            // Then one workload per `go [MODE TARGET [SECS]]` line, each followed by
            // `done`, until `bye` or end of input: the caller reads counters
            // exactly around each one, and runs many short ones alternating
            // with other configurations.
            for line in std::io::stdin().lines() {
                let line = line?;
                let mut words = line.split_whitespace();
                if words.next() != Some("go") {
                    break;
                }
                let (m, t) = (words.next().unwrap_or(mode), words.next().unwrap_or(target));
                let secs = match words.next() {
                    Some(w) => w.parse().with_context(|| format!("slice length {w:?}"))?,
                    None => *secs,
                };
                workload(m, t, secs)?;
                println!("done");
                std::io::stdout().flush()?;
            }
            Ok(())
        }
    }
}

/// Pins the process (threads spawned later inherit it) to one CPU.
fn pin(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays in it
    // (checked against CPU_SETSIZE); sched_setaffinity(0) is this thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            bail!("--cpu {cpu}: out of range");
        }
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!("--cpu {cpu}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn workload(mode: &str, target: &str, secs: f64) -> Result<()> {
    let d = Duration::from_secs_f64(secs);
    match mode {
        "crr" => crr(target, d),
        "bulk" => bulk(target, d),
        "dns" => dns(target, d),
        _ => bail!("unknown mode {mode}"),
    }
}

fn serve(crr_addr: SocketAddr, bulk_addr: SocketAddr) -> Result<()> {
    let crr = TcpListener::bind(crr_addr).with_context(|| format!("bind {crr_addr}"))?;
    let bulk = TcpListener::bind(bulk_addr).with_context(|| format!("bind {bulk_addr}"))?;
    thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 18];
        for s in bulk.incoming().flatten() {
            let mut s = s;
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    println!("ready");
    std::io::stdout().flush()?;
    let mut b = [0u8; 1];
    for s in crr.incoming() {
        let Ok(mut s) = s else { continue };
        // Server writes, client reads and closes with RST (linger 0), so
        // neither side piles up TIME_WAIT over a long run.
        if s.read_exact(&mut b).is_ok() {
            let _ = s.write_all(&b);
        }
    }
    Ok(())
}

/// First IPv4 answer (the nftables comparison filters IPv4 only).
fn resolve(target: &str) -> Result<SocketAddr> {
    target.to_socket_addrs()?.find(SocketAddr::is_ipv4).with_context(|| format!("{target}: no IPv4 address"))
}

/// `spread:N:PORT`: the IPv4 addresses of race-1 ..= race-N (each
/// connection to the next one, so no two in a row share a destination);
/// else one `host:port`.
fn crr_targets(target: &str) -> Result<Vec<SocketAddr>> {
    let Some(rest) = target.strip_prefix("spread:") else { return Ok(vec![resolve(target)?]) };
    let (n, port) = rest.split_once(':').context("spread:N:PORT")?;
    let (n, port): (u32, u16) = (n.parse()?, port.parse()?);
    (1..=n).map(|i| resolve(&format!("race-{i}.test:{port}"))).collect()
}

fn crr(target: &str, d: Duration) -> Result<()> {
    let addrs = crr_targets(target)?;
    let start = Instant::now();
    let (mut ops, mut errors) = (0u64, 0u64);
    let mut b = [0u8; 1];
    let mut next = addrs.iter().cycle();
    while start.elapsed() < d {
        let addr = *next.next().context("no target")?;
        let ok = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect(addr)?;
            linger_zero(&s)?;
            s.write_all(b"x")?;
            s.read_exact(&mut b)?;
            Ok(())
        })();
        if ok.is_ok() {
            ops += 1
        } else {
            errors += 1
        }
        if errors > 100 && ops == 0 {
            bail!("connections to {target} keep failing: {}", ok.err().map(|e| e.to_string()).unwrap_or_default());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(r#"{{"mode":"crr","ops":{ops},"errors":{errors},"secs":{secs},"per_sec":{}}}"#, ops as f64 / secs);
    Ok(())
}

fn bulk(target: &str, d: Duration) -> Result<()> {
    let addr = resolve(target)?;
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    let buf = vec![0x5au8; 1 << 17];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < d {
        s.write_all(&buf)?;
        bytes += buf.len() as u64;
    }
    let _ = s.shutdown(Shutdown::Write);
    let secs = start.elapsed().as_secs_f64();
    println!(r#"{{"mode":"bulk","bytes":{bytes},"secs":{secs},"per_sec":{}}}"#, bytes as f64 / secs);
    Ok(())
}

/// Lookup latency through getaddrinfo (glibc has no cache: every call asks
/// the resolver, so with the agent every answer goes through the gate).
fn dns(name: &str, d: Duration) -> Result<()> {
    let start = Instant::now();
    let mut lat = Vec::new();
    while start.elapsed() < d {
        let t = Instant::now();
        (name, 80).to_socket_addrs().with_context(|| format!("resolving {name}"))?.next();
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0);
    println!(r#"{{"mode":"dns","ops":{},"p50_ns":{},"p99_ns":{}}}"#, lat.len(), pct(0.50), pct(0.99));
    Ok(())
}

fn flood(target: SocketAddr, d: Duration) -> Result<()> {
    let start = Instant::now();
    let (mut denied, mut other) = (0u64, 0u64);
    while start.elapsed() < d {
        match TcpStream::connect_timeout(&target, Duration::from_millis(100)) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => denied += 1,
            _ => other += 1,
        }
        if other > 100 && denied == 0 {
            bail!("connects to {target} are not denied: the flood would not reach the blocked log");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(r#"{{"mode":"flood","denied":{denied},"other":{other},"secs":{secs},"per_sec":{}}}"#, denied as f64 / secs);
    Ok(())
}

/// SO_LINGER {on, 0}: close() sends RST, so the client keeps no TIME_WAIT
/// (std's `set_linger` is still unstable).
fn linger_zero(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: valid socket fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

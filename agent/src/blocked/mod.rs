//! The blocked-connection log: denied (and audited) attempts from the
//! kernel's ring buffer, enriched with who (endpoint, namespace, pod) and
//! which host name the IP came from, written as one JSON object per line.

use std::{
    fs::OpenOptions,
    io::Write,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use agent_common::{DeniedEvent, Hook, Reason, proto};
use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::watch,
};

use crate::{
    enforcer::{EndpointView, Enforcer},
    util::{boot_ns, lock},
};

/// Where blocked-connection records go; shared by the kernel-event reader
/// and the DNS gate (refused queries), so the log is one stream.
pub type LogSink = Arc<Mutex<Box<dyn Write + Send>>>;

pub fn log_sink(w: Box<dyn Write + Send>) -> LogSink {
    Arc::new(Mutex::new(w))
}

/// The blocked-connection log's destination: a file (appended to) or stderr.
pub fn open_log(path: Option<&Path>) -> Result<Box<dyn Write + Send>, std::io::Error> {
    Ok(match path {
        Some(p) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("opening log {}: {e}", p.display())))?,
        ),
        None => Box::new(std::io::stderr()),
    })
}

/// Writes one JSON line (and flushes: the log is read while we run).
pub fn write_record(sink: &LogSink, rec: &BlockedRecord) {
    let Ok(line) = serde_json::to_string(rec) else { return };
    let mut w = lock(sink);
    let _ = writeln!(w, "{line}");
    let _ = w.flush();
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The command name of a process, for records made in user space.
pub fn proc_comm(tgid: u32) -> Option<String> {
    (tgid != 0).then(|| std::fs::read_to_string(format!("/proc/{tgid}/comm")).ok()).flatten().map(|s| s.trim_end().to_owned())
}

/// One line of the blocked-connection log.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct BlockedRecord {
    /// RFC 3339 wall-clock time of the attempt.
    pub time: String,
    /// "blocked", or "audit" when audit mode let it through.
    pub verdict: &'static str,
    pub reason: &'static str,
    pub endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub protocol: String,
    pub dst: IpAddr,
    pub dport: u16,
    /// The DNS name this endpoint last resolved to `dst`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    pub hook: &'static str,
    pub cgroup_id: u64,
    /// The host-side veth a packet was judged on (the veth programs have
    /// no process to name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
}

pub fn protocol_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        proto::SCTP => "sctp".into(),
        other => format!("ip-proto-{other}"),
    }
}

/// IPv4-mapped addresses are shown as plain IPv4.
pub fn display_ip(raw: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(raw);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn wall_time(ts_boot_ns: u64) -> String {
    let age = Duration::from_nanos(boot_ns().saturating_sub(ts_boot_ns));
    let t = SystemTime::now().checked_sub(age).unwrap_or(SystemTime::now());
    humantime::format_rfc3339_millis(t).to_string()
}

impl BlockedRecord {
    /// A kernel event's record; `ep` is its endpoint and the name it last
    /// resolved to the destination, if known.
    pub fn from_event(ev: &DeniedEvent, ep: Option<&(EndpointView, Option<String>)>) -> Self {
        let comm_len = ev.comm.iter().position(|b| *b == 0).unwrap_or(ev.comm.len());
        let view = ep.map(|(v, _)| v);
        Self {
            time: wall_time(ev.ts_ns),
            verdict: if ev.audit != 0 { "audit" } else { "blocked" },
            reason: Reason::from_u32(ev.reason).map_or("unknown", Reason::as_str),
            endpoint: view.map_or_else(|| format!("endpoint-{}", ev.endpoint), |e| e.identity.name.clone()),
            namespace: view.and_then(|e| e.identity.namespace.clone()),
            pod: view.and_then(|e| e.identity.pod.clone()),
            protocol: protocol_name(ev.proto),
            dst: display_ip(ev.daddr),
            dport: u16::from_be_bytes(ev.dport),
            host: ep.and_then(|(_, host)| host.clone()),
            pid: (ev.tgid != 0).then_some(ev.tgid),
            comm: (comm_len > 0).then(|| String::from_utf8_lossy(&ev.comm[..comm_len]).into_owned()),
            hook: Hook::from_u32(ev.hook).map_or("unknown", Hook::as_str),
            cgroup_id: ev.cgroup_id,
            ifindex: (ev.ifindex != 0).then_some(ev.ifindex),
        }
    }

    /// A record the DNS side makes (a refused name to `dst`, the resolver;
    /// a rebinding address in an answer): the process, if known, is read
    /// from /proc.
    pub fn from_dns(ep: &EndpointView, reason: Reason, dst: SocketAddr, host: &str, tgid: u32, cgroup_id: u64) -> Self {
        Self {
            time: now_rfc3339(),
            verdict: if ep.mode.audits() { "audit" } else { "blocked" },
            reason: reason.as_str(),
            endpoint: ep.identity.name.clone(),
            namespace: ep.identity.namespace.clone(),
            pod: ep.identity.pod.clone(),
            protocol: "dns".into(),
            dst: dst.ip(),
            dport: dst.port(),
            host: Some(host.to_owned()),
            pid: (tgid != 0).then_some(tgid),
            comm: proc_comm(tgid),
            hook: "dns-gate",
            cgroup_id,
            ifindex: None,
        }
    }
}

fn decode(bytes: &[u8]) -> Option<DeniedEvent> {
    (bytes.len() >= size_of::<DeniedEvent>())
        // SAFETY: length checked; DeniedEvent is Pod.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// Asks the DNS side for a gate in a process's namespace: (tgid, endpoint).
pub type GateRequests = std::sync::mpsc::SyncSender<(u32, u32)>;

/// Writes every queued event as a record. DNS over TCP refused for want
/// of a gate in the caller's namespace asks for one there (without waiting
/// for it), so a retry works.
fn drain(ring: &mut RingBuf<MapData>, enforcer: &Enforcer, out: &LogSink, gates: Option<&GateRequests>) {
    while let Some(item) = ring.next() {
        let Some(ev) = decode(&item) else { continue };
        let ep = enforcer.describe(ev.endpoint, display_ip(ev.daddr));
        write_record(out, &BlockedRecord::from_event(&ev, ep.as_ref()));
        if let Some(g) = gates.filter(|_| ev.reason == Reason::DeniedDnsNoGate as u32 && ev.tgid != 0) {
            // Full: this retry goes without; the client's next one asks again.
            let _ = g.try_send((ev.tgid, ev.endpoint));
        }
    }
}

/// Consumes denied-attempt events and writes JSON lines to `out` until
/// `stop` turns true, then drains what is left (the ring buffer's fd is
/// readable when records are queued: tokio's `AsyncFd`, as aya-template's
/// log reader does).
pub async fn run(
    ring: RingBuf<MapData>,
    enforcer: Enforcer,
    out: LogSink,
    gates: Option<GateRequests>,
    mut stop: watch::Receiver<bool>,
) {
    // SAFETY: the AsyncFd owns the RingBuf, which owns the fd, so the fd
    // stays open for as long as it is registered.
    let mut fd = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the denied-event ring buffer; blocked attempts are not logged");
            return;
        }
    };
    loop {
        tokio::select! {
            ready = fd.readable_mut() => {
                let Ok(mut guard) = ready else { break };
                drain(guard.get_inner_mut(), &enforcer, &out, gates.as_ref());
                guard.clear_ready();
            }
            _ = stop.changed() => break,
        }
    }
    drain(fd.get_mut(), &enforcer, &out, gates.as_ref());
}

//! The records of the blocked log, version 1 (docs/BLOCKED-LOG.md lists
//! every field): one JSON object per line, `"kind":"attempt"` for denied
//! (or audited) attempts, `"kind":"lost"` for what the rate limit held back.
//! Fields are only ever added to a version; a change of meaning is a new
//! `v`.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime},
};

use agent_common::{DeniedEvent, Hook, Reason, proto};
use serde::Serialize;

use super::escape::{escape_in_place, escape_opt};
use crate::{enforcer::EndpointView, policy::range_name, util::boot_ns};

/// The schema version every record carries as `v`.
pub const SCHEMA_VERSION: u32 = 1;

/// One denied (or audited) attempt, or several folded into one (`count`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BlockedRecord {
    pub v: u32,
    /// "attempt".
    pub kind: &'static str,
    /// RFC 3339 wall-clock time of the attempt (of the first, when folded).
    pub time: String,
    /// The node (`agent --node-name`; the host name for `exec` and `run`),
    /// set by the log as it writes.
    pub node: String,
    /// "blocked", or "audit" when audit mode let it through.
    pub verdict: &'static str,
    pub reason: &'static str,
    /// `denied-range`: the always-denied range's short name (`metadata`,
    /// `link-local`, `private`, ...; `policy::range_name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<&'static str>,
    /// Records of the DNS gate: what it did (`nxdomain`, `refused`,
    /// `forwarded` in audit mode for a refused name; `stripped`, or `kept`
    /// in audit mode, for a rebinding address in an answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
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
    /// How many attempts this record stands for (1, or the repeats folded
    /// into it).
    pub count: u64,
    /// Folded records: the first and last attempt folded in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
}

/// What the rate limit held back of one endpoint's records of one reason.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LostRecord {
    pub v: u32,
    /// "lost".
    pub kind: &'static str,
    pub time: String,
    pub node: String,
    pub endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The reason of the records not written.
    pub reason: &'static str,
    /// Why they were not written: "rate-limited".
    pub what: &'static str,
    /// Attempts not written (a held-back folded record counts its `count`).
    pub count: u64,
    /// Times of the first and last attempt not written.
    pub first: String,
    pub last: String,
}

pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The command name of a process, for records made in user space.
pub fn proc_comm(tgid: u32) -> Option<String> {
    (tgid != 0).then(|| std::fs::read_to_string(format!("/proc/{tgid}/comm")).ok()).flatten().map(|s| s.trim_end().to_owned())
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
    rfc3339(SystemTime::now().checked_sub(age).unwrap_or(SystemTime::now()))
}

/// The range name of a `denied-range` record's destination.
fn range_of(reason: &str, dst: IpAddr) -> Option<&'static str> {
    (reason == Reason::DeniedRange.as_str()).then(|| range_name(dst)).flatten()
}

impl BlockedRecord {
    /// A kernel event's record; `ep` is its endpoint and the name it last
    /// resolved to the destination, if known.
    pub fn from_event(ev: &DeniedEvent, ep: Option<&(EndpointView, Option<String>)>) -> Self {
        let comm_len = ev.comm.iter().position(|b| *b == 0).unwrap_or(ev.comm.len());
        let view = ep.map(|(v, _)| v);
        let reason = Reason::from_u32(ev.reason).map_or("unknown", Reason::as_str);
        let dst = display_ip(ev.daddr);
        Self {
            v: SCHEMA_VERSION,
            kind: "attempt",
            time: wall_time(ev.ts_ns),
            node: String::new(),
            verdict: if ev.audit != 0 { "audit" } else { "blocked" },
            reason,
            range: range_of(reason, dst),
            decision: None,
            endpoint: view.map_or_else(|| format!("endpoint-{}", ev.endpoint), |e| e.identity.name.clone()),
            namespace: view.and_then(|e| e.identity.namespace.clone()),
            pod: view.and_then(|e| e.identity.pod.clone()),
            protocol: protocol_name(ev.proto),
            dst,
            dport: u16::from_be_bytes(ev.dport),
            host: ep.and_then(|(_, host)| host.clone()),
            pid: (ev.tgid != 0).then_some(ev.tgid),
            comm: (comm_len > 0).then(|| String::from_utf8_lossy(&ev.comm[..comm_len]).into_owned()),
            hook: Hook::from_u32(ev.hook).map_or("unknown", Hook::as_str),
            cgroup_id: ev.cgroup_id,
            ifindex: (ev.ifindex != 0).then_some(ev.ifindex),
            count: 1,
            first: None,
            last: None,
        }
    }

    /// A record the DNS side makes (a refused name to `dst`, the resolver;
    /// a rebinding address in an answer), with what the gate did
    /// (`decision`): the process, if known, is read from /proc.
    pub fn from_dns(
        ep: &EndpointView,
        reason: Reason,
        decision: &'static str,
        dst: SocketAddr,
        host: &str,
        tgid: u32,
        cgroup_id: u64,
    ) -> Self {
        Self {
            v: SCHEMA_VERSION,
            kind: "attempt",
            time: now_rfc3339(),
            node: String::new(),
            verdict: if ep.mode.audits() { "audit" } else { "blocked" },
            reason: reason.as_str(),
            range: range_of(reason.as_str(), dst.ip()),
            decision: Some(decision),
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
            count: 1,
            first: None,
            last: None,
        }
    }

    /// Escapes every name a workload controls or may influence.
    pub fn escape_names(&mut self) {
        for s in [&mut self.endpoint, &mut self.protocol] {
            escape_in_place(s);
        }
        for s in [&mut self.namespace, &mut self.pod, &mut self.host, &mut self.comm] {
            escape_opt(s);
        }
    }
}

/// A record for unit tests: `ws/a` blocked on `api.example.test` (203.0.113.10).
#[cfg(test)]
pub fn sample(dport: u16, time: &str) -> BlockedRecord {
    BlockedRecord {
        v: SCHEMA_VERSION,
        kind: "attempt",
        time: time.into(),
        node: String::new(),
        verdict: "blocked",
        reason: "denied-default",
        range: None,
        decision: None,
        endpoint: "ws/a".into(),
        namespace: Some("ws".into()),
        pod: Some("a".into()),
        protocol: "tcp".into(),
        dst: "203.0.113.10".parse().unwrap(),
        dport,
        host: Some("api.example.test".into()),
        pid: Some(7),
        comm: Some("curl".into()),
        hook: "connect4",
        cgroup_id: 1,
        ifindex: None,
        count: 1,
        first: None,
        last: None,
    }
}

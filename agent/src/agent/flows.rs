//! Allowed traffic for ClickHouse, per pod and minute, from what the
//! kernel counts (no per-connection event exists, and none is added):
//!
//! - `allowed_by_rule`: per pod and policy entry, the connections and
//!   datagrams the kernel allowed by that entry in the minute: the delta of
//!   its per-endpoint rule counter (`FLOW_COUNTERS`, `Enforcer::flow_counts`;
//!   connections are `connect()`s and TCP SYNs on a veth, datagrams are
//!   judged one by one). The entry's text names the destination names or
//!   CIDRs and the ports as the policy's author wrote them.
//! - `names_resolved`: per pod and DNS name, the allowed lookups the gate
//!   answered in the minute, the addresses they taught the kernel, and the
//!   ports the policy opens for the name (`dnsgate/names.rs`).
//! - `allowed_flows`: per pod, destination and minute, the connections the
//!   kernel allowed (deltas of `FLOW_DESTS`, counted per connection, never
//!   per packet), by the name the pod resolved to the address (the address
//!   itself for a CIDR rule's), port and protocol.
//!
//! Rows are written at each wall-clock minute (`minute` is its start, UTC),
//! for the part of a minute before an endpoint is removed, and for the
//! part before the agent stops or hands over to a newer agent (which counts
//! from its own start: the two never write the same counts); so a minute
//! may have more than one row per key: sum them. Zero rows are not written.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::{runtime::Handle, sync::watch, task::JoinHandle};

use crate::{
    clickhouse::{Buffer, Pipeline, Running},
    dnsgate::DnsStats,
    enforcer::{DestCount, EndpointView, Enforcer, FlowCounts, Identity},
    util::lock,
};

/// A rule's counter: its position in the policy, `usize::MAX` for "other".
type Slot = usize;
/// An endpoint's counters: (endpoint id, cgroup id), so a reused id starts
/// afresh.
type Key = (u32, u64);
/// One destination's counter: its endpoint, address, protocol, port.
type DestKey = (Key, std::net::IpAddr, u8, u16);

#[derive(Serialize)]
struct FlowRow<'a> {
    minute: u64,
    node: &'a str,
    namespace: &'a str,
    pod: &'a str,
    endpoint: &'a str,
    /// The name the pod resolved to the address, else the address.
    destination: &'a str,
    port: u16,
    protocol: &'a str,
    connections: u64,
}

#[derive(Serialize)]
struct RuleRow<'a> {
    minute: u64,
    node: &'a str,
    namespace: &'a str,
    pod: &'a str,
    endpoint: &'a str,
    rule: &'a str,
    allowed_connections_and_datagrams: u64,
}

#[derive(Serialize)]
struct NameRow<'a> {
    minute: u64,
    node: &'a str,
    namespace: &'a str,
    pod: &'a str,
    endpoint: &'a str,
    name: &'a str,
    ports: &'a str,
    lookups_answered: u64,
    addresses_learned: u64,
}

/// One row, as the JSON line its table's sender sends (a row that does
/// not serialize, which these plain structs cannot fail to, is skipped).
fn push_row(buffer: &Buffer, row: &impl Serialize) {
    if let Ok(line) = serde_json::to_string(row) {
        buffer.push(line);
    }
}

/// The start of the minute `t` is in, in seconds since the epoch.
fn minute_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 60 * 60)
}

/// Each rule's count by slot.
fn slots(c: &FlowCounts) -> impl Iterator<Item = (Slot, &str, u64)> {
    c.rules.iter().enumerate().map(|(i, (text, n))| (if text == "other" { usize::MAX } else { i }, text.as_str(), *n))
}

pub struct Flows {
    node: String,
    rules: Arc<Buffer>,
    names: Arc<Buffer>,
    gate: Arc<DnsStats>,
    dests: Arc<Buffer>,
    /// The counts last written, per endpoint and slot.
    prev: Mutex<HashMap<Key, HashMap<Slot, u64>>>,
    /// The per-destination counts last written.
    prev_dests: Mutex<HashMap<DestKey, u64>>,
}

impl Flows {
    pub fn new(node: &str, rules: Arc<Buffer>, names: Arc<Buffer>, dests: Arc<Buffer>, gate: Arc<DnsStats>) -> Self {
        Self { node: node.to_owned(), rules, names, gate, dests, prev: Mutex::default(), prev_dests: Mutex::default() }
    }

    /// The counts now are where the first minute starts (an adopted
    /// endpoint's pinned counts are not this agent's traffic).
    pub fn baseline(&self, enforcer: &Enforcer) {
        let mut counts = enforcer.flow_counts();
        let mut dests = enforcer.flow_dests();
        let mut prev = lock(&self.prev);
        let mut prev_dests = lock(&self.prev_dests);
        for row in enforcer.snapshot() {
            let key = (row.view.id, row.view.cgroup_id);
            for d in dests.remove(&row.view.id).unwrap_or_default() {
                prev_dests.insert((key, d.ip, d.proto, d.port), d.connections);
            }
            let Some(c) = counts.remove(&row.view.id) else { continue };
            prev.insert(key, slots(&c).map(|(s, _, n)| (s, n)).collect());
        }
    }

    /// Pushes one endpoint's per-destination deltas since the last write,
    /// one row per destination name (its addresses summed), port and
    /// protocol.
    fn push_dests(&self, minute: u64, key: Key, who: &Identity, dests: &[DestCount], prev: &mut HashMap<DestKey, u64>) {
        let mut rows: HashMap<(String, u16, u8), u64> = HashMap::new();
        for d in dests {
            let before = prev.insert((key, d.ip, d.proto, d.port), d.connections).unwrap_or(0);
            // Lower than before: the kernel evicted the entry (LRU) and
            // counted it again from 0: all of it is new.
            let delta = if d.connections >= before { d.connections - before } else { d.connections };
            if delta > 0 {
                let dest = d.name.clone().unwrap_or_else(|| d.ip.to_string());
                *rows.entry((dest, d.port, d.proto)).or_default() += delta;
            }
        }
        for ((destination, port, proto), connections) in rows {
            let protocol = crate::blocked::schema::protocol_name(proto);
            let row = FlowRow {
                minute,
                node: &self.node,
                namespace: who.namespace.as_deref().unwrap_or(""),
                pod: who.pod.as_deref().unwrap_or(""),
                endpoint: &who.name,
                destination: &destination,
                port,
                protocol: &protocol,
                connections,
            };
            push_row(&self.dests, &row);
        }
    }

    /// Pushes one endpoint's deltas since the last write.
    fn push_rules(&self, minute: u64, key: Key, who: &Identity, c: &FlowCounts, prev: &mut HashMap<Key, HashMap<Slot, u64>>) {
        let last = prev.entry(key).or_default();
        for (slot, text, n) in slots(c) {
            let before = last.insert(slot, n).unwrap_or(0);
            // Less than before: the counter started again (a new policy
            // with fewer entries reused the slot): all of it is new.
            let delta = if n >= before { n - before } else { n };
            if delta == 0 {
                continue;
            }
            let row = RuleRow {
                minute,
                node: &self.node,
                namespace: who.namespace.as_deref().unwrap_or(""),
                pod: who.pod.as_deref().unwrap_or(""),
                endpoint: &who.name,
                rule: text,
                allowed_connections_and_datagrams: delta,
            };
            push_row(&self.rules, &row);
        }
    }

    /// Writes the minute that started at `minute`: every endpoint's rule
    /// deltas and the names tallied since the last write.
    pub fn write(&self, enforcer: &Enforcer, minute: u64) {
        let mut counts = enforcer.flow_counts();
        let mut dests = enforcer.flow_dests();
        let mut prev = lock(&self.prev);
        let mut prev_dests = lock(&self.prev_dests);
        let mut seen = Vec::new();
        for row in enforcer.snapshot() {
            let v = &row.view;
            let key = (v.id, v.cgroup_id);
            seen.push(key);
            let now = dests.remove(&v.id).unwrap_or_default();
            self.push_dests(minute, key, &v.identity, &now, &mut prev_dests);
            let Some(c) = counts.remove(&v.id) else { continue };
            self.push_rules(minute, key, &v.identity, &c, &mut prev);
        }
        prev.retain(|k, _| seen.contains(k));
        // Gone endpoints' and evicted destinations' last counts.
        let live: std::collections::HashSet<DestKey> = prev_dests.keys().copied().filter(|k| seen.contains(&k.0)).collect();
        prev_dests.retain(|k, _| live.contains(k));
        drop((prev, prev_dests));
        for (name, n) in self.gate.names.take() {
            let row = NameRow {
                minute,
                node: &self.node,
                namespace: n.who.namespace.as_deref().unwrap_or(""),
                pod: n.who.pod.as_deref().unwrap_or(""),
                endpoint: &n.who.name,
                name: &name,
                ports: &n.ports,
                lookups_answered: n.lookups,
                addresses_learned: n.addresses,
            };
            push_row(&self.names, &row);
        }
    }

    /// An endpoint about to be removed: its deltas of this minute, now
    /// (its counters go with it).
    pub fn depart(&self, view: &EndpointView, counts: Option<&FlowCounts>, dests: Option<&[DestCount]>) {
        let key = (view.id, view.cgroup_id);
        let minute = minute_of(SystemTime::now());
        let mut prev = lock(&self.prev);
        if let Some(c) = counts {
            self.push_rules(minute, key, &view.identity, c, &mut prev);
        }
        prev.remove(&key);
        let mut prev_dests = lock(&self.prev_dests);
        if let Some(d) = dests {
            self.push_dests(minute, key, &view.identity, d, &mut prev_dests);
        }
        prev_dests.retain(|k, _| k.0 != key);
    }
}

/// Writes a minute at every wall-clock minute, and the part of the current
/// one when stopped.
async fn every_minute(flows: Arc<Flows>, enforcer: Enforcer, mut stop: watch::Receiver<bool>) {
    loop {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let next = (now.as_secs() / 60 + 1) * 60;
        let wait = Duration::from_secs(next).saturating_sub(now);
        tokio::select! {
            () = tokio::time::sleep(wait) => flows.write(&enforcer, next - 60),
            _ = stop.changed() => {
                flows.write(&enforcer, minute_of(SystemTime::now()));
                return;
            }
        }
    }
}

/// The agent's ClickHouse output: the pipeline's senders and the minute
/// writer.
pub struct Output {
    pipeline: Pipeline,
    pub flows: Arc<Flows>,
    senders: Option<Running>,
}

impl Output {
    pub fn new(pipeline: Pipeline, gate: Arc<DnsStats>) -> Self {
        gate.names.enable();
        let flows =
            Arc::new(Flows::new(&pipeline.node, pipeline.rules.clone(), pipeline.names.clone(), pipeline.flows.clone(), gate));
        Self { pipeline, flows, senders: None }
    }

    pub fn stats(&self) -> Arc<crate::clickhouse::Stats> {
        self.pipeline.stats()
    }

    /// Starts sending, and counting from now. The minute writer is one of
    /// the agent's consumers (its task is returned): it writes the minute
    /// so far and ends when they stop, at a stop or a handover, so two
    /// agents never both write the same counters' deltas.
    pub fn start(&mut self, rt: &Handle, enforcer: &Enforcer, stop: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        if self.senders.is_some() {
            return None;
        }
        self.flows.baseline(enforcer);
        self.senders = Some(self.pipeline.start(rt, crate::blocked::clickhouse::converter()));
        tracing::info!(clickhouse = %self.pipeline.server(), node = %self.pipeline.node, "sending flow records to ClickHouse");
        Some(rt.spawn(every_minute(self.flows.clone(), enforcer.clone(), stop)))
    }

    /// Sends what is held (until the senders' deadline). Call after the
    /// consumers stopped: the blocked log's last records and the last
    /// minute are in the buffers then.
    pub async fn finish(self) {
        if let Some(senders) = self.senders {
            senders.finish().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::Limits;

    fn rows(b: &Buffer) -> Vec<serde_json::Value> {
        let batch = b.take(&|s: &str| Some(s.to_owned())).map(|x| String::from_utf8(x.body).unwrap()).unwrap_or_default();
        batch.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn each_minute_has_the_deltas_of_the_rules_that_moved() {
        let limits = Limits { records: 100, bytes: 1 << 20, batch: 100 };
        let (rules, names) = (Arc::new(Buffer::new("r", limits)), Arc::new(Buffer::new("n", limits)));
        let f = Flows::new("node-a", rules.clone(), names.clone(), names, Arc::default());
        let who = Identity { name: "ep".into(), namespace: Some("ns".into()), pod: Some("p".into()) };
        let counts = |a: u64, other: u64| FlowCounts {
            rules: vec![("egress[0] toFQDNs a.test ports 443/tcp".into(), a), ("other".into(), other)],
            ..FlowCounts::default()
        };
        let mut prev = HashMap::new();
        f.push_rules(60, (1, 9), &who, &counts(5, 0), &mut prev);
        let got = rows(&rules);
        assert_eq!(got.len(), 1, "no row for a rule at 0: {got:?}");
        let r = &got[0];
        assert_eq!(
            (r["minute"].as_u64(), r["node"].as_str(), r["namespace"].as_str(), r["pod"].as_str()),
            (Some(60), Some("node-a"), Some("ns"), Some("p"))
        );
        assert_eq!(
            (r["rule"].as_str(), r["allowed_connections_and_datagrams"].as_u64()),
            (Some("egress[0] toFQDNs a.test ports 443/tcp"), Some(5))
        );
        f.push_rules(120, (1, 9), &who, &counts(7, 1), &mut prev);
        let got: Vec<u64> = rows(&rules).iter().map(|r| r["allowed_connections_and_datagrams"].as_u64().unwrap()).collect();
        assert_eq!(got, [2, 1]);
        f.push_rules(180, (1, 9), &who, &counts(7, 1), &mut prev);
        assert!(rows(&rules).is_empty(), "nothing moved: no rows");
        // A counter that went back started again: all of it is new.
        f.push_rules(240, (1, 9), &who, &counts(3, 1), &mut prev);
        assert_eq!(rows(&rules)[0]["allowed_connections_and_datagrams"], 3);
        // Another cgroup under the same id is another endpoint.
        f.push_rules(240, (1, 10), &who, &counts(4, 0), &mut prev);
        assert_eq!(rows(&rules)[0]["allowed_connections_and_datagrams"], 4);
        assert_eq!(minute_of(UNIX_EPOCH + Duration::from_secs(3599)), 3540);
    }

    #[test]
    fn each_minute_has_the_connections_per_destination_name_and_port() {
        let limits = Limits { records: 100, bytes: 1 << 20, batch: 100 };
        let (dests, other) = (Arc::new(Buffer::new("d", limits)), Arc::new(Buffer::new("o", limits)));
        let f = Flows::new("node-a", other.clone(), other, dests.clone(), Arc::default());
        let who = Identity { name: "ep".into(), namespace: Some("ns".into()), pod: Some("p".into()) };
        let d = |ip: &str, name: Option<&str>, port: u16, n: u64| DestCount {
            ip: ip.parse().unwrap(),
            name: name.map(str::to_owned),
            proto: agent_common::proto::TCP,
            port,
            connections: n,
        };
        let mut prev = HashMap::new();
        // Two addresses of one name on 443 make one row; the name on
        // another port, and an address a CIDR rule allows, their own.
        let now = [
            d("203.0.113.10", Some("api.example.test"), 443, 3),
            d("2001:db8::10", Some("api.example.test"), 443, 2),
            d("203.0.113.10", Some("api.example.test"), 8443, 1),
            d("198.51.100.7", None, 443, 4),
        ];
        f.push_dests(60, (1, 9), &who, &now, &mut prev);
        let mut got: Vec<(String, u64, u64)> = rows(&dests)
            .iter()
            .map(|r| {
                assert_eq!((r["minute"].as_u64(), r["pod"].as_str(), r["protocol"].as_str()), (Some(60), Some("p"), Some("tcp")));
                (r["destination"].as_str().unwrap().to_owned(), r["port"].as_u64().unwrap(), r["connections"].as_u64().unwrap())
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("198.51.100.7".to_owned(), 443, 4),
                ("api.example.test".to_owned(), 443, 5),
                ("api.example.test".to_owned(), 8443, 1)
            ]
        );
        // The next minute: deltas only; an evicted entry counted again
        // from 0 is all new; nothing moved, no row.
        let later = [
            d("203.0.113.10", Some("api.example.test"), 443, 4),
            d("2001:db8::10", Some("api.example.test"), 443, 2),
            d("203.0.113.10", Some("api.example.test"), 8443, 1),
            d("198.51.100.7", None, 443, 1),
        ];
        f.push_dests(120, (1, 9), &who, &later, &mut prev);
        let mut got: Vec<(String, u64)> = rows(&dests)
            .iter()
            .map(|r| (r["destination"].as_str().unwrap().to_owned(), r["connections"].as_u64().unwrap()))
            .collect();
        got.sort();
        assert_eq!(got, [("198.51.100.7".to_owned(), 1), ("api.example.test".to_owned(), 1)]);
        f.push_dests(180, (1, 9), &who, &later, &mut prev);
        assert!(rows(&dests).is_empty());
    }
}

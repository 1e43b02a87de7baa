//! Prometheus metrics on `metricsAddr`, with the `prometheus-client` crate:
//! collectors read every value at scrape time (the kernel's per-CPU maps,
//! the DNS gate's atomics, copies of the endpoint table), so nothing is
//! synced in the background and nothing a scrape does waits on, or holds,
//! the lock the DNS and connect paths take for longer than one copy.
//!
//! Node families (`node`): kernel verdicts by hook and reason, kernel-side
//! losses, DNS answers and learned addresses, config reloads, endpoints,
//! the gate's answer latency, build info. Per-pod families (`pods`), with
//! `source_namespace`/`source_pod` labels. The Kubernetes agent's per-pod
//! report (`k8s`).

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

use agent_common::{Hook, Reason, counter_index, loss};
use prometheus_client::{collector::Collector, encoding::DescriptorEncoder, registry::Registry};

use super::{
    coverage::Coverage,
    families::{NO_LABELS, PodLabels, counter, gauge, histogram, one},
    grace::Departed,
    pods::{self, PodGauges, PodValues},
};
use crate::{
    dnsgate::DnsStats,
    enforcer::{EndpointView, Enforcer, Identity},
};

/// What a scrape reads, none of it behind the lock the DNS and connect
/// paths wait on: the kernel's counters have their own handle, the gate's
/// counts are atomics, and the endpoints are copied out in one short lock.
#[derive(Clone)]
pub struct Sources {
    pub enforcer: Enforcer,
    pub coverage: Arc<Coverage>,
    pub gate: Arc<DnsStats>,
    pub config: Arc<ConfigStats>,
    /// Pods gone within the grace period.
    pub departed: Arc<Departed>,
    /// The blocked log's writer.
    pub blocked: Arc<crate::blocked::LogStats>,
    /// The Kubernetes agent's pods and readiness (`portcullis agent`).
    pub k8s: Option<Arc<super::k8s::K8sStats>>,
    /// The ClickHouse output's tables, when it is on.
    pub clickhouse: Option<Arc<crate::clickhouse::Stats>>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// Outcomes of `portcullis run` config reloads.
#[derive(Debug, Default)]
pub struct ConfigStats {
    pub applied: AtomicU64,
    /// Refused: the new config does not parse, names a bad field or a
    /// cgroup that does not exist; nothing changed.
    pub invalid: AtomicU64,
    /// Valid, but applying part of it failed (that part kept what it had).
    pub failed: AtomicU64,
}

/// The labels of an endpoint's pod.
pub fn pod_labels(id: &Identity) -> PodLabels {
    PodLabels {
        source_namespace: id.namespace.clone().unwrap_or_default(),
        source_pod: id.pod.clone().unwrap_or_else(|| id.name.clone()),
    }
}

/// One endpoint's counters now (its gauges are the caller's).
fn counters_of(src: &Sources, id: u32, flow: Option<crate::enforcer::FlowCounts>) -> PodValues {
    PodValues { flow: flow.unwrap_or_default(), queries: src.gate.queries.get(id), dns: src.gate.endpoint(id), gauges: None }
}

/// An endpoint's final values as it is removed, for the grace period
/// (before its counters are forgotten).
pub fn final_values(src: &Sources, view: &EndpointView) -> (PodLabels, PodValues) {
    let flow = src.enforcer.flow_counts().remove(&view.id);
    (pod_labels(&view.identity), counters_of(src, view.id, flow))
}

/// Every pod's values now: live endpoints (two under one pod's labels are
/// summed), then pods gone within the grace period that have no live
/// successor under the same labels.
pub fn pod_values(src: &Sources, now: Instant) -> Vec<(PodLabels, PodValues)> {
    let mut flows = src.enforcer.flow_counts();
    let mut uncontained = src.coverage.all();
    let mut pods: BTreeMap<PodLabels, PodValues> = BTreeMap::new();
    for row in src.enforcer.snapshot() {
        let id = row.view.id;
        let mut v = counters_of(src, id, flows.remove(&id));
        v.gauges = Some(PodGauges {
            learned: row.learned as u64,
            uncontained: uncontained.remove(&id).unwrap_or_default(),
            endpoints: vec![(row.view.identity.name.clone(), row.view.mode.as_str())],
        });
        pods.entry(pod_labels(&row.view.identity)).or_default().add(&v);
    }
    for (labels, v) in src.departed.current(now) {
        pods.entry(labels).or_insert(v);
    }
    pods.into_iter().collect()
}

/// The node's families.
fn encode_node(src: &Sources, pods_now: usize, enc: &mut DescriptorEncoder) -> fmt::Result {
    let c = src.enforcer.counters();
    let at = |i: u32| c.get(i as usize).copied().unwrap_or(0);
    counter(
        enc,
        "portcullis_verdicts_total",
        "Kernel verdicts by hook and reason (allowed-* and denied-*).",
        (0..Hook::COUNT).filter_map(Hook::from_u32).flat_map(|hook| {
            (0..Reason::MAX)
                .filter_map(Reason::from_u32)
                .map(move |r| ([("hook", hook.as_str()), ("reason", r.as_str())], at(counter_index(hook, r))))
        }),
    )?;
    counter(
        enc,
        "portcullis_kernel_losses_total",
        "Records the kernel could not hand over (rate limit, full ring buffer, no owner, too large).",
        [
            ("event-rate-limited", loss::EVENT_RATE_LIMITED),
            ("event-ringbuf-full", loss::EVENT_RINGBUF_FULL),
            ("dns-ringbuf-full", loss::DNS_RINGBUF_FULL),
            ("dns-no-owner", loss::DNS_NO_OWNER),
            ("dns-too-large", loss::DNS_TOO_LARGE),
        ]
        .map(|(what, i)| (one("what", what), at(i))),
    )?;
    let g = &*src.gate;
    counter(
        enc,
        "portcullis_dns_answers_total",
        "DNS answers the gate handled, by outcome.",
        [
            ("released", &g.released),
            ("unsolicited", &g.answers_unsolicited),
            ("stripped", &g.answers_stripped),
            ("refused", &g.queries_refused),
            ("malformed", &g.dropped_malformed),
            ("inject-failed", &g.dropped_inject_failed),
            ("unknown-endpoint", &g.dropped_unknown_endpoint),
        ]
        .map(|(o, v)| (one("outcome", o), v.load(Relaxed))),
    )?;
    counter(
        enc,
        "portcullis_learned_ips_total",
        "Addresses from DNS answers, by what the gate did with them.",
        [
            ("learned", &g.ips_learned),
            ("denied-range", &g.ips_denied_range),
            ("evicted", &g.ips_evicted),
            ("refused-cap", &g.ips_refused_cap),
        ]
        .map(|(w, v)| (one("what", w), v.load(Relaxed))),
    )?;
    histogram(
        enc,
        "portcullis_dns_gate_answer_seconds",
        "Time the DNS gate holds an answer: matching it to its query, learning its addresses into the kernel maps, stripping.",
        g.queries.latency(),
    )?;
    gauge(enc, "portcullis_endpoints", "Endpoints enforced by this agent.", [(NO_LABELS, pods_now as i64)])?;
    let b = &*src.blocked;
    counter(
        enc,
        "portcullis_blocked_log_total",
        "The blocked log: attempts handed to it, records written, attempts folded into a later record, records the node-wide rate limit held back and the attempts they stood for (written as `lost` records), failed writes, rotations.",
        [
            ("attempts", &b.attempts),
            ("records-written", &b.records_written),
            ("attempts-folded", &b.attempts_folded),
            ("records-rate-limited", &b.records_rate_limited),
            ("attempts-lost", &b.attempts_lost),
            ("lost-records-written", &b.lost_records_written),
            ("write-errors", &b.write_errors),
            ("rotations", &b.rotations),
        ]
        .map(|(w, v)| (one("what", w), v.load(Relaxed))),
    )?;
    if let Some(ch) = &src.clickhouse {
        clickhouse(enc, ch)?;
    }
    let cs = &src.config;
    counter(
        enc,
        "portcullis_config_reloads_total",
        "Config reloads of `portcullis run`: applied, invalid (refused, nothing changed) or failed (partly applied).",
        [("applied", &cs.applied), ("invalid", &cs.invalid), ("failed", &cs.failed)]
            .map(|(r, v)| (one("result", r), v.load(Relaxed))),
    )?;
    gauge(
        enc,
        "portcullis_build_info",
        "1, labelled with the agent's version.",
        [([("version", env!("CARGO_PKG_VERSION")), ("commit", option_env!("PORTCULLIS_COMMIT").unwrap_or("unknown"))], 1)],
    )
}

/// The ClickHouse output's families (only when it is on).
fn clickhouse(enc: &mut DescriptorEncoder, ch: &crate::clickhouse::Stats) -> fmt::Result {
    counter(
        enc,
        "portcullis_clickhouse_records_total",
        "Records for ClickHouse by table: sent (ClickHouse took them), dropped (the buffer was full, or still held when the agent stopped with ClickHouse away), retried (in a batch that failed and was kept for another try; once per try).",
        ch.tables.iter().flat_map(|(table, s)| {
            [("sent", &s.sent), ("dropped", &s.dropped), ("retried", &s.retried)]
                .map(|(o, v)| ([("table", *table), ("outcome", o)], v.load(Relaxed)))
        }),
    )?;
    gauge(
        enc,
        "portcullis_clickhouse_buffered_records",
        "Records held in memory for ClickHouse by table (waiting, or in a batch being sent).",
        ch.tables.iter().map(|(table, s)| (one("table", table), i64::try_from(s.held.load(Relaxed)).unwrap_or(i64::MAX))),
    )
}

/// Everything a scrape reports, as one collector.
#[derive(Debug)]
struct All(Sources);

impl Collector for All {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let src = &self.0;
        let pods = pod_values(src, Instant::now());
        let live = pods.iter().filter_map(|(_, v)| v.gauges.as_ref()).map(|g| g.endpoints.len()).sum();
        encode_node(src, live, &mut enc)?;
        pods::encode(&mut enc, &pods)?;
        if let Some(k) = &src.k8s {
            k.encode(&mut enc)?;
        }
        Ok(())
    }
}

/// The registry a server encodes on every scrape.
pub fn registry(src: Sources) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(All(src)));
    r
}

/// Exposition formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics text 1.0 (what Prometheus asks for first).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (curl, `promtool check metrics`).
    Text,
}

impl Format {
    /// From a request's `Accept` header.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// The whole exposition.
pub fn render(registry: &Registry, format: Format) -> Result<String, fmt::Error> {
    let mut out = String::new();
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry)?,
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?,
    }
    Ok(out)
}

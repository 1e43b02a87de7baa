//! Writing whole metric families from a collector (values read at scrape
//! time), over `prometheus-client`'s encoder: one helper per metric type,
//! and the label sets every per-pod family shares.

use std::fmt;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, LabelSetEncoder, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

/// The pod a series is about. `source_*`, not `namespace`/`pod`: scrape
/// configs attach the scraped agent pod's own `namespace` and `pod` as
/// target labels, and a clash would rename ours to `exported_*`.
/// An endpoint without a pod (`exec`, a `run` endpoint naming none) has an
/// empty namespace and its endpoint name as `source_pod`.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PodLabels {
    pub source_namespace: String,
    pub source_pod: String,
}

/// A pod plus the labels of one family.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PodAnd<'a> {
    pub pod: &'a PodLabels,
    pub extra: Extra<'a>,
}

impl EncodeLabelSet for PodAnd<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        self.pod.encode(encoder)?;
        self.extra.encode(encoder)
    }
}

/// The labels beyond the pod's, by family.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Extra<'a> {
    None,
    Flow { kind: &'static str, verdict: &'static str, reason: &'static str },
    Rule(&'a str),
    Range(&'static str),
    Dns { decision: &'static str, rcode: &'static str },
    Kind(&'static str),
    Action(&'static str),
    Capability(&'static str),
    Mode(&'static str),
    Gap(&'static str),
    Info { endpoint: &'a str, mode: &'static str },
}

impl EncodeLabelSet for Extra<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        let pairs: &[(&str, &str)] = match self {
            Extra::None => &[],
            Extra::Flow { kind, verdict, reason } => &[("kind", kind), ("verdict", verdict), ("reason", reason)],
            Extra::Rule(r) => &[("rule", r)],
            Extra::Range(r) => &[("range", r)],
            Extra::Dns { decision, rcode } => &[("decision", decision), ("rcode", rcode)],
            Extra::Kind(k) => &[("kind", k)],
            Extra::Action(a) => &[("action", a)],
            Extra::Capability(c) => &[("capability", c)],
            Extra::Mode(m) => &[("mode", m)],
            Extra::Gap(g) => &[("gap", g)],
            Extra::Info { endpoint, mode } => &[("endpoint", endpoint), ("mode", mode)],
        };
        pairs.encode(encoder)
    }
}

/// A family's descriptor name: what `prometheus-client` appends (`_total`
/// to counters) is taken off, so code says the full sample name.
fn base(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

/// A counter family; nothing is written without a sample.
pub fn counter<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let c = ConstCounter::new(0u64);
    let mut m = enc.encode_descriptor(base(name), help, None, c.metric_type())?;
    for (l, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&l)?)?;
    }
    Ok(())
}

/// A gauge family; nothing is written without a sample.
pub fn gauge<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, i64)>,
) -> fmt::Result {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (l, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&l)?)?;
    }
    Ok(())
}

/// A histogram without labels: (sum, count, cumulative (bound, count)),
/// as the atomics keep it; the encoder wants each bucket's own count.
pub fn histogram(enc: &mut DescriptorEncoder, name: &str, help: &str, h: (f64, u64, Vec<(f64, u64)>)) -> fmt::Result {
    let (sum, count, cumulative) = h;
    let mut below = 0;
    let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(cumulative.len() + 1);
    for (le, n) in cumulative {
        // Read one by one while observations land: never negative.
        let n = n.max(below);
        buckets.push((le, n - below));
        below = n;
    }
    buckets.push((f64::INFINITY, count.saturating_sub(below)));
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(sum, count.max(below), &buckets, None)
}

/// No labels (a node-wide value).
pub type NoLabels = [(&'static str, &'static str); 0];
pub const NO_LABELS: NoLabels = [];

/// One label.
pub fn one(key: &'static str, value: &'static str) -> [(&'static str, &'static str); 1] {
    [(key, value)]
}

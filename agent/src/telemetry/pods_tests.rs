use prometheus_client::{collector::Collector, registry::Registry};

use super::*;
use crate::telemetry::metrics::{Format, render};

#[derive(Debug)]
struct Pods(Vec<(PodLabels, PodValues)>);

impl Collector for Pods {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        encode(&mut enc, &self.0)
    }
}

fn text(pods: Vec<(PodLabels, PodValues)>, format: Format) -> String {
    let mut r = Registry::default();
    r.register_collector(Box::new(Pods(pods)));
    render(&r, format).unwrap()
}

fn pod(ns: &str, name: &str) -> PodLabels {
    PodLabels { source_namespace: ns.into(), source_pod: name.into() }
}

fn value(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn sample_count(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count()
}

fn busy() -> PodValues {
    let mut flow = FlowCounts::default();
    flow.connections[Reason::DeniedRange as usize] = 3;
    flow.connections[Reason::AllowedFqdn as usize] = 5;
    flow.datagrams[Reason::DeniedDefault as usize] = 2;
    // Not a flow reason: shown because counted.
    flow.connections[Reason::AllowedInbound as usize] = 1;
    flow.rules = vec![("api.example.com".into(), 4), ("192.0.2.0/24".into(), 1)];
    flow.ranges = vec![("metadata", 3)];
    flow.egress_bytes = 1000;
    flow.ingress_bytes = 2000;
    let mut v = PodValues { flow, gauges: Some(PodGauges { learned: 2, ..Default::default() }), ..Default::default() };
    v.queries[Decision::Refused as usize][Rcode::NxDomain as usize] = 7;
    v.queries[Decision::Forwarded as usize][Rcode::NoError as usize] = 9;
    v.dns.suspicious_entropy = 1;
    v.gauges.as_mut().unwrap().endpoints.push(("ws-a/agent-0".into(), "enforce"));
    v
}

#[test]
fn renders_every_family_with_source_labels() {
    let t = text(vec![(pod("ws-a", "agent-0"), busy())], Format::Text);
    let p = r#"source_namespace="ws-a",source_pod="agent-0""#;
    for (series, want) in [
        (format!(r#"portcullis_connections_total{{{p},kind="connection",verdict="denied",reason="denied-range"}}"#), 3),
        (format!(r#"portcullis_connections_total{{{p},kind="connection",verdict="allowed",reason="allowed-fqdn"}}"#), 5),
        (format!(r#"portcullis_connections_total{{{p},kind="datagram",verdict="denied",reason="denied-default"}}"#), 2),
        (format!(r#"portcullis_connections_total{{{p},kind="connection",verdict="allowed",reason="allowed-inbound"}}"#), 1),
        (format!(r#"portcullis_connections_by_rule_total{{{p},rule="api.example.com"}}"#), 4),
        (format!(r#"portcullis_denied_range_total{{{p},range="metadata"}}"#), 3),
        (format!(r#"portcullis_denied_range_total{{{p},range="link-local"}}"#), 0),
        (format!("portcullis_egress_bytes_total{{{p}}}"), 1000),
        (format!("portcullis_ingress_bytes_total{{{p}}}"), 2000),
        (format!(r#"portcullis_dns_queries_total{{{p},decision="refused",rcode="NXDOMAIN"}}"#), 7),
        (format!(r#"portcullis_dns_queries_total{{{p},decision="forwarded",rcode="NOERROR"}}"#), 9),
        (format!(r#"portcullis_dns_queries_total{{{p},decision="dropped",rcode="other"}}"#), 0),
        (format!(r#"portcullis_dns_suspicious_queries_total{{{p},kind="entropy"}}"#), 1),
        (format!("portcullis_learned_entries{{{p}}}"), 2),
        (format!(r#"portcullis_endpoint_info{{{p},endpoint="ws-a/agent-0",mode="enforce"}}"#), 1),
    ] {
        assert_eq!(value(&t, &series), Some(want), "{series} in\n{t}");
    }
    assert!(t.contains("# TYPE portcullis_connections_total counter"), "{t}");
    assert!(!t.contains("namespace=\"ws-a\",pod="), "no bare namespace/pod labels: {t}");
}

#[test]
fn a_new_pod_has_every_fixed_series_at_zero() {
    let fresh = PodValues { gauges: Some(PodGauges::default()), ..Default::default() };
    let t = text(vec![(pod("ws-a", "new"), fresh)], Format::Text);
    let p = r#"source_namespace="ws-a",source_pod="new""#;
    for r in FLOW_REASONS {
        for kind in ["connection", "datagram"] {
            let v = if r.is_allowed() { "allowed" } else { "denied" };
            let s = format!(r#"portcullis_connections_total{{{p},kind="{kind}",verdict="{v}",reason="{}"}}"#, r.as_str());
            assert_eq!(value(&t, &s), Some(0), "{s}");
        }
    }
    for r in RANGE_NAMES {
        assert_eq!(value(&t, &format!(r#"portcullis_denied_range_total{{{p},range="{r}"}}"#)), Some(0));
    }
    for d in Decision::ALL {
        for r in Rcode::ALL {
            let s = format!(r#"portcullis_dns_queries_total{{{p},decision="{}",rcode="{}"}}"#, d.as_str(), r.as_str());
            assert_eq!(value(&t, &s), Some(0), "{s}");
        }
    }
}

#[test]
fn counts_do_not_add_series() {
    // The same pod with nothing counted and with a lot counted (every
    // fixed-table cell): the same series.
    let mut heavy = PodValues { gauges: Some(PodGauges::default()), ..Default::default() };
    for r in FLOW_REASONS {
        heavy.flow.connections[r as usize] = 10_000;
        heavy.flow.datagrams[r as usize] = 10_000;
    }
    heavy.flow.ranges = RANGE_NAMES.iter().map(|r| (*r, 10_000)).collect();
    heavy.queries = [[10_000; Rcode::ALL.len()]; Decision::ALL.len()];
    let empty = PodValues { gauges: Some(PodGauges::default()), ..Default::default() };
    let a = text(vec![(pod("n", "p"), empty)], Format::Text);
    let b = text(vec![(pod("n", "p"), heavy)], Format::Text);
    assert_eq!(sample_count(&a), sample_count(&b));
}

#[test]
fn rules_past_the_cap_fold_into_other() {
    let mut v = PodValues::default();
    v.flow.rules = (0..MAX_RULES + 5).map(|i| (format!("r{i}.example"), 1)).collect();
    let t = text(vec![(pod("n", "p"), v)], Format::Text);
    let rules = t.lines().filter(|l| l.starts_with("portcullis_connections_by_rule_total{")).count();
    assert_eq!(rules, MAX_RULES + 1);
    assert_eq!(value(&t, r#"portcullis_connections_by_rule_total{source_namespace="n",source_pod="p",rule="other"}"#), Some(5));
}

#[test]
fn a_gone_pod_keeps_counters_not_gauges() {
    let mut v = busy();
    v.gauges = None;
    let t = text(vec![(pod("ws-a", "gone"), v)], Format::Text);
    assert!(t.contains("portcullis_egress_bytes_total{"), "{t}");
    assert!(!t.contains("portcullis_learned_entries"), "{t}");
    assert!(!t.contains("portcullis_endpoint_info"), "{t}");
}

#[test]
fn label_values_are_escaped_and_openmetrics_is_served() {
    let t = text(vec![(pod("n", "we\"ird\\pod\n"), PodValues::default())], Format::Text);
    assert!(t.contains(r#"source_pod="we\"ird\\pod\n""#), "{t}");
    let om = text(vec![(pod("n", "p"), busy())], Format::OpenMetrics);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE portcullis_connections counter"), "{om}");
    assert!(om.contains("portcullis_connections_total{source_namespace=\"n\""), "{om}");
}

#[test]
fn two_endpoints_under_one_pod_are_summed() {
    let mut a = busy();
    a.add(&busy());
    assert_eq!(a.flow.connections[Reason::DeniedRange as usize], 6);
    assert_eq!(a.queries[Decision::Refused as usize][Rcode::NxDomain as usize], 14);
    assert_eq!(a.gauges.as_ref().map(|g| g.endpoints.len()), Some(2));
}

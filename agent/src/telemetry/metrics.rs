//! Prometheus metrics (text exposition format 0.0.4) on `metricsAddr`:
//! kernel verdicts by hook and reason, kernel-side losses, and per endpoint
//! the DNS gate's refused and suspicious queries (for tunnelling alerts),
//! its records held back by the rate limit, its TCP connections over the
//! cap, and its learned entries.
//!
//! The listener sets `SO_REUSEPORT`, so during a takeover the new agent can
//! bind the same port while the old one still has it; the old agent stops
//! serving when it hands over (its metrics task is one of the consumers).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use agent_common::{Hook, Reason, counter_index, loss};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};
use tracing::warn;

use super::{
    coverage::{Coverage, Held},
    exposition::{esc, family},
};
use crate::{
    dnsgate::DnsStats,
    enforcer::{EndpointView, Enforcer},
};

/// Binds `addr` (with `SO_REUSEPORT`).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.bind(addr)?;
    sock.listen(64)
}

/// Serves `/metrics` until `stop`.
pub async fn serve(listener: TcpListener, src: Sources, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((conn, _)) => {
                    let src = src.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(5), answer(conn, &src)).await;
                    });
                }
                Err(e) => {
                    warn!(error = %e, "metrics listener failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// One HTTP/1.x request: `GET /metrics` gets the metrics, anything else a
/// 404; the connection then closes.
async fn answer(mut conn: TcpStream, src: &Sources) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let k = conn.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let line = buf[..n].split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let ready = src.k8s.as_ref().is_none_or(|k| k.ready());
    let (status, body) = match (method, path) {
        (b"GET", p) if p == b"/metrics" || p.starts_with(b"/metrics?") => ("200 OK", render(src)),
        // Serving at all: the agent's threads are alive.
        (b"GET", b"/healthz") => ("200 OK", "ok\n".to_owned()),
        // Attached, and (Kubernetes) every watch has listed everything.
        (b"GET", b"/readyz") if ready => ("200 OK", "ready\n".to_owned()),
        (b"GET", b"/readyz") => ("503 Service Unavailable", "starting\n".to_owned()),
        _ => ("404 Not Found", "/metrics, /healthz and /readyz here\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

/// What a scrape reads, none of it behind the lock the DNS and connect
/// paths wait on: the kernel's counters have their own handle, the gate's
/// counts are atomics, and the endpoints are copied out in one short lock.
#[derive(Clone)]
pub struct Sources {
    pub enforcer: Enforcer,
    pub coverage: Arc<Coverage>,
    pub gate: Arc<DnsStats>,
    pub config: Arc<ConfigStats>,
    /// The Kubernetes agent's pods and readiness (`portcullis agent`).
    pub k8s: Option<Arc<super::k8s::K8sStats>>,
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

/// One endpoint's row, copied out of the state.
struct Row {
    id: u32,
    labels: String,
    learned: usize,
    uncontained: Held,
}

fn labels(e: &EndpointView) -> String {
    format!(
        "endpoint=\"{}\",namespace=\"{}\",pod=\"{}\"",
        esc(&e.identity.name),
        esc(e.identity.namespace.as_deref().unwrap_or("")),
        esc(e.identity.pod.as_deref().unwrap_or(""))
    )
}

/// The whole exposition.
pub fn render(src: &Sources) -> String {
    let mut out = String::new();
    let gate = &*src.gate;
    let counters = src.enforcer.counters();
    let mut uncontained = src.coverage.all();
    let eps: Vec<Row> = src
        .enforcer
        .snapshot()
        .into_iter()
        .map(|r| Row {
            id: r.view.id,
            labels: labels(&r.view),
            learned: r.learned,
            uncontained: uncontained.remove(&r.view.id).unwrap_or_default(),
        })
        .collect();
    let at = |i: u32| counters.get(i as usize).copied().unwrap_or(0);
    family(&mut out, "portcullis_verdicts_total", "counter", "Kernel verdicts by hook and reason (allowed-* and denied-*).");
    for h in 0..Hook::COUNT {
        let Some(hook) = Hook::from_u32(h) else { continue };
        for r in 0..Reason::MAX {
            let Some(reason) = Reason::from_u32(r) else { continue };
            let v = at(counter_index(hook, reason));
            let _ = writeln!(out, "portcullis_verdicts_total{{hook=\"{}\",reason=\"{}\"}} {v}", hook.as_str(), reason.as_str());
        }
    }
    family(
        &mut out,
        "portcullis_kernel_losses_total",
        "counter",
        "Records the kernel could not hand over (rate limit, full ring buffer, no owner, too large).",
    );
    for (what, i) in [
        ("event-rate-limited", loss::EVENT_RATE_LIMITED),
        ("event-ringbuf-full", loss::EVENT_RINGBUF_FULL),
        ("dns-ringbuf-full", loss::DNS_RINGBUF_FULL),
        ("dns-no-owner", loss::DNS_NO_OWNER),
        ("dns-too-large", loss::DNS_TOO_LARGE),
    ] {
        let _ = writeln!(out, "portcullis_kernel_losses_total{{what=\"{what}\"}} {}", at(i));
    }
    family(&mut out, "portcullis_dns_answers_total", "counter", "DNS answers the gate handled, by outcome.");
    for (outcome, c) in [
        ("released", &gate.released),
        ("unsolicited", &gate.answers_unsolicited),
        ("stripped", &gate.answers_stripped),
        ("refused", &gate.queries_refused),
        ("malformed", &gate.dropped_malformed),
        ("inject-failed", &gate.dropped_inject_failed),
        ("unknown-endpoint", &gate.dropped_unknown_endpoint),
    ] {
        let _ = writeln!(out, "portcullis_dns_answers_total{{outcome=\"{outcome}\"}} {}", c.load(Relaxed));
    }
    family(&mut out, "portcullis_learned_ips_total", "counter", "Addresses from DNS answers, by what the gate did with them.");
    for (what, c) in [
        ("learned", &gate.ips_learned),
        ("denied-range", &gate.ips_denied_range),
        ("evicted", &gate.ips_evicted),
        ("refused-cap", &gate.ips_refused_cap),
    ] {
        let _ = writeln!(out, "portcullis_learned_ips_total{{what=\"{what}\"}} {}", c.load(Relaxed));
    }
    let per = gate.per_endpoint.lock().map(|m| m.clone()).unwrap_or_default();
    let labels = |e: &Row| e.labels.clone();
    family(
        &mut out,
        "portcullis_dns_queries_refused_total",
        "counter",
        "Queries for names the endpoint's policy does not allow.",
    );
    for e in &eps {
        let s = per.get(&e.id).copied().unwrap_or_default();
        let _ = writeln!(out, "portcullis_dns_queries_refused_total{{{}}} {}", labels(e), s.refused);
    }
    family(
        &mut out,
        "portcullis_dns_suspicious_queries_total",
        "counter",
        "Queries that look like tunnelled data (long label, high entropy) or exceed the per-second rate.",
    );
    for e in &eps {
        let s = per.get(&e.id).copied().unwrap_or_default();
        for (kind, v) in [("long-label", s.suspicious_long_label), ("entropy", s.suspicious_entropy), ("rate", s.high_rate)] {
            let _ = writeln!(out, "portcullis_dns_suspicious_queries_total{{{},kind=\"{kind}\"}} {v}", labels(e));
        }
    }
    family(
        &mut out,
        "portcullis_dns_records_suppressed_total",
        "counter",
        "Blocked-log records of the DNS gates (refused names, rebinding answers) held back by the endpoint's record rate limit.",
    );
    for e in &eps {
        let s = per.get(&e.id).copied().unwrap_or_default();
        let _ = writeln!(out, "portcullis_dns_records_suppressed_total{{{}}} {}", labels(e), s.records_suppressed);
    }
    family(
        &mut out,
        "portcullis_dns_tcp_over_cap_total",
        "counter",
        "DNS-over-TCP connections over a gate's connection cap: a new one refused (every connection mid-query), or the longest idle one closed to make room.",
    );
    for e in &eps {
        let s = per.get(&e.id).copied().unwrap_or_default();
        for (action, v) in [("refused", s.tcp_refused), ("evicted-idle", s.tcp_evicted)] {
            let _ = writeln!(out, "portcullis_dns_tcp_over_cap_total{{{},action=\"{action}\"}} {v}", labels(e));
        }
    }
    family(
        &mut out,
        "portcullis_learned_entries",
        "gauge",
        "Kernel LEARNED entries (endpoint, protocol, port, address) held now.",
    );
    for e in &eps {
        let _ = writeln!(out, "portcullis_learned_entries{{{}}} {}", labels(e), e.learned);
    }
    family(
        &mut out,
        "portcullis_endpoint_uncontained_processes",
        "gauge",
        "Processes of the endpoint holding a capability whose traffic cgroup hooks cannot see (packet sockets, TUN): not fully enforced.",
    );
    for e in &eps {
        for (cap, n) in &e.uncontained {
            let _ = writeln!(out, "portcullis_endpoint_uncontained_processes{{{},capability=\"{cap}\"}} {n}", labels(e));
        }
    }
    family(&mut out, "portcullis_endpoints", "gauge", "Endpoints enforced by this agent.");
    let _ = writeln!(out, "portcullis_endpoints {}", eps.len());
    family(
        &mut out,
        "portcullis_config_reloads_total",
        "counter",
        "Config reloads of `portcullis run`: applied, invalid (refused, nothing changed) or failed (partly applied).",
    );
    for (result, c) in [("applied", &src.config.applied), ("invalid", &src.config.invalid), ("failed", &src.config.failed)] {
        let _ = writeln!(out, "portcullis_config_reloads_total{{result=\"{result}\"}} {}", c.load(Relaxed));
    }
    if let Some(k) = &src.k8s {
        k.render(&mut out);
    }
    out
}

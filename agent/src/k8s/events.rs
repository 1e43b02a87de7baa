//! Opt-in (`--pod-events`) Kubernetes Events on a pod whose egress was
//! blocked, so `kubectl describe pod` and `kubectl get events` show it:
//! at most one per pod per `EVERY` (an agent under attack must not turn
//! into an API-server flood; the blocked log has every record), naming
//! what was blocked first and how many more since, and pointing at the
//! blocked log. Only this node's agent writes about this node's pods (one
//! writer per object).
//!
//! The records are taken off the log's writer (`tap`): nothing on the DNS
//! or connect path waits for the API server; when the queue is full, a
//! record makes no Event (the log has it).

use std::{
    collections::HashMap,
    io::Write,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::{
    Client,
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
    },
};
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::warn;

/// At most one Event per pod per this.
pub const EVERY: Duration = Duration::from_secs(600);
/// Records waiting for the publisher; more are counted, not queued.
const QUEUE: usize = 1024;

/// What an Event needs of a blocked record.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Blocked {
    verdict: String,
    reason: String,
    namespace: Option<String>,
    pod: Option<String>,
    protocol: String,
    dst: std::net::IpAddr,
    dport: u16,
    host: Option<String>,
}

/// The log's writer, also handing each blocked record of a pod to the
/// publisher (records are whole JSON lines; partial writes are joined).
pub struct Tap {
    inner: Box<dyn Write + Send>,
    line: Vec<u8>,
    tx: mpsc::Sender<Blocked>,
}

pub fn tap(inner: Box<dyn Write + Send>) -> (Tap, mpsc::Receiver<Blocked>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Tap { inner, line: Vec::new(), tx }, rx)
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        for &b in &buf[..n] {
            if b != b'\n' {
                // A record is one line well under this; anything longer is
                // not ours to parse.
                if self.line.len() < 64 * 1024 {
                    self.line.push(b);
                }
                continue;
            }
            if let Ok(rec) = serde_json::from_slice::<Blocked>(&self.line)
                && rec.verdict == "blocked"
                && rec.pod.is_some()
            {
                // Full: no Event for this one; the log has it.
                let _ = self.tx.try_send(rec);
            }
            self.line.clear();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Per pod: when its last Event went out, and what was blocked since.
#[derive(Default)]
struct Seen {
    last: Option<Instant>,
    since: u64,
}

/// Whether a record of `key` becomes an Event now (and how many were
/// folded into it), given when the last one went.
fn due(seen: &mut HashMap<(String, String), Seen>, key: (String, String), now: Instant) -> Option<u64> {
    let s = seen.entry(key).or_default();
    s.since += 1;
    if s.last.is_some_and(|t| now.duration_since(t) < EVERY) {
        return None;
    }
    s.last = Some(now);
    Some(std::mem::take(&mut s.since))
}

/// Publishes Events until the channel closes.
pub async fn publish(client: Client, node: String, pods: Store<Pod>, mut rx: mpsc::Receiver<Blocked>) {
    let recorder = Recorder::new(client, Reporter { controller: "portcullis".into(), instance: Some(node.clone()) });
    let mut seen: HashMap<(String, String), Seen> = HashMap::new();
    while let Some(rec) = rx.recv().await {
        let (Some(ns), Some(name)) = (rec.namespace.clone(), rec.pod.clone()) else { continue };
        // The pod's UID makes the Event point at this pod, not a namesake.
        let Some(pod) = pods.get(&ObjectRef::new(&name).within(&ns)) else { continue };
        let now = Instant::now();
        // Bounded by the node's pods: gone pods go, and so do pods with
        // nothing held back whose last Event is older than the interval
        // (their next record is due anyway).
        seen.retain(|(ns, n), s| {
            pods.get(&ObjectRef::new(n).within(ns)).is_some()
                && (s.since > 0 || s.last.is_some_and(|t| now.duration_since(t) < EVERY))
        });
        let Some(n) = due(&mut seen, (ns.clone(), name.clone()), now) else { continue };
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(ns.clone()),
            name: Some(name.clone()),
            uid: pod.metadata.uid.clone(),
            ..ObjectReference::default()
        };
        let to = rec.host.as_deref().map_or_else(|| rec.dst.to_string(), |h| format!("{h} ({})", rec.dst));
        let more = if n > 1 { format!("; {} blocked in all since the last event", n) } else { String::new() };
        let note = format!(
            "Egress blocked ({}): {} {to}:{}{more}. Every attempt is in the blocked-connection log of portcullis agent \
             on node {node} (at most one event per pod per 10 minutes).",
            rec.reason, rec.protocol, rec.dport
        );
        let ev = Event {
            type_: EventType::Warning,
            reason: "EgressBlocked".into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Block".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &reference).await {
            warn!(error = %e, pod = %format!("{ns}/{name}"), "posting a pod event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_pod_per_ten_minutes_with_the_count_folded_in() {
        let mut seen = HashMap::new();
        let t0 = Instant::now();
        let a = || ("ws".to_owned(), "a".to_owned());
        assert_eq!(due(&mut seen, a(), t0), Some(1));
        assert_eq!(due(&mut seen, a(), t0 + Duration::from_secs(1)), None);
        assert_eq!(due(&mut seen, ("ws".into(), "b".into()), t0), Some(1), "per pod");
        assert_eq!(due(&mut seen, a(), t0 + Duration::from_secs(599)), None);
        assert_eq!(due(&mut seen, a(), t0 + EVERY), Some(3), "the two held back are counted in");
    }

    #[test]
    fn the_tap_passes_every_byte_and_hands_over_blocked_pod_records() {
        let (mut tap, mut rx) = tap(Box::new(Vec::new()));
        let rec = r#"{"time":"t","verdict":"blocked","reason":"denied-range","endpoint":"ws/a","namespace":"ws","pod":"a","protocol":"tcp","dst":"169.254.169.254","dport":80,"hook":"connect4","cgroup_id":1}"#;
        let audit = rec.replace("\"blocked\"", "\"audit\"");
        let no_pod = rec.replace(",\"pod\":\"a\"", "");
        for line in [rec, &audit, &no_pod] {
            let (head, tail) = line.split_at(20);
            tap.write_all(head.as_bytes()).unwrap();
            tap.write_all(tail.as_bytes()).unwrap();
            tap.write_all(b"\n").unwrap();
        }
        let got = rx.try_recv().expect("the blocked record");
        assert_eq!((got.pod.as_deref(), got.dport), (Some("a"), 80));
        assert!(rx.try_recv().is_err(), "audit records and records without a pod make no event");
    }
}

//! The agent's background work besides the DNS gate thread: expiry and
//! snapshots, the TCP gate opener, the kernel's rare-event log.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    thread,
    time::Duration,
};

use tokio::sync::watch;
use tracing::warn;

use crate::{
    dnsgate::{DnsStats, netns::NamespaceGates},
    enforcer::Enforcer,
    handover::{self, Handover},
};

/// Drops expired learned IPs from the maps (the kernel refuses them at
/// connect time already; this keeps the maps and bookkeeping small) and,
/// in node mode, snapshots learned state about once a second when it
/// changed (for a restart after a crash).
pub(super) async fn expire_learned(
    enforcer: Enforcer,
    gate_stats: Arc<DnsStats>,
    gates: Arc<NamespaceGates>,
    snapshot: Option<PathBuf>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (mut written, mut n) = (None, 0u32);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                gates.sweep();
                let version = match enforcer.expire() {
                    Ok(v) => v,
                    Err(e) => {
                        warn!(error = %e, "expiring learned IPs failed");
                        continue;
                    }
                };
                n += 1;
                let Some(dir) = snapshot.as_deref() else { continue };
                // Learned state or the gate's counts changed (every answer
                // and every refusal moves one of these).
                let version = (version, gate_stats.queries.latency().1, gate_stats.queries_refused.load(Ordering::Relaxed));
                if n % 4 != 0 || written == Some(version) {
                    continue;
                }
                let counters = crate::telemetry::carry::export_value(&enforcer, &gate_stats);
                let h = Handover { pending: Vec::new(), learned: enforcer.export_learned(), counters };
                written = Some(version);
                if let Err(e) = handover::write_snapshot(dir, &h) {
                    warn!(error = %e, "writing the learned-state snapshot failed");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// How many gate-opening requests may wait; more are dropped (the client
/// retries, and its retry asks again).
const GATE_OPEN_QUEUE: usize = 256;

/// A thread that opens TCP DNS gates on request: DNS over TCP refused for
/// want of a gate in the caller's namespace (`denied-dns-no-gate`) asks
/// for one there, so a retry works. Opening enters a namespace and waits
/// for a thread: work for the DNS side, never for the blocked-log reader,
/// which only queues the request (and drops it when the queue is full).
pub(super) fn gate_opener(gates: Arc<NamespaceGates>) -> Option<std::sync::mpsc::SyncSender<(u32, u32)>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u32, u32)>(GATE_OPEN_QUEUE);
    let spawned = thread::Builder::new().name("dns-gate-open".into()).spawn(move || {
        for (tgid, endpoint) in rx {
            if let Err(e) = gates.ensure(tgid, None, endpoint) {
                tracing::debug!(error = %e, "cannot open a TCP DNS gate");
            }
        }
    });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            warn!(error = %e, "cannot start the DNS gate opener; TCP DNS from new namespaces waits for a UDP query");
            None
        }
    }
}

/// Runs the kernel's rare-event log, if there is one.
pub(super) async fn kernel_log_task(log: Option<crate::datapath::kernel_log::KernelLog>, stop: watch::Receiver<bool>) {
    if let Some(l) = log {
        l.run(stop).await;
    }
}

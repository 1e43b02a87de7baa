//! The blocked-connection log: denied (and audited) attempts from the
//! kernel's ring buffer and the DNS gates, enriched with who (endpoint,
//! namespace, pod, node) and which host name the IP came from, written as
//! one versioned JSON object per line (docs/BLOCKED-LOG.md), and read back
//! by `portcullis blocked` and `portcullis suggest`.
//!
//! `schema.rs` the records; `escape.rs` names made safe for a line and a
//! terminal; `writer.rs` the writer (folding: `fold.rs`, the fair rate
//! limit: `limit.rs`, the rotated file: `rotate.rs`, counters:
//! `stats.rs`); `open.rs` each command's outputs and flags; `query/` the
//! reading side; `suggest.rs` policy lines from the records; `clickhouse/`
//! the records to and from ClickHouse (the writer's tap, the table rows,
//! `portcullis blocked --clickhouse`).

pub mod clickhouse;
pub mod escape;
pub mod fold;
pub mod limit;
pub mod open;
pub mod query;
pub mod rotate;
pub mod schema;
pub mod stats;
pub mod suggest;
pub mod writer;

use std::time::Duration;

use agent_common::{DeniedEvent, Reason};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::watch,
};

pub use open::{BlockedLogArgs, exec_log, node_log};
pub use schema::{BlockedRecord, LostRecord, display_ip, now_rfc3339, proc_comm, protocol_name};
pub use stats::LogStats;
pub use writer::{BlockedLog, LogSink, Output, Settings, hostname, log_sink};

use crate::enforcer::Enforcer;

/// `portcullis blocked`: this node's files, or with `--clickhouse` every
/// node's records; the exit status.
pub fn blocked(a: &query::BlockedArgs) -> i32 {
    match &a.clickhouse {
        Some(server) => query::exit_code(clickhouse::show(a, server, &mut std::io::stdout().lock())),
        None => query::run(a),
    }
}

/// Hands one record to the log (kept for the DNS gates' call sites).
pub fn write_record(sink: &LogSink, rec: BlockedRecord) {
    sink.record(rec);
}

/// How often folded and `lost` records whose window ended are written.
const TICK: Duration = Duration::from_secs(1);

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
        out.record(BlockedRecord::from_event(&ev, ep.as_ref()));
        if let Some(g) = gates.filter(|_| ev.reason == Reason::DeniedDnsNoGate as u32 && ev.tgid != 0) {
            // Full: this retry goes without; the client's next one asks again.
            let _ = g.try_send((ev.tgid, ev.endpoint));
        }
    }
}

/// Consumes denied-attempt events and writes JSON lines to `out` until
/// `stop` turns true, then drains what is left and writes what the log
/// holds back (folded repeats, lost counts) (the ring buffer's fd is
/// readable when records are queued: tokio's `AsyncFd`, as aya-template's
/// log reader does). Every second the log writes what its windows ended.
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
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => out.tick(),
            ready = fd.readable_mut() => {
                let Ok(mut guard) = ready else { break };
                drain(guard.get_inner_mut(), &enforcer, &out, gates.as_ref());
                guard.clear_ready();
            }
            _ = stop.changed() => break,
        }
    }
    drain(fd.get_mut(), &enforcer, &out, gates.as_ref());
    out.flush_all();
}

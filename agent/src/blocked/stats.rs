//! What the blocked log did, for metrics (the telemetry module reads these
//! atomics at scrape time; nothing here knows about Prometheus).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct LogStats {
    /// Attempts handed to the log (kernel events and DNS-gate records).
    pub attempts: AtomicU64,
    /// Attempt records written (each once, whatever the number of outputs).
    pub records_written: AtomicU64,
    /// Attempts not written on their own but counted into a later folded
    /// record (`count`).
    pub attempts_folded: AtomicU64,
    /// Records the rate limit held back ...
    pub records_rate_limited: AtomicU64,
    /// ... and the attempts they stood for (written as `lost` records).
    pub attempts_lost: AtomicU64,
    /// `lost` records written.
    pub lost_records_written: AtomicU64,
    /// Failed writes (per output: a full disk, a closed stdout).
    pub write_errors: AtomicU64,
    /// Rotations of the log file.
    pub rotations: AtomicU64,
}

impl LogStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

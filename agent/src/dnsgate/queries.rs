//! DNS queries per endpoint by the gate's decision and the answer's rcode
//! (`portcullis_dns_queries_total`), and how long the gate holds an answer
//! (`portcullis_dns_gate_answer_seconds`). Atomics in a table indexed by
//! endpoint id: the DNS paths count with no lock, a scrape reads with none.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use agent_common::MAX_ENDPOINTS;
use hickory_proto::op::ResponseCode;

/// What the gate did with a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed: sent to the resolver, its answer delivered.
    Forwarded = 0,
    /// Not allowed, let through because the endpoint is in audit mode.
    Audited = 1,
    /// Not allowed: answered by the gate (NXDOMAIN or REFUSED).
    Refused = 2,
    /// Unparseable, or its answer could not be vouched for: nothing
    /// delivered.
    Dropped = 3,
}

impl Decision {
    pub const ALL: [Decision; 4] = [Decision::Forwarded, Decision::Audited, Decision::Refused, Decision::Dropped];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Forwarded => "forwarded",
            Decision::Audited => "audited",
            Decision::Refused => "refused",
            Decision::Dropped => "dropped",
        }
    }
}

/// The answer's rcode, folded to the ones worth a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    NxDomain = 1,
    ServFail = 2,
    Refused = 3,
    Other = 4,
}

impl Rcode {
    pub const ALL: [Rcode; 5] = [Rcode::NoError, Rcode::NxDomain, Rcode::ServFail, Rcode::Refused, Rcode::Other];

    pub fn of(code: ResponseCode) -> Self {
        match code {
            ResponseCode::NoError => Rcode::NoError,
            ResponseCode::NXDomain => Rcode::NxDomain,
            ResponseCode::ServFail => Rcode::ServFail,
            ResponseCode::Refused => Rcode::Refused,
            _ => Rcode::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Rcode::NoError => "NOERROR",
            Rcode::NxDomain => "NXDOMAIN",
            Rcode::ServFail => "SERVFAIL",
            Rcode::Refused => "REFUSED",
            Rcode::Other => "other",
        }
    }
}

const CELLS: usize = Decision::ALL.len() * Rcode::ALL.len();

/// One endpoint's counts: `[decision][rcode]`.
pub type QueryCells = [[u64; Rcode::ALL.len()]; Decision::ALL.len()];

/// Upper bounds (seconds) of the answer-latency histogram: the gate's own
/// work on an answer (parse, learn into the kernel maps, strip).
pub const LATENCY_BUCKETS: [f64; 10] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1];

/// The table (`MAX_ENDPOINTS` x decisions x rcodes counters, 320 KiB).
pub struct QueryCounts {
    cells: Box<[AtomicU64]>,
    latency: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
}

impl Default for QueryCounts {
    fn default() -> Self {
        Self {
            cells: (0..MAX_ENDPOINTS as usize * CELLS).map(|_| AtomicU64::new(0)).collect(),
            latency: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_ns: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for QueryCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryCounts").finish_non_exhaustive()
    }
}

impl QueryCounts {
    fn cell(&self, endpoint: u32, d: Decision, r: Rcode) -> Option<&AtomicU64> {
        let base = (endpoint as usize).checked_mul(CELLS)?;
        self.cells.get(base + d as usize * Rcode::ALL.len() + r as usize)
    }

    pub fn count(&self, endpoint: u32, d: Decision, r: Rcode) {
        if let Some(c) = self.cell(endpoint, d, r) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// An endpoint's counts (zeros for an unknown id).
    pub fn get(&self, endpoint: u32) -> QueryCells {
        let mut out = QueryCells::default();
        for d in Decision::ALL {
            for r in Rcode::ALL {
                out[d as usize][r as usize] = self.cell(endpoint, d, r).map_or(0, |c| c.load(Relaxed));
            }
        }
        out
    }

    /// Adds counts carried over from the previous agent.
    pub fn add(&self, endpoint: u32, cells: &QueryCells) {
        for d in Decision::ALL {
            for r in Rcode::ALL {
                if let Some(c) = self.cell(endpoint, d, r) {
                    c.fetch_add(cells[d as usize][r as usize], Relaxed);
                }
            }
        }
    }

    /// Zeroes a removed endpoint's counts (its id may be given out again).
    pub fn forget(&self, endpoint: u32) {
        for d in Decision::ALL {
            for r in Rcode::ALL {
                if let Some(c) = self.cell(endpoint, d, r) {
                    c.store(0, Relaxed);
                }
            }
        }
    }

    /// One answer took `d` inside the gate.
    pub fn observe_answer(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, le) in self.latency.iter().zip(LATENCY_BUCKETS) {
            if s <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_ns.fetch_add(d.as_nanos().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    /// The histogram for the next agent: (count, sum in ns, cumulative
    /// bucket counts).
    pub fn export_latency(&self) -> (u64, u64, Vec<u64>) {
        (
            self.latency_count.load(Relaxed),
            self.latency_sum_ns.load(Relaxed),
            self.latency.iter().map(|b| b.load(Relaxed)).collect(),
        )
    }

    /// Adds the previous agent's histogram (buckets matched by position;
    /// a different bucket layout is skipped, the counts kept).
    pub fn import_latency(&self, (count, sum_ns, buckets): &(u64, u64, Vec<u64>)) {
        if buckets.len() == self.latency.len() {
            for (b, v) in self.latency.iter().zip(buckets) {
                b.fetch_add(*v, Relaxed);
            }
        } else if *count > 0 {
            // Keep the histogram consistent: the old observations land in
            // +Inf only.
            tracing::debug!("carried latency histogram has another layout; its buckets are not carried");
        }
        self.latency_count.fetch_add(*count, Relaxed);
        self.latency_sum_ns.fetch_add(*sum_ns, Relaxed);
    }

    /// (sum in seconds, count, cumulative buckets as (upper bound, count)).
    pub fn latency(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets = self.latency.iter().zip(LATENCY_BUCKETS).map(|(b, le)| (le, b.load(Relaxed))).collect();
        (self.latency_sum_ns.load(Relaxed) as f64 / 1e9, self.latency_count.load(Relaxed), buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_endpoint_and_forgets() {
        let q = QueryCounts::default();
        q.count(3, Decision::Refused, Rcode::NxDomain);
        q.count(3, Decision::Refused, Rcode::NxDomain);
        q.count(4, Decision::Forwarded, Rcode::NoError);
        // Out of range: ignored, not a panic.
        q.count(MAX_ENDPOINTS, Decision::Forwarded, Rcode::NoError);
        assert_eq!(q.get(3)[Decision::Refused as usize][Rcode::NxDomain as usize], 2);
        assert_eq!(q.get(3)[Decision::Forwarded as usize][Rcode::NoError as usize], 0);
        assert_eq!(q.get(4)[Decision::Forwarded as usize][Rcode::NoError as usize], 1);
        assert_eq!(q.get(u32::MAX), QueryCells::default());
        let carried = q.get(3);
        q.forget(3);
        assert_eq!(q.get(3), QueryCells::default());
        q.add(3, &carried);
        assert_eq!(q.get(3), carried);
    }

    #[test]
    fn rcodes_fold() {
        assert_eq!(Rcode::of(ResponseCode::NXDomain), Rcode::NxDomain);
        assert_eq!(Rcode::of(ResponseCode::FormErr), Rcode::Other);
    }

    #[test]
    fn latency_buckets_are_cumulative() {
        let q = QueryCounts::default();
        q.observe_answer(Duration::from_micros(70));
        q.observe_answer(Duration::from_secs(1));
        let (_, n, b) = q.latency();
        assert_eq!(n, 2);
        assert_eq!(b[0], (0.00005, 0));
        assert_eq!(b[1], (0.0001, 1));
        assert_eq!(b.last().copied(), Some((0.1, 1)));
    }
}

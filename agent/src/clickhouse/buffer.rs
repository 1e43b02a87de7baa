//! One table's rows on their way to ClickHouse, bounded in memory.
//!
//! Producers (`push`) never wait on the network: a push takes a short lock,
//! appends, and returns; a full buffer refuses the row and counts it as
//! `dropped`. The sender (`sender.rs`) takes a batch out; the batch stays
//! counted against the cap while it is sent and retried, and leaves it
//! only once ClickHouse took it (`sent`) or it is given up at shutdown
//! (`dropped`). So while ClickHouse is away nothing is lost that the cap
//! can hold, and every row is counted exactly once as sent or dropped.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use tokio::sync::Notify;

use crate::util::lock;

/// What became of one table's rows (`portcullis_clickhouse_records_total`).
#[derive(Debug, Default)]
pub struct TableStats {
    /// Rows ClickHouse took.
    pub sent: AtomicU64,
    /// Rows given up: refused by a full buffer, unusable, or still held
    /// when the agent stopped and ClickHouse could not take them.
    pub dropped: AtomicU64,
    /// Rows of batches that failed and were kept for another try (a row
    /// counts once per failed try).
    pub retried: AtomicU64,
    /// Rows held now (waiting and in a batch being sent).
    pub held: AtomicU64,
}

/// The caps of a buffer and the size of its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most rows held (waiting and in flight).
    pub records: usize,
    /// Most bytes held.
    pub bytes: usize,
    /// Most rows in one batch; a full batch is sent at once.
    pub batch: usize,
}

#[derive(Default)]
struct State {
    rows: VecDeque<String>,
    /// Bytes of `rows`.
    bytes: usize,
    /// The batch being sent: its rows and bytes still count against the cap.
    flight_rows: usize,
    flight_bytes: usize,
}

/// Rows taken out for one INSERT.
#[derive(Debug)]
pub struct Batch {
    /// The rows, one JSON object per line.
    pub body: Vec<u8>,
    pub rows: usize,
    /// What the rows weighed in the buffer.
    bytes: usize,
}

pub struct Buffer {
    pub table: String,
    limits: Limits,
    state: Mutex<State>,
    /// Woken when a full batch waits.
    pub(super) wake: Notify,
    pub stats: Arc<TableStats>,
}

impl Buffer {
    pub fn new(table: &str, limits: Limits) -> Self {
        Self {
            table: table.to_owned(),
            limits: Limits { batch: limits.batch.max(1), ..limits },
            state: Mutex::default(),
            wake: Notify::new(),
            stats: Arc::default(),
        }
    }

    /// Appends a row, unless the buffer is full: then it is counted as
    /// dropped. Never waits for anything but the buffer's own lock.
    pub fn push(&self, row: String) -> bool {
        let mut s = lock(&self.state);
        let rows = s.rows.len() + s.flight_rows;
        if rows >= self.limits.records || s.bytes + s.flight_bytes + row.len() > self.limits.bytes {
            drop(s);
            self.stats.dropped.fetch_add(1, Relaxed);
            return false;
        }
        s.bytes += row.len();
        s.rows.push_back(row);
        self.stats.held.fetch_add(1, Relaxed);
        let full = s.rows.len() >= self.limits.batch;
        drop(s);
        if full {
            self.wake.notify_one();
        }
        true
    }

    /// Rows waiting (not in flight).
    pub fn waiting(&self) -> usize {
        lock(&self.state).rows.len()
    }

    pub fn batch_size(&self) -> usize {
        self.limits.batch
    }

    /// Takes up to one batch of rows out, each made a table row by
    /// `convert` (a row it cannot use is dropped and counted); `None` when
    /// nothing waits.
    pub fn take(&self, convert: &dyn Fn(&str) -> Option<String>) -> Option<Batch> {
        let mut s = lock(&self.state);
        let n = s.rows.len().min(self.limits.batch);
        if n == 0 {
            return None;
        }
        let taken: Vec<String> = s.rows.drain(..n).collect();
        let bytes: usize = taken.iter().map(String::len).sum();
        s.bytes -= bytes;
        s.flight_rows += n;
        s.flight_bytes += bytes;
        drop(s);
        let mut body = Vec::with_capacity(bytes + n);
        let mut rows = 0;
        for line in &taken {
            match convert(line) {
                Some(row) => {
                    body.extend_from_slice(row.as_bytes());
                    body.push(b'\n');
                    rows += 1;
                }
                None => {
                    self.stats.dropped.fetch_add(1, Relaxed);
                    self.stats.held.fetch_sub(1, Relaxed);
                }
            }
        }
        // Unusable rows leave the flight at once; the rest when settled.
        let mut s = lock(&self.state);
        s.flight_rows -= n - rows;
        drop(s);
        Some(Batch { body, rows, bytes })
    }

    fn settle(&self, b: &Batch) {
        let mut s = lock(&self.state);
        s.flight_rows -= b.rows;
        s.flight_bytes -= b.bytes;
        drop(s);
        self.stats.held.fetch_sub(b.rows as u64, Relaxed);
    }

    /// ClickHouse took the batch.
    pub fn sent(&self, b: Batch) {
        self.settle(&b);
        self.stats.sent.fetch_add(b.rows as u64, Relaxed);
    }

    /// A try failed; the batch is kept for the next.
    pub fn failed(&self, b: &Batch) {
        self.stats.retried.fetch_add(b.rows as u64, Relaxed);
    }

    /// The batch is given up (the agent stops and ClickHouse is away).
    pub fn give_up(&self, b: Batch) {
        self.settle(&b);
        self.stats.dropped.fetch_add(b.rows as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(b: &Batch) -> Vec<String> {
        String::from_utf8(b.body.clone()).unwrap().lines().map(str::to_owned).collect()
    }

    const SAME: &dyn Fn(&str) -> Option<String> = &|s| Some(s.to_owned());

    #[test]
    fn a_full_buffer_refuses_and_counts_and_a_batch_in_flight_still_counts() {
        let b = Buffer::new("t", Limits { records: 3, bytes: 1 << 20, batch: 2 });
        for i in 0..5 {
            b.push(format!("r{i}"));
        }
        assert_eq!((b.waiting(), b.stats.dropped.load(Relaxed), b.stats.held.load(Relaxed)), (3, 2, 3));
        let batch = b.take(SAME).unwrap();
        assert_eq!(rows(&batch), ["r0", "r1"]);
        // In flight: still held, so the cap still holds.
        assert!(!b.push("r5".into()));
        b.failed(&batch);
        assert_eq!(b.stats.retried.load(Relaxed), 2);
        b.sent(batch);
        assert!(b.push("r6".into()) && b.push("r7".into()));
        assert!(!b.push("r8".into()));
        assert_eq!(b.stats.sent.load(Relaxed), 2);
        assert_eq!(b.stats.dropped.load(Relaxed), 4);
        let next = b.take(SAME).unwrap();
        assert_eq!(rows(&next), ["r2", "r6"], "oldest first");
        b.give_up(next);
        assert_eq!((b.stats.dropped.load(Relaxed), b.stats.held.load(Relaxed)), (6, 1));
        // Every row pushed is sent, dropped, or still held.
        let s = &b.stats;
        assert_eq!(s.sent.load(Relaxed) + s.dropped.load(Relaxed) + s.held.load(Relaxed), 9);
    }

    #[test]
    fn the_byte_cap_holds_too() {
        let b = Buffer::new("t", Limits { records: 100, bytes: 10, batch: 100 });
        assert!(b.push("12345".into()) && b.push("67890".into()));
        assert!(!b.push("x".into()));
        assert_eq!(b.stats.dropped.load(Relaxed), 1);
    }

    #[test]
    fn rows_the_table_cannot_use_are_dropped_and_counted() {
        let b = Buffer::new("t", Limits { records: 10, bytes: 1000, batch: 10 });
        for r in ["ok1", "bad", "ok2"] {
            b.push(r.into());
        }
        let batch = b.take(&|s: &str| (!s.starts_with("bad")).then(|| s.to_uppercase())).unwrap();
        assert_eq!((rows(&batch), batch.rows), (vec!["OK1".to_owned(), "OK2".to_owned()], 2));
        b.sent(batch);
        let s = &b.stats;
        assert_eq!((s.sent.load(Relaxed), s.dropped.load(Relaxed), s.held.load(Relaxed)), (2, 1, 0));
        assert!(b.take(SAME).is_none());
    }
}

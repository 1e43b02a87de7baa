//! Sends one table's buffer to ClickHouse in batches: a batch goes when it
//! is full or when the flush interval has passed since the last send. A
//! batch that fails stays held (against the buffer's cap) and is sent
//! again, the same rows in the same order, after a backoff that doubles
//! from `MIN_BACKOFF` to `MAX_BACKOFF`; later rows wait behind it. At stop,
//! what is held is sent until `deadline`; what cannot be is counted as
//! dropped.
//!
//! Delivery is at least once: if ClickHouse stored a batch but its answer
//! was lost, the retry stores it again (MergeTree does not deduplicate).

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};

use super::{
    buffer::{Batch, Buffer},
    http::Client,
};

pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Turns a buffered line into a table row (JSON), or refuses it.
pub type Convert = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where a buffer goes, and how often.
pub struct Sender {
    pub buffer: Arc<Buffer>,
    pub client: Client,
    /// `INSERT INTO db.table FORMAT JSONEachRow`.
    pub statement: String,
    pub convert: Convert,
    pub interval: Duration,
}

/// Whether ClickHouse is answering, for logging each outage once.
#[derive(Default)]
struct Outage {
    since: Option<Instant>,
    dropped_before: u64,
}

impl Sender {
    /// Sends until `stop` turns true, then what is held until `deadline`.
    pub async fn run(self, mut stop: watch::Receiver<bool>, deadline: Duration) {
        let mut last = Instant::now();
        let mut outage = Outage::default();
        let mut backoff = MIN_BACKOFF;
        let mut batch: Option<Batch> = None;
        loop {
            if batch.is_none() {
                let waiting = self.buffer.waiting();
                let due = last + self.interval;
                if waiting == 0 || (waiting < self.buffer.batch_size() && Instant::now() < due) {
                    tokio::select! {
                        () = self.buffer.wake.notified() => {}
                        () = tokio::time::sleep_until(due), if waiting > 0 => {}
                        () = tokio::time::sleep(self.interval), if waiting == 0 => {}
                        _ = stop.changed() => break,
                    }
                    continue;
                }
                batch = self.buffer.take(&*self.convert);
            }
            let Some(b) = batch.take() else { continue };
            if b.rows == 0 {
                self.buffer.sent(b);
                continue;
            }
            match self.client.insert(&self.statement, b.body.clone()).await {
                Ok(()) => {
                    self.buffer.sent(b);
                    last = Instant::now();
                    backoff = MIN_BACKOFF;
                    self.recovered(&mut outage);
                }
                Err(e) => {
                    self.buffer.failed(&b);
                    batch = Some(b);
                    if outage.since.is_none() {
                        outage.since = Some(Instant::now());
                        outage.dropped_before = self.buffer.stats.dropped.load(Relaxed);
                        warn!(table = %self.buffer.table, error = %e,
                            "ClickHouse is not taking records; they are kept (up to the buffer's cap) and sent again");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {
                            self.finish(batch.take(), deadline).await;
                            return;
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.finish(batch, deadline).await;
    }

    fn recovered(&self, outage: &mut Outage) {
        if let Some(since) = outage.since.take() {
            let dropped = self.buffer.stats.dropped.load(Relaxed) - outage.dropped_before;
            info!(table = %self.buffer.table, after_ms = since.elapsed().as_millis() as u64, dropped,
                "ClickHouse takes records again");
        }
    }

    /// Sends what is held (a failed batch first) until `deadline`; the
    /// rest is dropped and counted.
    async fn finish(&self, mut batch: Option<Batch>, deadline: Duration) {
        let end = Instant::now() + deadline;
        loop {
            let Some(b) = batch.take().or_else(|| self.buffer.take(&*self.convert)) else { return };
            let left = end.saturating_duration_since(Instant::now());
            let sent = !left.is_zero()
                && matches!(tokio::time::timeout(left, self.client.insert(&self.statement, b.body.clone())).await, Ok(Ok(())));
            if sent {
                self.buffer.sent(b);
                continue;
            }
            let n = b.rows as u64;
            self.buffer.give_up(b);
            let mut rest = n;
            while let Some(b) = self.buffer.take(&*self.convert) {
                rest += b.rows as u64;
                self.buffer.give_up(b);
            }
            warn!(table = %self.buffer.table, dropped = rest, "stopping: ClickHouse did not take the last records");
            return;
        }
    }
}

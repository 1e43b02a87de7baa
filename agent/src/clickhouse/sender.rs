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

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, sync::Mutex};

    use http_body_util::{BodyExt as _, Full};
    use hyper::{Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::clickhouse::{Limits, http::parse_url};

    /// A server that fails the first `fail` requests (500), then takes
    /// every body; returns its address and what it took.
    async fn server(fail: usize) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let took = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(0usize));
        let (t, s) = (took.clone(), seen);
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { return };
                let (t, s) = (t.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (t, s) = (t.clone(), s.clone());
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let n = {
                                let mut s = s.lock().unwrap();
                                *s += 1;
                                *s
                            };
                            let status = if n <= fail { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
                            if status == StatusCode::OK {
                                t.lock().unwrap().push(String::from_utf8(body.to_vec()).unwrap());
                            }
                            Ok::<_, Infallible>(Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(conn), svc).await;
                });
            }
        });
        (format!("http://{addr}"), took)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_batch_is_sent_again_whole_and_in_order_then_the_rest() {
        let (url, took) = server(2).await;
        let buffer = Arc::new(Buffer::new("t", Limits { records: 10, bytes: 1 << 20, batch: 2 }));
        for r in ["a", "b", "c"] {
            buffer.push(r.into());
        }
        let sender = Sender {
            buffer: buffer.clone(),
            client: Client::new(parse_url(&url).unwrap(), "default", None).unwrap(),
            statement: "INSERT INTO db.t FORMAT JSONEachRow".into(),
            convert: Arc::new(|s: &str| Some(s.to_owned())),
            interval: Duration::from_millis(10),
        };
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(sender.run(rx, Duration::from_secs(1)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while buffer.stats.sent.load(Relaxed) < 3 {
            assert!(Instant::now() < deadline, "not all sent");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop.send(true);
        task.await.unwrap();
        assert_eq!(*took.lock().unwrap(), ["a\nb\n", "c\n"]);
        let s = &buffer.stats;
        assert_eq!((s.sent.load(Relaxed), s.retried.load(Relaxed), s.dropped.load(Relaxed), s.held.load(Relaxed)), (3, 4, 0, 0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn what_clickhouse_does_not_take_by_the_deadline_is_counted_as_dropped() {
        let (url, took) = server(usize::MAX).await;
        let buffer = Arc::new(Buffer::new("t", Limits { records: 10, bytes: 1 << 20, batch: 2 }));
        for r in ["a", "b", "c"] {
            buffer.push(r.into());
        }
        let sender = Sender {
            buffer: buffer.clone(),
            client: Client::new(parse_url(&url).unwrap(), "default", None).unwrap(),
            statement: "INSERT INTO db.t FORMAT JSONEachRow".into(),
            convert: Arc::new(|s: &str| Some(s.to_owned())),
            interval: Duration::from_secs(3600),
        };
        let (stop, rx) = watch::channel(false);
        let _ = stop.send(true);
        sender.run(rx, Duration::from_millis(200)).await;
        assert!(took.lock().unwrap().is_empty());
        let s = &buffer.stats;
        assert_eq!((s.sent.load(Relaxed), s.dropped.load(Relaxed), s.held.load(Relaxed)), (0, 3, 0));
    }
}

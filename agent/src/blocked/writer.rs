//! The blocked log's writer: every record (kernel events, the DNS gates')
//! goes through `BlockedLog::record`, which escapes names, folds repeats
//! (`fold.rs`), applies the fair rate limit (`limit.rs`), and writes one
//! JSON line to each output: stdout, stderr or any stream (the Kubernetes
//! Events tap), the size-bounded file (`rotate.rs`), and a line tap (the
//! ClickHouse output). `tick` (every
//! second, from the kernel-event reader) writes the folded records and the
//! `lost` records whose window ended; `flush_all` writes everything
//! pending at shutdown.

use std::{
    collections::HashMap,
    io::Write,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tracing::warn;

use super::{
    fold::Folder,
    limit::{FairLimit, Limits},
    rotate::Rotating,
    schema::{BlockedRecord, LostRecord, SCHEMA_VERSION, now_rfc3339},
    stats::LogStats,
};
use crate::util::lock;

/// Where the lines go.
pub enum Output {
    /// stdout, stderr, a test buffer, the Events tap: flushed per line.
    Stream(Box<dyn Write + Send>),
    File(Rotating),
    /// Each record's line, without its newline (the ClickHouse output's
    /// buffer): must return at once, whatever happens downstream.
    Tap(Box<dyn FnMut(&str) + Send>),
}

/// How records are folded and limited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub fold_window: Duration,
    pub limits: Limits,
}

impl Default for Settings {
    fn default() -> Self {
        Self { fold_window: super::fold::DEFAULT_WINDOW, limits: Limits::default() }
    }
}

/// What the limit held back of one endpoint and reason.
struct Lost {
    namespace: Option<String>,
    pod: Option<String>,
    count: u64,
    first: String,
    last: String,
    since: Instant,
}

struct Inner {
    outputs: Vec<(Output, bool)>,
    fold: Folder,
    limit: FairLimit,
    lost: HashMap<(String, &'static str), Lost>,
}

pub struct BlockedLog {
    node: String,
    window: Duration,
    inner: Mutex<Inner>,
    stats: Arc<LogStats>,
}

/// The blocked log, shared by the kernel-event reader and the DNS gates.
pub type LogSink = Arc<BlockedLog>;

/// A log on one stream, with the default settings, named after this host.
pub fn log_sink(w: Box<dyn Write + Send>) -> LogSink {
    BlockedLog::new(hostname(), vec![Output::Stream(w)], Settings::default())
}

/// This host's name (its UTS namespace's), the `node` of `exec` and `run`
/// records.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "unknown".into())
}

impl BlockedLog {
    pub fn new(node: String, outputs: Vec<Output>, settings: Settings) -> LogSink {
        Arc::new(Self {
            node,
            window: settings.fold_window,
            inner: Mutex::new(Inner {
                outputs: outputs.into_iter().map(|o| (o, false)).collect(),
                fold: Folder::new(settings.fold_window),
                limit: FairLimit::new(settings.limits),
                lost: HashMap::new(),
            }),
            stats: Arc::default(),
        })
    }

    /// The counters, for metrics.
    pub fn stats(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn record(&self, rec: BlockedRecord) {
        self.record_at(rec, Instant::now());
    }

    pub fn record_at(&self, mut rec: BlockedRecord, now: Instant) {
        LogStats::add(&self.stats.attempts, rec.count);
        rec.node.clone_from(&self.node);
        rec.escape_names();
        let mut g = lock(&self.inner);
        if !g.fold.offer(&rec, now) {
            LogStats::add(&self.stats.attempts_folded, rec.count);
            return;
        }
        g.emit(rec, now, &self.stats);
    }

    /// Writes the folded records whose window ended, and the `lost`
    /// records of a window's age.
    pub fn tick(&self) {
        self.tick_at(Instant::now());
    }

    pub fn tick_at(&self, now: Instant) {
        let mut g = lock(&self.inner);
        for rec in g.fold.due(now) {
            g.emit(rec, now, &self.stats);
        }
        g.limit.forget_idle(now);
        let window = self.window;
        g.write_lost(&self.node, &self.stats, |l| now.saturating_duration_since(l.since) >= window);
    }

    /// Writes everything pending (at shutdown, or a handover).
    pub fn flush_all(&self) {
        let now = Instant::now();
        let mut g = lock(&self.inner);
        for rec in g.fold.drain() {
            g.emit(rec, now, &self.stats);
        }
        g.write_lost(&self.node, &self.stats, |_| true);
    }
}

impl Inner {
    fn emit(&mut self, rec: BlockedRecord, now: Instant, stats: &LogStats) {
        if !self.limit.take(&rec.endpoint, now) {
            LogStats::add(&stats.records_rate_limited, 1);
            LogStats::add(&stats.attempts_lost, rec.count);
            let key = (rec.endpoint.clone(), rec.reason);
            let l = self.lost.entry(key).or_insert_with(|| Lost {
                namespace: rec.namespace.clone(),
                pod: rec.pod.clone(),
                count: 0,
                first: rec.first.clone().unwrap_or_else(|| rec.time.clone()),
                last: String::new(),
                since: now,
            });
            l.count += rec.count;
            l.last = rec.last.unwrap_or(rec.time);
            return;
        }
        let Ok(line) = serde_json::to_string(&rec) else { return };
        self.write_line(line, stats);
        LogStats::add(&stats.records_written, 1);
    }

    fn write_lost(&mut self, node: &str, stats: &LogStats, due: impl Fn(&Lost) -> bool) {
        let keys: Vec<_> = self.lost.iter().filter(|(_, l)| due(l)).map(|(k, _)| k.clone()).collect();
        for key in keys {
            let Some(l) = self.lost.remove(&key) else { continue };
            let rec = LostRecord {
                v: SCHEMA_VERSION,
                kind: "lost",
                time: now_rfc3339(),
                node: node.to_owned(),
                endpoint: key.0,
                namespace: l.namespace,
                pod: l.pod,
                reason: key.1,
                what: "rate-limited",
                count: l.count,
                first: l.first,
                last: l.last,
            };
            let Ok(line) = serde_json::to_string(&rec) else { continue };
            self.write_line(line, stats);
            LogStats::add(&stats.lost_records_written, 1);
        }
    }

    fn write_line(&mut self, mut line: String, stats: &LogStats) {
        line.push('\n');
        for (out, warned) in &mut self.outputs {
            let r = match out {
                Output::Stream(w) => w.write_all(line.as_bytes()).and_then(|()| w.flush()),
                Output::File(f) => f.write_line(line.as_bytes()).map(|rotated| {
                    if rotated {
                        LogStats::add(&stats.rotations, 1);
                    }
                }),
                Output::Tap(f) => {
                    f(line.trim_end_matches('\n'));
                    Ok(())
                }
            };
            if let Err(e) = r {
                LogStats::add(&stats.write_errors, 1);
                // Once per output: a full disk must not flood the agent's
                // own log too (the counter has every one).
                if !*warned {
                    *warned = true;
                    let what = match out {
                        Output::Stream(_) | Output::Tap(_) => "a stream".to_owned(),
                        Output::File(f) => f.path().display().to_string(),
                    };
                    warn!(error = %e, output = %what, "writing the blocked log failed (counted from now on, not logged again)");
                }
            } else {
                *warned = false;
            }
        }
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;

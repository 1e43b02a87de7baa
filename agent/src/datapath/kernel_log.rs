//! The kernel programs' rare events (`agent-ebpf/src/rare.rs`, aya-log's
//! `AYA_LOGS` ring) in the agent's `tracing` output, target
//! `portcullis::kernel`. Read off the ring when it is readable (tokio's
//! `AsyncFd`, as aya-template's logger task), never on a verdict's path.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::watch,
};

use crate::util::lock;

/// Forwards aya-log's records to `tracing`, at most `LINES_PER_WINDOW` per
/// `WINDOW` (a pod can trigger some of these events at will, say with
/// oversized DNS packets: it must not flood the node's logs; the counters
/// count every one), and keeps the last ones for tests
/// (`KernelLog::lines`).
#[derive(Clone, Default)]
pub struct Sink(Arc<Mutex<Vec<String>>>, Arc<Mutex<Limiter>>);

/// How many recent lines a `Sink` keeps.
const KEPT: usize = 256;
const WINDOW: Duration = Duration::from_secs(10);
const LINES_PER_WINDOW: u32 = 50;

/// Lines let through in the current window, and those held back.
#[derive(Default)]
pub struct Limiter {
    started: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl Limiter {
    /// Whether a line may go out `now`; when a window with suppressed
    /// lines ends, how many (to say so once).
    fn admit(&mut self, now: Instant) -> (bool, Option<u64>) {
        let mut ended = None;
        if self.started.is_none_or(|t| now.duration_since(t) >= WINDOW) {
            ended = (self.suppressed > 0).then_some(self.suppressed);
            *self = Self { started: Some(now), lines: 0, suppressed: 0 };
        }
        if self.lines < LINES_PER_WINDOW {
            self.lines += 1;
            (true, ended)
        } else {
            self.suppressed += 1;
            (false, ended)
        }
    }
}

impl log::Log for Sink {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args().to_string();
        let (admitted, suppressed) = lock(&self.1).admit(Instant::now());
        if let Some(n) = suppressed {
            tracing::warn!(target: "portcullis::kernel", suppressed = n,
                "kernel log lines held back in the last window (at most {LINES_PER_WINDOW} per {}s; the loss counters count every event)",
                WINDOW.as_secs());
        }
        if admitted {
            match record.level() {
                log::Level::Error => tracing::error!(target: "portcullis::kernel", "{msg}"),
                log::Level::Warn => tracing::warn!(target: "portcullis::kernel", "{msg}"),
                _ => tracing::info!(target: "portcullis::kernel", "{msg}"),
            }
        }
        let mut kept = lock(&self.0);
        if kept.len() == KEPT {
            kept.remove(0);
        }
        kept.push(msg);
    }

    fn flush(&self) {}
}

pub struct KernelLog {
    logger: EbpfLogger<Sink>,
    sink: Sink,
}

impl KernelLog {
    /// Takes the load's `AYA_LOGS` ring.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, aya_log::Error> {
        let sink = Sink::default();
        Ok(Self { logger: EbpfLogger::init_with_logger(ebpf, sink.clone())?, sink })
    }

    /// Logs every queued record. aya-log panics on a record it cannot
    /// parse (only our programs write here); that costs the record, not
    /// the agent.
    pub fn drain(&mut self) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| self.logger.flush())).is_err() {
            tracing::warn!(target: "portcullis::kernel", "an unreadable kernel log record was dropped");
        }
    }

    /// The last lines logged (tests).
    pub fn lines(&self) -> Vec<String> {
        lock(&self.sink.0).clone()
    }

    /// Logs records as they come until `stop`, then what is left.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        // SAFETY: the AsyncFd owns the logger, which owns the ring's fd, so
        // the fd stays open for as long as it is registered.
        let mut fd = match unsafe { AsyncFd::register_with_interest(self, Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the kernel's log ring; its rare events reach only the counters");
                return;
            }
        };
        loop {
            tokio::select! {
                ready = fd.readable_mut() => {
                    let Ok(mut guard) = ready else { break };
                    guard.get_inner_mut().drain();
                    guard.clear_ready();
                }
                _ = stop.changed() => break,
            }
        }
        fd.get_mut().drain();
    }
}

impl std::os::fd::AsRawFd for KernelLog {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.logger.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_kernel_lines_is_held_back_and_said_once_per_window() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..LINES_PER_WINDOW {
            assert_eq!(l.admit(t0), (true, None), "line {i}");
        }
        for _ in 0..1000 {
            assert_eq!(l.admit(t0 + Duration::from_secs(1)), (false, None));
        }
        // The next window: the count of what was held back, once.
        assert_eq!(l.admit(t0 + WINDOW), (true, Some(1000)));
        assert_eq!(l.admit(t0 + WINDOW), (true, None));
        // A quiet window ends with nothing to say.
        assert_eq!(l.admit(t0 + WINDOW * 3), (true, None));
    }
}

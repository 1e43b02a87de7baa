//! The kernel programs' rare events (`agent-ebpf/src/rare.rs`, aya-log's
//! `AYA_LOGS` ring) in the agent's `tracing` output, target
//! `portcullis::kernel`. Read off the ring when it is readable (tokio's
//! `AsyncFd`, as aya-template's logger task), never on a verdict's path.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
};

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::watch,
};

use crate::util::lock;

/// Forwards aya-log's records to `tracing`, and keeps the last ones for
/// tests (`KernelLog::lines`).
#[derive(Clone, Default)]
pub struct Sink(Arc<Mutex<Vec<String>>>);

/// How many recent lines a `Sink` keeps.
const KEPT: usize = 256;

impl log::Log for Sink {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args().to_string();
        match record.level() {
            log::Level::Error => tracing::error!(target: "portcullis::kernel", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "portcullis::kernel", "{msg}"),
            _ => tracing::info!(target: "portcullis::kernel", "{msg}"),
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

//! State shared by the handle and the server tasks.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::watch;

use super::{faults::Faults, faults::RequestRecord, resource::Registry, store::Store};

/// Everything behind one lock: critical sections are short and never await,
/// so the synchronous handle and the async server can share a std mutex.
#[derive(Debug, Default)]
pub(super) struct State {
    pub store: Store,
    pub faults: Faults,
    pub requests: Vec<RequestRecord>,
    /// Open watch streams per resource index.
    pub watchers: HashMap<usize, usize>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub registry: Registry,
    pub bookmark_interval: Duration,
    state: Mutex<State>,
    /// Ticks on every change of `state` that a waiter may care about (writes,
    /// faults, watcher counts); watch streams and `wait_*` helpers sleep on it.
    changed: watch::Sender<u64>,
}

impl Shared {
    pub(super) fn new(registry: Registry, bookmark_interval: Duration) -> Self {
        Self { registry, bookmark_interval, state: Mutex::default(), changed: watch::Sender::new(0) }
    }

    /// The state; a panic elsewhere while holding the lock does not make the
    /// server unusable (the state is always left consistent between writes).
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wake every waiter; call after releasing the lock.
    pub(super) fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that wakes on the next `notify` after this call.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Change the state under the lock, then wake the waiters.
    pub(super) fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.lock());
        self.notify();
        r
    }

    /// Wait (asynchronously) until `pred` holds for the state.
    pub(super) async fn wait_for(&self, mut pred: impl FnMut(&State) -> bool) {
        let mut rx = self.subscribe();
        loop {
            // The guard must be gone before the await (the future stays Send).
            let done = pred(&self.lock());
            if done || rx.changed().await.is_err() {
                return;
            }
        }
    }
}

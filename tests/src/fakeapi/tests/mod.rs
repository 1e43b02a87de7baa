//! The real kube client (typed `Api`, `watcher`, `reflector`,
//! `metadata_watcher`, `Recorder`) against the fake, over 127.0.0.1.

mod events;
mod faults;
mod list;
mod meta_crd;
mod watches;

use std::{collections::BTreeMap, fmt::Debug, hash::Hash, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::core::v1::{Pod, PodSpec},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::runtime::{
    reflector::{self, Lookup, Store},
    watcher::{self, Event},
};
use tokio::{sync::mpsc, task::JoinHandle};

/// How long a test waits for something that should happen in milliseconds.
const PATIENCE: Duration = Duration::from_secs(20);

pub(super) fn pod(ns: &str, name: &str, node: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec { node_name: Some(node.into()), ..PodSpec::default() }),
        ..Pod::default()
    }
}

/// A watcher stream driven through a reflector on a task of the test's
/// runtime: its store, and every event it yielded (errors as text).
pub(super) struct Reflected<K: Lookup + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub store: Store<K>,
    events: mpsc::UnboundedReceiver<Result<Event<K>, String>>,
    task: JoinHandle<()>,
}

impl<K> Reflected<K>
where
    K: Lookup + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
{
    pub(super) fn spawn(stream: impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static) -> Self {
        let (store, writer) = reflector::store();
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut s = std::pin::pin!(reflector::reflector(writer, stream));
            while let Some(ev) = s.next().await {
                if tx.send(ev.map_err(|e| e.to_string())).is_err() {
                    return;
                }
            }
        });
        Self { store, events, task }
    }

    /// Events until (and including) the first one `done` accepts.
    pub(super) async fn until(&mut self, done: impl Fn(&Result<Event<K>, String>) -> bool) -> Vec<Result<Event<K>, String>> {
        let mut seen = Vec::new();
        let wait = async {
            while let Some(ev) = self.events.recv().await {
                let stop = done(&ev);
                seen.push(ev);
                if stop {
                    return true;
                }
            }
            false
        };
        let ended = tokio::time::timeout(PATIENCE, wait).await;
        assert!(matches!(ended, Ok(true)), "watch stream never got there; events so far: {seen:#?}");
        seen
    }

    /// Events until the initial list is done (`InitDone`).
    pub(super) async fn init_done(&mut self) -> Vec<Result<Event<K>, String>> {
        self.until(|e| matches!(e, Ok(Event::InitDone))).await
    }

    /// Names in the reflector's store, sorted.
    pub(super) fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.store.state().iter().filter_map(|o| o.name().map(|n| n.into_owned())).collect();
        v.sort();
        v
    }
}

impl<K: Lookup + Clone + 'static> Drop for Reflected<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Is this event an `Apply`/`InitApply` of an object named `name`?
pub(super) fn applies<K: Lookup>(ev: &Result<Event<K>, String>, name: &str) -> bool {
    matches!(ev, Ok(Event::Apply(o) | Event::InitApply(o)) if o.name().as_deref() == Some(name))
}

/// Is this event a `Delete` of an object named `name`?
pub(super) fn deletes<K: Lookup>(ev: &Result<Event<K>, String>, name: &str) -> bool {
    matches!(ev, Ok(Event::Delete(o)) if o.name().as_deref() == Some(name))
}

/// How many `Init` events (starts of a full re-list) are among `evs`.
pub(super) fn inits<K>(evs: &[Result<Event<K>, String>]) -> usize {
    evs.iter().filter(|e| matches!(e, Ok(Event::Init))).count()
}

/// Poll `cond` until it holds (the reflector's store is updated
/// asynchronously to the events).
pub(super) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

//! The watches: kube-rs `watcher` + `reflector` (re-list on `410 Gone`,
//! re-watch from the last resourceVersion, bookmarks, backoff) on exactly
//! what the node needs: its own Pods (field selector `spec.nodeName`),
//! Namespaces (metadata only: labels for `namespaceSelector`), both policy
//! kinds, Services (their ClusterIPs and ports for `toServices`) and
//! EndpointSlices (their backends: `services.rs`). Every event pokes the
//! reconciler; it reads the stores, never the events.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
        mpsc::SyncSender,
    },
};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    core::{ApiResource, DynamicObject, PartialObjectMeta},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher::{self, Event, watcher},
    },
};
use tracing::{info, warn};

use super::{
    crd::{ClusterEgressPolicy, EgressPolicy},
    node::Snapshot,
    pods::PodInfo,
    policies::{Decoded, Undecodable},
    services::{SERVICE_NAME_LABEL, ServiceIps},
};

/// How many watches there are (each must list before anything is applied).
const WATCHES: usize = 6;

/// The reflectors' stores, and which watches have listed everything.
#[derive(Clone)]
pub struct Stores {
    pods: Store<Pod>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    // Untyped: one object that does not decode (a field newer than this
    // agent) is that object's problem (`PolicyBook`), not a failed list
    // that would leave the whole kind unlisted.
    policies: Store<DynamicObject>,
    cluster_policies: Store<DynamicObject>,
    services: Store<Service>,
    // Every namespace's, as Services are watched: a policy may name any
    // Service, and which ones changes with the policies.
    slices: Store<EndpointSlice>,
    listed: Arc<[AtomicBool; WATCHES]>,
}

impl Stores {
    /// The pods on this node (for Events about them).
    pub fn pods(&self) -> Store<Pod> {
        self.pods.clone()
    }

    /// Everything on record now.
    pub fn snapshot(&self, sandboxed: &[String]) -> Snapshot {
        let services = ServiceIps::new(&self.services.state(), &self.slices.state());
        let namespaces: HashMap<_, _> = self
            .namespaces
            .state()
            .iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, n.metadata.labels.clone().unwrap_or_default())))
            .collect();
        Snapshot {
            pods: self.pods.state().iter().filter_map(|p| PodInfo::from_pod(p, sandboxed)).collect(),
            namespaces,
            policies: decode(&self.policies.state()),
            cluster_policies: decode(&self.cluster_policies.state()),
            services,
            synced: self.listed.iter().all(|l| l.load(Relaxed)),
        }
    }
}

/// Each object typed, or why it is not: (its name, resourceVersion and
/// the decoding error).
fn decode<K: serde::de::DeserializeOwned>(objs: &[Arc<DynamicObject>]) -> Vec<Decoded<K>> {
    objs.iter()
        .map(|o| {
            serde_json::to_value(o.as_ref()).and_then(serde_json::from_value::<K>).map(Arc::new).map_err(|e| Undecodable {
                namespace: o.metadata.namespace.clone(),
                name: o.metadata.name.clone().unwrap_or_default(),
                version: o.metadata.resource_version.clone().unwrap_or_default(),
                error: e.to_string(),
            })
        })
        .collect()
}

/// Starts the watches on `rt`; each change sends on `poke` (dropped when a
/// poke is already queued: one pass sees everything).
pub fn start(rt: &tokio::runtime::Handle, client: &Client, node: &str, poke: SyncSender<()>) -> Stores {
    let listed: Arc<[AtomicBool; WATCHES]> = Arc::default();
    let pods_cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let (pods, w) = reflector::store();
    rt.spawn(drive("pods", 0, watcher(Api::<Pod>::all(client.clone()), pods_cfg), w, listed.clone(), poke.clone()));
    let (namespaces, w) = reflector::store();
    // Metadata only (`PartialObjectMetadata` requests): labels are all
    // `namespaceSelector` needs.
    let ns = watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default());
    rt.spawn(drive("namespaces", 1, ns, w, listed.clone(), poke.clone()));
    let ar = ApiResource::erase::<EgressPolicy>(&());
    let w = reflector::store::Writer::new(ar.clone());
    let policies = w.as_reader();
    let egp = watcher(Api::<DynamicObject>::all_with(client.clone(), &ar), watcher::Config::default());
    rt.spawn(drive("egresspolicies", 2, egp, w, listed.clone(), poke.clone()));
    let ar = ApiResource::erase::<ClusterEgressPolicy>(&());
    let w = reflector::store::Writer::new(ar.clone());
    let cluster_policies = w.as_reader();
    let cegp = watcher(Api::<DynamicObject>::all_with(client.clone(), &ar), watcher::Config::default());
    rt.spawn(drive("clusteregresspolicies", 3, cegp, w, listed.clone(), poke.clone()));
    let (services, w) = reflector::store();
    let svc = watcher(Api::<Service>::all(client.clone()), watcher::Config::default());
    rt.spawn(drive("services", 4, svc, w, listed.clone(), poke.clone()));
    let (slices, w) = reflector::store();
    // Only slices that name their Service (the EndpointSlice controller's,
    // those mirrored from hand-made Endpoints, hand-made ones that set the
    // label): others belong to no Service.
    let eps = watcher(Api::<EndpointSlice>::all(client.clone()), watcher::Config::default().labels(SERVICE_NAME_LABEL));
    rt.spawn(drive("endpointslices", 5, eps, w, listed.clone(), poke));
    Stores { pods, namespaces, policies, cluster_policies, services, slices, listed }
}

/// Runs one watch into its store until the runtime stops.
async fn drive<K>(
    what: &'static str,
    index: usize,
    stream: impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
    writer: reflector::store::Writer<K>,
    listed: Arc<[AtomicBool; WATCHES]>,
    poke: SyncSender<()>,
) where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    // Managed fields are most of a big object and nothing here reads them.
    let stream = stream.modify(|o: &mut K| o.meta_mut().managed_fields = None).default_backoff().reflect(writer);
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::InitDone) => {
                if !listed[index].swap(true, Relaxed) {
                    info!(resource = what, "listed");
                }
                let _ = poke.try_send(());
            }
            Ok(Event::Init | Event::InitApply(_)) => {}
            Ok(Event::Apply(_) | Event::Delete(_)) => {
                let _ = poke.try_send(());
            }
            Err(e) => warn!(resource = what, error = %e, "watch failed; retrying with backoff"),
        }
    }
}

//! The public handle: start, seed and inspect the fake, and turn its fault knobs.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use serde::Serialize;
use serde_json::Value;

use super::{
    faults::{RequestRecord, Verb},
    resource::{Registry, ResourceDef, default_resources},
    server::Server,
    state::{Shared, State},
    store::Key,
};

#[derive(Debug, thiserror::Error)]
pub enum FakeApiError {
    #[error("fake API server I/O: {0}")]
    Io(#[from] io::Error),
    #[error("the fake API server serves no {0}")]
    UnknownResource(String),
    #[error("invalid object: {0}")]
    BadObject(String),
    #[error("building the kube client: {0}")]
    Client(#[from] kube::Error),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// How long the `wait_*` helpers wait before giving up.
const WAIT: Duration = Duration::from_secs(10);

/// Options for [`FakeApi`]; [`FakeApi::start`] uses the defaults.
#[derive(Clone, Debug)]
pub struct FakeApiBuilder {
    resources: Vec<ResourceDef>,
    bookmark_interval: Duration,
    port: u16,
}

impl Default for FakeApiBuilder {
    fn default() -> Self {
        Self { resources: default_resources(), bookmark_interval: Duration::from_secs(1), port: 0 }
    }
}

impl FakeApiBuilder {
    /// Serve exactly these resources instead of [`default_resources`].
    #[must_use]
    pub fn resources(mut self, defs: Vec<ResourceDef>) -> Self {
        self.resources = defs;
        self
    }

    /// Serve one more resource.
    #[must_use]
    pub fn resource(mut self, def: ResourceDef) -> Self {
        self.resources.push(def);
        self
    }

    /// How often a watch that allows bookmarks gets one (default 1 s; a real
    /// server sends one about every minute).
    #[must_use]
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every;
        self
    }

    /// Listen on this port of 127.0.0.1 (default: any free port).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn start(self) -> Result<FakeApi, FakeApiError> {
        let shared = Arc::new(Shared::new(Registry::new(self.resources), self.bookmark_interval));
        let server = Server::start(shared.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)))?;
        Ok(FakeApi { shared, server })
    }
}

/// A running fake API server; dropping it stops the server and closes every
/// connection.
pub struct FakeApi {
    shared: Arc<Shared>,
    server: Server,
}

impl std::fmt::Debug for FakeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApi").field("addr", &self.addr()).finish_non_exhaustive()
    }
}

impl FakeApi {
    /// A server with the default resources on a free port.
    pub fn start() -> Result<Self, FakeApiError> {
        FakeApiBuilder::default().start()
    }

    pub fn builder() -> FakeApiBuilder {
        FakeApiBuilder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// A client configuration for this server: plain HTTP, no credentials,
    /// default namespace `default`.
    pub fn config(&self) -> kube::Config {
        let uri = self.url().parse().unwrap_or_default();
        kube::Config::new(uri)
    }

    /// A real `kube::Client` for this server. Call it inside a tokio runtime
    /// (the client spawns its request buffer there).
    pub fn client(&self) -> Result<kube::Client, FakeApiError> {
        Ok(kube::Client::try_from(self.config())?)
    }

    /// Insert or replace an object, like `kubectl apply` without the merge:
    /// the type comes from its `apiVersion` and `kind`, a namespaced object
    /// without a namespace goes to `default`. Returns the object as stored
    /// (with its new `resourceVersion`).
    pub fn apply<T: Serialize>(&self, obj: &T) -> Result<Value, FakeApiError> {
        let obj = serde_json::to_value(obj).map_err(|e| FakeApiError::BadObject(e.to_string()))?;
        let text = |p: &str| obj.pointer(p).and_then(Value::as_str).filter(|s| !s.is_empty());
        let (Some(api_version), Some(kind)) = (text("/apiVersion"), text("/kind")) else {
            return Err(FakeApiError::BadObject("apiVersion and kind are required".into()));
        };
        let res = self
            .shared
            .registry
            .by_type(api_version, kind)
            .ok_or_else(|| FakeApiError::UnknownResource(format!("{api_version} {kind}")))?;
        let name = text("/metadata/name").ok_or_else(|| FakeApiError::BadObject("metadata.name is required".into()))?;
        let namespaced = self.shared.registry.get(res).namespaced;
        let ns = if namespaced { text("/metadata/namespace").unwrap_or("default") } else { "" };
        let key = Key { res, ns: ns.to_owned(), name: name.to_owned() };
        Ok(self.shared.update(|s| s.store.put(key, obj.clone(), namespaced)))
    }

    /// Delete an object now (no grace period); watchers get DELETED.
    /// `resource` is a kind or plural (`"Pod"`, `"pods"`); `ns` is `None` for
    /// cluster-scoped objects. Returns the last state, if it existed.
    ///
    /// # Panics
    /// If the server does not serve `resource` (a mistake in the test).
    pub fn delete(&self, resource: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        let key = self.key(resource, ns, name);
        self.shared.update(|s| s.store.remove(&key))
    }

    /// The stored object, if any (same arguments as [`FakeApi::delete`]).
    ///
    /// # Panics
    /// If the server does not serve `resource`.
    pub fn get(&self, resource: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        let key = self.key(resource, ns, name);
        self.shared.lock().store.get(&key).cloned()
    }

    /// Every stored object of `resource` (a kind or plural), sorted by
    /// namespace and name.
    ///
    /// # Panics
    /// If the server does not serve `resource`.
    pub fn list(&self, resource: &str) -> Vec<Value> {
        let res = self.res(resource);
        self.shared.lock().store.objects(res)
    }

    /// The `events.k8s.io/v1` Events stored (created by POST, updated by PATCH).
    pub fn events(&self) -> Vec<Value> {
        self.shared
            .registry
            .by_type("events.k8s.io/v1", "Event")
            .map(|res| self.shared.lock().store.objects(res))
            .unwrap_or_default()
    }

    /// The current (latest) resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().store.rv()
    }

    /// Cut every open watch stream mid-stream (the connection is dropped
    /// without the terminating chunk). Clients re-watch from their last version.
    pub fn drop_watches(&self) {
        self.shared.update(|s| s.faults.drop_gen += 1);
    }

    /// Compact history up to now: every open watch gets a 410 `Expired` ERROR
    /// event and ends, and any older resource version or continue token is
    /// answered 410. Clients must re-list.
    pub fn compact(&self) {
        self.shared.update(|s| {
            s.store.compact();
            s.faults.compact_gen += 1;
        });
    }

    /// Answer the next `n` requests (of any kind) with `status` and a
    /// `Status` body; 429 and 503 carry `Retry-After: 1` as a real server's do.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.shared.update(|s| s.faults.fail_next(n, status));
    }

    /// Make the server unresponsive: new requests hang (until [`FakeApi::resume`]
    /// or the client gives up) and open watches deliver nothing.
    pub fn pause(&self) {
        self.shared.update(|s| s.faults.paused = true);
    }

    pub fn resume(&self) {
        self.shared.update(|s| s.faults.paused = false);
    }

    /// Close the listener and every connection: clients get "connection
    /// refused" until [`FakeApi::restart`]. The stored state is kept.
    pub fn stop(&self) {
        self.server.stop();
    }

    /// Listen again on the same port, with the same state.
    pub fn restart(&self) -> Result<(), FakeApiError> {
        Ok(self.server.restart(self.shared.clone())?)
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// How many requests with `verb` on `resource` (a kind or plural) were answered.
    pub fn count(&self, verb: Verb, resource: &str) -> usize {
        let res = self.res(resource);
        let plural = &self.shared.registry.get(res).plural;
        count(&self.shared.lock(), verb, plural)
    }

    /// Watch streams open now on `resource` (a kind or plural).
    pub fn watchers(&self, resource: &str) -> usize {
        let res = self.res(resource);
        self.shared.lock().watchers.get(&res).copied().unwrap_or(0)
    }

    /// Wait until at least `n` watch streams are open on `resource` (kind or plural).
    pub async fn wait_watchers(&self, resource: &str, n: usize) -> Result<(), FakeApiError> {
        let res = self.res(resource);
        let what = format!("{n} watchers of {resource}");
        self.wait(what, |s| s.watchers.get(&res).copied().unwrap_or(0) >= n).await
    }

    /// Wait until at least `n` requests with `verb` on `resource` were answered.
    pub async fn wait_requests(&self, verb: Verb, resource: &str, n: usize) -> Result<(), FakeApiError> {
        let plural = self.shared.registry.get(self.res(resource)).plural.clone();
        self.wait(format!("{n} {verb} requests on {resource}"), |s| count(s, verb, &plural) >= n).await
    }

    async fn wait(&self, what: String, pred: impl FnMut(&State) -> bool) -> Result<(), FakeApiError> {
        tokio::time::timeout(WAIT, self.shared.wait_for(pred)).await.map_err(|_| FakeApiError::Timeout(WAIT, what))
    }

    fn res(&self, resource: &str) -> usize {
        match self.shared.registry.by_name(resource) {
            Some(res) => res,
            None => panic!("fakeapi: no served resource is named {resource:?}"),
        }
    }

    fn key(&self, resource: &str, ns: Option<&str>, name: &str) -> Key {
        let res = self.res(resource);
        let ns = if self.shared.registry.get(res).namespaced { ns.unwrap_or("default") } else { "" };
        Key { res, ns: ns.to_owned(), name: name.to_owned() }
    }
}

fn count(s: &State, verb: Verb, plural: &str) -> usize {
    s.requests.iter().filter(|r| r.verb == verb && r.resource.as_deref() == Some(plural)).count()
}

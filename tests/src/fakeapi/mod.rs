//! An in-process fake Kubernetes API server for the real `kube::Client`.
//!
//! [`FakeApi`] serves plain HTTP/1.1 on 127.0.0.1 from a runtime of its own;
//! the client under test talks to it exactly as to a real API server (see
//! [`FakeApi::client`]). Dropping the handle stops it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use k8s_openapi::api::core::v1::Pod;
//! use portcullis_tests::fakeapi::FakeApi;
//! let api = FakeApi::start()?;
//! api.apply(&serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}}))?;
//! let pods: kube::Api<Pod> = kube::Api::namespaced(api.client()?, "default");
//! assert_eq!(pods.list(&Default::default()).await?.items.len(), 1);
//! # Ok(()) }
//! ```
//!
//! Real, with the API server's semantics:
//! - one cluster-wide, monotonically increasing `resourceVersion`; uid and
//!   creationTimestamp set by the server; no-op writes change nothing;
//! - LIST with label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`,
//!   `>`, `<`), field selectors (any dotted path, `=`, `==`, `!=`), `limit` and
//!   `continue` paging over a consistent snapshot (the first page's version),
//!   `resourceVersionMatch=Exact` reads of the past, 410 `Expired` for a
//!   version or continue token older than the last compaction;
//! - WATCH from a version (replaying history), from "now" with synthetic
//!   ADDED events, or as a streaming list (`sendInitialEvents` + the
//!   `k8s.io/initial-events-end` bookmark); selector-aware transitions (an
//!   object that stops matching is DELETED, one that starts matching ADDED);
//!   periodic BOOKMARKs; `timeoutSeconds`; a 410 ERROR event for a compacted
//!   version;
//! - metadata-only reads (`Accept: …;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`);
//! - POST (incl. `generateName`), PUT and PATCH (merge, JSON patch) with
//!   optimistic concurrency on `metadata.resourceVersion`, DELETE with
//!   preconditions; `Status` bodies for every failure; discovery documents.
//!
//! Not real: no authentication, authorization (RBAC) or admission (a
//! namespace need not exist, nothing is defaulted or validated beyond
//! identity), no server-side apply (415), no subresources, no graceful
//! deletion or finalizers (DELETE is immediate), strategic merge patch is
//! applied as a JSON merge patch (lists replaced, not merged by key), field
//! selectors accept any path (the real server allows a few per type), a
//! watch from a version in the future does not wait for it (a list at one
//! answers 504 at once, where the real server first waits 3 s), DELETE
//! answers with the object (never a `Status`), no protobuf, no HTTP/2, no
//! `dryRun`, no garbage collection, no `kubernetes` service or default
//! namespaces (a fresh server is empty).
//!
//! Faults for tests: [`FakeApi::drop_watches`], [`FakeApi::compact`],
//! [`FakeApi::fail_next`], [`FakeApi::pause`]/[`FakeApi::resume`],
//! [`FakeApi::stop`]/[`FakeApi::restart`]; observations:
//! [`FakeApi::requests`], [`FakeApi::wait_watchers`], [`FakeApi::events`].

mod discovery;
mod faults;
mod handle;
mod http;
mod read;
mod resource;
mod select;
mod server;
mod state;
mod status;
mod store;
mod watch;
mod write;

#[cfg(test)]
mod tests;

pub use faults::{RequestRecord, Verb};
pub use handle::{FakeApi, FakeApiBuilder, FakeApiError};
pub use resource::{ResourceDef, default_resources};

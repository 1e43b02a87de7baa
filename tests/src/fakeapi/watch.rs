//! WATCH: a chunked stream of JSON lines replaying the change history after
//! a resource version, as the API server's watch cache does.

use std::{io, pin::pin, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::Instant};

use super::{
    http::{Body, Query, Shape, Target},
    read::{parse_rv, render},
    resource::ResourceDef,
    select::Selector,
    state::Shared,
    status::ApiError,
    store::{Change, Record},
};

type Chunk = Result<Frame<Bytes>, io::Error>;

/// Start a watch: validate, fix its starting point under the lock, and hand
/// the rest to a task that writes into the response body.
pub(super) fn start(shared: &Arc<Shared>, t: &Target, q: &Query, shape: Shape) -> Result<Response<Body>, ApiError> {
    if shape == Shape::MetaList {
        return Err(ApiError::new(406, "NotAcceptable", "a watch streams PartialObjectMetadata, not lists"));
    }
    let mut sel = q.selector()?;
    if let Some(name) = &t.name {
        // The legacy single-object watch path is a watch on the name.
        sel.fields.push_eq("metadata.name", name);
    }
    let rv = parse_rv(q.get("resourceVersion"))?;
    let timeout = match q.get("timeoutSeconds") {
        None | Some("") => None,
        Some(s) => {
            Some(Duration::from_secs(s.parse().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {s}")))?))
        }
    };
    let bookmarks = q.flag("allowWatchBookmarks");
    let send_initial = q.flag("sendInitialEvents");
    if send_initial && !bookmarks {
        return Err(ApiError::bad_request("allowWatchBookmarks must be set to true when sendInitialEvents is true"));
    }
    if send_initial && q.get("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::bad_request("sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"));
    }

    let mut w = Watch {
        shared: shared.clone(),
        def: shared.registry.get(t.res).clone(),
        res: t.res,
        ns: t.ns.clone(),
        sel,
        shape,
        cursor: 0,
        gens: (0, 0),
    };
    let (initial, initial_end) = {
        let mut st = shared.lock();
        w.gens = (st.faults.drop_gen, st.faults.compact_gen);
        *st.watchers.entry(t.res).or_default() += 1;
        match rv {
            // No version, "0", or a streaming list: begin with the current
            // state as synthetic ADDED events, then follow from now.
            None | Some(0) => {
                w.cursor = st.store.rv();
                (st.store.snapshot(t.res, t.ns.as_deref(), None).unwrap_or_default(), send_initial)
            }
            Some(_) if send_initial => {
                w.cursor = st.store.rv();
                (st.store.snapshot(t.res, t.ns.as_deref(), None).unwrap_or_default(), true)
            }
            Some(r) => {
                w.cursor = r;
                (Vec::new(), false)
            }
        }
    };
    shared.notify();
    let initial: Vec<Value> = initial.into_iter().filter(|o| w.sel.matches(o)).collect();

    let (tx, rx) = mpsc::channel::<Chunk>(64);
    tokio::spawn(w.run(tx, initial, initial_end, bookmarks, timeout));
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// One open watch stream.
struct Watch {
    shared: Arc<Shared>,
    def: ResourceDef,
    res: usize,
    ns: Option<String>,
    sel: Selector,
    shape: Shape,
    /// Every change up to here has been considered.
    cursor: u64,
    /// `drop_gen` and `compact_gen` when the stream started.
    gens: (u64, u64),
}

enum Step {
    Lines(Vec<Value>),
    /// `drop_watches`: cut the connection mid-stream.
    Abort,
    /// The starting version was compacted away (or `compact` was called).
    Expired(String),
}

/// Decrements the watcher count however the stream ends.
struct Registered(Arc<Shared>, usize);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.update(|s| {
            if let Some(n) = s.watchers.get_mut(&self.1) {
                *n = n.saturating_sub(1);
            }
        });
    }
}

impl Watch {
    async fn run(
        mut self,
        tx: mpsc::Sender<Chunk>,
        initial: Vec<Value>,
        initial_end: bool,
        bookmarks: bool,
        timeout: Option<Duration>,
    ) {
        let _registered = Registered(self.shared.clone(), self.res);
        // Subscribed before the first look at the state, so no change is missed.
        let mut changed = self.shared.subscribe();
        let mut lines: Vec<Value> = initial.iter().map(|o| self.event("ADDED", o)).collect();
        if initial_end {
            lines.push(self.bookmark(true));
        }
        if !send(&tx, lines).await {
            return;
        }
        let interval = self.shared.bookmark_interval;
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        let mut ended = pin!(async move {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        });
        let mut bookmark_due = false;
        loop {
            match self.step(bookmark_due) {
                Step::Lines(lines) => {
                    if !send(&tx, lines).await {
                        return;
                    }
                }
                Step::Abort => {
                    // An error from the body makes hyper drop the connection
                    // without the last chunk: the client sees a broken stream.
                    let _ = tx.send(Err(io::Error::other("watch dropped by the fake API server"))).await;
                    return;
                }
                Step::Expired(message) => {
                    let status = ApiError::expired(message).to_status();
                    let _ = send(&tx, vec![json!({"type": "ERROR", "object": status})]).await;
                    return;
                }
            }
            bookmark_due = false;
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = ticks.tick(), if bookmarks => bookmark_due = true,
                () = &mut ended => return,
                () = tx.closed() => return,
            }
        }
    }

    /// Everything that happened since the cursor, as this watch sees it.
    fn step(&mut self, bookmark_due: bool) -> Step {
        let st = self.shared.lock();
        if st.faults.drop_gen != self.gens.0 {
            return Step::Abort;
        }
        if st.faults.paused {
            return Step::Lines(Vec::new());
        }
        if st.faults.compact_gen != self.gens.1 {
            return Step::Expired(format!("too old resource version: {} ({})", self.cursor, st.store.compacted()));
        }
        let records = match st.store.changes_since(self.res, self.cursor) {
            Ok(r) => r,
            Err(e) => return Step::Expired(e.to_string()),
        };
        self.cursor = st.store.rv();
        drop(st);
        let mut lines: Vec<Value> =
            records.iter().filter_map(|r| transition(r, self.ns.as_deref(), &self.sel)).map(|(t, o)| self.event(t, o)).collect();
        if bookmark_due {
            lines.push(self.bookmark(false));
        }
        Step::Lines(lines)
    }

    fn event(&self, kind: &str, obj: &Value) -> Value {
        json!({"type": kind, "object": render(&self.def, obj, self.shape, false)})
    }

    /// A BOOKMARK: an object of the watched kind carrying only the version
    /// up to which this stream has seen everything.
    fn bookmark(&self, initial_end: bool) -> Value {
        let (api_version, kind) = match self.shape {
            Shape::Full => (self.def.api_version(), self.def.kind.clone()),
            Shape::Meta | Shape::MetaList => ("meta.k8s.io/v1".to_owned(), "PartialObjectMetadata".to_owned()),
        };
        let mut meta = json!({"resourceVersion": self.cursor.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind, "metadata": meta}})
    }
}

/// The event a selector-filtered watch sees for one change, as the watch
/// cache computes it: an object that stops matching is DELETED (carrying its
/// new state), one that starts matching is ADDED.
fn transition<'a>(r: &'a Record, ns: Option<&str>, sel: &Selector) -> Option<(&'static str, &'a Value)> {
    if ns.is_some_and(|ns| r.key.ns != ns) {
        return None;
    }
    let was = r.prev.as_ref().is_some_and(|p| sel.matches(p));
    let is = r.change != Change::Deleted && sel.matches(&r.object);
    match (r.change, was, is) {
        (Change::Deleted, true, _) | (_, true, false) => Some(("DELETED", &r.object)),
        (_, false, true) => Some(("ADDED", &r.object)),
        (_, true, true) => Some(("MODIFIED", &r.object)),
        (_, false, false) => None,
    }
}

/// Write lines to the body; `false` once the client is gone.
async fn send(tx: &mpsc::Sender<Chunk>, lines: Vec<Value>) -> bool {
    for line in lines {
        let mut buf = serde_json::to_vec(&line).unwrap_or_default();
        buf.push(b'\n');
        if tx.send(Ok(Frame::data(Bytes::from(buf)))).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakeapi::{select::LabelSelector, store::Key};

    fn rec(change: Change, prev: Option<&str>, now: &str) -> Record {
        let obj = |app: &str| json!({"metadata": {"name": "p", "labels": {"app": app}}});
        Record { rv: 2, key: Key { res: 0, ns: "ns".into(), name: "p".into() }, change, object: obj(now), prev: prev.map(obj) }
    }

    #[test]
    fn fakeapi_watch_transitions_follow_the_selector() {
        let sel = Selector { labels: LabelSelector::parse("app=web").unwrap(), ..Selector::default() };
        let t = |r: Record| transition(&r, None, &sel).map(|(t, _)| t);
        assert_eq!(t(rec(Change::Added, None, "web")), Some("ADDED"));
        assert_eq!(t(rec(Change::Added, None, "db")), None);
        assert_eq!(t(rec(Change::Modified, Some("web"), "web")), Some("MODIFIED"));
        assert_eq!(t(rec(Change::Modified, Some("web"), "db")), Some("DELETED"));
        assert_eq!(t(rec(Change::Modified, Some("db"), "web")), Some("ADDED"));
        assert_eq!(t(rec(Change::Modified, Some("db"), "db")), None);
        assert_eq!(t(rec(Change::Deleted, Some("web"), "web")), Some("DELETED"));
        assert_eq!(t(rec(Change::Deleted, Some("db"), "db")), None);
        assert_eq!(transition(&rec(Change::Added, None, "web"), Some("other"), &sel), None);
    }
}

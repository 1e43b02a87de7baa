//! `kube::runtime::watcher` + `reflector` against the fake: the initial list,
//! live events, and recovery from every kind of watch failure.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{WatchEvent, WatchParams},
    runtime::{WatchStreamExt, watcher},
};

use super::{Reflected, applies, deletes, eventually, inits, pod};
use crate::fakeapi::{FakeApi, Verb};

#[tokio::test]
async fn fakeapi_watcher_field_selector_add_modify_delete() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    api.apply(&pod("default", "a1", "node-a", &[]))?;
    api.apply(&pod("default", "b1", "node-b", &[]))?;
    let pods: Api<Pod> = Api::all(api.client()?);
    let mut w = Reflected::spawn(watcher(pods, watcher::Config::default().fields("spec.nodeName=node-a")));
    w.init_done().await;
    assert_eq!(w.names(), ["a1"]);
    api.wait_watchers("pods", 1).await?;

    api.apply(&pod("other", "a2", "node-a", &[]))?;
    api.apply(&pod("default", "b2", "node-b", &[]))?;
    w.until(|e| applies(e, "a2")).await;
    api.apply(&pod("default", "a1", "node-a", &[("v", "2")]))?;
    let evs = w.until(|e| applies(e, "a1")).await;
    assert!(!evs.iter().any(|e| applies(e, "b2")), "a pod of node-b came through: {evs:?}");
    let a1 = w.store.state().into_iter().find(|p| p.metadata.name.as_deref() == Some("a1"));
    assert_eq!(a1.and_then(|p| p.labels().get("v").cloned()), Some("2".into()));

    api.delete("pods", Some("other"), "a2");
    w.until(|e| deletes(e, "a2")).await;
    assert_eq!(w.names(), ["a1"]);
    // One list, one watch: nothing failed.
    assert_eq!((api.count(Verb::List, "pods"), api.count(Verb::Watch, "pods")), (1, 1));
    let watch = api.requests().into_iter().find(|r| r.verb == Verb::Watch).expect("a watch request");
    assert_eq!(watch.param("fieldSelector").as_deref(), Some("spec.nodeName=node-a"));
    assert_eq!(watch.param("allowWatchBookmarks").as_deref(), Some("true"));
    Ok(())
}

/// A deletion the watcher could not see (server down) followed by a
/// compaction: resuming from its old version is answered 410, so it must
/// re-list, and the re-list drops the deleted pod from the store. Without
/// the 410 the resumed watch would replay nothing and the pod would stay.
#[tokio::test]
async fn fakeapi_compaction_forces_a_relist_that_forgets_gap_deletes() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    api.apply(&pod("default", "keep", "node-a", &[]))?;
    api.apply(&pod("default", "gone", "node-a", &[]))?;
    let pods: Api<Pod> = Api::namespaced(api.client()?, "default");
    let mut w = Reflected::spawn(watcher(pods, watcher::Config::default()).default_backoff());
    let first = w.init_done().await;
    assert_eq!(inits(&first), 1);
    assert_eq!(w.names(), ["gone", "keep"]);
    api.wait_watchers("pods", 1).await?;

    api.stop();
    api.delete("pods", Some("default"), "gone");
    api.compact();
    api.restart()?;

    let evs = w.init_done().await;
    assert_eq!(inits(&evs), 1, "the watcher did not start over: {evs:?}");
    assert!(evs.iter().any(|e| e.as_ref().is_err_and(|m| m.contains("410") || m.contains("too old"))), "no 410: {evs:?}");
    assert_eq!(w.names(), ["keep"]);
    assert_eq!(api.count(Verb::List, "pods"), 2);
    Ok(())
}

/// `compact()` ends open watches with a 410 ERROR event: the watcher re-lists.
#[tokio::test]
async fn fakeapi_compaction_ends_open_watches_with_410() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    api.apply(&pod("default", "p", "node-a", &[]))?;
    let pods: Api<Pod> = Api::namespaced(api.client()?, "default");
    let mut w = Reflected::spawn(watcher(pods, watcher::Config::default()));
    w.init_done().await;
    api.wait_watchers("pods", 1).await?;
    api.compact();
    let evs = w.init_done().await;
    assert_eq!(inits(&evs), 1);
    assert!(matches!(evs.first(), Some(Err(m)) if m.contains("410") || m.contains("too old")), "{evs:?}");
    assert_eq!(w.names(), ["p"]);
    Ok(())
}

/// A watch cut mid-stream is resumed from the last version seen: changes made
/// while it was down (and the server unreachable) all arrive, without a re-list.
#[tokio::test]
async fn fakeapi_dropped_watch_resumes_without_loss() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    api.apply(&pod("default", "old", "node-a", &[]))?;
    let pods: Api<Pod> = Api::namespaced(api.client()?, "default");
    let mut w = Reflected::spawn(watcher(pods, watcher::Config::default()).default_backoff());
    w.init_done().await;
    api.wait_watchers("pods", 1).await?;

    api.pause();
    api.drop_watches();
    api.apply(&pod("default", "new", "node-a", &[]))?;
    api.delete("pods", Some("default"), "old");
    // The cut stream is gone; its replacement hangs until the server is back.
    eventually("the old watch to end", || api.watchers("pods") == 0).await;
    api.resume();

    w.until(|e| deletes(e, "old")).await;
    assert_eq!(w.names(), ["new"]);
    assert_eq!(api.count(Verb::List, "pods"), 1, "the watcher re-listed instead of resuming");
    assert!(api.count(Verb::Watch, "pods") >= 2);
    Ok(())
}

/// Three 500s in a row: the watcher reports them, backs off, and gets there.
#[tokio::test]
async fn fakeapi_watcher_recovers_from_server_errors_with_backoff() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    api.apply(&pod("default", "p", "node-a", &[]))?;
    api.fail_next(3, 500);
    let pods: Api<Pod> = Api::namespaced(api.client()?, "default");
    let mut w = Reflected::spawn(watcher(pods, watcher::Config::default()).default_backoff());
    let evs = w.init_done().await;
    let errors = evs.iter().filter(|e| e.is_err()).count();
    assert_eq!(errors, 3, "{evs:?}");
    assert_eq!(w.names(), ["p"]);
    let failed = api.requests().iter().filter(|r| r.status == 500).count();
    assert_eq!(failed, 3);
    Ok(())
}

/// A label-selected watch: a pod whose label stops matching is DELETED for
/// this watcher, and ADDED again when it matches again.
#[tokio::test]
async fn fakeapi_label_watch_deletes_objects_that_stop_matching() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    api.apply(&pod("default", "p", "node-a", &[("app", "web")]))?;
    let pods: Api<Pod> = Api::namespaced(api.client()?, "default");
    let mut w = Reflected::spawn(watcher(pods, watcher::Config::default().labels("app=web")));
    w.init_done().await;
    assert_eq!(w.names(), ["p"]);
    api.wait_watchers("pods", 1).await?;

    api.apply(&pod("default", "p", "node-a", &[("app", "db")]))?;
    w.until(|e| deletes(e, "p")).await;
    assert!(w.names().is_empty());
    api.apply(&pod("default", "p", "node-a", &[("app", "web")]))?;
    w.until(|e| applies(e, "p")).await;
    assert_eq!(w.names(), ["p"]);
    Ok(())
}

/// The streaming-list strategy (`sendInitialEvents`) ends its initial events
/// with the annotated bookmark, then follows changes.
#[tokio::test]
async fn fakeapi_streaming_list_watcher() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    api.apply(&pod("default", "a", "node-a", &[]))?;
    api.apply(&pod("default", "b", "node-a", &[]))?;
    let pods: Api<Pod> = Api::namespaced(api.client()?, "default");
    let mut w = Reflected::spawn(watcher(pods, watcher::Config::default().streaming_lists()));
    w.init_done().await;
    assert_eq!(w.names(), ["a", "b"]);
    api.apply(&pod("default", "c", "node-a", &[]))?;
    w.until(|e| applies(e, "c")).await;
    assert_eq!((api.count(Verb::List, "pods"), api.count(Verb::Watch, "pods")), (0, 1));
    Ok(())
}

/// Bookmarks move the watcher's version forward, and `timeoutSeconds` ends
/// streams: the watcher keeps re-watching (from the bookmark) without re-listing.
#[tokio::test]
async fn fakeapi_watch_timeouts_and_bookmarks() -> anyhow::Result<()> {
    let api = FakeApi::builder().bookmark_interval(std::time::Duration::from_millis(100)).start()?;
    api.apply(&pod("default", "p", "node-a", &[]))?;
    let pods: Api<Pod> = Api::namespaced(api.client()?, "default");
    let mut w = Reflected::spawn(watcher(pods, watcher::Config::default().timeout(1)));
    w.init_done().await;
    // Versions move on elsewhere (another resource), so bookmarks carry news.
    api.apply(&serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}))?;
    api.wait_requests(Verb::Watch, "pods", 3).await?;
    let rvs: Vec<String> =
        api.requests().iter().filter(|r| r.verb == Verb::Watch).filter_map(|r| r.param("resourceVersion")).collect();
    assert_eq!(rvs.first().map(String::as_str), Some("1"));
    assert_eq!(rvs.last().map(String::as_str), Some("2"), "re-watches did not start from the bookmark: {rvs:?}");
    assert_eq!(api.count(Verb::List, "pods"), 1);
    api.apply(&pod("default", "q", "node-a", &[]))?;
    w.until(|e| applies(e, "q")).await;
    eventually("q in the store", || w.names() == ["p", "q"]).await;
    Ok(())
}

/// The wire protocol as `Api::watch` sees it: events after the version,
/// bookmarks of the right kind, then a 410 ERROR event that ends the stream.
#[tokio::test]
async fn fakeapi_raw_watch_stream() -> anyhow::Result<()> {
    let api = FakeApi::builder().bookmark_interval(std::time::Duration::from_millis(100)).start()?;
    let first = api.apply(&pod("default", "p", "node-a", &[]))?;
    let pods: Api<Pod> = Api::namespaced(api.client()?, "default");
    let rv = first["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned();
    let mut stream = pods.watch(&WatchParams::default().timeout(10), &rv).await?.boxed();
    api.apply(&pod("default", "q", "node-a", &[]))?;
    let next = async |s: &mut futures::stream::BoxStream<'_, kube::Result<WatchEvent<Pod>>>| {
        tokio::time::timeout(super::PATIENCE, s.next()).await.expect("the watch stalled")
    };
    let q = loop {
        match next(&mut stream).await {
            Some(Ok(WatchEvent::Bookmark(_))) => continue,
            Some(Ok(WatchEvent::Added(q))) => break q,
            other => panic!("expected ADDED for q, got {other:?}"),
        }
    };
    assert_eq!(q.name_any(), "q");
    let Some(Ok(WatchEvent::Bookmark(bm))) = next(&mut stream).await else { panic!("no BOOKMARK") };
    assert_eq!((bm.types.api_version.as_str(), bm.types.kind.as_str()), ("v1", "Pod"));
    assert_eq!(bm.metadata.resource_version, "2");
    api.compact();
    loop {
        match next(&mut stream).await {
            Some(Ok(WatchEvent::Bookmark(_))) => continue,
            Some(Ok(WatchEvent::Error(status))) => {
                assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
                break;
            }
            other => panic!("expected a 410 ERROR event, got {other:?}"),
        }
    }
    assert!(next(&mut stream).await.is_none(), "the stream goes on after a 410");
    // Watching from before the compaction: 200, then the 410 event.
    let mut stale = pods.watch(&WatchParams::default(), &rv).await?.boxed();
    assert!(matches!(next(&mut stale).await, Some(Ok(WatchEvent::Error(s))) if s.code == 410));
    Ok(())
}

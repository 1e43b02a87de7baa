//! The fault knobs as the client experiences them.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};

use super::pod;
use crate::fakeapi::FakeApi;

#[tokio::test]
async fn fakeapi_stop_refuses_connections_and_restart_keeps_state() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    api.apply(&pod("default", "p", "node-a", &[]))?;
    let pods: Api<Pod> = Api::namespaced(api.client()?, "default");
    assert_eq!(pods.list(&ListParams::default()).await?.items.len(), 1);

    api.stop();
    let refused = pods.list(&ListParams::default()).await.unwrap_err();
    assert!(!matches!(refused, kube::Error::Api(_)), "a stopped server answered: {refused:?}");
    assert!(std::net::TcpStream::connect(api.addr()).is_err(), "the port still accepts connections");
    api.apply(&pod("default", "q", "node-a", &[]))?;

    api.restart()?;
    let after = pods.list(&ListParams::default()).await?;
    assert_eq!(after.items.len(), 2);
    assert_eq!(after.metadata.resource_version.as_deref(), Some("2"));
    Ok(())
}

#[tokio::test]
async fn fakeapi_pause_hangs_requests_until_resumed() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    let pods: Api<Pod> = Api::namespaced(api.client()?, "default");
    api.pause();
    let hung = tokio::time::timeout(Duration::from_millis(300), pods.list(&ListParams::default())).await;
    assert!(hung.is_err(), "a paused server answered");
    let pending = tokio::spawn(async move { pods.list(&ListParams::default()).await.map(|l| l.items.len()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pending.is_finished());
    api.resume();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), pending).await???, 0);
    Ok(())
}

/// kube 5's client retries 429 (and 503/504) by itself, honouring
/// `Retry-After`; a 500 it hands to the caller.
#[tokio::test]
async fn fakeapi_client_retries_429_but_not_500() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    let pods: Api<Pod> = Api::namespaced(api.client()?, "default");
    api.fail_next(2, 429);
    assert!(pods.list(&ListParams::default()).await?.items.is_empty());
    let statuses: Vec<u16> = api.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 200]);

    api.fail_next(1, 500);
    let e = pods.list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 500 && s.reason == "InternalError"), "{e:?}");
    assert!(pods.list(&ListParams::default()).await.is_ok());
    Ok(())
}

/// The handle needs no runtime of the caller's: a synchronous test can seed
/// and inspect it, and drop it anywhere.
#[test]
fn fakeapi_serves_synchronous_tests() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    api.apply(&pod("default", "p", "node-a", &[]))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let n = rt.block_on(async {
        let pods: Api<Pod> = Api::namespaced(api.client()?, "default");
        anyhow::Ok(pods.list(&ListParams::default()).await?.items.len())
    })?;
    assert_eq!(n, 1);
    assert_eq!(api.delete("Pod", Some("default"), "p").map(|p| p["metadata"]["resourceVersion"].clone()), Some("2".into()));
    drop(api);
    Ok(())
}

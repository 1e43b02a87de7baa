//! Typed LIST and GET through `kube::Api`.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, ResourceExt,
    api::{ListParams, VersionMatch},
};

use super::pod;
use crate::fakeapi::{FakeApi, Verb};

fn api_status(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API Status error, got {other:?}"),
    }
}

#[tokio::test]
async fn fakeapi_list_field_and_label_selectors() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    api.apply(&pod("default", "a1", "node-a", &[("app", "web")]))?;
    api.apply(&pod("default", "a2", "node-a", &[("app", "db")]))?;
    api.apply(&pod("other", "a3", "node-a", &[("app", "web"), ("tier", "fe")]))?;
    api.apply(&pod("default", "b1", "node-b", &[("app", "web")]))?;
    let pods: Api<Pod> = Api::all(api.client()?);

    let names = |l: kube::core::ObjectList<Pod>| l.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>();
    let on_a = pods.list(&ListParams::default().fields("spec.nodeName=node-a")).await?;
    assert_eq!(names(on_a), ["a1", "a2", "a3"]);
    let on_a_web = pods.list(&ListParams::default().fields("spec.nodeName=node-a").labels("app=web")).await?;
    assert_eq!(names(on_a_web), ["a1", "a3"]);
    let set = pods.list(&ListParams::default().labels("app in (db,web),!tier")).await?;
    assert_eq!(names(set), ["a1", "a2", "b1"]);
    let not_b = pods.list(&ListParams::default().fields("spec.nodeName!=node-b,metadata.namespace=default")).await?;
    assert_eq!(names(not_b), ["a1", "a2"]);
    let in_other: Api<Pod> = Api::namespaced(api.client()?, "other");
    assert_eq!(names(in_other.list(&ListParams::default()).await?), ["a3"]);

    // The list's version is the server's current one; items carry their own.
    let all = pods.list(&ListParams::default()).await?;
    assert_eq!(all.metadata.resource_version, Some(api.resource_version().to_string()));
    assert!(all.items.iter().all(|p| p.metadata.uid.is_some() && p.metadata.creation_timestamp.is_some()));

    let bad = pods.list(&ListParams::default().labels("app in web")).await.unwrap_err();
    assert_eq!(api_status(bad), (400, "BadRequest".into()));
    Ok(())
}

#[tokio::test]
async fn fakeapi_paged_list_is_a_snapshot_until_compacted() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    for i in 0..5 {
        api.apply(&pod("default", &format!("p{i}"), "node-a", &[]))?;
    }
    let pods: Api<Pod> = Api::namespaced(api.client()?, "default");
    let first = pods.list(&ListParams::default().limit(2)).await?;
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("a continue token");
    assert_eq!(first.metadata.remaining_item_count, Some(3));

    // Changes after the first page do not show in later pages: the list is
    // one consistent snapshot, at the first page's version.
    api.delete("pods", Some("default"), "p3");
    api.apply(&pod("default", "p4", "node-b", &[]))?;
    let second = pods.list(&ListParams::default().limit(2).continue_token(&token)).await?;
    assert_eq!(second.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>(), ["p2", "p3"]);
    assert_eq!(second.metadata.resource_version, first.metadata.resource_version);
    let third =
        pods.list(&ListParams::default().limit(2).continue_token(second.metadata.continue_.as_deref().unwrap_or(""))).await?;
    assert_eq!(third.items.len(), 1);
    assert_eq!(third.items[0].spec.as_ref().and_then(|s| s.node_name.as_deref()), Some("node-a"));
    assert!(third.metadata.continue_.is_none());

    // An Exact read of the past works until compaction.
    let rv = first.metadata.resource_version.clone().unwrap_or_default();
    let past = pods.list(&ListParams::default().at(&rv).matching(VersionMatch::Exact)).await?;
    assert_eq!(past.items.len(), 5);

    api.compact();
    let expired = pods.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap_err();
    assert_eq!(api_status(expired), (410, "Expired".into()));
    let expired = pods.list(&ListParams::default().at(&rv).matching(VersionMatch::Exact)).await.unwrap_err();
    assert_eq!(api_status(expired), (410, "Expired".into()));
    assert_eq!(api.count(Verb::List, "pods"), 6);
    Ok(())
}

#[tokio::test]
async fn fakeapi_get_and_errors_are_real_status_objects() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    api.apply(
        &serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod", "labels": {"env": "prod"}}}),
    )?;
    let client = api.client()?;
    let nss: Api<Namespace> = Api::all(client.clone());
    let prod = nss.get("prod").await?;
    assert_eq!(prod.labels().get("env").map(String::as_str), Some("prod"));
    assert!(prod.metadata.namespace.is_none());

    let missing = nss.get("nope").await.unwrap_err();
    assert_eq!(api_status(missing), (404, "NotFound".into()));
    assert_eq!(nss.get_opt("nope").await?, None);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let e = pods.get("nope").await.unwrap_err();
    let kube::Error::Api(s) = e else { panic!("not a Status") };
    assert_eq!(s.message, "pods \"nope\" not found");
    assert_eq!(s.details.map(|d| d.kind), Some("pods".into()));

    // Metadata-only reads come back as PartialObjectMetadata.
    let meta = nss.list_metadata(&ListParams::default()).await?;
    assert_eq!(meta.types.kind, "PartialObjectMetadataList");
    assert_eq!(meta.items[0].labels().get("env").map(String::as_str), Some("prod"));
    let one = nss.get_metadata("prod").await?;
    assert_eq!(one.types.map(|t| t.kind), Some("PartialObjectMetadata".into()));

    // Discovery, for clients that use it.
    let version = client.apiserver_version().await?;
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "33"));
    let core = client.list_core_api_resources("v1").await?;
    assert!(core.resources.iter().any(|r| r.name == "pods" && r.namespaced));
    Ok(())
}

#[tokio::test]
async fn fakeapi_serves_endpointslices_by_their_service_label() -> anyhow::Result<()> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let api = FakeApi::start()?;
    let slice = |ns: &str, name: &str, labels: serde_json::Value| {
        serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": labels}, "addressType": "IPv4",
            "ports": [{"name": "https", "port": 8443}], "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}]})
    };
    api.apply(&slice("a", "api-x1", serde_json::json!({"kubernetes.io/service-name": "api"})))?;
    api.apply(&slice("b", "api-y2", serde_json::json!({"kubernetes.io/service-name": "api"})))?;
    api.apply(&slice("a", "loose", serde_json::json!({})))?;
    let slices: Api<EndpointSlice> = Api::all(api.client()?);
    let owned = slices.list(&ListParams::default().labels("kubernetes.io/service-name")).await?;
    assert_eq!(owned.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>(), ["api-x1", "api-y2"]);
    assert_eq!(owned.items[0].endpoints[0].addresses, ["10.0.0.1"]);
    assert_eq!(owned.items[0].ports.as_ref().and_then(|p| p[0].port), Some(8443));
    let groups = api.client()?.list_api_groups().await?;
    assert!(groups.groups.iter().any(|g| g.name == "discovery.k8s.io"), "in discovery");
    Ok(())
}

//! `metadata_watcher` and a custom resource through the real client.

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, CustomResource, ResourceExt, api::ListParams, core::PartialObjectMeta, runtime::watcher};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Reflected, applies, deletes};
use crate::fakeapi::{FakeApi, Verb};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "portcullis.dev", version = "v1alpha1", kind = "EgressPolicy", namespaced)]
pub struct EgressPolicySpec {
    pub allow: Vec<String>,
}

fn namespace(name: &str, team: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"team": team}}})
}

/// Labels of namespace `name` in a metadata-only reflector's store.
fn team(w: &Reflected<PartialObjectMeta<Namespace>>, name: &str) -> Option<String> {
    let found = w.store.state().into_iter().find(|m| m.name_any() == name);
    found.and_then(|m| m.labels().get("team").cloned())
}

/// Metadata-only watching, both ways kube 5 offers: the deprecated
/// `metadata_watcher(Api<K>)` and `watcher(Api<PartialObjectMeta<K>>)`.
#[tokio::test]
async fn fakeapi_metadata_watcher_sees_namespace_labels() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    api.apply(&namespace("alpha", "red"))?;
    let client = api.client()?;
    #[expect(deprecated, reason = "the agent may still use it; it must work against the fake too")]
    let old_style = kube::runtime::metadata_watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default());
    let new_style = watcher(Api::<PartialObjectMeta<Namespace>>::all(client), watcher::Config::default());
    let mut ws = [Reflected::spawn(old_style), Reflected::spawn(new_style)];
    for w in &mut ws {
        w.init_done().await;
        assert_eq!(team(w, "alpha").as_deref(), Some("red"));
    }
    api.wait_watchers("namespaces", 2).await?;

    api.apply(&namespace("alpha", "blue"))?;
    api.apply(&namespace("beta", "green"))?;
    for w in &mut ws {
        w.until(|e| applies(e, "beta")).await;
        assert_eq!(team(w, "alpha").as_deref(), Some("blue"));
        assert_eq!(team(w, "beta").as_deref(), Some("green"));
    }

    // Metadata-only on the wire: the Accept header kube sends, per verb.
    for r in api.requests() {
        let want = match r.verb {
            Verb::List => "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            Verb::Watch => "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
            _ => continue,
        };
        assert_eq!(r.accept.as_deref(), Some(want), "{r:?}");
    }
    assert_eq!(api.count(Verb::List, "namespaces"), 2);
    Ok(())
}

#[tokio::test]
async fn fakeapi_custom_resource_lists_and_watches() -> anyhow::Result<()> {
    let api = FakeApi::start()?;
    let mut dns = EgressPolicy::new("allow-dns", EgressPolicySpec { allow: vec!["10.0.0.10/32".into()] });
    dns.metadata.namespace = Some("team-a".into());
    api.apply(&dns)?;
    let policies: Api<EgressPolicy> = Api::namespaced(api.client()?, "team-a");

    let listed = policies.list(&ListParams::default()).await?;
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].spec, dns.spec);
    assert_eq!(listed.types.kind, "EgressPolicyList");
    // The typed Api addressed the group's namespaced collection.
    let path = api.requests().into_iter().find(|r| r.verb == Verb::List).map(|r| r.path);
    assert_eq!(path.as_deref(), Some("/apis/portcullis.dev/v1alpha1/namespaces/team-a/egresspolicies"));
    // On the wire, custom resource list items keep apiVersion/kind; built-in
    // ones do not (as from a real server: clients must not need them).
    let client = api.client()?;
    let raw = |path: &str| client.request_text(http::Request::get(path).body(Vec::new()).unwrap_or_default());
    let crs: serde_json::Value = serde_json::from_str(&raw("/apis/portcullis.dev/v1alpha1/egresspolicies").await?)?;
    assert_eq!(crs["items"][0]["kind"], "EgressPolicy");
    api.apply(&namespace("team-a", "red"))?;
    let nss: serde_json::Value = serde_json::from_str(&raw("/api/v1/namespaces").await?)?;
    assert_eq!((nss["kind"].as_str(), nss["items"][0].get("kind")), (Some("NamespaceList"), None));

    let mut w = Reflected::spawn(watcher(policies.clone(), watcher::Config::default()));
    w.init_done().await;
    api.wait_watchers("egresspolicies", 1).await?;
    let mut web = EgressPolicy::new("allow-web", EgressPolicySpec { allow: vec!["0.0.0.0/0".into()] });
    web.metadata.namespace = Some("team-a".into());
    api.apply(&web)?;
    // Another namespace's policy is not this watch's business.
    let mut elsewhere = web.clone();
    elsewhere.metadata.namespace = Some("team-b".into());
    api.apply(&elsewhere)?;
    w.until(|e| applies(e, "allow-web")).await;
    api.delete("EgressPolicy", Some("team-a"), "allow-dns");
    let evs = w.until(|e| deletes(e, "allow-dns")).await;
    assert_eq!(evs.len(), 1, "team-b's policy came through: {evs:?}");
    assert_eq!(w.names(), ["allow-web"]);

    // Written through the client too.
    let mut via_client = EgressPolicy::new("allow-ntp", EgressPolicySpec { allow: vec!["192.0.2.1/32".into()] });
    via_client.metadata.namespace = Some("team-a".into());
    let created = policies.create(&Default::default(), &via_client).await?;
    assert!(created.metadata.uid.is_some());
    w.until(|e| applies(e, "allow-ntp")).await;
    assert_eq!(api.list("egresspolicies").len(), 3);
    Ok(())
}

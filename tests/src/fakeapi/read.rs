//! GET: single objects and lists, with selectors, paging and metadata-only
//! rendering.

use serde_json::{Map, Value, json};

use super::{
    http::{Query, Shape, Target},
    resource::ResourceDef,
    state::Shared,
    status::ApiError,
    store::{Key, StoreError},
};

/// Render a stored object for the wire: reduced to metadata if asked, and,
/// as list items of built-in types, without `apiVersion`/`kind` (which is
/// what a real server sends; clients must not rely on them there).
pub(super) fn render(def: &ResourceDef, obj: &Value, shape: Shape, list_item: bool) -> Value {
    match shape {
        Shape::Meta | Shape::MetaList => json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
        Shape::Full if list_item && def.builtin => {
            let mut o = obj.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            o
        }
        Shape::Full => obj.clone(),
    }
}

/// `resourceVersion` from a query: absent, or a non-negative integer.
pub(super) fn parse_rv(v: Option<&str>) -> Result<Option<u64>, ApiError> {
    match v {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}"))),
    }
}

pub(super) fn get(shared: &Shared, t: &Target, shape: Shape) -> Result<Value, ApiError> {
    let def = shared.registry.get(t.res);
    let name = t.name.as_deref().unwrap_or("");
    if shape == Shape::MetaList {
        return Err(ApiError::new(406, "NotAcceptable", "PartialObjectMetadataList was requested for a single object"));
    }
    let key = Key { res: t.res, ns: t.ns.clone().unwrap_or_default(), name: name.to_owned() };
    let st = shared.lock();
    let obj = st.store.get(&key).ok_or_else(|| ApiError::not_found(def, name))?;
    Ok(render(def, obj, shape, false))
}

/// A continue token: the snapshot's resource version and how many matching
/// items earlier pages returned. Opaque to clients, as the real one is.
struct Continue {
    rv: u64,
    offset: usize,
}

impl Continue {
    const PREFIX: &'static str = "fakeapi-v1:";

    fn encode(&self) -> String {
        format!("{}{}:{}", Self::PREFIX, self.rv, self.offset)
    }

    fn decode(s: &str) -> Option<Self> {
        let (rv, offset) = s.strip_prefix(Self::PREFIX)?.split_once(':')?;
        Some(Self { rv: rv.parse().ok()?, offset: offset.parse().ok()? })
    }
}

const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. \
You can start a new list without the continue parameter, or use the continue token in this response to retrieve \
the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that \
were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

pub(super) fn list(shared: &Shared, t: &Target, q: &Query, shape: Shape) -> Result<Value, ApiError> {
    let def = shared.registry.get(t.res);
    if shape == Shape::Meta {
        return Err(ApiError::new(406, "NotAcceptable", "PartialObjectMetadata was requested for a list"));
    }
    let sel = q.selector()?;
    let limit: usize = match q.get("limit") {
        None | Some("") => 0,
        Some(s) => s.parse().map_err(|_| ApiError::bad_request(format!("invalid limit: {s}")))?,
    };
    let rv = parse_rv(q.get("resourceVersion"))?;
    let rv_match = q.get("resourceVersionMatch").filter(|m| !m.is_empty());
    let token = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) if rv.is_some() => {
            return Err(ApiError::bad_request(format!("specifying resource version is not allowed when using continue ({c})")));
        }
        Some(c) => Some(Continue::decode(c).ok_or_else(|| ApiError::bad_request("continue key is not valid"))?),
        None => None,
    };
    if rv_match.is_some() && rv.is_none() {
        return Err(ApiError::bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided"));
    }
    // Which snapshot: a continued list stays at its first page's version; an
    // Exact match reads the past; otherwise (unset, "0", NotOlderThan) now.
    let at = match (&token, rv_match) {
        (Some(c), _) => Some(c.rv),
        (None, Some("Exact")) => rv,
        (None, Some("NotOlderThan") | None) => None,
        (None, Some(m)) => return Err(ApiError::bad_request(format!("unknown resourceVersionMatch {m}"))),
    };

    let st = shared.lock();
    if let Some(at) = at.filter(|&at| at > st.store.rv()) {
        // A version from the future: the real server waits a few seconds for
        // its cache to catch up, then gives up with this.
        let msg = format!("Too large resource version: {at}, current: {}", st.store.rv());
        return Err(ApiError::new(504, "Timeout", msg));
    }
    let list_rv = at.unwrap_or(st.store.rv());
    let objects = st.store.snapshot(t.res, t.ns.as_deref(), at).map_err(|e| match e {
        StoreError::Expired { .. } if token.is_some() => ApiError::expired(CONTINUE_EXPIRED),
        e => ApiError::expired(e.to_string()),
    })?;
    drop(st);

    let matching: Vec<&Value> = objects.iter().filter(|o| sel.matches(o)).collect();
    let offset = token.as_ref().map_or(0, |c| c.offset).min(matching.len());
    let end = if limit == 0 { matching.len() } else { offset.saturating_add(limit).min(matching.len()) };
    let items: Vec<Value> = matching[offset..end].iter().map(|o| render(def, o, shape, true)).collect();

    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), Value::String(list_rv.to_string()));
    if end < matching.len() {
        meta.insert("continue".into(), Value::String(Continue { rv: list_rv, offset: end }.encode()));
        meta.insert("remainingItemCount".into(), json!(matching.len() - end));
    }
    let (api_version, kind) = match shape {
        Shape::Full => (def.api_version(), def.list_kind()),
        Shape::Meta | Shape::MetaList => ("meta.k8s.io/v1".to_owned(), "PartialObjectMetadataList".to_owned()),
    };
    Ok(json!({"apiVersion": api_version, "kind": kind, "metadata": meta, "items": items}))
}

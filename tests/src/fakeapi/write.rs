//! POST, PUT, PATCH and DELETE of single objects.

use std::hash::{BuildHasher, RandomState};

use http::StatusCode;
use serde_json::Value;

use super::{
    faults::Verb,
    http::{Query, Target},
    resource::ResourceDef,
    state::Shared,
    status::ApiError,
    store::{Key, StoreError},
};

pub(super) fn write(
    shared: &Shared,
    verb: Verb,
    t: &Target,
    q: &Query,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(StatusCode, Value), ApiError> {
    if q.get("dryRun").is_some() {
        return Err(ApiError::bad_request("dryRun is not supported by the fake API server"));
    }
    let def = shared.registry.get(t.res);
    let r = match verb {
        Verb::Create => create(shared, def, t, body).map(|v| (StatusCode::CREATED, v)),
        Verb::Update => update(shared, def, t, body).map(|v| (StatusCode::OK, v)),
        Verb::Patch => patch(shared, def, t, content_type, body).map(|v| (StatusCode::OK, v)),
        Verb::Delete => delete(shared, def, t, body).map(|v| (StatusCode::OK, v)),
        _ => Err(ApiError::method_not_allowed()),
    };
    if r.is_ok() {
        shared.notify();
    }
    r
}

/// Decode a body as an object of this resource: a JSON object whose
/// `apiVersion`/`kind`, if given, are this resource's (filled in if not).
fn parse_object(def: &ResourceDef, body: &[u8]) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body of the request was not valid JSON: {e}")))?;
    let Some(m) = obj.as_object_mut() else {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    };
    for (field, want) in [("apiVersion", def.api_version()), ("kind", def.kind.clone())] {
        match m.get(field).and_then(Value::as_str) {
            Some(got) if !got.is_empty() && got != want => {
                return Err(ApiError::bad_request(format!(
                    "the {field} in the data ({got}) does not match the expected {field} ({want})"
                )));
            }
            _ => drop(m.insert(field.to_owned(), Value::String(want))),
        }
    }
    Ok(obj)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str().filter(|s| !s.is_empty())
}

/// The namespace in the body, if any, must be the one in the path.
fn check_namespace(obj: &Value, t: &Target) -> Result<(), ApiError> {
    match (meta_str(obj, "namespace"), t.ns.as_deref()) {
        (Some(got), Some(want)) if got != want => {
            Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"))
        }
        _ => Ok(()),
    }
}

fn key(t: &Target, name: &str) -> Key {
    Key { res: t.res, ns: t.ns.clone().unwrap_or_default(), name: name.to_owned() }
}

fn store_error(def: &ResourceDef, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AlreadyExists => ApiError::already_exists(def, name),
        StoreError::NotFound => ApiError::not_found(def, name),
        StoreError::Conflict => ApiError::conflict(def, name),
        StoreError::Expired { .. } => ApiError::expired(e.to_string()),
    }
}

fn create(shared: &Shared, def: &ResourceDef, t: &Target, body: &[u8]) -> Result<Value, ApiError> {
    let mut obj = parse_object(def, body)?;
    check_namespace(&obj, t)?;
    if meta_str(&obj, "resourceVersion").is_some() {
        return Err(ApiError::new(500, "InternalError", "resourceVersion should not be set on objects to be created"));
    }
    let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
        (Some(n), _) => n.to_owned(),
        (None, Some(prefix)) => format!("{prefix}{}", random_suffix()),
        (None, None) => {
            return Err(ApiError::invalid(def, "", "metadata.name: Required value: name or generateName is required"));
        }
    };
    super::store::set_meta(&mut obj, "name", Value::String(name.clone()));
    let mut st = shared.lock();
    st.store.create(key(t, &name), obj, def.namespaced).map_err(|e| store_error(def, &name, e))
}

fn update(shared: &Shared, def: &ResourceDef, t: &Target, body: &[u8]) -> Result<Value, ApiError> {
    let obj = parse_object(def, body)?;
    check_namespace(&obj, t)?;
    let name = t.name.as_deref().unwrap_or("");
    if let Some(got) = meta_str(&obj, "name").filter(|&n| n != name) {
        return Err(ApiError::bad_request(format!("the name of the object ({got}) does not match the name on the URL ({name})")));
    }
    let mut st = shared.lock();
    st.store.update(key(t, name), obj, def.namespaced).map_err(|e| store_error(def, name, e))
}

/// Merge patches as RFC 7386; a strategic merge patch is read as a merge
/// patch (lists are replaced, not merged by key, and `$patch` directives are
/// not understood), which is exact for the maps and scalars clients patch.
fn patch(shared: &Shared, def: &ResourceDef, t: &Target, content_type: Option<&str>, body: &[u8]) -> Result<Value, ApiError> {
    let name = t.name.as_deref().unwrap_or("");
    let k = key(t, name);
    let mut st = shared.lock();
    let mut obj = st.store.get(&k).cloned().ok_or_else(|| ApiError::not_found(def, name))?;
    let mime = content_type.unwrap_or("").split(';').next().unwrap_or("").trim();
    let bad_body = |e: serde_json::Error| ApiError::bad_request(format!("the body of the request was not valid JSON: {e}"));
    match mime {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            let p: Value = serde_json::from_slice(body).map_err(bad_body)?;
            if !p.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(&mut obj, &p);
        }
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_slice(body).map_err(bad_body)?;
            json_patch::patch(&mut obj, &p).map_err(|e| ApiError::invalid(def, name, format!("the JSON patch failed: {e}")))?;
        }
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            return Err(ApiError::new(415, "UnsupportedMediaType", "server-side apply is not supported by the fake API server"));
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format: {other}"),
            ));
        }
    }
    if !obj.is_object() {
        return Err(ApiError::invalid(def, name, "the patched object is not a JSON object"));
    }
    if let Some(got) = meta_str(&obj, "name").filter(|&n| n != name) {
        return Err(ApiError::invalid(def, name, format!("metadata.name: Invalid value: \"{got}\": field is immutable")));
    }
    obj["apiVersion"] = Value::String(def.api_version());
    obj["kind"] = Value::String(def.kind.clone());
    st.store.update(k, obj, def.namespaced).map_err(|e| store_error(def, name, e))
}

/// Immediate deletion (as with a zero grace period); `DeleteOptions`
/// preconditions on uid and resourceVersion are honoured.
fn delete(shared: &Shared, def: &ResourceDef, t: &Target, body: &[u8]) -> Result<Value, ApiError> {
    let name = t.name.as_deref().unwrap_or("");
    let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let k = key(t, name);
    let mut st = shared.lock();
    let current = st.store.get(&k).ok_or_else(|| ApiError::not_found(def, name))?;
    for field in ["uid", "resourceVersion"] {
        let want = opts.pointer(&format!("/preconditions/{field}")).and_then(Value::as_str);
        let got = meta_str(current, field);
        if let Some(want) = want
            && Some(want) != got
        {
            let msg =
                format!("Precondition failed: {field} in precondition: {want}, {field} in object meta: {}", got.unwrap_or(""));
            return Err(ApiError { message: msg, ..ApiError::conflict(def, name) });
        }
    }
    st.store.remove(&k).ok_or_else(|| ApiError::not_found(def, name))
}

/// Five characters from the alphabet the API server uses for `generateName`.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = RandomState::new().hash_one(std::time::SystemTime::now());
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize];
            n /= ALPHABET.len() as u64;
            char::from(c)
        })
        .collect()
}

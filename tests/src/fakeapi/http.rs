//! Request plumbing: routing a path to a resource and verb, the fault gate,
//! request accounting, and JSON responses.

use std::{convert::Infallible, io, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use serde_json::Value;

use super::{
    discovery,
    faults::{RequestRecord, Verb, retry_after},
    read, select,
    state::Shared,
    status::ApiError,
    watch, write,
};

pub(super) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// The decoded query string.
#[derive(Debug, Default)]
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Self {
        Self(form_urlencoded::parse(q.as_bytes()).into_owned().collect())
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A boolean parameter the way the server reads one (`1`/`true`).
    pub(super) fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    }

    /// Label and field selectors; a bad one is a 400.
    pub(super) fn selector(&self) -> Result<select::Selector, ApiError> {
        let bad = |what: &str, e: select::SelectorError| ApiError::bad_request(format!("invalid {what} selector: {e}"));
        Ok(select::Selector {
            labels: select::LabelSelector::parse(self.get("labelSelector").unwrap_or("")).map_err(|e| bad("label", e))?,
            fields: select::FieldSelector::parse(self.get("fieldSelector").unwrap_or("")).map_err(|e| bad("field", e))?,
        })
    }
}

/// A resource addressed by a path: collection (no name) or one object.
#[derive(Clone, Debug)]
pub(super) struct Target {
    pub res: usize,
    pub ns: Option<String>,
    pub name: Option<String>,
}

/// How objects are rendered, from `Accept`: whole, or reduced to
/// `meta.k8s.io/v1` `PartialObjectMetadata` (what `metadata_watcher` asks for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    Full,
    Meta,
    MetaList,
}

impl Shape {
    fn from_accept(accept: Option<&str>) -> Result<Self, ApiError> {
        let Some(accept) = accept else { return Ok(Shape::Full) };
        // The client may offer several types; the first one we can serve wins.
        for offer in accept.split(',') {
            let params: Vec<&str> = offer.split(';').map(str::trim).collect();
            let mime = params.first().copied().unwrap_or("");
            if !matches!(mime, "application/json" | "*/*" | "application/*") {
                continue;
            }
            let param = |k: &str| params.iter().find_map(|p| p.strip_prefix(k)?.strip_prefix('='));
            match (param("as"), param("g"), param("v")) {
                (None, _, _) => return Ok(Shape::Full),
                (Some("PartialObjectMetadata"), Some("meta.k8s.io"), Some("v1")) => return Ok(Shape::Meta),
                (Some("PartialObjectMetadataList"), Some("meta.k8s.io"), Some("v1")) => return Ok(Shape::MetaList),
                _ => {}
            }
        }
        Err(ApiError::new(
            406,
            "NotAcceptable",
            format!("only the following media types are accepted: application/json ({accept})"),
        ))
    }
}

/// Map method and path to a verb and what it addresses.
fn route(shared: &Shared, method: &Method, path: &str, q: &Query) -> (Verb, Result<Target, ApiError>) {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] | ["api"] | ["apis"] | ["apis", _] => return (Verb::Discovery, Err(ApiError::no_route())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return (Verb::Other, Err(ApiError::no_route())),
    };
    let reg = &shared.registry;
    let lookup = |plural: &str| reg.by_path(group, version, plural);
    let target = match rest {
        [] if reg.serves_group_version(group, version) => return (Verb::Discovery, Err(ApiError::no_route())),
        [plural] => lookup(plural).map(|res| Target { res, ns: None, name: None }),
        [plural, name] => {
            lookup(plural).filter(|&r| !reg.get(r).namespaced).map(|res| Target { res, ns: None, name: Some((*name).to_owned()) })
        }
        ["namespaces", ns, plural, name @ ..] if name.len() <= 1 => lookup(plural)
            .filter(|&r| reg.get(r).namespaced)
            .map(|res| Target { res, ns: Some((*ns).to_owned()), name: name.first().map(|n| (*n).to_owned()) }),
        _ => None,
    };
    let Some(target) = target else { return (Verb::Other, Err(ApiError::no_route())) };
    let verb = match (method, target.name.is_some()) {
        (&Method::GET, _) if q.flag("watch") => Verb::Watch,
        (&Method::GET, false) => Verb::List,
        (&Method::GET, true) => Verb::Get,
        (&Method::POST, false) if target.ns.is_some() || !reg.get(target.res).namespaced => Verb::Create,
        (&Method::PUT, true) => Verb::Update,
        (&Method::PATCH, true) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        _ => return (Verb::Other, Err(ApiError::method_not_allowed())),
    };
    (verb, Ok(target))
}

/// The hyper service: every request of every connection comes here.
pub(super) async fn serve(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let q = Query::parse(&query);
    let header = |h: header::HeaderName| req.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (verb, target) = route(&shared, req.method(), &path, &q);
    let mut rec = RequestRecord {
        method: req.method().to_string(),
        path: path.clone(),
        query: query.clone(),
        verb,
        resource: target.as_ref().ok().map(|t| shared.registry.get(t.res).plural.clone()),
        namespace: target.as_ref().ok().and_then(|t| t.ns.clone()),
        name: target.as_ref().ok().and_then(|t| t.name.clone()),
        accept: header(header::ACCEPT),
        content_type: header(header::CONTENT_TYPE),
        status: 0,
    };

    // An unreachable server: the request hangs until resumed (or the client
    // gives up and drops the connection, which drops this future).
    shared.wait_for(|s| !s.faults.paused).await;
    let injected = shared.lock().faults.take_failure();
    let resp = match injected {
        Some(code) => {
            let mut resp = error(&ApiError::injected(code));
            if let Some(secs) = retry_after(code) {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
            }
            resp
        }
        None => dispatch(&shared, req, verb, target, &q, &rec).await.unwrap_or_else(|e| error(&e)),
    };
    rec.status = resp.status().as_u16();
    shared.update(|s| s.requests.push(rec));
    Ok(resp)
}

async fn dispatch(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    verb: Verb,
    target: Result<Target, ApiError>,
    q: &Query,
    rec: &RequestRecord,
) -> Result<Response<Body>, ApiError> {
    if verb == Verb::Discovery {
        return discovery::answer(shared, &rec.path).map(|v| json(StatusCode::OK, &v));
    }
    let target = target?;
    let shape = Shape::from_accept(rec.accept.as_deref())?;
    match verb {
        Verb::List => read::list(shared, &target, q, shape).map(|v| json(StatusCode::OK, &v)),
        Verb::Get => read::get(shared, &target, shape).map(|v| json(StatusCode::OK, &v)),
        Verb::Watch => watch::start(shared, &target, q, shape),
        Verb::Create | Verb::Update | Verb::Patch | Verb::Delete => {
            let body = req
                .into_body()
                .collect()
                .await
                .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
                .to_bytes();
            let (code, obj) = write::write(shared, verb, &target, q, rec.content_type.as_deref(), &body)?;
            Ok(json(code, &obj))
        }
        Verb::Discovery | Verb::Other => Err(ApiError::no_route()),
    }
}

pub(super) fn json(code: StatusCode, v: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default())).map_err(|never| match never {}).boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = code;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub(super) fn error(e: &ApiError) -> Response<Body> {
    json(StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &e.to_status())
}

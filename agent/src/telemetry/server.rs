//! The HTTP server of `/metrics`, `/healthz` and `/readyz` (hyper, HTTP/1.1).
//!
//! The listener sets `SO_REUSEPORT`, so during a takeover the new agent can
//! bind the same port while the old one still has it; the old agent stops
//! serving when it hands over (its metrics task is one of the consumers).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ACCEPT, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::watch,
};
use tracing::{debug, warn};

use super::metrics::{Format, Sources, registry, render};

/// Binds `addr` (with `SO_REUSEPORT`).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.bind(addr)?;
    sock.listen(64)
}

/// What a request is answered from.
struct Site {
    registry: Registry,
    src: Sources,
}

/// A connection may take this long in all (a slow or stuck client must not
/// hold a task forever).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `stop`.
pub async fn serve(listener: TcpListener, src: Sources, mut stop: watch::Receiver<bool>) {
    let site = Arc::new(Site { registry: registry(src.clone()), src });
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((conn, _)) => {
                    let site = site.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            let site = site.clone();
                            async move { Ok::<_, Infallible>(answer(&site, &req)) }
                        });
                        let conn = http1::Builder::new().keep_alive(false).serve_connection(TokioIo::new(conn), svc);
                        match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                            Ok(Err(e)) => debug!(error = %e, "metrics connection failed"),
                            Err(_) => debug!("metrics connection timed out"),
                            Ok(Ok(())) => {}
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "metrics listener failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

fn answer(site: &Site, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
    }
    // Attached, and (Kubernetes) every watch has listed everything.
    let ready = site.src.k8s.as_ref().is_none_or(|k| k.ready());
    match req.uri().path() {
        "/metrics" => {
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            match render(&site.registry, format) {
                Ok(body) => reply(StatusCode::OK, format.content_type(), body),
                Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, "encoding failed\n".into()),
            }
        }
        // Serving at all: the agent's threads are alive.
        "/healthz" => reply(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" if ready => reply(StatusCode::OK, PLAIN, "ready\n".into()),
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "starting\n".into()),
        _ => reply(StatusCode::NOT_FOUND, PLAIN, "/metrics, /healthz and /readyz here\n".into()),
    }
}

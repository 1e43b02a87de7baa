//! A small client of ClickHouse's HTTP interface (hyper's HTTP/1.1 client
//! connection, already in the tree for the metrics server and kube): one
//! connection per request (a batch every few seconds needs no pool), the
//! user and password in ClickHouse's own `X-ClickHouse-User` and
//! `X-ClickHouse-Key` headers (never in the URL, which ends up in logs),
//! every statement in the `query` parameter, percent-encoded. Inserts are
//! POSTs with the rows as the body; reads are GETs, which ClickHouse runs
//! read-only whatever the statement says. Plain HTTP only: ClickHouse's
//! HTTPS port needs a TLS stack this client does not carry (docs:
//! deploy/README.md).

use std::{fmt, time::Duration};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, Request, StatusCode,
    body::Bytes,
    header::{HOST, HeaderValue},
};
use hyper_util::rt::TokioIo;
use thiserror::Error;

/// How long connecting, sending and reading the answer may take in all.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer read (a `portcullis blocked --clickhouse` result).
const MAX_ANSWER: usize = 256 << 20;
/// How much of an error answer is kept for the message.
const MAX_ERROR_TEXT: usize = 400;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("connecting to {0}: {1}")]
    Connect(String, #[source] std::io::Error),
    #[error("no answer from {0} within {TIMEOUT:?}")]
    Timeout(String),
    #[error("HTTP exchange with {0} failed: {1}")]
    Http(String, #[source] hyper::Error),
    #[error("reading the answer of {0}: {1}")]
    Body(String, String),
    #[error("{server} answered {status}: {text}")]
    Status { server: String, status: StatusCode, text: String },
}

/// Where ClickHouse's HTTP interface is: `http://HOST[:PORT]` (default port
/// 8123), nothing else.
#[derive(Clone, PartialEq, Eq)]
pub struct Server {
    host: String,
    port: u16,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}

impl Server {
    fn authority(&self) -> String {
        self.to_string().trim_start_matches("http://").to_owned()
    }
}

/// `http://HOST[:PORT][/]`: a clap value parser.
pub fn parse_url(s: &str) -> Result<Server, String> {
    let bad = |why: &str| format!("{s:?}: {why} (want http://HOST[:PORT], e.g. http://clickhouse.monitoring:8123)");
    let rest = match s.strip_prefix("http://") {
        Some(r) => r,
        None if s.starts_with("https://") => {
            return Err(bad("HTTPS is not supported; use ClickHouse's HTTP port inside the cluster or a local TLS proxy"));
        }
        None => return Err(bad("not an http:// URL")),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(bad("no user or password in the URL: use --clickhouse-user and PORTCULLIS_CLICKHOUSE_PASSWORD(_FILE)"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(bad("no path or query: the tables are named by the --clickhouse-* flags"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| bad("not an IPv6 address in [ ]"))?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (rest.to_owned(), None),
        }
    };
    let host_ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !host_ok {
        return Err(bad("not a host name or address"));
    }
    let port = match port {
        None => 8123,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| bad("not a port"))?,
    };
    Ok(Server { host, port })
}

/// Percent-encodes a query parameter's value (RFC 3986 unreserved pass).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A ClickHouse server and who to be there.
#[derive(Clone)]
pub struct Client {
    server: Server,
    user: HeaderValue,
    key: Option<HeaderValue>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("server", &self.server).field("user", &self.user).finish_non_exhaustive()
    }
}

impl Client {
    /// A client; a user or password that cannot be an HTTP header value
    /// (control characters) is refused here, not at the first batch.
    pub fn new(server: Server, user: &str, password: Option<&str>) -> Result<Self, String> {
        let header = |what: &str, v: &str| {
            let mut h =
                HeaderValue::from_str(v).map_err(|_| format!("the ClickHouse {what} has characters HTTP cannot carry"))?;
            h.set_sensitive(what == "password");
            Ok::<_, String>(h)
        };
        let key = password.map(|p| header("password", p)).transpose()?;
        Ok(Self { user: header("user", user)?, key, server })
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Runs `INSERT ... FORMAT JSONEachRow` (`statement`) with `rows` (one
    /// JSON object per line) as its data. Columns the table lacks are
    /// skipped, so a newer agent can write to an older table.
    pub async fn insert(&self, statement: &str, rows: Vec<u8>) -> Result<(), HttpError> {
        let target = format!("/?input_format_skip_unknown_fields=1&query={}", encode(statement));
        self.exchange(Method::POST, &target, Bytes::from(rows)).await.map(drop)
    }

    /// Runs a read-only statement (a GET: ClickHouse refuses anything that
    /// writes) and returns its answer. 64-bit integers come as JSON numbers.
    pub async fn select(&self, statement: &str) -> Result<String, HttpError> {
        let target = format!("/?output_format_json_quote_64bit_integers=0&query={}", encode(statement));
        let body = self.exchange(Method::GET, &target, Bytes::new()).await?;
        String::from_utf8(body.to_vec()).map_err(|e| HttpError::Body(self.server.to_string(), e.to_string()))
    }

    /// Runs any statement as a POST (schema set-up in tests and tools).
    pub async fn execute(&self, statement: &str) -> Result<String, HttpError> {
        let body = self.exchange(Method::POST, "/", Bytes::from(statement.to_owned())).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    async fn exchange(&self, method: Method, target: &str, body: Bytes) -> Result<Bytes, HttpError> {
        let server = self.server.to_string();
        match tokio::time::timeout(TIMEOUT, self.exchange_once(method, target, body)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout(server)),
        }
    }

    async fn exchange_once(&self, method: Method, target: &str, body: Bytes) -> Result<Bytes, HttpError> {
        let server = self.server.to_string();
        let stream = tokio::net::TcpStream::connect((self.server.host.as_str(), self.server.port))
            .await
            .map_err(|e| HttpError::Connect(server.clone(), e))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| HttpError::Http(server.clone(), e))?;
        // The connection is driven by its own task; it ends with the
        // exchange (no keep-alive: the sender is dropped below).
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder().method(method).uri(target).header(HOST, self.server.authority());
        req = req.header("X-ClickHouse-User", self.user.clone());
        if let Some(k) = &self.key {
            req = req.header("X-ClickHouse-Key", k.clone());
        }
        let req = req.body(Full::new(body)).map_err(|e| HttpError::Body(server.clone(), e.to_string()))?;
        let result = async {
            let resp = sender.send_request(req).await.map_err(|e| HttpError::Http(server.clone(), e))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| HttpError::Body(server.clone(), e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                let text: String = String::from_utf8_lossy(&body).trim().chars().take(MAX_ERROR_TEXT).collect();
                return Err(HttpError::Status { server: server.clone(), status, text });
            }
            Ok(body)
        }
        .await;
        drop(sender);
        driver.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let s = parse_url("http://clickhouse.monitoring:8123").unwrap();
        assert_eq!(s.to_string(), "http://clickhouse.monitoring:8123");
        assert_eq!(parse_url("http://127.0.0.1/").unwrap().to_string(), "http://127.0.0.1:8123");
        assert_eq!(parse_url("http://[::1]:9000").unwrap().to_string(), "http://[::1]:9000");
        assert_eq!(parse_url("http://[::1]:9000").unwrap().authority(), "[::1]:9000");
        for bad in [
            "https://x:8443",
            "ftp://x",
            "x:8123",
            "http://",
            "http://u:p@x:8123",
            "http://x:8123/db",
            "http://x:8123?query=DROP",
            "http://x:0",
            "http://x:99999",
            "http://[nope]:1",
            "http://a b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert!(parse_url("https://x").unwrap_err().contains("HTTPS is not supported"));
    }

    #[test]
    fn query_parameters_are_percent_encoded() {
        assert_eq!(encode("INSERT INTO a.b FORMAT JSONEachRow"), "INSERT%20INTO%20a.b%20FORMAT%20JSONEachRow");
        assert_eq!(encode("x='a&b=c#d'"), "x%3D%27a%26b%3Dc%23d%27");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn headers_that_http_cannot_carry_are_refused() {
        let s = parse_url("http://x").unwrap();
        assert!(Client::new(s.clone(), "default", Some("pa\nss")).is_err());
        assert!(Client::new(s.clone(), "us\u{0}er", None).is_err());
        let c = Client::new(s, "portcullis", Some("s3cr'et\"pw")).unwrap();
        assert!(!format!("{c:?}").contains("s3cr"), "the password stays out of debug output");
    }
}

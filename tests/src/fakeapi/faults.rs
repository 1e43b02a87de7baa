//! Fault injection and request accounting: the knobs a test turns to make the
//! API server misbehave, and the log it reads to see what the client did.

use std::fmt;

/// What a request did, in the API server's audit vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    List,
    Watch,
    Get,
    Create,
    Update,
    Patch,
    Delete,
    /// `/api`, `/apis`, `/version` and the group-version resource lists.
    Discovery,
    /// Anything not routed to a resource (answered 404 or 405).
    Other,
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Get => "get",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::Discovery => "discovery",
            Verb::Other => "other",
        };
        f.write_str(s)
    }
}

/// One request as the server saw it (recorded when its answer is decided;
/// for a watch that is when the stream starts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string, `""` if none.
    pub query: String,
    pub verb: Verb,
    /// Plural of the resource addressed, if any.
    pub resource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub accept: Option<String>,
    pub content_type: Option<String>,
    /// HTTP status answered.
    pub status: u16,
}

impl RequestRecord {
    /// The value of query parameter `key`, decoded.
    pub fn param(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
    }
}

/// The fault knobs. Generations let open watch streams notice a one-shot
/// fault that happened after they started.
#[derive(Debug, Default)]
pub(super) struct Faults {
    /// Answer this many coming requests with this status.
    fail: Option<(u32, u16)>,
    pub paused: bool,
    /// Bumped by `drop_watches`: streams started under an older one abort.
    pub drop_gen: u64,
    /// Bumped by `compact`: streams started under an older one get 410.
    pub compact_gen: u64,
}

impl Faults {
    pub(super) fn fail_next(&mut self, n: u32, code: u16) {
        self.fail = (n > 0).then_some((n, code));
    }

    /// The status to fail this request with, if a failure is pending.
    pub(super) fn take_failure(&mut self) -> Option<u16> {
        let (n, code) = self.fail?;
        self.fail = (n > 1).then_some((n - 1, code));
        Some(code)
    }
}

/// `Retry-After` as the real server sends it: API priority and fairness
/// answers 429 with one second; a 503 from an overloaded server likewise.
pub(super) fn retry_after(code: u16) -> Option<&'static str> {
    matches!(code, 429 | 503).then_some("1")
}

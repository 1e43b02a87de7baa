//! `meta/v1` `Status` failures, the body of every non-2xx answer.

use serde_json::{Value, json};

use super::resource::ResourceDef;

/// A failed request, rendered as the API server renders it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub(super) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// The generic 404 for a path nothing is served at.
    pub(super) fn no_route() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub(super) fn not_found(def: &ResourceDef, name: &str) -> Self {
        Self::about(404, "NotFound", def, name, format!("{} \"{name}\" not found", qualified(def)))
    }

    pub(super) fn already_exists(def: &ResourceDef, name: &str) -> Self {
        Self::about(409, "AlreadyExists", def, name, format!("{} \"{name}\" already exists", qualified(def)))
    }

    pub(super) fn conflict(def: &ResourceDef, name: &str) -> Self {
        let msg = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            qualified(def)
        );
        Self::about(409, "Conflict", def, name, msg)
    }

    pub(super) fn invalid(def: &ResourceDef, name: &str, message: impl Into<String>) -> Self {
        Self::about(422, "Invalid", def, name, message.into())
    }

    /// 410 Gone: the resource version asked for was compacted away.
    pub(super) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub(super) fn method_not_allowed() -> Self {
        Self::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    }

    /// What `fail_next` answers: the reason a real server gives for the code.
    pub(super) fn injected(code: u16) -> Self {
        let reason = match code {
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            401 => "Unauthorized",
            403 => "Forbidden",
            _ => "",
        };
        Self::new(code, reason, format!("injected failure ({code})"))
    }

    fn about(code: u16, reason: &'static str, def: &ResourceDef, name: &str, message: String) -> Self {
        let details = json!({"name": name, "group": def.group, "kind": def.plural});
        Self { code, reason, message, details: Some(details) }
    }

    pub(super) fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// `pods` or `egresspolicies.portcullis.dev`, as messages name a resource.
fn qualified(def: &ResourceDef) -> String {
    if def.group.is_empty() { def.plural.clone() } else { format!("{}.{}", def.plural, def.group) }
}

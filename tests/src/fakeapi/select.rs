//! Label and field selectors, parsed from query strings as the API server does.
//!
//! Labels: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`,
//! `k>n`, `k<n`, comma-separated (a comma inside parentheses belongs to the
//! set). Fields: `path=v`, `path==v`, `path!=v`, comma-separated, where `path`
//! is any dotted path into the object; a missing field reads as `""`. The real
//! server only accepts a few fields per type; this one accepts any.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0}")]
pub(super) struct SelectorError(String);

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelOp {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct LabelSelector(Vec<(String, LabelOp)>);

impl LabelSelector {
    pub(super) fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_label_requirement(part)?);
        }
        Ok(Self(reqs))
    }

    /// Does an object (its `metadata.labels`) match?
    pub(super) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|(k, op)| match op {
            LabelOp::Eq(v) => get(k) == Some(v.as_str()),
            LabelOp::Ne(v) => get(k) != Some(v.as_str()),
            LabelOp::In(set) => get(k).is_some_and(|x| set.iter().any(|s| s == x)),
            LabelOp::NotIn(set) => get(k).is_none_or(|x| !set.iter().any(|s| s == x)),
            LabelOp::Exists => get(k).is_some(),
            LabelOp::DoesNotExist => get(k).is_none(),
            LabelOp::Gt(n) => get(k).and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x > *n),
            LabelOp::Lt(n) => get(k).and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x < *n),
        })
    }
}

/// Split on commas that are not inside `( … )`.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0_i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_label_requirement(part: &str) -> Result<(String, LabelOp), SelectorError> {
    let err = || SelectorError(part.to_owned());
    if let Some(key) = part.strip_prefix('!') {
        return Ok((label_key(key.trim()).ok_or_else(err)?, LabelOp::DoesNotExist));
    }
    // Set-based: `key in (a, b)` / `key notin (a, b)`.
    for (word, set_op) in [(" notin ", false), (" in ", true)] {
        if let Some((key, rest)) = part.split_once(word) {
            let rest = rest.trim();
            let inner = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(err)?;
            let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
            if values.iter().any(|v| !label_value_ok(v)) {
                return Err(err());
            }
            let key = label_key(key.trim()).ok_or_else(err)?;
            return Ok((key, if set_op { LabelOp::In(values) } else { LabelOp::NotIn(values) }));
        }
    }
    // Longest operators first so `==` is not read as `=` followed by `=v`.
    for op in ["==", "!=", "=", ">", "<"] {
        if let Some((key, value)) = part.split_once(op) {
            let key = label_key(key.trim()).ok_or_else(err)?;
            let value = value.trim();
            let op = match op {
                "!=" => LabelOp::Ne(value.to_owned()),
                ">" => LabelOp::Gt(value.parse().map_err(|_| err())?),
                "<" => LabelOp::Lt(value.parse().map_err(|_| err())?),
                _ => LabelOp::Eq(value.to_owned()),
            };
            if let LabelOp::Eq(v) | LabelOp::Ne(v) = &op
                && !label_value_ok(v)
            {
                return Err(err());
            }
            return Ok((key, op));
        }
    }
    Ok((label_key(part).ok_or_else(err)?, LabelOp::Exists))
}

/// A qualified name with an optional DNS prefix: `[prefix/]name`.
fn label_key(k: &str) -> Option<String> {
    let name = k.rsplit_once('/').map_or(k, |(prefix, name)| if prefix.is_empty() { "" } else { name });
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    ok.then(|| k.to_owned())
}

fn label_value_ok(v: &str) -> bool {
    v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct FieldSelector(Vec<(Vec<String>, bool, String)>);

impl FieldSelector {
    pub(super) fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in split_unescaped(s, ',') {
            if part.trim().is_empty() {
                continue;
            }
            let err = || SelectorError(part.clone());
            let (path, eq, value) = if let Some((p, v)) = part.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = part.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = part.split_once('=') {
                (p, true, v)
            } else {
                return Err(err());
            };
            let path: Vec<String> = path.trim().split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(err());
            }
            reqs.push((path, eq, unescape(value.trim())));
        }
        Ok(Self(reqs))
    }

    /// Add the requirement `path == value`.
    pub(super) fn push_eq(&mut self, path: &str, value: &str) {
        self.0.push((path.split('.').map(str::to_owned).collect(), true, value.to_owned()));
    }

    pub(super) fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| {
            let got = path.iter().try_fold(obj, |v, seg| v.get(seg)).map_or_else(String::new, scalar);
            (got == *want) == *eq
        })
    }
}

/// A field's value as the server's field-label conversion renders it.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Split on `sep` unless preceded by a backslash (`\,` is a literal comma).
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let (mut out, mut cur, mut escaped) = (Vec::new(), String::new(), false);
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn unescape(s: &str) -> String {
    let (mut out, mut escaped) = (String::new(), false);
    for c in s.chars() {
        if !escaped && c == '\\' {
            escaped = true;
        } else {
            out.push(c);
            escaped = false;
        }
    }
    out
}

/// Label and field selectors together, as a list or watch request has them.
#[derive(Clone, Debug, Default)]
pub(super) struct Selector {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selector {
    pub(super) fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fakeapi_label_selectors() {
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "fe", "n": "5"}}});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m(""));
        assert!(m("app=web") && m("app==web") && m("app=web,tier=fe"));
        assert!(!m("app=db") && !m("app!=web") && m("x!=y"));
        assert!(m("app in (db, web)") && !m("app notin (db,web)") && m("x notin (a)"));
        assert!(m("app in (web),tier") && m("!missing") && !m("!app") && m("tier"));
        assert!(m("n>4") && !m("n<5"));
        for bad in ["app in web", "a=b=c", "=x", "k in (a", "bad key=1", "n>x"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fakeapi_field_selectors() {
        let o = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "node-a", "n": 3}});
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&o);
        assert!(m("spec.nodeName=node-a") && m("spec.nodeName==node-a") && !m("spec.nodeName!=node-a"));
        assert!(m("metadata.name=p,metadata.namespace=ns") && !m("metadata.name=p,metadata.namespace=x"));
        assert!(m("status.phase=") && m("spec.n=3"));
        assert!(FieldSelector::parse("spec.nodeName").is_err());
        assert!(FieldSelector::parse("a..b=c").is_err());
        let esc = json!({"metadata": {"name": "a,b"}});
        assert!(FieldSelector::parse(r"metadata.name=a\,b").unwrap().matches(&esc));
    }
}

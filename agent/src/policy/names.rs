//! DNS name selectors: `matchName` (exact) and `matchPattern` (wildcards).
//!
//! Policy names are validated strictly when the policy is loaded, so a typo is
//! an error instead of a rule that silently never matches. Names from the wire
//! are never rejected, they just fail to match: the DNS path must not error on
//! whatever a resolver sends back.

use std::fmt;

use thiserror::Error;

/// Longest name in presentation form without the trailing dot (RFC 1035 limit
/// of 255 wire octets).
const MAX_NAME_LEN: usize = 253;
/// Longest single label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// Why a `matchName` / `matchPattern` / `allowNames` value was rejected. The
/// caller adds the field path (`egress[0].toFQDNs[1].matchPattern`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("{0:?}: name is empty")]
    Empty(String),
    #[error("{name:?}: name is {len} characters long, at most {MAX_NAME_LEN} allowed")]
    TooLong { name: String, len: usize },
    #[error("{name:?}: label {label:?} is {len} characters long, at most {MAX_LABEL_LEN} allowed")]
    LabelTooLong { name: String, label: String, len: usize },
    #[error("{0:?}: empty label (two dots in a row, or a leading dot)")]
    EmptyLabel(String),
    #[error("{name:?}: invalid character {ch:?} (only letters, digits, '-', '.' and a leading '*' label are allowed)")]
    InvalidChar { name: String, ch: char },
    #[error("{0:?}: '*' is not allowed in matchName (use matchPattern)")]
    WildcardInName(String),
    #[error("{0:?}: '*' or '**' may only be the whole leftmost label, as in \"*.example.com\" or \"**.example.com\"")]
    MisplacedWildcard(String),
}

/// A compiled name selector. Matching is ASCII case-insensitive and ignores
/// one trailing dot, because that is how DNS compares names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NameSelector {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Kind {
    /// `matchName`, or a pattern without wildcard. Lowercase, no trailing dot.
    Exact(String),
    /// `*`: every name.
    Any,
    /// `*.suffix`: exactly one label in front of `suffix`.
    OneLabel(String),
    /// `**.suffix`: one or more labels in front of `suffix`.
    OneOrMoreLabels(String),
}

impl NameSelector {
    /// A `matchName` value: one exact name, no wildcards.
    pub fn exact(name: &str) -> Result<Self, NameError> {
        let n = normalize_policy_name(name)?;
        if n.contains('*') {
            return Err(NameError::WildcardInName(name.to_owned()));
        }
        validate_labels(name, &n)?;
        Ok(Self { kind: Kind::Exact(n) })
    }

    /// A `matchPattern` value: `*`, `*.suffix`, `**.suffix`, or a plain name
    /// (which then matches exactly).
    pub fn pattern(pattern: &str) -> Result<Self, NameError> {
        let p = normalize_policy_name(pattern)?;
        if p == "*" {
            return Ok(Self { kind: Kind::Any });
        }
        let (wild, rest) = match p.split_once('.') {
            Some(("*", rest)) => (Some(false), rest),
            Some(("**", rest)) => (Some(true), rest),
            _ => (None, p.as_str()),
        };
        // Any other '*' (`a*.x`, `x.*.com`, `***.x`, a bare `**`) is refused:
        // partial-label globs are ambiguous and easy to get wrong.
        if rest.contains('*') || (wild.is_none() && p.contains('*')) {
            return Err(NameError::MisplacedWildcard(pattern.to_owned()));
        }
        // Validates the suffix and the overall length including the wildcard.
        validate_labels(pattern, &p.replace('*', "a"))?;
        let rest = rest.to_owned();
        let kind = match wild {
            None => Kind::Exact(rest),
            Some(false) => Kind::OneLabel(rest),
            Some(true) => Kind::OneOrMoreLabels(rest),
        };
        Ok(Self { kind })
    }

    /// Whether a DNS name as seen on the wire (any case, with or without one
    /// trailing dot) is selected. Never allocates: called per DNS answer.
    pub fn matches(&self, name: &str) -> bool {
        let name = strip_one_dot(name).as_bytes();
        match &self.kind {
            Kind::Any => true,
            Kind::Exact(want) => name.eq_ignore_ascii_case(want.as_bytes()),
            Kind::OneLabel(suffix) => match prefix_before(name, suffix.as_bytes()) {
                Some(prefix) => !prefix.contains(&b'.') && labels_valid(prefix, name.len()),
                None => false,
            },
            Kind::OneOrMoreLabels(suffix) => match prefix_before(name, suffix.as_bytes()) {
                Some(prefix) => labels_valid(prefix, name.len()),
                None => false,
            },
        }
    }
}

impl fmt::Display for NameSelector {
    /// The normalized policy form, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Exact(n) => f.write_str(n),
            Kind::Any => f.write_str("*"),
            Kind::OneLabel(s) => write!(f, "*.{s}"),
            Kind::OneOrMoreLabels(s) => write!(f, "**.{s}"),
        }
    }
}

fn strip_one_dot(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// Lowercases, drops one trailing dot, and rejects empty names.
fn normalize_policy_name(raw: &str) -> Result<String, NameError> {
    let n = strip_one_dot(raw).to_ascii_lowercase();
    if n.is_empty() {
        return Err(NameError::Empty(raw.to_owned()));
    }
    Ok(n)
}

/// Checks length, labels and characters of a normalized policy name.
/// `raw` is only used in error messages.
fn validate_labels(raw: &str, n: &str) -> Result<(), NameError> {
    if let Some(ch) = n.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.')) {
        // Report the character as the user wrote it (case aside).
        return Err(NameError::InvalidChar { name: raw.to_owned(), ch });
    }
    if n.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { name: raw.to_owned(), len: n.len() });
    }
    for label in n.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel(raw.to_owned()));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong { name: raw.to_owned(), label: label.to_owned(), len: label.len() });
        }
    }
    Ok(())
}

/// If `name` is `<prefix>.<suffix>` (suffix compared case-insensitively) with
/// a non-empty prefix, returns the prefix.
fn prefix_before<'a>(name: &'a [u8], suffix: &[u8]) -> Option<&'a [u8]> {
    // Need at least one byte of prefix plus the separating dot.
    let cut = name.len().checked_sub(suffix.len() + 1)?;
    if cut == 0 || name.get(cut) != Some(&b'.') || !name[cut + 1..].eq_ignore_ascii_case(suffix) {
        return None;
    }
    Some(&name[..cut])
}

/// Whether the wildcard-covered part of a wire name is made of valid labels
/// (the suffix part was already compared against a validated policy suffix).
fn labels_valid(prefix: &[u8], full_len: usize) -> bool {
    full_len <= MAX_NAME_LEN
        && prefix.split(|b| *b == b'.').all(|label| {
            !label.is_empty() && label.len() <= MAX_LABEL_LEN && label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(p: &str) -> NameSelector {
        NameSelector::pattern(p).unwrap()
    }

    #[test]
    fn exact_names() {
        let s = NameSelector::exact("API.OpenAI.com.").unwrap();
        assert_eq!(s.to_string(), "api.openai.com");
        for yes in ["api.openai.com", "API.OPENAI.COM", "api.openai.com."] {
            assert!(s.matches(yes), "{yes}");
        }
        for no in ["openai.com", "x.api.openai.com", "api.openai.com..", "api.openai.co", ""] {
            assert!(!s.matches(no), "{no}");
        }
    }

    #[test]
    fn pattern_table() {
        let table: &[(&str, &str, bool)] = &[
            ("*", "anything.example", true),
            ("*", "x", true),
            ("*", "we!rd_name.", true),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "A.Example.COM.", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", ".example.com", false),
            ("*.example.com", "aexample.com", false),
            ("*.example.com", "a.example.com.evil", false),
            ("*.example.com", "a_b.example.com", false),
            ("**.example.com", "a.example.com", true),
            ("**.example.com", "a.b.c.example.com", true),
            ("**.example.com", "example.com", false),
            ("**.example.com", "a..example.com", false),
            ("**.example.com", "xexample.com", false),
            ("plain.example.com", "plain.example.com", true),
            ("plain.example.com", "a.plain.example.com", false),
        ];
        for (p, name, want) in table {
            assert_eq!(pat(p).matches(name), *want, "{p} vs {name}");
        }
    }

    #[test]
    fn non_ascii_wire_names_do_not_panic_or_match() {
        let s = pat("*.example.com");
        assert!(!s.matches("é.example.com"));
        assert!(!s.matches("ééééééééééééé"));
        assert!(!pat("**.com").matches("a.b\u{301}.com"));
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in ["a*.x.com", "x.*.com", "***.x", "*x.com", "**", "*.*.com", "x.com.*"] {
            let err = NameSelector::pattern(bad).unwrap_err();
            assert!(matches!(err, NameError::MisplacedWildcard(_)), "{bad}: {err}");
        }
        assert!(matches!(NameSelector::pattern(""), Err(NameError::Empty(_))));
        assert!(matches!(NameSelector::pattern("."), Err(NameError::Empty(_))));
        assert!(matches!(NameSelector::pattern("a..b"), Err(NameError::EmptyLabel(_))));
        assert!(matches!(NameSelector::pattern("*..com"), Err(NameError::EmptyLabel(_))));
        // One trailing dot is dropped, so "*." is "*".
        assert_eq!(pat("*."), pat("*"));
        assert!(matches!(NameSelector::pattern("a_b.com"), Err(NameError::InvalidChar { ch: '_', .. })));
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(matches!(NameSelector::pattern(&long_label), Err(NameError::LabelTooLong { len: 64, .. })));
        let long_name = vec!["a".repeat(63); 4].join("."); // 255 chars
        assert!(matches!(NameSelector::exact(&long_name), Err(NameError::TooLong { len: 255, .. })));
        let ok_name = format!("{}.{}", "a".repeat(63), vec!["b".repeat(61); 3].join("."));
        assert_eq!(ok_name.len(), 249);
        assert!(NameSelector::exact(&ok_name).is_ok());
    }

    #[test]
    fn exact_rejects_wildcards() {
        assert!(matches!(NameSelector::exact("*.x.com"), Err(NameError::WildcardInName(_))));
        let msg = NameSelector::pattern("a*.b").unwrap_err().to_string();
        assert!(msg.contains("\"a*.b\"") && msg.contains("leftmost"), "{msg}");
    }
}

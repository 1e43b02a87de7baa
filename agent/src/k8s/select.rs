//! Label selectors (`metav1.LabelSelector`), as the API server evaluates
//! them: `matchLabels` and every `matchExpressions` requirement must hold;
//! `{}` selects everything. A selector the API server would refuse (an
//! unknown operator, `In` without values) is an error here, so the policy
//! holding it is reported and never selects anything by accident.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SelectorError {
    #[error("matchExpressions[{index}]: unknown operator {operator:?} (expected In, NotIn, Exists or DoesNotExist)")]
    Operator { index: usize, operator: String },
    #[error("matchExpressions[{index}]: {operator} needs at least one value")]
    NoValues { index: usize, operator: String },
    #[error("matchExpressions[{index}]: {operator} takes no values")]
    Values { index: usize, operator: String },
}

/// A checked selector.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    labels: BTreeMap<String, String>,
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    pub fn new(sel: &LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (index, e) in sel.match_expressions.iter().flatten().enumerate() {
            let values = e.values.clone().unwrap_or_default();
            if !matches!(e.operator.as_str(), "In" | "NotIn" | "Exists" | "DoesNotExist") {
                return Err(SelectorError::Operator { index, operator: e.operator.clone() });
            }
            let needs_values = matches!(e.operator.as_str(), "In" | "NotIn");
            if needs_values && values.is_empty() {
                return Err(SelectorError::NoValues { index, operator: e.operator.clone() });
            }
            if !needs_values && !values.is_empty() {
                return Err(SelectorError::Values { index, operator: e.operator.clone() });
            }
            requirements.push(match e.operator.as_str() {
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" => Requirement::Exists(e.key.clone()),
                _ => Requirement::DoesNotExist(e.key.clone()),
            });
        }
        Ok(Self { labels: sel.match_labels.clone().unwrap_or_default(), requirements })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.requirements.iter().all(|r| match r {
                Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    #[test]
    fn the_empty_selector_selects_everything() {
        let s = Selector::new(&LabelSelector::default()).unwrap();
        assert!(s.matches(&labels(&[])) && s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn labels_and_every_expression_must_hold() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "agent")])),
            match_expressions: Some(vec![
                req("tier", "In", &["gold", "silver"]),
                req("quarantine", "DoesNotExist", &[]),
                req("team", "NotIn", &["red"]),
                req("workspace", "Exists", &[]),
            ]),
        };
        let s = Selector::new(&sel).unwrap();
        let base = [("app", "agent"), ("tier", "gold"), ("workspace", "ws-acme-corp")];
        assert!(s.matches(&labels(&base)));
        assert!(s.matches(&labels(&[base[0], base[1], base[2], ("team", "blue")])), "NotIn: another value");
        assert!(!s.matches(&labels(&[("app", "other"), base[1], base[2]])), "matchLabels");
        assert!(!s.matches(&labels(&[base[0], ("tier", "bronze"), base[2]])), "In");
        assert!(!s.matches(&labels(&[base[0], base[1]])), "Exists");
        assert!(!s.matches(&labels(&[base[0], base[1], base[2], ("quarantine", "")])), "DoesNotExist");
        assert!(!s.matches(&labels(&[base[0], base[1], base[2], ("team", "red")])), "NotIn");
    }

    #[test]
    fn selectors_the_api_server_would_refuse_are_errors() {
        for (r, want) in [
            (req("a", "Equals", &["x"]), "unknown operator \"Equals\""),
            (req("a", "In", &[]), "In needs at least one value"),
            (req("a", "Exists", &["x"]), "Exists takes no values"),
        ] {
            let sel = LabelSelector { match_expressions: Some(vec![r]), ..LabelSelector::default() };
            let e = Selector::new(&sel).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}

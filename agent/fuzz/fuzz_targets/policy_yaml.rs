//! Policy text: a workload's owner writes it (an `EgressPolicy` spec, a
//! ConfigMap, `--policy FILE`), the agent must reject bad ones with an error,
//! never a panic, and nothing it accepts may make `compile` panic.
//!
//! The same string is also used as a `matchName`/`matchPattern` value, and as
//! a DNS name from the wire against fixed selectors (names from the wire are
//! fully attacker-controlled; `NameSelector::matches` runs per answer).
//!
//! Invariants: an accepted selector prints (`Display`) as a pattern that
//! parses back to the same selector, and a name accepted by `exact` (or by
//! `pattern` without `*`) matches itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::policy::{NameSelector, Policy, compile};

/// Wire-style names, including case, trailing-dot and label-count edge cases.
const NAMES: &[&str] = &[
    "api.openai.com",
    "API.OpenAI.com.",
    "a.slack.com",
    "slack.com",
    "a.b.slack.com",
    "raw.githubusercontent.com",
    "githubusercontent.com",
    "",
    ".",
    "..",
    "*",
    "a..slack.com",
];

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    match Policy::from_yaml_str(s, "fuzz") {
        Ok(p) => match compile(&p, || Ok::<_, std::io::Error>(vec![])) {
            Ok(c) => {
                for n in NAMES.iter().copied().chain(s.lines()) {
                    let _ = c.ports_for_name(n);
                    let _ = c.may_resolve(n);
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        },
        Err(e) => {
            let _ = e.to_string();
        }
    }

    // The whole input and each line, as a selector and as a wire name.
    for one in std::iter::once(s).chain(s.lines().take(8)) {
        selector(one);
        for sel in fixed() {
            let _ = sel.matches(one);
        }
    }
});

fn selector(s: &str) {
    if let Ok(sel) = NameSelector::pattern(s) {
        round_trip(&sel);
        if !s.contains('*') {
            assert!(sel.matches(s), "pattern {s:?} does not match itself");
        }
        for n in NAMES {
            let _ = sel.matches(n);
        }
    }
    if let Ok(sel) = NameSelector::exact(s) {
        round_trip(&sel);
        assert!(sel.matches(s), "matchName {s:?} does not match itself");
        for n in NAMES {
            let _ = sel.matches(n);
        }
    }
}

/// `Display` is "the normalized policy form": it must load back as the same
/// selector.
fn round_trip(sel: &NameSelector) {
    let shown = sel.to_string();
    let back = NameSelector::pattern(&shown)
        .unwrap_or_else(|e| panic!("{sel:?} displays as {shown:?}, which does not parse: {e}"));
    assert_eq!(&back, sel, "{shown:?} does not round-trip");
}

fn fixed() -> &'static [NameSelector] {
    static FIXED: std::sync::OnceLock<Vec<NameSelector>> = std::sync::OnceLock::new();
    FIXED.get_or_init(|| {
        [
            "*",
            "*.slack.com",
            "**.githubusercontent.com",
            "api.openai.com",
        ]
        .into_iter()
        .map(|p| NameSelector::pattern(p).unwrap())
        .collect()
    })
}

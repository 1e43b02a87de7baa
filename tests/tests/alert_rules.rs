//! The alert rules in `deploy/prometheus/` load (`promtool check rules`)
//! and fire as their unit tests say (`promtool test rules`). Needs Debian's
//! `prometheus` package (`cargo xtask setup`); under CI=true a missing
//! promtool fails the test instead of skipping it.

use std::{path::PathBuf, process::Command};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool() -> Option<PathBuf> {
    let found = ["/usr/bin/promtool", "/usr/local/bin/promtool"].into_iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "promtool missing (apt package prometheus) with CI=true");
        eprintln!("skipping: no promtool (apt-get install prometheus)");
    }
    found
}

fn run(args: &[&str]) -> (bool, String) {
    let Some(tool) = promtool() else { return (true, String::new()) };
    let out = Command::new(tool).args(args).current_dir(deploy()).output().expect("running promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn alert_rules_load_and_pass_their_promtool_unit_tests() {
    let (ok, text) = run(&["check", "rules", "portcullis-alerts.yaml"]);
    assert!(ok, "{text}");
    let (ok, text) = run(&["test", "rules", "portcullis-alerts.test.yaml"]);
    assert!(ok, "{text}");
}

/// Every alert has a unit test that expects it to fire.
#[test]
fn every_alert_is_tested() {
    let rules = std::fs::read_to_string(deploy().join("portcullis-alerts.yaml")).unwrap();
    let tests = std::fs::read_to_string(deploy().join("portcullis-alerts.test.yaml")).unwrap();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 9, "{alerts:?}");
    for a in alerts {
        assert!(tests.contains(&format!("alertname: {a}\n        exp_alerts:\n          - ")), "{a} has no firing test");
    }
}

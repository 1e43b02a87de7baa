//! `cargo xtask deploy-check`, also a step of `cargo xtask test`: checks
//! `deploy/` without a cluster, with the tools `setup` pins
//! (`tests/deploy/requirements.txt`):
//!
//! - each kustomization of [`RENDERS`] is rendered with `kubectl kustomize`;
//!   every object is validated by `kubernetes-validate --strict` against
//!   each of [`KUBERNETES`] (an object of a kind it has no schema for
//!   fails: it only warns); `tests/deploy/check.py lint` applies the
//!   project's rules; `checkov` must find no failed check, and every check
//!   it skips must carry a reason (`checkov.io/skipN: ID=reason`);
//! - the example policies ([`EXAMPLES`]) are rendered and each custom
//!   resource is validated against its CRD's openAPIV3Schema (jsonschema,
//!   unknown fields rejected; CEL rules not evaluated), the other objects
//!   with kubernetes-validate;
//! - canaries: broken copies (a typo in a DaemonSet field, a checkov skip
//!   removed, a skip without a reason, a declared hostPort, an unknown field
//!   in a policy) must each be rejected, so a validator that stopped
//!   looking fails the step instead of passing everything.
//!
//! Rendered files land in `<target dir>/deploy-check/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    setup::{self, DeployTools},
    util,
};

/// Kubernetes versions the manifests are validated against: the oldest the
/// agent supports (k8s-openapi feature `v1_33`; the manifests need 1.30+ for
/// `appArmorProfile`) and the newest kubernetes-validate knows.
pub const KUBERNETES: &[&str] = &["1.33.0", "1.37.0"];
/// Kustomizations installed as they are (relative to the workspace root).
pub const RENDERS: &[&str] = &["deploy/overlays/plain", "deploy/overlays/cilium", "tests/deploy/pod-events"];
/// The example policies and their namespaces.
pub const EXAMPLES: &str = "deploy/examples/workspaces";
/// A skip's reason shorter than this is no reason.
const MIN_REASON: usize = 20;

/// A command's exit status and its stdout + stderr.
fn capture(command: &mut Command) -> anyhow::Result<(bool, String)> {
    let out = command.output().with_context(|| format!("cannot start `{}`", util::display(command)))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

fn path_cmd(program: &Path) -> Command {
    let mut c = Command::new(program);
    // kubectl kustomize needs no cluster; never read the user's kubeconfig.
    c.env("KUBECONFIG", "/dev/null");
    c
}

/// `kind name` of each top-level object of `kubectl kustomize` output.
pub fn objects(rendered: &str) -> Vec<String> {
    let mut out = Vec::new();
    for doc in rendered.split("\n---\n") {
        let kind = doc.lines().find_map(|l| l.strip_prefix("kind: "));
        // The first `  name:` under the top-level `metadata:`.
        let name = doc
            .lines()
            .skip_while(|l| *l != "metadata:")
            .skip(1)
            .take_while(|l| l.starts_with(' '))
            .find_map(|l| l.strip_prefix("  name: "));
        if let Some(kind) = kind {
            out.push(format!("{kind} {}", name.unwrap_or("?")));
        }
    }
    out
}

struct Checker {
    tools: DeployTools,
    root: PathBuf,
    out: PathBuf,
}

impl Checker {
    fn script(&self) -> Command {
        let mut c = path_cmd(&self.tools.python);
        c.arg(self.root.join("tests/deploy/check.py"));
        c
    }

    fn render(&self, dir: &str) -> anyhow::Result<(PathBuf, Vec<String>)> {
        let mut c = path_cmd(&self.tools.kubectl);
        c.args(["kustomize", dir]).current_dir(&self.root);
        let text = util::output(&mut c).with_context(|| format!("rendering {dir}"))?;
        let objects = objects(&text);
        if objects.is_empty() {
            bail!("`kubectl kustomize {dir}` rendered no object");
        }
        let file = self.out.join(format!("{}.yaml", dir.replace('/', "_")));
        fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
        Ok((file, objects))
    }

    /// kubernetes-validate --strict on every object for every version: each
    /// must be reported as passed (a kind without schema is only a warning
    /// to the tool, a failure here).
    fn kubernetes_validate(&self, file: &Path, objects: usize, show: bool) -> anyhow::Result<()> {
        let mut c = path_cmd(&self.tools.kubernetes_validate);
        c.arg("--strict");
        for v in KUBERNETES {
            c.args(["-k", v]);
        }
        c.arg(file);
        let (ok, text) = capture(&mut c)?;
        let passed = text.lines().filter(|l| l.starts_with("INFO") && l.contains(" passed for resource ")).count();
        let complaints: Vec<&str> = text.lines().filter(|l| l.starts_with("WARN") || l.starts_with("ERROR")).collect();
        if !ok || !complaints.is_empty() || passed != objects * KUBERNETES.len() {
            bail!(
                "kubernetes-validate --strict: {passed} of {} object validations passed:\n{}",
                objects * KUBERNETES.len(),
                if complaints.is_empty() { text.trim().to_owned() } else { complaints.join("\n") }
            );
        }
        if show {
            println!(
                "deploy check:   kubernetes-validate --strict: {objects} objects against Kubernetes {}",
                KUBERNETES.join(" and ")
            );
        }
        Ok(())
    }

    fn lint(&self, file: &Path, show: bool) -> anyhow::Result<()> {
        let (ok, text) = capture(self.script().arg("lint").arg(file))?;
        if show {
            print!("{}", indent(&text));
        }
        if !ok {
            bail!("tests/deploy/check.py lint:\n{}", failures(&text));
        }
        Ok(())
    }

    /// checkov: no failed check, every skip with a reason.
    fn checkov(&self, file: &Path, objects: usize, show: bool) -> anyhow::Result<()> {
        let mut c = path_cmd(&self.tools.checkov);
        // --skip-download: no call to the vendor's API (no network here).
        c.args(["--framework", "kubernetes", "--skip-download", "-o", "json", "-f"]).arg(file);
        let out = c.output().with_context(|| format!("cannot start `{}`", util::display(&c)))?;
        let json: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!("checkov printed no JSON report ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim())
        })?;
        let report = match &json {
            Value::Array(reports) => reports.iter().find(|r| r["check_type"] == "kubernetes").cloned().unwrap_or_default(),
            other => other.clone(),
        };
        let verdict = checkov_verdict(&report, objects)?;
        if show {
            println!("deploy check:   checkov {}: {verdict}", report["summary"]["checkov_version"].as_str().unwrap_or("?"));
        }
        Ok(())
    }

    fn check_render(&self, dir: &str) -> anyhow::Result<()> {
        let (file, objects) = self.render(dir)?;
        println!("deploy check: {dir}: {} objects: {}", objects.len(), objects.join(", "));
        self.kubernetes_validate(&file, objects.len(), true)?;
        self.lint(&file, true)?;
        self.checkov(&file, objects.len(), true)
    }

    fn check_examples(&self) -> anyhow::Result<PathBuf> {
        let (file, objects) = self.render(EXAMPLES)?;
        println!("deploy check: {EXAMPLES}: {} objects, custom resources against the CRDs in deploy/crds", objects.len());
        self.resources(&file, true).context("the example policies")?;
        Ok(file)
    }

    /// Each broken copy must be rejected by the check meant to see it, for
    /// the reason it was broken.
    fn canaries(&self, plain: &Path, examples: &Path) -> anyhow::Result<()> {
        let dir = self.out.join("canaries");
        util::output(self.script().arg("mutate").arg(plain).arg(&dir))?;
        util::output(self.script().arg("break-resource").arg(examples).arg(dir.join("bad-cr.yaml")))?;
        let objects = objects(&fs::read_to_string(plain)?).len();
        println!("deploy check: canaries (broken copies in {}), each must be rejected:", dir.display());
        for (name, check, expected) in CANARIES {
            let file = dir.join(name);
            let result = match check {
                Check::KubernetesValidate => self.kubernetes_validate(&file, objects, false),
                Check::Checkov => self.checkov(&file, objects, false),
                Check::Lint => self.lint(&file, false),
                Check::Resources => self.resources(&file, false),
            };
            let error = match result {
                Ok(()) => bail!("canary {name}: {check:?} accepted a manifest it must reject ({})", file.display()),
                Err(e) => format!("{e:#}"),
            };
            let Some(line) = error.lines().find(|l| l.contains(expected)) else {
                bail!("canary {name}: {check:?} rejected it, but not for {expected:?}: {error}");
            };
            println!("deploy check:   {name}: rejected by {check:?}: {}", line.trim());
        }
        Ok(())
    }

    fn resources(&self, file: &Path, show: bool) -> anyhow::Result<()> {
        let mut c = self.script();
        c.args(["resources", "--crds"]).arg(self.root.join("deploy/crds"));
        for v in KUBERNETES {
            c.args(["-k", v]);
        }
        let (ok, text) = capture(c.arg(file))?;
        if show {
            print!("{}", indent(&text));
        }
        if !ok {
            bail!("custom resources or objects do not validate:\n{}", failures(&text));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Check {
    KubernetesValidate,
    Checkov,
    Lint,
    Resources,
}

/// Broken copies (`check.py mutate`, `break-resource`), the check that must
/// reject each, and what its complaint must say.
const CANARIES: [(&str, Check, &str); 5] = [
    ("typo.yaml", Check::KubernetesValidate, "'terminationGracePeriodSecond' was unexpected"),
    ("unskipped.yaml", Check::Checkov, "failed: CKV_K8S_"),
    ("no-reason.yaml", Check::Checkov, "skipped without a reason"),
    ("ports.yaml", Check::Lint, "declares ports on hostNetwork"),
    ("bad-cr.yaml", Check::Resources, "'podSelecter' was unexpected"),
];

fn failures(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("FAILED")).map(str::trim).collect();
    if lines.is_empty() { text.trim().to_owned() } else { lines.join("\n") }
}

/// The reasons checkov's JSON report gives for a pass, or why it fails.
pub fn checkov_verdict(report: &Value, objects: usize) -> anyhow::Result<String> {
    let summary = &report["summary"];
    let count = |k: &str| summary[k].as_u64().unwrap_or(0);
    let (passed, failed, skipped) = (count("passed"), count("failed"), count("skipped"));
    if count("parsing_errors") > 0 || count("resource_count") < objects as u64 || passed == 0 {
        bail!(
            "checkov did not scan the manifests: {} resources of {objects}, {} parsing errors, {passed} passed",
            count("resource_count"),
            count("parsing_errors")
        );
    }
    let results = &report["results"];
    let list = |k: &str| results[k].as_array().cloned().unwrap_or_default();
    let describe = |c: &Value| {
        format!(
            "{} {} ({})",
            c["check_id"].as_str().unwrap_or("?"),
            c["check_name"].as_str().unwrap_or(""),
            c["resource"].as_str().unwrap_or("?")
        )
    };
    let mut problems: Vec<String> = list("failed_checks").iter().map(|c| format!("failed: {}", describe(c))).collect();
    for c in list("skipped_checks") {
        let reason = c["check_result"]["suppress_comment"].as_str().unwrap_or("").trim();
        if reason.len() < MIN_REASON || reason == "No comment provided" {
            problems.push(format!("skipped without a reason (checkov.io/skipN: ID=reason): {}", describe(&c)));
        }
    }
    if failed > 0 || !problems.is_empty() {
        bail!("checkov: {passed} passed, {failed} failed, {skipped} skipped:\n{}", problems.join("\n"));
    }
    Ok(format!("{passed} passed, 0 failed, {skipped} skipped (each with its reason)"))
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("deploy check: {l}\n")).collect()
}

/// Runs every check, writing what it renders under `out`; fails at the
/// first problem.
pub fn run(root: &Path, out: &Path) -> anyhow::Result<()> {
    let tools = setup::deploy_tools_installed()?;
    let out = out.to_owned();
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let kubectl = util::output(path_cmd(&tools.kubectl).args(["version", "--client"]))?;
    println!("deploy check: {}", kubectl.lines().map(str::trim).collect::<Vec<_>>().join(", "));
    let checker = Checker { tools, root: root.to_owned(), out };
    for dir in RENDERS {
        checker.check_render(dir)?;
    }
    let examples = checker.check_examples()?;
    let plain = checker.out.join(format!("{}.yaml", RENDERS[0].replace('/', "_")));
    checker.canaries(&plain, &examples)?;
    println!("deploy check: ok ({} kustomizations and the examples)", RENDERS.len());
    Ok(())
}

/// `cargo xtask deploy-check`.
pub fn command() -> anyhow::Result<()> {
    setup::run(setup::Mode::Quiet)?;
    let root = crate::demo::workspace_root()?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    run(&root, &target.join("deploy-check"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn objects_are_named_by_kind_and_name() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  labels:\n    a: b\n  name: ns\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata:\n  name: svc\n  namespace: ns\nspec:\n  ports:\n  - name: metrics\n";
        assert_eq!(objects(text), ["Namespace ns", "Service svc"]);
        assert!(objects("").is_empty());
    }

    fn report(failed: u64, skipped: Vec<Value>) -> Value {
        json!({
            "summary": {"passed": 90, "failed": failed, "skipped": skipped.len(), "parsing_errors": 0, "resource_count": 10},
            "results": {"failed_checks": if failed > 0 { vec![json!({"check_id": "CKV_K8S_1", "resource": "DaemonSet.x"})] } else { vec![] },
                        "skipped_checks": skipped},
        })
    }

    fn skip(reason: &str) -> Value {
        json!({"check_id": "CKV_K8S_17", "resource": "DaemonSet.x", "check_result": {"result": "SKIPPED", "suppress_comment": reason}})
    }

    #[test]
    fn checkov_needs_reasons_and_no_failure() {
        let reason = "hostPID: the agent reads /proc/PID/ns/net";
        assert!(checkov_verdict(&report(0, vec![skip(reason)]), 9).is_ok());
        assert!(checkov_verdict(&report(1, vec![skip(reason)]), 9).is_err());
        assert!(checkov_verdict(&report(0, vec![skip("No comment provided")]), 9).is_err());
        assert!(checkov_verdict(&report(0, vec![skip("because")]), 9).is_err());
        // Fewer resources than objects: checkov did not read them all.
        assert!(checkov_verdict(&report(0, vec![]), 11).is_err());
        assert!(checkov_verdict(&json!({}), 1).is_err());
    }
}

//! What one `portcullis exec` run gave: its exit status, outputs and
//! blocked log (`Outcome`), and for a script of steps each step's own
//! (`Steps`), with assertions that show everything when they fail.

use super::{Log, Ran, agree};
use serde_json::Value;

#[derive(Debug)]
pub struct Outcome {
    pub ran: Ran,
    pub log: Log,
}

impl Outcome {
    pub fn code(&self) -> i32 {
        self.ran.code
    }
    /// Asserts the exit code, showing outputs and log otherwise.
    pub fn expect_code(&self, want: i32) -> &Self {
        assert_eq!(
            self.ran.code, want,
            "exit code; stdout:\n{}\nstderr:\n{}\nlog:\n{}",
            self.ran.stdout, self.ran.stderr, self.log.raw
        );
        self
    }
}

#[derive(Debug)]
pub struct Step {
    pub name: String,
    pub cmd: String,
    pub code: i32,
    pub ms: u64,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug)]
pub struct Steps {
    pub outcome: Outcome,
    pub results: Vec<Step>,
    /// What explain was asked and agreed on.
    pub agreement: agree::Agreement,
}

impl Steps {
    pub fn get(&self, name: &str) -> &Step {
        self.results.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no step {name}"))
    }
    pub fn log(&self) -> &Log {
        &self.outcome.log
    }
    fn show(&self, s: &Step) -> String {
        format!(
            "step {} `{}`: exit {} after {} ms\nstdout: {}\nstderr: {}\nlog:\n{}",
            s.name, s.cmd, s.code, s.ms, s.stdout, s.stderr, self.outcome.log.raw
        )
    }
    /// The step succeeded and printed exactly `stdout`.
    pub fn ok(&self, name: &str, stdout: &str) {
        let s = self.get(name);
        assert!(s.code == 0 && s.stdout == stdout, "want exit 0, stdout {stdout:?}; {}", self.show(s));
    }
    /// The step exited with `code` within `max_ms`.
    pub fn fails(&self, name: &str, code: i32, max_ms: u64) -> &Step {
        let s = self.get(name);
        assert!(s.code == code && s.ms <= max_ms, "want exit {code} within {max_ms} ms; {}", self.show(s));
        s
    }
    /// A `sock.py` step: its JSON result.
    pub fn sock(&self, name: &str) -> Value {
        let s = self.get(name);
        serde_json::from_str(s.stdout.trim()).unwrap_or_else(|e| panic!("sock.py output ({e}); {}", self.show(s)))
    }
    /// A `sock.py` step failed at `stage` with `errno` (e.g. EPERM).
    pub fn sock_errno(&self, name: &str, stage: &str, errno: &str) {
        let v = self.sock(name);
        assert!(
            v["ok"] == false && v["stage"] == stage && v["errno"] == errno,
            "want {stage} failing with {errno}; {}",
            self.show(self.get(name))
        );
    }
}

//! The blocked-connection log (JSON lines) and assertions on its records.

use serde_json::Value;
use std::path::Path;

/// The blocked-connection log of one run: one entry in `records` per
/// attempt (a record folding `count` repeats stands for that many); the
/// rate limit's `lost` records apart.
#[derive(Debug)]
pub struct Log {
    pub records: Vec<Value>,
    pub lost: Vec<Value>,
    pub raw: String,
}

impl Log {
    pub fn read(path: &Path) -> Log {
        Self::parse(super::read(path))
    }

    pub fn parse(raw: String) -> Log {
        let (mut records, mut lost) = (Vec::new(), Vec::new());
        for l in raw.lines() {
            let r: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"));
            if r["kind"] == "lost" {
                lost.push(r);
                continue;
            }
            let n = r["count"].as_u64().unwrap_or(1);
            assert!(n >= 1, "a record for no attempt: {l}");
            records.extend(std::iter::repeat_n(r, n as usize));
        }
        Log { records, lost, raw }
    }

    /// Records for `dst` (as the log prints it) and `dport`.
    pub fn to(&self, dst: &str, dport: u16) -> Vec<&Value> {
        self.records.iter().filter(|r| r["dst"] == dst && r["dport"] == dport).collect()
    }

    /// A record for `dst`/`dport` whose fields match all of `want` (a
    /// `Value::Null` in `want` means: the field must be absent).
    pub fn expect(&self, dst: &str, dport: u16, want: &[(&str, Value)]) -> &Value {
        let recs = self.to(dst, dport);
        let matches = |rec: &&Value| want.iter().all(|(k, v)| rec.get(*k).unwrap_or(&Value::Null) == v);
        match recs.into_iter().find(matches) {
            Some(rec) => rec,
            None => panic!("no log record for {dst} port {dport} with {want:?}; log:\n{}", self.raw),
        }
    }

    /// Only the records of one protocol ("tcp", "udp", ...).
    pub fn only(&self, protocol: &str) -> Log {
        let records: Vec<Value> = self.records.iter().filter(|r| r["protocol"] == protocol).cloned().collect();
        Log { records, lost: Vec::new(), raw: self.raw.clone() }
    }

    /// No record at all for `dst` (any port).
    pub fn expect_none_to(&self, dst: &str) {
        let hits: Vec<_> = self.records.iter().filter(|r| r["dst"] == dst).collect();
        assert!(hits.is_empty(), "unexpected records for {dst}: {hits:?}");
    }

    /// Every record has the common fields of the format.
    pub fn expect_well_formed(&self, endpoint_prefix: &str) {
        for r in &self.records {
            for k in [
                "v",
                "kind",
                "time",
                "node",
                "verdict",
                "reason",
                "endpoint",
                "protocol",
                "dst",
                "dport",
                "hook",
                "cgroup_id",
                "count",
            ] {
                assert!(r.get(k).is_some(), "record without {k}: {r}");
            }
            assert!(r["endpoint"].as_str().unwrap().starts_with(endpoint_prefix), "endpoint of {r}");
            let t = r["time"].as_str().unwrap();
            assert!(t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T', "time {t}");
        }
    }
}

/// `serde_json::json!` shorthand for string fields.
pub fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

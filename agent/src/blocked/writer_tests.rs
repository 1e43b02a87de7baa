use std::sync::atomic::AtomicU64;

use serde_json::Value;

use super::*;
use crate::blocked::{
    rotate::{FILE_NAME, RotateSpec},
    schema::sample,
};

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
    fn records(&self) -> Vec<Value> {
        self.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

struct Broken;

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log(settings: Settings) -> (LogSink, Buf) {
    let b = Buf::default();
    (BlockedLog::new("node-a".into(), vec![Output::Stream(Box::new(b.clone()))], settings), b)
}

fn get(c: &AtomicU64) -> u64 {
    LogStats::get(c)
}

#[test]
fn a_record_carries_the_schema_version_node_and_count() {
    let (l, b) = log(Settings::default());
    let mut r = sample(443, "2026-01-01T00:00:00.000Z");
    r.reason = "denied-range";
    r.range = Some("metadata");
    l.record(r);
    let got = b.records();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!((r["v"].as_u64(), r["kind"].as_str(), r["node"].as_str()), (Some(1), Some("attempt"), Some("node-a")));
    assert_eq!((r["count"].as_u64(), r["range"].as_str()), (Some(1), Some("metadata")));
    for k in
        ["time", "verdict", "reason", "endpoint", "namespace", "pod", "protocol", "dst", "dport", "host", "hook", "cgroup_id"]
    {
        assert!(r.get(k).is_some(), "{k} in {r}");
    }
    assert!(r.get("first").is_none() && r.get("decision").is_none(), "{r}");
}

#[test]
fn repeats_are_folded_and_written_when_the_window_ends_or_at_shutdown() {
    let (l, b) = log(Settings { fold_window: Duration::from_secs(10), limits: Limits::default() });
    let t0 = Instant::now();
    for i in 0..5 {
        l.record_at(sample(80, &format!("t{i}")), t0 + Duration::from_millis(i));
    }
    l.record_at(sample(81, "t9"), t0);
    l.tick_at(t0 + Duration::from_secs(5));
    assert_eq!(b.records().len(), 2, "the first of each key only: {}", b.text());
    l.tick_at(t0 + Duration::from_secs(10));
    let got = b.records();
    assert_eq!(got.len(), 3, "{}", b.text());
    let f = &got[2];
    assert_eq!((f["count"].as_u64(), f["first"].as_str(), f["last"].as_str()), (Some(4), Some("t1"), Some("t4")));
    let s = l.stats();
    assert_eq!((get(&s.attempts), get(&s.attempts_folded), get(&s.records_written)), (6, 4, 3));
    // Pending at shutdown: written by flush_all.
    l.record_at(sample(80, "u1"), t0 + Duration::from_secs(11));
    l.record_at(sample(80, "u2"), t0 + Duration::from_secs(11));
    l.flush_all();
    let counts: Vec<u64> = b.records().iter().map(|r| r["count"].as_u64().unwrap()).collect();
    assert_eq!(counts, [1, 1, 4, 2], "the attempts add up: {}", b.text());
}

#[test]
fn the_rate_limit_writes_what_it_dropped_per_pod_and_reason() {
    let limits = Limits { per_endpoint_rate: 1.0, per_endpoint_burst: 3.0, node_rate: 100.0, node_burst: 100.0 };
    let (l, b) = log(Settings { fold_window: Duration::from_secs(10), limits });
    let t0 = Instant::now();
    // 10 distinct destinations of one pod at once: 3 pass.
    for port in 0..10 {
        l.record_at(sample(1000 + port, &format!("t{port}")), t0);
    }
    // Another pod is not held back by the first one's flood.
    let mut other = sample(80, "o");
    other.endpoint = "ws/b".into();
    other.pod = Some("b".into());
    l.record_at(other, t0);
    assert_eq!(b.records().len(), 4);
    l.tick_at(t0 + Duration::from_secs(1));
    assert_eq!(b.records().len(), 4, "lost records wait for the window");
    l.tick_at(t0 + Duration::from_secs(10));
    let got = b.records();
    let lost: Vec<&Value> = got.iter().filter(|r| r["kind"] == "lost").collect();
    assert_eq!(lost.len(), 1, "{}", b.text());
    let r = lost[0];
    assert_eq!((r["pod"].as_str(), r["reason"].as_str(), r["count"].as_u64()), (Some("a"), Some("denied-default"), Some(7)));
    assert_eq!((r["first"].as_str(), r["last"].as_str(), r["what"].as_str()), (Some("t3"), Some("t9"), Some("rate-limited")));
    assert_eq!((r["v"].as_u64(), r["node"].as_str()), (Some(1), Some("node-a")));
    let s = l.stats();
    assert_eq!((get(&s.records_rate_limited), get(&s.attempts_lost), get(&s.lost_records_written)), (7, 7, 1));
}

#[test]
fn control_characters_in_names_cannot_forge_a_line_or_reach_a_terminal() {
    let (l, b) = log(Settings::default());
    let mut r = sample(80, "t");
    r.host = Some("evil.test\n{\"v\":1,\"kind\":\"attempt\",\"pod\":\"forged\"}".into());
    r.comm = Some("\u{1b}[31mred\u{9b}0m".into());
    r.pod = Some("pod\u{202e}".into());
    l.record(r);
    let text = b.text();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(!text.contains('\u{1b}') && !text.contains('\u{9b}') && !text.contains('\u{202e}'), "{text}");
    let got = &b.records()[0];
    assert_eq!(got["comm"], "\\u{1b}[31mred\\u{9b}0m");
    assert!(got["host"].as_str().unwrap().starts_with("evil.test\\u{a}{"), "{got}");
    assert_eq!(got["pod"], "pod\\u{202e}");
}

#[test]
fn every_output_gets_each_line_and_a_failing_one_is_counted() {
    let dir = std::env::temp_dir().join(format!("portcullis-writer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spec = RotateSpec { max_bytes: 1000, files: 2, ..RotateSpec::new(dir.join(FILE_NAME)) };
    let b = Buf::default();
    let outs =
        vec![Output::Stream(Box::new(b.clone())), Output::Stream(Box::new(Broken)), Output::File(Rotating::open(spec).unwrap())];
    let l = BlockedLog::new("n".into(), outs, Settings { fold_window: Duration::ZERO, limits: Limits::default() });
    for port in 0..10 {
        l.record(sample(port, "t"));
    }
    let s = l.stats();
    assert_eq!((get(&s.records_written), get(&s.write_errors)), (10, 10));
    assert!(get(&s.rotations) >= 1);
    let on_disk = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
    assert!(b.text().ends_with(&on_disk), "the file has the newest lines");
    assert!(std::fs::metadata(dir.join("blocked.log.1")).is_ok());
    assert!(std::fs::metadata(dir.join("blocked.log.2")).is_err(), "two files in all");
    std::fs::remove_dir_all(&dir).unwrap();
}

//! Repeats folded into one record. A workload retrying a blocked connection
//! in a loop would otherwise fill the log with copies (and push out what
//! else it tried): the first attempt of a key is written at once (so
//! `--follow` and the pod's Event see it), repeats within the window are
//! counted, and when the window ends with repeats, one record with
//! `count`, `first` and `last` stands for them. A key that keeps repeating
//! gets one such record per window; one quiet for a whole window is
//! forgotten, and its next attempt is written at once again. This is
//! Calico's flow-log `count` model.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::schema::BlockedRecord;

/// Default window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// Keys followed at once; beyond it a new key is written as it comes (the
/// rate limit still bounds it): a flood of distinct destinations must not
/// grow the agent's memory.
pub const MAX_KEYS: usize = 4096;

/// What makes two attempts "the same" (pid and comm may differ: the record
/// keeps the first's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FoldKey {
    endpoint: String,
    verdict: &'static str,
    reason: &'static str,
    protocol: String,
    dst: IpAddr,
    dport: u16,
    host: Option<String>,
    hook: &'static str,
}

impl FoldKey {
    pub fn of(r: &BlockedRecord) -> Self {
        Self {
            endpoint: r.endpoint.clone(),
            verdict: r.verdict,
            reason: r.reason,
            protocol: r.protocol.clone(),
            dst: r.dst,
            dport: r.dport,
            host: r.host.clone(),
            hook: r.hook,
        }
    }
}

struct Window {
    ends: Instant,
    /// The repeats so far: the first of them (whose fields the folded
    /// record carries), how many, and the time of the last.
    repeats: Option<(BlockedRecord, u64, String)>,
}

pub struct Folder {
    window: Duration,
    keys: HashMap<FoldKey, Window>,
}

impl Folder {
    pub fn new(window: Duration) -> Self {
        Self { window, keys: HashMap::new() }
    }

    /// True: write `rec` now. False: it was counted into its key's window.
    /// A zero window folds nothing.
    pub fn offer(&mut self, rec: &BlockedRecord, now: Instant) -> bool {
        if self.window.is_zero() {
            return true;
        }
        let key = FoldKey::of(rec);
        if let Some(w) = self.keys.get_mut(&key) {
            match &mut w.repeats {
                Some((_, n, last)) => {
                    *n += rec.count;
                    last.clone_from(&rec.time);
                }
                None => w.repeats = Some((rec.clone(), rec.count, rec.time.clone())),
            }
            return false;
        }
        if self.keys.len() < MAX_KEYS {
            self.keys.insert(key, Window { ends: now + self.window, repeats: None });
        }
        true
    }

    /// The folded records of every window ended by `now`; keys with
    /// repeats start a new window, the others are forgotten.
    pub fn due(&mut self, now: Instant) -> Vec<BlockedRecord> {
        let mut out = Vec::new();
        let window = self.window;
        self.keys.retain(|_, w| {
            if w.ends > now {
                return true;
            }
            match w.repeats.take() {
                Some(r) => {
                    out.push(folded(r));
                    w.ends = now + window;
                    true
                }
                None => false,
            }
        });
        out
    }

    /// Every pending folded record (at shutdown), and nothing kept.
    pub fn drain(&mut self) -> Vec<BlockedRecord> {
        self.keys.drain().filter_map(|(_, w)| w.repeats.map(folded)).collect()
    }

    /// Keys followed now.
    pub fn tracked(&self) -> usize {
        self.keys.len()
    }
}

fn folded((mut rec, n, last): (BlockedRecord, u64, String)) -> BlockedRecord {
    rec.count = n;
    rec.first = Some(rec.time.clone());
    rec.last = Some(last);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocked::schema::sample;

    fn rec(dport: u16, time: &str) -> BlockedRecord {
        sample(dport, time)
    }

    #[test]
    fn the_first_is_written_at_once_repeats_become_one_record_at_the_window_end() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut f = Folder::new(Duration::from_secs(10));
        assert!(f.offer(&rec(80, "t0"), t0));
        assert!(f.offer(&rec(443, "t0"), t0), "another port is another key");
        let mut other_pid = rec(80, "t1");
        other_pid.pid = Some(8);
        assert!(!f.offer(&other_pid, s(1)), "a repeat, whatever the process");
        assert!(!f.offer(&rec(80, "t2"), s(2)));
        assert!(!f.offer(&rec(80, "t9"), s(9)));
        assert!(f.due(s(9)).is_empty(), "the window has not ended");
        let out = f.due(s(10));
        assert_eq!(out.len(), 1, "443 had no repeats: nothing to write, and forgotten");
        let r = &out[0];
        assert_eq!((r.dport, r.count, r.first.as_deref(), r.last.as_deref(), r.pid), (80, 3, Some("t1"), Some("t9"), Some(8)));
        assert_eq!(f.tracked(), 1);
        // Still repeating: counted into the next window, not written at once.
        assert!(!f.offer(&rec(80, "t12"), s(12)));
        // 443 was forgotten: its next attempt is written at once.
        assert!(f.offer(&rec(443, "t12"), s(12)));
        assert_eq!(f.due(s(20)).iter().map(|r| r.count).collect::<Vec<_>>(), [1]);
        // A quiet window: the key goes (443 also had none).
        assert!(f.due(s(31)).is_empty());
        assert_eq!(f.tracked(), 0);
        assert!(f.offer(&rec(80, "t31"), s(31)));
    }

    #[test]
    fn shutdown_writes_what_is_pending_and_a_zero_window_folds_nothing() {
        let t0 = Instant::now();
        let mut f = Folder::new(Duration::from_secs(10));
        assert!(f.offer(&rec(80, "a"), t0));
        assert!(!f.offer(&rec(80, "b"), t0));
        assert!(!f.offer(&rec(80, "c"), t0));
        let out = f.drain();
        assert_eq!(out.iter().map(|r| r.count).collect::<Vec<_>>(), [2]);
        let mut none = Folder::new(Duration::ZERO);
        assert!(none.offer(&rec(80, "a"), t0) && none.offer(&rec(80, "a"), t0));
    }

    #[test]
    fn the_key_table_is_bounded() {
        let t0 = Instant::now();
        let mut f = Folder::new(Duration::from_secs(10));
        for i in 0..(MAX_KEYS + 100) {
            let mut r = rec(80, "t");
            r.host = Some(format!("h{i}.example"));
            assert!(f.offer(&r, t0));
        }
        assert_eq!(f.tracked(), MAX_KEYS);
        let mut r = rec(80, "t");
        r.host = Some(format!("h{}.example", MAX_KEYS + 5));
        assert!(f.offer(&r, t0), "untracked keys are written every time");
    }
}

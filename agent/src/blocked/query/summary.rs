//! `--summary`: the 3 a.m. view. Who was blocked (by namespace/pod), why
//! (by reason), and what they tried most (by destination), with attempts
//! (folded counts added up), first and last time, and what the rate limit
//! held back.

use std::{collections::HashMap, io::Write};

use super::{
    entry::Entry,
    print::{destination, plural, reason, short_time},
};

#[derive(Default)]
struct Tally {
    attempts: u64,
    records: u64,
    first: String,
    last: String,
}

impl Tally {
    fn add(&mut self, e: &Entry) {
        self.attempts += e.count();
        self.records += 1;
        let first = e.first.clone().or_else(|| e.time.clone()).unwrap_or_default();
        let last = e.last.clone().or_else(|| e.time.clone()).unwrap_or_default();
        if self.first.is_empty() || first < self.first {
            self.first = first;
        }
        if last > self.last {
            self.last = last;
        }
    }
}

fn sorted<K: Clone + Ord>(m: &HashMap<K, Tally>) -> Vec<(K, &Tally)> {
    let mut v: Vec<(K, &Tally)> = m.iter().map(|(k, t)| (k.clone(), t)).collect();
    v.sort_by(|a, b| b.1.attempts.cmp(&a.1.attempts).then_with(|| a.0.cmp(&b.0)));
    v
}

fn time(t: &str) -> String {
    short_time(t).split('.').next().unwrap_or_default().to_owned()
}

fn columns(out: &mut impl Write, rows: &[Vec<String>], right: &[usize]) -> std::io::Result<()> {
    let n = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
            if right.contains(&i) {
                line.push_str(&format!("{c:>w$}  "));
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Most destination rows shown.
const TOP: usize = 20;

pub fn summary(out: &mut impl Write, entries: &[Entry]) -> std::io::Result<()> {
    let (mut pods, mut reasons, mut dests) = (HashMap::new(), HashMap::new(), HashMap::new());
    let mut lost: HashMap<String, u64> = HashMap::new();
    for e in entries {
        if e.is_lost() {
            *lost.entry(e.who()).or_default() += e.count();
            continue;
        }
        pods.entry(e.who()).or_insert_with(Tally::default).add(e);
        reasons.entry(reason(e)).or_insert_with(Tally::default).add(e);
        dests.entry((e.who(), reason(e), destination(e))).or_insert_with(Tally::default).add(e);
    }
    let total: u64 = pods.values().map(|t| t.attempts).sum();
    let lost_total: u64 = lost.values().sum();
    if pods.is_empty() && lost.is_empty() {
        return writeln!(out, "no blocked attempts match");
    }
    let mut rows = vec![["POD", "ATTEMPTS", "DESTINATIONS", "LOST", "FIRST", "LAST"].map(str::to_owned).to_vec()];
    let mut who: Vec<String> = pods.keys().chain(lost.keys()).cloned().collect();
    who.sort();
    who.dedup();
    who.sort_by_key(|w| std::cmp::Reverse(pods.get(w).map_or(0, |t| t.attempts)));
    for w in who {
        let t = pods.get(&w);
        let n = dests.keys().filter(|(p, _, _)| *p == w).count();
        rows.push(vec![
            w.clone(),
            t.map_or(0, |t| t.attempts).to_string(),
            n.to_string(),
            lost.get(&w).copied().unwrap_or(0).to_string(),
            t.map_or_else(|| "-".into(), |t| time(&t.first)),
            t.map_or_else(|| "-".into(), |t| time(&t.last)),
        ]);
    }
    columns(out, &rows, &[1, 2, 3])?;
    writeln!(out)?;
    let mut rows = vec![["REASON", "ATTEMPTS", "RECORDS"].map(str::to_owned).to_vec()];
    for (r, t) in sorted(&reasons) {
        rows.push(vec![r, t.attempts.to_string(), t.records.to_string()]);
    }
    columns(out, &rows, &[1, 2])?;
    writeln!(out)?;
    let mut rows = vec![["POD", "REASON", "DESTINATION", "ATTEMPTS", "FIRST", "LAST"].map(str::to_owned).to_vec()];
    let all = sorted(&dests);
    for ((p, r, d), t) in all.iter().take(TOP) {
        rows.push(vec![p.clone(), r.clone(), d.clone(), t.attempts.to_string(), time(&t.first), time(&t.last)]);
    }
    columns(out, &rows, &[3])?;
    if all.len() > TOP {
        writeln!(out, "... and {} more destinations (use filters, or -o json)", all.len() - TOP)?;
    }
    writeln!(
        out,
        "\n{} blocked to {} from {}; {} lost to the rate limit",
        plural(total, "attempt"),
        plural(dests.len() as u64, "destination"),
        plural(pods.len() as u64, "pod"),
        plural(lost_total, "attempt")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pod: &str, reason: &str, host: &str, port: u16, count: u64) -> Entry {
        Entry::parse(&format!(
            r#"{{"v":1,"kind":"attempt","time":"2026-11-23T10:00:00.000Z","verdict":"blocked","reason":"{reason}","endpoint":"x","namespace":"ws","pod":"{pod}","protocol":"tcp","dst":"203.0.113.9","dport":{port},"host":"{host}","hook":"connect4","cgroup_id":1,"count":{count}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn counts_by_pod_reason_and_destination() {
        let lost = Entry::parse(r#"{"v":1,"kind":"lost","time":"2026-11-23T10:00:10.000Z","endpoint":"x","namespace":"ws","pod":"a","reason":"denied-default","what":"rate-limited","count":9,"first":"t","last":"t"}"#).unwrap();
        let es = vec![
            rec("a", "denied-default", "api.test", 443, 12),
            rec("a", "denied-default", "api.test", 443, 3),
            rec("a", "denied-range", "meta.test", 80, 1),
            rec("b", "denied-default", "x.test", 80, 2),
            lost,
        ];
        let mut v = Vec::new();
        summary(&mut v, &es).unwrap();
        let t = String::from_utf8(v).unwrap();
        let line = |start: &str| t.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("{start}: {t}")).to_owned();
        let a: Vec<String> = line("ws/a ").split_whitespace().map(str::to_owned).collect();
        assert_eq!(&a[..4], ["ws/a", "16", "2", "9"], "{t}");
        assert!(line("denied-default ").split_whitespace().eq(["denied-default", "17", "3"]), "{t}");
        let top: Vec<String> = line("ws/a  denied-default").split_whitespace().map(str::to_owned).collect();
        assert_eq!(&top[..5], ["ws/a", "denied-default", "api.test", "203.0.113.9:443/tcp", "15"], "{t}");
        assert!(t.ends_with("18 attempts blocked to 3 destinations from 2 pods; 9 attempts lost to the rate limit\n"), "{t}");
        let mut v = Vec::new();
        summary(&mut v, &[]).unwrap();
        assert_eq!(String::from_utf8(v).unwrap(), "no blocked attempts match\n");
    }
}

//! `portcullis blocked`: the node's blocked log, filtered as `hubble
//! observe` filters flows, read straight from the files (no server, no
//! socket: it runs wherever the files are, e.g. in the agent's pod through
//! `kubectl exec`). With `--clickhouse URL`, `blocked/clickhouse/` reads
//! every node's records from ClickHouse instead, and prints them here.

pub mod args;
pub mod entry;
pub mod filter;
pub mod print;
pub mod read;
pub mod summary;
pub mod when;

use std::{
    collections::VecDeque,
    io::{ErrorKind, Write},
};

pub use args::{BlockedArgs, Source, SuggestArgs};
use entry::Entry;
use filter::Filter;
use print::Format;

/// Default `--last` when nothing else bounds the output, as hubble's.
const DEFAULT_LAST: usize = 20;

/// The filters the flags give.
pub fn filter_of(a: &BlockedArgs) -> Result<Filter, String> {
    Filter {
        namespace: a.namespace.clone(),
        pod: None,
        since: a.since,
        until: a.until,
        reasons: a.reason.clone(),
        verdict: a.verdict.map(|v| v.as_str().to_owned()),
        host: a.host.clone(),
        to_ip: a.to_ip,
        port: a.port,
    }
    .with_pod(a.pod.as_deref())
}

/// Runs `portcullis blocked` on this node's files; the exit status (1: no
/// log, bad arguments).
pub fn run(a: &BlockedArgs) -> i32 {
    exit_code(show(a, &mut std::io::stdout().lock()))
}

/// The exit status of a `portcullis blocked` (its error said on stderr).
pub fn exit_code(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        // `| head`: the reader went away; not an error.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == ErrorKind::BrokenPipe) => 0,
        Err(e) => {
            eprintln!("portcullis blocked: {e:#}");
            1
        }
    }
}

/// The matching records of the source, oldest first.
pub fn matching(source: &Source, filter: &Filter) -> anyhow::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let skipped = read::read_all(&read::files_of(&source.live()), |e| {
        if filter.matches(&e) {
            out.push(e);
        }
    })?;
    if skipped > 0 {
        eprintln!("portcullis: {skipped} lines that are not records skipped (a line cut short by a crash, or not a blocked log)");
    }
    Ok(out)
}

/// How many of the newest matching records are shown (`usize::MAX`: all).
pub fn last_of(a: &BlockedArgs) -> usize {
    a.last.unwrap_or(match () {
        () if a.follow => 0,
        () if a.since.is_some() || a.until.is_some() || a.summary => usize::MAX,
        () => DEFAULT_LAST,
    })
}

fn show(a: &BlockedArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let filter = filter_of(a).map_err(anyhow::Error::msg)?;
    let last = last_of(a);
    let live = a.source.live();
    let all = match matching(&a.source, &filter) {
        Ok(all) => all,
        // Following a log not written yet: wait for it.
        Err(_) if a.follow && live.parent().is_some_and(std::path::Path::is_dir) => Vec::new(),
        Err(e) => return Err(e),
    };
    if a.summary {
        summary::summary(out, &all)?;
        return Ok(());
    }
    let shown: VecDeque<Entry> = {
        let mut q = VecDeque::new();
        for e in all {
            if last == 0 {
                break;
            }
            if q.len() == last {
                q.pop_front();
            }
            q.push_back(e);
        }
        q
    };
    if a.follow {
        if a.output == Format::Table {
            print::table_header_follow(out)?;
        }
        for e in &shown {
            print::one(out, a.output, e)?;
        }
        out.flush()?;
        let mut failed = None;
        read::follow(&live, |e| {
            if !filter.matches(&e) {
                return true;
            }
            match print::one(out, a.output, &e).and_then(|()| out.flush()) {
                Ok(()) => true,
                Err(err) => {
                    failed = Some(err);
                    false
                }
            }
        })?;
        return failed.map_or(Ok(()), |e| Err(e.into()));
    }
    let shown: Vec<Entry> = shown.into();
    print_all(out, a, &shown, false)
}

/// The records in the format asked for (`nodes`: of many nodes).
pub fn print_all(out: &mut impl Write, a: &BlockedArgs, shown: &[Entry], nodes: bool) -> anyhow::Result<()> {
    if a.summary {
        summary::summary(out, shown)?;
        return Ok(());
    }
    match a.output {
        Format::Table => {
            if shown.is_empty() {
                writeln!(out, "no blocked attempts match")?;
                return Ok(());
            }
            if nodes {
                print::table_with_nodes(out, shown)?;
            } else {
                print::table(out, shown)?;
            }
            let attempts: u64 = shown.iter().filter(|e| !e.is_lost()).map(Entry::count).sum();
            let lost: u64 = shown.iter().filter(|e| e.is_lost()).map(Entry::count).sum();
            writeln!(
                out,
                "{} in {}; {} lost to the rate limit",
                print::plural(attempts, "attempt"),
                print::plural(shown.len() as u64, "record"),
                print::plural(lost, "attempt")
            )?;
        }
        Format::Compact if nodes => {
            for e in shown {
                print::compact_with_node(out, e)?;
            }
        }
        f => {
            for e in shown {
                print::one(out, f, e)?;
            }
        }
    }
    Ok(())
}

//! The blocked log and ClickHouse: the writer's tap that hands each line
//! to the ClickHouse output's buffer (`tap`), the records as table rows
//! (`row.rs`), and `portcullis blocked --clickhouse` (`cluster.rs`).

pub mod cluster;
pub mod row;

use std::{io::Write, sync::Arc};

use super::{
    Output,
    query::{self, BlockedArgs, entry::Entry, filter::Filter},
};
use crate::clickhouse::{Buffer, ConnArgs, http::Server, sender::Convert};

/// An output of the blocked log that appends each line to `buffer`: one
/// short lock, no I/O (the line becomes a row in the sender, off the DNS
/// and connect paths).
pub fn tap(buffer: Arc<Buffer>) -> Output {
    Output::Tap(Box::new(move |line: &str| {
        buffer.push(line.to_owned());
    }))
}

/// What the sender makes of a buffered line.
pub fn converter() -> Convert {
    Arc::new(row::Row::from_line)
}

/// The matching records of every node in ClickHouse, oldest first (with
/// `last`, the newest that many).
pub fn fetch(server: &Server, conn: &ConnArgs, filter: &Filter, last: Option<usize>) -> anyhow::Result<Vec<Entry>> {
    let client = conn.client(server.clone()).map_err(anyhow::Error::msg)?;
    let statement = cluster::statement(&conn.blocked(), filter, last);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answer = rt.block_on(client.select(&statement))?;
    let (entries, rejected) = cluster::entries(&answer, filter)?;
    if rejected > 0 {
        eprintln!("portcullis: {rejected} rows from ClickHouse did not match the filters after all; not shown");
    }
    Ok(entries)
}

/// `portcullis blocked --clickhouse URL`: the records, filtered and
/// printed as from the files, with the node of each.
pub fn show(a: &BlockedArgs, server: &Server, out: &mut impl Write) -> anyhow::Result<()> {
    let filter = query::filter_of(a).map_err(anyhow::Error::msg)?;
    let last = query::last_of(a);
    // The summary counts every record; else only the last N.
    let limit = (!a.summary && last != usize::MAX).then_some(last);
    let all = fetch(server, &a.clickhouse_conn, &filter, limit)?;
    query::print_all(out, a, &all, true)
}

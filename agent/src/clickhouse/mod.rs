//! Flow records to ClickHouse, for questions across nodes and beyond the
//! node's rotated files (deploy/clickhouse/, docs/ARCHITECTURE.md
//! "ClickHouse"). Off unless `--clickhouse-url` is given.
//!
//! Four tables, one bounded buffer and one sender each:
//! - the blocked records, as the blocked log writes them (its tap:
//!   `blocked/clickhouse/`);
//! - allowed connections and datagrams per pod and policy entry per minute
//!   (deltas of the kernel's per-endpoint rule counters: `agent/flows.rs`);
//! - names resolved per pod and name per minute (the DNS gates' tally,
//!   `dnsgate/names.rs`);
//! - allowed connections per pod, destination name, port and minute
//!   (deltas of the kernel's per-destination counts, `FLOW_DESTS`).
//!
//! `http.rs` the HTTP client; `sql.rs` literals and identifiers; `buffer.rs`
//! the bounded buffer and its counters; `sender.rs` batches, retries and
//! the last flush; `args.rs` the flags. Nothing here knows what a record
//! means: this module depends on no other part of the agent.

pub mod args;
pub mod buffer;
pub mod http;
pub mod sender;
pub mod sql;

use std::{sync::Arc, time::Duration};

pub use args::{ClickHouseArgs, ConnArgs};
pub use buffer::{Buffer, Limits, TableStats};
use sender::{Convert, Sender};
use tokio::{runtime::Handle, sync::watch, task::JoinHandle};

/// The four tables, as the metrics name them (whatever the flags call
/// them in the database).
pub const BLOCKED: &str = "blocked";
pub const RULES: &str = "allowed_by_rule";
pub const NAMES: &str = "names_resolved";
pub const FLOWS: &str = "allowed_flows";

/// How long the last flush at stop may take.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Every table's counters, for `portcullis_clickhouse_records_total`.
#[derive(Debug, Default)]
pub struct Stats {
    pub tables: Vec<(&'static str, Arc<TableStats>)>,
}

/// The output: a client and a buffer per table. Built from the flags
/// before the agent starts (the blocked log's tap needs the buffer); its
/// senders run on the agent's runtime from `start`.
pub struct Pipeline {
    client: http::Client,
    pub node: String,
    pub blocked: Arc<Buffer>,
    pub rules: Arc<Buffer>,
    pub names: Arc<Buffer>,
    pub flows: Arc<Buffer>,
    statements: [String; 4],
    interval: Duration,
}

/// The senders while they run.
pub struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// `None` when no URL is given. A bad password file or header value is
    /// an error here, before anything is loaded.
    pub fn from_args(args: &ClickHouseArgs, node: &str) -> Result<Option<Self>, String> {
        let Some(server) = args.url.clone() else { return Ok(None) };
        let client = args.conn.client(server)?;
        let limits = Limits {
            records: args.buffer_records,
            bytes: usize::try_from(args.buffer_bytes).unwrap_or(usize::MAX),
            batch: args.batch,
        };
        let db = &args.conn.database;
        let insert = |table: &str| format!("INSERT INTO {db}.{table} FORMAT JSONEachRow");
        Ok(Some(Self {
            client,
            node: node.to_owned(),
            blocked: Arc::new(Buffer::new(BLOCKED, limits)),
            rules: Arc::new(Buffer::new(RULES, limits)),
            names: Arc::new(Buffer::new(NAMES, limits)),
            flows: Arc::new(Buffer::new(FLOWS, limits)),
            statements: [
                insert(&args.conn.blocked_table),
                insert(&args.rules_table),
                insert(&args.names_table),
                insert(&args.flows_table),
            ],
            interval: args.flush_interval,
        }))
    }

    pub fn server(&self) -> &http::Server {
        self.client.server()
    }

    pub fn stats(&self) -> Arc<Stats> {
        Arc::new(Stats {
            tables: [&self.blocked, &self.rules, &self.names, &self.flows]
                .iter()
                .map(|b| (table_kind(b), b.stats.clone()))
                .collect(),
        })
    }

    /// Starts the four senders on `rt`; blocked lines are made rows by
    /// `blocked_row` (the others are rows already).
    pub fn start(&self, rt: &Handle, blocked_row: Convert) -> Running {
        let (stop, rx) = watch::channel(false);
        let same: Convert = Arc::new(|s: &str| Some(s.to_owned()));
        let tasks = [(&self.blocked, blocked_row), (&self.rules, same.clone()), (&self.names, same.clone()), (&self.flows, same)]
            .into_iter()
            .zip(&self.statements)
            .map(|((buffer, convert), statement)| {
                let s = Sender {
                    buffer: buffer.clone(),
                    client: self.client.clone(),
                    statement: statement.clone(),
                    convert,
                    interval: self.interval,
                };
                rt.spawn(s.run(rx.clone(), STOP_DEADLINE))
            })
            .collect();
        Running { stop, tasks }
    }
}

fn table_kind(b: &Buffer) -> &'static str {
    [BLOCKED, RULES, NAMES, FLOWS].into_iter().find(|k| *k == b.table).unwrap_or(BLOCKED)
}

impl Running {
    /// Stops the senders after they sent what is held (or gave up at the
    /// deadline). Call once nothing pushes any more.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

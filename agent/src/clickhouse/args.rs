//! The flags of the ClickHouse output (`agent`, `run`) and of
//! `portcullis blocked --clickhouse`. The password never goes on the
//! command line, which every local user can read: it comes from
//! `PORTCULLIS_CLICKHOUSE_PASSWORD` or a file (a mounted Secret).

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::{
    http::{Client, Server, parse_url},
    sql::identifier,
};
use crate::util::parse_size;

/// The environment variable holding the password (when no file is given).
pub const PASSWORD_ENV: &str = "PORTCULLIS_CLICKHOUSE_PASSWORD";

/// Who to be in ClickHouse, and where the blocked records are.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// ClickHouse user.
    #[arg(long = "clickhouse-user", env = "PORTCULLIS_CLICKHOUSE_USER", value_name = "USER", default_value = "default")]
    pub user: String,
    /// File holding the ClickHouse password (a trailing newline is ignored).
    /// Without it, $PORTCULLIS_CLICKHOUSE_PASSWORD, else no password.
    #[arg(long = "clickhouse-password-file", env = "PORTCULLIS_CLICKHOUSE_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Database of the tables (deploy/clickhouse/schema.sql).
    #[arg(long = "clickhouse-database", env = "PORTCULLIS_CLICKHOUSE_DATABASE", value_name = "NAME",
        default_value = "portcullis", value_parser = identifier)]
    pub database: String,
    /// Table of the blocked records.
    #[arg(long = "clickhouse-blocked-table", env = "PORTCULLIS_CLICKHOUSE_BLOCKED_TABLE", value_name = "NAME",
        default_value = "blocked", value_parser = identifier)]
    pub blocked_table: String,
}

impl ConnArgs {
    /// The password: the file's, else the environment's, else none.
    pub fn password(&self) -> Result<Option<String>, String> {
        if let Some(f) = &self.password_file {
            let text =
                std::fs::read_to_string(f).map_err(|e| format!("reading the ClickHouse password file {}: {e}", f.display()))?;
            return Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()));
        }
        Ok(std::env::var(PASSWORD_ENV).ok())
    }

    pub fn client(&self, server: Server) -> Result<Client, String> {
        Client::new(server, &self.user, self.password()?.as_deref())
    }

    /// `db.table`, both checked identifiers.
    pub fn blocked(&self) -> String {
        format!("{}.{}", self.database, self.blocked_table)
    }
}

/// The agent's output to ClickHouse (`agent` and `run`; off unless a URL
/// is given).
#[derive(Debug, Clone, Args)]
pub struct ClickHouseArgs {
    /// Also send flow records to ClickHouse's HTTP interface at this URL
    /// (http://HOST[:PORT]): blocked records, allowed connections per pod
    /// and policy entry per minute, and names resolved per pod per minute,
    /// into the tables of deploy/clickhouse/schema.sql.
    #[arg(long = "clickhouse-url", env = "PORTCULLIS_CLICKHOUSE_URL", value_name = "URL", value_parser = parse_url)]
    pub url: Option<Server>,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Table of the allowed connections and datagrams per pod, policy entry
    /// and minute.
    #[arg(long = "clickhouse-rules-table", env = "PORTCULLIS_CLICKHOUSE_RULES_TABLE", value_name = "NAME",
        default_value = "allowed_by_rule", value_parser = identifier)]
    pub rules_table: String,
    /// Table of the names resolved per pod, name and minute.
    #[arg(long = "clickhouse-names-table", env = "PORTCULLIS_CLICKHOUSE_NAMES_TABLE", value_name = "NAME",
        default_value = "names_resolved", value_parser = identifier)]
    pub names_table: String,
    /// Table of the allowed connections per pod, destination name, port
    /// and minute.
    #[arg(long = "clickhouse-flows-table", env = "PORTCULLIS_CLICKHOUSE_FLOWS_TABLE", value_name = "NAME",
        default_value = "allowed_flows", value_parser = identifier)]
    pub flows_table: String,
    /// Send a table's records once this many wait ...
    #[arg(long = "clickhouse-batch", env = "PORTCULLIS_CLICKHOUSE_BATCH", value_name = "RECORDS", default_value_t = 5000,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub batch: usize,
    /// ... or this long after the last send.
    #[arg(long = "clickhouse-flush-interval", env = "PORTCULLIS_CLICKHOUSE_FLUSH_INTERVAL", value_name = "DURATION",
        default_value = "5s", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,
    /// Most records held in memory per table while ClickHouse is slow or
    /// away (waiting, or in a batch being sent again); more are dropped and
    /// counted (portcullis_clickhouse_records_total{outcome="dropped"}).
    #[arg(long = "clickhouse-buffer-records", env = "PORTCULLIS_CLICKHOUSE_BUFFER_RECORDS", value_name = "RECORDS",
        default_value_t = 100_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub buffer_records: usize,
    /// Most bytes held in memory per table (K, M, G: powers of 1024).
    #[arg(long = "clickhouse-buffer-bytes", env = "PORTCULLIS_CLICKHOUSE_BUFFER_BYTES", value_name = "SIZE",
        default_value = "32MiB", value_parser = parse_size)]
    pub buffer_bytes: u64,
}

impl Default for ClickHouseArgs {
    fn default() -> Self {
        Self {
            url: None,
            conn: ConnArgs {
                user: "default".into(),
                password_file: None,
                database: "portcullis".into(),
                blocked_table: "blocked".into(),
            },
            rules_table: "allowed_by_rule".into(),
            names_table: "names_resolved".into(),
            flows_table: "allowed_flows".into(),
            batch: 5000,
            flush_interval: Duration::from_secs(5),
            buffer_records: 100_000,
            buffer_bytes: 32 << 20,
        }
    }
}

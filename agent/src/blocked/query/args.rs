//! The flags of `portcullis blocked` and `portcullis suggest` (clap value
//! parsers: a bad value is refused with what was expected).

use std::{path::PathBuf, time::SystemTime};

use agent_common::Reason;
use clap::{Args, ValueEnum, builder::PossibleValuesParser};
use ipnet::IpNet;

use super::{
    filter::{Glob, parse_net},
    print::Format,
    when::parse_when,
};
use crate::blocked::rotate::FILE_NAME;

/// Every reason a record can carry (the denials of `agent_common::Reason`).
pub fn reason_names() -> Vec<&'static str> {
    (0..Reason::MAX)
        .filter_map(Reason::from_u32)
        .filter(|r| !r.is_allowed() && *r != Reason::DnsHeld)
        .map(Reason::as_str)
        .collect()
}

/// Where the records are read.
#[derive(Debug, Clone, Args)]
pub struct Source {
    /// The agent's blocked-log directory (its --blocked-log-dir, by default
    /// its state directory). Default: $PORTCULLIS_BLOCKED_LOG_DIR, else
    /// $PORTCULLIS_STATE_DIR, else /var/run/portcullis.
    #[arg(long, env = "PORTCULLIS_BLOCKED_LOG_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// A log file instead (`exec --log`, `run`'s `log:`, a copy from
    /// another node): it and its rotated files (FILE.1, ...).
    #[arg(long, value_name = "FILE", conflicts_with = "dir")]
    pub file: Option<PathBuf>,
}

impl Source {
    /// The live file.
    pub fn live(&self) -> PathBuf {
        if let Some(f) = &self.file {
            return f.clone();
        }
        let dir = self
            .dir
            .clone()
            .or_else(|| std::env::var_os("PORTCULLIS_STATE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/portcullis"));
        dir.join(FILE_NAME)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Verdict {
    Blocked,
    Audit,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::Audit => "audit",
        }
    }
}

pub const BLOCKED_EXAMPLES: &str = "\
Examples:
  # What pod agent-a-0 in team-a tried in the last hour, and why it was blocked:
  portcullis blocked -n team-a --pod agent-a-0 --since 1h

  # The same as counts by pod, reason and destination:
  portcullis blocked -n team-a --since 1h --summary

  # Cloud metadata and other always-denied ranges, as JSON for jq:
  portcullis blocked --reason denied-range -o json --since 24h

  # Follow new records of one namespace:
  portcullis blocked -n team-a -f

  # Every node's records, from ClickHouse (deploy/clickhouse/):
  PORTCULLIS_CLICKHOUSE_PASSWORD_FILE=/secrets/ch portcullis blocked --clickhouse http://clickhouse:8123 -n team-a --since 24h

From a laptop: `kubectl portcullis blocked -n team-a --pod agent-a-0` (deploy/kubectl-portcullis)
runs it in the agent pod on that pod's node.";

/// `portcullis blocked`.
#[derive(Debug, Clone, Args)]
pub struct BlockedArgs {
    #[command(flatten)]
    pub source: Source,
    /// Only records of pods in this namespace.
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Only records of pods whose name starts with this (`NS/POD` sets the
    /// namespace too). For `exec` and `run` endpoints without a pod: their
    /// endpoint name.
    #[arg(long, value_name = "[NS/]POD")]
    pub pod: Option<String>,
    /// Only attempts at or after this: a duration ago (5m, 1h30m) or an
    /// RFC 3339 time (2026-11-23T09:59:29Z).
    #[arg(long, value_name = "TIME", value_parser = parse_when)]
    pub since: Option<SystemTime>,
    /// Only attempts at or before this (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_when)]
    pub until: Option<SystemTime>,
    /// Only the last N matching records (default 20, unless --since,
    /// --until or --summary is given; with --follow, 0).
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Keep printing new records as they are written (across rotations).
    #[arg(short = 'f', long, conflicts_with = "summary")]
    pub follow: bool,
    /// Only these reasons (repeat for several).
    #[arg(long, value_name = "REASON", value_parser = PossibleValuesParser::new(reason_names()))]
    pub reason: Vec<String>,
    /// Only blocked attempts, or only those audit mode let through.
    #[arg(long, value_enum, value_name = "VERDICT")]
    pub verdict: Option<Verdict>,
    /// Only destinations whose host name matches this pattern (`*`, `?`;
    /// `*.example.com`).
    #[arg(long, value_name = "GLOB", value_parser = Glob::parse)]
    pub host: Option<Glob>,
    /// Only destinations in this network (or this address).
    #[arg(long, value_name = "CIDR", value_parser = parse_net)]
    pub to_ip: Option<IpNet>,
    /// Only this destination port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// table (for people), compact (one line each), json (one record per line).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    /// Counts by namespace/pod, reason and destination instead of records.
    #[arg(long)]
    pub summary: bool,
    /// Query every node's records in ClickHouse (its HTTP interface,
    /// http://HOST[:PORT]) instead of this node's files (--dir and --file
    /// are not read); the table gets a NODE column.
    #[arg(long, value_name = "URL", value_parser = crate::clickhouse::http::parse_url,
        conflicts_with = "follow")]
    pub clickhouse: Option<crate::clickhouse::http::Server>,
    #[command(flatten)]
    pub clickhouse_conn: crate::clickhouse::ConnArgs,
}

pub const SUGGEST_EXAMPLES: &str = "\
Examples:
  # Policy lines that would allow what pod agent-a-0 was blocked from in the last day:
  portcullis suggest -n team-a --pod agent-a-0 --since 24h

Review every line before adding it to the pod's EgressPolicy `spec.egress` (or the `run`
config's `policy.egress`): nothing is applied. Always-denied ranges (cloud metadata,
private, link-local, loopback...) and DNS servers are never suggested.";

/// `portcullis suggest`.
#[derive(Debug, Clone, Args)]
pub struct SuggestArgs {
    #[command(flatten)]
    pub source: Source,
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// The pod (prefix; `NS/POD` sets the namespace too).
    #[arg(long, value_name = "[NS/]POD")]
    pub pod: Option<String>,
    /// Records since (a duration ago or an RFC 3339 time).
    #[arg(long, value_name = "TIME", value_parser = parse_when, default_value = "24h")]
    pub since: SystemTime,
    #[arg(long, value_name = "TIME", value_parser = parse_when)]
    pub until: Option<SystemTime>,
}

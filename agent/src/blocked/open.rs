//! Where each command's blocked log goes, and the flags that say so.
//!
//! - `agent` (the DaemonSet): stdout, for `kubectl logs` and any node log
//!   shipper (its tracing goes to stderr), and the rotated files in
//!   `--blocked-log-dir` (default: the state directory) that `portcullis
//!   blocked` reads.
//! - `run`: stdout too (tracing is on stderr), and the rotated files when
//!   the config's `log:` or `--blocked-log-dir` names them.
//! - `exec`: `--log FILE` (rotated alike), else stderr: its stdout is the
//!   command's.

use std::path::{Path, PathBuf};

use clap::Args;

pub use crate::util::parse_size;

use super::{
    fold::DEFAULT_WINDOW,
    limit::Limits,
    rotate::{DEFAULT_FILES, DEFAULT_MAX_BYTES, FILE_NAME, RotateSpec, Rotating},
    writer::{BlockedLog, LogSink, Output, Settings, hostname},
};

/// The blocked log's files (flattened into `agent` and `run`).
#[derive(Debug, Clone, Args)]
pub struct BlockedLogArgs {
    /// Directory of the blocked log's rotated files (`blocked.log`,
    /// `blocked.log.1`, ...). `agent`: default the state directory.
    #[arg(long, env = "PORTCULLIS_BLOCKED_LOG_DIR", value_name = "DIR")]
    pub blocked_log_dir: Option<PathBuf>,
    /// Largest size of one file before it is rotated (bytes, or with
    /// K/KiB, M/MiB, G/GiB: powers of 1024).
    #[arg(long, env = "PORTCULLIS_BLOCKED_LOG_MAX_BYTES", value_name = "SIZE", default_value = "10MiB",
        value_parser = parse_size)]
    pub blocked_log_max_bytes: u64,
    /// Files kept, the live one included.
    #[arg(long, env = "PORTCULLIS_BLOCKED_LOG_FILES", value_name = "N", default_value_t = DEFAULT_FILES,
        value_parser = clap::value_parser!(u32).range(1..=100))]
    pub blocked_log_files: u32,
    /// Repeats of an attempt (same pod, verdict, reason, protocol,
    /// destination, port and host) within this window are written as one
    /// record with a count; 0s writes every attempt.
    #[arg(long, env = "PORTCULLIS_BLOCKED_LOG_FOLD", value_name = "DURATION", default_value = "10s",
        value_parser = humantime::parse_duration)]
    pub blocked_log_fold: std::time::Duration,
}

impl Default for BlockedLogArgs {
    fn default() -> Self {
        Self {
            blocked_log_dir: None,
            blocked_log_max_bytes: DEFAULT_MAX_BYTES,
            blocked_log_files: DEFAULT_FILES,
            blocked_log_fold: DEFAULT_WINDOW,
        }
    }
}

fn settings(args: &BlockedLogArgs) -> Settings {
    Settings { fold_window: args.blocked_log_fold, limits: Limits::default() }
}

fn file(path: PathBuf, args: &BlockedLogArgs) -> anyhow::Result<Output> {
    let spec = RotateSpec { max_bytes: args.blocked_log_max_bytes, files: args.blocked_log_files, ..RotateSpec::new(path) };
    let shown = spec.path.display().to_string();
    Ok(Output::File(Rotating::open(spec).map_err(|e| anyhow::anyhow!("opening the blocked log {shown}: {e}"))?))
}

/// `exec`: `--log FILE` (rotated, default size and count) or stderr.
pub fn exec_log(path: Option<&Path>) -> anyhow::Result<LogSink> {
    let args = BlockedLogArgs::default();
    let out = match path {
        Some(p) => file(p.to_owned(), &args)?,
        None => Output::Stream(Box::new(std::io::stderr())),
    };
    Ok(BlockedLog::new(hostname(), vec![out], settings(&args)))
}

/// `run` and `agent`: stdout, the rotated file (`file`, else
/// `DIR/blocked.log` of `--blocked-log-dir` or `default_dir`), and any
/// `extra` stream (the Events tap).
pub fn node_log(
    node: String,
    args: &BlockedLogArgs,
    file_path: Option<&Path>,
    default_dir: Option<&Path>,
    extra: Vec<Output>,
) -> anyhow::Result<LogSink> {
    let mut outs = vec![Output::Stream(Box::new(std::io::stdout()))];
    let path =
        file_path.map(Path::to_owned).or_else(|| args.blocked_log_dir.as_deref().or(default_dir).map(|d| d.join(FILE_NAME)));
    if let Some(p) = path {
        outs.push(file(p, args)?);
    }
    outs.extend(extra);
    Ok(BlockedLog::new(node, outs, settings(args)))
}

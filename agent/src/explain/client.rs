//! The CLI side: one question over the agent's socket
//! (`<state dir>/agent.sock`, root only), printed for a person or as JSON.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::{Explanation, Request, parse_target, render};
use crate::{cli::ExplainArgs, enforcer::Enforcer, handover};

/// The socket's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer {
    Ok(Box<Explanation>),
    Error(String),
}

/// The agent's side of a query: request JSON -> answer JSON.
pub fn answer(enforcer: &Enforcer, query: &str) -> String {
    let a = match serde_json::from_str::<Request>(query) {
        Ok(req) => match enforcer.read_state(|st| super::evaluate(st, &req)) {
            Ok(e) => Answer::Ok(Box::new(e)),
            Err(e) => Answer::Error(e.to_string()),
        },
        Err(e) => Answer::Error(format!("not an explain request: {e}")),
    };
    serde_json::to_string(&a).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// `portcullis explain`: exit 0 when allowed (also after a lookup), 1 when
/// blocked.
pub fn run(args: &ExplainArgs) -> Result<i32> {
    let (host, port) = parse_target(&args.target, args.port).map_err(anyhow::Error::msg)?;
    let req = Request {
        namespace: args.namespace.clone(),
        pod: args.pod.clone(),
        endpoint: args.endpoint.clone(),
        host,
        port,
        protocol: args.protocol.to_ascii_lowercase(),
    };
    let path = args.state_dir.join(handover::SOCKET);
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!("connecting to the agent at {} (is it running with this --state-dir? root only)", path.display())
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "{} {}", handover::EXPLAIN, serde_json::to_string(&req)?)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).context("reading the agent's answer")?;
    let e = match serde_json::from_str::<Answer>(line.trim_end()).with_context(|| format!("the agent's answer: {line:?}"))? {
        Answer::Ok(e) => e,
        Answer::Error(msg) => bail!("{msg}"),
    };
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{}", render::text(&e));
    }
    Ok(if matches!(e.verdict.as_str(), "blocked" | "audit") { 1 } else { 0 })
}

//! The TCP side of a DNS gate: one thread per client connection, in the
//! workload's namespace, with its own connection to the resolver.

use std::{
    io,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use agent_common::proto;
use tracing::{debug, warn};

use super::GateCtx;
use crate::{
    dns::{
        DnsError,
        learnable, parse_message, parse_query, refusal,
        stream::{read_frame, write_frame},
        transaction_id,
    },
    gate::{
        GateStats, MAX_CNAME_CHAIN,
        judge::{judge_query, note_shape, vet_answer},
        poll_readable,
    },
    runtime::lock,
};

/// How long a client or the resolver may stay silent mid-message.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// `netns_cookie`: the namespace's, to name each client's process (noted by
/// `skb::egress` from its SYN in `GATE_CLIENTS`) in the log.
pub(super) fn accept_loop(
    listener: TcpListener,
    conn: GateCtx,
    netns_cookie: u64,
    stop: (Arc<AtomicBool>, Arc<AtomicBool>),
) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !stop.0.load(Ordering::Relaxed) && !stop.1.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, peer)) => {
                let c = conn.clone();
                let tgid = lock(&c.shared.state).maps.gate_client(netns_cookie, peer.port(), proto::TCP).unwrap_or(0);
                // Spawned from a thread in the workload's namespace: the
                // upstream connection is made there too.
                let _ = thread::Builder::new().name("dns-tcp-conn".into()).spawn(move || {
                    if let Err(e) = c.serve(client, tgid) {
                        debug!(error = %e, "TCP DNS gate connection closed");
                    }
                });
            }
            // Wait for a connection, waking up only to check for a stop: an
            // idle gate (one per namespace, endpoint and resolver) must not
            // steal time from the workload's CPUs.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => poll_readable(listener.as_raw_fd(), STOP_CHECK_MS),
            Err(e) => {
                warn!(error = %e, "TCP DNS gate accept failed");
                thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// How often an idle accept loop checks its stop flags, in ms.
const STOP_CHECK_MS: i32 = 200;

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

impl GateCtx {
    fn serve(&self, mut client: TcpStream, tgid: u32) -> io::Result<()> {
        client.set_read_timeout(Some(IO_TIMEOUT))?;
        client.set_write_timeout(Some(IO_TIMEOUT))?;
        let stats = &self.shared.stats;
        // Bytes we cannot vouch for end the connection, counted.
        let malformed = |e: DnsError| {
            GateStats::bump(&stats.dropped_malformed);
            invalid(&e.to_string())
        };
        let mut upstream: Option<TcpStream> = None;
        while let Some(bytes) = read_frame(&mut client)? {
            let query = parse_message(&bytes).map_err(&malformed)?;
            let (qname, qtype) = parse_query(&query).map_err(&malformed)?;
            note_shape(&self.shared, self.endpoint, &qname);
            let Some(allowed) = judge_query(&self.shared, self.endpoint, &qname, self.resolver, tgid, self.cgroup_id) else {
                GateStats::bump(&stats.dropped_unknown_endpoint);
                return Err(invalid("endpoint gone"));
            };
            if !allowed {
                // Answered here: the query never leaves the node.
                GateStats::bump(&stats.queries_refused);
                let reply = refusal(&query, self.deny_rcode).to_vec().map_err(|e| invalid(&e.to_string()))?;
                write_frame(&mut client, &reply)?;
                continue;
            }
            let up = match &mut upstream {
                Some(u) => u,
                None => {
                    let u = TcpStream::connect_timeout(&self.resolver, IO_TIMEOUT)?;
                    u.set_read_timeout(Some(IO_TIMEOUT))?;
                    u.set_write_timeout(Some(IO_TIMEOUT))?;
                    upstream.insert(u)
                }
            };
            write_frame(up, &bytes)?;
            let answer = read_frame(up)?.ok_or_else(|| invalid("resolver closed the connection"))?;
            let mut msg = parse_message(&answer).map_err(&malformed)?;
            // Our own connection to the resolver, but still: the answer
            // must be to this query.
            if transaction_id(&msg) != transaction_id(&query)
                || crate::dns::question(&msg) != Some((qname.clone(), qtype))
            {
                GateStats::bump(&stats.answers_unsolicited);
                return Err(invalid("answer does not match the query"));
            }
            let learned = learnable(&msg, MAX_CNAME_CHAIN).map_err(&malformed)?;
            let Some(stripped) = vet_answer(&self.shared, self.endpoint, 0, self.cgroup_id, &qname, learned.as_ref(), &mut msg)
            else {
                return Err(invalid("answer not learned"));
            };
            if stripped.is_empty() {
                write_frame(&mut client, &answer)?;
            } else {
                GateStats::bump(&stats.answers_stripped);
                let rewritten = msg.to_vec().map_err(|e| invalid(&e.to_string()))?;
                write_frame(&mut client, &rewritten)?;
            }
            GateStats::bump(&stats.released);
        }
        Ok(())
    }
}

//! The TCP side of a DNS gate, in the workload's namespace. One thread per
//! gate (the one that opened it there) serves every client connection: a
//! single-threaded tokio runtime, nonblocking sockets, epoll. Each client
//! connection gets its own connection to the resolver, made from that
//! thread, so from the workload's namespace.
//!
//! Bounds, so a workload cannot grow the agent (a thread per connection
//! once let 1,500 idle connections make 1,500 threads):
//! - `MAX_CONNS` connections per gate. A new one over it closes the
//!   connection that has waited longest for its next query (it holds no
//!   query); if every one is in the middle of a query, the new one is
//!   closed at once instead. Both are counted per endpoint (`tcp_evicted`,
//!   `tcp_refused`).
//! - Every wait is at most `IO_TIMEOUT`: for the client's next whole query,
//!   for the resolver (connecting, taking the query, answering), and for the
//!   client to take its answer; then the connection ends. No connection
//!   waits on the thread: a silent or slow client delays only itself.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agent_common::proto;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::{
    GateCtx,
    slots::{Slot, Slots},
    upstream::Upstream,
};
use crate::{
    dns::stream::{read_frame_async, write_frame_async},
    dnsgate::{
        DnsStats,
        engine::{Client, Engine, QueryVerdict},
    },
};

/// How long a client or the resolver may take for one step: the client's
/// next query (an idle connection ends after this), the resolver's
/// connection or answer, a write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once per gate.
pub(super) const MAX_CONNS: usize = 32;
/// How often the gate checks its stop flags.
const STOP_CHECK: Duration = Duration::from_millis(200);

type Stop = (Arc<AtomicBool>, Arc<AtomicBool>);

/// Serves the gate's listener until a stop flag is set, on this thread
/// (which is in the workload's namespace). `netns_cookie`: the
/// namespace's, to name each client's process (noted by `skb::egress` from
/// its SYN in `GATE_CLIENTS`) in the log.
pub(super) fn accept_loop(listener: std::net::TcpListener, conn: GateCtx, stop: Stop) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
        Ok(rt) => rt,
        Err(e) => {
            // The listener closes: DNS over TCP from here fails (closed).
            warn!(error = %e, "TCP DNS gate cannot start");
            return;
        }
    };
    rt.block_on(accept_all(listener, conn, stop));
    // Dropping the runtime closes the connections still open.
}

async fn accept_all(listener: std::net::TcpListener, conn: GateCtx, stop: Stop) {
    let listener = match listener.set_nonblocking(true).and_then(|()| TcpListener::from_std(listener)) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "TCP DNS gate cannot listen");
            return;
        }
    };
    let slots = Arc::new(Mutex::new(Slots::new(MAX_CONNS)));
    // Wakes up only to check for a stop: an idle gate (one per namespace,
    // endpoint and resolver) must not steal time from the workload's CPUs.
    let mut tick = tokio::time::interval(STOP_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((client, peer)) => conn.admit(client, peer, &slots),
                Err(e) => {
                    warn!(error = %e, "TCP DNS gate accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            _ = tick.tick() => {
                if stop.0.load(Ordering::Relaxed) || stop.1.load(Ordering::Relaxed) {
                    return;
                }
            }
        }
    }
}

/// `f`, or `TimedOut` after `IO_TIMEOUT`.
async fn within<T>(f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(IO_TIMEOUT, f).await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

impl GateCtx {
    /// Takes a new connection if `slots` has room (or makes some), else
    /// closes it; counted either way.
    fn admit(&self, client: TcpStream, peer: SocketAddr, slots: &Arc<Mutex<Slots>>) {
        let (stats, endpoint) = (&self.engine.stats, self.who.endpoint);
        let Some((slot, evicted)) = Slots::take(slots) else {
            stats.with_endpoint(endpoint, |s| s.tcp_refused += 1);
            debug!(endpoint, "TCP DNS gate full; connection closed");
            return;
        };
        if evicted {
            stats.with_endpoint(endpoint, |s| s.tcp_evicted += 1);
        }
        let who = self.client(peer.port(), proto::TCP);
        let c = self.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(&c.engine, &c.upstream, client, &who, &slot).await {
                debug!(error = %e, "TCP DNS gate connection closed");
            }
        });
    }
}

/// One client connection: each length-prefixed query judged, a refusal
/// answered here, an allowed one sent to `who.resolver` over a connection
/// of its own (made where `upstream` says) and its answer judged, learned
/// from and written back.
pub(super) async fn serve(
    engine: &Engine,
    upstream_at: &Upstream,
    mut client: TcpStream,
    who: &Client,
    slot: &Slot,
) -> io::Result<()> {
    let mut upstream: Option<TcpStream> = None;
    loop {
        slot.idle(true);
        let next = tokio::select! {
            biased;
            () = slot.evicted() => return Err(io::Error::other("closed to make room (connection cap)")),
            r = within(read_frame_async(&mut client)) => r?,
        };
        let Some(bytes) = next else { return Ok(()) };
        slot.idle(false);
        let q = match engine.on_query(who, &bytes) {
            QueryVerdict::Forward(q) => q,
            // Answered here: the query never leaves the node.
            QueryVerdict::Refuse(_, reply) => {
                within(write_frame_async(&mut client, &reply)).await?;
                continue;
            }
            // Bytes we cannot vouch for end the connection (counted).
            QueryVerdict::Drop => return Err(invalid("query not accepted")),
        };
        let up = match &mut upstream {
            Some(u) => u,
            None => upstream.insert(within(upstream_at.tcp(who.resolver)).await?),
        };
        within(write_frame_async(up, &bytes)).await?;
        let answer = within(read_frame_async(up)).await?.ok_or_else(|| invalid("resolver closed the connection"))?;
        // Our own connection to the resolver, but still: the answer must
        // be to this query (the engine checks).
        let Some(out) = engine.on_answer(who, &q, &answer) else {
            return Err(invalid("answer not accepted"));
        };
        within(write_frame_async(&mut client, &out)).await?;
        DnsStats::bump(&engine.stats.released);
    }
}

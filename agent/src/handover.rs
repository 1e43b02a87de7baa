//! Handing the DNS gate from one agent process to the next (node mode with
//! a pin path), so a restart or a DaemonSet rolling update (`maxSurge: 1`:
//! the new pod starts while the old one still runs) loses neither learned
//! names nor DNS lookups in flight.
//!
//! The kernel side needs no handover: programs, links and maps are pinned
//! (`datapath::pin`), and both agents' programs write into the same pinned
//! rings. What lives only in user space is handed over here:
//! - the queries waiting for their answers (`PendingRecord`): an answer
//!   still in the ring is paired by the new agent with the query the old
//!   one consumed;
//! - the learned (name, IP) pairs with their expiry (`LearnedRecord`), so
//!   caps, expiry and the log's host names go on where they were.
//!
//! Protocol, over `<state dir>/agent.sock` (a Unix socket, so only root on
//! the node can ask): the new agent connects and writes `takeover\n`; the
//! old agent stops consuming the rings at a record boundary, answers with
//! one JSON `Handover`, and from then on only waits for its signal. A ring
//! has one consumer at any time; records produced in between wait in the
//! ring (held answers are late by a few ms, never lost).
//!
//! If no agent answers (it crashed, or stopped on its own), the new agent
//! reads `<state dir>/state.json`: written by the old agent when it stopped
//! and, while it ran, about every second when something was learned.

use std::{
    fs,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{info, warn};

use crate::telemetry::carry::Counters;

pub const SOCKET: &str = "agent.sock";
pub const SNAPSHOT: &str = "state.json";
const REQUEST: &str = "takeover";
/// Bound on a handover message (a full pending table and 200k pairs fit).
const MAX_MESSAGE: u64 = 256 << 20;

#[derive(Debug, Error)]
pub enum HandoverError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a handover message: {source}")]
    Format { path: PathBuf, source: serde_json::Error },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    pub pending: Vec<PendingRecord>,
    pub learned: Vec<LearnedRecord>,
    /// User-space counters (`telemetry::carry`): absent from a previous
    /// release's message, so optional.
    #[serde(default, skip_serializing_if = "Counters::is_empty")]
    pub counters: Counters,
}

/// A query the old agent let through whose answer has not come yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingRecord {
    pub endpoint: u32,
    pub client: SocketAddr,
    pub resolver: SocketAddr,
    pub txid: u16,
    pub qname: String,
    pub qtype: u16,
    pub allowed: bool,
    pub age_ms: u64,
}

/// One learned (name, IP) pair; the endpoint by its cgroup (endpoint ids
/// are kept too, but the cgroup is what a config names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedRecord {
    pub cgroup_id: u64,
    pub name: String,
    pub ip: IpAddr,
    /// CLOCK_BOOTTIME ns (survives the process; the node did not reboot,
    /// or the pins would be gone).
    pub expires_ns: u64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HandoverError + '_ {
    move |source| HandoverError::Io { path: path.to_owned(), source }
}

/// Asks the agent listening in `dir` to hand over. `Ok(None)`: nobody
/// listens (no socket, or a stale one).
pub fn request(dir: &Path) -> Result<Option<Handover>, HandoverError> {
    let path = dir.join(SOCKET);
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(HandoverError::Io { path, source: e }),
    };
    // The old agent answers once its gate stopped (at most one poll period).
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(io_err(&path))?;
    writeln!(stream, "{REQUEST}").map_err(io_err(&path))?;
    let mut text = Vec::new();
    stream.take(MAX_MESSAGE).read_to_end(&mut text).map_err(io_err(&path))?;
    serde_json::from_slice(&text).map(Some).map_err(|source| HandoverError::Format { path, source })
}

/// Answers handover requests on `dir/agent.sock` from a thread, until
/// stopped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Server {
    /// Binds the socket (replacing a dead agent's stale one) and serves it;
    /// `hand_over` runs once per takeover request.
    pub fn start(dir: &Path, hand_over: impl Fn() -> Handover + Send + 'static) -> Result<Self, HandoverError> {
        let listener = listen(dir)?;
        let path = dir.join(SOCKET);
        listener.set_nonblocking(true).map_err(io_err(&path))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("handover".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let _ = s.set_nonblocking(false);
                            match serve(s, &hand_over) {
                                Ok(true) => info!("handed over to the next agent; enforcement stays pinned"),
                                Ok(false) => {}
                                Err(e) => warn!(error = %e, "handover request failed"),
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(20)),
                        Err(e) => {
                            warn!(error = %e, "handover socket failed");
                            thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            })
            .map_err(io_err(&path))?;
        Ok(Self { stop, thread })
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Binds `dir/agent.sock` for the next agent (a stale socket file of a dead
/// agent is replaced).
pub fn listen(dir: &Path) -> Result<UnixListener, HandoverError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join(SOCKET);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(HandoverError::Io { path, source: e }),
    }
    UnixListener::bind(&path).map_err(io_err(&path))
}

/// Serves one connection: `Ok(true)` if it asked for a takeover (then
/// `hand_over` ran and its answer was sent).
pub fn serve(stream: UnixStream, hand_over: impl FnOnce() -> Handover) -> io::Result<bool> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?.take(64)).read_line(&mut line)?;
    if line.trim() != REQUEST {
        return Ok(false);
    }
    let h = hand_over();
    let mut stream = stream;
    serde_json::to_writer(&mut stream, &h).map_err(io::Error::other)?;
    stream.flush()?;
    Ok(true)
}

/// Writes the snapshot atomically (temporary file, then rename).
pub fn write_snapshot(dir: &Path, h: &Handover) -> Result<(), HandoverError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join(SNAPSHOT);
    let tmp = dir.join(format!("{SNAPSHOT}.tmp"));
    let text = serde_json::to_vec(h).map_err(|source| HandoverError::Format { path: path.clone(), source })?;
    fs::write(&tmp, text).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// The snapshot, if there is one.
pub fn read_snapshot(dir: &Path) -> Result<Option<Handover>, HandoverError> {
    let path = dir.join(SNAPSHOT);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HandoverError::Io { path, source: e }),
    };
    serde_json::from_slice(&text).map(Some).map_err(|source| HandoverError::Format { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handover {
        Handover {
            pending: vec![PendingRecord {
                endpoint: 3,
                client: "198.18.1.2:40000".parse().unwrap(),
                resolver: "198.51.100.53:53".parse().unwrap(),
                txid: 7,
                qname: "api.example.test".into(),
                qtype: 1,
                allowed: true,
                age_ms: 12,
            }],
            learned: vec![LearnedRecord {
                cgroup_id: 99,
                name: "api.example.test".into(),
                ip: "203.0.113.10".parse().unwrap(),
                expires_ns: 123,
            }],
            counters: Counters {
                endpoints: vec![crate::telemetry::carry::EndpointCounters {
                    cgroup_id: 99,
                    queries: [[1, 2, 3, 4, 5]; 4],
                    dns: crate::dnsgate::EndpointDnsStats { refused: 6, ..Default::default() },
                }],
                node: vec![("released".into(), 7)],
                latency: (1, 1000, vec![1; 10]),
            },
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("portcullis-handover-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn snapshot_round_trips_and_rejects_garbage() {
        let d = tempdir("snap");
        assert_eq!(read_snapshot(&d).unwrap(), None);
        write_snapshot(&d, &sample()).unwrap();
        assert_eq!(read_snapshot(&d).unwrap(), Some(sample()));
        fs::write(d.join(SNAPSHOT), b"{\"pending\": 1}").unwrap();
        assert!(matches!(read_snapshot(&d), Err(HandoverError::Format { .. })));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn takeover_over_the_socket() {
        let d = tempdir("sock");
        assert_eq!(request(&d).unwrap(), None, "nobody listens yet");
        let listener = listen(&d).unwrap();
        let server = thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            serve(s, sample).unwrap()
        });
        assert_eq!(request(&d).unwrap(), Some(sample()));
        assert!(server.join().unwrap());
        // The listener is gone: a stale socket file reads as nobody there.
        assert_eq!(request(&d).unwrap(), None);
        fs::remove_dir_all(&d).unwrap();
    }
}

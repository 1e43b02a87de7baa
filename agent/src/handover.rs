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

pub const SOCKET: &str = "agent.sock";
/// A query of live state (`portcullis explain`): this word, a space and a
/// JSON request on one line; one JSON answer back.
pub const EXPLAIN: &str = "explain";
/// Bound on a query line.
const MAX_QUERY: u64 = 64 << 10;

/// Answers queries of live state (`EXPLAIN`): request JSON -> answer JSON.
pub type Ask = Arc<dyn Fn(&str) -> String + Send + Sync>;
/// What a takeover request gets (node mode only).
pub type HandOver = Box<dyn Fn() -> Handover + Send>;
pub const SNAPSHOT: &str = "state.json";
const REQUEST: &str = "takeover";
/// The request of an agent that also takes the user-space counters. A
/// previous release asks with `REQUEST` and rejects unknown fields, so it
/// gets the message without them (a rollback must still hand over), and
/// the snapshot keeps them in a file of their own (`COUNTERS`).
const REQUEST_COUNTERS: &str = "takeover counters";
pub const COUNTERS: &str = "counters.json";
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<serde_json::Value>,
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
    // A previous release does not know the request with counters: it
    // closes the connection without a word, having handed nothing over
    // (its gate still runs). Then ask the way it knows.
    match ask(dir, REQUEST_COUNTERS)? {
        Some(text) if text.is_empty() => {}
        Some(text) => return parse(dir, &text).map(Some),
        None => return Ok(None),
    }
    match ask(dir, REQUEST)? {
        // An agent that hands nothing over (`exec --state-dir`: its
        // socket answers `explain` only).
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => parse(dir, &text).map(Some),
        None => Ok(None),
    }
}

/// The raw answer to `request`; `None`: nobody listens.
fn ask(dir: &Path, request: &str) -> Result<Option<Vec<u8>>, HandoverError> {
    let path = dir.join(SOCKET);
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(HandoverError::Io { path, source: e }),
    };
    // The old agent answers once its gate stopped (at most one poll period).
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(io_err(&path))?;
    writeln!(stream, "{request}").map_err(io_err(&path))?;
    let mut text = Vec::new();
    stream.take(MAX_MESSAGE).read_to_end(&mut text).map_err(io_err(&path))?;
    Ok(Some(text))
}

fn parse(dir: &Path, text: &[u8]) -> Result<Handover, HandoverError> {
    serde_json::from_slice(text).map_err(|source| HandoverError::Format { path: dir.join(SOCKET), source })
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
    /// `ask` answers `EXPLAIN` queries (root only).
    pub fn start(dir: &Path, hand_over: Option<HandOver>, ask: Option<Ask>) -> Result<Self, HandoverError> {
        if hand_over.is_none() && UnixStream::connect(dir.join(SOCKET)).is_ok() {
            // Only a node agent replaces a live socket (it took over from
            // the agent behind it); an explain-only one must not cut a
            // node agent off from its successor.
            return Err(HandoverError::Io {
                path: dir.join(SOCKET),
                source: io::Error::new(io::ErrorKind::AddrInUse, "another agent answers on this socket: use another --state-dir"),
            });
        }
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
                            match serve(s, hand_over.as_deref(), ask.as_ref()) {
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
    let listener = UnixListener::bind(&path).map_err(io_err(&path))?;
    // Root only: the socket hands over the agent's state and answers
    // questions about every pod (the directory is root's too).
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io_err(&path))?;
    Ok(listener)
}

/// Serves one connection: `Ok(true)` if it asked for a takeover (then
/// `hand_over` ran and its answer was sent).
pub fn serve(stream: UnixStream, hand_over: Option<&(dyn Fn() -> Handover + Send)>, ask: Option<&Ask>) -> io::Result<bool> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?.take(MAX_QUERY)).read_line(&mut line)?;
    if let (Some(q), Some(ask)) = (line.strip_prefix(EXPLAIN).and_then(|r| r.strip_prefix(' ')), ask) {
        // Also checked here, not only by the file mode: a socket passed on
        // by a root process must not answer anyone else.
        let root = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials).is_ok_and(|c| c.uid() == 0);
        let answer = if root { ask(q.trim_end()) } else { r#"{"error":"only root may ask"}"#.to_owned() };
        let mut stream = stream;
        stream.write_all(answer.as_bytes())?;
        stream.write_all(b"\n")?;
        stream.flush()?;
        return Ok(false);
    }
    let with_counters = match line.trim() {
        REQUEST => false,
        REQUEST_COUNTERS => true,
        _ => return Ok(false),
    };
    let Some(hand_over) = hand_over else {
        // Nothing to hand over: closed without a word, which the asking
        // agent reads as "nobody to take over from".
        warn!("another agent asked this one to hand over; it has nothing to hand over");
        return Ok(false);
    };
    let mut h = hand_over();
    if !with_counters {
        h.counters = None;
    }
    let mut stream = stream;
    serde_json::to_writer(&mut stream, &h).map_err(io::Error::other)?;
    stream.flush()?;
    Ok(true)
}

/// Writes the snapshot atomically (temporary file, then rename).
/// The counters go to `COUNTERS`, the rest to `SNAPSHOT` in the previous
/// release's format.
pub fn write_snapshot(dir: &Path, h: &Handover) -> Result<(), HandoverError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let state = Handover { pending: h.pending.clone(), learned: h.learned.clone(), counters: None };
    write_atomic(dir, SNAPSHOT, &state)?;
    match &h.counters {
        Some(c) => write_atomic(dir, COUNTERS, c),
        None => Ok(()),
    }
}

fn write_atomic(dir: &Path, name: &str, value: &impl Serialize) -> Result<(), HandoverError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let text = serde_json::to_vec(value).map_err(|source| HandoverError::Format { path: path.clone(), source })?;
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
    let mut h: Handover = serde_json::from_slice(&text).map_err(|source| HandoverError::Format { path, source })?;
    // Counters that do not read are only counters: start from 0.
    let counters = dir.join(COUNTERS);
    match fs::read(&counters).map(|t| serde_json::from_slice::<serde_json::Value>(&t)) {
        Ok(Ok(c)) => h.counters = Some(c),
        Ok(Err(e)) => warn!(path = %counters.display(), error = %e, "unreadable counters; they start from 0"),
        Err(_) => {}
    }
    Ok(Some(h))
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
            counters: Some(serde_json::json!({"endpoints": [{"cgroup_id": 99, "refused": 6}], "node": [["released", 7]]})),
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
        // The state file is in the previous release's format (which rejects
        // unknown fields): no counters in it.
        let state: serde_json::Value = serde_json::from_slice(&fs::read(d.join(SNAPSHOT)).unwrap()).unwrap();
        assert!(state.get("counters").is_none(), "{state}");
        fs::write(d.join(SNAPSHOT), b"{\"pending\": 1}").unwrap();
        assert!(matches!(read_snapshot(&d), Err(HandoverError::Format { .. })));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn asking_a_previous_release_falls_back_to_its_request() {
        let d = tempdir("oldsrv");
        let listener = listen(&d).unwrap();
        let old = Handover { counters: None, ..sample() };
        let want = old.clone();
        // The previous release's server: only `takeover`, else close.
        let server = thread::spawn(move || {
            for _ in 0..2 {
                let (s, _) = listener.accept().unwrap();
                let mut line = String::new();
                BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
                if line.trim() == REQUEST {
                    serde_json::to_writer(&s, &old).unwrap();
                    return true;
                }
            }
            false
        });
        assert_eq!(request(&d).unwrap(), Some(want));
        assert!(server.join().unwrap());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_previous_release_asking_gets_no_counters() {
        let d = tempdir("old");
        let listener = listen(&d).unwrap();
        let server = thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            serve(s, Some(&sample), None).unwrap()
        });
        let mut s = UnixStream::connect(d.join(SOCKET)).unwrap();
        writeln!(s, "{REQUEST}").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(server.join().unwrap());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v.get("counters").is_none(), "{v}");
        let h: Handover = serde_json::from_str(&text).unwrap();
        assert_eq!(h, Handover { counters: None, ..sample() });
        fs::remove_dir_all(&d).unwrap();
    }

    /// `exec` and an unpinned agent answer `explain` only: a takeover
    /// request gets nothing, which the asking agent reads as nobody there
    /// (it starts fresh rather than failing).
    #[test]
    fn an_agent_without_state_hands_nothing_over() {
        let d = tempdir("none");
        let ask: Ask = Arc::new(|q: &str| format!("answer to {q}"));
        let server = Server::start(&d, None, Some(ask)).unwrap();
        assert_eq!(request(&d).unwrap(), None);
        let mut s = UnixStream::connect(d.join(SOCKET)).unwrap();
        writeln!(s, "{EXPLAIN} {{}}").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let want = if nix::unistd::geteuid().is_root() { "answer to {}\n" } else { "{\"error\":\"only root may ask\"}\n" };
        assert_eq!(text, want);
        // A second one on the same directory does not cut the first off.
        let Err(e) = Server::start(&d, None, None) else { panic!("a second explain-only server replaced the first") };
        assert!(e.to_string().contains("another agent answers"), "{e}");
        server.stop();
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn takeover_over_the_socket() {
        let d = tempdir("sock");
        assert_eq!(request(&d).unwrap(), None, "nobody listens yet");
        let listener = listen(&d).unwrap();
        let server = thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            serve(s, Some(&sample), None).unwrap()
        });
        assert_eq!(request(&d).unwrap(), Some(sample()));
        assert!(server.join().unwrap());
        // The listener is gone: a stale socket file reads as nobody there.
        assert_eq!(request(&d).unwrap(), None);
        fs::remove_dir_all(&d).unwrap();
    }
}

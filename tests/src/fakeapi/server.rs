//! The listener: a hyper HTTP/1.1 server on a runtime of its own, so the
//! fake serves whether the test is synchronous or runs its own runtime.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpSocket},
    runtime::Runtime,
    task::{JoinHandle, JoinSet},
};

use super::{http, state::Shared};

pub(super) struct Server {
    rt: Option<Runtime>,
    addr: SocketAddr,
    /// The accept loop; it owns every connection, so aborting it closes them all.
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    pub(super) fn start(shared: Arc<Shared>, addr: SocketAddr) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("fakeapi").enable_all().build()?;
        let listener = bind(&rt, addr)?;
        let addr = listener.local_addr()?;
        let server = Self { rt: Some(rt), addr, accept: Mutex::new(None) };
        server.serve(shared, listener)?;
        Ok(server)
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn runtime(&self) -> io::Result<&Runtime> {
        self.rt.as_ref().ok_or_else(|| io::Error::other("fake API server runtime is gone"))
    }

    fn serve(&self, shared: Arc<Shared>, listener: TcpListener) -> io::Result<()> {
        let task = self.runtime()?.spawn(accept_loop(listener, shared));
        if let Some(old) = self.accept_slot().replace(task) {
            old.abort();
        }
        Ok(())
    }

    fn accept_slot(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.accept.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Close the listener and every connection (open watches included).
    pub(super) fn stop(&self) {
        let Some(task) = self.accept_slot().take() else { return };
        task.abort();
        // Abort is asynchronous; wait (briefly, without a runtime) so that the
        // port is closed when this returns.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !task.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Listen again on the same address.
    pub(super) fn restart(&self, shared: Arc<Shared>) -> io::Result<()> {
        self.stop();
        // The old socket may take a moment to be released.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match bind(self.runtime()?, self.addr) {
                Ok(l) => break l,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        self.serve(shared, listener)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Dropping a runtime blocks, which panics inside an async test;
            // this does not, and still drops every task (and socket).
            rt.shutdown_background();
        }
    }
}

/// Listen with `SO_REUSEADDR`: connections the server closed linger in
/// TIME_WAIT on its port, and `restart` must be able to bind it again.
fn bind(rt: &Runtime, addr: SocketAddr) -> io::Result<TcpListener> {
    // Entering (not blocking on) the runtime is allowed inside a test's own
    // runtime, and is what registering the socket needs.
    let _guard = rt.enter();
    let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((sock, _)) = accepted else {
                    // Out of file descriptors and the like: try again shortly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| http::serve(shared.clone(), req));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(sock), svc).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

//! RAII guard for child processes the bench (or a test) starts.
//!
//! Rules this enforces: we only ever signal processes *we* spawned, by their
//! PID, and only while they are still our un-reaped child (so the PID cannot
//! have been recycled for someone else's process).

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A spawned child that is stopped (SIGTERM, grace period, SIGKILL) and
/// reaped when dropped, including during a panic unwind.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    grace: Duration,
}

impl ChildGuard {
    /// Default time between SIGTERM and SIGKILL on drop.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

    /// Spawns `cmd` with `PR_SET_PDEATHSIG(SIGKILL)`, so the child also dies
    /// if the whole test process is killed before any `Drop` can run.
    ///
    /// The kernel ties the death signal to the *thread* that forked, so the
    /// fork happens on one process-lifetime helper thread: a guard created on
    /// a short-lived test thread is not killed when that thread ends.
    pub fn spawn(cmd: Command) -> io::Result<Self> {
        spawn_on_keeper_thread(cmd).map(Self::new)
    }

    /// Wraps an already spawned child (no death signal is set up).
    pub fn new(child: Child) -> Self {
        Self { child: Some(child), grace: Self::DEFAULT_GRACE }
    }

    /// Sets the SIGTERM→SIGKILL grace period used by [`stop`](Self::stop)
    /// and on drop. `Duration::ZERO` means SIGKILL straight away.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("ChildGuard already stopped")
    }

    /// `Some(status)` once the child has exited (it is then reaped).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child_mut().try_wait()
    }

    /// Stops the child now (SIGTERM, up to the grace period, then SIGKILL) and
    /// reaps it. Idempotent; returns the exit status if it could be collected.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // Not reaped yet, so the PID still belongs to our (possibly zombie) child.
        if !self.grace.is_zero() {
            // SAFETY: plain kill(2) on our own un-reaped child's PID.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + self.grace;
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(Some(status)) => return Some(status),
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => break,
                }
            }
        }
        let _ = child.kill(); // SIGKILL; std refuses if it was already reaped
        child.wait().ok()
    }

    /// Disarms the guard and hands the child back; the caller owns cleanup.
    pub fn into_inner(mut self) -> Child {
        self.child.take().expect("ChildGuard already stopped")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `cmd.spawn()` on a helper thread that lives as long as the process.
fn spawn_on_keeper_thread(mut cmd: Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                return Err(io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }

    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("bench-spawner".into())
            .spawn(move || rx.into_iter().for_each(|job| job()))
            .expect("start bench-spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = reply_tx.send(cmd.spawn());
    });
    keeper.lock().unwrap_or_else(|e| e.into_inner()).send(job).map_err(|_| io::Error::other("bench-spawner thread is gone"))?;
    reply_rx.recv().map_err(|_| io::Error::other("bench-spawner dropped the request"))?
}

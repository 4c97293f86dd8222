//! The background threads of an RDMA fabric (its target or connection service), stopped and
//! joined when the fabric drops.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ::efa::Context;

use crate::affinity::{Affinity, CpuSet};
use crate::FabricError;

/// The cpus `affinity` puts the threads (`what`) of `fabric` on, from the NUMA node of its
/// rails' devices (`ctxs`) by default.
pub(crate) fn rail_cpus<'a>(
    fabric: &'static str,
    what: &'static str,
    affinity: &Affinity,
    ctxs: impl Iterator<Item = &'a Arc<Context>>,
) -> Result<Option<CpuSet>, FabricError> {
    let dirs: Vec<_> = ctxs.map(|c| c.info().ibdev_path.clone()).collect();
    affinity
        .for_fabric(fabric, &dirs)
        .map_err(|e| FabricError::affinity(fabric, what, e))
}

/// A fabric's threads and the flag they watch. Dropping it raises the flag and joins them: the
/// fabric keeps it as its first field, so the threads end before anything else of the fabric
/// (registrations above all) goes away.
#[derive(Debug)]
pub(crate) struct Threads {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    /// A listener one of the threads waits on in `accept`, woken by a connection on drop.
    listener: Option<SocketAddr>,
}

impl Threads {
    /// Threads `handles`, which end once `stop` is raised.
    pub(crate) fn new(stop: Arc<AtomicBool>, handles: Vec<JoinHandle<()>>) -> Self {
        Threads {
            stop,
            handles,
            listener: None,
        }
    }

    /// One of the threads waits for connections on `addr`: on drop, after raising the flag, a
    /// connection to it wakes that thread at once (it also looks at the flag every
    /// [`ACCEPT_WAIT`], should the connection fail).
    pub(crate) fn waking(mut self, addr: SocketAddr) -> Self {
        self.listener = Some(addr);
        self
    }
}

/// Longest wait of a thread blocked in `accept` before it looks at its stop flag again.
pub(crate) const ACCEPT_WAIT: Duration = Duration::from_secs(1);

/// Whether `listener` has a connection to accept within `wait` (poll(2)), so that a thread can
/// sleep in the kernel until one comes rather than retry a non-blocking `accept` on a timer.
pub(crate) fn acceptable(listener: &TcpListener, wait: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one initialised pollfd, valid for the call; its descriptor is the listener's,
    // open while the borrowed listener lives.
    unsafe { libc::poll(&mut fd, 1, ms) > 0 }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(addr) = self.listener {
            let mut to = addr;
            if to.ip().is_unspecified() {
                to.set_ip(Ipv4Addr::LOCALHOST.into());
            }
            let _ = TcpStream::connect_timeout(&to, Duration::from_millis(200));
        }
        for t in self.handles.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_stops_and_joins() {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicBool::new(false));
        let (s, v) = (stop.clone(), seen.clone());
        let t = std::thread::spawn(move || {
            // Bounded: the test fails by timeout rather than hanging.
            for _ in 0..10_000 {
                if s.load(Ordering::SeqCst) {
                    v.store(true, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        drop(Threads::new(stop, vec![t]));
        assert!(
            seen.load(Ordering::SeqCst),
            "the thread saw the flag before the join returned"
        );
    }

    #[test]
    fn dropping_wakes_a_thread_asleep_waiting_for_a_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(
            !acceptable(&listener, Duration::from_millis(10)),
            "nobody connected"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let woken = Arc::new(AtomicBool::new(false));
        let (s, w) = (stop.clone(), woken.clone());
        let (ready, waiting) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            // Bounded: a wait long enough that only the drop's connection ends it in time.
            for _ in 0..3 {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let _ = ready.send(());
                if acceptable(&listener, Duration::from_secs(20)) {
                    let _ = listener.accept();
                    w.store(s.load(Ordering::SeqCst), Ordering::SeqCst);
                }
            }
        });
        // Dropped once the thread is (about to be) asleep in the poll.
        waiting.recv().unwrap();
        drop(Threads::new(stop, vec![t]).waking(addr));
        assert!(
            woken.load(Ordering::SeqCst),
            "the drop's connection woke the thread after the flag was raised"
        );
    }
}

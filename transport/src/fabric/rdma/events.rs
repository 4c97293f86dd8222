//! Sleeping target threads: once a target thread's spin window is over, it arms its CQs, polls
//! them once more, and blocks on their completion channels (one per device) instead of sleeping
//! in short intervals, so an idle fabric costs no CPU and a completion wakes it at once.
//!
//! The block is bounded ([`WAIT_BOUND`]) so the thread notices the fabric's stop flag promptly.
//! Devices that cannot raise CQ events (EFA without the kernel's `CQ_NOTIFICATIONS`, the first
//! generation) keep the sleeps of [`Backoff`](super::backoff::Backoff).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use ::efa::{CompChannel, Context, Cq, CqBuilder, Error};

/// Longest block of an idle target thread: bounds how long it takes to notice a stop.
pub(crate) const WAIT_BOUND: Duration = Duration::from_millis(50);

/// The completion channels of one target thread, one per device (a channel serves the CQs of
/// its own context only).
pub(crate) struct Events {
    channels: Vec<CompChannel>,
    fds: Vec<libc::pollfd>,
}

impl Events {
    /// One channel per context of `ctxs`, in order.
    pub(crate) fn new<'a>(
        ctxs: impl IntoIterator<Item = &'a Arc<Context>>,
    ) -> Result<Events, Error> {
        let channels = ctxs
            .into_iter()
            .map(CompChannel::new)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Events::from_channels(channels))
    }

    /// Waits on `channels` (already made, shared with whoever creates CQs on them).
    pub(crate) fn from_channels(channels: Vec<CompChannel>) -> Events {
        let fds = channels
            .iter()
            .map(|c| libc::pollfd {
                fd: c.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Events { channels, fds }
    }

    /// Also ends [`wait`](Self::wait) when `waker` is woken.
    pub(crate) fn watch(&mut self, waker: &Waker) {
        self.fds.push(libc::pollfd {
            fd: waker.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }

    /// The channel of device `i` (the order given to [`new`](Self::new)).
    pub(crate) fn channel(&self, i: usize) -> &CompChannel {
        &self.channels[i]
    }

    /// Blocks until an event arrives on any channel or `timeout` passes, then reads (and so
    /// acknowledges) every pending event. Returns how many there were. Arm the CQs and poll them
    /// once more before calling this, so no completion is left waiting in a queue.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Result<usize, Error> {
        let ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a live array of `fds.len()` pollfds for the duration of the call.
        let n = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::Verbs {
                    call: "poll",
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                    arg: Some(("channels", self.fds.len() as u64)),
                });
            }
        }
        let mut events = 0;
        for c in &self.channels {
            while c.try_event()?.is_some() {
                events += 1;
            }
        }
        Ok(events)
    }
}

/// Wakes a thread blocked in [`Events::wait`] (an `eventfd` it [watches](Events::watch)): work
/// that arrives by another way than a completion, such as a connection request, gets its
/// attention at once.
#[derive(Debug)]
pub(crate) struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub(crate) fn new() -> std::io::Result<Waker> {
        // SAFETY: plain system call; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waker { fd })
    }

    /// Makes the descriptor readable (wakes the watcher, now or at its next wait).
    pub(crate) fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our descriptor. A full counter (never,
        // in practice) already wakes the watcher, so the result does not matter.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Resets the descriptor once the watcher is awake (a no-op when it was not woken).
    pub(crate) fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer from our non-blocking descriptor.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }
}

/// Arms every CQ of `cqs` for its next completion.
pub(crate) fn arm<'a>(cqs: impl IntoIterator<Item = &'a mut Cq>) -> Result<(), Error> {
    cqs.into_iter().try_for_each(|cq| cq.req_notify(false))
}

/// Whether `e` says the device cannot raise completion events (then the caller polls as before).
pub(crate) fn unsupported(e: &Error) -> bool {
    matches!(e, Error::Unsupported { .. })
}

/// A CQ from `base` on `channel` (with its event token) where one is given and the device can
/// raise CQ events; otherwise a plain CQ from `base`.
pub(crate) fn cq_on<'c>(
    base: impl Fn() -> CqBuilder<'c>,
    channel: Option<(&CompChannel, u64)>,
) -> Result<Cq, Error> {
    match channel.map(|(c, token)| base().channel(c, token).build()) {
        Some(Err(e)) if unsupported(&e) => base().build(),
        Some(r) => r,
        None => base().build(),
    }
}

/// A CQ from `base` for rail `i`: on the rail's completion channel while `events` has one; where
/// the device cannot raise events, a plain CQ, and `events` becomes `None` (its owner then
/// polls every rail).
pub(crate) fn cq_for<'c>(
    base: impl Fn() -> CqBuilder<'c>,
    events: &mut Option<Events>,
    i: usize,
) -> Result<Cq, Error> {
    let cq = cq_on(base, events.as_ref().map(|ev| (ev.channel(i), i as u64)))?;
    if !cq.has_channel() {
        *events = None;
    }
    Ok(cq)
}

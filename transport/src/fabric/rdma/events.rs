//! Sleeping target threads: once a target thread's spin window is over, it arms its CQs, polls
//! them once more, and blocks on their completion channels (one per device) instead of sleeping
//! in short intervals, so an idle fabric costs no CPU and a completion wakes it at once.
//!
//! The block is bounded ([`WAIT_BOUND`]) so the thread notices the fabric's stop flag promptly.
//! Devices that cannot raise CQ events (EFA without the kernel's `CQ_NOTIFICATIONS`, the first
//! generation) keep the sleeps of [`Backoff`](super::backoff::Backoff).

use std::os::fd::AsRawFd;
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

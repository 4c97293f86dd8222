//! Completion channels: sleep until a CQ has a completion instead of polling it.
//!
//! A [`CompChannel`] is a file descriptor the device makes readable when an *armed* CQ created
//! on it ([`CqBuilder::channel`](crate::CqBuilder::channel)) receives a completion. Arming is one
//! shot: [`Cq::req_notify`](crate::Cq::req_notify) asks for the next completion's event, and the
//! CQ must be armed again after each event. [`CompChannel`] documents the order of arming,
//! polling and waiting.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::context::Context;
use crate::cq::Cq;
use crate::error::{Error, Result};

/// The channel object shared by a [`CompChannel`] and the CQs created on it; destroyed after
/// the last of them (`ibv_destroy_comp_channel` refuses a channel that CQs still use).
pub(crate) struct ChannelInner {
    ctx: Arc<Context>,
    raw: NonNull<efa_sys::ibv_comp_channel>,
}

// SAFETY: a completion channel is a kernel file descriptor plus its context pointer; libibverbs
// allows `ibv_get_cq_event` on it from any thread, and nothing here mutates it through `&self`
// except through the library's own calls.
unsafe impl Send for ChannelInner {}
// SAFETY: as above: reading events from several threads is allowed by libibverbs (each read
// returns one whole event).
unsafe impl Sync for ChannelInner {}

impl std::fmt::Debug for ChannelInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelInner")
            .field("raw", &self.raw)
            .finish_non_exhaustive()
    }
}

impl ChannelInner {
    pub(crate) fn as_raw(&self) -> *mut efa_sys::ibv_comp_channel {
        self.raw.as_ptr()
    }

    pub(crate) fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

impl Drop for ChannelInner {
    fn drop(&mut self) {
        // SAFETY: every CQ created on this channel holds this Arc, so all of them are destroyed;
        // the channel is destroyed once.
        let rc = unsafe { (self.ctx.verbs().ibv_destroy_comp_channel)(self.raw.as_ptr()) };
        crate::teardown::check("ibv_destroy_comp_channel", rc);
    }
}

/// A completion channel (`ibv_comp_channel`): a file descriptor that becomes readable when an
/// armed CQ created on it receives a completion.
///
/// The descriptor is non-blocking: [`wait`](Self::wait) sleeps in `poll(2)`, and
/// [`try_event`](Self::try_event) never blocks, so the fd can go into epoll, mio or tokio
/// ([`as_raw_fd`](AsRawFd::as_raw_fd)) and be drained when it is readable.
///
/// # The arm-then-poll race
///
/// A completion that arrives after the last poll but before the CQ is armed raises no event: a
/// thread that polls, finds nothing, arms and waits could sleep while a completion sits in the
/// queue. The order that never loses one is:
///
/// 1. arm the CQ ([`Cq::req_notify`](crate::Cq::req_notify));
/// 2. poll it once more, and handle what that finds (if anything, go back to polling);
/// 3. only then wait ([`CompChannel::wait`]).
///
/// Any completion that lands after step 1 raises an event, and any that landed before it is
/// found by step 2. After an event, poll the CQ until it is empty, then arm, poll, wait again.
///
/// # Events and acknowledgements
///
/// Every event read from the channel must be acknowledged (`ibv_ack_cq_events`) before its CQ
/// is destroyed, or `ibv_destroy_cq` waits for ever. [`CompChannel::wait`] and
/// [`CompChannel::try_event`] acknowledge each event as they read it, so a [`CqEvent`] owes
/// nothing and dropping it is always fine. (Acknowledging takes a mutex in libibverbs; it is paid
/// once per wake-up, never on the polling path.)
///
/// # Support
///
/// EFA devices report completion events through the kernel capability `CQ_NOTIFICATIONS`, which
/// `efadv_query_device` does not expose: libefa refuses a CQ on a channel with `EOPNOTSUPP` when
/// the device lacks it (the first generation, c5n/p3dn/m5n/hpc6a, does).
/// [`CqBuilder::build`](crate::CqBuilder::build) turns that into [`Error::Unsupported`], so a
/// caller can fall back to polling. EFA also refuses solicited-only events.
#[derive(Clone)]
pub struct CompChannel {
    inner: Arc<ChannelInner>,
}

impl std::fmt::Debug for CompChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompChannel")
            .field("fd", &self.as_raw_fd())
            .finish_non_exhaustive()
    }
}

/// An event read from a [`CompChannel`]: the CQ it names was armed and received a completion.
/// Already acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEvent {
    token: u64,
    cq: usize,
}

impl CqEvent {
    /// The token the CQ was created with ([`CqBuilder::channel`](crate::CqBuilder::channel)).
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Whether the event is for `cq`.
    pub fn is_for(&self, cq: &Cq) -> bool {
        self.cq == efa_sys::ibv_cq_ex_to_cq(cq.as_raw()) as usize
    }
}

impl CompChannel {
    /// A new completion channel on `ctx`, its descriptor made non-blocking and close-on-exec.
    pub fn new(ctx: &Arc<Context>) -> Result<Self> {
        // SAFETY: the context is open.
        let raw = unsafe { (ctx.verbs().ibv_create_comp_channel)(ctx.as_raw()) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last_os("ibv_create_comp_channel"))?;
        let ch = CompChannel {
            inner: Arc::new(ChannelInner {
                ctx: Arc::clone(ctx),
                raw,
            }),
        };
        let fd = ch.as_raw_fd();
        // SAFETY: `fd` is the channel's own open descriptor; F_GETFL/F_SETFL take no pointer.
        let set = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        if !set {
            return Err(Error::verbs_arg(
                "fcntl(O_NONBLOCK)",
                crate::error::last_errno(),
                "fd",
                fd as u64,
            ));
        }
        Ok(ch)
    }

    pub(crate) fn inner(&self) -> &Arc<ChannelInner> {
        &self.inner
    }

    /// The raw channel; valid while `self` (or a CQ created on it) lives.
    pub fn as_raw(&self) -> *mut efa_sys::ibv_comp_channel {
        self.inner.as_raw()
    }

    /// Reads one pending event without blocking: `Ok(None)` when there is none. Call it until it
    /// returns `None` once the descriptor polls readable.
    pub fn try_event(&self) -> Result<Option<CqEvent>> {
        let mut cq: *mut efa_sys::ibv_cq = std::ptr::null_mut();
        let mut context: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: the channel is live; both out-pointers point to live locals. The descriptor is
        // non-blocking, so the call returns at once when no event is pending.
        let rc = unsafe {
            (self.inner.ctx.verbs().ibv_get_cq_event)(self.as_raw(), &mut cq, &mut context)
        };
        if rc != 0 {
            return match crate::error::last_errno() {
                libc::EAGAIN | libc::EINTR => Ok(None),
                e => Err(Error::verbs_arg(
                    "ibv_get_cq_event",
                    e,
                    "fd",
                    self.as_raw_fd() as u64,
                )),
            };
        }
        if cq.is_null() {
            return Err(Error::verbs("ibv_get_cq_event", libc::EIO));
        }
        // SAFETY: the event names a live CQ: its destruction waits until its events are
        // acknowledged, which is this call.
        unsafe { (self.inner.ctx.verbs().ibv_ack_cq_events)(cq, 1) };
        Ok(Some(CqEvent {
            token: context as usize as u64,
            cq: cq as usize,
        }))
    }

    /// Blocks until an event arrives or `timeout` passes (`Duration::MAX`, or anything over
    /// 24 days: no deadline). Returns the event (acknowledged), or `Ok(None)` on timeout.
    ///
    /// Arm the CQs and poll them once more before calling this (see [`CompChannel`]).
    /// A zero timeout only checks.
    pub fn wait(&self, timeout: Duration) -> Result<Option<CqEvent>> {
        let fd = self.as_raw_fd();
        let start = Instant::now();
        loop {
            if let Some(ev) = self.try_event()? {
                return Ok(Some(ev));
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            if !poll_readable(fd, left)? {
                // poll(2) rounds up, so the timeout has passed; one last check for a late event.
                return self.try_event();
            }
        }
    }
}

/// `poll(2)` for readability of `fd` for up to `timeout`; false on timeout. EINTR counts as a
/// wake-up (the caller checks and waits again).
fn poll_readable(fd: RawFd, timeout: Duration) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, poll_timeout_ms(timeout)) };
    if n < 0 {
        let e = crate::error::last_errno();
        if e == libc::EINTR {
            return Ok(true);
        }
        return Err(Error::verbs_arg("poll", e, "fd", fd as u64));
    }
    Ok(n > 0)
}

/// `timeout` for `poll(2)`: milliseconds rounded up (a wait never ends early), -1 (for ever)
/// beyond `i32::MAX` ms.
pub(crate) fn poll_timeout_ms(timeout: Duration) -> i32 {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    i32::try_from(ms).unwrap_or(-1)
}

impl AsRawFd for CompChannel {
    fn as_raw_fd(&self) -> RawFd {
        // SAFETY: the channel is live; `fd` is set at creation and never changes.
        unsafe { (*self.as_raw()).fd }
    }
}

impl AsFd for CompChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor stays open while the channel lives, which outlasts the borrow.
        unsafe { BorrowedFd::borrow_raw(self.as_raw_fd()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_timeouts_round_up_and_saturate() {
        assert_eq!(poll_timeout_ms(Duration::ZERO), 0);
        assert_eq!(poll_timeout_ms(Duration::from_nanos(1)), 1);
        assert_eq!(poll_timeout_ms(Duration::from_micros(1500)), 2);
        assert_eq!(poll_timeout_ms(Duration::from_millis(50)), 50);
        assert_eq!(poll_timeout_ms(Duration::from_secs(30 * 24 * 3600)), -1);
        assert_eq!(poll_timeout_ms(Duration::MAX), -1);
    }

    #[test]
    fn poll_readable_times_out_and_sees_data() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        assert!(!poll_readable(fds[0], Duration::from_millis(5)).unwrap());
        // SAFETY: writes one byte from a live local to our pipe.
        assert_eq!(unsafe { libc::write(fds[1], [1u8].as_ptr().cast(), 1) }, 1);
        assert!(poll_readable(fds[0], Duration::from_millis(5)).unwrap());
        // SAFETY: both descriptors are ours, closed once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        let bad = poll_readable(-5, Duration::ZERO);
        // A negative fd is ignored by poll(2): no error, no readiness.
        assert!(!bad.unwrap());
    }
}

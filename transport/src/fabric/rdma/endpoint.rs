//! The hot path both RDMA fabrics share: run splitting, send-queue accounting, the bookkeeping
//! of requests refused before the device, and CQ draining into [`Completion`]s.
//!
//! The rule "every accepted work request completes exactly once" lives here alone: a request
//! the core accepts either reaches a send queue (and completes from its CQ), is taken by
//! another path of the fabric (and completes from [`RdmaPoster::poll`]), or is refused and
//! completes from [`Failed`] on the next poll. Each fabric supplies only what differs through
//! [`RdmaPoster`]: where a request goes, how a run is posted, and which CQs to drain. The core
//! is generic over it, so the hot path is statically dispatched.

use std::collections::VecDeque;

use ::efa::Cq;

use crate::fabric::{Completion, Endpoint, WorkRequest};
use crate::FailReason;

/// Where a work request goes, as the fabric decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Onto a send queue with `room` free slots: it leads a run of the requests after it that
    /// share its queue.
    Queue {
        /// Free slots on the queue.
        room: u32,
    },
    /// The fabric took it over another path; it completes through [`RdmaPoster::poll`].
    Taken,
    /// No room for it now: stop posting (backpressure).
    Full,
    /// Refused before the device: it completes with this reason on the next poll.
    Refused(FailReason),
}

/// The fabric-specific part of an RDMA endpoint.
pub(crate) trait RdmaPoster: Send {
    /// Where `wr` goes. Called for the first request of each run.
    fn route(&mut self, wr: &WorkRequest) -> Route;

    /// Whether `next` joins the run `first` leads. The core has checked that both go to the
    /// same peer, local rail and remote rail.
    fn joins(&self, first: &WorkRequest, next: &WorkRequest) -> bool;

    /// Posts `run` (the requests of one queue) with one doorbell. A request the device refuses
    /// alone goes to `refused` with its reason. `Err`: nothing of the run reached the device.
    fn post_run(&mut self, run: &[WorkRequest], refused: &mut Failed) -> Result<(), FailReason>;

    /// Counts `n` requests of the run `first` led as on its send queue.
    fn posted(&mut self, first: &WorkRequest, n: u32);

    /// Drains the fabric's completions (its CQs, and any other path) into `out`; returns how
    /// many.
    fn poll(&mut self, out: &mut [Completion]) -> usize;

    /// As [`Endpoint::arm`]: arms the CQs for [`block`](Self::block). The default cannot.
    fn arm(&mut self) -> bool {
        false
    }

    /// As [`Endpoint::block`].
    fn block(&mut self, timeout: std::time::Duration) {
        let _ = timeout;
    }
}

/// Requests accepted and refused before the device, completed on the next poll. Bounded: the
/// core accepts no request it could not complete here.
#[derive(Debug)]
pub(crate) struct Failed {
    queue: VecDeque<Completion>,
    cap: usize,
}

impl Failed {
    /// Room for `cap` refused requests (allocated now, never again).
    pub(crate) fn with_capacity(cap: usize) -> Self {
        Failed {
            queue: VecDeque::with_capacity(cap),
            cap,
        }
    }

    /// Completes `token` with `reason` on the next poll.
    pub(crate) fn push(&mut self, token: u64, reason: FailReason) {
        debug_assert!(self.queue.len() < self.cap, "the core bounds runs by room");
        self.queue.push_back(Completion {
            token,
            error: Some(reason),
        });
    }

    fn room(&self) -> usize {
        self.cap.saturating_sub(self.queue.len())
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    /// Forgets the refusals queued after the first `len` (their run failed as a whole).
    fn truncate(&mut self, len: usize) {
        self.queue.truncate(len);
    }

    fn drain_into(&mut self, out: &mut [Completion]) -> usize {
        drain_queue(&mut self.queue, out)
    }
}

/// Moves completions from the front of `queue` into `out`; returns how many.
pub(crate) fn drain_queue(queue: &mut VecDeque<Completion>, out: &mut [Completion]) -> usize {
    let n = queue.len().min(out.len());
    for (slot, c) in out.iter_mut().zip(queue.drain(..n)) {
        *slot = c;
    }
    n
}

/// Work requests on one send queue whose completions are still to come.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    outstanding: u32,
}

impl SendQueue {
    /// Free slots of a queue `depth` deep.
    pub(crate) fn room(&self, depth: u32) -> u32 {
        depth - self.outstanding.min(depth)
    }

    /// Counts `n` more requests on the queue.
    pub(crate) fn add(&mut self, n: u32) {
        self.outstanding += n;
    }

    /// Requests posted and not yet completed.
    pub(crate) fn in_flight(&self) -> u32 {
        self.outstanding
    }

    /// Moves completions of `cq`, this queue's CQ, into `out`, each with the reason `reason`
    /// gives (`None`: success). Reads of each completion only what `reason` asks.
    ///
    /// # Errors
    /// The CQ failed to poll; completions it gave before failing are returned by the next call.
    pub(crate) fn drain(
        &mut self,
        cq: &mut Cq,
        out: &mut [Completion],
        mut reason: impl FnMut(&::efa::Completion<'_>) -> Option<FailReason>,
    ) -> Result<usize, ::efa::Error> {
        if self.outstanding == 0 || out.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        cq.poll_with(out.len(), |c| {
            out[n] = Completion {
                token: c.wr_id(),
                error: reason(c),
            };
            n += 1;
        })?;
        self.outstanding -= (n as u32).min(self.outstanding);
        Ok(n)
    }
}

/// An endpoint of an RDMA fabric: the shared core around the fabric's [`RdmaPoster`].
pub(crate) struct RdmaEndpoint<P> {
    poster: P,
    failed: Failed,
    outstanding: usize,
}

impl<P: RdmaPoster> RdmaEndpoint<P> {
    /// An endpoint around `poster` that holds up to `failed_cap` refused requests (one per
    /// send-queue slot of the endpoint keeps a full queue's run completable).
    pub(crate) fn new(poster: P, failed_cap: usize) -> Self {
        RdmaEndpoint {
            poster,
            failed: Failed::with_capacity(failed_cap),
            outstanding: 0,
        }
    }

    /// The fabric-specific part.
    #[cfg(test)]
    pub(crate) fn poster(&self) -> &P {
        &self.poster
    }

    /// The end of the run that starts at `wrs[i]`: at most `room` requests of one queue.
    fn run_end(&self, wrs: &[WorkRequest], i: usize, room: usize) -> usize {
        let first = &wrs[i];
        let mut end = i + 1;
        while end < wrs.len()
            && end - i < room
            && (wrs[end].peer, wrs[end].rail, wrs[end].remote_rail)
                == (first.peer, first.rail, first.remote_rail)
            && self.poster.joins(first, &wrs[end])
        {
            end += 1;
        }
        end
    }

    /// Posts one run; every request of it completes once, from the CQ or from `failed`.
    fn post_one_run(&mut self, run: &[WorkRequest]) {
        let mark = self.failed.len();
        match self.poster.post_run(run, &mut self.failed) {
            Ok(()) => {
                let refused = self.failed.len() - mark;
                self.poster.posted(&run[0], (run.len() - refused) as u32);
            }
            Err(reason) => {
                // Nothing reached the device: the whole run completes with the reason (drop
                // the refusals already queued, so none completes twice).
                self.failed.truncate(mark);
                for w in run {
                    self.failed.push(w.token, reason);
                }
            }
        }
        self.outstanding += run.len();
    }
}

impl<P: RdmaPoster> Endpoint for RdmaEndpoint<P> {
    fn post(&mut self, wrs: &[WorkRequest]) -> usize {
        let mut i = 0;
        while i < wrs.len() && self.failed.room() > 0 {
            let wr = &wrs[i];
            let room = match self.poster.route(wr) {
                Route::Queue { room } => (room as usize).min(self.failed.room()),
                Route::Full => break,
                Route::Taken => {
                    self.outstanding += 1;
                    i += 1;
                    continue;
                }
                Route::Refused(reason) => {
                    self.failed.push(wr.token, reason);
                    self.outstanding += 1;
                    i += 1;
                    continue;
                }
            };
            if room == 0 {
                break;
            }
            let end = self.run_end(wrs, i, room);
            self.post_one_run(&wrs[i..end]);
            i = end;
        }
        i
    }

    fn poll(&mut self, out: &mut [Completion]) -> usize {
        let mut n = self.failed.drain_into(out);
        n += self.poster.poll(&mut out[n..]);
        self.outstanding -= n.min(self.outstanding);
        n
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }

    fn arm(&mut self) -> bool {
        // Refused requests complete from memory on the next poll: nothing to wait for.
        self.failed.len() == 0 && self.poster.arm()
    }

    fn block(&mut self, timeout: std::time::Duration) {
        self.poster.block(timeout);
    }
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;

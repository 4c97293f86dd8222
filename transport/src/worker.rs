//! Per-thread submission and completion (the hot path).

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::{token, BatchSlot, Entered, ReadPin, RequestSlot, ST_PENDING};
use crate::engine::{Inner, LocalEntry, RemoteEntry};
use crate::fabric::{Completion, Endpoint, WorkOp, WorkRequest, MAX_RAILS};
use crate::metrics::{op_row, CounterBlock, PollTally, SubmitTally, LATENCY_SAMPLE_EVERY};
use crate::peer_gone;
use crate::retry::{RetryPolicy, RetryQueue, MAX_RETRY_SLICES};
use crate::wait::{Idle, Step, WaitMode, BLOCK_BOUND};
use crate::{
    Access, BatchId, BatchStatus, FabricError, FailReason, LocalAddr, Opcode, Request,
    TransportError, MAX_SLICES_PER_REQUEST,
};

/// Work requests gathered before one bulk post: also the most a worker defers
/// ([`Worker::submit_deferred`]).
const POST_BATCH: usize = 64;
/// Completions taken per poll.
const POLL_BATCH: usize = 64;

#[derive(Clone, Copy)]
struct Resolved {
    /// This entry took the pin on its remote slot (first of a run of requests to that remote);
    /// released once at the end of the submit.
    remote_pin: bool,
    local_index: u32,
    local_addr: u64,
    remote_index: u32,
    remote_generation: u32,
    remote_addr: u64,
    len: u64,
    slices: u32,
    notify: u32,
}

/// What the requests of one submit call share.
struct SubmitCtx<'a> {
    inner: &'a Inner,
    slot: &'a BatchSlot,
    batch: BatchId,
    /// The batch slot's generation (its low bits go into every token).
    generation: u32,
    /// The worker's counters, moved out for the call (none when metrics are off).
    metrics: Option<&'a CounterBlock>,
    /// The submit's timestamp, or 0 when the call is not timed.
    now: u64,
    /// Whether the submit rings the doorbell; a deferred one fits its work requests in the post
    /// queue ([`Core::check_room`]) and posts none.
    ring: bool,
}

/// Submits requests and drives completions for one thread. Owns the fabric [`Endpoint`], so
/// posting and polling need no lock. `Send` (it may move between threads) but not `Sync`.
///
/// A batch is progressed by the worker that submitted it: [`Worker::wait`] polls this worker's
/// endpoint only. Several threads may submit concurrently, each through its own worker (and
/// then best into their own batches). Status reads through the [`Engine`](crate::Engine) work
/// from any thread.
///
/// # Dropping a worker
///
/// Dropping a worker first applies the completions that come within a short grace period (at
/// most 2 s). Work requests still in flight after that are *handed to the engine*, not lost:
/// the engine keeps the worker's endpoint and applies its completions as they arrive, whenever
/// any worker of the engine waits or drains, and whenever [`Engine::cancel`],
/// [`Engine::free_batch`], [`Engine::recycle_batch`], [`Engine::unregister`] or
/// [`Engine::progress_dropped_workers`] is called. Each such request ends as its completion
/// says (a dead peer's fails with `UNRESP_REMOTE` after the fabric's timeout; a cancelled one
/// stays `Cancelled`) and only then releases its segment and batch, so memory the fabric may
/// still touch stays registered. Every fabric completes every work request in bounded time,
/// so nothing stays pinned for good. Dropping the engine drops the endpoints with it.
///
/// [`Engine::cancel`]: crate::Engine::cancel
/// [`Engine::free_batch`]: crate::Engine::free_batch
/// [`Engine::recycle_batch`]: crate::Engine::recycle_batch
/// [`Engine::unregister`]: crate::Engine::unregister
/// [`Engine::progress_dropped_workers`]: crate::Engine::progress_dropped_workers
pub struct Worker {
    inner: Arc<Inner>,
    /// Everything else, apart so the hot path borrows `inner` beside it without a clone.
    core: Core,
}

/// A worker's own state; its methods take the engine's `Inner` by reference.
struct Core {
    ep: Box<dyn Endpoint>,
    wrs: Vec<WorkRequest>,
    comps: Box<[Completion]>,
    resolved: Vec<Resolved>,
    rr: u32,
    /// Retries waiting for a backoff or for room on their rail.
    retries: RetryQueue,
    wait_mode: WaitMode,
    /// This worker's counters (none when metrics are off).
    metrics: Option<Arc<CounterBlock>>,
    /// Submit calls so far, for timing one in `LATENCY_SAMPLE_EVERY`.
    submits: u32,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("engine", &self.inner.name)
            .field("outstanding", &self.outstanding())
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub(crate) fn new(inner: Arc<Inner>) -> Result<Worker, TransportError> {
        let wait_mode = inner.wait;
        let ep = inner.fabric.endpoint()?;
        let metrics = inner.metrics.worker_block();
        Ok(Worker {
            inner,
            core: Core {
                ep,
                metrics,
                submits: 0,
                wrs: Vec::with_capacity(POST_BATCH),
                comps: vec![Completion::default(); POLL_BATCH].into_boxed_slice(),
                resolved: Vec::with_capacity(POST_BATCH),
                rr: 0,
                retries: RetryQueue::new(),
                wait_mode,
            },
        })
    }

    /// Work requests of this worker not yet completed: posted, held (a retry, or a notification
    /// waiting for room on its rail), or deferred
    /// ([`Worker::submit_deferred`]).
    pub fn outstanding(&self) -> usize {
        self.core.ep.outstanding() + self.core.retries.len() + self.core.wrs.len()
    }

    /// Validates every request, then posts them all (all-or-nothing: on a validation error
    /// nothing is posted and the batch is unchanged). Returns the batch index of the first
    /// request; request `i` of `requests` has index `first + i`.
    ///
    /// Slices larger requests (see [`SlicePlan`](crate::SlicePlan)) and stripes slices over the
    /// local segment's rails. When a send queue is full it polls completions and retries
    /// (backpressure, never loss) for up to the engine's `submit_timeout`.
    ///
    /// # Errors
    ///
    /// Validation errors name the request and the value at fault: [`TransportError::ZeroLength`],
    /// [`TransportError::LocalNotRegistered`], [`TransportError::LocalOutOfRange`],
    /// [`TransportError::RemoteOutOfRange`], [`TransportError::UnknownRemote`],
    /// [`TransportError::AccessDenied`], [`TransportError::TooManySlices`],
    /// [`TransportError::BatchFull`], [`TransportError::TooManyInFlight`]; a stale or foreign batch
    /// is [`TransportError::StaleBatch`] or [`TransportError::ForeignHandle`], and a fabric that
    /// refuses a post is [`TransportError::Fabric`].
    pub fn submit(
        &mut self,
        batch: BatchId,
        requests: &[Request],
    ) -> Result<usize, TransportError> {
        self.submit_with(batch, requests, true)
    }

    /// As [`Worker::submit`], but leaves the work requests in this worker's post queue: the
    /// doorbell rings at the next [`Worker::post_deferred`], [`Worker::submit`],
    /// [`Worker::wait`], [`Worker::drain`] or [`Worker::progress`] of this worker, or when it is
    /// dropped. Everything else happens now: validation, pins, request indices, the work
    /// requests themselves. The queue holds 64 work requests: a submit that would overflow it
    /// is refused whole ([`TransportError::DeferredQueueFull`]), never posted in part.
    ///
    /// This is libfabric's `FI_MORE`: prepare a message ahead and ring the doorbell when it is
    /// due (a ping-pong answers an arrival with one post, as perftest's loop does with the work
    /// request it built before the test), or gather several submits behind one doorbell.
    /// [`Worker::discard_deferred`] takes deferred work back unsent.
    ///
    /// # Errors
    ///
    /// As [`Worker::submit`], and [`TransportError::DeferredQueueFull`].
    pub fn submit_deferred(
        &mut self,
        batch: BatchId,
        requests: &[Request],
    ) -> Result<usize, TransportError> {
        self.submit_with(batch, requests, false)
    }

    /// Posts the deferred work requests ([`Worker::submit_deferred`]); returns how many there
    /// were. A full send queue is waited out as in [`Worker::submit`].
    pub fn post_deferred(&mut self) -> usize {
        let n = self.core.wrs.len();
        self.core.post_deferred(&self.inner);
        n
    }

    /// Work requests deferred and not posted yet ([`Worker::submit_deferred`]).
    pub fn deferred(&self) -> usize {
        self.core.wrs.len()
    }

    /// Takes the deferred work requests back unsent: their requests end
    /// `Failed(`[`FailReason::Flushed`]`)` at once, as requests the fabric never saw, and
    /// release their batch and segments. Returns how many work requests there were.
    pub fn discard_deferred(&mut self) -> usize {
        let (inner, core) = (&*self.inner, &mut self.core);
        let n = core.wrs.len();
        if n != 0 {
            let metrics = core.metrics.take();
            core.fail_unsent(inner, metrics.as_deref(), 0);
            core.wrs.clear();
            core.metrics = metrics;
        }
        n
    }

    fn submit_with(
        &mut self,
        batch: BatchId,
        requests: &[Request],
        ring: bool,
    ) -> Result<usize, TransportError> {
        let inner = &*self.inner;
        let slot = inner.batches.get(batch)?;
        let entered = slot.enter(batch)?;
        let r = self
            .core
            .submit_entered(inner, slot, &entered, batch, requests, ring);
        if let (Err(_), Some(m)) = (&r, &self.core.metrics) {
            m.rejected();
        }
        r
    }

    /// Posts deferred work requests ([`Worker::submit_deferred`]), polls the fabric once and
    /// applies the completions; returns how many there were.
    pub fn progress(&mut self) -> usize {
        self.core.post_deferred(&self.inner);
        self.core.progress(&self.inner)
    }

    /// Drives completions until every submitted request of `batch` is terminal or `timeout`
    /// passes (`Duration::MAX`: no deadline); requests still pending then become [`RequestStatus::TimedOut`](crate::RequestStatus).
    /// Pending requests to a peer the metadata service reported gone end
    /// `Failed(PeerGone)` (see [`Engine::open_segment`](crate::Engine::open_segment)).
    ///
    /// # Errors
    ///
    /// [`TransportError::StaleBatch`] or [`TransportError::ForeignHandle`] for a handle that is
    /// not a live batch of this engine (also when the batch was freed during the wait).
    pub fn wait(
        &mut self,
        batch: BatchId,
        timeout: Duration,
    ) -> Result<BatchStatus, TransportError> {
        let inner = &*self.inner;
        self.core.post_deferred(inner);
        let slot = drive_batch(inner, &mut self.core, batch, timeout, |s| {
            s.open.load(Acquire) == 0
        })?;
        if slot.open.load(Acquire) != 0 {
            slot.abandon(batch, false);
        }
        inner.batches.get(batch)?;
        Ok(slot.status())
    }

    /// Drives completions until no work request of `batch` is in flight (so it can be freed or
    /// recycled) or `timeout` passes (`Duration::MAX`: no deadline); returns the status either
    /// way.
    /// Pending requests to a gone peer end `Failed(PeerGone)` here too (their work requests
    /// still count as in flight until the fabric gives them back).
    ///
    /// # Errors
    ///
    /// As [`Worker::wait`].
    pub fn drain(
        &mut self,
        batch: BatchId,
        timeout: Duration,
    ) -> Result<BatchStatus, TransportError> {
        let inner = &*self.inner;
        self.core.post_deferred(inner);
        let slot = drive_batch(inner, &mut self.core, batch, timeout, |s| {
            s.in_flight.load(Acquire) == 0
        })?;
        inner.batches.get(batch)?;
        Ok(slot.status())
    }

    /// How this worker waits once polls come back empty (see [`WaitMode`]); the engine's
    /// [`EngineConfig::wait`](crate::EngineConfig::wait) until set.
    pub fn set_wait_mode(&mut self, mode: WaitMode) {
        self.core.wait_mode = mode;
    }

    /// This worker's [`WaitMode`].
    pub fn wait_mode(&self) -> WaitMode {
        self.core.wait_mode
    }
}

impl Core {
    fn submit_entered(
        &mut self,
        inner: &Inner,
        slot: &BatchSlot,
        entered: &Entered<'_>,
        batch: BatchId,
        requests: &[Request],
        ring: bool,
    ) -> Result<usize, TransportError> {
        let gone_epoch = peer_gone::epoch(inner);
        // Validate (and pin) everything before reserving indices: a failed submit then never
        // touches the batch, however other submits interleave with it.
        self.resolve_all(inner, requests)?;
        let work_requests: u64 = self.resolved.iter().map(|r| u64::from(r.slices)).sum();
        if !ring {
            self.check_room(inner, work_requests)?;
        }
        let first = match self.reserve(slot, batch, requests.len(), work_requests) {
            Ok(first) => first,
            Err(e) => {
                self.release_pins(inner);
                return Err(e);
            }
        };
        entered.ensure(first, requests.len() as u32);
        // One clock read per timed submit call, shared by its requests (stamps below 4 are
        // untimed). Moved out for the call (not cloned: no reference count to touch) and
        // handed to `flush`, whose polls count into it too.
        let metrics = self.metrics.take();
        let timed = metrics.is_some() && self.submits % LATENCY_SAMPLE_EVERY == 0;
        self.submits = self.submits.wrapping_add(1);
        let ctx = SubmitCtx {
            inner,
            slot,
            batch,
            generation: slot.generation(),
            metrics: metrics.as_deref(),
            now: if timed { inner.metrics.now().max(1) } else { 0 },
            ring,
        };
        let mut counts = SubmitTally::new();
        // Moved out (not copied) so `flush` can borrow the worker mutably inside the loop.
        let resolved = std::mem::take(&mut self.resolved);
        for (k, res) in resolved.iter().enumerate() {
            let index = first + k as u32;
            let Some(req) = entered.request(index) else {
                unposted(inner, slot, res);
                continue;
            };
            let op = match requests[k].op {
                Opcode::Read => WorkOp::Read,
                _ => WorkOp::Write,
            };
            self.post_request(&ctx, req, index, res, op, &mut counts);
        }
        if ctx.ring {
            self.flush(inner, ctx.metrics);
        }
        if let Some(m) = ctx.metrics {
            counts.flush(m, inner.caps.rails as usize);
        }
        self.metrics = metrics;
        for res in &resolved {
            if res.remote_pin {
                inner.remotes.unpin(res.remote_index);
            }
        }
        self.resolved = resolved;
        peer_gone::after_submit(inner, slot, gone_epoch);
        Ok(first as usize)
    }

    /// Refuses (releasing the pins) resolved requests whose work requests would overflow the
    /// post queue: deferred work is never posted in part.
    fn check_room(&mut self, inner: &Inner, work_requests: u64) -> Result<(), TransportError> {
        let room = POST_BATCH - self.wrs.len();
        if work_requests > room as u64 {
            self.release_pins(inner);
            return Err(TransportError::DeferredQueueFull {
                work_requests,
                room,
            });
        }
        Ok(())
    }

    /// Counts `n` resolved requests of `total` work requests into the batch (work requests in
    /// flight, request indices, open requests); returns the first index. On an error nothing is
    /// counted.
    fn reserve(
        &self,
        slot: &BatchSlot,
        batch: BatchId,
        n: usize,
        total: u64,
    ) -> Result<u32, TransportError> {
        slot.add_in_flight(batch, total)?;
        match slot.reserve(batch, n) {
            Ok(first) => {
                slot.open.fetch_add(n as u32, AcqRel);
                Ok(first)
            }
            Err(e) => {
                // Exact: nobody else relies on these counts until the work requests exist.
                slot.in_flight.fetch_sub(total as u32, AcqRel);
                Err(e)
            }
        }
    }

    /// Starts request `index` (its slot `req`) and queues its slices as work requests, striped
    /// round robin over the local rails of the plane its peer is reached over.
    #[inline]
    fn post_request(
        &mut self,
        ctx: &SubmitCtx<'_>,
        req: &RequestSlot,
        index: u32,
        res: &Resolved,
        op: WorkOp,
        counts: &mut SubmitTally,
    ) {
        let inner = ctx.inner;
        // SAFETY: `resolve` kept a pin on the local segment for this request (released when it
        // completes) and one on the remote slot for its run (released at the end of the submit).
        let (local, remote) = unsafe {
            (
                inner.segments.get_pinned(res.local_index),
                inner.remotes.get_pinned(res.remote_index),
            )
        };
        // One slice on a fabric that carries the tag with the bytes: one work request, where
        // the notification otherwise waits for the WRITE's completion (a round trip).
        let fused = res.notify != 0
            && res.slices == 1
            && op == WorkOp::Write
            && inner.caps.supports_write_notify;
        let (notify, op) = match fused {
            true => (
                res.notify | FUSED,
                WorkOp::WriteNotify {
                    tag: res.notify - 1,
                },
            ),
            false => (res.notify, op),
        };
        req.segment.store(res.local_index, Relaxed);
        req.notify.store(notify, Relaxed);
        req.peer.store(remote.peer, Relaxed);
        req.remote.store(res.remote_index, Relaxed);
        req.remote_generation.store(res.remote_generation, Relaxed);
        ctx.slot
            .start(req, res.slices + (res.notify != 0 && !fused) as u32);
        if inner.retry.max_retries != 0 {
            remember(req, res, op);
        }
        if let Some(m) = ctx.metrics {
            let row = op_row(op == WorkOp::Read, res.notify != 0);
            req.started.store(ctx.now << 2 | row as u64, Relaxed);
            counts.request(m, row, res.len, remote.peer);
        }
        // The local rails of the plane the peer is reached over (one plane on most fabrics).
        let rails = local.plane_rails[remote.plane as usize].as_slice();
        let n = res.slices as u64;
        for s in 0..n {
            let (off, len) = inner.plan.slice(res.len, s, n);
            // Round robin without a division per slice.
            let mut k = self.rr as usize;
            if k >= rails.len() {
                k %= rails.len();
            }
            let rail = rails[k];
            self.rr = k as u32 + 1;
            // The peer's rail facing ours: same index within the plane, wrapped to the rails
            // the peer registered the segment on (worked out when it was opened).
            let plane_rail = rail - remote.rail_base;
            let remote_rail = remote.rail_map[plane_rail as usize % MAX_RAILS];
            if ctx.metrics.is_some() {
                counts.slice(rail, len);
            }
            if s + 1 == n {
                req.remote_rail.store(remote_rail as u32, Relaxed);
            }
            self.wrs.push(WorkRequest {
                token: token::with_slice(
                    token::encode(ctx.batch.index, ctx.generation, rail, index),
                    s,
                ),
                op,
                rail,
                peer: remote.peer,
                remote_rail,
                local_addr: res.local_addr + off,
                local_key: local.lkeys[rail as usize],
                remote_addr: res.remote_addr + off,
                remote_key: remote.rkeys[remote_rail as usize],
                len,
            });
            if ctx.ring && self.wrs.len() == POST_BATCH {
                self.flush(ctx.inner, ctx.metrics);
            }
        }
    }

    /// Resolves every request into `self.resolved`, pinning its segments. On an error nothing
    /// stays pinned and `self.resolved` is empty.
    fn resolve_all(&mut self, inner: &Inner, requests: &[Request]) -> Result<(), TransportError> {
        self.resolved.clear();
        // Grows only when a submit is larger than any before it.
        self.resolved.reserve(requests.len());
        // Consecutive requests on the same segments share one pin operation per run.
        let mut runs = Runs::default();
        for (i, r) in requests.iter().enumerate() {
            match resolve(inner, i, r, &mut runs) {
                Ok(res) => self.resolved.push(res),
                Err(e) => {
                    runs.close_local(inner);
                    self.release_pins(inner);
                    return Err(e);
                }
            }
        }
        runs.close_local(inner);
        Ok(())
    }

    /// Releases the pins of `self.resolved` (one local pin each, plus the remote run pins) and
    /// empties it.
    fn release_pins(&mut self, inner: &Inner) {
        for res in &self.resolved {
            inner.segments.unpin(res.local_index);
            if res.remote_pin {
                inner.remotes.unpin(res.remote_index);
            }
        }
        self.resolved.clear();
    }

    /// Posts the gathered work requests, polling while queues are full; completions count into
    /// `metrics` (the worker's block, moved out by the caller).
    fn flush(&mut self, inner: &Inner, metrics: Option<&CounterBlock>) {
        let mut pos = 0;
        // When the queues first stayed full; measured with `elapsed`, so any timeout (even
        // `Duration::MAX`, no deadline) is fine.
        let mut stalled: Option<Instant> = None;
        while pos < self.wrs.len() {
            let n = self.ep.post(&self.wrs[pos..]);
            pos += n;
            if pos == self.wrs.len() {
                break;
            }
            if self.poll_once(inner, metrics) == 0 && n == 0 {
                let since = *stalled.get_or_insert_with(Instant::now);
                if since.elapsed() >= inner.submit_timeout {
                    // The fabric made no room in time: fail what is left rather than hang.
                    self.fail_unsent(inner, metrics, pos);
                    break;
                }
                std::thread::yield_now();
            }
        }
        self.wrs.clear();
    }

    /// Ends the queued work requests from `from` on as `FLUSHED`, as the fabric never saw them
    /// (the caller empties the queue).
    #[cold]
    fn fail_unsent(&mut self, inner: &Inner, metrics: Option<&CounterBlock>, from: usize) {
        let unsent = self.wrs[from..].iter().map(|wr| Completion {
            token: wr.token,
            error: Some(FailReason::Flushed),
        });
        complete_unsent(inner, &mut *self.ep, metrics, unsent);
    }

    /// Posts what [`Worker::submit_deferred`] left in the post queue.
    #[inline]
    fn post_deferred(&mut self, inner: &Inner) {
        if !self.wrs.is_empty() {
            let metrics = self.metrics.take();
            self.flush(inner, metrics.as_deref());
            self.metrics = metrics;
        }
    }

    /// [`Worker::progress`].
    fn progress(&mut self, inner: &Inner) -> usize {
        let metrics = self.metrics.take();
        let n = self.poll_once(inner, metrics.as_deref());
        self.metrics = metrics;
        n
    }

    /// [`Worker::progress`] with the worker's counters moved out.
    fn poll_once(&mut self, inner: &Inner, metrics: Option<&CounterBlock>) -> usize {
        let n = self.ep.poll(&mut self.comps);
        if n != 0 {
            let mut tally = tally(inner, metrics);
            for i in 0..n {
                let c = self.comps[i];
                let retries = Some(&mut self.retries);
                complete(inner, &mut *self.ep, retries, c, &mut tally);
            }
            tally.flush(inner);
        }
        if self.retries.len() != 0 {
            self.post_retries(inner);
        }
        n
    }

    /// Completes the held work requests, which were never posted, with their first failure.
    fn fail_held_retries(&mut self, inner: &Inner) {
        let unsent = self.retries.drain_failed();
        complete_unsent(inner, &mut *self.ep, self.metrics.as_deref(), unsent);
    }

    /// Posts the held work requests that are due and fit.
    #[cold]
    fn post_retries(&mut self, inner: &Inner) {
        let ep = &mut self.ep;
        let posted = self
            .retries
            .post_due(Instant::now(), |wr| ep.post(std::slice::from_ref(wr)) == 1);
        inner.retried.fetch_add(posted as u64, Relaxed);
    }

    fn drive(&mut self, inner: &Inner, timeout: Duration, done: impl Fn() -> bool) {
        // Read the clock only at the first deadline check (see `Idle::check_due`), which most
        // waits for a completion never reach; `elapsed` cannot overflow, so `Duration::MAX`
        // waits for ever.
        let mut start: Option<Instant> = None;
        let mut idle = Idle::new(self.wait_mode);
        while !done() {
            if self.progress(inner) != 0 {
                idle.reset();
                continue;
            }
            if timeout.is_zero() {
                // A look, not a wait.
                return;
            }
            let step = idle.step();
            if idle.check_due(step) {
                // Dropped workers' requests may be what this wait is for.
                reap_orphans(inner, false);
                let waited = match start {
                    Some(s) => s.elapsed(),
                    // The first check starts the clock: one read, nothing elapsed yet.
                    None => {
                        start = Some(Instant::now());
                        Duration::ZERO
                    }
                };
                let left = timeout.saturating_sub(waited);
                if left.is_zero() {
                    return;
                }
                idle.waited(waited);
                match step {
                    Step::Spin => {}
                    Step::Yield => std::thread::yield_now(),
                    // Held work requests are due within milliseconds (a backoff, or room on a
                    // rail): pause for them, never block.
                    Step::Pause(d) if self.retries.len() != 0 || !self.ep.arm() => {
                        std::thread::sleep(d.min(left));
                    }
                    Step::Pause(_) => {
                        // Armed: poll once more, as a completion that came before the arming
                        // raises no event, then block until one does.
                        if self.progress(inner) != 0 {
                            idle.reset();
                            continue;
                        }
                        self.ep.block(BLOCK_BOUND.min(left));
                    }
                }
            }
        }
    }
}

/// Drives `core`'s completions until `done` holds for `batch`'s slot (requests to peers reported
/// gone failing meanwhile) or `timeout` passes; returns the slot.
fn drive_batch<'a>(
    inner: &'a Inner,
    core: &mut Core,
    batch: BatchId,
    timeout: Duration,
    done: impl Fn(&BatchSlot) -> bool,
) -> Result<&'a BatchSlot, TransportError> {
    let slot = inner.batches.get(batch)?;
    core.drive(inner, timeout, || {
        peer_gone::sweep(inner, slot, batch);
        done(slot)
    });
    Ok(slot)
}

/// How long a dropped worker waits for its own completions before handing the rest to the
/// engine.
const DROP_GRACE: Duration = Duration::from_secs(2);

impl Drop for Worker {
    /// See [Dropping a worker](Worker#dropping-a-worker).
    fn drop(&mut self) {
        let (inner, core) = (&*self.inner, &mut self.core);
        core.post_deferred(inner);
        core.fail_held_retries(inner);
        let start = Instant::now();
        while core.ep.outstanding() > 0 && start.elapsed() < DROP_GRACE {
            if core.progress(inner) == 0 {
                std::thread::yield_now();
            }
        }
        if let Some(m) = &core.metrics {
            inner.metrics.retire(m);
        }
        if core.ep.outstanding() > 0 {
            // A zero-sized placeholder: boxing it allocates nothing.
            let ep = std::mem::replace(&mut core.ep, Box::new(Detached));
            inner.adopt(ep);
        }
    }
}

/// The endpoint a dropped worker is left with once the engine took its own.
struct Detached;

impl Endpoint for Detached {
    fn post(&mut self, _wrs: &[WorkRequest]) -> usize {
        0
    }

    fn poll(&mut self, _out: &mut [Completion]) -> usize {
        0
    }

    fn outstanding(&self) -> usize {
        0
    }
}

/// Polls the endpoints of dropped workers and applies their completions; drops those with
/// nothing left in flight. Returns how many completions were applied. With `wait == false` it
/// returns at once when another thread is at it.
pub(crate) fn reap_orphans(inner: &Inner, wait: bool) -> usize {
    if inner.orphan_count.load(Acquire) == 0 {
        return 0;
    }
    let mut orphans = if wait {
        inner
            .orphans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    } else {
        match inner.orphans.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return 0,
        }
    };
    let mut comps = [Completion::default(); POLL_BATCH];
    let mut applied = 0;
    for ep in orphans.iter_mut() {
        // Bounded: a few polls per call, the next call continues.
        for _ in 0..16 {
            let n = ep.poll(&mut comps);
            let m = &inner.metrics;
            let mut tally = Tally::new(m.enabled().then(|| PollTally::new(&m.orphans, m)));
            for &c in &comps[..n] {
                complete(inner, &mut **ep, None, c, &mut tally);
            }
            tally.flush(inner);
            applied += n;
            if n < comps.len() {
                break;
            }
        }
    }
    orphans.retain(|ep| ep.outstanding() > 0);
    inner.orphan_count.store(orphans.len(), Release);
    applied
}

/// Checks request `index` and pins what it uses: the remote half ([`resolve_remote`]), then the
/// local half ([`resolve_local`]). On an error, what this request pinned is released.
fn resolve(
    inner: &Inner,
    index: usize,
    r: &Request,
    runs: &mut Runs,
) -> Result<Resolved, TransportError> {
    let (slices, needed, notify) = check_request(inner, index, r)?;
    let (remote_pin, remote_addr) = resolve_remote(inner, index, r, needed, runs)?;
    match resolve_local(inner, index, r, runs) {
        Ok((local_index, local_addr)) => Ok(Resolved {
            remote_pin,
            local_index,
            local_addr,
            remote_index: r.remote.index,
            remote_generation: r.remote.generation,
            remote_addr,
            len: r.len,
            // Checked against MAX_SLICES_PER_REQUEST.
            slices: slices as u32,
            notify,
        }),
        Err(e) => {
            if remote_pin {
                inner.remotes.unpin(r.remote.index);
                runs.remote = None;
            }
            Err(e)
        }
    }
}

/// The checks of request `index` that need no pin: length, slice count, the operation against
/// the fabric's capabilities, the notification tag, the handles' engine. Returns its slice
/// count, the access it needs at the peer, and its notification tag + 1 (0 for none).
fn check_request(
    inner: &Inner,
    index: usize,
    r: &Request,
) -> Result<(u64, Access, u32), TransportError> {
    if r.len == 0 {
        return Err(TransportError::ZeroLength { index });
    }
    let slices = inner.plan.count(r.len);
    if slices > MAX_SLICES_PER_REQUEST {
        return Err(TransportError::TooManySlices {
            index,
            len: r.len,
            slice_size: inner.plan.slice_size,
            slices,
            max: MAX_SLICES_PER_REQUEST,
        });
    }
    let caps = &inner.caps;
    let (needed, supported, what) = match r.op {
        Opcode::Read => (Access::REMOTE_READ, caps.supports_read, "READ"),
        Opcode::Write => (Access::REMOTE_WRITE, caps.supports_write, "WRITE"),
        Opcode::WriteWithNotify(_) => (
            Access::REMOTE_WRITE,
            caps.supports_write && caps.supports_notify,
            "WRITE_WITH_NOTIFY",
        ),
    };
    if !supported {
        return Err(FabricError::Unsupported { what }.into());
    }
    let notify = match r.op {
        Opcode::WriteWithNotify(tag) => {
            inner.notifications.check(tag)?;
            tag + 1
        }
        _ => 0,
    };
    inner.check_remote(r.remote)?;
    if let LocalAddr::Segment { segment, .. } = r.local {
        inner.check_segment(segment)?;
    }
    Ok((slices, needed, notify))
}

/// The remote half of [`resolve`]: pins the remote segment (once per run of requests to it,
/// kept until the end of the submit) and checks the request against it. Returns whether this
/// request took the run's pin, and the remote address.
#[inline]
fn resolve_remote(
    inner: &Inner,
    index: usize,
    r: &Request,
    needed: Access,
    runs: &mut Runs,
) -> Result<(bool, u64), TransportError> {
    if runs.remote == Some(r.remote) {
        // SAFETY: the first request of this run kept a pin on the slot until the submit ends.
        let remote = unsafe { inner.remotes.get_pinned(r.remote.index) };
        check_remote(index, r, needed, remote)?;
        return Ok((false, remote.base + r.remote_offset));
    }
    // `let else` rather than `ok_or`: building (and dropping) the error on the success path
    // shows up in a per-request instruction count.
    let Some(pin) = inner.remotes.pin(r.remote.index, r.remote.generation) else {
        return Err(TransportError::UnknownRemote(r.remote));
    };
    // A refused request drops the guard, and with it the pin.
    check_remote(index, r, needed, &pin)?;
    runs.remote = Some(r.remote);
    let remote = pin.keep();
    Ok((true, remote.base + r.remote_offset))
}

/// Request `index` against its remote segment: the owner not gone, the range inside, the
/// access granted.
#[inline]
fn check_remote(
    index: usize,
    r: &Request,
    needed: Access,
    remote: &RemoteEntry,
) -> Result<(), TransportError> {
    if remote.gone.load(Acquire) {
        return Err(TransportError::PeerGone {
            index,
            name: remote.desc.name.clone(),
        });
    }
    if r.remote_offset
        .checked_add(r.len)
        .map_or(true, |end| end > remote.len)
    {
        return Err(TransportError::RemoteOutOfRange {
            index,
            name: remote.desc.name.clone(),
            offset: r.remote_offset,
            len: r.len,
            seg_len: remote.len,
        });
    }
    let granted = remote.access;
    if (needed.can_read() && !granted.can_read()) || (needed.can_write() && !granted.can_write()) {
        return Err(TransportError::AccessDenied {
            index,
            name: remote.desc.name.clone(),
            op: r.op.name(),
            granted,
            needed,
        });
    }
    Ok(())
}

/// The local half of [`resolve`]: pins the local segment for the request (kept until it
/// completes; a run of requests on one segment adds its pins in one atomic) and checks the
/// range. Returns the segment's slot and the local address.
#[inline]
fn resolve_local(
    inner: &Inner,
    index: usize,
    r: &Request,
    runs: &mut Runs,
) -> Result<(u32, u64), TransportError> {
    let (segment, offset) = match r.local {
        LocalAddr::Segment { segment, offset } => (segment, offset),
        LocalAddr::Raw(addr) => {
            runs.close_local(inner);
            let covers = |e: &LocalEntry| {
                let inside = addr >= e.base
                    && addr
                        .checked_add(r.len)
                        .is_some_and(|end| end <= e.base + e.len);
                inside.then_some(addr)
            };
            let Some((pin, addr)) = inner.segments.find_pinned(covers) else {
                return Err(TransportError::LocalNotRegistered {
                    index,
                    addr,
                    len: r.len,
                });
            };
            let slot = pin.index();
            pin.keep();
            return Ok((slot, addr));
        }
    };
    let out_of_range = |e: &LocalEntry| TransportError::LocalOutOfRange {
        index,
        segment,
        offset,
        len: r.len,
        seg_len: e.len,
    };
    let inside = |e: &LocalEntry| offset.checked_add(r.len).is_some_and(|end| end <= e.len);
    if runs.local == Some(segment) {
        // SAFETY: the first request of this run kept a pin on the segment (released when it
        // completes), and this one's is added when the run closes.
        let e = unsafe { inner.segments.get_pinned(segment.index) };
        if !inside(e) {
            return Err(out_of_range(e));
        }
        runs.local_extra += 1;
        return Ok((segment.index, e.base + offset));
    }
    runs.close_local(inner);
    let Some(pin) = inner.segments.pin(segment.index, segment.generation) else {
        return Err(TransportError::UnknownSegment(segment));
    };
    if !inside(&pin) {
        return Err(out_of_range(&pin));
    }
    runs.local = Some(segment);
    let e = pin.keep();
    Ok((segment.index, e.base + offset))
}

/// Gives back the counts of a resolved request whose request slot is missing. Unreachable
/// (the submit holds the batch entered and has ensured its storage), but exact if it ever
/// happened: the batch stays freeable.
#[cold]
fn unposted(inner: &Inner, slot: &BatchSlot, res: &Resolved) {
    debug_assert!(false, "a reserved request has no slot");
    slot.in_flight.fetch_sub(res.slices, AcqRel);
    slot.open.fetch_sub(1, AcqRel);
    slot.failed.fetch_add(1, AcqRel);
    inner.segments.unpin(res.local_index);
}

/// Runs of consecutive requests on the same segments within one submit.
#[derive(Default)]
struct Runs {
    /// Remote segment pinned by the current run.
    remote: Option<crate::RemoteSegment>,
    /// Local segment of the current run (its first request took one pin)...
    local: Option<crate::SegmentId>,
    /// ...and the pins its later requests still need (added in one atomic when the run ends).
    local_extra: u32,
}

impl Runs {
    fn close_local(&mut self, inner: &Inner) {
        if let Some(seg) = self.local.take() {
            if self.local_extra > 0 {
                inner.segments.add_pins(seg.index, self.local_extra);
            }
        }
        self.local_extra = 0;
    }
}

/// Completes work requests that never reached the fabric (`failed` carries their tokens and
/// reasons), as if the fabric had returned them.
#[cold]
fn complete_unsent(
    inner: &Inner,
    ep: &mut dyn Endpoint,
    metrics: Option<&CounterBlock>,
    failed: impl Iterator<Item = Completion>,
) {
    let mut tally = tally(inner, metrics);
    for c in failed {
        complete(inner, ep, None, c, &mut tally);
    }
    tally.flush(inner);
}

/// A tally for one poll of a worker, with its counters if it counts.
#[inline]
fn tally<'a>(inner: &'a Inner, metrics: Option<&'a CounterBlock>) -> Tally<'a> {
    Tally::new(metrics.map(|m| PollTally::new(m, &inner.metrics)))
}

/// Batch and segment counter updates gathered over one poll, applied with one atomic each.
struct Tally<'a> {
    /// Metrics of the requests this poll ends (none when metrics are off).
    metrics: Option<PollTally<'a>>,
    /// Token bits naming the batch slot and generation of the current run.
    key: u64,
    batch: u32,
    /// Read pin on that batch's request storage.
    pin: Option<ReadPin<'a>>,
    completed: u32,
    failed: u32,
    closed: u32,
    retired: u32,
    segment: u32,
    unpins: u32,
}

impl<'a> Tally<'a> {
    fn new(metrics: Option<PollTally<'a>>) -> Self {
        Tally {
            metrics,
            key: u64::MAX,
            batch: u32::MAX,
            pin: None,
            completed: 0,
            failed: 0,
            closed: 0,
            retired: 0,
            segment: u32::MAX,
            unpins: 0,
        }
    }

    #[inline]
    fn flush_batch(&mut self, inner: &Inner) {
        if let Some(slot) = inner.batches.slots.get(self.batch as usize) {
            if self.completed > 0 {
                slot.completed.fetch_add(self.completed, Relaxed);
            }
            if self.failed > 0 {
                slot.failed.fetch_add(self.failed, Relaxed);
            }
            if self.closed > 0 {
                slot.open.fetch_sub(self.closed, Release);
            }
            // Last: a zero in-flight count lets the batch be freed.
            if self.retired > 0 {
                slot.in_flight.fetch_sub(self.retired, Release);
            }
        }
        if let Some(m) = &mut self.metrics {
            m.completed += self.completed as u64;
        }
        self.pin = None;
        self.key = u64::MAX;
        self.completed = 0;
        self.failed = 0;
        self.closed = 0;
        self.retired = 0;
    }

    #[inline]
    fn flush_segment(&mut self, inner: &Inner) {
        if self.unpins > 0 {
            inner.segments.unpin_many(self.segment, self.unpins);
        }
        self.unpins = 0;
    }

    #[inline]
    fn flush(&mut self, inner: &Inner) {
        // Segment pins first: a request must not look finished while it still pins memory.
        self.flush_segment(inner);
        self.flush_batch(inner);
        if let Some(m) = &mut self.metrics {
            m.flush();
        }
    }
}

/// Applies one completion to its request; batch and segment counters go to `tally`.
#[inline]
fn complete<'a>(
    inner: &'a Inner,
    ep: &mut dyn Endpoint,
    retries: Option<&mut RetryQueue>,
    c: Completion,
    tally: &mut Tally<'a>,
) {
    let (bi, gen12, _, ri) = token::decode(c.token);
    // Batch slot and generation: one read pin per run of completions of a batch.
    let key = c.token >> 36;
    if tally.key != key {
        tally.flush(inner);
        tally.key = key;
        tally.batch = bi;
        // Free/recycle are refused while work requests are in flight, so a failed pin means a
        // fabric returned a token it was never given; ignore it rather than corrupt a batch.
        tally.pin = inner
            .batches
            .slots
            .get(bi as usize)
            .and_then(|s| s.pin_token(gen12));
    }
    let pin = tally.pin.take();
    let slot = inner.batches.slots.get(bi as usize);
    if let (Some(req), Some(slot)) = (pin.as_ref().and_then(|p| p.request(ri)), slot) {
        apply(inner, ep, retries, c, slot, req, tally);
    }
    tally.pin = pin;
}

/// [`complete`] for a request found in its pinned batch.
#[inline]
fn apply(
    inner: &Inner,
    ep: &mut dyn Endpoint,
    mut retries: Option<&mut RetryQueue>,
    c: Completion,
    slot: &BatchSlot,
    req: &RequestSlot,
    tally: &mut Tally<'_>,
) {
    let rail = token::decode(c.token).2;
    if let Some(e) = c.error {
        // A retry takes the failed work request's place: no count moves.
        if let Some(q) = retries.as_deref_mut() {
            if retry(inner, ep, q, c.token, e, req) {
                return;
            }
        }
        let _ = req
            .error
            .compare_exchange(0, e.code() as u32, AcqRel, Relaxed);
    }
    let prev = req.remaining.fetch_sub(1, AcqRel);
    let last = match prev {
        1 => true,
        2 => {
            let tag1 = req.notify.load(Relaxed);
            if tag1 == 0 || tag1 & FUSED != 0 {
                false
            } else {
                // All data is placed; now (and only now) tell the target.
                if req.error.load(Acquire) == 0 {
                    let wr = WorkRequest {
                        token: token::with_rail(c.token, rail),
                        op: WorkOp::Notify { tag: tag1 - 1 },
                        rail,
                        peer: req.peer.load(Relaxed),
                        remote_rail: req.remote_rail.load(Relaxed) as u16,
                        local_addr: 0,
                        local_key: 0,
                        remote_addr: 0,
                        remote_key: 0,
                        len: 0,
                    };
                    // It replaces the completed work request in the in-flight count. The
                    // completion just taken freed a slot on `rail`, but a retry moved there
                    // may have taken it first: then the notification waits for room.
                    if ep.post(std::slice::from_ref(&wr)) == 1
                        || retries.is_some_and(|q| q.hold_notify(wr))
                    {
                        return;
                    }
                    let _ = req.error.compare_exchange(
                        0,
                        FailReason::Flushed.code() as u32,
                        AcqRel,
                        Relaxed,
                    );
                }
                req.remaining.fetch_sub(1, AcqRel);
                true
            }
        }
        _ => false,
    };
    if last {
        let outcome = slot.finish(req);
        match outcome {
            Some(true) => {
                tally.completed += 1;
                tally.closed += 1;
            }
            Some(false) => {
                tally.failed += 1;
                tally.closed += 1;
            }
            None => {}
        }
        if let Some(m) = &mut tally.metrics {
            // Completions are counted per batch run (`Tally::flush_batch`).
            let started = req.started.load(Relaxed);
            match outcome {
                Some(true) => {}
                Some(false) => m.failed(started, req.error.load(Relaxed), req.peer.load(Relaxed)),
                None => m.late += 1,
            }
            m.ended(started);
        }
        let seg = req.segment.load(Relaxed);
        if tally.segment != seg {
            tally.flush_segment(inner);
            tally.segment = seg;
        }
        tally.unpins += 1;
    }
    tally.retired += 1;
}

/// Marks a WRITE in [`RequestSlot::retries`].
const WRITE_BIT: u32 = 1 << 31;

/// Marks, in [`RequestSlot::notify`], a notification that travels with the request's one WRITE
/// ([`WorkOp::WriteNotify`]) rather than after it: tags stay below
/// [`MAX_NOTIFY_TAGS`](crate::engine::MAX_NOTIFY_TAGS), so the bit is free.
const FUSED: u32 = 1 << 31;

/// Keeps in the request slot what [`retry`] needs to rebuild one of its slices.
#[inline]
fn remember(req: &RequestSlot, res: &Resolved, op: WorkOp) {
    req.local_addr.store(res.local_addr, Relaxed);
    req.remote_addr.store(res.remote_addr, Relaxed);
    req.len.store(res.len, Relaxed);
    let write = if op == WorkOp::Read { 0 } else { WRITE_BIT };
    req.retries.store(write, Relaxed);
}

/// Posts the failed work request `token` again (see [`crate::retry`]): on the next rail of its
/// plane at once, or on the same rail after a backoff when the request has only one. Returns
/// whether the retry was posted or held; `false` leaves the failure to be counted as usual.
#[cold]
fn retry(
    inner: &Inner,
    ep: &mut dyn Endpoint,
    q: &mut RetryQueue,
    token: u64,
    reason: FailReason,
    req: &RequestSlot,
) -> bool {
    let policy = &inner.retry;
    if policy.max_retries == 0
        || !RetryPolicy::is_transient(reason)
        || req.status.load(Acquire) & 0xff != ST_PENDING
    {
        return false;
    }
    let len = req.len.load(Relaxed);
    let n = inner.plan.count(len);
    let budget = policy.max_retries as u64 * n;
    let taken = (req.retries.fetch_add(1, Relaxed) & !WRITE_BIT) as u64;
    if n > MAX_RETRY_SLICES || taken >= budget {
        return false;
    }
    let index = req.remote.load(Relaxed);
    let generation = req.remote_generation.load(Relaxed);
    let Some(entry) = inner.remotes.pin(index, generation) else {
        return false;
    };
    let Some((wr, same_rail)) = rebuild(inner, req, &entry, token, n) else {
        return false;
    };
    drop(entry);
    if same_rail && !RetryPolicy::may_retry_on_same_rail(reason) {
        return false;
    }
    let due = same_rail.then(|| Instant::now() + policy.backoff(taken as u32));
    let ok = (due.is_none() && ep.post(std::slice::from_ref(&wr)) == 1) || q.hold(wr, due, reason);
    if ok && due.is_none() {
        inner.retried.fetch_add(1, Relaxed);
    }
    ok
}

/// The work request `token` stood for, moved to the next rail of the request's plane; and
/// whether that is the same rail (a plane of one rail). `None` when the local segment is gone
/// or the slice index does not fit the request.
fn rebuild(
    inner: &Inner,
    req: &RequestSlot,
    remote: &RemoteEntry,
    token: u64,
    n: u64,
) -> Option<(WorkRequest, bool)> {
    // SAFETY: a request keeps its pin on its local segment (taken in `resolve_local`) until its
    // last work request completes; the one being retried has not been counted yet.
    let local = unsafe { inner.segments.get_pinned(req.segment.load(Relaxed)) };
    let rails = local.plane_rails[remote.plane as usize].as_slice();
    let failed = token::decode(token).2;
    let k = rails.iter().position(|&r| r == failed).unwrap_or(0);
    let rail = *rails.get((k + 1) % rails.len().max(1))?;
    let plane_rail = rail - remote.rail_base;
    let remote_rail = remote.rail_map[plane_rail as usize % MAX_RAILS];
    let tag1 = req.notify.load(Relaxed);
    let fused = tag1 & FUSED != 0;
    // With a notification of its own, the last work request in flight is the notification.
    let notify = tag1 != 0 && !fused && req.remaining.load(Acquire) == 1;
    let s = token::slice(token);
    let (op, (off, len)) = if notify {
        (WorkOp::Notify { tag: tag1 - 1 }, (0, 0))
    } else if s < n {
        let write = req.retries.load(Relaxed) & WRITE_BIT != 0;
        let op = match (write, fused) {
            (true, true) => WorkOp::WriteNotify {
                tag: (tag1 & !FUSED) - 1,
            },
            (true, false) => WorkOp::Write,
            (false, _) => WorkOp::Read,
        };
        (op, inner.plan.slice(req.len.load(Relaxed), s, n))
    } else {
        return None;
    };
    if notify || s + 1 == n {
        req.remote_rail.store(remote_rail as u32, Relaxed);
    }
    let (local_addr, remote_addr) = if notify {
        (0, 0)
    } else {
        (
            req.local_addr.load(Relaxed) + off,
            req.remote_addr.load(Relaxed) + off,
        )
    };
    let wr = WorkRequest {
        token: token::with_rail(token, rail),
        op,
        rail,
        peer: remote.peer,
        remote_rail,
        local_addr,
        local_key: if notify {
            0
        } else {
            local.lkeys[rail as usize]
        },
        remote_addr,
        remote_key: if notify {
            0
        } else {
            remote.rkeys[remote_rail as usize]
        },
        len,
    };
    Some((wr, rail == failed))
}

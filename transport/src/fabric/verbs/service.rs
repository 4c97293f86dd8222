//! The target side: the connection service (TCP listener thread) and the target thread, which
//! creates every QP of the fabric, owns each rail's receive CQ and shared receive queue, counts
//! notifications and reposts receives.
//!
//! Every QP (the sets a `connect` asks for and the sets built in answer to a peer's) takes its
//! receives from its rail's SRQ and completes them into the rail's receive CQ, so the target
//! thread alone polls and reposts, without touching a QP that a worker posts on. Work reaches
//! the thread as [`Job`]s over a channel, with an `eventfd` that wakes it from its block.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ::efa::{Completion, Cq, Srq, WcOpcode, WorkCompletion};

use super::addr::{QpAddress, RailAddress};
use super::conn::{self, QpSet, Receivers};
use super::handshake::{self, Request, Response};
use super::{Rail, Shared, VerbsConfig};
use crate::fabric::rdma::backoff::Backoff;
use crate::fabric::rdma::events::{self, Events, Waker, WAIT_BOUND};
use crate::fabric::rdma::threads;
use crate::FabricError;

/// Sets built for a `connect`, with their QPs' addresses in handshake order.
type Built = Result<Vec<(QpSet, Vec<QpAddress>)>, FabricError>;

/// Work for the target thread.
pub(crate) enum Job {
    /// Build the sets of endpoint slots `first..first + count` towards `remote` (an
    /// initiator's side of a connection).
    Build {
        remote: Vec<RailAddress>,
        first: u16,
        count: u16,
        reply: SyncSender<Built>,
    },
    /// Build and connect the sets a peer's handshake asks for; answer with their addresses and
    /// a token to [`Settle`](Job::Settle) them by.
    Accept {
        request: Request,
        reply: SyncSender<(Response, Option<u64>)>,
    },
    /// The handshake of `token` ended: offer its sets as this engine's connection to the
    /// initiator (`adopt`, once it confirmed), or keep them only to serve it.
    Settle {
        token: u64,
        adopt: bool,
        reply: SyncSender<()>,
    },
    /// An endpoint let go of a healthy set with work still in flight: keep it connected (the
    /// peer may post on its end) without handing it to another endpoint.
    Keep(QpSet),
}

/// The way to the target thread: its job queue and the waker of its block.
pub(crate) struct Jobs {
    tx: SyncSender<Job>,
    waker: Waker,
}

impl Jobs {
    /// A queue and the receiving end for [`start`].
    pub(crate) fn new() -> Result<(Jobs, Receiver<Job>), FabricError> {
        let waker =
            Waker::new().map_err(|e| FabricError::os("verbs", "target thread's eventfd", e))?;
        let (tx, rx) = mpsc::sync_channel(4);
        Ok((Jobs { tx, waker }, rx))
    }

    /// Queues `job` and wakes the thread; false once the thread is gone.
    fn send(&self, job: Job) -> bool {
        let sent = self.tx.send(job).is_ok();
        self.waker.wake();
        sent
    }

    /// Hands `set` to the target thread to keep (see [`Job::Keep`]); dropped if the thread is
    /// gone.
    pub(crate) fn keep(&self, set: QpSet) {
        self.send(Job::Keep(set));
    }

    /// Has the target thread build sets for a `connect` (see [`Job::Build`]).
    pub(crate) fn build(
        &self,
        remote: &[RailAddress],
        first: u16,
        count: u16,
        timeout: Duration,
    ) -> Built {
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job::Build {
            remote: remote.to_vec(),
            first,
            count,
            reply,
        };
        if !self.send(job) {
            return Err(FabricError::Exhausted(
                "verbs target thread (the fabric stopped)",
            ));
        }
        answer.recv_timeout(timeout).map_err(|_| {
            FabricError::Exhausted("verbs target thread (no answer within handshake_timeout)")
        })?
    }
}

/// The target thread's resources, created with the fabric.
pub(crate) struct Target {
    /// Per rail: the CQ every QP's receives complete into.
    cqs: Vec<Cq>,
    /// Per rail: the receives every QP takes from.
    srqs: Vec<Arc<Srq>>,
    /// The completion channels the idle thread blocks on; `None` where a device cannot raise
    /// CQ events or the config turned them off.
    events: Option<Events>,
}

impl Target {
    pub(crate) fn new(rails: &[Rail], config: &VerbsConfig) -> Result<Target, FabricError> {
        let mut cqs = Vec::with_capacity(rails.len());
        let mut srqs = Vec::with_capacity(rails.len());
        let mut events = if config.cq_events {
            Some(
                Events::new(rails.iter().map(|r| &r.ctx))
                    .map_err(|e| FabricError::device("verbs", "target completion channel", e))?,
            )
        } else {
            None
        };
        for (i, r) in rails.iter().enumerate() {
            let d = r.ctx.device_attr();
            let cqe = match d.max_cqe {
                0 => config.target_cq_depth,
                max => config.target_cq_depth.min(max),
            };
            let cq = events::cq_for(|| Cq::builder(&r.ctx, cqe), &mut events, i);
            cqs.push(cq.map_err(|e| {
                FabricError::device(
                    "verbs",
                    format_args!("{} target CQ of {cqe}", r.ctx.name()),
                    e,
                )
            })?);
            // Never more receives than the CQ holds completions of.
            let depth = config.recv_depth.min(d.max_srq_wr).min(cqe);
            let dev = |what: &str, e| {
                FabricError::device(
                    "verbs",
                    format_args!("{} shared receive queue of {depth}: {what}", r.ctx.name()),
                    e,
                )
            };
            let srq = Srq::new(&r.pd, depth, 1).map_err(|e| dev("create", e))?;
            for _ in 0..depth {
                srq.post_recv(0, &[]).map_err(|e| dev("post receive", e))?;
            }
            srqs.push(srq);
        }
        Ok(Target { cqs, srqs, events })
    }
}

/// Starts the service and target threads.
pub(crate) fn start(
    shared: Arc<Shared>,
    listener: TcpListener,
    target: Target,
    jobs: Receiver<Job>,
    cpus: Option<crate::affinity::CpuSet>,
) -> Result<Vec<JoinHandle<()>>, FabricError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| FabricError::os("verbs", "service socket", e))?;
    let s1 = shared.clone();
    let t1 = crate::affinity::spawn_pinned("verbs-target", cpus, move || {
        TargetThread::new(s1, target).run(jobs)
    })
    .map_err(|e| FabricError::affinity("verbs", "the target thread", e))?;
    let stop = shared.stop.clone();
    match crate::affinity::spawn_pinned("verbs-service", cpus, move || serve(shared, listener)) {
        Ok(t2) => Ok(vec![t1, t2]),
        Err(e) => {
            // The target thread ends once the flag is up.
            stop.store(true, Ordering::SeqCst);
            let _ = t1.join();
            Err(FabricError::affinity("verbs", "the service thread", e))
        }
    }
}

/// Accepts handshakes one at a time until the fabric stops, asleep in poll(2) between them
/// (the fabric's drop wakes it with a connection: see `Threads::waking`).
fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let timeout = shared.config.handshake_timeout;
    while !shared.stop.load(Ordering::Relaxed) {
        if !threads::acceptable(&listener, threads::ACCEPT_WAIT) {
            continue;
        }
        // Non-blocking: a connection that went away between the poll and here is no wait.
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => {
                // Out of descriptors, say: the next poll would report the same at once.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let _ = handle(stream, &shared.jobs, timeout);
    }
}

/// One handshake: the request, the answer, and the initiator's confirmation that its QPs are
/// connected, after which this engine may post on its ends too (answered once it may).
fn handle(mut s: std::net::TcpStream, jobs: &Jobs, timeout: Duration) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let _ = s.set_nodelay(true);
    let body = handshake::receive(&mut s)?;
    let (response, token) = match Request::decode(&body) {
        Err(e) => (Response::Refused(e.to_string()), None),
        Ok(request) => {
            let (reply, answer) = mpsc::sync_channel(1);
            match jobs.send(Job::Accept { request, reply }) {
                false => (Response::Refused("target is shutting down".into()), None),
                true => answer.recv_timeout(timeout).unwrap_or_else(|_| {
                    (
                        Response::Refused("target thread did not answer".into()),
                        None,
                    )
                }),
            }
        }
    };
    let sent = handshake::send(&mut s, &response.encode());
    let Some(token) = token else {
        return sent;
    };
    let confirmed = sent.is_ok()
        && handshake::receive(&mut s).is_ok_and(|b| handshake::is_connected_message(&b));
    let (reply, done) = mpsc::sync_channel(1);
    let settled = jobs.send(Job::Settle {
        token,
        adopt: confirmed,
        reply,
    }) && done.recv_timeout(timeout).is_ok();
    if confirmed && settled {
        handshake::send(&mut s, &handshake::connected_message())?;
    }
    sent
}

/// The sets built in answer to a handshake, until it settles.
struct Pending {
    rails: Vec<RailAddress>,
    sets: Vec<QpSet>,
}

struct TargetThread {
    shared: Arc<Shared>,
    target: Target,
    /// Answered handshakes not yet confirmed, by token.
    pending: HashMap<u64, Pending>,
    /// Sets that serve a peer's connection and that no endpoint of this engine posts on.
    kept: Vec<QpSet>,
    next_token: u64,
    scratch: Box<[WorkCompletion]>,
}

impl TargetThread {
    fn new(shared: Arc<Shared>, target: Target) -> Self {
        TargetThread {
            shared,
            target,
            pending: HashMap::new(),
            kept: Vec::new(),
            next_token: 0,
            scratch: vec![WorkCompletion::default(); 64].into_boxed_slice(),
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        let mut backoff = Backoff::new(self.shared.config.idle_spin);
        let mut events = self.target.events.take();
        if let Some(ev) = events.as_mut() {
            ev.watch(&self.shared.jobs.waker);
        }
        while !self.shared.stop.load(Ordering::Relaxed) {
            let busy = self.pass(&rx);
            if !backoff.spun(busy) {
                continue;
            }
            let Some(ev) = events.as_mut() else {
                backoff.step(false);
                continue;
            };
            // Idle past the spin window: arm, poll once more (a completion that landed before
            // the arming raises no event), and only then block.
            if events::arm(self.target.cqs.iter_mut()).is_err() {
                events = None;
                continue;
            }
            if self.pass(&rx) {
                backoff.spun(true);
                continue;
            }
            if ev.wait(WAIT_BOUND).is_err() {
                events = None;
            }
            self.shared.jobs.waker.clear();
        }
    }

    /// Serves pending jobs and polls every rail once; whether there was work.
    fn pass(&mut self, rx: &Receiver<Job>) -> bool {
        let mut busy = false;
        while let Ok(job) = rx.try_recv() {
            self.serve(job);
            busy = true;
        }
        for rail in 0..self.target.cqs.len() {
            busy |= self.poll_rail(rail);
        }
        busy
    }

    fn serve(&mut self, job: Job) {
        match job {
            Job::Build {
                remote,
                first,
                count,
                reply,
            } => {
                let built = (first..first.saturating_add(count))
                    .map(|slot| {
                        conn::build_set(&self.shared, &self.receivers(), &remote, slot.into())
                    })
                    .collect();
                // A caller that gave up drops the sets with the message.
                let _ = reply.send(built);
            }
            Job::Accept { request, reply } => {
                let (response, token) = match self.accept(&request) {
                    Ok((qps, sets)) => {
                        self.shared.counts.answered.fetch_add(1, Ordering::Relaxed);
                        let token = self.next_token;
                        self.next_token += 1;
                        self.pending.insert(
                            token,
                            Pending {
                                rails: request.rails,
                                sets,
                            },
                        );
                        (Response::Accepted(qps), Some(token))
                    }
                    Err(e) => (Response::Refused(e.to_string()), None),
                };
                if let Err(mpsc::SendError((_, Some(token)))) = reply.send((response, token)) {
                    // The service gave up waiting: the initiator hears a refusal and never
                    // uses these sets, but they stay connected, as kept ones.
                    self.settle(token, false);
                }
            }
            Job::Settle {
                token,
                adopt,
                reply,
            } => {
                self.settle(token, adopt);
                let _ = reply.send(());
            }
            Job::Keep(set) => self.kept.push(set),
        }
    }

    fn receivers(&self) -> Receivers<'_> {
        Receivers {
            cqs: &self.target.cqs,
            srqs: &self.target.srqs,
        }
    }

    /// Whether `n` more sets fit beside the kept and pending ones: at most one per endpoint slot
    /// of every peer.
    fn fits(&self, n: usize) -> bool {
        let pending: usize = self.pending.values().map(|p| p.sets.len()).sum();
        let max =
            self.shared.config.max_peers as usize * usize::from(self.shared.config.max_endpoints);
        self.kept.len() + pending + n <= max
    }

    /// Makes room for `n` more kept sets: drops kept sets whose connection failed (their QPs
    /// are in the error state for good, and the peer reconnects with new ones).
    fn make_room(&mut self, n: usize) -> Result<(), FabricError> {
        if self.fits(n) {
            return Ok(());
        }
        self.kept.retain(|set| {
            set.qps
                .iter()
                .all(|qp| qp.query_state().is_ok_and(|s| s != ::efa::QpState::Err))
        });
        match self.fits(n) {
            true => Ok(()),
            false => Err(FabricError::Exhausted(
                "verbs connections served (raise max_peers or max_endpoints)",
            )),
        }
    }

    /// Builds and connects one set per slot of the initiator's request; returns their QPs'
    /// addresses in the request's order, and the sets.
    fn accept(&mut self, req: &Request) -> Result<(Vec<QpAddress>, Vec<QpSet>), FabricError> {
        let rails = self.shared.rails.len();
        if usize::from(req.target_rails) != rails {
            return Err(FabricError::BadAddress {
                rail: 0,
                reason: format!(
                    "initiator expects {} rails here, this engine has {rails}",
                    req.target_rails
                ),
            });
        }
        self.make_room(req.slots.into())?;
        let irails = req.rails.len();
        let mut out = vec![None; req.qps.len()];
        let mut sets = Vec::with_capacity(req.slots.into());
        for slot in 0..usize::from(req.slots) {
            let (mut set, addrs) =
                conn::build_set(&self.shared, &self.receivers(), &req.rails, slot)?;
            for (t, i) in (0..rails).flat_map(|t| (0..irails).map(move |i| (t, i))) {
                let at = handshake::qp_position(slot, i, t, irails, rails);
                let here = set.position(t, i);
                conn::connect_qp(&self.shared, &mut set, here, &req.qps[at])?;
                out[at] = Some(addrs[here]);
            }
            sets.push(set);
        }
        let qps =
            out.into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| FabricError::BadAddress {
                    rail: 0,
                    reason: "handshake request with QPs out of order".into(),
                })?;
        Ok((qps, sets))
    }

    /// Ends the handshake of `token` (see [`Job::Settle`]).
    fn settle(&mut self, token: u64, adopt: bool) {
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        let left = match adopt && !p.rails.is_empty() {
            true => self.shared.adopt(p.rails, p.sets),
            false => p.sets,
        };
        self.kept.extend(left);
    }

    /// Counts the notifications that arrived on one rail and reposts their receives.
    fn poll_rail(&mut self, rail: usize) -> bool {
        let want = self.scratch.len();
        let mut total = 0;
        // Bounded, so jobs and other rails get their turn.
        for _ in 0..self.scratch.len() {
            let n = self.poll_chunk(rail, want);
            total += n;
            if n < want {
                break;
            }
        }
        total > 0
    }

    fn poll_chunk(&mut self, rail: usize, want: usize) -> usize {
        // An error comes back only when no completion was consumed (the efa crate reports a
        // failure after some on the next call).
        let n = match self.target.cqs[rail].poll_into_with(&mut self.scratch[..want], notification)
        {
            Ok(n) => n,
            Err(_) => return 0,
        };
        let srq = &self.target.srqs[rail];
        for wc in &self.scratch[..n] {
            // Every completion took one receive from the SRQ, a flushed one (its QP failed)
            // too: put it back.
            let _ = srq.post_recv(0, &[]);
            if wc.is_success()
                && matches!(wc.opcode, Some(WcOpcode::Recv | WcOpcode::RecvRdmaWithImm))
            {
                if let (Some(tag), Some(sink)) = (wc.imm, self.shared.notifications.get()) {
                    sink.record(tag);
                }
            }
        }
        n
    }
}

/// What the service reads of a completion on its receive CQ: [`Completion::brief`] (`wr_id` and
/// status, fields of the CQ; every field of a failure), and of a successful one its opcode and
/// immediate, the notification's tag: three provider calls where the whole copy
/// ([`Completion::to_owned`]) makes seven.
fn notification(c: &Completion<'_>) -> WorkCompletion {
    let mut wc = c.brief();
    if wc.status.is_success() {
        let opcode = c.opcode();
        wc.opcode = Some(opcode);
        if matches!(opcode, WcOpcode::Recv | WcOpcode::RecvRdmaWithImm) {
            wc.imm = c.imm();
        }
    }
    wc
}

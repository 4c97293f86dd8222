//! The per-worker hot path of the `efa` fabric: one SRD QP and CQ per rail, plus, on a rail
//! that needs it, the two-sided protocol's QP ([`TwoSided`]). What every RDMA fabric shares
//! (run splitting, send-queue accounting, refused requests, CQ draining) is the
//! [`RdmaEndpoint`] core; this module says where a request goes (SRD with an AH per peer, or
//! the two-sided protocol) and how a run is posted.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ::efa::{CompCounter, Context, CounterOps, Cq, Dest, QpBuilder, SrdQp, ThreadDomain};

use super::addr;
use super::peers::Route as PeerRoute;
use super::plan::{path, Path};
use super::twosided::{Kind, TwoSided};
use super::{io, Shared};
use crate::fabric::rdma::endpoint::{Failed, RdmaEndpoint, RdmaPoster, Route, SendQueue};
use crate::fabric::rdma::events::{self, Events};
use crate::fabric::rdma::gate::CounterGate;
use crate::fabric::rdma::status::{efa_failure, post_reason};
use crate::fabric::rdma::wr;
use crate::fabric::{Completion, WorkOp, WorkRequest};
use crate::{FabricError, FailReason};

struct EndpointRail {
    // Field order is drop order: the QP before its CQ, both before their thread domain.
    qp: SrdQp,
    /// WRITEs of at most this many bytes go inline (0: none).
    inline_max: u32,
    cq: Cq,
    _td: Option<Arc<ThreadDomain>>,
    sq: SendQueue,
    /// The completion-counter gate of the CQ's polls (`EfaConfig::completion_counters`).
    gate: Option<CounterGate<CompCounter>>,
    /// The rail's RDMA bits (`addr::RDMA_READ | RDMA_WRITE`).
    rdma: u8,
    /// The device retries receiver-not-ready answers itself (`RNR_RETRY`); without it
    /// notifications go through the protocol QP, which retries them in software.
    rnr_retry: bool,
    /// The two-sided protocol's QP, created on first use.
    two_sided: Option<TwoSided>,
}

/// The `efa` fabric's endpoint: the shared RDMA core around the SRD rails.
pub(crate) type EfaEndpoint = RdmaEndpoint<EfaPoster>;

/// What is the `efa` fabric's own in an endpoint: its SRD rails and the way to each peer.
pub(crate) struct EfaPoster {
    shared: Arc<Shared>,
    rails: Vec<EndpointRail>,
    /// The completion channels of the rails' CQs, one per rail, where the configuration asks
    /// (`EfaConfig::cq_events`) and every device can raise CQ events: a waiting worker blocks
    /// on them ([`RdmaPoster::block`]).
    events: Option<Events>,
}

/// Bytes of a WRITE that rail `r` posts inline: the device's inline size where the device has
/// RDMA WRITE and libefa has inline RDMA write (EFA_1.5, rdma-core 63), 0 otherwise.
fn inline_write_size(shared: &Shared, r: &super::Rail) -> u32 {
    let lib = r.ctx.efa_max_sq_depth(1, 0, true).ok().flatten().is_some();
    match r.ctx.efa_attr() {
        Some(a)
            if shared.config.inline_write && lib && a.caps.contains(::efa::EfaCaps::RDMA_WRITE) =>
        {
            a.max_inline()
        }
        _ => 0,
    }
}

/// A completion counter for a rail of `ctx`: in host memory where libefa can (reads are
/// loads), else in the provider's.
pub(crate) fn rail_counter(ctx: &Arc<Context>) -> Result<Arc<CompCounter>, ::efa::Error> {
    CompCounter::in_host_memory(ctx).or_else(|_| CompCounter::new(ctx))
}

/// The SRD QP and CQ of rail `i` (`r`), on a thread domain where the configuration asks.
fn open_rail(
    shared: &Shared,
    i: usize,
    r: &super::Rail,
    events: &mut Option<Events>,
) -> Result<EndpointRail, FabricError> {
    let depth = shared.caps.queue_depth;
    let name = r.ctx.name();
    let td = if shared.config.thread_domain {
        ThreadDomain::new(&r.pd).ok()
    } else {
        None
    };
    let base = || {
        // Initiator completions are sends: no source GID to ask for.
        let cqb = Cq::builder(&r.ctx, depth).source_gid(false);
        match &td {
            // SAFETY: the CQ and the QP on this domain live in this endpoint, which one
            // thread at a time uses (`&mut self`); they move between threads together.
            Some(td) => unsafe { cqb.thread_domain(td) },
            None => cqb,
        }
    };
    // A device that cannot raise CQ events: every rail polls, and workers pause.
    let cq = events::cq_for(base, events, i).map_err(|e| io(format_args!("{name} CQ"), e))?;
    let inline_max = inline_write_size(shared, r);
    let mut qpb = QpBuilder::new(&r.pd, &cq, &cq)
        .inline_write(inline_max > 0)
        .max_inline_data(inline_max)
        .max_send_wr(depth)
        .max_recv_wr(1)
        .qkey(shared.config.qkey)
        .gid_index(r.gid.index);
    if let Some(td) = &td {
        // SAFETY: as for the CQ above.
        qpb = unsafe { qpb.thread_domain(td) };
    }
    let counter = match shared.config.completion_counters {
        true => Some(rail_counter(&r.ctx).map_err(|e| io(format_args!("{name} counter"), e))?),
        false => None,
    };
    if let Some(c) = &counter {
        // Every work request of the QP: its CQ sees no other.
        qpb = qpb.counter(
            c,
            CounterOps::SEND | CounterOps::RDMA_READ | CounterOps::RDMA_WRITE,
        );
    }
    let qp = qpb
        .build_srd()
        .map_err(|e| io(format_args!("{name} SRD QP"), e))?;
    Ok(EndpointRail {
        rdma: shared.rail_caps[i].rdma_bits(),
        rnr_retry: shared.rail_caps[i].rnr_retry,
        two_sided: None,
        inline_max: qp.caps().max_inline_data.min(inline_max),
        qp,
        cq,
        _td: td,
        sq: SendQueue::default(),
        gate: counter.map(CounterGate::new),
    })
}

/// A new endpoint of the fabric `shared`.
pub(crate) fn new_endpoint(shared: Arc<Shared>) -> Result<EfaEndpoint, FabricError> {
    let mut events = match shared.config.cq_events {
        true => Events::new(shared.rails.iter().map(|r| &r.ctx)).ok(),
        false => None,
    };
    let rails = shared
        .rails
        .iter()
        .enumerate()
        .map(|(i, r)| open_rail(&shared, i, r, &mut events))
        .collect::<Result<Vec<_>, _>>()?;
    let failed_cap = shared.caps.queue_depth as usize * rails.len();
    let poster = EfaPoster {
        shared,
        rails,
        events,
    };
    Ok(RdmaEndpoint::new(poster, failed_cap))
}

impl EfaPoster {
    /// Hands `wr` to its rail's two-sided protocol, creating the protocol QP on first use.
    /// `Ok(false)`: no room now, post it later.
    /// `pull`: both rails have RDMA READ, so a WRITE may use the rendezvous protocol.
    fn start_two_sided(
        &mut self,
        wr: &WorkRequest,
        kind: Kind,
        pull: bool,
    ) -> Result<bool, FailReason> {
        let er = &mut self.rails[usize::from(wr.rail)];
        if er.two_sided.is_none() {
            // Once per endpoint rail, on the first operation that needs it.
            let t = TwoSided::new(&self.shared, wr.rail).map_err(|_| FailReason::Io)?;
            er.two_sided = Some(t);
        }
        let t = er.two_sided.as_mut().expect("created above");
        Ok(t.start(&self.shared, wr, kind, pull))
    }

    /// The peer's route, if the peer is known.
    fn peer(&self, wr: &WorkRequest) -> Option<&PeerRoute<::efa::Ah>> {
        self.shared
            .peers
            .get(wr.peer as usize)
            .and_then(|p| p.get())
    }

    /// Drains rail `r`'s SRD CQ (when its counter gate, if any, is open), then its protocol
    /// QP's, into `out`.
    fn poll_rail(shared: &Shared, r: &mut EndpointRail, out: &mut [Completion]) -> usize {
        let due = r.sq.in_flight() > 0 && r.gate.as_mut().map_or(true, CounterGate::open);
        let mut n = match due {
            false => 0,
            true => match r.sq.drain(&mut r.cq, out, efa_failure) {
                Ok(n) => n,
                Err(_) => {
                    // The CQ can no longer be trusted: flush the rail's outstanding work (each
                    // request then completes once, as flushed) and count the error.
                    shared.poll_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = r.qp.set_error();
                    0
                }
            },
        };
        if let (true, Some(g)) = (due, r.gate.as_mut()) {
            g.drained(n, r.sq.in_flight());
        }
        if let Some(t) = r.two_sided.as_mut().filter(|t| t.busy()) {
            match t.poll(shared, &mut out[n..]) {
                Ok(got) => n += got,
                Err(()) => {
                    // As above: flush, so every chunk ends (sends as flushed, replies by the
                    // reply timeout).
                    shared.poll_errors.fetch_add(1, Ordering::Relaxed);
                    t.set_error();
                }
            }
        }
        n
    }
}

/// The protocol-QP operation `wr` needs from local rail `local` to the peer's rail, or `None`
/// for the hardware path.
#[inline]
fn two_sided_kind(
    mode: super::TwoSided,
    local: &EndpointRail,
    wr: &WorkRequest,
    route: &PeerRoute<::efa::Ah>,
) -> Option<Kind> {
    let (write, kind) = match wr.op {
        WorkOp::Read => (false, Kind::Read),
        WorkOp::Write => (true, Kind::Write),
        WorkOp::Notify { tag } if !local.rnr_retry => return Some(Kind::Notify(tag)),
        WorkOp::Notify { .. } => return None,
        // A WRITE with immediate consumes one of the target's receives, as a notification's
        // SEND does: without the device's RNR retries, the protocol sends the WRITE and then
        // the notification, whose receiver-not-ready answers it retries in software.
        WorkOp::WriteNotify { tag } if !local.rnr_retry => {
            return Some(Kind::WriteNotify(tag));
        }
        WorkOp::WriteNotify { tag } => (true, Kind::WriteNotify(tag)),
    };
    let remote = route.rdma(wr.remote_rail);
    (path(write, local.rdma, remote, mode) == Path::TwoSided).then_some(kind)
}

/// Adds `w` to `batch`, an SRD QP's open batch towards `d`; WRITEs of at most `inline_max`
/// bytes go inline. The `efa` crate checks the device limits ([`wr`]).
fn push_srd(
    batch: &mut ::efa::Batch<'_, ::efa::Srd>,
    w: &WorkRequest,
    d: &Dest<'_>,
    inline_max: u32,
) -> Result<(), ::efa::Error> {
    match w.op {
        WorkOp::Read => batch.read(w.token, d, &[wr::local_sge(w)?], wr::remote(w)),
        WorkOp::Write if w.len <= u64::from(inline_max) => {
            // SAFETY: `w` comes from the engine, and the bytes are copied into the WQE before
            // `write_inline` returns.
            let data = unsafe { wr::local_bytes(w) };
            batch.write_inline(w.token, d, data, wr::remote(w))
        }
        WorkOp::Write => batch.write(w.token, d, &[wr::local_sge(w)?], wr::remote(w)),
        // A 0-byte SEND with immediate, posted inline with no buffer, as libfabric posts
        // 0-byte sends on EFA.
        WorkOp::Notify { tag } => batch.send_inline(w.token, d, &[], Some(tag)),
        WorkOp::WriteNotify { tag } => {
            batch.write_imm(w.token, d, &[wr::local_sge(w)?], wr::remote(w), tag)
        }
    }
}

impl RdmaPoster for EfaPoster {
    fn route(&mut self, wr: &WorkRequest) -> Route {
        let rail = usize::from(wr.rail);
        let mode = self.shared.config.two_sided;
        let route = self.peer(wr);
        let dest = route.and_then(|r| r.dest(wr.rail, wr.remote_rail));
        let two_sided = match (route, self.rails.get(rail)) {
            (Some(r), Some(er)) if dest.is_some() => two_sided_kind(mode, er, wr, r)
                .map(|k| (k, er.rdma & r.rdma(wr.remote_rail) & addr::RDMA_READ != 0)),
            _ => None,
        };
        if let Some((kind, pull)) = two_sided {
            return match self.start_two_sided(wr, kind, pull) {
                Ok(true) => Route::Taken,
                Ok(false) => Route::Full,
                Err(reason) => Route::Refused(reason),
            };
        }
        match (dest, self.rails.get(rail)) {
            (Some(_), Some(er)) => Route::Queue {
                room: er.sq.room(self.shared.caps.queue_depth),
            },
            _ => Route::Refused(FailReason::InvalidAh),
        }
    }

    fn joins(&self, first: &WorkRequest, next: &WorkRequest) -> bool {
        let mode = self.shared.config.two_sided;
        let er = &self.rails[usize::from(first.rail)];
        self.peer(first)
            .is_some_and(|r| two_sided_kind(mode, er, next, r).is_none())
    }

    fn post_run(&mut self, run: &[WorkRequest], refused: &mut Failed) -> Result<(), FailReason> {
        let first = &run[0];
        let route = self
            .shared
            .peers
            .get(first.peer as usize)
            .and_then(|p| p.get());
        let (Some((ah, qpn, qkey)), Some(er)) = (
            route.and_then(|r| r.dest(first.rail, first.remote_rail)),
            self.rails.get_mut(usize::from(first.rail)),
        ) else {
            return Err(FailReason::InvalidAh);
        };
        let d = Dest::new(ah, qpn, qkey);
        let mut batch = er.qp.batch().map_err(|e| post_reason(&e))?;
        for w in run {
            if let Err(e) = push_srd(&mut batch, w, &d, er.inline_max) {
                refused.push(w.token, post_reason(&e));
            }
        }
        batch.commit().map_err(|e| post_reason(&e))
    }

    fn posted(&mut self, first: &WorkRequest, n: u32) {
        self.rails[usize::from(first.rail)].sq.add(n);
    }

    fn arm(&mut self) -> bool {
        // The two-sided protocol moves on polls (chunks to post, replies to expire).
        if self.events.is_none()
            || self
                .rails
                .iter()
                .any(|r| r.two_sided.as_ref().is_some_and(TwoSided::busy))
        {
            return false;
        }
        events::arm(self.rails.iter_mut().map(|r| &mut r.cq)).is_ok()
    }

    fn block(&mut self, timeout: std::time::Duration) {
        if let Some(ev) = self.events.as_mut() {
            // An error (a signal, a broken channel) ends the block early: the worker polls.
            let _ = ev.wait(timeout);
        }
    }

    fn poll(&mut self, out: &mut [Completion]) -> usize {
        // Every rail, even once `out` is full: the two-sided protocol makes progress (posts
        // waiting chunks, expires replies) on each poll.
        let mut n = 0;
        for r in &mut self.rails {
            n += Self::poll_rail(&self.shared, r, &mut out[n..]);
        }
        n
    }
}

//! The per-worker hot path of the `verbs` fabric. What every RDMA fabric shares (run
//! splitting, send-queue accounting, refused requests, CQ draining) is the [`RdmaEndpoint`]
//! core; this module keeps what RC needs: a connected QP set per peer, taken from the fabric on
//! the first post to the peer and replaced once a failure broke it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::conn::QpSet;
use super::Shared;
use crate::fabric::rdma::endpoint::{Failed, RdmaEndpoint, RdmaPoster, Route};
use crate::fabric::rdma::events::{self, Events};
use crate::fabric::rdma::status::{post_reason, verbs_reason};
use crate::fabric::rdma::wr;
use crate::fabric::{Completion, PeerId, WorkOp, WorkRequest};
use crate::{FabricError, FailReason};

/// The `verbs` fabric's endpoint: the shared RDMA core around one slot's RC QP sets.
pub(crate) type VerbsEndpoint = RdmaEndpoint<VerbsPoster>;

/// What is the `verbs` fabric's own in an endpoint: its slot and the QP sets of the peers it
/// posted to.
pub(crate) struct VerbsPoster {
    shared: Arc<Shared>,
    slot: usize,
    /// By peer id; filled on the first post to a peer.
    conns: Vec<Option<QpSet>>,
    /// Peers with a set in `conns`, for polling.
    active: Vec<PeerId>,
    /// Per peer: no new connection attempt before this instant (after one failed).
    retry_after: Box<[Option<Instant>]>,
    /// The slot's completion channels, where it has them: a waiting worker blocks on them.
    events: Option<Events>,
}

/// Pause between connection attempts to a peer that refused or did not answer.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Claims a free endpoint slot of the fabric.
fn claim_slot(shared: &Shared) -> Result<usize, FabricError> {
    let slots = shared.config.max_endpoints as usize;
    let mut cur = shared.slots_in_use.load(Ordering::Acquire);
    loop {
        let free = (0..slots).find(|&s| cur & (1 << s) == 0);
        let Some(s) = free else {
            return Err(FabricError::Exhausted(
                "verbs endpoints (raise VerbsConfig::max_endpoints)",
            ));
        };
        match shared.slots_in_use.compare_exchange(
            cur,
            cur | (1 << s),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Ok(s),
            Err(now) => cur = now,
        }
    }
}

/// A new endpoint of the fabric `shared`, on a free slot.
pub(crate) fn new_endpoint(shared: Arc<Shared>) -> Result<VerbsEndpoint, FabricError> {
    let slot = claim_slot(&shared)?;
    let peers = shared.peers.len();
    let failed_cap = (shared.config.queue_depth as usize) * shared.rails.len();
    let channels = shared.slot_channels[slot].clone();
    let poster = VerbsPoster {
        events: (!channels.is_empty()).then(|| Events::from_channels(channels)),
        slot,
        conns: (0..peers).map(|_| None).collect(),
        active: Vec::with_capacity(peers),
        retry_after: (0..peers).map(|_| None).collect(),
        shared,
    };
    Ok(RdmaEndpoint::new(poster, failed_cap))
}

impl VerbsPoster {
    /// Takes this slot's QP set of `peer` from the fabric (once per peer per endpoint). A slot
    /// whose last connection failed is connected again here, with a handshake: this happens on
    /// the first post of a new endpoint after a failure, never in steady state.
    fn take(&mut self, peer: PeerId) -> Result<(), FailReason> {
        let Some(entry) = self.conns.get(peer as usize) else {
            return Err(FailReason::InvalidAh);
        };
        if entry.is_some() {
            return Ok(());
        }
        let Some(p) = self.shared.peers.get(peer as usize).and_then(|p| p.get()) else {
            return Err(FailReason::InvalidAh);
        };
        let set = p.sets[self.slot]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let set = match set {
            Some(s) => s,
            None => {
                let retry = &mut self.retry_after[peer as usize];
                if retry.is_some_and(|t| Instant::now() < t) {
                    return Err(FailReason::UnreachableRemote);
                }
                match super::conn::connect(&self.shared, &p.addrs, self.slot as u16, 1)
                    .ok()
                    .and_then(|v| v.into_iter().next())
                {
                    Some(s) => {
                        *retry = None;
                        s
                    }
                    None => {
                        *retry = Some(Instant::now() + RETRY_PAUSE);
                        return Err(FailReason::UnreachableRemote);
                    }
                }
            }
        };
        self.conns[peer as usize] = Some(set);
        if !self.active.contains(&peer) {
            self.active.push(peer);
        }
        Ok(())
    }

    /// The set of `peer`, taken (or replaced, once a failed one has drained) if need be.
    fn set_for(&mut self, peer: PeerId) -> Result<&mut QpSet, FailReason> {
        self.take(peer)?;
        // A failed connection, once drained, is replaced by a new one (RC keeps a QP in the
        // error state for good).
        if self.conns[peer as usize]
            .as_ref()
            .is_some_and(|s| s.broken && s.in_flight() == 0)
        {
            self.conns[peer as usize] = None;
            self.take(peer)?;
        }
        self.conns[peer as usize]
            .as_mut()
            .ok_or(FailReason::InvalidAh)
    }
}

/// Adds `w` to `batch`, an RC QP's open batch; WRITEs of at most `inline_max` bytes go inline.
/// The `efa` crate checks the device limits ([`wr`]).
fn push_rc(
    batch: &mut ::efa::Batch<'_, ::efa::Rc>,
    w: &WorkRequest,
    inline_max: u32,
) -> Result<(), ::efa::Error> {
    match w.op {
        WorkOp::Read => batch.read(w.token, &[wr::local_sge(w)?], wr::remote(w)),
        WorkOp::Write if w.len <= u64::from(inline_max) => {
            // SAFETY: `w` comes from the engine, and the bytes are copied into the WQE before
            // `write_inline` returns.
            let data = unsafe { wr::local_bytes(w) };
            batch.write_inline(w.token, data, wr::remote(w))
        }
        WorkOp::Write => batch.write(w.token, &[wr::local_sge(w)?], wr::remote(w)),
        // A zero-length SEND with the tag as immediate: it needs no remote key, and the
        // target's receive completion carries the tag.
        WorkOp::Notify { tag } => batch.send_imm(w.token, &[], tag),
        WorkOp::WriteNotify { tag } => {
            batch.write_imm(w.token, &[wr::local_sge(w)?], wr::remote(w), tag)
        }
    }
}

impl RdmaPoster for VerbsPoster {
    fn route(&mut self, wr: &WorkRequest) -> Route {
        let rails = self.shared.rails.len();
        let depth = self.shared.config.queue_depth;
        let set = match self.set_for(wr.peer) {
            Ok(set) => set,
            Err(reason) => return Route::Refused(reason),
        };
        let rail = usize::from(wr.rail);
        if rail >= rails || usize::from(wr.remote_rail) >= set.remote_rails {
            return Route::Refused(FailReason::InvalidAh);
        }
        Route::Queue {
            room: set.sqs[rail].room(depth),
        }
    }

    fn joins(&self, _first: &WorkRequest, _next: &WorkRequest) -> bool {
        // One RC QP per (peer, rail, remote rail): the core's check is the whole rule.
        true
    }

    fn post_run(&mut self, run: &[WorkRequest], refused: &mut Failed) -> Result<(), FailReason> {
        let first = &run[0];
        let set = self.conns[first.peer as usize]
            .as_mut()
            .ok_or(FailReason::InvalidAh)?;
        let at = set.position(first.rail.into(), first.remote_rail.into());
        let inline_max = set.inline_max;
        let mut batch = set.qps[at].batch().map_err(|e| post_reason(&e))?;
        for w in run {
            if let Err(e) = push_rc(&mut batch, w, inline_max) {
                refused.push(w.token, post_reason(&e));
            }
        }
        batch.commit().map_err(|e| post_reason(&e))
    }

    fn posted(&mut self, first: &WorkRequest, n: u32) {
        if let Some(set) = self.conns[first.peer as usize].as_mut() {
            set.sqs[usize::from(first.rail)].add(n);
        }
    }

    fn arm(&mut self) -> bool {
        if self.events.is_none() {
            return false;
        }
        let mut ok = true;
        for &p in &self.active {
            if let Some(set) = self.conns[p as usize].as_mut() {
                // A CQ made without a channel (a device without CQ events) would be slept
                // through: then pause instead.
                ok &= set.cqs.iter().all(::efa::Cq::has_channel)
                    && events::arm(set.cqs.iter_mut()).is_ok();
            }
        }
        ok
    }

    fn block(&mut self, timeout: Duration) {
        if let Some(ev) = self.events.as_mut() {
            // An error (a signal, a broken channel) ends the block early: the worker polls.
            let _ = ev.wait(timeout);
        }
    }

    fn poll(&mut self, out: &mut [Completion]) -> usize {
        let mut n = 0;
        for &peer in &self.active {
            let Some(set) = self.conns[peer as usize].as_mut() else {
                continue;
            };
            let broken = &mut set.broken;
            for (sq, cq) in set.sqs.iter_mut().zip(&mut set.cqs) {
                // A CQ that fails to poll is polled again next time (RC flushes on its own).
                n += sq
                    .drain(cq, &mut out[n..], |c| {
                        let error = verbs_reason(c.status());
                        *broken |= error.is_some();
                        error
                    })
                    .unwrap_or_default();
            }
        }
        n
    }
}

impl Drop for VerbsPoster {
    fn drop(&mut self) {
        // Healthy sets with nothing in flight go back to the fabric for the slot's next
        // endpoint. A healthy set with work in flight (its completions would confuse the next
        // owner) goes to the target thread, which keeps it connected: the peer may be posting
        // on the other end of the same QPs. A failed set is destroyed (RC holds its QPs in
        // error for good); the slot's next endpoint connects the peer again.
        for &peer in &self.active {
            let Some(set) = self.conns[peer as usize].take() else {
                continue;
            };
            if set.broken {
                continue;
            }
            let entry = self.shared.peers.get(peer as usize).and_then(|p| p.get());
            match entry {
                Some(p) if set.in_flight() == 0 => {
                    *p.sets[self.slot]
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(set);
                }
                _ => self.shared.jobs.keep(set),
            }
        }
        self.shared
            .slots_in_use
            .fetch_and(!(1u64 << self.slot), Ordering::AcqRel);
    }
}

//! The per-worker hot path of the `verbs` fabric.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use ::efa::{RemoteAddr, Sge, WorkCompletion};

use super::conn::QpSet;
use super::Shared;
use crate::fabric::rdma::status::{post_reason, verbs_reason};
use crate::fabric::{Completion, Endpoint, PeerId, WorkOp, WorkRequest};
use crate::{FabricError, FailReason};

/// Completions polled per CQ per pass.
const POLL_CHUNK: usize = 64;

/// One worker's slot: the QP sets of the peers it posted to, and completions of requests
/// refused before the device saw them.
pub(crate) struct VerbsEndpoint {
    shared: Arc<Shared>,
    slot: usize,
    /// By peer id; filled on the first post to a peer.
    conns: Vec<Option<QpSet>>,
    /// Peers with a set in `conns`, for polling.
    active: Vec<PeerId>,
    /// Requests accepted and failed locally, completed on the next poll.
    failed: VecDeque<Completion>,
    failed_cap: usize,
    scratch: Box<[WorkCompletion]>,
    outstanding: usize,
    /// Per peer: no new connection attempt before this instant (after one failed).
    retry_after: Box<[Option<Instant>]>,
}

/// Pause between connection attempts to a peer that refused or did not answer.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

impl VerbsEndpoint {
    pub(crate) fn new(shared: Arc<Shared>) -> Result<Self, FabricError> {
        let slots = shared.config.max_endpoints as usize;
        let mut cur = shared.slots_in_use.load(Ordering::Acquire);
        let slot = loop {
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
                Ok(_) => break s,
                Err(now) => cur = now,
            }
        };
        let peers = shared.peers.len();
        let failed_cap = (shared.config.queue_depth as usize) * shared.rails.len();
        Ok(VerbsEndpoint {
            slot,
            conns: (0..peers).map(|_| None).collect(),
            active: Vec::with_capacity(peers),
            failed: VecDeque::with_capacity(failed_cap),
            failed_cap,
            scratch: vec![WorkCompletion::default(); POLL_CHUNK].into_boxed_slice(),
            outstanding: 0,
            retry_after: (0..peers).map(|_| None).collect(),
            shared,
        })
    }

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
                match super::conn::connect(&self.shared, &p.addrs, 1)
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

    fn fail(&mut self, token: u64, reason: FailReason) {
        self.failed.push_back(Completion {
            token,
            error: Some(reason),
        });
        self.outstanding += 1;
    }
}

/// Posts `wrs` (all to the same peer, rail and remote rail) on one QP with one doorbell.
/// Returns the requests the `efa` crate refused, which the caller completes with an error.
fn post_run(
    set: &mut QpSet,
    wrs: &[WorkRequest],
    refused: &mut dyn FnMut(u64, FailReason),
) -> Result<(), FailReason> {
    let first = &wrs[0];
    let rail = usize::from(first.rail);
    // Slot 0 of a one-slot list: the set's own order.
    let at = super::handshake::qp_position(
        0,
        rail,
        first.remote_rail.into(),
        set.cqs.len(),
        set.remote_rails,
    );
    let qp = &mut set.qps[at];
    let mut batch = qp.batch().map_err(|e| post_reason(&e))?;
    for wr in wrs {
        let remote = RemoteAddr {
            addr: wr.remote_addr,
            rkey: wr.remote_key as u32,
        };
        let pushed = match wr.op {
            WorkOp::Read | WorkOp::Write => {
                let Ok(len) = u32::try_from(wr.len) else {
                    refused(wr.token, FailReason::BadLength);
                    continue;
                };
                let sge = [Sge::new(wr.local_addr, len, wr.local_key as u32)];
                if wr.op == WorkOp::Read {
                    batch.read(wr.token, &sge, remote)
                } else {
                    batch.write(wr.token, &sge, remote)
                }
            }
            // A zero-length SEND with the tag as immediate: it needs no remote key, and the
            // target's receive completion carries the tag.
            WorkOp::Notify { tag } => batch.send_imm(wr.token, &[], tag),
        };
        if let Err(e) = pushed {
            refused(wr.token, post_reason(&e));
        }
    }
    batch.commit().map_err(|e| post_reason(&e))
}

impl Endpoint for VerbsEndpoint {
    fn post(&mut self, wrs: &[WorkRequest]) -> usize {
        let rails = self.shared.rails.len();
        let depth = self.shared.config.queue_depth;
        let mut i = 0;
        while i < wrs.len() {
            let wr = wrs[i];
            if self.failed.len() >= self.failed_cap {
                break;
            }
            if let Err(reason) = self.take(wr.peer) {
                self.fail(wr.token, reason);
                i += 1;
                continue;
            }
            // A failed connection, once drained, is replaced by a new one (RC keeps a QP in the
            // error state for good).
            if self.conns[wr.peer as usize]
                .as_ref()
                .is_some_and(|s| s.broken && s.in_flight() == 0)
            {
                self.conns[wr.peer as usize] = None;
                if let Err(reason) = self.take(wr.peer) {
                    self.fail(wr.token, reason);
                    i += 1;
                    continue;
                }
            }
            let Some(set) = self.conns[wr.peer as usize].as_mut() else {
                break;
            };
            let rail = usize::from(wr.rail);
            if rail >= rails || usize::from(wr.remote_rail) >= set.remote_rails {
                self.fail(wr.token, FailReason::InvalidAh);
                i += 1;
                continue;
            }
            let room = (depth - set.outstanding[rail].min(depth)) as usize;
            // Local refusals complete through `failed`, so a run never exceeds its room either.
            let room = room.min(self.failed_cap - self.failed.len());
            if room == 0 {
                break;
            }
            let mut end = i + 1;
            while end < wrs.len()
                && end - i < room
                && (wrs[end].peer, wrs[end].rail, wrs[end].remote_rail)
                    == (wr.peer, wr.rail, wr.remote_rail)
            {
                end += 1;
            }
            let run = &wrs[i..end];
            let failed = &mut self.failed;
            let mut refused_n = 0usize;
            let result = post_run(set, run, &mut |token, reason| {
                failed.push_back(Completion {
                    token,
                    error: Some(reason),
                });
                refused_n += 1;
            });
            match result {
                Ok(()) => {
                    set.outstanding[rail] += (run.len() - refused_n) as u32;
                }
                Err(reason) => {
                    // Nothing of the run reached the device: complete all of it with the
                    // reason (the refused ones are already queued).
                    self.failed.truncate(self.failed.len() - refused_n);
                    for w in run {
                        self.failed.push_back(Completion {
                            token: w.token,
                            error: Some(reason),
                        });
                    }
                }
            }
            self.outstanding += run.len();
            i = end;
        }
        i
    }

    fn poll(&mut self, out: &mut [Completion]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(c) = self.failed.pop_front() else {
                break;
            };
            out[n] = c;
            n += 1;
        }
        for &peer in &self.active {
            let Some(set) = self.conns[peer as usize].as_mut() else {
                continue;
            };
            for rail in 0..set.cqs.len() {
                let chunk = self.scratch.len();
                while set.outstanding[rail] > 0 && n < out.len() {
                    let want = (out.len() - n).min(chunk);
                    let got = set.cqs[rail]
                        .poll_into(&mut self.scratch[..want])
                        .unwrap_or_default();
                    for wc in &self.scratch[..got] {
                        let error = verbs_reason(wc.status);
                        set.broken |= error.is_some();
                        out[n] = Completion {
                            token: wc.wr_id,
                            error,
                        };
                        n += 1;
                    }
                    set.outstanding[rail] -= (got as u32).min(set.outstanding[rail]);
                    if got < want {
                        break;
                    }
                }
            }
        }
        self.outstanding -= n.min(self.outstanding);
        n
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }
}

impl Drop for VerbsEndpoint {
    fn drop(&mut self) {
        // Healthy sets with nothing in flight go back to the fabric for the slot's next
        // endpoint. A failed set, or one with work in flight (its completions would confuse the
        // next owner), is destroyed; the slot's next endpoint connects the peer again.
        for &peer in &self.active {
            let Some(set) = self.conns[peer as usize].take() else {
                continue;
            };
            if set.in_flight() == 0 && !set.broken {
                if let Some(p) = self.shared.peers.get(peer as usize).and_then(|p| p.get()) {
                    *p.sets[self.slot]
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(set);
                }
            }
        }
        self.shared
            .slots_in_use
            .fetch_and(!(1u64 << self.slot), Ordering::AcqRel);
    }
}

//! The sim's per-worker queues: execution at post, delayed and reordered completion at poll.

use std::sync::Arc;
use std::time::Instant;

use super::rng::Rng;
use super::Shared;
use crate::fabric::{Completion, Endpoint, WorkOp, WorkRequest, MAX_RAILS};
use crate::{Access, FailReason};

#[derive(Debug, Clone, Copy)]
struct Pending {
    token: u64,
    error: Option<FailReason>,
    rail: u16,
    ready_step: u64,
    ready_at: Option<Instant>,
}

enum Outcome {
    Done(Option<FailReason>),
    Unresponsive,
}

pub(crate) struct SimEndpoint {
    shared: Arc<Shared>,
    rng: Rng,
    step: u64,
    outstanding: [u32; MAX_RAILS],
    pending: Vec<Pending>,
    /// Pending entries with a wall-clock deadline (0 means polls never read the clock).
    timed: usize,
    /// Remote region pinned during one `post` call, as (peer, key, slot): consecutive requests
    /// to the same region share one pin.
    /// The peer, key, slot and rail mask of the region pinned across a `post` call.
    held: Option<(u32, u64, usize, u32)>,
}

/// Unpins the region held across a `post` call (a free function so callers can borrow other
/// fields of the endpoint meanwhile).
fn release_held(shared: &Shared, held: &mut Option<(u32, u64, usize, u32)>) {
    if let Some((peer, _, slot, _)) = held.take() {
        if let Some(node) = shared.peers.get(peer as usize).and_then(|p| p.get()) {
            node.regions.release(slot);
        }
    }
}

impl SimEndpoint {
    pub(crate) fn new(shared: Arc<Shared>, seed: u64) -> Self {
        let cap = shared.config.rails as usize * shared.config.queue_depth as usize;
        SimEndpoint {
            shared,
            rng: Rng::new(seed),
            step: 0,
            outstanding: [0; MAX_RAILS],
            pending: Vec::with_capacity(cap),
            timed: 0,
            held: None,
        }
    }

    #[inline]
    fn execute(&mut self, wr: &WorkRequest) -> Outcome {
        let sh = &*self.shared;
        let me = &*sh.node;
        let Some(target) = sh.peers.get(wr.peer as usize).and_then(|p| p.get()) else {
            return Outcome::Done(Some(FailReason::InvalidAh));
        };
        if wr.remote_rail >= target.rails {
            return Outcome::Done(Some(FailReason::BadDestQpn));
        }
        if !target.alive.load(std::sync::atomic::Ordering::Relaxed) {
            return Outcome::Unresponsive;
        }
        if !target.knows(me.id) {
            return Outcome::Done(Some(FailReason::UnknownPeer));
        }
        if let Some(fault) = sh.rail_fault(wr.rail) {
            return Outcome::Done(Some(fault));
        }
        if sh.error_threshold != 0 && self.rng.next_u64() <= sh.error_threshold {
            let reasons = &sh.config.faults.error_reasons;
            let r = if reasons.is_empty() {
                FailReason::Injected
            } else {
                reasons[self.rng.below(reasons.len())]
            };
            return Outcome::Done(Some(r));
        }
        let (write, need) = match wr.op {
            WorkOp::Notify { tag } => {
                if wr.len > sh.config.max_msg_size {
                    return Outcome::Done(Some(FailReason::BadLength));
                }
                return Outcome::Done(match target.notifications.get() {
                    Some(n) if n.record(tag) => None,
                    Some(_) => Some(FailReason::RemoteAbort),
                    None => Some(FailReason::RemoteRnr),
                });
            }
            WorkOp::Read => (false, Access::REMOTE_READ),
            WorkOp::Write => (true, Access::REMOTE_WRITE),
            WorkOp::WriteNotify { tag } => {
                // As a WRITE with immediate: no receive to take (no counters, a tag outside
                // them), and nothing is placed.
                match target.notifications.get() {
                    Some(n) if tag < n.tags() => {}
                    Some(_) => return Outcome::Done(Some(FailReason::RemoteAbort)),
                    None => return Outcome::Done(Some(FailReason::RemoteRnr)),
                }
                (true, Access::REMOTE_WRITE)
            }
        };
        if wr.len > sh.config.max_rdma_size || wr.len == 0 {
            return Outcome::Done(Some(FailReason::BadLength));
        }
        if !me
            .regions
            .check_local_on(wr.local_key, wr.rail, wr.local_addr, wr.len)
        {
            return Outcome::Done(Some(FailReason::InvalidLkey));
        }
        let (slot, rails) = match self.held {
            Some((peer, key, slot, rails)) if peer == wr.peer && key == wr.remote_key => {
                (slot, rails)
            }
            _ => {
                release_held(sh, &mut self.held);
                let Some(slot) = target.regions.pin(wr.remote_key) else {
                    return Outcome::Done(Some(FailReason::RemoteBadAddress));
                };
                let rails = target.regions.rails_of(slot);
                self.held = Some((wr.peer, wr.remote_key, slot, rails));
                (slot, rails)
            }
        };
        // A key from another rail's registration, as a device's rkey of another PD.
        if (rails >> (wr.remote_rail & 31)) & 1 == 0
            || !target.regions.covers(slot, wr.remote_addr, wr.len, need)
        {
            return Outcome::Done(Some(FailReason::RemoteBadAddress));
        }
        let (src, dst) = if write {
            (wr.local_addr, wr.remote_addr)
        } else {
            (wr.remote_addr, wr.local_addr)
        };
        // SAFETY: both ranges lie inside regions registered with the sim (checked above; the
        // remote one is pinned so its deregistration waits for this copy, the local one is kept
        // registered by its owner while this request is posted). Registration is an
        // `unsafe` promise that the memory stays valid while registered. `copy` tolerates
        // overlap (loopback between two segments of one process may alias).
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, wr.len as usize) };
        if let (WorkOp::WriteNotify { tag }, Some(n)) = (wr.op, target.notifications.get()) {
            // The bytes are placed: now the tag counts.
            n.record(tag);
        }
        Outcome::Done(None)
    }
}

impl Endpoint for SimEndpoint {
    fn post(&mut self, wrs: &[WorkRequest]) -> usize {
        let depth = self.shared.config.queue_depth;
        let rails = self.shared.config.rails;
        let faults_delay_steps = self.shared.config.faults.max_delay_steps;
        let faults_delay = self.shared.config.faults.max_delay;
        for (i, wr) in wrs.iter().enumerate() {
            // Invalid rails still occupy (and are charged to) rail 0 so they complete once.
            let valid_rail = wr.rail < rails;
            let rail = if valid_rail { wr.rail } else { 0 };
            if self.outstanding[rail as usize] >= depth {
                release_held(&self.shared, &mut self.held);
                return i;
            }
            let outcome = if valid_rail {
                self.execute(wr)
            } else {
                Outcome::Done(Some(FailReason::InvalidAh))
            };
            let mut p = Pending {
                token: wr.token,
                error: None,
                rail,
                ready_step: self.step,
                ready_at: None,
            };
            match outcome {
                Outcome::Done(e) => {
                    p.error = e;
                    if faults_delay_steps > 0 {
                        p.ready_step += self.rng.below(faults_delay_steps as usize + 1) as u64;
                    }
                    if let Some(d) = faults_delay {
                        let nanos = d.as_nanos().min(u64::MAX as u128) as u64;
                        let wait = std::time::Duration::from_nanos(
                            self.rng.below(nanos as usize + 1) as u64,
                        );
                        p.ready_at = Some(Instant::now() + wait);
                    }
                }
                Outcome::Unresponsive => {
                    p.error = Some(FailReason::UnresponsiveRemote);
                    p.ready_at = Some(Instant::now() + self.shared.config.faults.unresp_timeout);
                }
            }
            if p.ready_at.is_some() {
                self.timed += 1;
            }
            self.outstanding[rail as usize] += 1;
            self.pending.push(p);
        }
        release_held(&self.shared, &mut self.held);
        wrs.len()
    }

    fn poll(&mut self, out: &mut [Completion]) -> usize {
        self.step += 1;
        if self.pending.is_empty() {
            return 0;
        }
        let now = (self.timed > 0).then(Instant::now);
        let mut n = 0;
        let mut misses = 0;
        while n < out.len() && !self.pending.is_empty() && misses < self.pending.len() {
            let i = self.rng.below(self.pending.len());
            let p = self.pending[i];
            let ready = p.ready_step <= self.step
                && match (p.ready_at, now) {
                    (Some(t), Some(now)) => now >= t,
                    _ => true,
                };
            if !ready {
                misses += 1;
                continue;
            }
            out[n] = Completion {
                token: p.token,
                error: p.error,
            };
            n += 1;
            self.outstanding[p.rail as usize] -= 1;
            if p.ready_at.is_some() {
                self.timed -= 1;
            }
            self.pending.swap_remove(i);
        }
        n
    }

    fn outstanding(&self) -> usize {
        self.pending.len()
    }
}

//! Connections: one [`QpSet`] per endpoint slot at each end, built on the target thread (every
//! QP takes its receives from its rail's shared receive queue and completes them into the
//! target thread's CQ), exchanged in the handshake and connected.
//!
//! A connection carries both directions. The initiator posts on the set it built; the target
//! keeps the set it built in answer, and once the initiator confirmed, offers it as its own
//! connection to the initiator's engine ([`Shared::adopt`]): a later [`connect`] back to that
//! engine finds it and runs no handshake, so a ping-pong between two engines runs on one RC
//! QP pair each way, as perftest's does.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use ::efa::{Cq, QpBuilder, RcOptions, RcQp, Srq};

use super::addr::{QpAddress, RailAddress};
use super::handshake::{self, Request};
use super::{random_u64, Peer, Shared};
use crate::fabric::rdma::endpoint::SendQueue;
use crate::fabric::rdma::events;
use crate::FabricError;

/// The QPs and CQs of one endpoint slot towards one peer.
pub(crate) struct QpSet {
    /// Remote rails of the peer.
    pub remote_rails: usize,
    /// Send CQ per local rail (shared by the QPs to every remote rail).
    pub cqs: Vec<Cq>,
    /// QP per (local rail, remote rail), local-rail-major.
    pub qps: Vec<RcQp>,
    /// Work requests posted and not yet completed, per local rail (per send CQ).
    pub sqs: Vec<SendQueue>,
    /// WRITEs of at most this many bytes go inline: the least every QP of the set granted.
    pub inline_max: u32,
    /// A work request failed: RC moved its QP to the error state, so the set is discarded
    /// once drained instead of going back to the fabric.
    pub broken: bool,
}

impl QpSet {
    /// Work requests in flight on every rail.
    pub(crate) fn in_flight(&self) -> u64 {
        self.sqs.iter().map(|q| u64::from(q.in_flight())).sum()
    }

    /// Position of the QP from local rail `local` to remote rail `remote` in [`qps`](Self::qps).
    pub(crate) fn position(&self, local: usize, remote: usize) -> usize {
        local * self.remote_rails + remote
    }
}

/// What the QPs of each rail share: the target thread's receive CQ and shared receive queue.
pub(crate) struct Receivers<'a> {
    pub cqs: &'a [Cq],
    pub srqs: &'a [Arc<Srq>],
}

fn io(what: impl std::fmt::Display, e: ::efa::Error) -> FabricError {
    FabricError::device("verbs", what, e)
}

/// The RC options of a QP on `rail` towards a peer rail serving `peer_rd` READs. Both ends
/// send (SENDs too), so both wait for receivers rather than fail.
pub(crate) fn rc_options(shared: &Shared, rail: usize, peer_rd: u8) -> RcOptions {
    RcOptions {
        timeout: shared.ack_timeout,
        retry_cnt: super::RETRY_CNT,
        // Receivers repost as fast as they poll; wait for them rather than fail.
        rnr_retry: 7,
        min_rnr_timer: 12,
        max_rd_atomic: shared.rails[rail].rd_atomic.min(peer_rd).max(1),
    }
}

/// Builds one set towards the rails `remote`, its send CQs on the completion channels of
/// endpoint slot `slot` (none past the fabric's slots). Returns the set and its QPs'
/// addresses, local-rail-major. Runs on the target thread, which owns `recv`.
pub(crate) fn build_set(
    shared: &Shared,
    recv: &Receivers<'_>,
    remote: &[RailAddress],
    slot: usize,
) -> Result<(QpSet, Vec<QpAddress>), FabricError> {
    let channels = shared.slot_channels.get(slot);
    let depth = shared.config.queue_depth;
    let mut inline = shared.config.inline_size;
    let mut cqs = Vec::with_capacity(shared.rails.len());
    let mut qps = Vec::with_capacity(shared.rails.len() * remote.len());
    let mut addrs = Vec::with_capacity(qps.capacity());
    for (l, rail) in shared.rails.iter().enumerate() {
        let name = rail.ctx.name();
        let cqe = depth.saturating_mul(remote.len() as u32);
        let channel = channels.and_then(|c| c.get(l)).map(|c| (c, l as u64));
        let cq = events::cq_on(|| Cq::builder(&rail.ctx, cqe), channel)
            .map_err(|e| io(format_args!("{name} CQ of {cqe}"), e))?;
        for r in remote {
            if r.mtu != rail.mtu {
                return Err(FabricError::BadAddress {
                    rail: r.rail,
                    reason: format!(
                        "path MTU mismatch: {name} runs {:?}, the peer's rail {} runs {:?}",
                        rail.mtu, r.rail, r.mtu
                    ),
                });
            }
            let psn = (random_u64() & 0x00ff_ffff) as u32;
            let build = |inline: u32| {
                QpBuilder::new(&rail.pd, &cq, &recv.cqs[l])
                    .srq(&recv.srqs[l])
                    .max_send_wr(depth)
                    .max_send_sge(1)
                    .max_inline_data(inline)
                    .psn(psn)
                    .port(shared.config.port)
                    .gid_index(rail.gid.index)
                    .rc_options(rc_options(shared, l, r.rd_atomic))
                    .build_rc()
            };
            // A device that grants less inline data than asked gets a QP without.
            let qp = match build(inline) {
                Err(_) if inline > 0 => {
                    inline = 0;
                    build(0)
                }
                built => built,
            }
            .map_err(|e| io(format_args!("{name} RC QP"), e))?;
            inline = inline.min(qp.caps().max_inline_data);
            addrs.push(QpAddress {
                qpn: qp.qp_num(),
                psn,
                gid: rail.gid.gid,
                lid: rail.lid,
                mtu: rail.mtu,
                rd_atomic: rail.rd_atomic,
            });
            qps.push(qp);
        }
        cqs.push(cq);
    }
    Ok((
        QpSet {
            remote_rails: remote.len(),
            sqs: (0..cqs.len()).map(|_| SendQueue::default()).collect(),
            inline_max: inline,
            broken: false,
            cqs,
            qps,
        },
        addrs,
    ))
}

/// Connects the QP at `position` of `set` to the peer's QP `peer`, whose MTU must be the local
/// rail's.
pub(crate) fn connect_qp(
    shared: &Shared,
    set: &mut QpSet,
    position: usize,
    peer: &QpAddress,
) -> Result<(), FabricError> {
    let local = position / set.remote_rails;
    if peer.mtu != shared.rails[local].mtu {
        return Err(FabricError::BadAddress {
            rail: (position % set.remote_rails) as u16,
            reason: format!(
                "QP {:#x} runs {:?}, {} runs {:?}",
                peer.qpn,
                peer.mtu,
                shared.rails[local].ctx.name(),
                shared.rails[local].mtu
            ),
        });
    }
    let qp = &mut set.qps[position];
    qp.connect(&peer.endpoint()).map_err(|e| {
        io(
            format_args!("connect QP {:#x} to {:#x}", qp.qp_num(), peer.qpn),
            e,
        )
    })
}

/// Builds the sets of endpoint slots `first..first + count` towards `remote` (on the target
/// thread), runs the handshake with the peer's service and connects them.
pub(crate) fn connect(
    shared: &Shared,
    remote: &[RailAddress],
    first: u16,
    count: u16,
) -> Result<Vec<QpSet>, FabricError> {
    let built = shared
        .jobs
        .build(remote, first, count, shared.config.handshake_timeout)?;
    let mut sets = Vec::with_capacity(built.len());
    let mut mine = Vec::new();
    for (set, addrs) in built {
        sets.push(set);
        mine.extend(addrs);
    }
    let req = Request {
        rails: (0..shared.rails.len())
            .map(|r| shared.rail_address(r))
            .collect(),
        slots: count,
        target_rails: remote.len() as u16,
        qps: mine,
    };
    let at = SocketAddr::from((remote[0].ip, remote[0].port));
    let (theirs, stream) = handshake::exchange(at, &req, shared.config.handshake_timeout)?;
    shared.counts.dialed.fetch_add(1, Ordering::Relaxed);
    // The request's order is each set's own (local rail, remote rail) order, slot by slot.
    let mut it = theirs.iter();
    for set in &mut sets {
        for position in 0..set.qps.len() {
            let peer = it.next().ok_or_else(|| FabricError::BadAddress {
                rail: (position % set.remote_rails) as u16,
                reason: format!(
                    "the handshake with {at} answered {} QP addresses, fewer than needed",
                    theirs.len()
                ),
            })?;
            connect_qp(shared, set, position, peer)?;
        }
    }
    handshake::confirm(stream);
    Ok(sets)
}

impl Shared {
    /// Offers the sets a target built for the initiator whose rails are `rails` as this
    /// engine's connection to it: a peer entry with one set per endpoint slot. Gives back what
    /// it did not take (all of them when the engine already knows the peer, has no peer entry
    /// left, or is itself connecting to someone right now: the target thread never waits for
    /// that lock, and the peer is then connected by handshake as before).
    pub(crate) fn adopt(&self, rails: Vec<RailAddress>, sets: Vec<QpSet>) -> Vec<QpSet> {
        let Ok(mut ids) = self.ids.try_lock() else {
            return sets;
        };
        let instance = rails[0].instance;
        if ids.by_instance.contains_key(&instance) {
            return sets;
        }
        let mut it = sets.into_iter();
        let peer = Peer {
            addrs: rails,
            sets: (0..self.config.max_endpoints)
                .map(|_| Mutex::new(it.next()))
                .collect(),
        };
        match ids.add(&self.peers, instance, peer) {
            Ok(_) => {
                self.counts.adopted.fetch_add(1, Ordering::Relaxed);
                it.collect()
            }
            // The table is full: every set goes back, those the entry held first.
            Err(peer) => peer
                .sets
                .into_vec()
                .into_iter()
                .filter_map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner))
                .chain(it)
                .collect(),
        }
    }
}

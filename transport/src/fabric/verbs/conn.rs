//! The initiator's side of a connection: one [`QpSet`] per endpoint slot, built, exchanged in
//! the handshake and connected.

use std::net::SocketAddr;

use ::efa::{Cq, QpBuilder, RcOptions, RcQp};

use super::addr::{QpAddress, RailAddress};
use super::handshake::{self, Request};
use super::{random_u64, Shared};
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
}

fn io(what: impl std::fmt::Display, e: ::efa::Error) -> FabricError {
    FabricError::device("verbs", what, e)
}

/// The RC options of an initiator QP on `rail` towards a target serving `target_rd` READs.
pub(crate) fn initiator_options(shared: &Shared, rail: usize, target_rd: u8) -> RcOptions {
    RcOptions {
        timeout: shared.ack_timeout,
        retry_cnt: super::RETRY_CNT,
        // Receivers repost as fast as they poll; wait for them rather than fail.
        rnr_retry: 7,
        min_rnr_timer: 12,
        max_rd_atomic: shared.rails[rail].rd_atomic.min(target_rd).max(1),
    }
}

fn build_set(
    shared: &Shared,
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
                QpBuilder::new(&rail.pd, &cq, &cq)
                    .max_send_wr(depth)
                    .max_recv_wr(1)
                    .max_send_sge(1)
                    .max_recv_sge(1)
                    .max_inline_data(inline)
                    .psn(psn)
                    .port(shared.config.port)
                    .gid_index(rail.gid.index)
                    .rc_options(initiator_options(shared, l, r.rd_atomic))
                    .remote_access(::efa::Access::empty())
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

/// Builds `slots` QP sets, runs the handshake with the target and connects them.
pub(crate) fn connect(
    shared: &Shared,
    remote: &[RailAddress],
    slots: u16,
) -> Result<Vec<QpSet>, FabricError> {
    let mut sets = Vec::with_capacity(slots.into());
    let mut mine = Vec::new();
    for slot in 0..slots {
        let (set, addrs) = build_set(shared, remote, slot.into())?;
        sets.push(set);
        mine.extend(addrs);
    }
    let req = Request {
        rails: (0..shared.rails.len())
            .map(|r| shared.rail_address(r))
            .collect(),
        slots,
        target_rails: remote.len() as u16,
        qps: mine,
    };
    let at = SocketAddr::from((remote[0].ip, remote[0].port));
    let theirs = handshake::exchange(at, &req, shared.config.handshake_timeout)?;
    let mut it = theirs.iter();
    for set in &mut sets {
        for (i, qp) in set.qps.iter_mut().enumerate() {
            let peer = it.next().ok_or_else(|| FabricError::BadAddress {
                rail: (i % set.remote_rails) as u16,
                reason: format!(
                    "the handshake with {at} answered {} QP addresses, fewer than needed",
                    theirs.len()
                ),
            })?;
            let rail = i / set.remote_rails;
            if peer.mtu != shared.rails[rail].mtu {
                return Err(FabricError::BadAddress {
                    rail: (i % set.remote_rails) as u16,
                    reason: format!("passive QP {:#x} has MTU {:?}", peer.qpn, peer.mtu),
                });
            }
            qp.connect(&peer.endpoint()).map_err(|e| {
                io(
                    format_args!("connect QP {:#x} to {:#x}", qp.qp_num(), peer.qpn),
                    e,
                )
            })?;
        }
    }
    Ok(sets)
}

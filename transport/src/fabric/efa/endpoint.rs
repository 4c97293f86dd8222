//! The per-worker hot path of the `efa` fabric: one SRD QP and CQ per rail, plus, on a rail
//! that needs it, the two-sided protocol's QP ([`TwoSided`]).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ::efa::{Cq, Dest, QpBuilder, RemoteAddr, Sge, SrdQp, ThreadDomain, WorkCompletion};

use super::addr;
use super::peers::Route;
use super::plan::{path, plan, Path, SrdWr};
use super::twosided::{Kind, TwoSided};
use super::{io, Shared};
use crate::fabric::rdma::status::{efa_reason, post_reason};
use crate::fabric::{Completion, Endpoint, WorkOp, WorkRequest};
use crate::{FabricError, FailReason};

struct EndpointRail {
    // Field order is drop order: the QP before its CQ, both before their thread domain.
    qp: SrdQp,
    /// WRITEs of at most this many bytes go inline (0: none).
    inline_max: u32,
    cq: Cq,
    _td: Option<Arc<ThreadDomain>>,
    outstanding: u32,
    /// The rail's RDMA bits (`addr::RDMA_READ | RDMA_WRITE`).
    rdma: u8,
    /// The device retries receiver-not-ready answers itself (`RNR_RETRY`); without it
    /// notifications go through the protocol QP, which retries them in software.
    rnr_retry: bool,
    /// The two-sided protocol's QP, created on first use.
    two_sided: Option<TwoSided>,
}

pub(crate) struct EfaEndpoint {
    shared: Arc<Shared>,
    rails: Vec<EndpointRail>,
    failed: VecDeque<Completion>,
    failed_cap: usize,
    scratch: Box<[WorkCompletion]>,
    outstanding: usize,
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

impl EfaEndpoint {
    pub(crate) fn new(shared: Arc<Shared>) -> Result<Self, FabricError> {
        let depth = shared.caps.queue_depth;
        let mut rails = Vec::with_capacity(shared.rails.len());
        for r in &shared.rails {
            let name = r.ctx.name();
            let td = if shared.config.thread_domain {
                ThreadDomain::new(&r.pd).ok()
            } else {
                None
            };
            // Initiator completions are sends: no source GID to ask for.
            let mut cqb = Cq::builder(&r.ctx, depth).source_gid(false);
            if let Some(td) = &td {
                // SAFETY: the CQ and the QP on this domain live in this endpoint, which one
                // thread at a time uses (`&mut self`); they move between threads together.
                cqb = unsafe { cqb.thread_domain(td) };
            }
            let cq = cqb.build().map_err(|e| io(format_args!("{name} CQ"), e))?;
            let inline_max = inline_write_size(&shared, r);
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
            let qp = qpb
                .build_srd()
                .map_err(|e| io(format_args!("{name} SRD QP"), e))?;
            rails.push(EndpointRail {
                rdma: shared.rail_caps[rails.len()].rdma_bits(),
                rnr_retry: shared.rail_caps[rails.len()].rnr_retry,
                two_sided: None,
                inline_max: qp.caps().max_inline_data.min(inline_max),
                qp,
                cq,
                _td: td,
                outstanding: 0,
            });
        }
        let failed_cap = depth as usize * rails.len();
        Ok(EfaEndpoint {
            shared,
            rails,
            failed: VecDeque::with_capacity(failed_cap),
            failed_cap,
            scratch: vec![WorkCompletion::default(); 64].into_boxed_slice(),
            outstanding: 0,
        })
    }

    fn fail(&mut self, token: u64, reason: FailReason) {
        self.failed.push_back(Completion {
            token,
            error: Some(reason),
        });
        self.outstanding += 1;
    }

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
}

/// The protocol-QP operation `wr` needs from local rail `local` to the peer's rail, or `None`
/// for the hardware path.
#[inline]
fn two_sided_kind(
    mode: super::TwoSided,
    local: &EndpointRail,
    wr: &WorkRequest,
    route: &Route<::efa::Ah>,
) -> Option<Kind> {
    let (write, kind) = match wr.op {
        WorkOp::Read => (false, Kind::Read),
        WorkOp::Write => (true, Kind::Write),
        WorkOp::Notify { tag } if !local.rnr_retry => return Some(Kind::Notify(tag)),
        WorkOp::Notify { .. } => return None,
    };
    let remote = route.rdma(wr.remote_rail);
    (path(write, local.rdma, remote, mode) == Path::TwoSided).then_some(kind)
}

impl Endpoint for EfaEndpoint {
    fn post(&mut self, wrs: &[WorkRequest]) -> usize {
        let depth = self.shared.caps.queue_depth;
        let mode = self.shared.config.two_sided;
        let mut i = 0;
        while i < wrs.len() {
            let wr = wrs[i];
            if self.failed.len() >= self.failed_cap {
                break;
            }
            let rail = usize::from(wr.rail);
            let route = self
                .shared
                .peers
                .get(wr.peer as usize)
                .and_then(|p| p.get());
            let dest = route.and_then(|r| r.dest(wr.rail, wr.remote_rail));
            let two_sided = match (route, self.rails.get(rail)) {
                (Some(r), Some(er)) if dest.is_some() => two_sided_kind(mode, er, &wr, r)
                    .map(|k| (k, er.rdma & r.rdma(wr.remote_rail) & addr::RDMA_READ != 0)),
                _ => None,
            };
            if let Some((kind, pull)) = two_sided {
                match self.start_two_sided(&wr, kind, pull) {
                    Ok(true) => self.outstanding += 1,
                    Ok(false) => break,
                    Err(reason) => self.fail(wr.token, reason),
                }
                i += 1;
                continue;
            }
            let (Some((ah, qpn, qkey)), Some(er)) = (dest, self.rails.get_mut(rail)) else {
                self.fail(wr.token, FailReason::InvalidAh);
                i += 1;
                continue;
            };
            let room = (depth - er.outstanding.min(depth)) as usize;
            let room = room.min(self.failed_cap - self.failed.len());
            if room == 0 {
                break;
            }
            let mut end = i + 1;
            while end < wrs.len()
                && end - i < room
                && (wrs[end].peer, wrs[end].rail, wrs[end].remote_rail)
                    == (wr.peer, wr.rail, wr.remote_rail)
                && route.is_some_and(|r| two_sided_kind(mode, er, &wrs[end], r).is_none())
            {
                end += 1;
            }
            let run = &wrs[i..end];
            let d = Dest::new(ah, qpn, qkey);
            let mut refused = 0usize;
            let result = match er.qp.batch() {
                Err(e) => Err(post_reason(&e)),
                Ok(mut batch) => {
                    for w in run {
                        let pushed = match plan(w, &self.shared.caps) {
                            Err(reason) => Err(reason),
                            Ok(SrdWr::Read {
                                local_addr,
                                lkey,
                                len,
                                remote_addr,
                                rkey,
                            }) => batch
                                .read(
                                    w.token,
                                    &d,
                                    &[Sge::new(local_addr, len, lkey)],
                                    RemoteAddr {
                                        addr: remote_addr,
                                        rkey,
                                    },
                                )
                                .map_err(|e| post_reason(&e)),
                            Ok(SrdWr::Write {
                                local_addr,
                                len,
                                remote_addr,
                                rkey,
                                ..
                            }) if len <= er.inline_max => {
                                // SAFETY: the engine validated `local_addr..+len` against a
                                // registered local segment, which stays registered and mapped
                                // while this request is outstanding; the bytes are copied into
                                // the WQE before `write_inline` returns.
                                let data = unsafe {
                                    std::slice::from_raw_parts(
                                        local_addr as usize as *const u8,
                                        len as usize,
                                    )
                                };
                                let remote = RemoteAddr {
                                    addr: remote_addr,
                                    rkey,
                                };
                                batch
                                    .write_inline(w.token, &d, data, remote)
                                    .map_err(|e| post_reason(&e))
                            }
                            Ok(SrdWr::Write {
                                local_addr,
                                lkey,
                                len,
                                remote_addr,
                                rkey,
                            }) => batch
                                .write(
                                    w.token,
                                    &d,
                                    &[Sge::new(local_addr, len, lkey)],
                                    RemoteAddr {
                                        addr: remote_addr,
                                        rkey,
                                    },
                                )
                                .map_err(|e| post_reason(&e)),
                            Ok(SrdWr::Notify { tag }) => batch
                                // A 0-byte SEND with immediate, posted inline with no buffer, as
                                // libfabric posts 0-byte sends on EFA.
                                .send_inline(w.token, &d, &[], Some(tag))
                                .map_err(|e| post_reason(&e)),
                        };
                        if let Err(reason) = pushed {
                            self.failed.push_back(Completion {
                                token: w.token,
                                error: Some(reason),
                            });
                            refused += 1;
                        }
                    }
                    batch.commit().map_err(|e| post_reason(&e))
                }
            };
            match result {
                Ok(()) => er.outstanding += (run.len() - refused) as u32,
                Err(reason) => {
                    self.failed.truncate(self.failed.len() - refused);
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
        for r in &mut self.rails {
            while r.outstanding > 0 && n < out.len() {
                let want = (out.len() - n).min(self.scratch.len());
                let got = match r.cq.poll_into(&mut self.scratch[..want]) {
                    Ok(got) => got,
                    Err(_) => {
                        // The CQ can no longer be trusted: flush the rail's outstanding work
                        // (each request then completes once, as flushed) and count the error.
                        self.shared.poll_errors.fetch_add(1, Ordering::Relaxed);
                        let _ = r.qp.set_error();
                        break;
                    }
                };
                for wc in &self.scratch[..got] {
                    out[n] = Completion {
                        token: wc.wr_id,
                        error: efa_reason(wc.status, wc.efa_status),
                    };
                    n += 1;
                }
                r.outstanding -= (got as u32).min(r.outstanding);
                if got < want {
                    break;
                }
            }
            if let Some(t) = r.two_sided.as_mut().filter(|t| t.busy()) {
                match t.poll(&self.shared, &mut out[n..]) {
                    Ok(got) => n += got,
                    Err(()) => {
                        // As above: flush, so every chunk ends (sends as flushed, replies by
                        // the reply timeout).
                        self.shared.poll_errors.fetch_add(1, Ordering::Relaxed);
                        t.set_error();
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

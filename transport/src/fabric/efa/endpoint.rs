//! The per-worker hot path of the `efa` fabric: one SRD QP and CQ per rail.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ::efa::{Cq, Dest, QpBuilder, RemoteAddr, Sge, SrdQp, ThreadDomain, WorkCompletion};

use super::plan::{plan, SrdWr};
use super::Shared;
use crate::fabric::rdma::status::{efa_reason, post_reason};
use crate::fabric::{Completion, Endpoint, WorkRequest};
use crate::{FabricError, FailReason};

struct EndpointRail {
    // Field order is drop order: the QP before its CQ, both before their thread domain.
    qp: SrdQp,
    /// WRITEs of at most this many bytes go inline (0: none).
    inline_max: u32,
    cq: Cq,
    _td: Option<Arc<ThreadDomain>>,
    outstanding: u32,
}

pub(crate) struct EfaEndpoint {
    shared: Arc<Shared>,
    rails: Vec<EndpointRail>,
    failed: VecDeque<Completion>,
    failed_cap: usize,
    scratch: Box<[WorkCompletion]>,
    outstanding: usize,
}

fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> FabricError {
    FabricError::Io(format!("efa: {what}: {e}"))
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
}

impl Endpoint for EfaEndpoint {
    fn post(&mut self, wrs: &[WorkRequest]) -> usize {
        let depth = self.shared.caps.queue_depth;
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
        }
        self.outstanding -= n.min(self.outstanding);
        n
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }
}

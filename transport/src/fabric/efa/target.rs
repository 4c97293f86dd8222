//! The target side of the `efa` fabric: one SRD service QP per rail, owned by one thread that
//! keeps receives posted on it and counts notification tags.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use ::efa::{Cq, Mr, QpBuilder, SrdQp, WcOpcode, WcStatus, WorkCompletion};

use super::{EfaConfig, Rail, Shared};
use crate::fabric::rdma::backoff::Backoff;
use crate::FabricError;

/// Bytes of each receive buffer: notifications carry none, but a receive with a buffer is
/// accepted by every EFA generation.
const RECV_BYTES: u32 = 64;

/// One rail's service QP, its CQ and its receive buffers.
struct ServiceRail {
    qp: SrdQp,
    cq: Cq,
    buffers: Mr<'static>,
}

/// Every rail's service QP, created with the fabric (their QPNs are its addresses).
pub(crate) struct Service {
    rails: Vec<ServiceRail>,
    recv_depth: u32,
}

fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> FabricError {
    FabricError::Io(format!("efa: {what}: {e}"))
}

impl Service {
    pub(crate) fn new(rails: &[Rail], config: &EfaConfig) -> Result<Service, FabricError> {
        let mut out = Vec::with_capacity(rails.len());
        for r in rails {
            let name = r.ctx.name();
            let depth = config.recv_depth;
            // Receives, plus the sends this QP never posts.
            let cq =
                Cq::new(&r.ctx, depth + 1).map_err(|e| io(format_args!("{name} service CQ"), e))?;
            let mut qp = QpBuilder::new(&r.pd, &cq, &cq)
                .max_send_wr(1)
                .max_recv_wr(depth)
                .qkey(config.qkey)
                .gid_index(r.gid.index)
                .build_srd()
                .map_err(|e| io(format_args!("{name} service QP"), e))?;
            let len = (depth as usize) * RECV_BYTES as usize;
            let buffers = Mr::alloc(&r.pd, len, ::efa::Access::LOCAL_WRITE)
                .map_err(|e| io(format_args!("{name} receive buffers"), e))?;
            for i in 0..depth {
                post(&mut qp, &buffers, i as u64)
                    .map_err(|e| io(format_args!("{name} receive"), e))?;
            }
            out.push(ServiceRail { qp, cq, buffers });
        }
        Ok(Service {
            rails: out,
            recv_depth: config.recv_depth,
        })
    }

    /// The service QPNs, by rail.
    pub(crate) fn qpns(&self) -> impl Iterator<Item = u32> + '_ {
        self.rails.iter().map(|r| r.qp.qp_num())
    }
}

/// Posts receive `slot` (its own `RECV_BYTES` of the buffer region).
fn post(qp: &mut SrdQp, buffers: &Mr<'static>, slot: u64) -> Result<(), ::efa::Error> {
    let sge = buffers.sge(slot as usize * RECV_BYTES as usize, RECV_BYTES)?;
    qp.post_recv(slot, &[sge])
}

/// Starts the target thread.
pub(crate) fn start(shared: Arc<Shared>, service: Service) -> Result<JoinHandle<()>, FabricError> {
    std::thread::Builder::new()
        .name("efa-target".into())
        .spawn(move || run(shared, service))
        .map_err(|e| io("spawn target thread", e))
}

fn run(shared: Arc<Shared>, mut service: Service) {
    let mut scratch = vec![WorkCompletion::default(); 64];
    let mut backoff = Backoff::new(shared.config.idle_spin);
    let depth = u64::from(service.recv_depth);
    while !shared.stop.load(Ordering::Relaxed) {
        let mut busy = false;
        for r in &mut service.rails {
            // A poll error loses no completion (the efa crate returns the ones it consumed and
            // reports the error on the next call); it is counted, and polling goes on.
            let n = match r.cq.poll_into(&mut scratch) {
                Ok(n) => n,
                Err(_) => {
                    shared.poll_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            busy |= n > 0;
            for wc in &scratch[..n] {
                // The service QP posts no sends: every completion is a receive slot.
                if wc.wr_id >= depth || wc.status == WcStatus::WrFlushErr {
                    continue;
                }
                if matches!(wc.opcode, Some(WcOpcode::Recv | WcOpcode::RecvRdmaWithImm)) {
                    if let (Some(tag), Some(sink)) = (wc.imm, shared.notifications.get()) {
                        sink.record(tag);
                    }
                }
                // Every slot goes back, after an error completion too (a peer's oversized or
                // malformed message): a slot left out would, with rnr_retry 7, stall the
                // notifications of every sender for good. Only a flush (QP in error, shutdown)
                // retires it. On failure the slot stays unposted; senders see RNR retries.
                let _ = post(&mut r.qp, &r.buffers, wc.wr_id);
            }
        }
        backoff.step(busy);
    }
}

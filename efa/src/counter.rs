//! Completion counters (rdma-core master, `IBVERBS_1.18`): a counter attached to a QP counts the
//! QP's completed work requests of the attached kinds, successes and errors apart, so a counted
//! workload learns "N requests done" with one read instead of polling N completions. On EFA they
//! need the device's `COMP_CNTR` capability. Completions still go to the QP's CQs as well.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::caps::EfaCaps;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::qp::{Qp, Transport};

bitflags::bitflags! {
    /// Which completions a counter counts (`IBV_QP_ATTACH_COMP_CNTR_OP_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct CounterOps: u32 {
        /// Sends completed by the QP.
        const SEND = efa_sys::IBV_QP_ATTACH_COMP_CNTR_OP_SEND;
        /// Receives completed by the QP.
        const RECV = efa_sys::IBV_QP_ATTACH_COMP_CNTR_OP_RECV;
        /// RDMA reads the QP issued.
        const RDMA_READ = efa_sys::IBV_QP_ATTACH_COMP_CNTR_OP_RDMA_READ;
        /// RDMA writes the QP issued.
        const RDMA_WRITE = efa_sys::IBV_QP_ATTACH_COMP_CNTR_OP_RDMA_WRITE;
    }
}

/// A completion counter (`ibv_comp_cntr`), destroyed on drop after every QP it counts for.
pub struct CompCounter {
    ctx: Arc<Context>,
    raw: std::ptr::NonNull<efa_sys::ibv_comp_cntr>,
}

// SAFETY: the counter is a device object with no thread affinity; every operation on it is a
// single provider call (read, set, attach) that the provider makes safe from any thread.
unsafe impl Send for CompCounter {}
// SAFETY: as above.
unsafe impl Sync for CompCounter {}

impl std::fmt::Debug for CompCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompCounter")
            .field("value", &self.value().ok())
            .field("errors", &self.errors().ok())
            .finish()
    }
}

const NO_LIB: Error = Error::Unsupported {
    what: "completion counters",
    why: "libibverbs older than rdma-core master (no IBVERBS_1.18 symbols)",
};

impl CompCounter {
    /// A counter of work requests on `ctx`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the library predates counters or the EFA device lacks
    /// `COMP_CNTR`; [`Error::Verbs`] when the provider refuses.
    pub fn new(ctx: &Arc<Context>) -> Result<Arc<Self>> {
        let create = ctx.verbs().ibv_create_comp_cntr.ok_or(NO_LIB)?;
        if ctx.is_efa() && !ctx.efa_caps().contains(EfaCaps::COMP_CNTR) {
            return Err(Error::Unsupported {
                what: "completion counters",
                why: "device lacks the COMP_CNTR capability",
            });
        }
        let mut attr = efa_sys::ibv_comp_cntr_init_attr {
            comp_mask: 0,
            type_: efa_sys::IBV_COMP_CNTR_TYPE_WRS,
            flags: 0,
        };
        // SAFETY: the context is open and `attr` initialised.
        let raw = unsafe { create(ctx.as_raw(), &mut attr) };
        let raw =
            std::ptr::NonNull::new(raw).ok_or_else(|| Error::last_os("ibv_create_comp_cntr"))?;
        Ok(Arc::new(CompCounter {
            ctx: Arc::clone(ctx),
            raw,
        }))
    }

    /// Counts `ops` completed by `qp` from now on. The QP keeps the counter alive.
    ///
    /// # Errors
    /// [`Error::Verbs`] when the provider refuses the operations (see its
    /// `supported_qp_attach_ops`).
    pub fn attach<T: Transport>(self: &Arc<Self>, qp: &mut Qp<T>, ops: CounterOps) -> Result<()> {
        let f = self.ctx.verbs().ibv_qp_attach_comp_cntr.ok_or(NO_LIB)?;
        let mut attr = efa_sys::ibv_qp_attach_comp_cntr_attr {
            comp_mask: 0,
            op_mask: ops.bits(),
        };
        // SAFETY: the QP and the counter are live; `attr` initialised.
        let rc = unsafe { f(qp.as_raw(), self.raw.as_ptr(), &mut attr) };
        if rc != 0 {
            return Err(Error::verbs_arg(
                "ibv_qp_attach_comp_cntr",
                rc,
                "op_mask",
                ops.bits().into(),
            ));
        }
        qp.keep_counter(Arc::clone(self));
        Ok(())
    }

    fn read_with(
        &self,
        f: Option<efa_sys::pfn::ibv_read_comp_cntr>,
        call: &'static str,
    ) -> Result<u64> {
        let f = f.ok_or(NO_LIB)?;
        let mut v = 0u64;
        // SAFETY: the counter is live and `v` writable.
        let rc = unsafe { f(self.raw.as_ptr(), &mut v) };
        if rc != 0 {
            return Err(Error::verbs(call, rc));
        }
        Ok(v)
    }

    /// Work requests completed successfully.
    pub fn value(&self) -> Result<u64> {
        self.read_with(self.ctx.verbs().ibv_read_comp_cntr, "ibv_read_comp_cntr")
    }

    /// Work requests completed with an error.
    pub fn errors(&self) -> Result<u64> {
        self.read_with(
            self.ctx.verbs().ibv_read_err_comp_cntr,
            "ibv_read_err_comp_cntr",
        )
    }

    /// Sets the success count (for example back to 0 before a new round).
    pub fn set(&self, value: u64) -> Result<()> {
        let f = self.ctx.verbs().ibv_set_comp_cntr.ok_or(NO_LIB)?;
        // SAFETY: the counter is live.
        match unsafe { f(self.raw.as_ptr(), value) } {
            0 => Ok(()),
            rc => Err(Error::verbs("ibv_set_comp_cntr", rc)),
        }
    }

    /// Waits until successes plus errors reach `target` or `timeout` passes (`Duration::MAX`:
    /// no limit), spinning briefly and then yielding. Returns `(successes, errors)` as last read.
    pub fn wait_for(&self, target: u64, timeout: Duration) -> Result<(u64, u64)> {
        let t0 = Instant::now();
        let mut spins = 0u32;
        loop {
            let (ok, err) = (self.value()?, self.errors()?);
            if ok.saturating_add(err) >= target || t0.elapsed() >= timeout {
                return Ok((ok, err));
            }
            spins = spins.saturating_add(1);
            if spins > 256 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

impl Drop for CompCounter {
    fn drop(&mut self) {
        if let Some(f) = self.ctx.verbs().ibv_destroy_comp_cntr {
            // SAFETY: every QP it counts for holds an Arc to it, so none is alive; destroyed once.
            let rc = unsafe { f(self.raw.as_ptr()) };
            crate::teardown::check("ibv_destroy_comp_cntr", rc);
        }
    }
}

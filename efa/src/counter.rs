//! Completion counters (rdma-core master, `IBVERBS_1.18`): a counter attached to a QP counts the
//! QP's completed work requests of the attached kinds, successes and errors apart, so a counted
//! workload learns "N requests done" with one read instead of polling N completions. On EFA they
//! need the device's `COMP_CNTR` capability. Completions still go to the QP's CQs as well: EFA
//! completes every work request, so the CQ must still be drained.
//!
//! A counter is attached while its QP is in RESET or INIT (`ibv_qp_attach_comp_cntr(3)`): pass
//! it to [`QpBuilder::counter`](crate::QpBuilder::counter), which attaches it between creation
//! and the first state transition. [`CompCounter::in_host_memory`] (`efadv_create_comp_cntr`,
//! EFA_1.7) has the device write the counts into memory this crate owns, so a read is a load
//! rather than a library call: the cheap "did anything complete?" test of a polling loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::caps::EfaCaps;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::qp::{Qp, Transport};
use crate::status::QpState;

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
    /// Where the device writes the counts, for a counter made by [`CompCounter::in_host_memory`].
    cells: Option<Box<Cells>>,
}

/// The two counts the device writes (8-byte aligned, as `efadv_create_comp_cntr` asks), on a
/// cache line of their own.
#[repr(C, align(64))]
#[derive(Debug, Default)]
struct Cells {
    ok: AtomicU64,
    err: AtomicU64,
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
        check_caps(ctx)?;
        let mut attr = init_attr();
        // SAFETY: the context is open and `attr` initialised.
        let raw = unsafe { create(ctx.as_raw(), &mut attr) };
        let raw =
            std::ptr::NonNull::new(raw).ok_or_else(|| Error::last_os("ibv_create_comp_cntr"))?;
        Ok(Arc::new(CompCounter {
            ctx: Arc::clone(ctx),
            raw,
            cells: None,
        }))
    }

    /// A counter of work requests on the EFA device `ctx` whose counts the device writes into
    /// memory the counter owns (`efadv_create_comp_cntr` with external memory at virtual
    /// addresses), so [`value`](Self::value), [`errors`](Self::errors) and
    /// [`completed`](Self::completed) are loads, with no library call.
    ///
    /// # Errors
    /// [`Error::NotEfa`] on another device; [`Error::Unsupported`] when libefa predates
    /// counters (no EFA_1.7) or the device lacks `COMP_CNTR`; [`Error::Verbs`] when the
    /// provider refuses.
    pub fn in_host_memory(ctx: &Arc<Context>) -> Result<Arc<Self>> {
        ctx.require_efa()?;
        let create = efa_sys::efadv()?
            .efadv_create_comp_cntr
            .ok_or(Error::Unsupported {
                what: "completion counters in host memory",
                why: "libefa older than rdma-core master (no EFA_1.7 symbols)",
            })?;
        check_caps(ctx)?;
        let cells = Box::<Cells>::default();
        let at = |cell: &AtomicU64| efa_sys::efadv_memory_location {
            ptr: cell.as_ptr().cast(),
            type_: efa_sys::EFADV_MEMORY_LOCATION_VA as u8,
            ..Default::default()
        };
        let mut efa_attr = efa_sys::efadv_comp_cntr_init_attr {
            flags: efa_sys::EFADV_COMP_CNTR_INIT_WITH_COMP_EXTERNAL_MEM
                | efa_sys::EFADV_COMP_CNTR_INIT_WITH_ERR_EXTERNAL_MEM,
            comp_cntr_ext_mem: at(&cells.ok),
            err_cntr_ext_mem: at(&cells.err),
            ..Default::default()
        };
        let mut attr = init_attr();
        // SAFETY: the context is open and both attrs initialised with their full size; the
        // cells are 8-byte aligned, heap-allocated and owned by the counter, which outlives
        // the device object (destroyed in `drop` before the box is freed).
        let raw = unsafe {
            create(
                ctx.as_raw(),
                &mut attr,
                &mut efa_attr,
                std::mem::size_of::<efa_sys::efadv_comp_cntr_init_attr>() as u32,
            )
        };
        let raw =
            std::ptr::NonNull::new(raw).ok_or_else(|| Error::last_os("efadv_create_comp_cntr"))?;
        Ok(Arc::new(CompCounter {
            ctx: Arc::clone(ctx),
            raw,
            cells: Some(cells),
        }))
    }

    /// Whether the counts are read from memory (a counter made by
    /// [`in_host_memory`](Self::in_host_memory)).
    pub fn reads_memory(&self) -> bool {
        self.cells.is_some()
    }

    /// Counts `ops` completed by `qp` from now on. The QP keeps the counter alive. Only a QP in
    /// RESET or INIT takes a counter: SRD and UD QPs leave the builder in RTS, so give them
    /// theirs with [`QpBuilder::counter`](crate::QpBuilder::counter); an RC QP takes one until
    /// [`connect`](Qp::connect).
    ///
    /// # Errors
    /// [`Error::QpState`] for a QP past INIT; [`Error::Verbs`] when the provider refuses the
    /// operations (see its `supported_qp_attach_ops`; `EBUSY` when they overlap a counter
    /// already attached).
    pub fn attach<T: Transport>(self: &Arc<Self>, qp: &mut Qp<T>, ops: CounterOps) -> Result<()> {
        let f = self.ctx.verbs().ibv_qp_attach_comp_cntr.ok_or(NO_LIB)?;
        if !matches!(qp.state(), QpState::Reset | QpState::Init) {
            return Err(Error::QpState {
                op: "attach a completion counter",
                state: qp.state(),
            });
        }
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
        match &self.cells {
            Some(c) => Ok(c.ok.load(Ordering::Acquire)),
            None => self.read_with(self.ctx.verbs().ibv_read_comp_cntr, "ibv_read_comp_cntr"),
        }
    }

    /// Work requests completed with an error.
    pub fn errors(&self) -> Result<u64> {
        match &self.cells {
            Some(c) => Ok(c.err.load(Ordering::Acquire)),
            None => self.read_with(
                self.ctx.verbs().ibv_read_err_comp_cntr,
                "ibv_read_err_comp_cntr",
            ),
        }
    }

    /// Work requests completed either way (successes plus errors, wrapping): the figure a
    /// polling loop compares with what it has drained. Two loads for a counter in host memory.
    #[inline]
    pub fn completed(&self) -> Result<u64> {
        Ok(self.value()?.wrapping_add(self.errors()?))
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

/// Refuses an EFA device without counters.
fn check_caps(ctx: &Context) -> Result<()> {
    if ctx.is_efa() && !ctx.efa_caps().contains(EfaCaps::COMP_CNTR) {
        return Err(Error::Unsupported {
            what: "completion counters",
            why: "device lacks the COMP_CNTR capability",
        });
    }
    Ok(())
}

/// A counter of work requests, in memory the provider chooses.
fn init_attr() -> efa_sys::ibv_comp_cntr_init_attr {
    efa_sys::ibv_comp_cntr_init_attr {
        comp_mask: 0,
        type_: efa_sys::IBV_COMP_CNTR_TYPE_WRS,
        flags: 0,
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

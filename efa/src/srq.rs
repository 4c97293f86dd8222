//! Shared receive queues (`ibv_srq`): one pool of receives that every QP attached to it
//! consumes from (RC and UD on verbs devices; EFA has none).

use std::ptr::NonNull;
use std::sync::Arc;

use crate::error::{Error, Limit, Result};
use crate::mr::Sge;
use crate::pd::Pd;

/// A shared receive queue, destroyed on drop. QPs created with [`QpBuilder::srq`] hold an
/// `Arc` of it, so it outlives them.
///
/// Posting takes `&self`: providers serialise `ibv_post_srq_recv` internally, so the thread
/// that reposts receives need not own the QPs that consume them.
///
/// [`QpBuilder::srq`]: crate::QpBuilder::srq
pub struct Srq {
    pd: Arc<Pd>,
    raw: NonNull<efa_sys::ibv_srq>,
    max_wr: u32,
    max_sge: u32,
}

// SAFETY: an ibv_srq has no thread affinity, and every verbs call on it (post, destroy) is
// thread-safe in libibverbs' providers (SRQs cannot be created on a thread domain).
unsafe impl Send for Srq {}
// SAFETY: as above; the Rust fields are immutable.
unsafe impl Sync for Srq {}

impl std::fmt::Debug for Srq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Srq")
            .field("device", &self.pd.context().name())
            .field("max_wr", &self.max_wr)
            .field("max_sge", &self.max_sge)
            .finish()
    }
}

impl Srq {
    /// Creates a shared receive queue on `pd` with room for `max_wr` receives of up to
    /// `max_sge` entries each (the provider may grant more; see [`capacity`](Self::capacity)).
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] on EFA devices and on devices without SRQs (`max_srq` 0),
    /// [`Error::Limit`] when `max_wr` or `max_sge` exceeds the device's `max_srq_wr` or
    /// `max_srq_sge`, [`Error::Verbs`] when `ibv_create_srq` fails (with its errno).
    pub fn new(pd: &Arc<Pd>, max_wr: u32, max_sge: u32) -> Result<Arc<Srq>> {
        let ctx = pd.context();
        if ctx.is_efa() {
            return Err(Error::Unsupported {
                what: "shared receive queues",
                why: "EFA devices have none",
            });
        }
        let d = ctx.device_attr();
        if d.max_srq == 0 {
            return Err(Error::Unsupported {
                what: "shared receive queues",
                why: "the device reports max_srq 0",
            });
        }
        if max_wr > d.max_srq_wr {
            return Err(Error::limit(
                Limit::RecvQueueDepth,
                max_wr.into(),
                d.max_srq_wr.into(),
            ));
        }
        if max_sge > d.max_srq_sge {
            return Err(Error::limit(
                Limit::RecvSges,
                max_sge.into(),
                d.max_srq_sge.into(),
            ));
        }
        let mut attr = efa_sys::ibv_srq_init_attr {
            srq_context: std::ptr::null_mut(),
            attr: efa_sys::ibv_srq_attr {
                max_wr,
                max_sge,
                srq_limit: 0,
            },
        };
        // SAFETY: the PD is live; `attr` is initialised and the provider writes back the
        // granted sizes. NULL reports failure through errno.
        let raw = unsafe { (ctx.verbs().ibv_create_srq)(pd.as_raw(), &mut attr) };
        let raw = NonNull::new(raw).ok_or_else(|| {
            Error::verbs_arg(
                "ibv_create_srq",
                crate::error::last_errno(),
                "max_wr",
                max_wr.into(),
            )
        })?;
        Ok(Arc::new(Srq {
            pd: Arc::clone(pd),
            raw,
            max_wr: attr.attr.max_wr.max(max_wr),
            max_sge: attr.attr.max_sge.max(max_sge),
        }))
    }

    /// Receives the queue holds (what the provider granted, at least what was asked).
    pub fn capacity(&self) -> u32 {
        self.max_wr
    }

    /// The protection domain.
    pub fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }

    /// Posts one receive of `sges` (empty: for messages without payload, such as SENDs of
    /// immediate data only). Its completion goes to the receive CQ of the QP that consumes it,
    /// with this `wr_id`.
    ///
    /// # Errors
    ///
    /// [`Error::Limit`] for more entries than the queue takes, [`Error::Verbs`] when the
    /// provider refuses (a full queue is `ENOMEM`).
    pub fn post_recv(&self, wr_id: u64, sges: &[Sge]) -> Result<()> {
        crate::qp::check_recv_sges(sges, self.max_sge)?;
        let mut wr = crate::qp::recv_wr(wr_id, sges);
        let mut bad = std::ptr::null_mut();
        // SAFETY: the SRQ is live; the WR and SGEs are valid for the call (providers copy
        // them) and the provider serialises concurrent posts.
        let rc = unsafe { efa_sys::ibv_post_srq_recv(self.raw.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::verbs_arg("ibv_post_srq_recv", rc, "wr_id", wr_id));
        }
        Ok(())
    }

    /// The raw SRQ; valid while `self` lives.
    pub fn as_raw(&self) -> *mut efa_sys::ibv_srq {
        self.raw.as_ptr()
    }
}

impl Drop for Srq {
    fn drop(&mut self) {
        // SAFETY: every QP attached holds an Arc<Srq>; none is alive now.
        let rc = unsafe { (self.pd.context().verbs().ibv_destroy_srq)(self.raw.as_ptr()) };
        crate::teardown::check("ibv_destroy_srq", rc);
    }
}

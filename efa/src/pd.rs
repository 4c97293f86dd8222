//! Protection domains and thread domains.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::context::Context;
use crate::error::{Error, Result};

/// A protection domain (`ibv_pd`): the scope of memory registrations, QPs and AHs.
pub struct Pd {
    ctx: Arc<Context>,
    raw: NonNull<efa_sys::ibv_pd>,
}

// SAFETY: an ibv_pd is a kernel handle; every verbs call on it is thread-safe.
unsafe impl Send for Pd {}
// SAFETY: as above; Pd has no interior state of its own.
unsafe impl Sync for Pd {}

impl std::fmt::Debug for Pd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pd")
            .field("device", &self.ctx.name())
            .finish()
    }
}

impl Pd {
    /// Allocate a protection domain.
    ///
    /// # Errors
    ///
    /// [`Error::Verbs`] when `ibv_alloc_pd` fails (with its errno).
    pub fn new(ctx: &Arc<Context>) -> Result<Arc<Self>> {
        // SAFETY: the context is open; NULL reports failure through errno.
        let raw = unsafe { (ctx.verbs().ibv_alloc_pd)(ctx.as_raw()) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last_os("ibv_alloc_pd"))?;
        Ok(Arc::new(Pd {
            ctx: Arc::clone(ctx),
            raw,
        }))
    }

    /// The device context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The raw PD; valid while `self` lives.
    pub fn as_raw(&self) -> *mut efa_sys::ibv_pd {
        self.raw.as_ptr()
    }

    /// The kernel's handle of the PD.
    pub fn handle(&self) -> u32 {
        // SAFETY: the PD is live; `handle` is set at allocation and never changes.
        unsafe { (*self.raw.as_ptr()).handle }
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: every MR, AH, QP and thread domain holds an Arc<Pd>; none is alive now.
        let rc = unsafe { (self.ctx.verbs().ibv_dealloc_pd)(self.raw.as_ptr()) };
        crate::teardown::check("ibv_dealloc_pd", rc);
    }
}

/// A thread domain and the parent domain that carries it.
///
/// A CQ and the QPs created on the same thread domain are promised to one thread at a time, so
/// the provider takes no lock when posting or polling them (EFA drops its send-queue and CQ
/// spinlocks when the QP's PD and its CQ share a parent domain with a thread domain).
///
/// Needs provider support (EFA in rdma-core 59 and later, mlx5); elsewhere [`ThreadDomain::new`]
/// fails with `EOPNOTSUPP` and callers fall back to a plain PD with a single-threaded CQ.
pub struct ThreadDomain {
    pd: Arc<Pd>,
    td: NonNull<efa_sys::ibv_td>,
    parent: NonNull<efa_sys::ibv_pd>,
}

// SAFETY: the handles are kernel/provider objects with no thread affinity; use of the objects
// created on them is what the single-thread promise governs (see the unsafe builder methods).
unsafe impl Send for ThreadDomain {}
// SAFETY: ThreadDomain exposes only immutable accessors.
unsafe impl Sync for ThreadDomain {}

impl std::fmt::Debug for ThreadDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadDomain")
            .field("pd", &self.pd)
            .finish()
    }
}

impl ThreadDomain {
    /// Allocate a thread domain and a parent domain over `pd`.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] when the library lacks thread domains, [`Error::Verbs`] when
    /// `ibv_alloc_td` or `ibv_alloc_parent_domain` fails (with its errno).
    pub fn new(pd: &Arc<Pd>) -> Result<Arc<Self>> {
        let ctx = pd.context().as_raw();
        let mut td_attr = efa_sys::ibv_td_init_attr { comp_mask: 0 };
        // SAFETY: the context is open; NULL reports failure through errno.
        let td = unsafe { efa_sys::ibv_alloc_td(ctx, &mut td_attr) };
        let td = NonNull::new(td).ok_or_else(|| Error::last_os("ibv_alloc_td"))?;
        // SAFETY: plain C struct; zero means no optional allocators and no pd_context.
        let mut pattr: efa_sys::ibv_parent_domain_init_attr = unsafe { std::mem::zeroed() };
        pattr.pd = pd.as_raw();
        pattr.td = td.as_ptr();
        // SAFETY: `pd` and `td` are live; NULL reports failure through errno.
        let parent = unsafe { efa_sys::ibv_alloc_parent_domain(ctx, &mut pattr) };
        let Some(parent) = NonNull::new(parent) else {
            let err = Error::last_os("ibv_alloc_parent_domain");
            // SAFETY: `td` was allocated above and nothing else refers to it.
            let rc = unsafe { efa_sys::ibv_dealloc_td(td.as_ptr()) };
            crate::teardown::check("ibv_dealloc_td", rc);
            return Err(err);
        };
        Ok(Arc::new(ThreadDomain {
            pd: Arc::clone(pd),
            td,
            parent,
        }))
    }

    /// The protection domain under the parent domain (register memory here).
    pub fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }

    /// The parent domain, used as the PD of QPs and the `parent_domain` of CQs.
    pub fn parent_raw(&self) -> *mut efa_sys::ibv_pd {
        self.parent.as_ptr()
    }
}

impl Drop for ThreadDomain {
    fn drop(&mut self) {
        // SAFETY: QPs and CQs on this domain hold an Arc<ThreadDomain>; none is alive. The
        // parent domain goes first because it holds a reference on the thread domain.
        let (parent, td) = unsafe {
            (
                (self.pd.context().verbs().ibv_dealloc_pd)(self.parent.as_ptr()),
                efa_sys::ibv_dealloc_td(self.td.as_ptr()),
            )
        };
        crate::teardown::check("ibv_dealloc_pd (parent domain)", parent);
        crate::teardown::check("ibv_dealloc_td", td);
    }
}

//! `struct verbs_context` lookup and the context-op inlines of `verbs.h`.

use core::ffi::{c_int, c_void};
use core::mem::offset_of;
use core::ptr;

use super::set_errno;
use crate::{
    ibv_context, ibv_cq_ex, ibv_cq_init_attr_ex, ibv_parent_domain_init_attr, ibv_pd, ibv_td,
    ibv_td_init_attr, verbs_context,
};

/// `abi_compat` of a context embedded in a `struct verbs_context`.
pub const VERBS_ABI_IS_EXTENDED: *mut c_void = usize::MAX as *mut c_void;

/// The `verbs_context` around `ctx`, or null if the provider did not
/// allocate one (`abi_compat != __VERBS_ABI_IS_EXTENDED`).
///
/// # Safety
/// `ctx` must point to a live `ibv_context` (from `ibv_open_device`).
#[inline]
pub unsafe fn verbs_get_ctx(ctx: *mut ibv_context) -> *mut verbs_context {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        if (*ctx).abi_compat != VERBS_ABI_IS_EXTENDED {
            return ptr::null_mut();
        }
        // SAFETY (of the pointer arithmetic): an extended context is the last
        // field of the provider's verbs_context, so stepping back by its offset
        // stays inside that allocation.
        ctx.byte_sub(offset_of!(verbs_context, context)).cast()
    }
}

/// Whether the provider's `verbs_context` is large enough to hold the op at
/// byte offset `op_offset` (as `verbs_get_ctx_op` checks `sz`): providers
/// built against older headers allocate a shorter struct that "grows up",
/// so ops added later lie before its start.
///
/// # Safety
/// `vctx` must be non-null and come from [`verbs_get_ctx`].
#[inline]
pub unsafe fn verbs_ctx_has_room(vctx: *const verbs_context, op_offset: usize) -> bool {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe { (*vctx).sz >= core::mem::size_of::<verbs_context>() - op_offset }
}

/// `verbs_get_ctx_op(ctx, op)`: the op's function pointer when the context
/// is extended, large enough to hold the op and the op is set; `None`
/// otherwise. Checks in the header's order, so a field outside a shorter
/// provider struct is never read.
macro_rules! ctx_op {
    ($ctx:expr, $op:ident) => {{
        let vctx = $crate::fast::verbs_get_ctx($ctx);
        if vctx.is_null()
            || !$crate::fast::verbs_ctx_has_room(
                vctx,
                core::mem::offset_of!($crate::verbs_context, $op),
            )
        {
            None
        } else {
            (*vctx).$op
        }
    }};
}
pub(crate) use ctx_op;

/// Creates an extended CQ (`verbs_context::create_cq_ex`). Returns null with
/// `errno = EOPNOTSUPP` if the provider lacks the op.
///
/// # Safety
/// `context` must be live; `cq_attr` valid for reads and writes.
#[inline]
pub unsafe fn ibv_create_cq_ex(
    context: *mut ibv_context,
    cq_attr: *mut ibv_cq_init_attr_ex,
) -> *mut ibv_cq_ex {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match ctx_op!(context, create_cq_ex) {
            Some(f) => f(context, cq_attr),
            None => {
                set_errno(libc::EOPNOTSUPP);
                ptr::null_mut()
            }
        }
    }
}

/// Allocates a thread domain (`verbs_context::alloc_td`). Returns null with
/// `errno = EOPNOTSUPP` if the provider lacks the op.
///
/// # Safety
/// `context` must be live; `init_attr` valid.
#[inline]
pub unsafe fn ibv_alloc_td(
    context: *mut ibv_context,
    init_attr: *mut ibv_td_init_attr,
) -> *mut ibv_td {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match ctx_op!(context, alloc_td) {
            Some(f) => f(context, init_attr),
            None => {
                set_errno(libc::EOPNOTSUPP);
                ptr::null_mut()
            }
        }
    }
}

/// Frees a thread domain (`verbs_context::dealloc_td`). Returns 0, an errno
/// value, or `EOPNOTSUPP` if the provider lacks the op.
///
/// # Safety
/// `td` must be a live thread domain no longer used by any parent domain.
#[inline]
pub unsafe fn ibv_dealloc_td(td: *mut ibv_td) -> c_int {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match ctx_op!((*td).context, dealloc_td) {
            Some(f) => f(td),
            None => libc::EOPNOTSUPP,
        }
    }
}

/// Allocates a parent domain (`verbs_context::alloc_parent_domain`), freed
/// with `ibv_dealloc_pd`. Returns null with `errno = EOPNOTSUPP` if the
/// provider lacks the op.
///
/// # Safety
/// `context` must be live; `attr` valid, with `attr.pd` (and `attr.td` if
/// set) live.
#[inline]
pub unsafe fn ibv_alloc_parent_domain(
    context: *mut ibv_context,
    attr: *mut ibv_parent_domain_init_attr,
) -> *mut ibv_pd {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match ctx_op!(context, alloc_parent_domain) {
            Some(f) => f(context, attr),
            None => {
                set_errno(libc::EOPNOTSUPP);
                ptr::null_mut()
            }
        }
    }
}

//! The efadv QP inline (`efadv.h`, rdma-core 64 and later).

use crate::efadv_qp;

/// Sets processing hints (`EFADV_WR_PROCESSING_HINT_*`) on the work request being built
/// (`efadv_qp->wr_set_processing_hints`), between `ibv_wr_<op>` and `ibv_wr_complete`.
/// Aborts naming the op if the provider left it NULL, where C would jump through NULL.
///
/// # Safety
/// `efadv_qp` must come from `efadv_qp_from_ibv_qp_ex` on a QP created with
/// `EFADV_WR_EX_WITH_PROCESSING_HINTS`, inside an open `ibv_wr_start` session.
#[inline]
pub unsafe fn efadv_wr_set_processing_hints(efadv_qp: *mut efadv_qp, hints: u32) {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match (*efadv_qp).wr_set_processing_hints {
            Some(f) => f(efadv_qp, hints),
            None => super::null_op("wr_set_processing_hints"),
        }
    }
}

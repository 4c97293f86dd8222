//! The efadv extended-CQ readers (`efadv.h` inlines).

use core::ffi::c_int;

use crate::{efadv_cq, ibv_gid};

/// Reads the source GID of the current completion into `sgid`
/// (`efadv_cq->wc_read_sgid`). Returns 0, `ENOENT` when the completion
/// carries no GID, or `EOPNOTSUPP` if the op is missing.
///
/// # Safety
/// `efadv_cq` must come from `efadv_cq_from_ibv_cq_ex` on a CQ created with
/// `EFADV_WC_EX_WITH_SGID`, between a successful `ibv_start_poll`/
/// `ibv_next_poll` and the next poll call; `sgid` must be writable.
#[inline]
pub unsafe fn efadv_wc_read_sgid(efadv_cq: *mut efadv_cq, sgid: *mut ibv_gid) -> c_int {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match (*efadv_cq).wc_read_sgid {
            Some(f) => f(efadv_cq, sgid),
            None => libc::EOPNOTSUPP,
        }
    }
}

/// Whether the current completion is an unsolicited RDMA write with
/// immediate (`efadv_cq->wc_is_unsolicited`); `false` if the op is missing.
///
/// # Safety
/// As [`efadv_wc_read_sgid`], and the CQ must have been created with
/// `EFADV_WC_EX_WITH_IS_UNSOLICITED`: libefa older than that flag has a
/// shorter `struct efadv_cq` without this field (and rejects the flag).
#[inline]
pub unsafe fn efadv_wc_is_unsolicited(efadv_cq: *mut efadv_cq) -> bool {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match (*efadv_cq).wc_is_unsolicited {
            Some(f) => f(efadv_cq),
            None => false,
        }
    }
}

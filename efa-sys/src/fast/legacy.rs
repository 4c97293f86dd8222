//! Posting and polling through `ibv_context::ops` (the pre-extended API).

use core::ffi::c_int;

use crate::{ibv_cq, ibv_qp, ibv_recv_wr, ibv_send_wr, ibv_srq, ibv_wc};

/// Posts a list of send work requests (`qp->context->ops.post_send`).
///
/// Returns 0 or an errno value; on failure `*bad_wr` names the first WR
/// that was not posted. Returns `EOPNOTSUPP` (with `*bad_wr = wr`) if the
/// provider has no `post_send`.
///
/// # Safety
/// `qp` must be a live QP whose `context` is valid; `wr` a valid linked list
/// whose SGEs point to registered memory that stays alive until completion;
/// `bad_wr` writable.
#[inline]
pub unsafe fn ibv_post_send(
    qp: *mut ibv_qp,
    wr: *mut ibv_send_wr,
    bad_wr: *mut *mut ibv_send_wr,
) -> c_int {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match (*(*qp).context).ops.post_send {
            Some(f) => f(qp, wr, bad_wr),
            None => {
                *bad_wr = wr;
                libc::EOPNOTSUPP
            }
        }
    }
}

/// Posts a list of receive work requests (`qp->context->ops.post_recv`).
///
/// Returns 0 or an errno value, as [`ibv_post_send`].
///
/// # Safety
/// As [`ibv_post_send`], for receive buffers.
#[inline]
pub unsafe fn ibv_post_recv(
    qp: *mut ibv_qp,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> c_int {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match (*(*qp).context).ops.post_recv {
            Some(f) => f(qp, wr, bad_wr),
            None => {
                *bad_wr = wr;
                libc::EOPNOTSUPP
            }
        }
    }
}

/// Posts a list of receive work requests to a shared receive queue
/// (`srq->context->ops.post_srq_recv`).
///
/// Returns 0 or an errno value, as [`ibv_post_send`].
///
/// # Safety
/// `srq` must be a live SRQ whose `context` is valid; otherwise as
/// [`ibv_post_recv`].
#[inline]
pub unsafe fn ibv_post_srq_recv(
    srq: *mut ibv_srq,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> c_int {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match (*(*srq).context).ops.post_srq_recv {
            Some(f) => f(srq, wr, bad_wr),
            None => {
                *bad_wr = wr;
                libc::EOPNOTSUPP
            }
        }
    }
}

/// Polls up to `num_entries` completions into `wc`
/// (`cq->context->ops.poll_cq`). Returns the count, or a negative value on
/// error (`-EOPNOTSUPP` if the provider has no `poll_cq`).
///
/// # Safety
/// `cq` must be a live CQ with a valid `context`; `wc` must point to at least
/// `num_entries` writable `ibv_wc`.
#[inline]
pub unsafe fn ibv_poll_cq(cq: *mut ibv_cq, num_entries: c_int, wc: *mut ibv_wc) -> c_int {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match (*(*cq).context).ops.poll_cq {
            Some(f) => f(cq, num_entries, wc),
            None => -libc::EOPNOTSUPP,
        }
    }
}

/// Requests a completion event on the CQ's channel
/// (`cq->context->ops.req_notify_cq`). Returns 0 or an errno value.
///
/// # Safety
/// `cq` must be a live CQ with a valid `context`.
#[inline]
pub unsafe fn ibv_req_notify_cq(cq: *mut ibv_cq, solicited_only: c_int) -> c_int {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match (*(*cq).context).ops.req_notify_cq {
            Some(f) => f(cq, solicited_only),
            None => libc::EOPNOTSUPP,
        }
    }
}

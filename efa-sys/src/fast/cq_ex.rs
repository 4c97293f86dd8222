//! Extended-CQ polling (`ibv_start_poll`, `ibv_next_poll`, `ibv_end_poll`)
//! and the `ibv_wc_read_*` readers of the current completion.
//!
//! Between a successful `ibv_start_poll`/`ibv_next_poll` and the next call,
//! `(*cq).wr_id` and `(*cq).status` describe the current completion and the
//! readers return its other fields.

use core::ffi::{c_int, c_uint};

use super::null_op;
use crate::{__be32, ibv_cq, ibv_cq_ex, ibv_poll_cq_attr, ibv_wc_opcode, ibv_wc_tm_info};

/// Views an extended CQ as a plain CQ (for `ibv_destroy_cq`,
/// `ibv_req_notify_cq`, `ibv_get_cq_event`, ...). A pure cast.
#[inline]
pub fn ibv_cq_ex_to_cq(cq: *mut ibv_cq_ex) -> *mut ibv_cq {
    cq.cast()
}

/// Starts polling: 0 with a completion current, `ENOENT` if the CQ is
/// empty (then do not call `ibv_end_poll`), another errno on error,
/// `EOPNOTSUPP` if the provider left the op NULL.
///
/// # Safety
/// `cq` must be a live extended CQ polled by one thread at a time; `attr`
/// must point to a `ibv_poll_cq_attr` with `comp_mask == 0`.
#[inline]
pub unsafe fn ibv_start_poll(cq: *mut ibv_cq_ex, attr: *mut ibv_poll_cq_attr) -> c_int {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match (*cq).start_poll {
            Some(f) => f(cq, attr),
            None => libc::EOPNOTSUPP,
        }
    }
}

/// Advances to the next completion: 0, `ENOENT` when none is left, another
/// errno on error, `EOPNOTSUPP` if the provider left the op NULL.
///
/// # Safety
/// Only after `ibv_start_poll` returned 0 and before `ibv_end_poll`.
#[inline]
pub unsafe fn ibv_next_poll(cq: *mut ibv_cq_ex) -> c_int {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match (*cq).next_poll {
            Some(f) => f(cq),
            None => libc::EOPNOTSUPP,
        }
    }
}

macro_rules! cq_ops {
    ($(
        $(#[doc = $doc:literal])*
        fn $name:ident => $field:ident ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)?;
    )*) => {$(
        $(#[doc = $doc])*
        ///
        /// Aborts the process if the provider left the op NULL (C would jump
        /// to address 0): request the field in `wc_flags` at CQ creation.
        ///
        /// # Safety
        /// `cq` must be a live extended CQ with a current completion (after
        /// `ibv_start_poll`/`ibv_next_poll` returned 0, before the next poll
        /// call), polled by this thread only.
        #[inline]
        pub unsafe fn $name(cq: *mut ibv_cq_ex $(, $arg: $ty)*) $(-> $ret)? {
            // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
            // contract: the pointers are live and valid for the operations below.
            unsafe {
                match (*cq).$field {
                    Some(f) => f(cq $(, $arg)*),
                    None => null_op(stringify!($field)),
                }
            }
        }
    )*};
}

cq_ops! {
    /// Ends a poll that `ibv_start_poll` began with 0.
    fn ibv_end_poll => end_poll();
    /// Opcode of the current completion.
    fn ibv_wc_read_opcode => read_opcode() -> ibv_wc_opcode;
    /// Vendor error (the EFA completion status on EFA).
    fn ibv_wc_read_vendor_err => read_vendor_err() -> u32;
    /// Bytes received or transferred.
    fn ibv_wc_read_byte_len => read_byte_len() -> u32;
    /// Immediate data in network order.
    fn ibv_wc_read_imm_data => read_imm_data() -> __be32;
    /// Local QP number.
    fn ibv_wc_read_qp_num => read_qp_num() -> u32;
    /// Source QP number (UD/SRD receives).
    fn ibv_wc_read_src_qp => read_src_qp() -> u32;
    /// `IBV_WC_*` flags (`ibv_wc_flags`).
    fn ibv_wc_read_wc_flags => read_wc_flags() -> c_uint;
    /// Source LID.
    fn ibv_wc_read_slid => read_slid() -> u32;
    /// Service level.
    fn ibv_wc_read_sl => read_sl() -> u8;
    /// Destination LID path bits.
    fn ibv_wc_read_dlid_path_bits => read_dlid_path_bits() -> u8;
    /// Completion timestamp in device clock ticks.
    fn ibv_wc_read_completion_ts => read_completion_ts() -> u64;
    /// Completion timestamp in wall-clock nanoseconds.
    fn ibv_wc_read_completion_wallclock_ns => read_completion_wallclock_ns() -> u64;
    /// Customer VLAN.
    fn ibv_wc_read_cvlan => read_cvlan() -> u16;
    /// Flow tag.
    fn ibv_wc_read_flow_tag => read_flow_tag() -> u32;
    /// Tag-matching info.
    fn ibv_wc_read_tm_info => read_tm_info(tm_info: *mut ibv_wc_tm_info);
}

/// The invalidated rkey of a SEND_WITH_INV completion (read through
/// `read_imm_data`, as in C).
///
/// Aborts the process if the provider left `read_imm_data` NULL.
///
/// # Safety
/// As [`ibv_wc_read_imm_data`].
#[inline]
pub unsafe fn ibv_wc_read_invalidated_rkey(cq: *mut ibv_cq_ex) -> u32 {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe { ibv_wc_read_imm_data(cq) }
}

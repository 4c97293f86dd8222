//! The `ibv_wr_*` work-request builders of `struct ibv_qp_ex`.
//!
//! A batch is `ibv_wr_start`, then per WR: set `wr_id`/`wr_flags` on the
//! `ibv_qp_ex`, one opcode call (`ibv_wr_send`, `ibv_wr_rdma_write`, ...),
//! then its address (`ibv_wr_set_ud_addr`) and data (`ibv_wr_set_sge`,
//! `ibv_wr_set_inline_data`, ...); then `ibv_wr_complete` or `ibv_wr_abort`.

use core::ffi::{c_int, c_void};

use super::null_op;
use crate::{__be32, ibv_ah, ibv_data_buf, ibv_mw, ibv_mw_bind_info, ibv_qp_ex, ibv_sge};

macro_rules! wr_ops {
    ($(
        $(#[doc = $doc:literal])*
        fn $name:ident => $field:ident ( $($arg:ident : $ty:ty),* );
    )*) => {$(
        $(#[doc = $doc])*
        ///
        /// Aborts the process if the provider left the op NULL (C would jump
        /// to address 0): request the op in `send_ops_flags` at QP creation.
        ///
        /// # Safety
        /// `qp` must be a live `ibv_qp_ex` (from `ibv_qp_to_qp_ex` on a QP
        /// created with `IBV_QP_INIT_ATTR_SEND_OPS_FLAGS` including this op),
        /// used by one thread at a time, inside `ibv_wr_start`/`ibv_wr_complete`.
        /// Pointers passed in must be valid for the op; memory named by SGEs
        /// must stay registered and alive until the WR completes.
        #[inline]
        pub unsafe fn $name(qp: *mut ibv_qp_ex $(, $arg: $ty)*) {
            // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
            // contract: the pointers are live and valid for the operations below.
            unsafe {
                match (*qp).$field {
                    Some(f) => f(qp $(, $arg)*),
                    None => null_op(stringify!($field)),
                }
            }
        }
    )*};
}

wr_ops! {
    /// Posts an atomic compare-and-swap on `remote_addr`.
    fn ibv_wr_atomic_cmp_swp => wr_atomic_cmp_swp(rkey: u32, remote_addr: u64, compare: u64, swap: u64);
    /// Posts an atomic fetch-and-add on `remote_addr`.
    fn ibv_wr_atomic_fetch_add => wr_atomic_fetch_add(rkey: u32, remote_addr: u64, add: u64);
    /// Binds memory window `mw` with the new `rkey`.
    fn ibv_wr_bind_mw => wr_bind_mw(mw: *mut ibv_mw, rkey: u32, bind_info: *const ibv_mw_bind_info);
    /// Posts a local invalidate of `invalidate_rkey`.
    fn ibv_wr_local_inv => wr_local_inv(invalidate_rkey: u32);
    /// Posts an RDMA read from `remote_addr` (key `rkey`) into the SGEs.
    fn ibv_wr_rdma_read => wr_rdma_read(rkey: u32, remote_addr: u64);
    /// Posts an RDMA write of the SGEs to `remote_addr` (key `rkey`).
    fn ibv_wr_rdma_write => wr_rdma_write(rkey: u32, remote_addr: u64);
    /// Posts a flush of `len` bytes at `remote_addr`.
    fn ibv_wr_flush => wr_flush(rkey: u32, remote_addr: u64, len: usize, type_: u8, level: u8);
    /// Posts an RDMA write with immediate data (`imm_data` in network order).
    fn ibv_wr_rdma_write_imm => wr_rdma_write_imm(rkey: u32, remote_addr: u64, imm_data: __be32);
    /// Posts a SEND.
    fn ibv_wr_send => wr_send();
    /// Posts a SEND with immediate data (`imm_data` in network order).
    fn ibv_wr_send_imm => wr_send_imm(imm_data: __be32);
    /// Posts a SEND that invalidates `invalidate_rkey` at the target.
    fn ibv_wr_send_inv => wr_send_inv(invalidate_rkey: u32);
    /// Posts a TSO SEND with header `hdr` of `hdr_sz` bytes.
    fn ibv_wr_send_tso => wr_send_tso(hdr: *mut c_void, hdr_sz: u16, mss: u16);
    /// Sets the destination of a UD/SRD WR: address handle, QP number, Q_Key.
    fn ibv_wr_set_ud_addr => wr_set_ud_addr(ah: *mut ibv_ah, remote_qpn: u32, remote_qkey: u32);
    /// Sets the remote XRC SRQ number.
    fn ibv_wr_set_xrc_srqn => wr_set_xrc_srqn(remote_srqn: u32);
    /// Copies `length` bytes at `addr` inline into the WQE.
    fn ibv_wr_set_inline_data => wr_set_inline_data(addr: *mut c_void, length: usize);
    /// Copies `num_buf` buffers inline into the WQE.
    fn ibv_wr_set_inline_data_list => wr_set_inline_data_list(num_buf: usize, buf_list: *const ibv_data_buf);
    /// Sets the single local SGE of the WR.
    fn ibv_wr_set_sge => wr_set_sge(lkey: u32, addr: u64, length: u32);
    /// Sets `num_sge` local SGEs of the WR.
    fn ibv_wr_set_sge_list => wr_set_sge_list(num_sge: usize, sg_list: *const ibv_sge);
    /// Starts a batch of WRs.
    fn ibv_wr_start => wr_start();
    /// Drops every WR since `ibv_wr_start`.
    fn ibv_wr_abort => wr_abort();
    /// Posts an 8-byte atomic write of `*atomic_wr` to `remote_addr`.
    fn ibv_wr_atomic_write => wr_atomic_write(rkey: u32, remote_addr: u64, atomic_wr: *const c_void);
}

/// Rings the doorbell for every WR since `ibv_wr_start`. Returns 0 or an
/// errno value (then no WR of the batch was posted); `EOPNOTSUPP` if the
/// provider left the op NULL.
///
/// # Safety
/// As the other `ibv_wr_*`: `qp` live, owned by this thread, inside a batch.
#[inline]
pub unsafe fn ibv_wr_complete(qp: *mut ibv_qp_ex) -> c_int {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match (*qp).wr_complete {
            Some(f) => f(qp),
            None => libc::EOPNOTSUPP,
        }
    }
}

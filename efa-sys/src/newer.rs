//! efadv items newer than the rdma-core release the bindings are generated
//! from (symbol version EFA_1.4), declared by hand after the efadv man pages
//! `efadv_query_qp_wqs(3)` and `efadv_query_cq(3)`. Callers pass
//! `size_of::<T>()` as `inlen`, so a library that knows a shorter struct
//! fills only its prefix.

use core::ffi::c_int;

use crate::{ibv_cq, ibv_qp};

/// Attributes of one work queue (send or receive) of a QP, filled by
/// `efadv_query_qp_wqs`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct efadv_wq_attr {
    /// Compatibility mask (out).
    pub comp_mask: u64,
    /// Queue buffer.
    pub buffer: *mut u8,
    /// Size of one entry in bytes.
    pub entry_size: u32,
    /// Number of entries.
    pub num_entries: u32,
    /// Queue doorbell.
    pub doorbell: *mut u32,
    /// Largest batch of entries per doorbell.
    pub max_batch: u32,
    /// Work queue capability bits (zero on libraries that predate them).
    pub caps: u16,
    /// Reserved, zero.
    pub reserved: [u8; 2],
}

impl Default for efadv_wq_attr {
    fn default() -> Self {
        Self {
            comp_mask: 0,
            buffer: core::ptr::null_mut(),
            entry_size: 0,
            num_entries: 0,
            doorbell: core::ptr::null_mut(),
            max_batch: 0,
            caps: 0,
            reserved: [0; 2],
        }
    }
}

/// Attributes of a CQ ring, filled by `efadv_query_cq`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct efadv_cq_attr {
    /// Compatibility mask (out).
    pub comp_mask: u64,
    /// Completion queue buffer.
    pub buffer: *mut u8,
    /// Size of one entry in bytes.
    pub entry_size: u32,
    /// Number of entries.
    pub num_entries: u32,
    /// Reverse doorbell, NULL when the CQ does not use one.
    pub doorbell: *mut u32,
}

impl Default for efadv_cq_attr {
    fn default() -> Self {
        Self {
            comp_mask: 0,
            buffer: core::ptr::null_mut(),
            entry_size: 0,
            num_entries: 0,
            doorbell: core::ptr::null_mut(),
        }
    }
}

/// Function-pointer types of the EFA_1.4 symbols.
pub mod pfn {
    use super::*;

    /// `int efadv_query_qp_wqs(struct ibv_qp *, struct efadv_wq_attr *sq_attr,
    /// struct efadv_wq_attr *rq_attr, uint32_t inlen)`.
    pub type efadv_query_qp_wqs = unsafe extern "C" fn(
        ibvqp: *mut ibv_qp,
        sq_attr: *mut efadv_wq_attr,
        rq_attr: *mut efadv_wq_attr,
        inlen: u32,
    ) -> c_int;

    /// `int efadv_query_cq(struct ibv_cq *, struct efadv_cq_attr *, uint32_t inlen)`.
    pub type efadv_query_cq =
        unsafe extern "C" fn(ibvcq: *mut ibv_cq, attr: *mut efadv_cq_attr, inlen: u32) -> c_int;
}

//! The efadv entry points (libefa).

use std::ffi::c_int;
use std::mem::{offset_of, size_of};
use std::ptr;

use efa_sys::*;

use crate::cq::SoftCq;
use crate::device::QpKind;
use crate::qp;
use crate::verbs::{self, fail};

/// Whether the bytes of a caller's struct past the part soft-efa knows are zero, as the
/// provider's `is_ext_cleared` requires when a newer caller passes a larger struct.
unsafe fn ext_cleared<T>(p: *const T, inlen: u32) -> bool {
    let known = size_of::<T>();
    let inlen = inlen as usize;
    inlen <= known
        || std::slice::from_raw_parts(p.cast::<u8>().add(known), inlen - known)
            .iter()
            .all(|b| *b == 0)
}

/// `efadv_query_device`, as the provider (rdma-core 63+) fills it: `inlen` must reach past
/// `inline_buf_size_ex`; the capability bits need `inlen > 24`, and the RDMA bits and
/// `max_rdma_size` need `inlen > 28`, so a caller that passes a short struct sees no RDMA.
pub unsafe extern "C" fn query_device(
    c: *mut ibv_context,
    attr: *mut efadv_device_attr,
    inlen: u32,
) -> c_int {
    if inlen <= 22 || !ext_cleared(attr, inlen) {
        return libc::EINVAL;
    }
    let p = verbs::ctx(c).dev.profile;
    let rdma = EFADV_DEVICE_ATTR_CAPS_RDMA_READ | EFADV_DEVICE_ATTR_CAPS_RDMA_WRITE;
    let mut caps = 0;
    if inlen > 24 {
        caps = p.caps & !rdma;
    }
    if inlen > 28 {
        caps = p.caps;
    }
    let full = efadv_device_attr {
        comp_mask: 0,
        max_sq_wr: p.max_sq_wr,
        max_rq_wr: p.max_rq_wr,
        max_sq_sge: p.max_sq_sge,
        max_rq_sge: p.max_rq_sge,
        inline_buf_size: p.inline_buf_size,
        inline_buf_size_ex: p.inline_buf_size_ex,
        device_caps: caps,
        max_rdma_size: if inlen > 28 { p.max_rdma_size } else { 0 },
    };
    let n = (inlen as usize).min(size_of::<efadv_device_attr>());
    ptr::write_bytes(attr.cast::<u8>(), 0, inlen as usize);
    ptr::copy_nonoverlapping(
        (&full as *const efadv_device_attr).cast::<u8>(),
        attr.cast::<u8>(),
        n,
    );
    0
}

/// `efadv_create_qp_ex`: an SRD QP.
pub unsafe extern "C" fn create_qp_ex(
    c: *mut ibv_context,
    attr: *mut ibv_qp_init_attr_ex,
    efa: *mut efadv_qp_init_attr,
    inlen: u32,
) -> *mut ibv_qp {
    let min = offset_of!(efadv_qp_init_attr, flags);
    let a = &*attr;
    if a.qp_type != IBV_QPT_DRIVER
        || efa.is_null()
        || inlen <= 8
        || !ext_cleared(efa, inlen)
        || (*efa).comp_mask != 0
    {
        return fail(libc::EINVAL);
    }
    if (*efa).driver_qp_type != EFADV_QP_DRIVER_TYPE_SRD {
        return fail(libc::EOPNOTSUPP);
    }
    let flags = if inlen as usize > min {
        u32::from((*efa).flags)
    } else {
        0
    };
    let wr_flags = if inlen as usize > offset_of!(efadv_qp_init_attr, wr_flags) {
        (*efa).wr_flags
    } else {
        0
    };
    // The provider's efa_check_qp_attr: each flag only with its capability (and release).
    let dev = &verbs::ctx(c).dev;
    let release = crate::device::release();
    let mut allowed = 0;
    if dev
        .profile
        .has(EFADV_DEVICE_ATTR_CAPS_UNSOLICITED_WRITE_RECV)
    {
        allowed |= EFADV_QP_FLAGS_UNSOLICITED_WRITE_RECV;
    }
    if release >= 63 && dev.profile.has(EFADV_DEVICE_ATTR_CAPS_RDMA_WRITE) {
        allowed |= EFADV_QP_FLAGS_INLINE_WRITE;
    }
    let allowed_wr = if release >= 64 {
        u64::from(EFADV_WR_EX_WITH_PROCESSING_HINTS)
    } else {
        0
    };
    if flags & !allowed != 0 || wr_flags & !allowed_wr != 0 {
        return fail(libc::EOPNOTSUPP);
    }
    let f = qp::EfaQpFlags {
        unsolicited: flags & EFADV_QP_FLAGS_UNSOLICITED_WRITE_RECV != 0,
        inline_write: flags & EFADV_QP_FLAGS_INLINE_WRITE != 0,
        hints: wr_flags != 0,
    };
    qp::create_ex(a, QpKind::Srd, f)
}

/// `efadv_get_max_sq_depth` (EFA_1.5, rdma-core 63): the send queue depth a QP with these
/// attributes gets. Errors are negative, as the provider returns them.
pub unsafe extern "C" fn get_max_sq_depth(
    c: *mut ibv_context,
    attr: *mut efadv_sq_depth_attr,
    inlen: u32,
) -> c_int {
    let release = crate::device::release();
    if release < 63 {
        return -libc::EOPNOTSUPP;
    }
    if inlen <= 20 || (*attr).comp_mask != 0 {
        return -libc::EINVAL;
    }
    let p = verbs::ctx(c).dev.profile;
    let a = &*attr;
    if a.max_send_sge > u32::from(p.max_sq_sge)
        || a.max_rdma_sge > 1
        || a.max_inline_data > u32::from(p.inline_buf_size_ex)
    {
        return -libc::EINVAL;
    }
    let inline_write = a.flags & EFADV_SQ_DEPTH_ATTR_INLINE_WRITE != 0;
    qp::sq_depth(p, a.max_inline_data, inline_write) as c_int
}

/// `efadv_get_max_rq_depth` (EFA_1.5, rdma-core 63): `max_rq_wr / max_recv_sge`. (The provider
/// divides by zero for `max_recv_sge` 0; soft-efa refuses it.)
pub unsafe extern "C" fn get_max_rq_depth(
    c: *mut ibv_context,
    attr: *mut efadv_rq_depth_attr,
    inlen: u32,
) -> c_int {
    let release = crate::device::release();
    if release < 63 {
        return -libc::EOPNOTSUPP;
    }
    if inlen <= 8 || (*attr).comp_mask != 0 {
        return -libc::EINVAL;
    }
    let p = verbs::ctx(c).dev.profile;
    let sge = (*attr).max_recv_sge;
    if sge == 0 || sge > u32::from(p.max_rq_sge) {
        return -libc::EINVAL;
    }
    (p.max_rq_wr / sge) as c_int
}

/// `efadv_create_driver_qp`: an SRD QP from legacy attributes.
pub unsafe extern "C" fn create_driver_qp(
    pd: *mut ibv_pd,
    attr: *mut ibv_qp_init_attr,
    driver_qp_type: u32,
) -> *mut ibv_qp {
    if driver_qp_type != EFADV_QP_DRIVER_TYPE_SRD {
        return fail(libc::EINVAL);
    }
    qp::create_srd_legacy(pd, &*attr)
}

/// `efadv_query_ah`.
pub unsafe extern "C" fn query_ah(ah: *mut ibv_ah, attr: *mut efadv_ah_attr, inlen: u32) -> c_int {
    if inlen <= 8 || !ext_cleared(attr, inlen) {
        return libc::EINVAL;
    }
    ptr::write_bytes(attr.cast::<u8>(), 0, inlen as usize);
    (*attr).ahn = verbs::ah(ah).ahn;
    0
}

/// `efadv_create_cq`: the efadv `wc_flags` need their device capabilities.
pub unsafe extern "C" fn create_cq(
    c: *mut ibv_context,
    attr: *mut ibv_cq_init_attr_ex,
    efa: *mut efadv_cq_init_attr,
    inlen: u32,
) -> *mut ibv_cq_ex {
    if efa.is_null() || inlen <= 8 || !ext_cleared(efa, inlen) || (*efa).comp_mask != 0 {
        return fail(libc::EINVAL);
    }
    let dev = &verbs::ctx(c).dev;
    let wf = (*efa).wc_flags;
    let known = u64::from(EFADV_WC_EX_WITH_SGID | EFADV_WC_EX_WITH_IS_UNSOLICITED);
    if wf & !known != 0
        || (wf & u64::from(EFADV_WC_EX_WITH_SGID) != 0
            && !dev.profile.has(EFADV_DEVICE_ATTR_CAPS_CQ_WITH_SGID))
        || (wf & u64::from(EFADV_WC_EX_WITH_IS_UNSOLICITED) != 0
            && !dev
                .profile
                .has(EFADV_DEVICE_ATTR_CAPS_UNSOLICITED_WRITE_RECV))
    {
        return fail(libc::EOPNOTSUPP);
    }
    verbs::create_cq_checked(c, attr, wf)
}

/// `efadv_cq_from_ibv_cq_ex`.
pub unsafe extern "C" fn cq_from_ibv_cq_ex(cq: *mut ibv_cq_ex) -> *mut efadv_cq {
    ptr::addr_of_mut!(SoftCq::from_ex(cq).dv)
}

/// `efadv_query_mr`: no interconnect ids to report (all validity bits clear).
pub unsafe extern "C" fn query_mr(_mr: *mut ibv_mr, attr: *mut efadv_mr_attr, inlen: u32) -> c_int {
    if inlen <= 14 || !ext_cleared(attr, inlen) {
        return libc::EINVAL;
    }
    ptr::write_bytes(attr.cast::<u8>(), 0, inlen as usize);
    0
}

/// `efadv_query_qp_wqs`: soft-efa's queues are not in program memory, so there is nothing to
/// map for direct access.
pub unsafe extern "C" fn query_qp_wqs(
    _qp: *mut ibv_qp,
    _sq: *mut efadv_wq_attr,
    _rq: *mut efadv_wq_attr,
    _inlen: u32,
) -> c_int {
    libc::EOPNOTSUPP
}

/// `efadv_query_cq`: as `efadv_query_qp_wqs`.
pub unsafe extern "C" fn query_cq(
    _cq: *mut ibv_cq,
    _attr: *mut efadv_cq_attr,
    _inlen: u32,
) -> c_int {
    libc::EOPNOTSUPP
}

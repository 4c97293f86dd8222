//! Header inlines and macros that fall back to (or pick between) exported
//! libibverbs entry points, so they take the loaded [`Verbs`] table.

use core::ffi::{c_int, c_uint, c_void};
use core::mem::size_of;
use core::ptr;

use super::context::ctx_op;
use super::set_errno;
use crate::loader::Verbs;
use crate::{
    _compat_ibv_port_attr, ibv_context, ibv_device_attr_ex, ibv_gid_entry, ibv_mr, ibv_pd,
    ibv_port_attr, ibv_qp, ibv_qp_init_attr, ibv_qp_init_attr_ex, ibv_query_device_ex_input,
    IBV_ACCESS_OPTIONAL_RANGE, IBV_QP_INIT_ATTR_PD,
};

/// `ibv_query_port` as the header macro does it: the provider's extended
/// `query_port` op with `sizeof(struct ibv_port_attr)` when present, else
/// the compat export on a zeroed `port_attr`. Returns 0 or an errno value.
///
/// # Safety
/// `context` must be live and opened through `verbs`' library; `port_attr`
/// writable.
#[inline]
pub unsafe fn ibv_query_port(
    verbs: &Verbs,
    context: *mut ibv_context,
    port_num: u8,
    port_attr: *mut ibv_port_attr,
) -> c_int {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match ctx_op!(context, query_port) {
            Some(f) => f(context, port_num, port_attr, size_of::<ibv_port_attr>()),
            None => {
                ptr::write_bytes(port_attr, 0, 1);
                (verbs.ibv_query_port)(context, port_num, port_attr.cast::<_compat_ibv_port_attr>())
            }
        }
    }
}

/// `ibv_query_device_ex` as the header does it: reject a non-zero
/// `input->comp_mask` with `EINVAL`; use the provider's `query_device_ex` op;
/// when it is missing or answers `EOPNOTSUPP`/`ENOSYS`, zero `attr` and fill
/// `attr.orig_attr` with `ibv_query_device`. Returns 0 or an errno value.
///
/// # Safety
/// `context` must be live; `input` null or valid; `attr` writable.
#[inline]
pub unsafe fn ibv_query_device_ex(
    verbs: &Verbs,
    context: *mut ibv_context,
    input: *const ibv_query_device_ex_input,
    attr: *mut ibv_device_attr_ex,
) -> c_int {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        if !input.is_null() && (*input).comp_mask != 0 {
            return libc::EINVAL;
        }
        if let Some(f) = ctx_op!(context, query_device_ex) {
            let ret = f(context, input, attr, size_of::<ibv_device_attr_ex>());
            if ret != libc::EOPNOTSUPP && ret != libc::ENOSYS {
                return ret;
            }
        }
        ptr::write_bytes(attr, 0, 1);
        (verbs.ibv_query_device)(context, ptr::addr_of_mut!((*attr).orig_attr))
    }
}

/// `ibv_create_qp_ex` as the header does it: `ibv_create_qp` when
/// `comp_mask` is exactly `IBV_QP_INIT_ATTR_PD`, else the provider's
/// `create_qp_ex` op (null with `errno = EOPNOTSUPP` if missing).
///
/// # Safety
/// `context` must be live; `qp_init_attr_ex` valid, its `pd` (and CQs) live.
#[inline]
pub unsafe fn ibv_create_qp_ex(
    verbs: &Verbs,
    context: *mut ibv_context,
    qp_init_attr_ex: *mut ibv_qp_init_attr_ex,
) -> *mut ibv_qp {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        if (*qp_init_attr_ex).comp_mask == IBV_QP_INIT_ATTR_PD {
            // `struct ibv_qp_init_attr` is the prefix of `ibv_qp_init_attr_ex`.
            return (verbs.ibv_create_qp)(
                (*qp_init_attr_ex).pd,
                qp_init_attr_ex.cast::<ibv_qp_init_attr>(),
            );
        }
        match ctx_op!(context, create_qp_ex) {
            Some(f) => f(context, qp_init_attr_ex),
            None => {
                set_errno(libc::EOPNOTSUPP);
                ptr::null_mut()
            }
        }
    }
}

/// `ibv_reg_mr` as the header macro does it for a constant `access`: the
/// compat `ibv_reg_mr` export when no optional access flag
/// (`IBV_ACCESS_OPTIONAL_RANGE`) is set, else `ibv_reg_mr_iova2` with
/// `iova = addr`. Optional flags may be ignored by definition, so a library
/// without `ibv_reg_mr_iova2` gets them masked off. Returns null with
/// `errno` set on failure.
///
/// # Safety
/// `pd` must be live; `addr..addr+length` must stay mapped until the MR is
/// deregistered.
#[inline]
pub unsafe fn ibv_reg_mr(
    verbs: &Verbs,
    pd: *mut ibv_pd,
    addr: *mut c_void,
    length: usize,
    access: c_uint,
) -> *mut ibv_mr {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        if access & IBV_ACCESS_OPTIONAL_RANGE == 0 {
            return (verbs.ibv_reg_mr)(pd, addr, length, access as c_int);
        }
        match verbs.ibv_reg_mr_iova2 {
            Some(f) => f(pd, addr, length, addr as u64, access),
            None => (verbs.ibv_reg_mr)(
                pd,
                addr,
                length,
                (access & !IBV_ACCESS_OPTIONAL_RANGE) as c_int,
            ),
        }
    }
}

/// `ibv_reg_mr_iova` as the header macro does it: `ibv_reg_mr_iova` without
/// optional flags, `ibv_reg_mr_iova2` with them. Returns null with `errno`
/// set on failure (`EOPNOTSUPP` if the library has neither entry point).
///
/// # Safety
/// As [`ibv_reg_mr`].
#[inline]
pub unsafe fn ibv_reg_mr_iova(
    verbs: &Verbs,
    pd: *mut ibv_pd,
    addr: *mut c_void,
    length: usize,
    iova: u64,
    access: c_uint,
) -> *mut ibv_mr {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        let plain = access & IBV_ACCESS_OPTIONAL_RANGE == 0;
        match (plain, verbs.ibv_reg_mr_iova, verbs.ibv_reg_mr_iova2) {
            (true, Some(f), _) => f(pd, addr, length, iova, access as c_int),
            (_, _, Some(f)) => f(pd, addr, length, iova, access),
            (false, Some(f), None) => f(
                pd,
                addr,
                length,
                iova,
                (access & !IBV_ACCESS_OPTIONAL_RANGE) as c_int,
            ),
            (_, None, None) => {
                set_errno(libc::EOPNOTSUPP);
                ptr::null_mut()
            }
        }
    }
}

/// `ibv_query_gid_ex`: one GID table entry with its type and netdev index.
/// Returns 0 or an errno value (`EOPNOTSUPP` if the library predates it).
///
/// # Safety
/// `context` must be live; `entry` writable.
#[inline]
pub unsafe fn ibv_query_gid_ex(
    verbs: &Verbs,
    context: *mut ibv_context,
    port_num: u32,
    gid_index: u32,
    entry: *mut ibv_gid_entry,
    flags: u32,
) -> c_int {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match verbs._ibv_query_gid_ex {
            Some(f) => f(
                context,
                port_num,
                gid_index,
                entry,
                flags,
                size_of::<ibv_gid_entry>(),
            ),
            None => libc::EOPNOTSUPP,
        }
    }
}

/// `ibv_query_gid_table`: all valid GID entries of every port. Returns the
/// number of entries written, or a negative errno (`-EOPNOTSUPP` if the
/// library predates it).
///
/// # Safety
/// `context` must be live; `entries` must have room for `max_entries`.
#[inline]
pub unsafe fn ibv_query_gid_table(
    verbs: &Verbs,
    context: *mut ibv_context,
    entries: *mut ibv_gid_entry,
    max_entries: usize,
    flags: u32,
) -> isize {
    // SAFETY: forwarded from the caller, who keeps this function's `# Safety`
    // contract: the pointers are live and valid for the operations below.
    unsafe {
        match verbs._ibv_query_gid_table {
            Some(f) => f(
                context,
                entries,
                max_entries,
                flags,
                size_of::<ibv_gid_entry>(),
            ),
            None => -(libc::EOPNOTSUPP as isize),
        }
    }
}

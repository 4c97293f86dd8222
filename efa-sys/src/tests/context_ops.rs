//! `verbs_get_ctx` / `verbs_get_ctx_op` rules and the context-op inlines,
//! plus the inlines that fall back to exported entry points.

use core::mem::{offset_of, size_of};
use core::ptr;
use std::boxed::Box;
use std::ffi::{c_int, c_uint, c_void};
use std::vec;

use super::fake::{self, addr};
use crate::*;

const CQ: usize = 0xc0;
const TD: usize = 0x7d;
const PD: usize = 0x9d;
const QP: usize = 0x9b;
const MR: usize = 0x3e;

unsafe extern "C" fn create_cq_ex(
    ctx: *mut ibv_context,
    attr: *mut ibv_cq_init_attr_ex,
) -> *mut ibv_cq_ex {
    fake::record("create_cq_ex", &[addr(ctx), addr(attr)]);
    CQ as *mut ibv_cq_ex
}
unsafe extern "C" fn alloc_td(ctx: *mut ibv_context, attr: *mut ibv_td_init_attr) -> *mut ibv_td {
    fake::record("alloc_td", &[addr(ctx), addr(attr)]);
    TD as *mut ibv_td
}
unsafe extern "C" fn dealloc_td(td: *mut ibv_td) -> c_int {
    fake::record("dealloc_td", &[addr(td)]);
    0
}
unsafe extern "C" fn alloc_parent_domain(
    ctx: *mut ibv_context,
    attr: *mut ibv_parent_domain_init_attr,
) -> *mut ibv_pd {
    fake::record("alloc_parent_domain", &[addr(ctx), addr(attr)]);
    PD as *mut ibv_pd
}
unsafe extern "C" fn query_port_ex(
    ctx: *mut ibv_context,
    port: u8,
    attr: *mut ibv_port_attr,
    len: usize,
) -> c_int {
    fake::record(
        "query_port",
        &[addr(ctx), port as u64, addr(attr), len as u64],
    );
    0
}
unsafe extern "C" fn query_port_compat(
    ctx: *mut ibv_context,
    port: u8,
    attr: *mut _compat_ibv_port_attr,
) -> c_int {
    // SAFETY: the fast path under test calls this fake as the provider's op, with the live
    // objects and valid out-pointers that op receives.
    unsafe {
        // Record whether the caller zeroed the whole extended struct first.
        let bytes = core::slice::from_raw_parts(attr.cast::<u8>(), size_of::<ibv_port_attr>());
        let zeroed = bytes.iter().all(|b| *b == 0) as u64;
        fake::record(
            "ibv_query_port",
            &[addr(ctx), port as u64, addr(attr), zeroed],
        );
        (*attr.cast::<ibv_port_attr>()).state = IBV_PORT_ACTIVE;
        0
    }
}
unsafe extern "C" fn query_device_ex_unsupported(
    ctx: *mut ibv_context,
    input: *const ibv_query_device_ex_input,
    attr: *mut ibv_device_attr_ex,
    len: usize,
) -> c_int {
    // SAFETY: the fast path under test calls this fake as the provider's op, with the live
    // objects and valid out-pointers that op receives.
    unsafe {
        fake::record(
            "query_device_ex",
            &[addr(ctx), addr(input), addr(attr), len as u64],
        );
        (*attr).max_dm_size = 1;
        libc::EOPNOTSUPP
    }
}
unsafe extern "C" fn query_device_ex_ok(
    ctx: *mut ibv_context,
    input: *const ibv_query_device_ex_input,
    attr: *mut ibv_device_attr_ex,
    len: usize,
) -> c_int {
    fake::record(
        "query_device_ex",
        &[addr(ctx), addr(input), addr(attr), len as u64],
    );
    0
}
unsafe extern "C" fn query_device(ctx: *mut ibv_context, attr: *mut ibv_device_attr) -> c_int {
    fake::record("ibv_query_device", &[addr(ctx), addr(attr)]);
    0
}
unsafe extern "C" fn create_qp_ex(
    ctx: *mut ibv_context,
    attr: *mut ibv_qp_init_attr_ex,
) -> *mut ibv_qp {
    fake::record("create_qp_ex", &[addr(ctx), addr(attr)]);
    QP as *mut ibv_qp
}
unsafe extern "C" fn create_qp(pd: *mut ibv_pd, attr: *mut ibv_qp_init_attr) -> *mut ibv_qp {
    fake::record("ibv_create_qp", &[addr(pd), addr(attr)]);
    QP as *mut ibv_qp
}
unsafe extern "C" fn reg_mr(
    pd: *mut ibv_pd,
    a: *mut c_void,
    len: usize,
    access: c_int,
) -> *mut ibv_mr {
    fake::record(
        "ibv_reg_mr",
        &[addr(pd), addr(a), len as u64, access as u64],
    );
    MR as *mut ibv_mr
}
unsafe extern "C" fn reg_mr_iova2(
    pd: *mut ibv_pd,
    a: *mut c_void,
    len: usize,
    iova: u64,
    access: c_uint,
) -> *mut ibv_mr {
    fake::record(
        "ibv_reg_mr_iova2",
        &[addr(pd), addr(a), len as u64, iova, access as u64],
    );
    MR as *mut ibv_mr
}
unsafe extern "C" fn reg_mr_iova(
    pd: *mut ibv_pd,
    a: *mut c_void,
    len: usize,
    iova: u64,
    access: c_int,
) -> *mut ibv_mr {
    fake::record(
        "ibv_reg_mr_iova",
        &[addr(pd), addr(a), len as u64, iova, access as u64],
    );
    MR as *mut ibv_mr
}
unsafe extern "C" fn query_gid_ex(
    ctx: *mut ibv_context,
    port: u32,
    index: u32,
    entry: *mut ibv_gid_entry,
    flags: u32,
    size: usize,
) -> c_int {
    fake::record(
        "_ibv_query_gid_ex",
        &[
            addr(ctx),
            port as u64,
            index as u64,
            addr(entry),
            flags as u64,
            size as u64,
        ],
    );
    0
}
unsafe extern "C" fn query_gid_table(
    ctx: *mut ibv_context,
    entries: *mut ibv_gid_entry,
    max: usize,
    flags: u32,
    size: usize,
) -> isize {
    fake::record(
        "_ibv_query_gid_table",
        &[
            addr(ctx),
            addr(entries),
            max as u64,
            flags as u64,
            size as u64,
        ],
    );
    2
}

fn errno() -> c_int {
    // SAFETY: reads this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn clear_errno() {
    // SAFETY: writes this thread's errno slot.
    unsafe { *libc::__errno_location() = 0 };
}

/// The smallest `sz` a provider struct can have and still hold `op_offset`.
fn min_sz(op_offset: usize) -> usize {
    size_of::<verbs_context>() - op_offset
}

/// libibverbs' table with the entry points the compat inlines use replaced
/// by recording fakes (the real library supplies the other fields).
fn fake_verbs() -> Option<Verbs> {
    let mut v = *super::loader::installed_verbs()?;
    v.ibv_query_port = query_port_compat;
    v.ibv_query_device = query_device;
    v.ibv_create_qp = create_qp;
    v.ibv_reg_mr = reg_mr;
    v.ibv_reg_mr_iova = Some(reg_mr_iova);
    v.ibv_reg_mr_iova2 = Some(reg_mr_iova2);
    v._ibv_query_gid_ex = Some(query_gid_ex);
    v._ibv_query_gid_table = Some(query_gid_table);
    Some(v)
}

#[test]
fn verbs_get_ctx_finds_the_enclosing_verbs_context() {
    let mut vctx = fake::verbs_ctx();
    let outer = addr(&*vctx);
    // SAFETY: `vctx` is a live verbs_context.
    let found = unsafe { verbs_get_ctx(&mut vctx.context) };
    assert_eq!(addr(found), outer);

    vctx.context.abi_compat = ptr::null_mut();
    // SAFETY: as above.
    let found = unsafe { verbs_get_ctx(&mut vctx.context) };
    assert!(
        found.is_null(),
        "a non-extended context has no verbs_context"
    );
}

#[test]
fn context_ops_are_called_when_present() {
    let mut vctx = fake::verbs_ctx();
    vctx.create_cq_ex = Some(create_cq_ex);
    vctx.alloc_td = Some(alloc_td);
    vctx.dealloc_td = Some(dealloc_td);
    vctx.alloc_parent_domain = Some(alloc_parent_domain);
    let ctx: *mut ibv_context = &mut vctx.context;
    let mut cq_attr = ibv_cq_init_attr_ex::default();
    let mut td_attr = ibv_td_init_attr::default();
    let mut pd_attr = ibv_parent_domain_init_attr::default();
    let mut td = ibv_td { context: ctx };
    fake::take();
    // SAFETY: live fake context whose ops only record.
    let (cq, tdp, rc, pd) = unsafe {
        (
            ibv_create_cq_ex(ctx, &mut cq_attr),
            ibv_alloc_td(ctx, &mut td_attr),
            ibv_dealloc_td(&mut td),
            ibv_alloc_parent_domain(ctx, &mut pd_attr),
        )
    };
    assert_eq!(
        (addr(cq), addr(tdp), rc, addr(pd)),
        (CQ as u64, TD as u64, 0, PD as u64)
    );
    let c = addr(ctx);
    assert_eq!(
        fake::take(),
        vec![
            ("create_cq_ex", vec![c, addr(&cq_attr)]),
            ("alloc_td", vec![c, addr(&td_attr)]),
            ("dealloc_td", vec![addr(&td)]),
            ("alloc_parent_domain", vec![c, addr(&pd_attr)]),
        ]
    );
}

#[test]
fn context_op_lookup_respects_sz_exactly() {
    let mut vctx = fake::verbs_ctx();
    vctx.create_cq_ex = Some(create_cq_ex);
    let ctx: *mut ibv_context = &mut vctx.context;
    let mut attr = ibv_cq_init_attr_ex::default();

    // Exactly large enough: the op is used.
    vctx.sz = min_sz(offset_of!(verbs_context, create_cq_ex));
    fake::take();
    // SAFETY: live fake context.
    let cq = unsafe { ibv_create_cq_ex(ctx, &mut attr) };
    assert_eq!(addr(cq), CQ as u64);
    assert_eq!(fake::take().len(), 1);

    // One byte short: the op lies outside the provider's struct.
    vctx.sz = min_sz(offset_of!(verbs_context, create_cq_ex)) - 1;
    clear_errno();
    // SAFETY: as above.
    let cq = unsafe { ibv_create_cq_ex(ctx, &mut attr) };
    assert!(cq.is_null());
    assert_eq!(errno(), libc::EOPNOTSUPP);
    assert!(fake::take().is_empty());
}

#[test]
fn missing_context_ops_fail_as_the_header_does() {
    let mut vctx = fake::verbs_ctx();
    let ctx: *mut ibv_context = &mut vctx.context;
    let mut td = ibv_td { context: ctx };
    let mut td_attr = ibv_td_init_attr::default();
    let mut pd_attr = ibv_parent_domain_init_attr::default();
    let mut cq_attr = ibv_cq_init_attr_ex::default();
    // SAFETY: live fake context with the extended ops NULL.
    unsafe {
        clear_errno();
        assert!(ibv_alloc_td(ctx, &mut td_attr).is_null());
        assert_eq!(errno(), libc::EOPNOTSUPP);
        clear_errno();
        assert!(ibv_alloc_parent_domain(ctx, &mut pd_attr).is_null());
        assert_eq!(errno(), libc::EOPNOTSUPP);
        assert_eq!(ibv_dealloc_td(&mut td), libc::EOPNOTSUPP);
        // A non-extended context behaves the same, even with ops "set".
        vctx.create_cq_ex = Some(create_cq_ex);
        vctx.context.abi_compat = ptr::null_mut();
        clear_errno();
        assert!(ibv_create_cq_ex(ctx, &mut cq_attr).is_null());
        assert_eq!(errno(), libc::EOPNOTSUPP);
    }
}

#[test]
fn query_port_prefers_the_extended_op() {
    let Some(v) = fake_verbs() else { return };
    let mut vctx = fake::verbs_ctx();
    vctx.query_port = Some(query_port_ex);
    let ctx: *mut ibv_context = &mut vctx.context;
    // SAFETY: zeroes are a valid ibv_port_attr.
    let mut attr: ibv_port_attr = unsafe { core::mem::zeroed() };
    fake::take();
    // SAFETY: live fake context; `attr` writable.
    assert_eq!(unsafe { ibv_query_port(&v, ctx, 1, &mut attr) }, 0);
    assert_eq!(
        fake::take(),
        vec![(
            "query_port",
            vec![addr(ctx), 1, addr(&attr), size_of::<ibv_port_attr>() as u64]
        )]
    );
}

#[test]
fn query_port_falls_back_to_the_compat_export_on_zeroed_attr() {
    let Some(v) = fake_verbs() else { return };
    let mut vctx = fake::verbs_ctx();
    vctx.query_port = Some(query_port_ex);
    // A provider built before query_port existed: sz too small to hold it.
    vctx.sz = min_sz(offset_of!(verbs_context, query_port)) - 1;
    let ctx: *mut ibv_context = &mut vctx.context;
    // SAFETY: any byte pattern of integers is a valid ibv_port_attr here;
    // 0xff fills check that the fallback zeroes it.
    let mut attr: ibv_port_attr =
        unsafe { core::mem::transmute([0xffu8; size_of::<ibv_port_attr>()]) };
    fake::take();
    // SAFETY: live fake context; `attr` writable.
    assert_eq!(unsafe { ibv_query_port(&v, ctx, 2, &mut attr) }, 0);
    assert_eq!(
        fake::take(),
        vec![("ibv_query_port", vec![addr(ctx), 2, addr(&attr), 1])]
    );
    assert_eq!(attr.state, IBV_PORT_ACTIVE);
    assert_eq!(
        attr.active_speed_ex, 0,
        "extended fields stay zero after the compat path"
    );
}

#[test]
fn query_device_ex_follows_the_header() {
    let Some(v) = fake_verbs() else { return };
    let mut vctx = fake::verbs_ctx();
    let ctx: *mut ibv_context = &mut vctx.context;
    let mut attr = Box::<ibv_device_attr_ex>::default();
    let attr_p: *mut ibv_device_attr_ex = &mut *attr;
    let bad_input = ibv_query_device_ex_input { comp_mask: 1 };
    // SAFETY: live fake context; `attr` writable; `bad_input` readable.
    unsafe {
        fake::take();
        assert_eq!(
            ibv_query_device_ex(&v, ctx, &bad_input, attr_p),
            libc::EINVAL
        );
        assert!(fake::take().is_empty());

        // No op: legacy query on a zeroed struct.
        (*attr_p).max_dm_size = 77;
        assert_eq!(ibv_query_device_ex(&v, ctx, ptr::null(), attr_p), 0);
        assert_eq!((*attr_p).max_dm_size, 0);
        let orig = addr(ptr::addr_of!((*attr_p).orig_attr));
        assert_eq!(
            fake::take(),
            vec![("ibv_query_device", vec![addr(ctx), orig])]
        );

        // Op answers EOPNOTSUPP: legacy again, after zeroing what it wrote.
        vctx.query_device_ex = Some(query_device_ex_unsupported);
        assert_eq!(ibv_query_device_ex(&v, ctx, ptr::null(), attr_p), 0);
        assert_eq!((*attr_p).max_dm_size, 0);
        let size = size_of::<ibv_device_attr_ex>() as u64;
        assert_eq!(
            fake::take(),
            vec![
                ("query_device_ex", vec![addr(ctx), 0, addr(attr_p), size]),
                ("ibv_query_device", vec![addr(ctx), orig]),
            ]
        );

        // Op succeeds: no legacy call.
        vctx.query_device_ex = Some(query_device_ex_ok);
        assert_eq!(ibv_query_device_ex(&v, ctx, ptr::null(), attr_p), 0);
        assert_eq!(
            fake::take(),
            vec![("query_device_ex", vec![addr(ctx), 0, addr(attr_p), size])]
        );
    }
}

#[test]
fn create_qp_ex_uses_create_qp_for_pd_only_mask() {
    let Some(v) = fake_verbs() else { return };
    let mut vctx = fake::verbs_ctx();
    vctx.create_qp_ex = Some(create_qp_ex);
    let ctx: *mut ibv_context = &mut vctx.context;
    let pd = 0x1d0 as *mut ibv_pd;
    let mut attr = ibv_qp_init_attr_ex {
        comp_mask: IBV_QP_INIT_ATTR_PD,
        pd,
        ..Default::default()
    };
    // SAFETY: live fake context; `attr` valid.
    unsafe {
        fake::take();
        assert_eq!(addr(ibv_create_qp_ex(&v, ctx, &mut attr)), QP as u64);
        assert_eq!(
            fake::take(),
            vec![("ibv_create_qp", vec![addr(pd), addr(&attr)])]
        );

        attr.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
        assert_eq!(addr(ibv_create_qp_ex(&v, ctx, &mut attr)), QP as u64);
        assert_eq!(
            fake::take(),
            vec![("create_qp_ex", vec![addr(ctx), addr(&attr)])]
        );

        vctx.create_qp_ex = None;
        clear_errno();
        assert!(ibv_create_qp_ex(&v, ctx, &mut attr).is_null());
        assert_eq!(errno(), libc::EOPNOTSUPP);
    }
}

#[test]
fn reg_mr_picks_the_entry_point_like_the_macro() {
    let Some(mut v) = fake_verbs() else { return };
    let pd = 0x1d0 as *mut ibv_pd;
    let buf = 0x10_0000 as *mut c_void;
    let plain = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ;
    let optional = plain | IBV_ACCESS_RELAXED_ORDERING;
    assert_ne!(IBV_ACCESS_RELAXED_ORDERING & IBV_ACCESS_OPTIONAL_RANGE, 0);
    // SAFETY: the entry points are recording fakes; no memory is touched.
    unsafe {
        fake::take();
        assert_eq!(addr(ibv_reg_mr(&v, pd, buf, 64, plain)), MR as u64);
        assert_eq!(ibv_reg_mr(&v, pd, buf, 64, optional) as usize, MR);
        assert_eq!(
            fake::take(),
            vec![
                ("ibv_reg_mr", vec![addr(pd), addr(buf), 64, plain as u64]),
                (
                    "ibv_reg_mr_iova2",
                    vec![addr(pd), addr(buf), 64, addr(buf), optional as u64]
                ),
            ]
        );

        // A library without ibv_reg_mr_iova2: optional flags are dropped.
        v.ibv_reg_mr_iova2 = None;
        ibv_reg_mr(&v, pd, buf, 64, optional);
        assert_eq!(
            fake::take(),
            vec![("ibv_reg_mr", vec![addr(pd), addr(buf), 64, plain as u64])]
        );
    }
}

#[test]
fn reg_mr_iova_picks_the_entry_point_like_the_macro() {
    let Some(mut v) = fake_verbs() else { return };
    let pd = 0x1d0 as *mut ibv_pd;
    let buf = 0x10_0000 as *mut c_void;
    let plain = IBV_ACCESS_LOCAL_WRITE;
    let optional = plain | IBV_ACCESS_RELAXED_ORDERING;
    // SAFETY: recording fakes only.
    unsafe {
        fake::take();
        ibv_reg_mr_iova(&v, pd, buf, 64, 0x2000, plain);
        ibv_reg_mr_iova(&v, pd, buf, 64, 0x2000, optional);
        assert_eq!(
            fake::take(),
            vec![
                (
                    "ibv_reg_mr_iova",
                    vec![addr(pd), addr(buf), 64, 0x2000, plain as u64]
                ),
                (
                    "ibv_reg_mr_iova2",
                    vec![addr(pd), addr(buf), 64, 0x2000, optional as u64]
                ),
            ]
        );
        v.ibv_reg_mr_iova = None;
        v.ibv_reg_mr_iova2 = None;
        clear_errno();
        assert!(ibv_reg_mr_iova(&v, pd, buf, 64, 0x2000, plain).is_null());
        assert_eq!(errno(), libc::EOPNOTSUPP);
    }
}

#[test]
fn gid_queries_pass_the_entry_size() {
    let Some(mut v) = fake_verbs() else { return };
    let ctx = 0xc7c as *mut ibv_context;
    let mut entries = [ibv_gid_entry::default(); 4];
    let size = size_of::<ibv_gid_entry>() as u64;
    // SAFETY: recording fakes only.
    unsafe {
        fake::take();
        assert_eq!(ibv_query_gid_ex(&v, ctx, 1, 3, &mut entries[0], 0), 0);
        assert_eq!(ibv_query_gid_table(&v, ctx, entries.as_mut_ptr(), 4, 0), 2);
        assert_eq!(
            fake::take(),
            vec![
                (
                    "_ibv_query_gid_ex",
                    vec![addr(ctx), 1, 3, addr(&entries[0]), 0, size]
                ),
                (
                    "_ibv_query_gid_table",
                    vec![addr(ctx), addr(entries.as_ptr()), 4, 0, size]
                ),
            ]
        );
        v._ibv_query_gid_ex = None;
        v._ibv_query_gid_table = None;
        assert_eq!(
            ibv_query_gid_ex(&v, ctx, 1, 3, &mut entries[0], 0),
            libc::EOPNOTSUPP
        );
        assert_eq!(
            ibv_query_gid_table(&v, ctx, entries.as_mut_ptr(), 4, 0),
            -(libc::EOPNOTSUPP as isize)
        );
        assert!(fake::take().is_empty());
    }
}

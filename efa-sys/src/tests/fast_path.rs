//! The Rust inlines call the provider's pointers with the right arguments,
//! in the right order, and handle missing ops as documented.

use std::ffi::c_void;
use std::vec;

use super::fake::{self, addr};
use crate::*;

#[test]
fn srd_rdma_write_batch_calls_ops_in_order() {
    let mut qpx = fake::qp_ex();
    let qp: *mut ibv_qp_ex = &mut qpx;
    let ah = 0x1000 as *mut ibv_ah;
    fake::take();
    // SAFETY: `qpx` is a live fake whose ops only record.
    let ret = unsafe {
        ibv_wr_start(qp);
        (*qp).wr_id = 99;
        (*qp).wr_flags = IBV_SEND_SIGNALED;
        ibv_wr_rdma_write(qp, 0xabcd, 0x7f00_0000_1000);
        ibv_wr_set_ud_addr(qp, ah, 0x42, 0x1234_5678);
        ibv_wr_set_sge(qp, 0x99, 0x5000, 8192);
        ibv_wr_complete(qp)
    };
    let q = addr(qp);
    assert_eq!(
        fake::take(),
        vec![
            ("wr_start", vec![q]),
            ("wr_rdma_write", vec![q, 0xabcd, 0x7f00_0000_1000]),
            ("wr_set_ud_addr", vec![q, 0x1000, 0x42, 0x1234_5678]),
            ("wr_set_sge", vec![q, 0x99, 0x5000, 8192]),
            ("wr_complete", vec![q]),
        ]
    );
    assert_eq!(ret, fake::COMPLETE_RET);
    assert_eq!((qpx.wr_id, qpx.wr_flags), (99, IBV_SEND_SIGNALED));
}

#[test]
fn every_wr_op_forwards_its_arguments() {
    let mut qpx = fake::qp_ex();
    let qp: *mut ibv_qp_ex = &mut qpx;
    let q = addr(qp);
    let sges = [ibv_sge {
        addr: 1,
        length: 2,
        lkey: 3,
    }; 2];
    let bufs = [ibv_data_buf {
        addr: 0x10 as *mut c_void,
        length: 4,
    }; 3];
    let bind = ibv_mw_bind_info::default();
    let word = 0u64;
    fake::take();
    // SAFETY: `qpx` is a live fake whose ops only record (no pointer is read).
    unsafe {
        ibv_wr_atomic_cmp_swp(qp, 1, 2, 3, 4);
        ibv_wr_atomic_fetch_add(qp, 5, 6, 7);
        ibv_wr_bind_mw(qp, 0x20 as *mut ibv_mw, 8, &bind);
        ibv_wr_local_inv(qp, 9);
        ibv_wr_rdma_read(qp, 10, 11);
        ibv_wr_rdma_write_imm(qp, 12, 13, 14);
        ibv_wr_send(qp);
        ibv_wr_send_imm(qp, 15);
        ibv_wr_send_inv(qp, 16);
        ibv_wr_send_tso(qp, 0x30 as *mut c_void, 17, 18);
        ibv_wr_set_xrc_srqn(qp, 19);
        ibv_wr_set_inline_data(qp, 0x40 as *mut c_void, 20);
        ibv_wr_set_inline_data_list(qp, bufs.len(), bufs.as_ptr());
        ibv_wr_set_sge_list(qp, sges.len(), sges.as_ptr());
        ibv_wr_atomic_write(qp, 21, 22, (&word as *const u64).cast());
        ibv_wr_flush(qp, 23, 24, 25, 1, 2);
        ibv_wr_abort(qp);
    }
    assert_eq!(
        fake::take(),
        vec![
            ("wr_atomic_cmp_swp", vec![q, 1, 2, 3, 4]),
            ("wr_atomic_fetch_add", vec![q, 5, 6, 7]),
            ("wr_bind_mw", vec![q, 0x20, 8, addr(&bind)]),
            ("wr_local_inv", vec![q, 9]),
            ("wr_rdma_read", vec![q, 10, 11]),
            ("wr_rdma_write_imm", vec![q, 12, 13, 14]),
            ("wr_send", vec![q]),
            ("wr_send_imm", vec![q, 15]),
            ("wr_send_inv", vec![q, 16]),
            ("wr_send_tso", vec![q, 0x30, 17, 18]),
            ("wr_set_xrc_srqn", vec![q, 19]),
            ("wr_set_inline_data", vec![q, 0x40, 20]),
            ("wr_set_inline_data_list", vec![q, 3, addr(bufs.as_ptr())]),
            ("wr_set_sge_list", vec![q, 2, addr(sges.as_ptr())]),
            ("wr_atomic_write", vec![q, 21, 22, addr(&word)]),
            ("wr_flush", vec![q, 23, 24, 25, 1, 2]),
            ("wr_abort", vec![q]),
        ]
    );
}

#[test]
fn wr_complete_without_op_is_eopnotsupp() {
    let mut qpx = ibv_qp_ex {
        wr_complete: None,
        ..fake::qp_ex()
    };
    fake::take();
    // SAFETY: live fake; the missing op is handled without a call.
    let ret = unsafe { ibv_wr_complete(&mut qpx) };
    assert_eq!(ret, libc::EOPNOTSUPP);
    assert!(fake::take().is_empty());
}

#[test]
fn extended_cq_poll_reads_the_current_completion() {
    let mut cqx = fake::cq_ex();
    let cq: *mut ibv_cq_ex = &mut cqx;
    let c = addr(cq);
    let mut attr = ibv_poll_cq_attr { comp_mask: 0 };
    let mut tm = ibv_wc_tm_info::default();
    fake::take();
    // SAFETY: live fake whose ops only record and return constants.
    let (start, wr_id, values, next) = unsafe {
        let start = ibv_start_poll(cq, &mut attr);
        let wr_id = (*cq).wr_id;
        let values = (
            ibv_wc_read_opcode(cq),
            ibv_wc_read_vendor_err(cq),
            ibv_wc_read_byte_len(cq),
            ibv_wc_read_imm_data(cq),
            ibv_wc_read_invalidated_rkey(cq),
            ibv_wc_read_qp_num(cq),
            ibv_wc_read_src_qp(cq),
            ibv_wc_read_wc_flags(cq),
        );
        let extra = (
            ibv_wc_read_slid(cq),
            ibv_wc_read_sl(cq),
            ibv_wc_read_dlid_path_bits(cq),
            ibv_wc_read_completion_ts(cq),
            ibv_wc_read_completion_wallclock_ns(cq),
            ibv_wc_read_cvlan(cq),
            ibv_wc_read_flow_tag(cq),
        );
        assert_eq!(extra, (3, 5, 6, fake::TS, fake::TS + 1, 9, 10));
        ibv_wc_read_tm_info(cq, &mut tm);
        let next = ibv_next_poll(cq);
        ibv_end_poll(cq);
        (start, wr_id, values, next)
    };
    assert_eq!(start, 0);
    assert_eq!(wr_id, 0xfeed);
    assert_eq!(
        values,
        (
            IBV_WC_RECV_RDMA_WITH_IMM,
            fake::VENDOR_ERR,
            fake::BYTE_LEN,
            fake::IMM,
            fake::IMM,
            fake::QP_NUM,
            fake::SRC_QP,
            fake::WC_FLAGS
        )
    );
    assert_eq!(next, libc::ENOENT);
    let names: std::vec::Vec<_> = fake::take()
        .into_iter()
        .map(|(n, args)| (n, args[0]))
        .collect();
    assert_eq!(
        names,
        vec![
            ("start_poll", c),
            ("read_opcode", c),
            ("read_vendor_err", c),
            ("read_byte_len", c),
            ("read_imm_data", c),
            ("read_imm_data", c),
            ("read_qp_num", c),
            ("read_src_qp", c),
            ("read_wc_flags", c),
            ("read_slid", c),
            ("read_sl", c),
            ("read_dlid_path_bits", c),
            ("read_completion_ts", c),
            ("read_completion_wallclock_ns", c),
            ("read_cvlan", c),
            ("read_flow_tag", c),
            ("read_tm_info", c),
            ("next_poll", c),
            ("end_poll", c),
        ]
    );
}

#[test]
fn start_and_next_poll_without_ops_are_eopnotsupp() {
    let mut cqx = ibv_cq_ex {
        start_poll: None,
        next_poll: None,
        ..fake::cq_ex()
    };
    let mut attr = ibv_poll_cq_attr { comp_mask: 0 };
    fake::take();
    // SAFETY: live fake; missing ops are handled without a call.
    let rets = unsafe { (ibv_start_poll(&mut cqx, &mut attr), ibv_next_poll(&mut cqx)) };
    assert_eq!(rets, (libc::EOPNOTSUPP, libc::EOPNOTSUPP));
    assert!(fake::take().is_empty());
}

#[test]
fn cq_ex_to_cq_is_the_same_object() {
    let mut cqx = fake::cq_ex();
    let cq = ibv_cq_ex_to_cq(&mut cqx);
    assert_eq!(addr(cq), addr(&cqx));
    // The shared prefix lines up: `context` is the first field of both.
    assert_eq!(
        core::mem::offset_of!(ibv_cq, context),
        core::mem::offset_of!(ibv_cq_ex, context)
    );
}

#[test]
fn legacy_post_and_poll_go_through_context_ops() {
    let mut vctx = fake::verbs_ctx();
    let ctx: *mut ibv_context = &mut vctx.context;
    let mut qp = ibv_qp {
        context: ctx,
        ..Default::default()
    };
    let mut cq = ibv_cq {
        context: ctx,
        ..Default::default()
    };
    let mut srq = ibv_srq {
        context: ctx,
        ..Default::default()
    };
    let mut swr = ibv_send_wr::default();
    let mut rwr = ibv_recv_wr::default();
    let mut bad_s: *mut ibv_send_wr = core::ptr::null_mut();
    let mut bad_r: *mut ibv_recv_wr = core::ptr::null_mut();
    let mut wcs = [ibv_wc::default(); 4];
    fake::take();
    // SAFETY: fakes with a live context; poll_cq writes within `wcs`.
    let rets = unsafe {
        (
            ibv_post_send(&mut qp, &mut swr, &mut bad_s),
            ibv_post_recv(&mut qp, &mut rwr, &mut bad_r),
            ibv_poll_cq(&mut cq, wcs.len() as i32, wcs.as_mut_ptr()),
            ibv_req_notify_cq(&mut cq, 1),
        )
    };
    // SAFETY: as above.
    let srq_ret = unsafe { ibv_post_srq_recv(&mut srq, &mut rwr, &mut bad_r) };
    assert_eq!(rets, (0, 0, 3, 0));
    assert_eq!(srq_ret, 0);
    assert_eq!([wcs[0].wr_id, wcs[1].wr_id, wcs[2].wr_id], [0, 1, 2]);
    assert_eq!(
        fake::take(),
        vec![
            ("post_send", vec![addr(&qp), addr(&swr), addr(&bad_s)]),
            ("post_recv", vec![addr(&qp), addr(&rwr), addr(&bad_r)]),
            ("poll_cq", vec![addr(&cq), 4, addr(wcs.as_ptr())]),
            ("req_notify_cq", vec![addr(&cq), 1]),
            ("post_srq_recv", vec![addr(&srq), addr(&rwr), addr(&bad_r)]),
        ]
    );
}

#[test]
fn legacy_ops_missing_report_eopnotsupp_and_bad_wr() {
    let mut vctx = std::boxed::Box::<verbs_context>::default();
    let ctx: *mut ibv_context = &mut vctx.context;
    let mut qp = ibv_qp {
        context: ctx,
        ..Default::default()
    };
    let mut cq = ibv_cq {
        context: ctx,
        ..Default::default()
    };
    let mut swr = ibv_send_wr::default();
    let mut rwr = ibv_recv_wr::default();
    let mut bad_s: *mut ibv_send_wr = core::ptr::null_mut();
    let mut bad_r: *mut ibv_recv_wr = core::ptr::null_mut();
    let mut wc = ibv_wc::default();
    // SAFETY: context with all ops NULL; nothing is called.
    let rets = unsafe {
        (
            ibv_post_send(&mut qp, &mut swr, &mut bad_s),
            ibv_post_recv(&mut qp, &mut rwr, &mut bad_r),
            ibv_poll_cq(&mut cq, 1, &mut wc),
            ibv_req_notify_cq(&mut cq, 0),
        )
    };
    assert_eq!(
        rets,
        (
            libc::EOPNOTSUPP,
            libc::EOPNOTSUPP,
            -libc::EOPNOTSUPP,
            libc::EOPNOTSUPP
        )
    );
    assert_eq!((addr(bad_s), addr(bad_r)), (addr(&swr), addr(&rwr)));
}

#[test]
fn efadv_cq_readers_call_the_efadv_ops() {
    let mut dv = efadv_cq {
        comp_mask: 0,
        wc_read_sgid: Some(fake::wc_read_sgid),
        wc_is_unsolicited: Some(fake::wc_is_unsolicited),
    };
    let mut gid = ibv_gid::default();
    fake::take();
    // SAFETY: live fake efadv_cq; `gid` is writable.
    let (rc, unsolicited) = unsafe {
        (
            efadv_wc_read_sgid(&mut dv, &mut gid),
            efadv_wc_is_unsolicited(&mut dv),
        )
    };
    assert_eq!((rc, unsolicited), (0, true));
    // SAFETY: every byte pattern is a valid `raw` view of the GID union.
    assert_eq!(unsafe { gid.raw }, [0xfe; 16]);
    assert_eq!(
        fake::take(),
        vec![
            ("wc_read_sgid", vec![addr(&dv), addr(&gid)]),
            ("wc_is_unsolicited", vec![addr(&dv)])
        ]
    );

    let mut old = efadv_cq {
        comp_mask: 0,
        wc_read_sgid: None,
        wc_is_unsolicited: None,
    };
    // SAFETY: as above; missing ops are handled without a call.
    let (rc, unsolicited) = unsafe {
        (
            efadv_wc_read_sgid(&mut old, &mut gid),
            efadv_wc_is_unsolicited(&mut old),
        )
    };
    assert_eq!((rc, unsolicited), (libc::EOPNOTSUPP, false));
}

#[test]
fn efadv_processing_hints_call_the_qp_op() {
    let mut qp = efadv_qp {
        comp_mask: 0,
        wr_set_processing_hints: Some(fake::wr_set_processing_hints),
    };
    fake::take();
    // SAFETY: a live fake efadv_qp.
    unsafe { efadv_wr_set_processing_hints(&mut qp, EFADV_WR_PROCESSING_HINT_BURST_PPS_SENSITIVE) };
    assert_eq!(
        fake::take(),
        vec![("wr_set_processing_hints", vec![addr(&qp), 1])]
    );
}

//! Fake provider objects whose function pointers record their calls.

use std::cell::RefCell;
use std::ffi::{c_int, c_uint, c_void};
use std::vec::Vec;

use crate::*;

/// One recorded call: the op name and its arguments as integers (pointers
/// as addresses).
pub type Call = (&'static str, Vec<u64>);

std::thread_local! {
    static LOG: RefCell<Vec<Call>> = const { RefCell::new(Vec::new()) };
}

pub fn record(op: &'static str, args: &[u64]) {
    LOG.with(|l| l.borrow_mut().push((op, args.to_vec())));
}

/// Takes and clears this thread's log.
pub fn take() -> Vec<Call> {
    LOG.with(|l| core::mem::take(&mut *l.borrow_mut()))
}

/// Integer view of an argument, for the log.
pub trait Bits {
    fn bits(self) -> u64;
}
macro_rules! bits_int {
    ($($t:ty),*) => {$(impl Bits for $t { fn bits(self) -> u64 { self as u64 } })*};
}
bits_int!(u8, u16, u32, u64, usize, i32);
impl<T> Bits for *mut T {
    fn bits(self) -> u64 {
        self as usize as u64
    }
}
impl<T> Bits for *const T {
    fn bits(self) -> u64 {
        self as usize as u64
    }
}

pub fn addr<T>(p: *const T) -> u64 {
    p as usize as u64
}

/// Defines `extern "C"` fakes that record `(name, args)` and return `$ret`.
macro_rules! fakes {
    ($( fn $name:ident ( $($arg:ident : $ty:ty),* ) $(-> $rt:ty = $ret:expr)? ; )*) => {$(
        pub unsafe extern "C" fn $name($($arg: $ty),*) $(-> $rt)? {
            $crate::tests::fake::record(stringify!($name), &[$($crate::tests::fake::Bits::bits($arg)),*]);
            $($ret)?
        }
    )*};
}

/// Values the fakes return, distinct from each other and from 0.
pub const COMPLETE_RET: c_int = 7;
pub const BYTE_LEN: u32 = 4096;
pub const VENDOR_ERR: u32 = 14;
pub const IMM: u32 = 0x1122_3344;
pub const QP_NUM: u32 = 0x51;
pub const SRC_QP: u32 = 0x77;
pub const WC_FLAGS: c_uint = IBV_WC_WITH_IMM;
pub const TS: u64 = 123_456_789;

fakes! {
    // struct ibv_qp_ex
    fn wr_atomic_cmp_swp(qp: *mut ibv_qp_ex, rkey: u32, remote_addr: u64, compare: u64, swap: u64);
    fn wr_atomic_fetch_add(qp: *mut ibv_qp_ex, rkey: u32, remote_addr: u64, add: u64);
    fn wr_bind_mw(qp: *mut ibv_qp_ex, mw: *mut ibv_mw, rkey: u32, info: *const ibv_mw_bind_info);
    fn wr_local_inv(qp: *mut ibv_qp_ex, rkey: u32);
    fn wr_rdma_read(qp: *mut ibv_qp_ex, rkey: u32, remote_addr: u64);
    fn wr_rdma_write(qp: *mut ibv_qp_ex, rkey: u32, remote_addr: u64);
    fn wr_rdma_write_imm(qp: *mut ibv_qp_ex, rkey: u32, remote_addr: u64, imm: u32);
    fn wr_send(qp: *mut ibv_qp_ex);
    fn wr_send_imm(qp: *mut ibv_qp_ex, imm: u32);
    fn wr_send_inv(qp: *mut ibv_qp_ex, rkey: u32);
    fn wr_send_tso(qp: *mut ibv_qp_ex, hdr: *mut c_void, hdr_sz: u16, mss: u16);
    fn wr_set_ud_addr(qp: *mut ibv_qp_ex, ah: *mut ibv_ah, qpn: u32, qkey: u32);
    fn wr_set_xrc_srqn(qp: *mut ibv_qp_ex, srqn: u32);
    fn wr_set_inline_data(qp: *mut ibv_qp_ex, addr: *mut c_void, len: usize);
    fn wr_set_inline_data_list(qp: *mut ibv_qp_ex, n: usize, bufs: *const ibv_data_buf);
    fn wr_set_sge(qp: *mut ibv_qp_ex, lkey: u32, addr: u64, len: u32);
    fn wr_set_sge_list(qp: *mut ibv_qp_ex, n: usize, sges: *const ibv_sge);
    fn wr_start(qp: *mut ibv_qp_ex);
    fn wr_complete(qp: *mut ibv_qp_ex) -> c_int = COMPLETE_RET;
    fn wr_abort(qp: *mut ibv_qp_ex);
    fn wr_atomic_write(qp: *mut ibv_qp_ex, rkey: u32, remote_addr: u64, data: *const c_void);
    fn wr_flush(qp: *mut ibv_qp_ex, rkey: u32, remote_addr: u64, len: usize, ty: u8, level: u8);

    // struct ibv_cq_ex
    fn next_poll(cq: *mut ibv_cq_ex) -> c_int = libc::ENOENT;
    fn end_poll(cq: *mut ibv_cq_ex);
    fn read_opcode(cq: *mut ibv_cq_ex) -> ibv_wc_opcode = IBV_WC_RECV_RDMA_WITH_IMM;
    fn read_vendor_err(cq: *mut ibv_cq_ex) -> u32 = VENDOR_ERR;
    fn read_byte_len(cq: *mut ibv_cq_ex) -> u32 = BYTE_LEN;
    fn read_imm_data(cq: *mut ibv_cq_ex) -> u32 = IMM;
    fn read_qp_num(cq: *mut ibv_cq_ex) -> u32 = QP_NUM;
    fn read_src_qp(cq: *mut ibv_cq_ex) -> u32 = SRC_QP;
    fn read_wc_flags(cq: *mut ibv_cq_ex) -> c_uint = WC_FLAGS;
    fn read_slid(cq: *mut ibv_cq_ex) -> u32 = 3;
    fn read_sl(cq: *mut ibv_cq_ex) -> u8 = 5;
    fn read_dlid_path_bits(cq: *mut ibv_cq_ex) -> u8 = 6;
    fn read_completion_ts(cq: *mut ibv_cq_ex) -> u64 = TS;
    fn read_completion_wallclock_ns(cq: *mut ibv_cq_ex) -> u64 = TS + 1;
    fn read_cvlan(cq: *mut ibv_cq_ex) -> u16 = 9;
    fn read_flow_tag(cq: *mut ibv_cq_ex) -> u32 = 10;
    fn read_tm_info(cq: *mut ibv_cq_ex, info: *mut ibv_wc_tm_info);

    // struct ibv_context_ops
    fn post_send(qp: *mut ibv_qp, wr: *mut ibv_send_wr, bad: *mut *mut ibv_send_wr) -> c_int = 0;
    fn post_recv(qp: *mut ibv_qp, wr: *mut ibv_recv_wr, bad: *mut *mut ibv_recv_wr) -> c_int = 0;
    fn post_srq_recv(srq: *mut ibv_srq, wr: *mut ibv_recv_wr, bad: *mut *mut ibv_recv_wr) -> c_int = 0;
    fn req_notify_cq(cq: *mut ibv_cq, solicited_only: c_int) -> c_int = 0;

    // struct efadv_cq
    fn wc_is_unsolicited(cq: *mut efadv_cq) -> bool = true;

    // struct efadv_qp
    fn wr_set_processing_hints(qp: *mut efadv_qp, hints: u32);
}

/// `start_poll` that makes a completion current, as a provider does.
pub unsafe extern "C" fn start_poll(cq: *mut ibv_cq_ex, attr: *mut ibv_poll_cq_attr) -> c_int {
    // SAFETY: the fast path under test calls this fake as the provider's op, with the live
    // objects and valid out-pointers that op receives.
    unsafe {
        record("start_poll", &[addr(cq), addr(attr)]);
        (*cq).wr_id = 0xfeed;
        (*cq).status = IBV_WC_SUCCESS;
        0
    }
}

/// `poll_cq` that fills `n - 1` completions with `wr_id = index`.
pub unsafe extern "C" fn poll_cq(cq: *mut ibv_cq, n: c_int, wc: *mut ibv_wc) -> c_int {
    // SAFETY: the fast path under test calls this fake as the provider's op, with the live
    // objects and valid out-pointers that op receives.
    unsafe {
        record("poll_cq", &[addr(cq), n as u64, addr(wc)]);
        let filled = n - 1;
        for i in 0..filled {
            (*wc.add(i as usize)).wr_id = i as u64;
        }
        filled
    }
}

/// `wc_read_sgid` that writes a recognisable GID.
pub unsafe extern "C" fn wc_read_sgid(cq: *mut efadv_cq, sgid: *mut ibv_gid) -> c_int {
    // SAFETY: the fast path under test calls this fake as the provider's op, with the live
    // objects and valid out-pointers that op receives.
    unsafe {
        record("wc_read_sgid", &[addr(cq), addr(sgid)]);
        (*sgid).raw = [0xfe; 16];
        0
    }
}

/// An `ibv_qp_ex` with every `wr_*` op set to its fake.
pub fn qp_ex() -> ibv_qp_ex {
    ibv_qp_ex {
        wr_atomic_cmp_swp: Some(wr_atomic_cmp_swp),
        wr_atomic_fetch_add: Some(wr_atomic_fetch_add),
        wr_bind_mw: Some(wr_bind_mw),
        wr_local_inv: Some(wr_local_inv),
        wr_rdma_read: Some(wr_rdma_read),
        wr_rdma_write: Some(wr_rdma_write),
        wr_rdma_write_imm: Some(wr_rdma_write_imm),
        wr_send: Some(wr_send),
        wr_send_imm: Some(wr_send_imm),
        wr_send_inv: Some(wr_send_inv),
        wr_send_tso: Some(wr_send_tso),
        wr_set_ud_addr: Some(wr_set_ud_addr),
        wr_set_xrc_srqn: Some(wr_set_xrc_srqn),
        wr_set_inline_data: Some(wr_set_inline_data),
        wr_set_inline_data_list: Some(wr_set_inline_data_list),
        wr_set_sge: Some(wr_set_sge),
        wr_set_sge_list: Some(wr_set_sge_list),
        wr_start: Some(wr_start),
        wr_complete: Some(wr_complete),
        wr_abort: Some(wr_abort),
        wr_atomic_write: Some(wr_atomic_write),
        wr_flush: Some(wr_flush),
        ..Default::default()
    }
}

/// An `ibv_cq_ex` with every poll/read op set to its fake.
pub fn cq_ex() -> ibv_cq_ex {
    ibv_cq_ex {
        start_poll: Some(start_poll),
        next_poll: Some(next_poll),
        end_poll: Some(end_poll),
        read_opcode: Some(read_opcode),
        read_vendor_err: Some(read_vendor_err),
        read_byte_len: Some(read_byte_len),
        read_imm_data: Some(read_imm_data),
        read_qp_num: Some(read_qp_num),
        read_src_qp: Some(read_src_qp),
        read_wc_flags: Some(read_wc_flags),
        read_slid: Some(read_slid),
        read_sl: Some(read_sl),
        read_dlid_path_bits: Some(read_dlid_path_bits),
        read_completion_ts: Some(read_completion_ts),
        read_cvlan: Some(read_cvlan),
        read_flow_tag: Some(read_flow_tag),
        read_tm_info: Some(read_tm_info),
        read_completion_wallclock_ns: Some(read_completion_wallclock_ns),
        ..Default::default()
    }
}

/// A full-size extended context (`abi_compat` marks it extended) whose
/// legacy ops are the fakes; the extended ops are left for each test.
pub fn verbs_ctx() -> std::boxed::Box<verbs_context> {
    let mut v = std::boxed::Box::<verbs_context>::default();
    v.sz = core::mem::size_of::<verbs_context>();
    v.context.abi_compat = VERBS_ABI_IS_EXTENDED;
    v.context.ops.post_send = Some(post_send);
    v.context.ops.post_recv = Some(post_recv);
    v.context.ops.post_srq_recv = Some(post_srq_recv);
    v.context.ops.poll_cq = Some(poll_cq);
    v.context.ops.req_notify_cq = Some(req_notify_cq);
    v
}

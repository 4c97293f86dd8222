//! Posting sequences against a fake `ibv_qp_ex` whose ops record what they are called with.

use std::cell::RefCell;
use std::ffi::c_void;

use proptest::prelude::*;

use super::post::SendCore;
use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Start,
    Send { wr_id: u64, flags: u32 },
    SendImm { wr_id: u64, imm_be: u32 },
    Write { wr_id: u64, rkey: u32, addr: u64 },
    WriteImm { rkey: u32, addr: u64, imm_be: u32 },
    Read { wr_id: u64, rkey: u32, addr: u64 },
    UdAddr { ah: usize, qpn: u32, qkey: u32 },
    Sge { lkey: u32, addr: u64, len: u32 },
    SgeList(Vec<(u64, u32, u32)>),
    Inline(Vec<u8>),
    Complete,
    Abort,
}

thread_local! {
    static LOG: RefCell<Vec<Ev>> = const { RefCell::new(Vec::new()) };
    static COMPLETE_RC: RefCell<i32> = const { RefCell::new(0) };
}

fn log(e: Ev) {
    LOG.with(|l| l.borrow_mut().push(e));
}

fn take_log() -> Vec<Ev> {
    LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

unsafe extern "C" fn f_start(_q: *mut efa_sys::ibv_qp_ex) {
    log(Ev::Start);
}
unsafe extern "C" fn f_send(q: *mut efa_sys::ibv_qp_ex) {
    // SAFETY: `q` is the fake QP the test owns.
    let (wr_id, flags) = unsafe { ((*q).wr_id, (*q).wr_flags) };
    log(Ev::Send { wr_id, flags });
}
unsafe extern "C" fn f_send_imm(q: *mut efa_sys::ibv_qp_ex, imm: u32) {
    // SAFETY: as above.
    let wr_id = unsafe { (*q).wr_id };
    log(Ev::SendImm { wr_id, imm_be: imm });
}
unsafe extern "C" fn f_write(q: *mut efa_sys::ibv_qp_ex, rkey: u32, addr: u64) {
    // SAFETY: as above.
    let wr_id = unsafe { (*q).wr_id };
    log(Ev::Write { wr_id, rkey, addr });
}
unsafe extern "C" fn f_write_imm(_q: *mut efa_sys::ibv_qp_ex, rkey: u32, addr: u64, imm: u32) {
    log(Ev::WriteImm {
        rkey,
        addr,
        imm_be: imm,
    });
}
unsafe extern "C" fn f_read(q: *mut efa_sys::ibv_qp_ex, rkey: u32, addr: u64) {
    // SAFETY: as above.
    let wr_id = unsafe { (*q).wr_id };
    log(Ev::Read { wr_id, rkey, addr });
}
unsafe extern "C" fn f_ud(
    _q: *mut efa_sys::ibv_qp_ex,
    ah: *mut efa_sys::ibv_ah,
    qpn: u32,
    qkey: u32,
) {
    log(Ev::UdAddr {
        ah: ah as usize,
        qpn,
        qkey,
    });
}
unsafe extern "C" fn f_sge(_q: *mut efa_sys::ibv_qp_ex, lkey: u32, addr: u64, len: u32) {
    log(Ev::Sge { lkey, addr, len });
}
unsafe extern "C" fn f_sge_list(
    _q: *mut efa_sys::ibv_qp_ex,
    n: usize,
    list: *const efa_sys::ibv_sge,
) {
    // SAFETY: the code under test passes `n` valid entries.
    let s = unsafe { std::slice::from_raw_parts(list, n) };
    log(Ev::SgeList(
        s.iter().map(|e| (e.addr, e.length, e.lkey)).collect(),
    ));
}
unsafe extern "C" fn f_inline(_q: *mut efa_sys::ibv_qp_ex, addr: *mut c_void, len: usize) {
    // SAFETY: the code under test passes `len` readable bytes.
    let d = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
    log(Ev::Inline(d.to_vec()));
}
unsafe extern "C" fn f_complete(_q: *mut efa_sys::ibv_qp_ex) -> i32 {
    log(Ev::Complete);
    COMPLETE_RC.with(|r| *r.borrow())
}
unsafe extern "C" fn f_abort(_q: *mut efa_sys::ibv_qp_ex) {
    log(Ev::Abort);
}

/// A fake extended QP: every op this crate may call records itself.
fn fake_qpx() -> Box<efa_sys::ibv_qp_ex> {
    // SAFETY: a C struct of integers, pointers and nullable fn pointers; zero is valid.
    let mut q: Box<efa_sys::ibv_qp_ex> = Box::new(unsafe { std::mem::zeroed() });
    q.wr_start = Some(f_start);
    q.wr_send = Some(f_send);
    q.wr_send_imm = Some(f_send_imm);
    q.wr_rdma_write = Some(f_write);
    q.wr_rdma_write_imm = Some(f_write_imm);
    q.wr_rdma_read = Some(f_read);
    q.wr_set_ud_addr = Some(f_ud);
    q.wr_set_sge = Some(f_sge);
    q.wr_set_sge_list = Some(f_sge_list);
    q.wr_set_inline_data = Some(f_inline);
    q.wr_complete = Some(f_complete);
    q.wr_abort = Some(f_abort);
    q
}

fn all_ops() -> u64 {
    SendOp::Send.ops_bit()
        | SendOp::SendImm.ops_bit()
        | SendOp::Write.ops_bit()
        | SendOp::WriteImm.ops_bit()
        | SendOp::Read.ops_bit()
}

fn srd_limits() -> SendLimits {
    SendLimits {
        max_send_bytes: 8928,
        max_rdma_bytes: 1 << 30,
        max_send_sge: 2,
        max_rdma_sge: 1,
        max_inline: 32,
        inline_rdma: false,
        max_batch: 4,
        ops: all_ops(),
        signal_required: true,
    }
}

fn core(q: &mut efa_sys::ibv_qp_ex, kind: TransportKind, limits: SendLimits) -> SendCore {
    SendCore {
        efadv_qp: None,
        qpx: q,
        kind,
        limits,
        lock: None,
        in_session: false,
    }
}

#[test]
fn srd_wrs_carry_the_ud_address_rdma_included() {
    let mut q = fake_qpx();
    let mut c = core(&mut q, TransportKind::Srd, srd_limits());
    let dest = Dest::fake(0xa0, 77, 0x1234);
    let local = [Sge::new(0x1000, 64, 5)];
    {
        // SAFETY: the fake QP lives for the whole test.
        let mut b = unsafe { Batch::<Srd>::start(&mut c) };
        b.send(1, &dest, &local).unwrap();
        b.write(
            2,
            &dest,
            &local,
            RemoteAddr {
                addr: 0x9000,
                rkey: 42,
            },
        )
        .unwrap();
        b.read(
            3,
            &dest,
            &local,
            RemoteAddr {
                addr: 0x8000,
                rkey: 43,
            },
        )
        .unwrap();
        b.write_imm(
            4,
            &dest,
            &local,
            RemoteAddr {
                addr: 0x7000,
                rkey: 44,
            },
            0x0102_0304,
        )
        .unwrap();
        b.commit().unwrap();
    }
    let ud = Ev::UdAddr {
        ah: 0xa0,
        qpn: 77,
        qkey: 0x1234,
    };
    let sge = Ev::Sge {
        lkey: 5,
        addr: 0x1000,
        len: 64,
    };
    let signaled = efa_sys::IBV_SEND_SIGNALED;
    assert_eq!(
        take_log(),
        vec![
            Ev::Start,
            Ev::Send {
                wr_id: 1,
                flags: signaled
            },
            ud.clone(),
            sge.clone(),
            Ev::Write {
                wr_id: 2,
                rkey: 42,
                addr: 0x9000
            },
            ud.clone(),
            sge.clone(),
            Ev::Read {
                wr_id: 3,
                rkey: 43,
                addr: 0x8000
            },
            ud.clone(),
            sge.clone(),
            Ev::WriteImm {
                rkey: 44,
                addr: 0x7000,
                imm_be: 0x0102_0304u32.to_be()
            },
            ud,
            sge,
            Ev::Complete,
        ]
    );
}

#[test]
fn dropped_batch_aborts_and_refused_wr_leaves_no_trace() {
    let mut q = fake_qpx();
    let mut c = core(&mut q, TransportKind::Srd, srd_limits());
    let dest = Dest::fake(0xb0, 1, 2);
    {
        // SAFETY: the fake QP lives for the whole test.
        let mut b = unsafe { Batch::<Srd>::start(&mut c) };
        b.send_inline(9, &dest, b"hello", Some(7)).unwrap();
        let too_big = [Sge::new(0, 9000, 1)];
        assert_eq!(
            b.send(10, &dest, &too_big),
            Err(Error::Limit {
                limit: Limit::SendBytes,
                value: 9000,
                max: 8928
            })
        );
        assert!(matches!(
            b.set_signaled(false),
            Err(Error::Unsupported { .. })
        ));
        assert_eq!(b.len(), 1);
    }
    assert_eq!(
        take_log(),
        vec![
            Ev::Start,
            Ev::SendImm {
                wr_id: 9,
                imm_be: 7u32.to_be()
            },
            Ev::UdAddr {
                ah: 0xb0,
                qpn: 1,
                qkey: 2
            },
            Ev::Inline(b"hello".to_vec()),
            Ev::Abort,
        ]
    );
}

#[test]
fn rc_wrs_have_no_address_and_multi_sge_uses_the_list() {
    let mut q = fake_qpx();
    let mut l = srd_limits();
    l.max_rdma_sge = 2;
    l.signal_required = false;
    l.inline_rdma = true;
    let mut c = core(&mut q, TransportKind::Rc, l);
    let two = [Sge::new(0x10, 8, 1), Sge::new(0x20, 8, 1)];
    {
        // SAFETY: the fake QP lives for the whole test.
        let mut b = unsafe { Batch::<Rc>::start(&mut c) };
        b.set_signaled(false).unwrap();
        b.write(
            5,
            &two,
            RemoteAddr {
                addr: 0x500,
                rkey: 6,
            },
        )
        .unwrap();
        b.write_inline(
            6,
            b"abc",
            RemoteAddr {
                addr: 0x600,
                rkey: 6,
            },
        )
        .unwrap();
        b.commit().unwrap();
    }
    assert_eq!(
        take_log(),
        vec![
            Ev::Start,
            Ev::Write {
                wr_id: 5,
                rkey: 6,
                addr: 0x500
            },
            Ev::SgeList(vec![(0x10, 8, 1), (0x20, 8, 1)]),
            Ev::Write {
                wr_id: 6,
                rkey: 6,
                addr: 0x600
            },
            Ev::Inline(b"abc".to_vec()),
            Ev::Complete,
        ]
    );
}

#[test]
fn batch_length_and_complete_errors_are_typed() {
    let mut q = fake_qpx();
    let mut c = core(&mut q, TransportKind::Srd, srd_limits());
    let dest = Dest::fake(0xc0, 1, 2);
    let s = [Sge::new(0, 8, 1)];
    // SAFETY: the fake QP lives for the whole test.
    let mut b = unsafe { Batch::<Srd>::start(&mut c) };
    for i in 0..4 {
        b.send(i, &dest, &s).unwrap();
    }
    assert_eq!(
        b.send(4, &dest, &s),
        Err(Error::Limit {
            limit: Limit::BatchLength,
            value: 5,
            max: 4
        })
    );
    COMPLETE_RC.with(|r| *r.borrow_mut() = libc::ENOMEM);
    let e = b.commit().unwrap_err();
    COMPLETE_RC.with(|r| *r.borrow_mut() = 0);
    assert_eq!(e.errno(), Some(libc::ENOMEM));
    let log = take_log();
    assert_eq!(
        log.iter().filter(|e| matches!(e, Ev::Send { .. })).count(),
        4
    );
    assert_eq!(log.last(), Some(&Ev::Complete));
    assert!(!log.contains(&Ev::Abort));
}

#[test]
fn an_open_batch_holds_the_send_lock_until_committed_aborted_or_dropped() {
    use crate::held::{batch_blocking as blocking, SendLock};
    fn start(c: &mut SendCore) -> Batch<'_, Srd> {
        // SAFETY: the fake QP lives for the whole test.
        unsafe { Batch::<Srd>::start(c) }
    }
    let mut q = fake_qpx();
    let mut c = core(&mut q, TransportKind::Srd, srd_limits());
    c.lock = Some(SendLock {
        cq: 0x5000,
        qpn: 33,
    });
    let dest = Dest::fake(0xd0, 1, 2);
    let mut b = start(&mut c);
    assert_eq!(blocking(0x5000), Some(33));
    b.send(1, &dest, &[Sge::new(0, 8, 1)]).unwrap();
    b.commit().unwrap();
    assert_eq!(blocking(0x5000), None, "released by commit");
    // A failed commit has still closed the provider's session.
    let b = start(&mut c);
    COMPLETE_RC.with(|r| *r.borrow_mut() = libc::EINVAL);
    assert!(b.commit().is_err());
    COMPLETE_RC.with(|r| *r.borrow_mut() = 0);
    assert_eq!(blocking(0x5000), None, "released by a failed commit");
    start(&mut c).abort();
    assert_eq!(blocking(0x5000), None, "released by abort");
    {
        let _b = start(&mut c);
        assert_eq!(blocking(0x5000), Some(33));
    }
    assert_eq!(blocking(0x5000), None, "released by drop");
    // A forgotten batch leaves its session open: the next batch aborts it before it starts.
    let mut forgotten = start(&mut c);
    forgotten.send(2, &dest, &[Sge::new(0, 8, 1)]).unwrap();
    std::mem::forget(forgotten);
    assert_eq!(blocking(0x5000), Some(33), "held while forgotten");
    take_log();
    start(&mut c).commit().unwrap();
    assert_eq!(take_log(), vec![Ev::Abort, Ev::Start, Ev::Complete]);
    assert_eq!(
        blocking(0x5000),
        None,
        "released with the forgotten session"
    );
    // Without a lock (a thread domain, or not EFA) nothing is recorded.
    c.lock = None;
    let _b = start(&mut c);
    assert_eq!(blocking(0x5000), None);
    take_log();
}

#[test]
fn missing_capabilities_never_reach_the_provider() {
    let mut q = fake_qpx();
    // An SRD QP on a device without RDMA write: the provider leaves wr_rdma_write NULL, and
    // calling it would abort; the check must refuse first.
    q.wr_rdma_write = None;
    let mut l = srd_limits();
    l.ops &= !(SendOp::Write.ops_bit() | SendOp::WriteImm.ops_bit());
    let mut c = core(&mut q, TransportKind::Srd, l);
    let dest = Dest::fake(0xd0, 1, 2);
    let s = [Sge::new(0, 8, 1)];
    // SAFETY: the fake QP lives for the whole test.
    let mut b = unsafe { Batch::<Srd>::start(&mut c) };
    assert_eq!(
        b.write(1, &dest, &s, RemoteAddr { addr: 0, rkey: 0 }),
        Err(Error::Unsupported {
            what: "RDMA write",
            why: "device lacks the RDMA_WRITE capability"
        })
    );
    assert!(matches!(
        b.read(2, &dest, &[s[0], s[0]], RemoteAddr { addr: 0, rkey: 0 }),
        Err(Error::Limit {
            limit: Limit::RdmaSges,
            value: 2,
            max: 1
        })
    ));
    b.abort();
    assert_eq!(take_log(), vec![Ev::Start, Ev::Abort]);
}

fn arb_limits() -> impl Strategy<Value = SendLimits> {
    (
        1u64..20_000,
        1u64..(1 << 31),
        1u32..4,
        1u32..3,
        0u32..128,
        any::<bool>(),
        0u64..32,
    )
        .prop_map(
            |(send, rdma, ssge, rsge, inl, inline_rdma, ops)| SendLimits {
                max_send_bytes: send,
                max_rdma_bytes: rdma,
                max_send_sge: ssge,
                max_rdma_sge: rsge,
                max_inline: inl,
                inline_rdma,
                max_batch: 16,
                ops: ops << 2,
                signal_required: true,
            },
        )
}

fn arb_op() -> impl Strategy<Value = SendOp> {
    prop_oneof![
        Just(SendOp::Send),
        Just(SendOp::SendImm),
        Just(SendOp::Write),
        Just(SendOp::WriteImm),
        Just(SendOp::Read)
    ]
}

proptest! {
    #[test]
    fn limit_check_matches_the_rules(
        l in arb_limits(),
        op in arb_op(),
        lens in prop::collection::vec(0u32..12_000, 0..5),
        inline in any::<bool>(),
    ) {
        let sges: Vec<Sge> = lens.iter().map(|&n| Sge::new(0, n, 1)).collect();
        let data = vec![0u8; lens.first().copied().unwrap_or(0) as usize];
        let payload = if inline { Payload::Inline(&data) } else { Payload::Sges(&sges) };
        let bytes: u64 = if inline { data.len() as u64 } else { lens.iter().map(|&n| u64::from(n)).sum() };
        let r = check_wr(&l, TransportKind::Srd, op, &payload);
        let op_ok = l.ops & op.ops_bit() != 0;
        let size_ok = if op.is_rdma() { bytes <= l.max_rdma_bytes } else { bytes <= l.max_send_bytes };
        let shape_ok = if inline {
            op != SendOp::Read && (!op.is_rdma() || l.inline_rdma) && bytes <= u64::from(l.max_inline)
        } else {
            sges.len() as u32 <= if op.is_rdma() { l.max_rdma_sge } else { l.max_send_sge }
        };
        prop_assert_eq!(r.is_ok(), op_ok && size_ok && shape_ok, "{:?}", r);
        match r {
            Err(Error::Limit { value, max, .. }) => prop_assert!(value > max),
            Err(Error::Unsupported { .. }) | Ok(()) => {}
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }

    #[test]
    fn caps_check_names_the_first_excess(
        sw in 0u32..2000, rw in 0u32..2000, ss in 0u32..4, rs in 0u32..4, inl in 0u32..200,
    ) {
        let caps = QpCaps { max_send_wr: sw, max_recv_wr: rw, max_send_sge: ss, max_recv_sge: rs, max_inline_data: inl };
        let r = check_caps(&caps, 1024, 1024, 2, 2, 32);
        let ok = sw <= 1024 && rw <= 1024 && ss <= 2 && rs <= 2 && inl <= 32 && sw > 0;
        prop_assert_eq!(r.is_ok(), ok);
        if let Err(Error::Limit { value, max, .. }) = r {
            prop_assert!(value > max);
        }
    }
}

#[test]
fn qp_state_round_trips() {
    for v in 0..8 {
        assert_eq!(QpState::from_raw(v).raw(), v);
    }
    assert_eq!(QpState::from_raw(efa_sys::IBV_QPS_RTS), QpState::Rts);
    assert_eq!(QpState::from_raw(efa_sys::IBV_QPS_ERR), QpState::Err);
}

unsafe extern "C" fn n_q(_q: *mut efa_sys::ibv_qp_ex) {}
unsafe extern "C" fn n_imm(_q: *mut efa_sys::ibv_qp_ex, _i: u32) {}
unsafe extern "C" fn n_rdma(_q: *mut efa_sys::ibv_qp_ex, _k: u32, _a: u64) {}
unsafe extern "C" fn n_rdma_imm(_q: *mut efa_sys::ibv_qp_ex, _k: u32, _a: u64, _i: u32) {}
unsafe extern "C" fn n_ud(
    _q: *mut efa_sys::ibv_qp_ex,
    _ah: *mut efa_sys::ibv_ah,
    _n: u32,
    _k: u32,
) {
}
unsafe extern "C" fn n_sge(_q: *mut efa_sys::ibv_qp_ex, _k: u32, _a: u64, _l: u32) {}
unsafe extern "C" fn n_list(_q: *mut efa_sys::ibv_qp_ex, _n: usize, _s: *const efa_sys::ibv_sge) {}
unsafe extern "C" fn n_inline(_q: *mut efa_sys::ibv_qp_ex, _a: *mut c_void, _l: usize) {}
unsafe extern "C" fn n_complete(_q: *mut efa_sys::ibv_qp_ex) -> i32 {
    0
}

#[test]
fn posting_allocates_nothing() {
    // SAFETY: as in fake_qpx.
    let mut q: Box<efa_sys::ibv_qp_ex> = Box::new(unsafe { std::mem::zeroed() });
    q.wr_start = Some(n_q);
    q.wr_send = Some(n_q);
    q.wr_send_imm = Some(n_imm);
    q.wr_rdma_write = Some(n_rdma);
    q.wr_rdma_read = Some(n_rdma);
    q.wr_rdma_write_imm = Some(n_rdma_imm);
    q.wr_set_ud_addr = Some(n_ud);
    q.wr_set_sge = Some(n_sge);
    q.wr_set_sge_list = Some(n_list);
    q.wr_set_inline_data = Some(n_inline);
    q.wr_complete = Some(n_complete);
    q.wr_abort = Some(n_q);
    let mut l = srd_limits();
    l.max_batch = 1024;
    let mut c = core(&mut q, TransportKind::Srd, l);
    let dest = Dest::fake(0xe0, 3, 4);
    let one = [Sge::new(0x1000, 64, 1)];
    let two = [Sge::new(0x1000, 64, 1), Sge::new(0x2000, 64, 1)];
    let remote = RemoteAddr {
        addr: 0x9000,
        rkey: 7,
    };
    let before = crate::alloc_count::allocations();
    for round in 0..100u64 {
        // SAFETY: the fake QP lives for the whole test.
        let mut b = unsafe { Batch::<Srd>::start(&mut c) };
        b.send(round, &dest, &two).unwrap();
        b.send_imm(round, &dest, &one, 9).unwrap();
        b.send_inline(round, &dest, b"tiny", None).unwrap();
        b.write(round, &dest, &one, remote).unwrap();
        b.read(round, &dest, &one, remote).unwrap();
        b.write_imm(round, &dest, &one, remote, 1).unwrap();
        let _refused = b.send(round, &dest, &[one[0]; 3]).unwrap_err();
        if round % 2 == 0 {
            b.commit().unwrap();
        }
    }
    assert_eq!(crate::alloc_count::allocations() - before, 0);
}

#[test]
fn efa_depths_follow_the_providers_sizing() {
    let caps = |send, recv, sge, inline| QpCaps {
        max_send_wr: send,
        max_recv_wr: recv,
        max_send_sge: 1,
        max_recv_sge: sge,
        max_inline_data: inline,
    };
    assert!(check_efa_depths(&caps(4096, 8192, 3, 32), 4096, 32768).is_ok());
    // Inline data over 32 bytes needs the 128-byte WQE: half the send queue.
    let e = check_efa_depths(&caps(4096, 1, 1, 64), 4096, 32768).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Limit {
                limit: Limit::SendQueueDepth,
                value: 4096,
                max: 2048
            }
        ),
        "{e}"
    );
    // Receive depth is shared by the SGEs of a work request.
    let e = check_efa_depths(&caps(64, 16384, 3, 0), 4096, 32768).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Limit {
                limit: Limit::RecvQueueDepth,
                value: 16384,
                max: 10922
            }
        ),
        "{e}"
    );
    // A device limit that is not a power of two: the provider rounds up before the kernel checks.
    let e = check_efa_depths(&caps(3000, 1, 1, 0), 3000, 32768).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Limit {
                limit: Limit::SendQueueDepth,
                max: 2048,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        check_efa_depths(&caps(64, 1, 0, 0), 4096, 32768),
        Err(Error::Invalid { value: 0, .. })
    ));
}

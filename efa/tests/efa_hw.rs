//! Tests that need EFA hardware (an AWS instance with an EFA interface). See the README.
//!
//! Device: `$EFA_TEST_DEVICE`, else the first EFA device.

use std::time::Duration;

use efa::{
    Access, Ah, AhAttr, Completion, Context, Cq, Dest, EfaCaps, Error, Limit, Mr, Pd, QpBuilder,
    RemoteAddr, SrdQp, WcOpcode, WcStatus, WorkCompletion,
};

/// `$EFA_TEST_DEVICE`, else the first EFA device.
fn device() -> std::sync::Arc<Context> {
    match std::env::var("EFA_TEST_DEVICE") {
        Ok(d) => Context::open(&d).unwrap(),
        Err(_) => Context::open_first_efa().unwrap(),
    }
}

fn wait(cq: &mut Cq, n: usize) -> Vec<WorkCompletion> {
    let mut out = vec![WorkCompletion::default(); n];
    let got = cq.wait_into(&mut out, n, Duration::from_secs(10)).unwrap();
    assert_eq!(got, n, "{:?}", &out[..got]);
    out
}

/// As `wait`, each completion read by `read` (`Cq::wait_into_with`).
fn wait_with(
    cq: &mut Cq,
    n: usize,
    read: impl FnMut(&Completion<'_>) -> WorkCompletion,
) -> Vec<WorkCompletion> {
    let mut out = vec![WorkCompletion::default(); n];
    let got = cq
        .wait_into_with(&mut out, n, Duration::from_secs(10), read)
        .unwrap();
    assert_eq!(got, n, "{:?}", &out[..got]);
    out
}

/// A request id with high bits set, so a field that aliases it would show.
const SEND_ID: u64 = 0xabcd_0000_0000_000a;

#[test]
#[ignore = "needs EFA hardware: see README"]
fn efa_hw_srd_send_rdma_read_write_between_two_qps() {
    let ctx = device();
    let attr = *ctx.require_efa().unwrap();
    assert_eq!(ctx.device_attr().vendor_id, 0x1d0f);
    let port = ctx.query_port(1).unwrap();
    let pd = Pd::new(&ctx).unwrap();
    let mut cq_a = Cq::new(&ctx, 128).unwrap();
    let mut cq_b = Cq::new(&ctx, 128).unwrap();
    assert_eq!(
        cq_a.has_source_gid(),
        attr.caps.contains(EfaCaps::CQ_WITH_SGID)
    );
    let mut a: SrdQp = QpBuilder::new(&pd, &cq_a, &cq_a).build_srd().unwrap();
    let mut b: SrdQp = QpBuilder::new(&pd, &cq_b, &cq_b).build_srd().unwrap();
    let mut access = Access::LOCAL_WRITE;
    if attr.caps.contains(EfaCaps::RDMA_READ) {
        access |= Access::REMOTE_READ;
    }
    if attr.caps.contains(EfaCaps::RDMA_WRITE) {
        access |= Access::REMOTE_WRITE;
    }
    let mut mr_a = Mr::alloc(&pd, 1 << 20, access).unwrap();
    let mut mr_b = Mr::alloc(&pd, 1 << 20, access).unwrap();
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    mr_a.write_at(0, &data).unwrap();
    mr_b.write_at(65536, &data).unwrap();
    // One AH serves both QPs (same port); on two hosts each side needs an AH for the other.
    let ah = Ah::new(&pd, AhAttr::new(a.endpoint().gid, 0)).unwrap();
    println!("AHN {:?}", ah.efa_ahn());
    let to_b = Dest::new(&ah, b.qp_num(), b.qkey());

    // SEND up to max_msg_sz; one byte more is refused before the device sees it.
    let size = port.max_msg_sz.min(4096);
    b.post_recv(1, &[mr_b.sge(0, size).unwrap()]).unwrap();
    let mut batch = a.batch().unwrap();
    batch
        .send(SEND_ID, &to_b, &[mr_a.sge(0, size).unwrap()])
        .unwrap();
    let too_big = Mr::alloc(&pd, port.max_msg_sz as usize + 1, Access::LOCAL_WRITE).unwrap();
    assert!(matches!(
        batch.send(11, &to_b, &[too_big.sge_all().unwrap()]),
        Err(Error::Limit {
            limit: Limit::SendBytes,
            ..
        })
    ));
    assert!(batch.set_signaled(false).is_err());
    batch.commit().unwrap();
    let c = wait(&mut cq_a, 1)[0];
    assert!(c.is_success(), "{c:?}");
    // A send completion's receive fields alias the request id on EFA: none may be reported.
    assert_eq!(
        (c.wr_id, c.opcode, c.src_qp, c.byte_len, c.source_gid),
        (SEND_ID, Some(WcOpcode::Send), 0, 0, None)
    );
    let r = wait(&mut cq_b, 1)[0];
    assert_eq!(
        (r.opcode, r.byte_len, r.src_qp),
        (Some(WcOpcode::Recv), size, a.qp_num())
    );
    let mut got = vec![0; size as usize];
    mr_b.read_at(0, &mut got).unwrap();
    assert_eq!(got, data[..size as usize]);

    // A 64 KiB receive buffer takes a SEND (rdma-core before 57 would have wrapped its 16-bit
    // descriptor length to 0; the crate clamps it).
    b.post_recv(2, &[mr_b.sge(0, 65536).unwrap()]).unwrap();
    let mut batch = a.batch().unwrap();
    batch.send(12, &to_b, &[mr_a.sge(0, 100).unwrap()]).unwrap();
    batch.commit().unwrap();
    // `brief` reads nothing of a success beyond its id and status.
    let c = wait_with(&mut cq_a, 1, |c| c.brief())[0];
    assert_eq!(
        c,
        WorkCompletion {
            wr_id: 12,
            status: WcStatus::Success,
            ..WorkCompletion::default()
        }
    );
    let r = wait(&mut cq_b, 1)[0];
    assert_eq!(
        (r.wr_id, r.byte_len, r.status.is_success()),
        (2, 100, true),
        "{r:?}"
    );

    let remote = mr_b.remote();
    if attr.caps.contains(EfaCaps::RDMA_READ) {
        let mut batch = a.batch().unwrap();
        batch
            .read(
                20,
                &to_b,
                &[mr_a.sge(131072, 65536).unwrap()],
                RemoteAddr {
                    addr: remote.at(65536, 65536).unwrap(),
                    rkey: remote.rkey,
                },
            )
            .unwrap();
        batch.commit().unwrap();
        let c = wait(&mut cq_a, 1)[0];
        assert!(c.is_success(), "{c:?}");
        let mut got = vec![0; 65536];
        mr_a.read_at(131072, &mut got).unwrap();
        assert_eq!(got, data);
    }
    if attr.caps.contains(EfaCaps::RDMA_WRITE) {
        let mut batch = a.batch().unwrap();
        batch
            .write(
                30,
                &to_b,
                &[mr_a.sge(0, 65536).unwrap()],
                RemoteAddr {
                    addr: remote.at(262144, 65536).unwrap(),
                    rkey: remote.rkey,
                },
            )
            .unwrap();
        batch.commit().unwrap();
        let c = wait(&mut cq_a, 1)[0];
        assert!(c.is_success(), "{c:?}");
        let mut got = vec![0; 65536];
        mr_b.read_at(262144, &mut got).unwrap();
        assert_eq!(got, data);
    } else {
        let mut batch = a.batch().unwrap();
        assert!(matches!(
            batch.write(
                31,
                &to_b,
                &[mr_a.sge(0, 8).unwrap()],
                RemoteAddr {
                    addr: remote.addr,
                    rkey: remote.rkey
                }
            ),
            Err(Error::Unsupported { .. })
        ));
    }
    // A bad rkey surfaces as a named EFA status.
    if attr.caps.contains(EfaCaps::RDMA_READ) {
        let mut batch = a.batch().unwrap();
        batch
            .read(
                40,
                &to_b,
                &[mr_a.sge(0, 64).unwrap()],
                RemoteAddr {
                    addr: remote.addr,
                    rkey: remote.rkey ^ 0xffff,
                },
            )
            .unwrap();
        batch.commit().unwrap();
        // `brief` reads every field of a failure.
        let w = wait_with(&mut cq_a, 1, |c| c.brief())[0];
        assert!(!w.is_success());
        println!("bad rkey: {:?} / {:?}", w.status, w.efa_status);
        assert_eq!(w.efa_status, Some(efa::EfaStatus::RemoteBadAddress));
        assert_eq!((w.wr_id, w.qp_num), (40, a.qp_num()));
    }
}

#[test]
#[ignore = "needs EFA hardware: see README"]
fn efa_hw_thread_domain_of_another_pd_is_refused() {
    let ctx = device();
    let (pd, other) = (Pd::new(&ctx).unwrap(), Pd::new(&ctx).unwrap());
    let td = efa::ThreadDomain::new(&other).unwrap();
    let cq = Cq::new(&ctx, 16).unwrap();
    // SAFETY: the QP is never built, so nothing is shared between threads.
    let b = unsafe { QpBuilder::new(&pd, &cq, &cq).thread_domain(&td) };
    let e = b.build_srd().unwrap_err();
    assert!(
        matches!(e, Error::Invalid { value, .. } if value == u64::from(other.handle())),
        "{e}"
    );
    // The same domain on its own PD builds.
    // SAFETY: as above; the QP is dropped on this thread.
    let qp: SrdQp = unsafe { QpBuilder::new(&other, &cq, &cq).thread_domain(&td) }
        .build_srd()
        .unwrap();
    drop(qp);
    assert_eq!(efa::teardown_errors(), 0);
}

/// rdma-core's EFA provider holds a QP's send-queue lock while a batch is open and takes it again
/// to retire the QP's send completions, so a poll of its send CQ from the same thread is refused
/// rather than left to spin for ever. Another CQ, the same CQ once the batch is closed, and a QP
/// and CQ that share a thread domain (no lock) poll as usual.
#[test]
#[ignore = "needs EFA hardware: see README"]
fn efa_hw_polling_the_send_cq_inside_an_open_batch_is_refused() {
    let ctx = device();
    let pd = Pd::new(&ctx).unwrap();
    let (mut send_cq, mut recv_cq) = (Cq::new(&ctx, 16).unwrap(), Cq::new(&ctx, 16).unwrap());
    let mut qp: SrdQp = QpBuilder::new(&pd, &send_cq, &recv_cq).build_srd().unwrap();
    let mr = Mr::alloc(&pd, 4096, Access::LOCAL_WRITE).unwrap();
    let ah = Ah::new(&pd, AhAttr::new(qp.endpoint().gid, 0)).unwrap();
    let qpn = qp.qp_num();
    let to_self = Dest::new(&ah, qpn, qp.qkey());
    let mut out = [WorkCompletion::default(); 2];
    for round in 0..2u64 {
        qp.post_recv(round, &[mr.sge(2048, 64).unwrap()]).unwrap();
        let mut batch = qp.batch().unwrap();
        batch
            .send(round, &to_self, &[mr.sge(0, 64).unwrap()])
            .unwrap();
        let e = send_cq.poll_into(&mut out).unwrap_err();
        assert_eq!(e, Error::PollInBatch { qpn }, "{e}");
        assert_eq!(recv_cq.poll_into(&mut out), Ok(0), "nothing sent yet");
        if round == 0 {
            batch.commit().unwrap();
            assert_eq!(wait(&mut send_cq, 1)[0].wr_id, 0);
            assert_eq!(wait(&mut recv_cq, 1)[0].wr_id, 0);
        } else {
            drop(batch);
            assert_eq!(send_cq.poll_into(&mut out), Ok(0), "aborted: nothing sent");
        }
    }

    let td = efa::ThreadDomain::new(&pd).unwrap();
    // SAFETY: the CQ and the QP are used on this thread only.
    let mut td_cq = unsafe { Cq::builder(&ctx, 16).thread_domain(&td) }
        .build()
        .unwrap();
    // SAFETY: as above.
    let mut td_qp: SrdQp = unsafe { QpBuilder::new(&pd, &td_cq, &recv_cq).thread_domain(&td) }
        .build_srd()
        .unwrap();
    let batch = td_qp.batch().unwrap();
    assert_eq!(
        td_cq.poll_into(&mut out),
        Ok(0),
        "one thread domain: no lock"
    );
    drop(batch);
}

/// Destroying a QP takes its CQs' locks, which a poll pass over a CQ that is not
/// single-threaded holds: a QP dropped inside the pass (here in a `poll_with` closure) is
/// destroyed when the pass ends, rather than spinning on the lock.
#[test]
#[ignore = "needs EFA hardware: see README"]
fn efa_hw_a_qp_dropped_inside_a_poll_pass_is_destroyed_after_it() {
    let ctx = device();
    let pd = Pd::new(&ctx).unwrap();
    let mut cq = Cq::new(&ctx, 16).unwrap();
    let mut qp: SrdQp = QpBuilder::new(&pd, &cq, &cq).build_srd().unwrap();
    let mr = Mr::alloc(&pd, 4096, Access::LOCAL_WRITE).unwrap();
    let ah = Ah::new(&pd, AhAttr::new(qp.endpoint().gid, 0)).unwrap();
    let to_self = Dest::new(&ah, qp.qp_num(), qp.qkey());
    qp.post_recv(1, &[mr.sge(2048, 64).unwrap()]).unwrap();
    let mut batch = qp.batch().unwrap();
    batch.send(2, &to_self, &[mr.sge(0, 64).unwrap()]).unwrap();
    batch.commit().unwrap();
    let mut qp = Some(qp);
    let mut ids = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ids.len() < 2 && std::time::Instant::now() < deadline {
        cq.poll_with(2, |c| {
            ids.push(c.wr_id());
            // Dropped inside the pass that brings the last completion: a QP destroyed earlier
            // would take its send's completion with it if the receive came first.
            if ids.len() == 2 {
                drop(qp.take());
            }
        })
        .unwrap();
    }
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
    assert!(qp.is_none());
    // Destroyed once the pass ended: the CQ can go now, and nothing failed to tear down.
    drop(cq);
    assert_eq!(efa::teardown_errors(), 0);
}

/// rdma-core 63/64 features: true queue depths, inline RDMA WRITE and processing hints; each
/// works where device and library have it and is refused by name where they do not.
#[test]
#[ignore = "needs EFA hardware: see README"]
fn efa_hw_newest_efadv_features_or_clean_refusals() {
    let ctx = device();
    let attr = *ctx.require_efa().unwrap();
    let dv = efa_sys::efadv().unwrap();
    let pd = Pd::new(&ctx).unwrap();
    let mut cq = Cq::new(&ctx, 64).unwrap();

    // True depths: the library's answer, which the QP builder enforces.
    match ctx.efa_max_sq_depth(1, 0, false).unwrap() {
        Some(sq) => {
            let wide = ctx
                .efa_max_sq_depth(1, 64.min(attr.max_inline()), true)
                .unwrap()
                .unwrap();
            println!("max SQ depth {sq}, with inline write {wide}");
            assert!(wide <= sq && sq.is_power_of_two());
            let e = QpBuilder::new(&pd, &cq, &cq)
                .max_send_wr(sq + 1)
                .build_srd()
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Limit {
                        limit: Limit::SendQueueDepth,
                        ..
                    }
                ),
                "{e}"
            );
            assert!(ctx.efa_max_rq_depth(1).unwrap().unwrap() >= 1);
        }
        // No answer: the library predates the call (or cannot answer for this device).
        None => assert!(ctx.efa_max_rq_depth(1).unwrap().is_none()),
    }

    // Inline RDMA WRITE.
    let inline_ok = attr.caps.contains(EfaCaps::RDMA_WRITE) && dv.efadv_get_max_sq_depth.is_some();
    let soft_efa_release = std::env::var("SOFT_EFA_RDMA_CORE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok());
    let inline_ok = inline_ok && soft_efa_release.is_none_or(|v| v >= 63);
    let b = QpBuilder::new(&pd, &cq, &cq)
        .inline_write(true)
        .max_inline_data(32);
    match b.build_srd() {
        Ok(mut qp) => {
            assert!(inline_ok);
            let mr = Mr::alloc(&pd, 4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE).unwrap();
            let ah = Ah::new(&pd, AhAttr::new(qp.endpoint().gid, 0)).unwrap();
            let to_self = Dest::new(&ah, qp.qp_num(), qp.qkey());
            let remote = mr.remote();
            let mut batch = qp.batch().unwrap();
            let target = RemoteAddr {
                addr: remote.addr + 100,
                rkey: remote.rkey,
            };
            batch
                .write_inline(50, &to_self, b"inline bytes", target)
                .unwrap();
            batch.commit().unwrap();
            let c = wait(&mut cq, 1)[0];
            assert!(c.is_success(), "{c:?}");
            let mut got = [0u8; 12];
            mr.read_at(100, &mut got).unwrap();
            assert_eq!(&got, b"inline bytes");
        }
        Err(e) => {
            assert!(!inline_ok, "{e}");
            // Refused before the device (capability or library) or by the library itself.
            assert!(
                matches!(
                    e,
                    Error::Unsupported {
                        what: "inline RDMA write",
                        ..
                    } | Error::Verbs {
                        errno: libc::EOPNOTSUPP,
                        ..
                    }
                ),
                "{e}"
            );
        }
    }

    // Processing hints.
    match QpBuilder::new(&pd, &cq, &cq)
        .processing_hints(true)
        .build_srd()
    {
        Ok(mut qp) => {
            let mr = Mr::alloc(&pd, 64, Access::LOCAL_WRITE).unwrap();
            let ah = Ah::new(&pd, AhAttr::new(qp.endpoint().gid, 0)).unwrap();
            let to_self = Dest::new(&ah, qp.qp_num(), qp.qkey());
            qp.post_recv(1, &[mr.sge(0, 64).unwrap()]).unwrap();
            let mut batch = qp.batch().unwrap();
            assert!(
                matches!(batch.processing_hints(1), Err(Error::Invalid { .. })),
                "nothing to hint yet"
            );
            batch.send(60, &to_self, &[mr.sge(0, 8).unwrap()]).unwrap();
            batch
                .processing_hints(efa_sys::EFADV_WR_PROCESSING_HINT_BURST_PPS_SENSITIVE)
                .unwrap();
            batch.commit().unwrap();
            assert!(wait(&mut cq, 2).iter().all(|c| c.is_success()));
            // soft-efa counts hinted requests (refreshed every 200 ms); hardware has no such
            // counter, so there the successful completions are what is checked.
            let hinted = || ctx.info().hw_counters().unwrap().get("hinted_wrs");
            if hinted().is_some() {
                let t0 = std::time::Instant::now();
                while hinted() == Some(0) && t0.elapsed() < Duration::from_secs(3) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                assert!(hinted().unwrap() >= 1, "the hint reached the device");
            }
        }
        Err(e) => {
            assert!(
                dv.efadv_qp_from_ibv_qp_ex.is_none() || !matches!(e, Error::Unsupported { .. }),
                "{e}"
            );
            println!("processing hints refused: {e}");
        }
    }
    // A QP without the option refuses hints by name.
    let mut plain: SrdQp = QpBuilder::new(&pd, &cq, &cq).build_srd().unwrap();
    let mr = Mr::alloc(&pd, 64, Access::LOCAL_WRITE).unwrap();
    let ah = Ah::new(&pd, AhAttr::new(plain.endpoint().gid, 0)).unwrap();
    let to_self = Dest::new(&ah, plain.qp_num(), plain.qkey());
    let mut batch = plain.batch().unwrap();
    batch.send(70, &to_self, &[mr.sge(0, 8).unwrap()]).unwrap();
    assert!(matches!(
        batch.processing_hints(1),
        Err(Error::Unsupported { .. })
    ));
    drop(batch);

    // Raw views of the provider's rings: real entries where the provider exposes them, a named
    // refusal where it does not (soft-efa keeps its queues outside program memory).
    // SAFETY: only the returned sizes are read; nothing is written through the pointers.
    match unsafe { plain.efa_work_queues() } {
        Ok((sq, rq)) => assert!(sq.entry_size > 0 && sq.num_entries > 0 && rq.num_entries > 0),
        Err(e) => assert!(refused_raw_view(&e), "{e}"),
    }
    // SAFETY: as above.
    match unsafe { cq.efa_ring() } {
        Ok(r) => assert!(r.entry_size > 0 && r.num_entries > 0),
        Err(e) => assert!(refused_raw_view(&e), "{e}"),
    }
}

/// Whether `e` is how a provider refuses what it lacks (a raw view of rings it keeps private, a
/// counter): by name, or `EOPNOTSUPP`.
fn refused_raw_view(e: &Error) -> bool {
    matches!(
        e,
        Error::Unsupported { .. }
            | Error::Verbs {
                errno: libc::EOPNOTSUPP,
                ..
            }
    )
}

/// Completion counters (rdma-core master): a counted workload on a device with `COMP_CNTR`, a
/// refusal by name elsewhere.
#[test]
#[ignore = "needs EFA hardware: see README"]
fn efa_hw_completion_counters_count_or_are_refused() {
    let ctx = device();
    let counter = match efa::CompCounter::new(&ctx) {
        Ok(c) => c,
        Err(e) => {
            println!("completion counters refused: {e}");
            assert!(
                matches!(
                    e,
                    Error::Unsupported { .. }
                        | Error::Verbs {
                            errno: libc::EOPNOTSUPP,
                            ..
                        }
                ),
                "{e}"
            );
            return;
        }
    };
    assert!(ctx.efa_caps().contains(EfaCaps::COMP_CNTR));
    let pd = Pd::new(&ctx).unwrap();
    let mut cq = Cq::new(&ctx, 256).unwrap();
    // Attached in RESET, by the builder, as ibv_qp_attach_comp_cntr(3) requires.
    let mut qp: SrdQp = QpBuilder::new(&pd, &cq, &cq)
        .max_recv_wr(64)
        .counter(&counter, efa::CounterOps::SEND | efa::CounterOps::RECV)
        .build_srd()
        .unwrap();
    // The QP is in RTS now: no further counter.
    let late = counter.attach(&mut qp, efa::CounterOps::RDMA_WRITE);
    assert!(
        matches!(
            late,
            Err(Error::QpState {
                state: efa::QpState::Rts,
                ..
            })
        ),
        "{late:?}"
    );
    let mr = Mr::alloc(&pd, 64 * 64, Access::LOCAL_WRITE).unwrap();
    let ah = Ah::new(&pd, AhAttr::new(qp.endpoint().gid, 0)).unwrap();
    let to_self = Dest::new(&ah, qp.qp_num(), qp.qkey());
    for i in 0..32 {
        qp.post_recv(i, &[mr.sge(i as usize * 64, 64).unwrap()])
            .unwrap();
    }
    let mut batch = qp.batch().unwrap();
    for i in 0..32 {
        batch
            .send(100 + i, &to_self, &[mr.sge(0, 16).unwrap()])
            .unwrap();
    }
    batch.commit().unwrap();
    // 32 sends and 32 receives, counted without polling the CQ.
    let (ok, err) = counter.wait_for(64, Duration::from_secs(10)).unwrap();
    assert_eq!((ok, err), (64, 0));
    assert_eq!(
        wait(&mut cq, 64).len(),
        64,
        "the CQ still gets every completion"
    );
    counter.set(0).unwrap();
    assert_eq!(counter.value().unwrap(), 0);
    // A send to a QP that does not exist completes in error: counted apart.
    let nowhere = Dest::new(&ah, 0xfff_fff, qp.qkey());
    let mut batch = qp.batch().unwrap();
    batch.send(200, &nowhere, &[mr.sge(0, 8).unwrap()]).unwrap();
    batch.commit().unwrap();
    let (ok, err) = counter.wait_for(1, Duration::from_secs(30)).unwrap();
    assert_eq!((ok, err), (0, 1));
    let mut out = [WorkCompletion::default()];
    assert_eq!(
        cq.wait_into(&mut out, 1, Duration::from_secs(10)).unwrap(),
        1
    );
}

/// Counters whose counts the device writes into host memory (efadv, EFA_1.7): the same counts,
/// read as loads; overlapping operations on one QP refused; the refusal by name elsewhere.
#[test]
#[ignore = "needs EFA hardware: see README"]
fn efa_hw_completion_counters_in_host_memory() {
    let ctx = device();
    let counter = match efa::CompCounter::in_host_memory(&ctx) {
        Ok(c) => c,
        Err(e) => {
            println!("completion counters in host memory refused: {e}");
            assert!(refused_raw_view(&e), "{e}");
            return;
        }
    };
    assert!(counter.reads_memory());
    let pd = Pd::new(&ctx).unwrap();
    let mut cq = Cq::new(&ctx, 256).unwrap();
    let other = efa::CompCounter::in_host_memory(&ctx).unwrap();
    let overlapping = QpBuilder::new(&pd, &cq, &cq)
        .counter(&counter, efa::CounterOps::SEND)
        .counter(&other, efa::CounterOps::SEND | efa::CounterOps::RECV)
        .build_srd();
    assert!(
        matches!(
            overlapping,
            Err(Error::Verbs {
                errno: libc::EBUSY,
                ..
            })
        ),
        "{overlapping:?}"
    );
    let mut qp: SrdQp = QpBuilder::new(&pd, &cq, &cq)
        .max_recv_wr(64)
        .counter(&counter, efa::CounterOps::SEND)
        .counter(&other, efa::CounterOps::RECV)
        .build_srd()
        .unwrap();
    let mr = Mr::alloc(&pd, 64 * 64, Access::LOCAL_WRITE).unwrap();
    let ah = Ah::new(&pd, AhAttr::new(qp.endpoint().gid, 0)).unwrap();
    let to_self = Dest::new(&ah, qp.qp_num(), qp.qkey());
    for i in 0..16 {
        qp.post_recv(i, &[mr.sge(i as usize * 64, 64).unwrap()])
            .unwrap();
    }
    let mut batch = qp.batch().unwrap();
    for i in 0..16 {
        batch
            .send(100 + i, &to_self, &[mr.sge(0, 16).unwrap()])
            .unwrap();
    }
    batch.commit().unwrap();
    assert_eq!(
        counter.wait_for(16, Duration::from_secs(10)).unwrap(),
        (16, 0)
    );
    assert_eq!(
        other.wait_for(16, Duration::from_secs(10)).unwrap(),
        (16, 0)
    );
    assert_eq!(counter.completed().unwrap(), 16);
    assert_eq!(
        wait(&mut cq, 32).len(),
        32,
        "the CQ still gets every completion"
    );
    counter.set(3).unwrap();
    assert_eq!(counter.value().unwrap(), 3, "a set reaches the memory");
}

#[test]
#[ignore = "needs EFA hardware: see README"]
fn efa_hw_recv_list_posts_chained_receives() {
    let ctx = device();
    let pd = Pd::new(&ctx).unwrap();
    let mut cq = Cq::new(&ctx, 512).unwrap();
    let n = 2 * efa::RECV_CHAIN + 5;
    let mut qp: SrdQp = QpBuilder::new(&pd, &cq, &cq)
        .max_send_wr(128)
        .max_recv_wr(128)
        .build_srd()
        .unwrap();
    let mut mr = Mr::alloc(&pd, (n + 1) * 64, Access::LOCAL_WRITE).unwrap();
    // Receive i lands in slot i + 1; slot 0 holds what is sent.
    let wrs: Vec<(u64, efa::Sge)> = (0..n)
        .map(|i| (1000 + i as u64, mr.sge((i + 1) * 64, 64).unwrap()))
        .collect();
    qp.post_recv_list(&wrs).unwrap();
    let ah = Ah::new(&pd, AhAttr::new(qp.endpoint().gid, 0)).unwrap();
    let to_self = Dest::new(&ah, qp.qp_num(), qp.qkey());
    mr.write_at(0, &[0x5a; 48]).unwrap();
    let mut batch = qp.batch().unwrap();
    for i in 0..n as u64 {
        batch.send(i, &to_self, &[mr.sge(0, 48).unwrap()]).unwrap();
    }
    batch.commit().unwrap();
    let wcs = wait(&mut cq, 2 * n);
    let mut recv_ids: Vec<u64> = wcs
        .iter()
        .inspect(|wc| assert!(wc.is_success(), "{wc:?}"))
        .filter(|wc| wc.opcode == Some(WcOpcode::Recv))
        .inspect(|wc| assert_eq!(wc.byte_len, 48))
        .map(|wc| wc.wr_id)
        .collect();
    recv_ids.sort_unstable();
    assert_eq!(recv_ids, (1000..1000 + n as u64).collect::<Vec<_>>());
    let mut got = vec![0u8; 48];
    for i in 0..n {
        mr.read_at((i + 1) * 64, &mut got).unwrap();
        assert_eq!(got, [0x5a; 48], "slot {i}");
    }
    // An empty list posts nothing and succeeds.
    qp.post_recv_list(&[]).unwrap();
}

/// A wait on a completion channel times out without a completion and wakes on one; devices that
/// cannot notify refuse the channel CQ with a typed error.
#[test]
#[ignore = "needs EFA hardware: see README"]
fn efa_hw_comp_channel_wait_wakes_on_a_completion_and_times_out_without_one() {
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    let ctx = device();
    let pd = Pd::new(&ctx).unwrap();
    let channel = efa::CompChannel::new(&ctx).unwrap();
    assert!(channel.as_raw_fd() >= 0);
    let mut cq_b = match Cq::builder(&ctx, 64).channel(&channel, 0xb0b).build() {
        Ok(cq) => cq,
        Err(e @ Error::Unsupported { .. }) => {
            // EFA's first generation has no CQ notifications (soft-efa's `send` profile).
            println!("completion events refused: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert!(cq_b.has_channel());
    let mut cq_a = Cq::new(&ctx, 64).unwrap();
    // A CQ without a channel cannot be armed.
    assert!(matches!(
        cq_a.req_notify(false),
        Err(Error::Unsupported { .. })
    ));
    // EFA refuses solicited-only events.
    assert!(matches!(
        cq_b.req_notify(true),
        Err(Error::Unsupported { .. })
    ));
    let mut a: SrdQp = QpBuilder::new(&pd, &cq_a, &cq_a).build_srd().unwrap();
    let mut b: SrdQp = QpBuilder::new(&pd, &cq_b, &cq_b).build_srd().unwrap();
    let mr_a = Mr::alloc(&pd, 4096, Access::LOCAL_WRITE).unwrap();
    let mr_b = Mr::alloc(&pd, 4096, Access::LOCAL_WRITE).unwrap();
    let ah = Ah::new(&pd, AhAttr::new(b.endpoint().gid, 0)).unwrap();
    let to_b = Dest::new(&ah, b.qp_num(), b.qkey());

    // Arm, poll once more, wait: nothing comes, so the wait times out.
    cq_b.req_notify(false).unwrap();
    let mut wc = [WorkCompletion::default(); 4];
    assert_eq!(cq_b.poll_into(&mut wc).unwrap(), 0);
    let start = Instant::now();
    assert_eq!(channel.wait(Duration::from_millis(100)).unwrap(), None);
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!(channel.try_event().unwrap(), None);

    // A completion on the armed CQ wakes the wait, which names the CQ.
    b.post_recv(1, &[mr_b.sge(0, 64).unwrap()]).unwrap();
    let mut batch = a.batch().unwrap();
    batch.send(7, &to_b, &[mr_a.sge(0, 64).unwrap()]).unwrap();
    batch.commit().unwrap();
    let ev = channel
        .wait(Duration::from_secs(10))
        .unwrap()
        .expect("no event within 10 s");
    assert!(ev.is_for(&cq_b));
    assert!(!ev.is_for(&cq_a));
    assert_eq!(ev.token(), 0xb0b);
    let r = wait(&mut cq_b, 1)[0];
    assert_eq!((r.wr_id, r.byte_len), (1, 64), "{r:?}");
    assert!(wait(&mut cq_a, 1)[0].is_success());

    // Events fire once per arming: without a new arm, the next completion raises none.
    b.post_recv(2, &[mr_b.sge(0, 64).unwrap()]).unwrap();
    let mut batch = a.batch().unwrap();
    batch.send(8, &to_b, &[mr_a.sge(0, 64).unwrap()]).unwrap();
    batch.commit().unwrap();
    assert_eq!(wait(&mut cq_b, 1)[0].wr_id, 2);
    assert!(wait(&mut cq_a, 1)[0].is_success());
    assert_eq!(channel.wait(Duration::from_millis(50)).unwrap(), None);

    // A completion that lands before the arming is found by the poll after it (and may raise
    // an event at once, which the wait then returns without sleeping).
    b.post_recv(3, &[mr_b.sge(0, 64).unwrap()]).unwrap();
    let mut batch = a.batch().unwrap();
    batch.send(9, &to_b, &[mr_a.sge(0, 64).unwrap()]).unwrap();
    batch.commit().unwrap();
    assert!(wait(&mut cq_a, 1)[0].is_success());
    cq_b.req_notify(false).unwrap();
    let mut got = 0;
    let start = Instant::now();
    while got == 0 && start.elapsed() < Duration::from_secs(10) {
        got = cq_b.poll_into(&mut wc).unwrap();
    }
    assert_eq!((got, wc[0].wr_id), (1, 3));
    let _ = channel.wait(Duration::ZERO).unwrap();

    // A CQ destroyed with an event pending takes the event with it: the channel never names
    // a destroyed CQ.
    cq_b.req_notify(false).unwrap();
    b.post_recv(4, &[mr_b.sge(0, 64).unwrap()]).unwrap();
    let mut batch = a.batch().unwrap();
    batch.send(10, &to_b, &[mr_a.sge(0, 64).unwrap()]).unwrap();
    batch.commit().unwrap();
    assert!(wait(&mut cq_a, 1)[0].is_success());
    assert_eq!(wait(&mut cq_b, 1)[0].wr_id, 4);
    drop(b);
    drop(cq_b);
    assert_eq!(channel.wait(Duration::from_millis(20)).unwrap(), None);

    // The CQs keep their channel alive: dropping the channel first is fine.
    drop(channel);
    drop(a);
    drop(cq_a);
}

//! Engine behaviour over the sim fabric: validation, lifecycle, notifications, faults.

mod common;

use std::time::Duration;

use common::*;
use transport::fabric::sim::{SimConfig, SimFaults};
use transport::fabric::Fabric;
use transport::*;

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn write_then_read_back_across_rails() {
    let c = Cluster::new();
    let sim = SimConfig {
        rails: 4,
        ..SimConfig::default()
    };
    let mut cfg = EngineConfig::new("a");
    cfg.slice_size = Some(1000);
    let (a, _) = c.engine_with(cfg, sim.clone());
    let (b, _) = c.engine("b", sim);
    let src = owned(&a, "a/src", 10_000, Access::NONE, |i| (i * 7) as u8);
    let back = owned(&a, "a/back", 10_000, Access::NONE, |_| 0);
    let dst = owned(&b, "b/dst", 20_000, Access::REMOTE_READ_WRITE, |_| 0xEE);
    let r = a.open_segment("b/dst").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(4).unwrap();
    assert_eq!(
        w.submit(batch, &[Request::write(src, 0, r, 5000, 10_000)])
            .unwrap(),
        0
    );
    assert!(w.wait(batch, WAIT).unwrap().all_completed());
    assert_eq!(
        w.submit(batch, &[Request::read(back, 0, r, 5000, 10_000)])
            .unwrap(),
        1
    );
    assert!(w.wait(batch, WAIT).unwrap().all_completed());
    assert_eq!(read_all(&a, back), read_all(&a, src));
    let d = read_all(&b, dst);
    assert!(d[..5000].iter().all(|&x| x == 0xEE) && d[15_000..].iter().all(|&x| x == 0xEE));
    assert_eq!(
        a.request_status(batch, 1).unwrap(),
        RequestStatus::Completed
    );
    assert_eq!(a.segment_info(src).unwrap().rails.len(), 4);
}

#[test]
fn requests_are_sliced_to_stripe_over_rails_only() {
    const MIB: u64 = 1 << 20;
    // Posts a 1 MiB WRITE through an engine on `rails` rails; returns its slice size and the
    // work requests the WRITE took.
    let run = |rails: u16, slice_size: Option<u64>| {
        let c = Cluster::new();
        let sim = SimConfig {
            rails,
            ..SimConfig::default()
        };
        let mut cfg = EngineConfig::new("a");
        cfg.slice_size = slice_size;
        let (a, _) = c.engine_with(cfg, sim.clone());
        let (b, _) = c.engine("b", sim);
        let src = owned(&a, "a/src", MIB as usize, Access::NONE, |i| (i % 251) as u8);
        let dst = owned(&b, "b/dst", MIB as usize, Access::REMOTE_READ_WRITE, |_| 0);
        let r = a.open_segment("b/dst").unwrap();
        let mut w = a.worker().unwrap();
        let batch = a.allocate_batch(1).unwrap();
        w.submit(batch, &[Request::write(src, 0, r, 0, MIB)])
            .unwrap();
        assert!(w.wait(batch, WAIT).unwrap().all_completed());
        assert_eq!(read_all(&b, dst), read_all(&a, src));
        let wrs: u64 = a.metrics().rails.iter().map(|r| r.work_requests).sum();
        (a.slice_plan().slice_size, wrs)
    };
    let max = SimConfig::default().max_rdma_size;
    // One rail: nothing to stripe, the request goes whole.
    assert_eq!(run(1, None), (max, 1));
    // Several rails: 64 KiB slices over them.
    assert_eq!(run(2, None), (DEFAULT_SLICE_SIZE, MIB / DEFAULT_SLICE_SIZE));
    // A slice size given is kept, one rail or not.
    assert_eq!(run(1, Some(4096)), (4096, MIB / 4096));
}

#[test]
fn validation_errors_are_typed_and_post_nothing() {
    let c = Cluster::new();
    let (a, _) = c.engine("a", SimConfig::default());
    let (b, _) = c.engine("b", SimConfig::default());
    let src = owned(&a, "a/src", 100, Access::NONE, |_| 1);
    owned(&b, "b/ro", 100, Access::REMOTE_READ, |_| 0);
    let ro = a.open_segment("b/ro").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(2).unwrap();
    let good = Request::read(src, 0, ro, 0, 10);
    type Check = Box<dyn Fn(&TransportError) -> bool>;
    let cases: Vec<(Request, Check)> = vec![
        (
            Request::read(src, 0, ro, 0, 0),
            Box::new(|e| matches!(e, TransportError::ZeroLength { index: 1 })),
        ),
        (
            Request::read(src, 95, ro, 0, 10),
            Box::new(|e| {
                matches!(
                    e,
                    TransportError::LocalOutOfRange {
                        index: 1,
                        offset: 95,
                        len: 10,
                        seg_len: 100,
                        ..
                    }
                )
            }),
        ),
        (
            Request::read(src, 0, ro, 95, 10),
            Box::new(
                |e| matches!(e, TransportError::RemoteOutOfRange { index: 1, offset: 95, seg_len: 100, name, .. } if name == "b/ro"),
            ),
        ),
        (
            Request::write(src, 0, ro, 0, 10),
            Box::new(|e| {
                matches!(
                    e,
                    TransportError::AccessDenied {
                        index: 1,
                        op: "WRITE",
                        ..
                    }
                )
            }),
        ),
        (
            Request {
                local: LocalAddr::Raw(0x10),
                ..good
            },
            Box::new(|e| {
                matches!(
                    e,
                    TransportError::LocalNotRegistered {
                        index: 1,
                        addr: 0x10,
                        len: 10
                    }
                )
            }),
        ),
        (
            Request::read(src, 0, ro, 0, 10).with_op(Opcode::WriteWithNotify(5000)),
            Box::new(|e| matches!(e, TransportError::BadTag { tag: 5000, .. })),
        ),
    ];
    for (bad, check) in cases {
        let err = w.submit(batch, &[good, bad]).unwrap_err();
        assert!(check(&err), "unexpected {err}");
        let st = a.batch_status(batch).unwrap();
        assert_eq!(
            (st.submitted, st.in_flight, st.pending),
            (0, 0, 0),
            "after {err}"
        );
    }
    let err = w.submit(batch, &[good, good, good]).unwrap_err();
    assert!(matches!(
        err,
        TransportError::BatchFull {
            submitted: 0,
            adding: 3,
            capacity: 2,
            ..
        }
    ));
    assert!(
        matches!(a.open_segment("nope"), Err(TransportError::SegmentNotFound(n)) if n == "nope")
    );
    // Everything unpinned: the segment can go.
    a.unregister(src).unwrap();
    let err = w.submit(batch, &[good]).unwrap_err();
    assert!(matches!(err, TransportError::UnknownSegment(s) if s == src));
}

#[test]
fn raw_addresses_resolve_against_registrations() {
    let c = Cluster::new();
    let (a, _) = c.engine("a", SimConfig::default());
    let (b, _) = c.engine("b", SimConfig::default());
    let mut buf = vec![3u8; 256];
    // SAFETY: `buf` outlives the registration (unregistered below before it drops).
    let seg = unsafe {
        a.register_memory(
            "a/raw",
            buf.as_mut_ptr(),
            buf.len(),
            Location::Cpu(0),
            Access::NONE,
        )
    }
    .unwrap();
    let dst = owned(&b, "b/dst", 256, Access::REMOTE_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(1).unwrap();
    let req = Request {
        op: Opcode::Write,
        local: LocalAddr::Raw(buf.as_ptr() as u64 + 16),
        remote: r,
        remote_offset: 0,
        len: 240,
    };
    w.submit(batch, &[req]).unwrap();
    assert!(w.wait(batch, WAIT).unwrap().all_completed());
    assert_eq!(&read_all(&b, dst)[..240], &[3u8; 240][..]);
    assert!(a.unregister(seg).unwrap().is_none());
}

#[test]
fn unregister_is_refused_while_in_use_and_handles_go_stale() {
    let c = Cluster::new();
    let sim = SimConfig {
        faults: SimFaults {
            unresp_timeout: Duration::from_millis(300),
            ..SimFaults::default()
        },
        ..SimConfig::default()
    };
    let (a, _) = c.engine("a", sim);
    let (b, fb) = c.engine("b", SimConfig::default());
    let src = owned(&a, "a/src", 64, Access::NONE, |_| 1);
    owned(&b, "b/dst", 64, Access::REMOTE_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    // A dead target holds the completion back for `unresp_timeout`.
    fb.set_alive(false);
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(1).unwrap();
    w.submit(batch, &[Request::write(src, 0, r, 0, 64)])
        .unwrap();
    assert!(matches!(
        a.unregister(src),
        Err(TransportError::SegmentBusy { in_flight: 1, .. })
    ));
    assert!(matches!(
        a.free_batch(batch),
        Err(TransportError::BatchBusy { in_flight: 1, .. })
    ));
    let st = w.wait(batch, Duration::from_millis(20)).unwrap();
    assert_eq!((st.timed_out, st.pending, st.in_flight), (1, 0, 1));
    assert_eq!(a.request_status(batch, 0).unwrap(), RequestStatus::TimedOut);
    assert!(matches!(
        a.request_status(batch, 1),
        Err(TransportError::NoSuchRequest { index: 1, .. })
    ));
    // Drain absorbs the late completion; then everything can be released.
    let st = w.drain(batch, Duration::from_secs(30)).unwrap();
    assert_eq!(st.in_flight, 0);
    assert_eq!(a.request_status(batch, 0).unwrap(), RequestStatus::TimedOut);
    let again = a.recycle_batch(batch).unwrap();
    assert!(matches!(
        a.batch_status(batch),
        Err(TransportError::StaleBatch(_))
    ));
    assert_eq!(a.batch_status(again).unwrap().submitted, 0);
    a.free_batch(again).unwrap();
    assert!(matches!(
        a.free_batch(again),
        Err(TransportError::StaleBatch(_))
    ));
    assert!(a.unregister(src).unwrap().is_some());
    assert!(matches!(
        a.unregister(src),
        Err(TransportError::UnknownSegment(_))
    ));
    a.close_segment(r).unwrap();
    assert!(matches!(
        a.close_segment(r),
        Err(TransportError::UnknownRemote(_))
    ));
}

#[test]
fn notifications_count_once_per_request_after_the_data() {
    let c = Cluster::new();
    let mut cfg = EngineConfig::new("a");
    cfg.slice_size = Some(64);
    let sim = SimConfig {
        rails: 2,
        ..SimConfig::default()
    };
    let (a, _) = c.engine_with(cfg, sim.clone());
    let (b, _) = c.engine("b", sim);
    let src = owned(&a, "a/src", 4096, Access::NONE, |i| i as u8);
    let dst = owned(&b, "b/dst", 4096, Access::REMOTE_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(8).unwrap();
    let reqs: Vec<_> = (0..4)
        .map(|i| {
            Request::write(src, i * 1024, r, i * 1024, 1024).with_op(Opcode::WriteWithNotify(7))
        })
        .collect();
    w.submit(batch, &reqs).unwrap();
    assert!(w.wait(batch, WAIT).unwrap().all_completed());
    assert_eq!(b.notifications().count(7).unwrap(), 4);
    assert_eq!(b.notifications().wait_for(7, 4, WAIT).unwrap(), 4);
    assert_eq!(read_all(&b, dst), read_all(&a, src));
    assert_eq!(a.notifications().count(7).unwrap(), 0);
}

#[test]
fn a_one_slice_write_with_notification_is_one_work_request_and_waits_for_no_completion() {
    // The sim places a WRITE when it is posted and completes it at the initiator's next poll.
    // A one-slice WRITE with notification is one work request carrying the tag: the target
    // counts it at once, with the bytes placed. A request of several slices tells the target
    // only once its WRITEs completed, which the initiator sees at its next poll.
    let c = Cluster::new();
    let mut cfg = EngineConfig::new("a");
    cfg.slice_size = Some(1024);
    let (a, _) = c.engine_with(cfg, SimConfig::default());
    let (b, _) = c.engine("b", SimConfig::default());
    let src = owned(&a, "a/src", 4096, Access::NONE, |i| (i % 251) as u8 + 1);
    let dst = owned(&b, "b/dst", 4096, Access::REMOTE_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    assert!(a.capabilities().supports_write_notify);
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(2).unwrap();
    let one = Request::write(src, 0, r, 0, 1024).with_op(Opcode::WriteWithNotify(3));
    w.submit(batch, &[one]).unwrap();
    assert_eq!(b.notifications().count(3).unwrap(), 1);
    assert_eq!(read_all(&b, dst)[..1024], read_all(&a, src)[..1024]);
    let two = Request::write(src, 1024, r, 1024, 2048).with_op(Opcode::WriteWithNotify(4));
    w.submit(batch, &[two]).unwrap();
    assert_eq!(b.notifications().count(4).unwrap(), 0);
    assert!(w.wait(batch, WAIT).unwrap().all_completed());
    assert_eq!(b.notifications().count(3).unwrap(), 1);
    assert_eq!(b.notifications().count(4).unwrap(), 1);
    assert_eq!(read_all(&b, dst)[..3072], read_all(&a, src)[..3072]);
}

#[test]
fn a_one_slice_write_with_notification_to_a_tag_outside_the_target_fails_unplaced() {
    // As RDMA WRITE with immediate: the target has no counter to take the tag (its table is
    // smaller than the initiator's), so nothing is placed and the request fails.
    let c = Cluster::new();
    let (a, _) = c.engine("a", SimConfig::default());
    let mut cfg = EngineConfig::new("b");
    cfg.notify_tags = 4;
    let (b, _) = c.engine_with(cfg, SimConfig::default());
    let src = owned(&a, "a/src", 64, Access::NONE, |_| 9);
    let dst = owned(&b, "b/dst", 64, Access::REMOTE_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(1).unwrap();
    let req = Request::write(src, 0, r, 0, 64).with_op(Opcode::WriteWithNotify(10));
    w.submit(batch, &[req]).unwrap();
    let st = w.wait(batch, WAIT).unwrap();
    assert!(!st.all_completed(), "{st:?}");
    assert_eq!(read_all(&b, dst), vec![0; 64]);
}

#[test]
fn unknown_peer_when_target_skipped_its_ah() {
    let c = Cluster::new();
    let (a, fa) = c.engine(
        "a",
        SimConfig {
            handshake: false,
            ..SimConfig::default()
        },
    );
    let (b, _) = c.engine("b", SimConfig::default());
    let src = owned(&a, "a/src", 64, Access::NONE, |_| 9);
    let dst = owned(&b, "b/dst", 64, Access::REMOTE_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(2).unwrap();
    w.submit(batch, &[Request::write(src, 0, r, 0, 64)])
        .unwrap();
    let st = w.wait(batch, WAIT).unwrap();
    assert_eq!(st.failed, 1);
    assert_eq!(
        a.request_status(batch, 0).unwrap(),
        RequestStatus::Failed(FailReason::UnknownPeer)
    );
    assert_eq!(read_all(&b, dst), vec![0; 64]);
    b.accept_peer(&fa.local_addresses()).unwrap();
    w.submit(batch, &[Request::write(src, 0, r, 0, 64)])
        .unwrap();
    assert_eq!(w.wait(batch, WAIT).unwrap().completed, 1);
    assert_eq!(read_all(&b, dst), vec![9; 64]);
}

#[test]
fn dead_peer_yields_unresp_remote_and_no_hang() {
    let c = Cluster::new();
    let sim = SimConfig {
        faults: SimFaults {
            unresp_timeout: Duration::from_millis(10),
            ..SimFaults::default()
        },
        ..SimConfig::default()
    };
    let (a, _) = c.engine("a", sim);
    let (b, fb) = c.engine("b", SimConfig::default());
    let src = owned(&a, "a/src", 64, Access::NONE, |_| 9);
    owned(&b, "b/dst", 64, Access::REMOTE_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    fb.set_alive(false);
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(4).unwrap();
    w.submit(batch, &[Request::write(src, 0, r, 0, 64); 4])
        .unwrap();
    let st = w.wait(batch, WAIT).unwrap();
    assert_eq!((st.failed, st.in_flight), (4, 0));
    for i in 0..4 {
        assert_eq!(
            a.request_status(batch, i).unwrap(),
            RequestStatus::Failed(FailReason::UnresponsiveRemote)
        );
    }
}

#[test]
fn tiny_queues_backpressure_without_loss() {
    let c = Cluster::new();
    let mut cfg = EngineConfig::new("a");
    cfg.slice_size = Some(16);
    let sim = SimConfig {
        queue_depth: 2,
        rails: 2,
        ..SimConfig::default()
    };
    let (a, _) = c.engine_with(cfg, sim.clone());
    let (b, _) = c.engine("b", sim);
    let src = owned(&a, "a/src", 8192, Access::NONE, |i| (i / 3) as u8);
    let dst = owned(&b, "b/dst", 8192, Access::REMOTE_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(64).unwrap();
    let reqs: Vec<_> = (0..64)
        .map(|i| Request::write(src, i * 128, r, i * 128, 128).with_op(Opcode::WriteWithNotify(1)))
        .collect();
    w.submit(batch, &reqs).unwrap();
    let st = w.wait(batch, WAIT).unwrap();
    assert_eq!(st.completed, 64);
    assert_eq!(read_all(&b, dst), read_all(&a, src));
    assert_eq!(b.notifications().count(1).unwrap(), 64);
}

#[test]
fn cancel_marks_pending_requests() {
    let c = Cluster::new();
    let sim = SimConfig {
        faults: SimFaults {
            max_delay_steps: 50,
            ..SimFaults::default()
        },
        ..SimConfig::default()
    };
    let (a, _) = c.engine("a", sim);
    let (b, _) = c.engine("b", SimConfig::default());
    let src = owned(&a, "a/src", 64, Access::NONE, |_| 1);
    owned(&b, "b/dst", 64, Access::REMOTE_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(8).unwrap();
    w.submit(batch, &[Request::write(src, 0, r, 0, 64); 8])
        .unwrap();
    let cancelled = a.cancel(batch).unwrap();
    let st = w.drain(batch, WAIT).unwrap();
    assert_eq!(st.cancelled, cancelled);
    assert_eq!(st.cancelled + st.completed, 8);
    assert_eq!(st.in_flight, 0);
    a.free_batch(batch).unwrap();
}

#[test]
fn affinity_policy_picks_rails() {
    let c = Cluster::new();
    let mut cfg = EngineConfig::new("a");
    cfg.rail_policy = std::sync::Arc::new(AffinityTable::new().with(Location::Gpu(1), &[2, 3]));
    let (a, _) = c.engine_with(
        cfg,
        SimConfig {
            rails: 4,
            ..SimConfig::default()
        },
    );
    // Stands in for device memory: owned memory is host memory, so it is registered raw.
    let mut m = vec![0u8; 64];
    // SAFETY: `m` stays alive and untouched until `unregister` below returns.
    let s = unsafe {
        a.register_memory(
            "g1",
            m.as_mut_ptr(),
            m.len(),
            "gpu:1".parse().unwrap(),
            Access::NONE,
        )
    }
    .unwrap();
    assert_eq!(a.segment_info(s).unwrap().rails.as_slice(), &[2, 3]);
    assert!(matches!(
        a.register_owned(
            "g1",
            OwnedMemory::zeroed(8, 8).unwrap(),
            Location::Cpu(0),
            Access::NONE
        ),
        Err(TransportError::DuplicateName(_))
    ));
    let d = c.meta.lookup("g1").unwrap();
    assert_eq!(
        (d.engine.as_str(), d.fabric.as_str(), d.rails.len()),
        ("a", "sim", 4)
    );
    a.unregister(s).unwrap();
    drop(m);
}

#[test]
fn engine_is_send_and_sync_worker_is_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Engine>();
    send::<Worker>();
}

#[test]
fn workers_on_several_threads() {
    let c = Cluster::new();
    let (a, _) = c.engine(
        "a",
        SimConfig {
            rails: 2,
            ..SimConfig::default()
        },
    );
    let (b, _) = c.engine("b", SimConfig::default());
    let src = owned(&a, "a/src", 4096, Access::NONE, |i| i as u8);
    let dst = owned(&b, "b/dst", 4096 * 4, Access::REMOTE_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let a = a.clone();
            s.spawn(move || {
                let mut w = a.worker().unwrap();
                for _ in 0..50 {
                    let batch = a.allocate_batch(4).unwrap();
                    let reqs: Vec<_> = (0..4)
                        .map(|i| Request::write(src, i * 1024, r, t * 4096 + i * 1024, 1024))
                        .collect();
                    w.submit(batch, &reqs).unwrap();
                    assert!(w.wait(batch, WAIT).unwrap().all_completed());
                    a.free_batch(batch).unwrap();
                }
            });
        }
    });
    let d = read_all(&b, dst);
    let s = read_all(&a, src);
    for t in 0..4 {
        assert_eq!(&d[t * 4096..(t + 1) * 4096], &s[..]);
    }
}

#[test]
fn dropping_the_engine_withdraws_its_segments_even_if_the_fabric_lives_on() {
    let c = Cluster::new();
    let (a, _) = c.engine("a", SimConfig::default());
    let (b, b_fabric) = c.engine("b", SimConfig::default());
    let src = owned(&a, "a/src", 4096, Access::NONE, |_| 9);
    owned(&b, "b/dst", 4096, Access::REMOTE_READ_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    drop(b); // b_fabric is still alive: peers must not reach b's freed memory through it.

    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(1).unwrap();
    w.submit(batch, &[Request::write(src, 0, r, 0, 4096)])
        .unwrap();
    w.wait(batch, WAIT).unwrap();
    assert_eq!(
        a.request_status(batch, 0).unwrap(),
        RequestStatus::Failed(FailReason::RemoteBadAddress)
    );
    a.close_segment(r).unwrap();
    let reopened = a.open_segment("b/dst");
    assert!(
        matches!(reopened, Err(TransportError::SegmentNotFound(ref n)) if n == "b/dst"),
        "the descriptor outlived its engine: {reopened:?}"
    );
    assert!(b_fabric.capabilities().rails >= 1);
}

#[test]
fn an_owned_view_polls_a_peer_write_and_holds_its_segment() {
    let c = Cluster::new();
    let (a, _) = c.engine("a", SimConfig::default());
    let (b, _) = c.engine("b", SimConfig::default());
    let src = owned(&a, "a/src", 64, Access::NONE, |i| i as u8 + 1);
    let dst = owned(&b, "b/dst", 64, Access::REMOTE_READ_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    let view = b.owned_view(dst).unwrap();
    assert_eq!((view.segment(), view.len()), (dst, 64));
    // The peer's WRITE lands while this thread polls the last byte, as a ping-pong does.
    let writer = std::thread::spawn(move || {
        let mut w = a.worker().unwrap();
        let batch = a.allocate_batch(1).unwrap();
        w.submit(batch, &[Request::write(src, 0, r, 0, 64)])
            .unwrap();
        assert!(w.wait(batch, WAIT).unwrap().all_completed());
        a
    });
    let deadline = std::time::Instant::now() + WAIT;
    while view.load(63).unwrap() != 64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the WRITE never showed"
        );
        std::hint::spin_loop();
    }
    let a = writer.join().unwrap();
    let mut got = [0u8; 64];
    view.read(0, &mut got).unwrap();
    assert_eq!(got.to_vec(), (1..=64).collect::<Vec<u8>>());
    // What the view writes is what the engine reads back.
    view.write(8, &[0xAB; 4]).unwrap();
    assert_eq!(&read_all(&b, dst)[8..12], &[0xAB; 4]);
    // Accesses past the end are refused with what they asked for.
    assert!(matches!(
        view.load(64),
        Err(TransportError::OwnedOutOfRange {
            offset: 64,
            len: 1,
            seg_len: 64,
            ..
        })
    ));
    assert!(matches!(
        view.read(60, &mut got[..8]),
        Err(TransportError::OwnedOutOfRange {
            offset: 60,
            len: 8,
            ..
        })
    ));
    assert!(matches!(
        view.write(u64::MAX, &[1]),
        Err(TransportError::OwnedOutOfRange {
            offset: u64::MAX,
            ..
        })
    ));
    // The view holds the segment registered; once it is gone, so is the segment.
    assert!(matches!(
        b.unregister(dst),
        Err(TransportError::SegmentBusy { in_flight: 1, .. })
    ));
    drop(view);
    assert!(b.unregister(dst).unwrap().is_some());
    assert!(matches!(
        b.owned_view(dst),
        Err(TransportError::UnknownSegment(s)) if s == dst
    ));
    // Another engine's handle, and memory the application registered itself, have no view.
    assert!(matches!(
        b.owned_view(src),
        Err(TransportError::ForeignHandle { .. })
    ));
    let mut buf = vec![0u8; 64];
    // SAFETY: `buf` outlives the registration (unregistered below before it drops).
    let mine = unsafe {
        a.register_memory(
            "a/mine",
            buf.as_mut_ptr(),
            buf.len(),
            Location::Cpu(0),
            Access::NONE,
        )
    }
    .unwrap();
    assert!(matches!(a.owned_view(mine), Err(TransportError::NotOwned(s)) if s == mine));
    assert!(a.unregister(mine).unwrap().is_none());
}

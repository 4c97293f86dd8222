//! Deferred doorbells (`Worker::submit_deferred`) over the sim fabric, which moves the bytes when a
//! work request is posted: what is deferred has not reached the peer, and every way of ringing
//! (or discarding) ends it as documented.

mod common;

use std::time::Duration;

use common::*;
use transport::fabric::sim::SimConfig;
use transport::*;

const WAIT: Duration = Duration::from_secs(5);

/// Engine `a` writing to `b/dst` (64 bytes of 0xEE) from `a/src` (64 bytes of 7).
struct Pair {
    a: Engine,
    b: Engine,
    src: SegmentId,
    dst: SegmentId,
    remote: RemoteSegment,
}

fn pair(slice_size: Option<u64>) -> Pair {
    let c = Cluster::new();
    let mut cfg = EngineConfig::new("a");
    if let Some(s) = slice_size {
        cfg.slice_size = Some(s);
    }
    let (a, _) = c.engine_with(cfg, SimConfig::default());
    let (b, _) = c.engine("b", SimConfig::default());
    let src = owned(&a, "a/src", 64, Access::NONE, |_| 7);
    let dst = owned(&b, "b/dst", 64, Access::REMOTE_READ_WRITE, |_| 0xEE);
    let remote = a.open_segment("b/dst").unwrap();
    Pair {
        a,
        b,
        src,
        dst,
        remote,
    }
}

impl Pair {
    fn write(&self, offset: u64, len: u64) -> Request {
        Request::write(self.src, offset, self.remote, offset, len)
    }

    fn landed(&self) -> Vec<u8> {
        read_all(&self.b, self.dst)
    }
}

#[test]
fn deferred_work_waits_for_its_doorbell() {
    let p = pair(None);
    let mut w = p.a.worker().unwrap();
    let batch = p.a.allocate_batch(1).unwrap();
    assert_eq!(w.submit_deferred(batch, &[p.write(0, 64)]).unwrap(), 0);
    assert_eq!((w.deferred(), w.outstanding()), (1, 1));
    let st = p.a.batch_status(batch).unwrap();
    assert_eq!((st.submitted, st.pending), (1, 1));
    assert!(
        p.landed().iter().all(|&x| x == 0xEE),
        "no byte moves before the doorbell"
    );

    assert_eq!(w.post_deferred(), 1);
    assert_eq!(w.deferred(), 0);
    assert!(w.wait(batch, WAIT).unwrap().all_completed());
    assert_eq!(p.landed(), vec![7; 64]);
    assert_eq!(w.post_deferred(), 0, "nothing is left to post");
}

#[test]
fn wait_submit_and_progress_ring_the_doorbell() {
    let p = pair(None);
    let mut w = p.a.worker().unwrap();
    let batch = p.a.allocate_batch(4).unwrap();

    w.submit_deferred(batch, &[p.write(0, 16)]).unwrap();
    assert!(w.wait(batch, WAIT).unwrap().all_completed());

    // A plain submit posts what was deferred before it, in order.
    w.submit_deferred(batch, &[p.write(16, 16)]).unwrap();
    w.submit(batch, &[p.write(32, 16)]).unwrap();
    assert_eq!(w.deferred(), 0);

    w.submit_deferred(batch, &[p.write(48, 16)]).unwrap();
    w.progress();
    assert_eq!(w.deferred(), 0);
    assert!(w.wait(batch, WAIT).unwrap().all_completed());
    assert_eq!(p.a.batch_status(batch).unwrap().completed, 4);
    assert_eq!(p.landed(), vec![7; 64]);
}

#[test]
fn dropping_the_worker_rings_the_doorbell() {
    let p = pair(None);
    let batch = p.a.allocate_batch(1).unwrap();
    {
        let mut w = p.a.worker().unwrap();
        w.submit_deferred(batch, &[p.write(0, 64)]).unwrap();
    }
    // The drop posted it and applied its completion within the grace period.
    assert!(p.a.batch_status(batch).unwrap().all_completed());
    assert_eq!(p.landed(), vec![7; 64]);
    p.a.free_batch(batch).unwrap();
}

#[test]
fn discarded_work_never_reaches_the_peer() {
    let p = pair(None);
    let mut w = p.a.worker().unwrap();
    let batch = p.a.allocate_batch(2).unwrap();
    w.submit_deferred(batch, &[p.write(0, 32), p.write(32, 32)])
        .unwrap();
    assert_eq!(w.discard_deferred(), 2);
    assert_eq!((w.deferred(), w.outstanding()), (0, 0));
    let st = p.a.batch_status(batch).unwrap();
    assert_eq!((st.failed, st.pending), (2, 0));
    for i in 0..2 {
        assert_eq!(
            p.a.request_status(batch, i).unwrap(),
            RequestStatus::Failed(FailReason::Flushed)
        );
    }
    assert!(p.landed().iter().all(|&x| x == 0xEE));
    // A notifying request ends too, and counts no notification at the peer.
    let notify = p.write(0, 64).with_op(Opcode::WriteWithNotify(5));
    let batch = p.a.recycle_batch(batch).unwrap();
    w.submit_deferred(batch, &[notify]).unwrap();
    assert_eq!(w.discard_deferred(), 1);
    assert_eq!(
        p.a.request_status(batch, 0).unwrap(),
        RequestStatus::Failed(FailReason::Flushed)
    );
    assert_eq!(p.b.notifications().count(5).unwrap(), 0);
    // Nothing stays pinned or in flight: the batch recycles and the segment unregisters.
    let batch = p.a.recycle_batch(batch).unwrap();
    w.submit(batch, &[p.write(0, 64)]).unwrap();
    assert!(w.wait(batch, WAIT).unwrap().all_completed());
    assert_eq!(p.landed(), vec![7; 64]);
    p.a.free_batch(batch).unwrap();
    assert!(p.a.unregister(p.src).is_ok());
}

#[test]
fn deferred_work_beyond_the_post_queue_is_refused_whole() {
    // 1-byte slices: a request of n bytes is n work requests; the queue holds 64.
    let p = pair(Some(1));
    let mut w = p.a.worker().unwrap();
    let batch = p.a.allocate_batch(3).unwrap();
    w.submit_deferred(batch, &[p.write(0, 61)]).unwrap();
    let err = w
        .submit_deferred(batch, &[p.write(61, 3), p.write(0, 1)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::DeferredQueueFull {
                work_requests: 4,
                room: 3
            }
        ),
        "{err}"
    );
    // Nothing of the refused submit happened.
    assert_eq!(w.deferred(), 61);
    assert_eq!(p.a.batch_status(batch).unwrap().submitted, 1);
    assert!(p.landed().iter().all(|&x| x == 0xEE));
    w.submit_deferred(batch, &[p.write(61, 3)]).unwrap();
    assert_eq!(w.deferred(), 64, "a submit may fill the queue exactly");
    assert_eq!(w.post_deferred(), 64);
    assert!(w.wait(batch, WAIT).unwrap().all_completed());
    assert_eq!(p.landed(), vec![7; 64]);
}

#[test]
fn a_refused_deferred_submit_defers_nothing() {
    let p = pair(None);
    let mut w = p.a.worker().unwrap();
    let batch = p.a.allocate_batch(2).unwrap();
    let err = w
        .submit_deferred(batch, &[p.write(0, 16), p.write(60, 16)])
        .unwrap_err();
    assert!(
        matches!(err, TransportError::RemoteOutOfRange { index: 1, .. }),
        "{err}"
    );
    assert_eq!((w.deferred(), w.outstanding()), (0, 0));
    assert_eq!(p.a.batch_status(batch).unwrap().submitted, 0);
}

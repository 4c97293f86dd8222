//! Regression tests for the defects a hostile-input battery found (issue 15): each failed before
//! its fix.

mod common;

use std::time::Duration;

use common::*;
use transport::fabric::sim::SimConfig;
use transport::*;

const WAIT: Duration = Duration::from_secs(10);

/// Two workers share one batch: A submits valid single requests while B's submits fail
/// validation at their last request. A failed submit must leave the batch exactly as it was,
/// so in the end the batch holds A's requests only, every one completed.
#[test]
fn concurrent_failed_submits_leave_no_ghost_requests() {
    const A_SUBMITS: usize = 5_000;
    const B_SUBMITS: usize = 1_000;
    let c = Cluster::new();
    let (a, _) = c.engine("a", SimConfig::default());
    let (b, _) = c.engine("b", SimConfig::default());
    let src = owned(&a, "a/src", 4096, Access::NONE, |_| 1);
    owned(&b, "b/dst", 4096, Access::REMOTE_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    let batch = a.allocate_batch(A_SUBMITS).unwrap();
    let good = Request::write(src, 0, r, 0, 64);
    let mut bad: Vec<Request> = vec![good; 201];
    bad[200].len = 0;
    std::thread::scope(|s| {
        let a1 = a.clone();
        s.spawn(move || {
            let mut w = a1.worker().unwrap();
            for _ in 0..A_SUBMITS {
                w.submit(batch, &[good]).unwrap();
            }
            let st = w.wait(batch, WAIT).unwrap();
            assert_eq!(st.completed as usize, A_SUBMITS, "{st:?}");
        });
        let a2 = a.clone();
        let bad = &bad;
        s.spawn(move || {
            let mut w = a2.worker().unwrap();
            for _ in 0..B_SUBMITS {
                let e = w.submit(batch, bad).unwrap_err();
                assert!(
                    matches!(
                        e,
                        TransportError::ZeroLength { index: 200 }
                            | TransportError::BatchFull { .. }
                    ),
                    "{e}"
                );
            }
        });
    });
    let st = a.batch_status(batch).unwrap();
    assert_eq!(st.submitted as usize, A_SUBMITS, "ghost requests: {st:?}");
    assert!(st.all_completed(), "{st:?}");
    for i in 0..A_SUBMITS {
        assert_eq!(
            a.request_status(batch, i).unwrap(),
            RequestStatus::Completed
        );
    }
    a.free_batch(batch).unwrap();
}

/// Handles carry their engine: engine b's segment, remote segment and batch handles are
/// refused by engine a (they used to act on a's own objects with the same index).
#[test]
fn handles_of_another_engine_are_refused() {
    let c = Cluster::new();
    let (a, _) = c.engine("a", SimConfig::default());
    let (b, _) = c.engine("b", SimConfig::default());
    let a_seg = owned(&a, "a/src", 4096, Access::NONE, |_| 7);
    let b_seg = owned(&b, "b/kv", 4096, Access::REMOTE_WRITE, |_| 0);
    owned(&a, "a/kv", 4096, Access::REMOTE_WRITE, |_| 0);
    let a_remote = a.open_segment("b/kv").unwrap();
    let b_remote = b.open_segment("a/kv").unwrap();
    let a_batch = a.allocate_batch(4).unwrap();
    let b_batch = b.allocate_batch(4).unwrap();
    let foreign = |r: Result<(), TransportError>, what: &str| {
        let e = r.expect_err(what);
        assert!(
            matches!(e, TransportError::ForeignHandle { .. }),
            "{what}: {e}"
        );
        assert!(e.to_string().contains("engine"), "{what}: {e}");
    };
    let mut out = [0u8; 4];
    foreign(a.read_owned(b_seg, 0, &mut out), "read_owned");
    foreign(a.write_owned(b_seg, 0, &out), "write_owned");
    foreign(a.segment_info(b_seg).map(drop), "segment_info");
    foreign(a.unregister(b_seg).map(drop), "unregister");
    foreign(a.remote_descriptor(b_remote).map(drop), "remote_descriptor");
    foreign(a.close_segment(b_remote), "close_segment");
    foreign(a.batch_status(b_batch).map(drop), "batch_status");
    foreign(a.request_status(b_batch, 0).map(drop), "request_status");
    foreign(a.cancel(b_batch).map(drop), "cancel");
    foreign(a.free_batch(b_batch), "free_batch");
    foreign(a.recycle_batch(b_batch).map(drop), "recycle_batch");
    let mut w = a.worker().unwrap();
    let submit = |w: &mut Worker, batch, req| w.submit(batch, &[req]).map(drop);
    foreign(
        submit(&mut w, a_batch, Request::write(b_seg, 0, a_remote, 0, 4)),
        "submit: foreign local segment",
    );
    foreign(
        submit(&mut w, a_batch, Request::write(a_seg, 0, b_remote, 0, 4)),
        "submit: foreign remote segment",
    );
    foreign(
        submit(&mut w, b_batch, Request::write(a_seg, 0, a_remote, 0, 4)),
        "submit: foreign batch",
    );
    foreign(w.wait(b_batch, WAIT).map(drop), "wait");
    foreign(w.drain(b_batch, WAIT).map(drop), "drain");
    // Nothing of a's changed, and its own handles still work.
    assert_eq!(a.batch_status(a_batch).unwrap().submitted, 0);
    let mut back = [0u8; 4];
    a.read_owned(a_seg, 0, &mut back).unwrap();
    assert_eq!(back, [7; 4]);
    w.submit(a_batch, &[Request::write(a_seg, 0, a_remote, 0, 4)])
        .unwrap();
    assert!(w.wait(a_batch, WAIT).unwrap().all_completed());
    b.unregister(b_seg).unwrap();
}

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

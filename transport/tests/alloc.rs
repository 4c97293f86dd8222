//! The hot path allocates nothing: a counting global allocator sees zero allocations across
//! many submits and completions once the engine is warm.

mod common;
#[path = "common/alloc.rs"]
mod counting;

use std::time::Duration;

use common::*;
use counting::{allocs, assert_counting};
use transport::fabric::sim::SimConfig;
use transport::*;

#[test]
fn steady_state_submit_and_complete_allocate_nothing() {
    let c = Cluster::new();
    let sim = SimConfig {
        rails: 2,
        ..SimConfig::default()
    };
    let mut cfg = EngineConfig::new("a");
    cfg.slice_size = 4096;
    let (a, _) = c.engine_with(cfg, sim.clone());
    let (b, _) = c.engine("b", sim);
    let src = owned(&a, "a/src", 1 << 20, Access::NONE, |i| i as u8);
    owned(&b, "b/dst", 1 << 20, Access::REMOTE_READ_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    let mut w = a.worker().unwrap();
    let mut batch = a.allocate_batch(32).unwrap();
    // Small requests, sliced requests, reads and notifications: every hot-path branch.
    let reqs: Vec<Request> = (0..32u64)
        .map(|i| match i % 4 {
            0 => Request::write(src, i * 8, r, i * 8, 8),
            1 => Request::read(src, 4096 * i, r, 4096 * i, 10_000),
            2 => Request::write(src, 0, r, 1 << 19, 20_000).with_op(Opcode::WriteWithNotify(2)),
            _ => Request {
                local: LocalAddr::Segment {
                    segment: src,
                    offset: 512,
                },
                ..Request::write(src, 0, r, 1024, 8)
            },
        })
        .collect();
    let round = |w: &mut Worker, batch: &mut BatchId| {
        *batch = a.recycle_batch(*batch).unwrap();
        w.submit(*batch, &reqs).unwrap();
        let st = w.wait(*batch, Duration::from_secs(5)).unwrap();
        assert_eq!(st.completed, 32);
    };
    for _ in 0..50 {
        round(&mut w, &mut batch);
    }
    assert_counting();
    let before = allocs();
    let rounds = 2000;
    for _ in 0..rounds {
        round(&mut w, &mut batch);
    }
    let after = allocs();
    assert_eq!(
        after - before,
        0,
        "{} allocations in {rounds} rounds of 32 requests",
        after - before
    );
    assert_eq!(b.notifications().count(2).unwrap(), 8 * (rounds + 50));
}

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
    cfg.slice_size = Some(4096);
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
    // A flag byte past every request's bytes, written and polled through a view.
    let view = a.owned_view(src).unwrap();
    let flag = (1 << 20) - 1;
    let round = |w: &mut Worker, batch: &mut BatchId| {
        let seq = view.load(flag).unwrap().wrapping_add(1);
        view.write(flag, &[seq]).unwrap();
        assert_eq!(view.load(flag).unwrap(), seq);
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
    // Metrics (on by default) counted every one of those requests, with no allocation.
    let m = a.metrics();
    assert!(m.enabled);
    let submits = rounds + 50;
    assert_eq!(m.completed, 32 * submits);
    // One submit call in LATENCY_SAMPLE_EVERY is timed, the first included.
    let every = metrics::LATENCY_SAMPLE_EVERY as u64;
    assert_eq!(m.latency.count, 32 * submits.div_ceil(every));

    // Deferred doorbells (`Worker::submit_deferred`, 8 requests: 20 work requests) allocate
    // nothing either: submitted ahead, posted by `post_deferred`, or by the wait.
    let eight = &reqs[..8];
    let before = allocs();
    for i in 0..1000 {
        batch = a.recycle_batch(batch).unwrap();
        w.submit_deferred(batch, eight).unwrap();
        if i % 2 == 0 {
            assert_eq!(w.post_deferred(), 20);
        }
        assert_eq!(w.wait(batch, Duration::from_secs(5)).unwrap().completed, 8);
    }
    assert_eq!(allocs() - before, 0, "deferred submits allocated");
}

/// Batch memory follows what is used: allocating the largest batch costs little until requests
/// are submitted, and freeing it gives its request storage back (all but a first chunk kept
/// for allocation-free reuse). It used to cost 28 MiB per batch at once, kept for good.
#[test]
fn batch_memory_follows_use_and_is_given_back() {
    let c = Cluster::new();
    let (a, _) = c.engine("a", SimConfig::default());
    let (b, _) = c.engine("b", SimConfig::default());
    let (src, r) = write_path(&a, &b);
    let mut w = a.worker().unwrap();
    let req = Request::write(src, 0, r, 0, 64);
    // Warm the worker's buffers so they do not count below.
    let warm = a.allocate_batch(4096).unwrap();
    w.submit(warm, &vec![req; 4096]).unwrap();
    w.wait(warm, Duration::from_secs(5)).unwrap();
    a.free_batch(warm).unwrap();

    let before = counting::net_bytes();
    let batches: Vec<BatchId> = (0..16)
        .map(|_| a.allocate_batch(MAX_BATCH_CAPACITY as usize).unwrap())
        .collect();
    let allocated = counting::net_bytes() - before;
    assert!(
        allocated < 256 << 10,
        "16 empty batches of {MAX_BATCH_CAPACITY} take {allocated} bytes"
    );
    for &batch in &batches {
        w.submit(batch, &vec![req; 3000]).unwrap();
        assert!(w
            .wait(batch, Duration::from_secs(5))
            .unwrap()
            .all_completed());
    }
    let used = counting::net_bytes() - before;
    assert!(
        used < 16 * (3000 * 64 + (64 << 10)),
        "16 batches of 3000 requests take {used} bytes"
    );
    for batch in batches {
        a.free_batch(batch).unwrap();
    }
    let kept = counting::net_bytes() - before;
    // Each batch keeps its first chunk of 1024 requests (72 bytes each) and its chunk table.
    assert!(kept < 16 * (84 << 10), "{kept} bytes kept after free");
}

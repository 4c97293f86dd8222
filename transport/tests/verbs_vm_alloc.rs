//! The verbs fabric's hot path allocates nothing: a counting global allocator sees zero
//! allocations on the posting thread across many submits and completions over a real verbs
//! device, once the connection is warm. Runs in the VM stage (tests/vm).
#![cfg(feature = "rdma")]

#[path = "common/alloc.rs"]
mod counting;

use std::sync::Arc;
use std::time::Duration;

use counting::{allocs, assert_counting};
use transport::fabric::verbs::{VerbsConfig, VerbsFabric};
use transport::*;

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_verbs_steady_state_allocates_nothing() {
    let meta = Arc::new(LocalRegistry::new());
    let mk = |name: &str| {
        let mut c = EngineConfig::new(name);
        c.slice_size = Some(4096);
        Engine::new(
            c,
            VerbsFabric::new(VerbsConfig::default()).unwrap(),
            meta.clone(),
        )
        .unwrap()
    };
    let (a, b) = (mk("a"), mk("b"));
    let src = a
        .register_owned(
            "a/src",
            OwnedMemory::zeroed(1 << 20, 4096).unwrap(),
            Location::Cpu(0),
            Access::NONE,
        )
        .unwrap();
    b.register_owned(
        "b/dst",
        OwnedMemory::zeroed(1 << 20, 4096).unwrap(),
        Location::Cpu(0),
        Access::REMOTE_READ_WRITE,
    )
    .unwrap();
    let r = a.open_segment("b/dst").unwrap();
    let mut w = a.worker().unwrap();
    let mut batch = a.allocate_batch(16).unwrap();
    // Small and sliced writes, reads, notifications.
    let reqs: Vec<Request> = (0..16u64)
        .map(|i| match i % 4 {
            0 => Request::write(src, i * 8, r, i * 8, 8),
            1 => Request::read(src, 4096 * i, r, 4096 * i, 10_000),
            2 => Request::write(src, 0, r, 1 << 19, 9000).with_op(Opcode::WriteWithNotify(2)),
            _ => Request::write(src, 512, r, 1024, 8),
        })
        .collect();
    let round = |w: &mut Worker, batch: &mut BatchId| {
        *batch = a.recycle_batch(*batch).unwrap();
        w.submit(*batch, &reqs).unwrap();
        let st = w.wait(*batch, Duration::from_secs(30)).unwrap();
        assert_eq!(st.completed, 16, "{st:?}");
    };
    for _ in 0..10 {
        round(&mut w, &mut batch);
    }
    assert_counting();
    let before = allocs();
    let rounds = 200;
    for _ in 0..rounds {
        round(&mut w, &mut batch);
    }
    let after = allocs();
    assert_eq!(
        after - before,
        0,
        "{} allocations in {rounds} rounds of 16 requests",
        after - before
    );
    let expect = 4 * (rounds + 10);
    assert_eq!(
        b.notifications()
            .wait_for(2, expect, Duration::from_secs(30))
            .unwrap(),
        expect
    );
}

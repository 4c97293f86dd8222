//! A worker in `WaitMode::Block` on the `efa` fabric blocks on its endpoint's completion
//! channels: while a READ goes unanswered (soft-efa drops every packet, so the request ends
//! `UNRESPONSIVE_REMOTE` after the device's retry budget, 2 s), the waiting thread uses under
//! 2% of a core and sleeps a few dozen times (once per `BLOCK_BOUND`) rather than once per
//! sleeping pause (about 190 over 2 s). Bounds on the thread's own rusage, not timing assertions.
//!
//! Its own test binary, because the packet loss is set for the whole process before the device
//! opens. Run on soft-efa (`tests/soft-efa/stage` does):
//! `LD_LIBRARY_PATH=$(tests/soft-efa/run --lib-dir) SOFT_EFA_PROFILE=newest cargo test -p transport --test efa_block -- --ignored`
#![cfg(feature = "rdma")]

#[path = "common/usage.rs"]
mod usage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::fabric::efa::{EfaConfig, EfaFabric};
use transport::*;
use usage::thread_usage;

#[test]
#[ignore = "needs EFA hardware that loses every packet: soft-efa (see the module docs)"]
fn efa_hw_a_blocked_worker_sleeps_on_its_completion_channels() {
    // Before any device opens: soft-efa reads its faults once per process.
    std::env::set_var("SOFT_EFA_FAULTS", "loss=1,seed=1");
    let meta = Arc::new(LocalRegistry::new());
    let mk = |name: &str| {
        let f = EfaFabric::new(EfaConfig::default()).expect("an EFA device");
        let mut c = EngineConfig::new(name);
        c.wait = WaitMode::Block;
        Engine::new(c, f, meta.clone()).unwrap()
    };
    let (a, b) = (mk("a"), mk("b"));
    a.accept_peer(&b.local_addresses()).unwrap();
    b.accept_peer(&a.local_addresses()).unwrap();
    let sink = a
        .register_owned(
            "a/sink",
            OwnedMemory::zeroed(4096, 4096).unwrap(),
            Location::Cpu(0),
            Access::NONE,
        )
        .unwrap();
    b.register_owned(
        "b/src",
        OwnedMemory::zeroed(4096, 4096).unwrap(),
        Location::Cpu(0),
        Access::REMOTE_READ,
    )
    .unwrap();
    let remote = a.open_segment("b/src").unwrap();
    let mut w = a.worker().unwrap();
    assert_eq!(w.wait_mode(), WaitMode::Block);
    let batch = a.allocate_batch(1).unwrap();
    w.submit(batch, &[Request::read(sink, 0, remote, 0, 4096)])
        .unwrap();
    let (t0, (cpu0, switches0)) = (Instant::now(), thread_usage());
    let st = w.wait(batch, Duration::from_secs(30)).unwrap();
    let (elapsed, (cpu1, switches1)) = (t0.elapsed(), thread_usage());
    let (cpu, switches) = (cpu1 - cpu0, switches1 - switches0);
    println!("blocked worker: {cpu:?} of CPU and {switches} sleeps over {elapsed:?}");
    assert_eq!(
        a.request_status(batch, 0).unwrap(),
        RequestStatus::Failed(FailReason::UnresponsiveRemote),
        "{st:?}"
    );
    assert!(
        elapsed >= Duration::from_secs(1),
        "the request ended after {elapsed:?}: not the device's retry budget"
    );
    assert!(
        cpu * 50 < elapsed,
        "{cpu:?} of CPU over {elapsed:?}: 2% of a core or more"
    );
    // Sleeping pauses (growing from 20 us with the time waited, see `wait.rs`) would be about
    // 190 over 2 s; blocks of up to 50 ms on the channels are a few dozen.
    let bound = 2 * elapsed.as_millis() as i64 / BLOCK_BOUND.as_millis() as i64 + 20;
    assert!(
        switches <= bound,
        "{switches} sleeps over {elapsed:?} (at most {bound} when blocking on channels)"
    );
}

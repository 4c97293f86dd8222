//! Retries: a slice that fails on one rail for a transient reason completes on another (or on
//! the same one after a backoff); permanent failures are never retried; retries are bounded and
//! counted.

mod common;

use std::time::Duration;

use common::*;
use transport::fabric::sim::{SimConfig, SimFabric, SimFaults};
use transport::*;

const SLICE: u64 = 4096;
const SLICES: u64 = 4;
const REQUESTS: u64 = 32;

struct Pair {
    a: Engine,
    a_fabric: std::sync::Arc<SimFabric>,
    b: Engine,
    src: SegmentId,
    dst: SegmentId,
    remote: RemoteSegment,
}

fn pair(c: &Cluster, rails: u16, retry: RetryPolicy) -> Pair {
    let sim = SimConfig {
        rails,
        ..SimConfig::default()
    };
    pair_on(c, sim, retry)
}

fn pair_on(c: &Cluster, sim: SimConfig, retry: RetryPolicy) -> Pair {
    let mut cfg = EngineConfig::new("a");
    cfg.slice_size = Some(SLICE);
    cfg.retry = retry;
    let (a, a_fabric) = c.engine_with(cfg, sim.clone());
    let (b, _) = c.engine("b", sim);
    let len = (REQUESTS * SLICES * SLICE) as usize;
    let src = owned(&a, "a/src", len, Access::NONE, |i| (i % 253) as u8 + 1);
    let dst = owned(&b, "b/dst", len, Access::REMOTE_READ_WRITE, |_| 0);
    let remote = a.open_segment("b/dst").unwrap();
    Pair {
        a,
        a_fabric,
        b,
        src,
        dst,
        remote,
    }
}

/// Writes the whole source over `REQUESTS` requests of `SLICES` slices, every fourth with a
/// notification (tag 7); returns the batch status.
fn write_all(p: &Pair) -> BatchStatus {
    write_all_notifying(p, 4)
}

/// [`write_all`] with a notification on every `every`-th request.
fn write_all_notifying(p: &Pair, every: u64) -> BatchStatus {
    write_requests(p, SLICES, every)
}

/// `REQUESTS` WRITEs of `slices` slices each from the start of the source, a notification (tag
/// 7) on every `every`-th; returns the batch status.
fn write_requests(p: &Pair, slices: u64, every: u64) -> BatchStatus {
    let reqs: Vec<Request> = (0..REQUESTS)
        .map(|i| {
            let (off, len) = (i * slices * SLICE, slices * SLICE);
            let r = Request::write(p.src, off, p.remote, off, len);
            if i % every == 0 {
                r.with_op(Opcode::WriteWithNotify(7))
            } else {
                r
            }
        })
        .collect();
    let mut w = p.a.worker().unwrap();
    let batch = p.a.allocate_batch(reqs.len()).unwrap();
    w.submit(batch, &reqs).unwrap();
    w.wait(batch, Duration::from_secs(10)).unwrap()
}

#[test]
fn slices_failing_on_one_rail_complete_on_the_other() {
    let c = Cluster::new();
    let p = pair(&c, 2, RetryPolicy::default());
    p.a_fabric
        .set_rail_fault(1, Some(FailReason::UnreachableRemote));
    let st = write_all(&p);
    assert!(st.all_completed(), "{st:?}");
    assert_eq!(read_all(&p.b, p.dst), read_all(&p.a, p.src));
    assert_eq!(p.b.notifications().count(7).unwrap(), REQUESTS / 4);
    // Slices alternate between the rails, so half of them went to rail 1, failed and were
    // retried once on rail 0. Notifications follow the last completion's rail (rail 0).
    assert_eq!(p.a.retries(), REQUESTS * SLICES / 2);
    let m = p.a.metrics();
    assert_eq!(m.retries, REQUESTS * SLICES / 2);
    assert_eq!(m.completed, REQUESTS);
    assert!(m.failures.is_empty(), "{:?}", m.failures);
}

#[test]
fn a_notification_waits_for_room_a_retry_took() {
    // Two work requests per rail and completions delayed at random: a retry moved onto rail 0
    // often takes the slot a request's completed last slice freed there, and that request's
    // notification must then wait for room, not fail.
    const ROUNDS: u64 = 20;
    let c = Cluster::new();
    let sim = SimConfig {
        rails: 2,
        queue_depth: 2,
        faults: SimFaults {
            max_delay_steps: 3,
            ..SimFaults::default()
        },
        ..SimConfig::default()
    };
    let p = pair_on(&c, sim, RetryPolicy::default());
    p.a_fabric
        .set_rail_fault(1, Some(FailReason::UnreachableRemote));
    for round in 0..ROUNDS {
        let st = write_all_notifying(&p, 1);
        assert!(st.all_completed(), "round {round}: {st:?}");
    }
    assert_eq!(read_all(&p.b, p.dst), read_all(&p.a, p.src));
    assert_eq!(p.b.notifications().count(7).unwrap(), ROUNDS * REQUESTS);
    // Every slice on rail 1 was retried once, and so was every notification that followed a
    // last completion on rail 1; notifications waiting for room are no retries.
    let slices = ROUNDS * REQUESTS * SLICES / 2;
    let retries = p.a.retries();
    assert!(
        (slices..=slices + ROUNDS * REQUESTS).contains(&retries),
        "{retries} retries for {slices} slices on rail 1"
    );
    assert!(p.a.metrics().failures.is_empty());
}

#[test]
fn a_one_slice_write_with_notification_retried_on_the_other_rail_counts_once() {
    // One slice each: the tag travels with the WRITE (one work request). Those posted on the
    // failing rail are posted again on the other, with their tag.
    let c = Cluster::new();
    let p = pair(&c, 2, RetryPolicy::default());
    p.a_fabric
        .set_rail_fault(1, Some(FailReason::UnreachableRemote));
    let st = write_requests(&p, 1, 1);
    assert!(st.all_completed(), "{st:?}");
    let len = (REQUESTS * SLICE) as usize;
    assert_eq!(read_all(&p.b, p.dst)[..len], read_all(&p.a, p.src)[..len]);
    assert_eq!(p.b.notifications().count(7).unwrap(), REQUESTS);
    assert_eq!(p.a.retries(), REQUESTS / 2);
}

#[test]
fn permanent_failures_are_not_retried() {
    let c = Cluster::new();
    let p = pair(&c, 2, RetryPolicy::default());
    p.a_fabric
        .set_rail_fault(1, Some(FailReason::RemoteBadAddress));
    let st = write_all(&p);
    assert_eq!(st.failed, REQUESTS as u32, "{st:?}");
    assert_eq!(p.a.retries(), 0);
}

#[test]
fn one_rail_retries_after_a_backoff_until_the_budget_is_spent() {
    let c = Cluster::new();
    let policy = RetryPolicy {
        max_retries: 2,
        backoff: Duration::from_micros(100),
    };
    let p = pair(&c, 1, policy);
    p.a_fabric.set_rail_fault(0, Some(FailReason::Io));
    let mut w = p.a.worker().unwrap();
    let batch = p.a.allocate_batch(1).unwrap();
    let len = SLICES * SLICE;
    w.submit(batch, &[Request::write(p.src, 0, p.remote, 0, len)])
        .unwrap();
    let st = w.wait(batch, Duration::from_secs(10)).unwrap();
    assert_eq!(st.failed, 1, "{st:?}");
    assert_eq!(
        p.a.request_status(batch, 0).unwrap(),
        RequestStatus::Failed(FailReason::Io)
    );
    // Two retries per slice, over the request.
    assert_eq!(p.a.retries(), 2 * SLICES);
}

#[test]
fn a_silent_peer_is_not_asked_again_on_the_same_rail() {
    let c = Cluster::new();
    let p = pair(&c, 1, RetryPolicy::default());
    p.a_fabric
        .set_rail_fault(0, Some(FailReason::UnresponsiveRemote));
    let mut w = p.a.worker().unwrap();
    let batch = p.a.allocate_batch(1).unwrap();
    w.submit(batch, &[Request::write(p.src, 0, p.remote, 0, SLICE)])
        .unwrap();
    let st = w.wait(batch, Duration::from_secs(10)).unwrap();
    assert_eq!(st.failed, 1, "{st:?}");
    assert_eq!(
        p.a.request_status(batch, 0).unwrap(),
        RequestStatus::Failed(FailReason::UnresponsiveRemote)
    );
    assert_eq!(p.a.retries(), 0);
}

#[test]
fn a_fault_that_clears_during_the_backoff_is_ridden_out() {
    let c = Cluster::new();
    let policy = RetryPolicy {
        max_retries: 3,
        backoff: Duration::from_millis(20),
    };
    let p = pair(&c, 1, policy);
    p.a_fabric.set_rail_fault(0, Some(FailReason::RemoteRnr));
    let mut w = p.a.worker().unwrap();
    let batch = p.a.allocate_batch(1).unwrap();
    w.submit(batch, &[Request::write(p.src, 0, p.remote, 0, SLICE)])
        .unwrap();
    // The first failure is taken and held for its backoff; the fault clears meanwhile.
    assert_eq!(w.progress(), 1);
    assert_eq!(w.outstanding(), 1, "the retry is held");
    p.a_fabric.set_rail_fault(0, None);
    let st = w.wait(batch, Duration::from_secs(10)).unwrap();
    assert!(st.all_completed(), "{st:?}");
    assert_eq!(p.a.retries(), 1);
    assert_eq!(
        read_all(&p.b, p.dst)[..SLICE as usize],
        read_all(&p.a, p.src)[..SLICE as usize]
    );
}

#[test]
fn retries_can_be_turned_off_and_are_bounded_in_config() {
    let c = Cluster::new();
    let p = pair(&c, 2, RetryPolicy::OFF);
    p.a_fabric
        .set_rail_fault(1, Some(FailReason::UnreachableRemote));
    let st = write_all(&p);
    assert_eq!(st.failed, REQUESTS as u32, "{st:?}");
    assert_eq!(p.a.retries(), 0);

    let mut cfg = EngineConfig::new("c");
    cfg.retry.max_retries = retry::MAX_RETRIES + 1;
    let fabric = SimFabric::new(&c.net, SimConfig::default()).unwrap();
    match Engine::new(cfg, fabric, c.meta.clone()) {
        Err(TransportError::Config(msg)) => {
            assert!(msg.contains("retry.max_retries = 17"), "{msg}")
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

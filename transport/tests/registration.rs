//! Registration on the rails the policy uses for the memory's location only
//! (`EngineConfig::register_policy_rails_only`), on a two-rail sim whose registrations refuse
//! requests on rails they are not registered on.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use transport::fabric::sim::SimConfig;
use transport::*;

const WAIT: Duration = Duration::from_secs(5);

fn two_rails() -> SimConfig {
    SimConfig {
        rails: 2,
        ..SimConfig::default()
    }
}

/// An engine whose CPU 0 memory uses rail 1 only, registering it there alone when `local`.
fn engine_on_rail1(c: &Cluster, name: &str, local: bool) -> Engine {
    let mut cfg = EngineConfig::new(name);
    cfg.rail_policy = Arc::new(AffinityTable::new().with(Location::Cpu(0), &[1]));
    cfg.register_policy_rails_only = local;
    cfg.slice_size = Some(4096);
    c.engine_with(cfg, two_rails()).0
}

#[test]
fn memory_is_registered_on_its_policy_rails_only_and_peers_reach_it_there() {
    let c = Cluster::new();
    let b = engine_on_rail1(&c, "b", true);
    let mut acfg = EngineConfig::new("a");
    acfg.slice_size = Some(4096);
    let (a, _) = c.engine_with(acfg, two_rails());
    let kv = owned(&b, "b/kv", 1 << 16, Access::REMOTE_READ_WRITE, |_| 0);
    let report = b.segment_info(kv).unwrap().registration;
    assert_eq!(report.rails.as_slice(), &[1]);
    // Memory elsewhere (no policy entry: all rails) is registered on both.
    let other = b
        .register_owned(
            "b/other",
            OwnedMemory::zeroed(4096, 4096).unwrap(),
            Location::Cpu(1),
            Access::REMOTE_READ,
        )
        .unwrap();
    assert_eq!(
        b.segment_info(other).unwrap().registration.rails.as_slice(),
        &[0, 1]
    );

    // A stripes 16 KiB over both of its rails; every slice lands on B's rail 1 (the sim
    // refuses a key on a rail it is not registered on, so a slice sent to rail 0 would fail).
    let src = owned(&a, "a/src", 1 << 16, Access::REMOTE_READ_WRITE, |i| i as u8);
    let remote = a.open_segment("b/kv").unwrap();
    let desc = a.remote_descriptor(remote).unwrap();
    assert!(desc.rails[0].key.is_empty() && !desc.rails[1].key.is_empty());
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(2).unwrap();
    w.submit(
        batch,
        &[
            Request::write(src, 0, remote, 0, 16384),
            Request::read(src, 32768, remote, 0, 8192),
        ],
    )
    .unwrap();
    assert!(w.wait(batch, WAIT).unwrap().all_completed());
    let m = a.metrics();
    assert_eq!(m.rails.len(), 2, "A used both of its rails: {:?}", m.rails);
    let got = read_all(&b, kv);
    assert!(got[..16384].iter().enumerate().all(|(i, &x)| x == i as u8));
    a.free_batch(batch).unwrap();

    // B's own transfers from the segment use rail 1 alone.
    let a_src = b.open_segment("a/src").unwrap();
    let mut wb = b.worker().unwrap();
    let batch = b.allocate_batch(1).unwrap();
    wb.submit(batch, &[Request::write(kv, 0, a_src, 0, 16384)])
        .unwrap();
    assert!(wb.wait(batch, WAIT).unwrap().all_completed());
    let rails: Vec<u16> = b.metrics().rails.iter().map(|r| r.rail).collect();
    assert_eq!(rails, vec![1]);
}

#[test]
fn without_the_option_every_rail_is_registered() {
    let c = Cluster::new();
    let b = engine_on_rail1(&c, "b", false);
    let kv = owned(&b, "b/kv", 4096, Access::REMOTE_WRITE, |_| 0);
    assert_eq!(
        b.segment_info(kv).unwrap().registration.rails.as_slice(),
        &[0, 1]
    );
    // Transfers still follow the policy.
    assert_eq!(b.segment_info(kv).unwrap().rails.as_slice(), &[1]);
}

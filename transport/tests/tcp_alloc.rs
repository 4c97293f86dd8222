//! The tcp fabric's hot path allocates nothing: once a worker's streams exist, submits and
//! completions over real sockets make no allocation on the worker's thread, and (the whole
//! process being counted) the target's service threads make none per request either.

#[path = "common/alloc.rs"]
mod counting;

use std::time::Duration;

use counting::{allocs, assert_counting, stop_watching, watch_all};
use transport::discovery::{DiscoveryConfig, PeerMetadata};
use transport::fabric::tcp::{TcpConfig, TcpFabric};
use transport::*;

#[test]
fn tcp_steady_state_submit_and_complete_allocate_nothing() {
    let node = |name: &str| {
        let f = TcpFabric::new(TcpConfig {
            rails: 2,
            queue_depth: 16,
            ..TcpConfig::default()
        })
        .unwrap();
        let m = PeerMetadata::bind(DiscoveryConfig::new(name)).unwrap();
        m.attach_fabric(f.clone());
        let mut cfg = EngineConfig::new(name);
        cfg.slice_size = Some(16 << 10);
        (Engine::new(cfg, f, m.clone()).unwrap(), m)
    };
    let (a, _ma) = node("a");
    let (b, mb) = node("b");
    let mem = |v: Vec<u8>| OwnedMemory::from_vec(v).unwrap();
    let src = a
        .register_owned("src", mem(vec![5; 1 << 20]), Location::Cpu(0), Access::NONE)
        .unwrap();
    let sink = a
        .register_owned(
            "sink",
            mem(vec![0; 1 << 20]),
            Location::Cpu(0),
            Access::NONE,
        )
        .unwrap();
    let dst = b
        .register_owned(
            "dst",
            mem(vec![0; 1 << 20]),
            Location::Cpu(0),
            Access::REMOTE_READ_WRITE,
        )
        .unwrap();
    let r = a.open_segment(&format!("{}/dst", mb.local_addr())).unwrap();
    let mut w = a.worker().unwrap();
    let reqs = [
        Request::write(src, 0, r, 0, 300_000),
        Request::read(sink, 4096, r, 8192, 70_000),
        Request::write(src, 500_000, r, 500_000, 1000).with_op(Opcode::WriteWithNotify(1)),
    ];
    let mut batch = a.allocate_batch(reqs.len()).unwrap();
    let round = |w: &mut Worker, batch: &mut BatchId| {
        w.submit(*batch, &reqs).unwrap();
        let st = w.wait(*batch, Duration::from_secs(20)).unwrap();
        assert!(st.all_completed(), "{st:?}");
        *batch = a.recycle_batch(*batch).unwrap();
    };
    // Warm-up: streams, rings and service threads come to life.
    for _ in 0..5 {
        round(&mut w, &mut batch);
    }
    assert_counting();
    let before = allocs();
    watch_all();
    for _ in 0..200 {
        round(&mut w, &mut batch);
    }
    let everywhere = stop_watching();
    assert_eq!(allocs() - before, 0, "allocations on the worker's hot path");
    assert_eq!(
        everywhere, 0,
        "allocations on any thread, the target's service threads included"
    );
    assert_eq!(b.notifications().count(1).unwrap(), 205);
    let mut got = vec![0u8; 1000];
    b.read_owned(dst, 500_000, &mut got).unwrap();
    assert_eq!(got, vec![5; 1000]);
}

//! The multi-fabric endpoint allocates nothing: one engine on sim and tcp, one batch to a
//! peer on each, and the counting allocator sees no allocation once warm.

#[path = "common/alloc.rs"]
mod counting;

use std::sync::Arc;
use std::time::Duration;

use counting::{allocs, assert_counting};
use transport::fabric::multi::MultiFabric;
use transport::fabric::sim::{SimConfig, SimFabric, SimNetwork};
use transport::fabric::tcp::{TcpConfig, TcpFabric};
use transport::*;

/// One engine on sim and tcp, one batch to a peer on each: the multi-fabric endpoint splits the
/// runs between its members without allocating.
#[test]
fn multi_fabric_submit_and_complete_allocate_nothing() {
    let net = SimNetwork::new();
    let meta: Arc<dyn Metadata> = Arc::new(LocalRegistry::new());
    let tcp = || TcpFabric::new(TcpConfig::default()).unwrap();
    let sim = || SimFabric::new(&net, SimConfig::default()).unwrap();
    let mut cfg = EngineConfig::new("a");
    cfg.slice_size = Some(16 << 10);
    let a = Engine::new(
        cfg,
        MultiFabric::new(vec![sim(), tcp()]).unwrap(),
        meta.clone(),
    );
    let a = a.unwrap();
    let b = Engine::new(
        EngineConfig::new("b"),
        MultiFabric::new(vec![sim(), tcp()]).unwrap(),
        meta.clone(),
    )
    .unwrap();
    let c = Engine::new(EngineConfig::new("c"), tcp(), meta).unwrap();
    let mem = |v: Vec<u8>| OwnedMemory::from_vec(v).unwrap();
    let (cpu, rw) = (Location::Cpu(0), Access::REMOTE_READ_WRITE);
    let src = a
        .register_owned("src", mem(vec![5; 1 << 18]), cpu, Access::NONE)
        .unwrap();
    b.register_owned("b/dst", mem(vec![0; 1 << 18]), cpu, rw)
        .unwrap();
    c.register_owned("c/dst", mem(vec![0; 1 << 18]), cpu, rw)
        .unwrap();
    let (rb, rc) = (
        a.open_segment("b/dst").unwrap(),
        a.open_segment("c/dst").unwrap(),
    );
    assert_eq!(a.remote_fabric(rb).unwrap(), "sim");
    assert_eq!(a.remote_fabric(rc).unwrap(), "tcp");
    let reqs = [
        Request::write(src, 0, rb, 0, 100_000),
        Request::write(src, 0, rc, 0, 100_000),
        Request::read(src, 1 << 17, rb, 0, 20_000),
        Request::read(src, 1 << 17, rc, 0, 20_000),
        Request::write(src, 0, rc, 4096, 8).with_op(Opcode::WriteWithNotify(2)),
    ];
    let mut w = a.worker().unwrap();
    let mut batch = a.allocate_batch(reqs.len()).unwrap();
    let round = |w: &mut Worker, batch: &mut BatchId| {
        w.submit(*batch, &reqs).unwrap();
        let st = w.wait(*batch, Duration::from_secs(20)).unwrap();
        assert!(st.all_completed(), "{st:?}");
        *batch = a.recycle_batch(*batch).unwrap();
    };
    for _ in 0..5 {
        round(&mut w, &mut batch);
    }
    assert_counting();
    let before = allocs();
    for _ in 0..200 {
        round(&mut w, &mut batch);
    }
    assert_eq!(allocs() - before, 0, "allocations on the worker's hot path");
    assert_eq!(c.notifications().count(2).unwrap(), 205);
}

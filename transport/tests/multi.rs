//! One engine on two fabrics: it reaches a peer that has both over the preferred one and a
//! peer that has only TCP over TCP, and a TCP-only peer reaches it back.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{owned, read_all};
use transport::discovery::{DiscoveryConfig, PeerMetadata};
use transport::fabric::multi::MultiFabric;
use transport::fabric::sim::{SimConfig, SimFabric, SimNetwork};
use transport::fabric::tcp::{TcpConfig, TcpFabric};
use transport::fabric::Fabric;
use transport::*;

/// An engine on sim (preferred) and TCP; returns its TCP member to read its counters.
fn sim_and_tcp(
    net: &Arc<SimNetwork>,
    meta: &Arc<dyn Metadata>,
    name: &str,
) -> (Engine, Arc<TcpFabric>) {
    let tcp = TcpFabric::new(TcpConfig::default()).unwrap();
    let sim = SimFabric::new(net, SimConfig::default()).unwrap();
    let fabric = MultiFabric::new(vec![sim, tcp.clone()]).unwrap();
    assert_eq!(fabric.name(), "sim+tcp");
    let engine = Engine::new(EngineConfig::new(name), fabric, meta.clone()).unwrap();
    (engine, tcp)
}

fn tcp_only(meta: &Arc<dyn Metadata>, name: &str) -> (Engine, Arc<TcpFabric>) {
    let tcp = TcpFabric::new(TcpConfig::default()).unwrap();
    let engine = Engine::new(EngineConfig::new(name), tcp.clone(), meta.clone()).unwrap();
    (engine, tcp)
}

/// Writes `len` bytes of `fill` from `from`'s segment `src` into `remote` at offset 0, then
/// reads them back into `src` at `len`; returns the batch status.
fn write_then_read(from: &Engine, src: SegmentId, remote: RemoteSegment, len: u64) {
    let mut w = from.worker().unwrap();
    let batch = from.allocate_batch(2).unwrap();
    let reqs = [
        Request::write(src, 0, remote, 0, len),
        Request::read(src, len, remote, 0, len),
    ];
    w.submit(batch, &reqs[..1]).unwrap();
    assert!(w
        .wait(batch, Duration::from_secs(5))
        .unwrap()
        .all_completed());
    let batch = from.recycle_batch(batch).unwrap();
    w.submit(batch, &reqs[1..]).unwrap();
    assert!(w
        .wait(batch, Duration::from_secs(5))
        .unwrap()
        .all_completed());
}

#[test]
fn one_engine_reaches_each_peer_over_the_fabric_both_have() {
    let net = SimNetwork::new();
    let meta: Arc<dyn Metadata> = Arc::new(LocalRegistry::new());
    let (a, a_tcp) = sim_and_tcp(&net, &meta, "a");
    let (b, b_tcp) = sim_and_tcp(&net, &meta, "b");
    let (c, c_tcp) = tcp_only(&meta, "c");

    let len = 64 << 10;
    let src = owned(
        &a,
        "a/src",
        2 * len as usize,
        Access::REMOTE_READ_WRITE,
        |i| (i % 251) as u8,
    );
    let rw = Access::REMOTE_READ_WRITE;
    let on_b = owned(&b, "b/dst", len as usize, rw, |_| 0);
    let on_c = owned(&c, "c/dst", len as usize, rw, |_| 0);

    // a -> b: both speak sim, a's first choice; b's TCP service sees nothing.
    let rb = a.open_segment("b/dst").unwrap();
    assert_eq!(a.remote_fabric(rb).unwrap(), "sim");
    write_then_read(&a, src, rb, len);
    assert_eq!(read_all(&b, on_b), read_all(&a, src)[..len as usize]);
    assert_eq!(b_tcp.stats().served, 0, "b was reached over tcp");

    // a -> c: c offers only TCP, and serves the requests.
    let rc = a.open_segment("c/dst").unwrap();
    assert_eq!(a.remote_fabric(rc).unwrap(), "tcp");
    write_then_read(&a, src, rc, len);
    assert_eq!(read_all(&c, on_c), read_all(&a, src)[..len as usize]);
    assert!(c_tcp.stats().served >= 2, "{:?}", c_tcp.stats());

    // c -> a: a's descriptor offers sim first, tcp second; c takes the tcp offer.
    let mirror = owned(&c, "c/src", 2 * len as usize, rw, |i| (i % 13) as u8);
    let ra = c.open_segment("a/src").unwrap();
    assert_eq!(c.remote_fabric(ra).unwrap(), "tcp");
    let served = a_tcp.stats().served;
    write_then_read(&c, mirror, ra, len);
    assert_eq!(
        read_all(&a, src)[..len as usize],
        read_all(&c, mirror)[..len as usize]
    );
    assert!(a_tcp.stats().served > served);
}

#[test]
fn a_peer_with_no_common_fabric_is_refused_by_name() {
    let net = SimNetwork::new();
    let meta: Arc<dyn Metadata> = Arc::new(LocalRegistry::new());
    let (c, _) = tcp_only(&meta, "c");
    owned(&c, "c/dst", 4096, Access::REMOTE_READ, |_| 0);
    let sim = SimFabric::new(&net, SimConfig::default()).unwrap();
    let fabric = MultiFabric::new(vec![sim]).unwrap();
    let d = Engine::new(EngineConfig::new("d"), fabric, meta).unwrap();
    match d.open_segment("c/dst") {
        Err(TransportError::FabricMismatch {
            name,
            remote,
            local,
        }) => assert_eq!((&*name, &*remote, &*local), ("c/dst", "tcp", "sim")),
        other => panic!("expected a fabric mismatch, got {other:?}"),
    }
}

#[test]
fn discovery_accepts_a_multi_fabric_initiator_on_the_plane_both_speak() {
    let net = SimNetwork::new();
    let serve = |name: &str, fabric: Arc<dyn Fabric>| {
        let meta = PeerMetadata::bind(DiscoveryConfig::new(name)).unwrap();
        meta.attach_fabric(fabric.clone());
        let engine = Engine::new(EngineConfig::new(name), fabric, meta.clone()).unwrap();
        (engine, meta)
    };
    let (c, c_meta) = serve("c", TcpFabric::new(TcpConfig::default()).unwrap());
    let sim = SimFabric::new(&net, SimConfig::default()).unwrap();
    let tcp = TcpFabric::new(TcpConfig::default()).unwrap();
    let (a, _a_meta) = serve("a", MultiFabric::new(vec![sim, tcp]).unwrap());
    let on_c = owned(&c, "c/dst", 4096, Access::REMOTE_READ_WRITE, |_| 0);
    let src = owned(&a, "a/src", 8192, Access::NONE, |i| i as u8 | 1);

    let remote = a
        .open_segment(&format!("{}/c/dst", c_meta.local_addr()))
        .unwrap();
    assert_eq!(a.remote_fabric(remote).unwrap(), "tcp");
    write_then_read(&a, src, remote, 4096);
    assert_eq!(read_all(&c, on_c), read_all(&a, src)[..4096]);
}

#[test]
fn members_are_checked() {
    let net = SimNetwork::new();
    let sim = || -> Arc<dyn Fabric> { SimFabric::new(&net, SimConfig::default()).unwrap() };
    let refused = |members: Vec<Arc<dyn Fabric>>| match MultiFabric::new(members) {
        Err(FabricError::BadConfig { field, value, .. }) => format!("{field}={value}"),
        other => panic!("expected BadConfig, got {other:?}"),
    };
    assert_eq!(refused(vec![]), "members=[]");
    assert_eq!(refused(vec![sim(), sim()]), r#"members=["sim", "sim"]"#);
    let nested: Arc<dyn Fabric> =
        MultiFabric::new(vec![sim(), TcpFabric::new(TcpConfig::default()).unwrap()]).unwrap();
    assert_eq!(refused(vec![nested]), "members=sim+tcp");
    let wide = SimConfig {
        rails: 16,
        ..SimConfig::default()
    };
    let tcp: Arc<dyn Fabric> = TcpFabric::new(TcpConfig::default()).unwrap();
    let wide: Arc<dyn Fabric> = SimFabric::new(&net, wide).unwrap();
    assert_eq!(refused(vec![wide, tcp]), "rails=17");
}

#[test]
fn planes_number_the_rails_one_member_after_another() {
    let net = SimNetwork::new();
    let two = SimConfig {
        rails: 2,
        ..SimConfig::default()
    };
    let tcp = TcpFabric::new(TcpConfig::default()).unwrap();
    let tcp_rails = tcp.capabilities().rails;
    let fabric = MultiFabric::new(vec![SimFabric::new(&net, two).unwrap(), tcp]).unwrap();
    let planes = fabric.planes();
    assert_eq!(planes[0].rails, 0..2);
    assert_eq!(planes[1].rails, 2..2 + tcp_rails);
    assert_eq!(fabric.capabilities().rails, 2 + tcp_rails);
    assert_eq!(fabric.local_addresses().len(), 2 + tcp_rails as usize);
    assert!(matches!(
        fabric.connect(&[]),
        Err(FabricError::Unsupported { .. })
    ));
}

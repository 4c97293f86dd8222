//! The engine's side of a peer reported gone by the metadata service
//! ([`Metadata::watch`]), over the sim fabric with a registry whose watches the test fires:
//! pending requests to the gone peer end `Failed(PeerGone)` at the next wait, exactly once
//! (their late fabric completions are absorbed), requests to other peers are untouched, new
//! requests are refused, and none of it costs the hot path an allocation.

mod common;
#[path = "common/alloc.rs"]
mod counting;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::owned;
use transport::fabric::sim::{SimConfig, SimFabric, SimFaults, SimNetwork};
use transport::metadata::{OnGone, WatchGuard};
use transport::*;

/// A registry whose watches fire when the test says so.
#[derive(Default)]
struct Watched {
    reg: LocalRegistry,
    watches: Mutex<Vec<(String, OnGone)>>,
}

impl Watched {
    /// Reports every watch on `name` gone; returns how many there were.
    fn fire(&self, name: &str) -> usize {
        let mut w = self.watches.lock().unwrap();
        let (hit, keep): (Vec<_>, Vec<_>) = w.drain(..).partition(|(n, _)| n == name);
        *w = keep;
        let n = hit.len();
        for (_, gone) in hit {
            gone();
        }
        n
    }
}

impl Metadata for Watched {
    fn publish(&self, desc: &SegmentDescriptor) -> Result<(), MetadataError> {
        self.reg.publish(desc)
    }

    fn lookup(&self, name: &str) -> Result<SegmentDescriptor, MetadataError> {
        self.reg.lookup(name)
    }

    fn remove(&self, name: &str) -> Result<bool, MetadataError> {
        self.reg.remove(name)
    }

    fn watch(&self, desc: &SegmentDescriptor, gone: OnGone) -> Result<WatchGuard, MetadataError> {
        self.watches.lock().unwrap().push((desc.name.clone(), gone));
        Ok(WatchGuard::none())
    }
}

struct Setup {
    meta: Arc<Watched>,
    a: Engine,
    src: SegmentId,
    b_fabric: Arc<SimFabric>,
    _b: Engine,
    _c: Engine,
}

/// Engines a, b, c on one sim network; b and c expose `b/kv` and `c/kv`. Requests to b,
/// once it is set dead, fail `UNRESP_REMOTE` after `unresp`.
fn setup(unresp: Duration) -> Setup {
    let net = SimNetwork::new();
    let meta = Arc::new(Watched::default());
    let sim = SimConfig {
        faults: SimFaults {
            unresp_timeout: unresp,
            ..SimFaults::default()
        },
        ..SimConfig::default()
    };
    let engine = |name: &str| {
        let fabric = SimFabric::new(&net, sim.clone()).unwrap();
        let e = Engine::new(EngineConfig::new(name), fabric.clone(), meta.clone()).unwrap();
        (e, fabric)
    };
    let (a, _) = engine("a");
    let (b, b_fabric) = engine("b");
    let (c, _) = engine("c");
    let src = owned(&a, "a/src", 1 << 16, Access::NONE, |i| i as u8);
    owned(&b, "b/kv", 1 << 16, Access::REMOTE_READ_WRITE, |_| 0);
    owned(&c, "c/kv", 1 << 16, Access::REMOTE_READ_WRITE, |_| 0);
    Setup {
        meta,
        a,
        src,
        b_fabric,
        _b: b,
        _c: c,
    }
}

#[test]
fn pending_requests_to_a_gone_peer_fail_once_with_peer_gone() {
    let s = setup(Duration::from_secs(2));
    let (a, src) = (&s.a, s.src);
    let rb = a.open_segment("b/kv").unwrap();
    let rc = a.open_segment("c/kv").unwrap();
    let mut w = a.worker().unwrap();
    // b hangs: its requests stay pending until the fabric's timeout.
    s.b_fabric.set_alive(false);
    let batch = a.allocate_batch(8).unwrap();
    let reqs = [
        Request::write(src, 0, rb, 0, 4096),
        Request::write(src, 0, rc, 0, 4096),
        Request::read(src, 0, rb, 4096, 100),
        Request::write(src, 0, rc, 8192, 100),
        Request::write(src, 0, rb, 0, 8).with_op(Opcode::WriteWithNotify(1)),
    ];
    w.submit(batch, &reqs).unwrap();
    assert_eq!(s.meta.fire("b/kv"), 1);
    let st = w.wait(batch, Duration::from_secs(10)).unwrap();
    assert_eq!((st.completed, st.failed, st.pending), (2, 3, 0), "{st:?}");
    let gone = RequestStatus::Failed(FailReason::PeerGone);
    let statuses: Vec<_> = (0..5)
        .map(|i| a.request_status(batch, i).unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            gone,
            RequestStatus::Completed,
            gone,
            RequestStatus::Completed,
            gone
        ]
    );
    // Their work requests are still owned by the fabric: the batch frees once they are in...
    assert!(matches!(
        a.free_batch(batch),
        Err(TransportError::BatchBusy { .. })
    ));
    // ...and they end UNRESP_REMOTE in the fabric, absorbed: nothing counted twice.
    let st = w.drain(batch, Duration::from_secs(20)).unwrap();
    assert_eq!(
        (st.completed, st.failed, st.pending, st.in_flight),
        (2, 3, 0, 0),
        "{st:?}"
    );
    assert_eq!(a.request_status(batch, 0).unwrap(), gone);
    a.free_batch(batch).unwrap();

    // New requests to b are refused by name; c still works.
    let batch = a.allocate_batch(2).unwrap();
    let e = w
        .submit(
            batch,
            &[
                Request::write(src, 0, rc, 0, 8),
                Request::write(src, 0, rb, 0, 8),
            ],
        )
        .unwrap_err();
    assert_eq!(
        e,
        TransportError::PeerGone {
            index: 1,
            name: "b/kv".into()
        }
    );
    w.submit(batch, &[Request::write(src, 0, rc, 0, 8)])
        .unwrap();
    assert!(w
        .wait(batch, Duration::from_secs(5))
        .unwrap()
        .all_completed());
    a.free_batch(batch).unwrap();
    // A new open gets a fresh handle (and watch); a drain sweeps too.
    a.close_segment(rb).unwrap();
    let rb = a.open_segment("b/kv").unwrap();
    let batch = a.allocate_batch(2).unwrap();
    w.submit(batch, &[Request::write(src, 0, rb, 0, 8); 2])
        .unwrap();
    assert_eq!(s.meta.fire("b/kv"), 1);
    let st = w.drain(batch, Duration::from_secs(20)).unwrap();
    assert_eq!((st.failed, st.pending, st.in_flight), (2, 0, 0), "{st:?}");
    assert_eq!(a.request_status(batch, 1).unwrap(), gone);
    a.free_batch(batch).unwrap();
    a.close_segment(rb).unwrap();
    s.b_fabric.set_alive(true);
    let rb = a.open_segment("b/kv").unwrap();
    let batch = a.allocate_batch(1).unwrap();
    w.submit(batch, &[Request::write(src, 0, rb, 0, 8)])
        .unwrap();
    assert!(w
        .wait(batch, Duration::from_secs(5))
        .unwrap()
        .all_completed());
}

#[test]
fn a_gone_peer_costs_the_hot_path_nothing() {
    let s = setup(Duration::from_secs(1));
    let (a, src) = (&s.a, s.src);
    let rb = a.open_segment("b/kv").unwrap();
    let rc = a.open_segment("c/kv").unwrap();
    let mut w = a.worker().unwrap();
    let mut batch = a.allocate_batch(16).unwrap();
    let reqs: Vec<Request> = (0..16u64)
        .map(|i| Request::write(src, i * 64, rc, i * 64, 64))
        .collect();
    let mut round = |w: &mut Worker| {
        batch = a.recycle_batch(batch).unwrap();
        w.submit(batch, &reqs).unwrap();
        assert!(w
            .wait(batch, Duration::from_secs(5))
            .unwrap()
            .all_completed());
    };
    for _ in 0..20 {
        round(&mut w);
    }
    // b goes away; the next waits sweep (once per batch and epoch) and find nothing of b's.
    s.meta.fire("b/kv");
    counting::assert_counting();
    let before = counting::allocs();
    for _ in 0..500 {
        round(&mut w);
    }
    assert_eq!(counting::allocs() - before, 0);
    // A refused request builds its error (that allocates; it is not the hot path).
    let batch = a.allocate_batch(1).unwrap();
    let e = w.submit(batch, &[Request::write(src, 0, rb, 0, 8)]);
    assert!(matches!(e, Err(TransportError::PeerGone { .. })));
}

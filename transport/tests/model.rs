//! Model-based tests: random batches over several peers and rails, checked byte for byte
//! against plain `Vec<u8>` copies; with faults, every request ends in exactly one terminal state
//! and nothing hangs.
//!
//! Case counts default low for debug builds; raise them with `PROPTEST_CASES=N`.

mod common;

use std::time::Duration;

use common::ops::{independent, Op};
use common::*;
use proptest::prelude::*;
use transport::fabric::sim::{SimConfig, SimFaults};
use transport::*;

const SEG: u64 = 6 << 20;
const MAX_LEN: u64 = 4 << 20;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let len = prop_oneof![1u64..=64, 1u64..=70_000, 1u64..=MAX_LEN];
    (
        any::<bool>(),
        any::<bool>(),
        0usize..3,
        len,
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(read, notify, peer, len, lo, ro)| Op {
            read,
            notify: notify && !read,
            peer,
            len,
            local_off: lo % (SEG - len + 1),
            remote_off: ro % (SEG - len + 1),
        })
}

fn pattern(seed: u64) -> impl Fn(usize) -> u8 {
    move |i| {
        let x = (i as u64 ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (x >> 56) as u8
    }
}

struct World {
    _c: Cluster,
    a: Engine,
    local: SegmentId,
    peers: Vec<(
        Engine,
        SegmentId,
        RemoteSegment,
        std::sync::Arc<transport::fabric::sim::SimFabric>,
    )>,
}

fn world(peers: usize, rails: u16, slice: u64, seed: u64, faults: SimFaults) -> World {
    let c = Cluster::new();
    let sim = SimConfig {
        rails,
        queue_depth: 16,
        seed,
        faults,
        ..SimConfig::default()
    };
    let mut cfg = EngineConfig::new("a");
    cfg.slice_size = Some(slice);
    let (a, _) = c.engine_with(cfg, sim.clone());
    let local = owned(&a, "a/local", SEG as usize, Access::NONE, pattern(seed));
    let peers = (0..peers)
        .map(|p| {
            let name = format!("p{p}");
            let peer_sim = SimConfig {
                rails: (rails % 3) + 1,
                ..SimConfig::default()
            };
            let (e, f) = c.engine(&name, peer_sim);
            let seg = owned(
                &e,
                &format!("{name}/seg"),
                SEG as usize,
                Access::REMOTE_READ_WRITE,
                pattern(seed + 1 + p as u64),
            );
            let r = a.open_segment(&format!("{name}/seg")).unwrap();
            (e, seg, r, f)
        })
        .collect();
    World {
        _c: c,
        a,
        local,
        peers,
    }
}

fn request(w: &World, op: &Op) -> Request {
    op.request(w.local, w.peers[op.peer].2, op.peer as u32)
}

fn range(v: &[u8], off: u64, len: u64) -> &[u8] {
    &v[off as usize..(off + len) as usize]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(8), max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn batches_match_reference_model(
        peers in 1usize..=3,
        rails in 1u16..=3,
        slice in prop_oneof![Just(4096u64), Just(65_536), Just(1 << 20)],
        seed in any::<u64>(),
        batches in prop::collection::vec(prop::collection::vec(op_strategy(), 1..12), 1..3),
    ) {
        let w = world(peers, rails, slice, seed, SimFaults::default());
        let mut local_model = read_all(&w.a, w.local);
        let mut remote_model: Vec<Vec<u8>> = w.peers.iter().map(|p| read_all(&p.0, p.1)).collect();
        let mut notes = vec![0u64; peers];
        let mut worker = w.a.worker().unwrap();
        for ops in batches {
            let ops = independent(ops, peers);
            let reqs: Vec<Request> = ops.iter().map(|o| request(&w, o)).collect();
            let batch = w.a.allocate_batch(reqs.len()).unwrap();
            worker.submit(batch, &reqs).unwrap();
            let st = worker.wait(batch, Duration::from_secs(30)).unwrap();
            prop_assert_eq!(st.completed as usize, reqs.len());
            w.a.free_batch(batch).unwrap();
            for o in &ops {
                o.apply(&mut local_model, &mut remote_model, &mut notes);
            }
        }
        prop_assert!(read_all(&w.a, w.local) == local_model, "local memory differs from the model");
        for (p, peer) in w.peers.iter().enumerate() {
            prop_assert!(read_all(&peer.0, peer.1) == remote_model[p], "peer {} memory differs", p);
            prop_assert_eq!(peer.0.notifications().count(p as u32).unwrap(), notes[p]);
        }
    }

    #[test]
    fn faults_end_every_request_exactly_once(
        peers in 1usize..=3,
        rails in 1u16..=3,
        seed in any::<u64>(),
        error_rate in prop_oneof![Just(0.0), 0.0f64..0.5, Just(1.0)],
        delay_steps in 0u32..8,
        dead in prop::option::of(0usize..3),
        ops in prop::collection::vec(op_strategy(), 1..16),
    ) {
        let faults = SimFaults {
            error_rate,
            error_reasons: vec![FailReason::RemoteAbort, FailReason::RemoteBadLength],
            max_delay_steps: delay_steps,
            max_delay: None,
            unresp_timeout: Duration::from_millis(5),
        };
        let w = world(peers, rails, 65_536, seed, faults);
        let dead = dead.filter(|&d| d < peers);
        if let Some(d) = dead {
            w.peers[d].3.set_alive(false);
        }
        let ops = independent(ops, peers);
        let local_before = read_all(&w.a, w.local);
        let remote_before: Vec<Vec<u8>> = w.peers.iter().map(|p| read_all(&p.0, p.1)).collect();
        let reqs: Vec<Request> = ops.iter().map(|o| request(&w, o)).collect();
        let mut worker = w.a.worker().unwrap();
        let batch = w.a.allocate_batch(reqs.len()).unwrap();
        worker.submit(batch, &reqs).unwrap();
        let st = worker.wait(batch, Duration::from_secs(30)).unwrap();
        prop_assert_eq!(st.pending, 0);
        prop_assert_eq!(st.timed_out, 0, "bounded faults must not need the wait timeout");
        prop_assert_eq!((st.completed + st.failed) as usize, reqs.len());
        let st = worker.drain(batch, Duration::from_secs(30)).unwrap();
        prop_assert_eq!(st.in_flight, 0);
        let local_after = read_all(&w.a, w.local);
        let remote_after: Vec<Vec<u8>> = w.peers.iter().map(|p| read_all(&p.0, p.1)).collect();
        let mut failed = 0;
        for (i, o) in ops.iter().enumerate() {
            let status = w.a.request_status(batch, i).unwrap();
            match status {
                RequestStatus::Completed => {
                    prop_assert!(dead != Some(o.peer), "request to a dead peer completed");
                    if o.read {
                        prop_assert!(range(&local_after, o.local_off, o.len) == range(&remote_before[o.peer], o.remote_off, o.len));
                    } else {
                        prop_assert!(range(&remote_after[o.peer], o.remote_off, o.len) == range(&local_before, o.local_off, o.len));
                    }
                }
                RequestStatus::Failed(r) => {
                    failed += 1;
                    let allowed = if dead == Some(o.peer) {
                        r == FailReason::UnresponsiveRemote
                    } else {
                        matches!(r, FailReason::RemoteAbort | FailReason::RemoteBadLength)
                    };
                    prop_assert!(allowed, "request {} failed with {}", i, r);
                }
                other => prop_assert!(false, "request {} ended {:?}", i, other),
            }
        }
        prop_assert_eq!(failed, st.failed);
        if error_rate == 0.0 && dead.is_none() {
            prop_assert_eq!(st.failed, 0);
        }
        w.a.free_batch(batch).unwrap();
    }
}

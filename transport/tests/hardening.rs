//! Regression tests for the defects a hostile-input battery found (issue 15): each failed before
//! its fix.

mod common;

use std::time::Duration;

use common::*;
use transport::fabric::sim::{SimConfig, SimFaults};
use transport::*;

const WAIT: Duration = Duration::from_secs(10);

/// Two workers share one batch: A submits valid single requests while B's submits fail
/// validation at their last request. A failed submit must leave the batch exactly as it was,
/// so in the end the batch holds A's requests only, every one completed.
#[test]
fn concurrent_failed_submits_leave_no_ghost_requests() {
    const A_SUBMITS: usize = 5_000;
    const B_SUBMITS: usize = 1_000;
    let c = Cluster::new();
    let (a, _) = c.engine("a", SimConfig::default());
    let (b, _) = c.engine("b", SimConfig::default());
    let (src, r) = write_path(&a, &b);
    let batch = a.allocate_batch(A_SUBMITS).unwrap();
    let good = Request::write(src, 0, r, 0, 64);
    let mut bad: Vec<Request> = vec![good; 201];
    bad[200].len = 0;
    std::thread::scope(|s| {
        let a1 = a.clone();
        s.spawn(move || {
            let mut w = a1.worker().unwrap();
            for _ in 0..A_SUBMITS {
                w.submit(batch, &[good]).unwrap();
            }
            let st = w.wait(batch, WAIT).unwrap();
            assert_eq!(st.completed as usize, A_SUBMITS, "{st:?}");
        });
        let a2 = a.clone();
        let bad = &bad;
        s.spawn(move || {
            let mut w = a2.worker().unwrap();
            for _ in 0..B_SUBMITS {
                let e = w.submit(batch, bad).unwrap_err();
                assert!(
                    matches!(
                        e,
                        TransportError::ZeroLength { index: 200 }
                            | TransportError::BatchFull { .. }
                    ),
                    "{e}"
                );
            }
        });
    });
    let st = a.batch_status(batch).unwrap();
    assert_eq!(st.submitted as usize, A_SUBMITS, "ghost requests: {st:?}");
    assert!(st.all_completed(), "{st:?}");
    for i in 0..A_SUBMITS {
        assert_eq!(
            a.request_status(batch, i).unwrap(),
            RequestStatus::Completed
        );
    }
    a.free_batch(batch).unwrap();
}

/// Handles carry their engine: engine b's segment, remote segment and batch handles are
/// refused by engine a (they used to act on a's own objects with the same index).
#[test]
fn handles_of_another_engine_are_refused() {
    let c = Cluster::new();
    let (a, _) = c.engine("a", SimConfig::default());
    let (b, _) = c.engine("b", SimConfig::default());
    let a_seg = owned(&a, "a/src", 4096, Access::NONE, |_| 7);
    let b_seg = owned(&b, "b/kv", 4096, Access::REMOTE_WRITE, |_| 0);
    owned(&a, "a/kv", 4096, Access::REMOTE_WRITE, |_| 0);
    let a_remote = a.open_segment("b/kv").unwrap();
    let b_remote = b.open_segment("a/kv").unwrap();
    let a_batch = a.allocate_batch(4).unwrap();
    let b_batch = b.allocate_batch(4).unwrap();
    let foreign = |r: Result<(), TransportError>, what: &str| {
        let e = r.expect_err(what);
        assert!(
            matches!(e, TransportError::ForeignHandle { .. }),
            "{what}: {e}"
        );
        assert!(e.to_string().contains("engine"), "{what}: {e}");
    };
    let mut out = [0u8; 4];
    foreign(a.read_owned(b_seg, 0, &mut out), "read_owned");
    foreign(a.write_owned(b_seg, 0, &out), "write_owned");
    foreign(a.segment_info(b_seg).map(drop), "segment_info");
    foreign(a.unregister(b_seg).map(drop), "unregister");
    foreign(a.remote_descriptor(b_remote).map(drop), "remote_descriptor");
    foreign(a.close_segment(b_remote), "close_segment");
    foreign(a.batch_status(b_batch).map(drop), "batch_status");
    foreign(a.request_status(b_batch, 0).map(drop), "request_status");
    foreign(a.cancel(b_batch).map(drop), "cancel");
    foreign(a.free_batch(b_batch), "free_batch");
    foreign(a.recycle_batch(b_batch).map(drop), "recycle_batch");
    let mut w = a.worker().unwrap();
    let submit = |w: &mut Worker, batch, req| w.submit(batch, &[req]).map(drop);
    foreign(
        submit(&mut w, a_batch, Request::write(b_seg, 0, a_remote, 0, 4)),
        "submit: foreign local segment",
    );
    foreign(
        submit(&mut w, a_batch, Request::write(a_seg, 0, b_remote, 0, 4)),
        "submit: foreign remote segment",
    );
    foreign(
        submit(&mut w, b_batch, Request::write(a_seg, 0, a_remote, 0, 4)),
        "submit: foreign batch",
    );
    foreign(w.wait(b_batch, WAIT).map(drop), "wait");
    foreign(w.drain(b_batch, WAIT).map(drop), "drain");
    // Nothing of a's changed, and its own handles still work.
    assert_eq!(a.batch_status(a_batch).unwrap().submitted, 0);
    let mut back = [0u8; 4];
    a.read_owned(a_seg, 0, &mut back).unwrap();
    assert_eq!(back, [7; 4]);
    w.submit(a_batch, &[Request::write(a_seg, 0, a_remote, 0, 4)])
        .unwrap();
    assert!(w.wait(a_batch, WAIT).unwrap().all_completed());
    b.unregister(b_seg).unwrap();
}

/// `Duration::MAX` means "no deadline" everywhere a timeout is taken; it never panics.
#[test]
fn duration_max_means_wait_forever_without_panicking() {
    let c = Cluster::new();
    // Completions held back in wall time: waits and full queues have to take their deadlines.
    let slow = SimConfig {
        queue_depth: 1,
        faults: SimFaults {
            max_delay: Some(Duration::from_millis(20)),
            ..SimFaults::default()
        },
        ..SimConfig::default()
    };
    let mut cfg = EngineConfig::new("a");
    cfg.submit_timeout = Duration::MAX;
    let (a, _) = c.engine_with(cfg, slow);
    let (b, _) = c.engine("b", SimConfig::default());
    let src = owned(&a, "a/src", 4096, Access::NONE, |_| 3);
    owned(&b, "b/dst", 4096, Access::REMOTE_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(8).unwrap();
    let reqs: Vec<Request> = (0..4)
        .map(|i| Request::write(src, i * 64, r, i * 64, 64).with_op(Opcode::WriteWithNotify(1)))
        .collect();
    // Four requests through a queue of one: the submit waits for room with no deadline.
    w.submit(batch, &reqs).unwrap();
    let st = w.wait(batch, Duration::MAX).unwrap();
    assert!(st.all_completed(), "{st:?}");
    assert_eq!(w.drain(batch, Duration::MAX).unwrap().in_flight, 0);
    let n = b.notifications();
    assert_eq!(n.wait_for(1, 4, Duration::MAX).unwrap(), 4);
    assert_eq!(n.wait_for(1, 0, Duration::MAX).unwrap(), 4);
    a.free_batch(batch).unwrap();
}

/// A discovery server whose idle timeout is `Duration::MAX` serves lookups (its connection
/// threads used to panic on the deadline and leak their connection slot).
#[test]
fn discovery_with_duration_max_idle_timeout_serves() {
    use transport::discovery::{DiscoveryConfig, PeerMetadata};
    let mut cfg = DiscoveryConfig::new("server");
    cfg.idle_timeout = Duration::MAX;
    cfg.frame_timeout = Duration::MAX;
    cfg.connect_timeout = Duration::MAX;
    cfg.max_connections = 2;
    let server = PeerMetadata::bind(cfg).unwrap();
    let desc = SegmentDescriptor {
        revision: 1,
        name: "seg".into(),
        fabric: "tcp".into(),
        engine: "server".into(),
        location: Location::Cpu(0),
        access: Access::REMOTE_READ,
        base: 4096,
        len: 64,
        rails: vec![],
        alternates: vec![],
    };
    server.publish(&desc).unwrap();
    let client = PeerMetadata::bind(DiscoveryConfig::new("client")).unwrap();
    let at = server.local_addr().to_string();
    // More lookups than connection slots: slots must come back. The server frees a slot when
    // it reads the client's close, which can come after `fetch` returns (under load, after the
    // next lookup connects): wait for that, bounded, so the next lookup finds a slot.
    for _ in 0..5 {
        assert_eq!(client.fetch(&at, "seg").unwrap(), desc);
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while server.stats().open > 0 && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(server.stats().open, 0, "the connection slot came back");
    }
}

/// A worker dropped with requests in flight hands them to its engine: they reach a final state
/// when the fabric completes them (here a dead peer's, failing after the sim's 3 s timeout),
/// and then release their segment and batch. Another worker's drain, `cancel`, `free_batch`
/// and `unregister` all drive them; nothing stays pinned for good.
#[test]
fn dropped_worker_in_flight_requests_are_reaped_by_the_engine() {
    let c = Cluster::new();
    let dead_peer_timeout = SimConfig {
        faults: SimFaults {
            unresp_timeout: Duration::from_secs(3),
            ..SimFaults::default()
        },
        ..SimConfig::default()
    };
    let (a, _) = c.engine("a", dead_peer_timeout);
    let (b, b_fabric) = c.engine("b", SimConfig::default());
    let (src, r) = write_path(&a, &b);
    let batch = a.allocate_batch(8).unwrap();
    let other = a.allocate_batch(8).unwrap();
    b_fabric.set_alive(false);
    {
        let mut w = a.worker().unwrap();
        w.submit(batch, &[Request::write(src, 0, r, 0, 64); 4])
            .unwrap();
        w.submit(other, &[Request::write(src, 0, r, 0, 64); 2])
            .unwrap();
    }
    // Another worker's drain reaps the dropped worker's requests.
    let mut w2 = a.worker().unwrap();
    let st = w2.drain(batch, Duration::from_secs(30)).unwrap();
    assert_eq!(st.in_flight, 0, "{st:?}");
    assert_eq!(st.failed, 4, "{st:?}");
    assert_eq!(
        a.request_status(batch, 0).unwrap(),
        RequestStatus::Failed(FailReason::UnresponsiveRemote)
    );
    a.free_batch(batch).unwrap();
    // `free_batch` and `unregister` reap too: retried, they succeed once the fabric is done.
    let retry = |f: &dyn Fn() -> Result<(), TransportError>| {
        let start = std::time::Instant::now();
        loop {
            match f() {
                Ok(()) => return,
                Err(TransportError::BatchBusy { .. } | TransportError::SegmentBusy { .. })
                    if start.elapsed() < Duration::from_secs(30) =>
                {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    retry(&|| a.free_batch(other));
    retry(&|| a.unregister(src).map(drop));
}

/// Anonymous memory reserved but not committed (`MAP_NORESERVE`): large segments for tests
/// that never touch them.
struct Reserved {
    ptr: *mut u8,
    len: usize,
}

impl Reserved {
    fn new(len: usize) -> Reserved {
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap of {len} bytes");
        Reserved {
            ptr: ptr.cast(),
            len,
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unregistered by the test before it is dropped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// With 1-byte slices, a 4 GiB request needs 2^32 work requests: more than a request can
/// count. It is refused by name (it used to be accepted with 0 slices, post nothing, and pin
/// its segment for ever).
#[test]
fn requests_with_too_many_slices_are_refused() {
    let c = Cluster::new();
    let mut cfg = EngineConfig::new("a");
    cfg.slice_size = Some(1);
    let (a, _) = c.engine_with(cfg, SimConfig::default());
    let (b, _) = c.engine("b", SimConfig::default());
    let len = 1u64 << 32;
    let (mem_a, mem_b) = (Reserved::new(len as usize), Reserved::new(len as usize));
    // SAFETY: the mappings outlive the registrations (unregistered below, before the drop).
    let (src, dst) = unsafe {
        (
            a.register_memory(
                "a/big",
                mem_a.ptr,
                mem_a.len,
                Location::Cpu(0),
                Access::NONE,
            )
            .unwrap(),
            b.register_memory(
                "b/big",
                mem_b.ptr,
                mem_b.len,
                Location::Cpu(0),
                Access::REMOTE_WRITE,
            )
            .unwrap(),
        )
    };
    let r = a.open_segment("b/big").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(2).unwrap();
    let e = w
        .submit(batch, &[Request::write(src, 0, r, 0, len)])
        .unwrap_err();
    assert!(
        matches!(e, TransportError::TooManySlices { index: 0, len: l, .. } if l == len),
        "{e}"
    );
    assert!(e.to_string().contains("4294967296"), "{e}");
    assert_eq!(a.batch_status(batch).unwrap().submitted, 0);
    a.free_batch(batch).unwrap();
    a.unregister(src).unwrap();
    b.unregister(dst).unwrap();
}

/// Engine settings that would exhaust memory are refused by name (they used to abort the
/// process, or panic with a capacity overflow).
#[test]
fn engine_config_ranges_are_checked() {
    type Edit = fn(&mut EngineConfig);
    let cases: [(&str, Edit); 7] = [
        ("notify_tags", |c| c.notify_tags = u32::MAX),
        ("max_segments", |c| c.max_segments = 1 << 36),
        ("max_segments", |c| c.max_segments = usize::MAX),
        ("max_segments", |c| c.max_segments = 0),
        ("max_remote_segments", |c| c.max_remote_segments = 1 << 36),
        ("max_remote_segments", |c| {
            c.max_remote_segments = usize::MAX
        }),
        ("max_batches", |c| c.max_batches = usize::MAX),
    ];
    let c = Cluster::new();
    for (field, edit) in cases {
        let mut cfg = EngineConfig::new("a");
        edit(&mut cfg);
        let fabric = transport::fabric::sim::SimFabric::new(&c.net, SimConfig::default()).unwrap();
        match Engine::new(cfg, fabric, c.meta.clone()) {
            Err(e @ TransportError::Config(_)) => {
                assert!(e.to_string().contains(field), "{field}: {e}")
            }
            other => panic!("{field}: {other:?}"),
        }
    }
}

/// Sim settings that would exhaust memory or overflow are refused by name when the fabric is
/// built (a huge network used to abort the process, a huge queue the first post).
#[test]
fn sim_config_ranges_are_checked() {
    use transport::fabric::sim::{SimFabric, SimNetwork};
    type Edit = fn(&mut SimConfig);
    let cases: [(&str, Edit); 6] = [
        ("rails", |c| c.rails = 0),
        ("queue_depth", |c| c.queue_depth = u32::MAX),
        ("max_regions", |c| c.max_regions = 1 << 36),
        ("max_delay", |c| c.faults.max_delay = Some(Duration::MAX)),
        ("unresp_timeout", |c| {
            c.faults.unresp_timeout = Duration::MAX
        }),
        ("error_rate", |c| c.faults.error_rate = f64::NAN),
    ];
    let net = SimNetwork::new();
    for (field, edit) in cases {
        let mut cfg = SimConfig::default();
        edit(&mut cfg);
        match SimFabric::new(&net, cfg) {
            Err(e) => assert!(e.to_string().contains(field), "{field}: {e}"),
            Ok(_) => panic!("{field}: accepted"),
        }
    }
    let e = SimFabric::new(&SimNetwork::with_capacity(1 << 36), SimConfig::default()).unwrap_err();
    assert!(e.to_string().contains("max_nodes"), "{e}");
    let e = SimFabric::new(
        &net,
        SimConfig {
            rails: 0,
            ..SimConfig::default()
        },
    )
    .unwrap_err();
    assert!(!e.to_string().contains("rail 0 out of range"), "{e}");
}

/// Names, memory and locations that cannot be right are refused by name, with a short message.
#[test]
fn bad_names_memory_and_locations_are_refused_by_name() {
    let c = Cluster::new();
    let (a, _) = c.engine("a", SimConfig::default());
    let mem = || OwnedMemory::zeroed(64, 64).unwrap();
    let cpu = Location::Cpu(0);
    let long = "n".repeat(10_000);
    let e = a
        .register_owned(&long, mem(), cpu, Access::NONE)
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.len() < 300, "{} bytes: {msg}", msg.len());
    assert!(!msg.contains("corrupt") && msg.contains("10000"), "{msg}");
    for name in ["", "a\0b"] {
        let e = a
            .register_owned(name, mem(), cpu, Access::NONE)
            .unwrap_err();
        assert!(matches!(e, TransportError::BadName { .. }), "{name:?}: {e}");
    }
    // SAFETY: refused before anything could touch the (null) memory.
    let e = unsafe { a.register_memory("a/null", std::ptr::null_mut(), 16, cpu, Access::NONE) }
        .unwrap_err();
    assert!(e.to_string().contains("0x0"), "{e}");
    let e = a
        .register_owned("a/gpu", mem(), Location::Gpu(99), Access::NONE)
        .unwrap_err();
    assert!(e.to_string().contains("gpu:99"), "{e}");
    // Nothing was registered meanwhile; a good name still works.
    a.register_owned("a/ok", mem(), cpu, Access::NONE).unwrap();
    assert_eq!(c.meta.len(), 1);
}

/// A local segment whose name looks like `host:port/segment` is found locally, not looked up
/// on the network.
#[test]
fn local_names_shaped_like_remote_ones_are_found_locally() {
    use transport::discovery::{DiscoveryConfig, PeerMetadata};
    let meta = PeerMetadata::bind(DiscoveryConfig::new("a")).unwrap();
    let desc = SegmentDescriptor {
        revision: 1,
        name: "127.0.0.1:1/x".into(),
        fabric: "sim".into(),
        engine: "a".into(),
        location: Location::Cpu(0),
        access: Access::REMOTE_READ,
        base: 4096,
        len: 64,
        rails: vec![],
        alternates: vec![],
    };
    meta.publish(&desc).unwrap();
    assert_eq!(meta.lookup("127.0.0.1:1/x").unwrap(), desc);
}

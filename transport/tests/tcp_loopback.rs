//! The tcp fabric between engines in one process, over real loopback sockets: data checked
//! byte for byte, the target's checks of every request, malformed frames, backpressure.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::discovery::{DiscoveryConfig, PeerMetadata};
use transport::fabric::tcp::{TcpAddress, TcpConfig, TcpFabric};
use transport::fabric::{Completion, Endpoint, Fabric, MemoryRegion, WorkOp, WorkRequest};
use transport::*;

struct Node {
    engine: Engine,
    fabric: Arc<TcpFabric>,
    meta: Arc<PeerMetadata>,
}

impl Drop for Node {
    fn drop(&mut self) {
        // This test keeps a clone of the fabric beside the engine: retire the registrations
        // before the engine frees its owned memory.
        self.fabric.shutdown();
    }
}

fn node(name: &str, cfg: TcpConfig) -> Node {
    node_with(EngineConfig::new(name), cfg)
}

/// As [`node`], the engine configured as `engine` (named by it).
fn node_with(engine: EngineConfig, cfg: TcpConfig) -> Node {
    let fabric = TcpFabric::new(cfg).unwrap();
    let meta = PeerMetadata::bind(DiscoveryConfig::new(&engine.name)).unwrap();
    meta.attach_fabric(fabric.clone());
    let engine = Engine::new(engine, fabric.clone(), meta.clone()).unwrap();
    Node {
        engine,
        fabric,
        meta,
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

fn owned(n: &Node, name: &str, data: Vec<u8>, access: Access) -> SegmentId {
    n.engine
        .register_owned(
            name,
            OwnedMemory::from_vec(data).unwrap(),
            Location::Cpu(0),
            access,
        )
        .unwrap()
}

fn read_back(n: &Node, seg: SegmentId) -> Vec<u8> {
    let len = n.engine.segment_info(seg).unwrap().len as usize;
    let mut v = vec![0; len];
    n.engine.read_owned(seg, 0, &mut v).unwrap();
    v
}

#[test]
fn tcp_write_read_notify_across_engines_by_discovery_name() {
    let cfg = TcpConfig {
        rails: 2,
        queue_depth: 8,
        ..TcpConfig::default()
    };
    let (a, b) = (node("a", cfg.clone()), node("b", cfg));
    const LEN: usize = 3 << 20;
    let target = owned(&b, "b/data", vec![0; LEN], Access::REMOTE_READ_WRITE);
    let src = owned(&a, "a/src", pattern(7, LEN), Access::NONE);
    let sink = owned(&a, "a/sink", vec![0; LEN], Access::NONE);
    let remote = a
        .engine
        .open_segment(&format!("{}/b/data", b.meta.local_addr()))
        .unwrap();
    assert_eq!(a.engine.remote_descriptor(remote).unwrap().fabric, "tcp");

    let mut w = a.engine.worker().unwrap();
    let batch = a.engine.allocate_batch(64).unwrap();
    // Uneven pieces, striped over both rails, with a notification at the end.
    let cuts = [0, 1, 4097, 65_536 * 3 + 5, 1 << 20, LEN - 3, LEN];
    let reqs: Vec<Request> = cuts
        .windows(2)
        .map(|c| {
            let (off, len) = (c[0] as u64, (c[1] - c[0]) as u64);
            Request::write(src, off, remote, off, len)
        })
        .collect();
    w.submit(batch, &reqs).unwrap();
    let st = w.wait(batch, Duration::from_secs(20)).unwrap();
    assert!(st.all_completed(), "{st:?}");
    assert_eq!(read_back(&b, target), pattern(7, LEN));

    let batch = a.engine.recycle_batch(batch).unwrap();
    w.submit(
        batch,
        &[
            Request::read(sink, 0, remote, 0, LEN as u64),
            Request::write(src, 0, remote, 0, 16).with_op(Opcode::WriteWithNotify(5)),
        ],
    )
    .unwrap();
    let st = w.wait(batch, Duration::from_secs(20)).unwrap();
    assert!(st.all_completed(), "{st:?}");
    assert_eq!(read_back(&a, sink), pattern(7, LEN));
    assert_eq!(
        b.engine
            .notifications()
            .wait_for(5, 1, Duration::from_secs(5))
            .unwrap(),
        1
    );
    assert!(b.fabric.stats().served > 0);
    assert_eq!(b.fabric.stats().denied, 0);
    a.engine.free_batch(batch).unwrap();
}

/// A one-slice WRITE with notification is one request on the wire: the target places the
/// payload, counts the tag, then answers (served once per message, not twice), so the tag counts
/// only once the bytes are there. A tag the target cannot count fails the request unplaced.
#[test]
fn tcp_a_one_slice_write_with_notification_is_one_request() {
    let a = node("a5", TcpConfig::default());
    assert!(a.engine.capabilities().supports_write_notify);
    let mut bcfg = EngineConfig::new("b5");
    bcfg.notify_tags = 4;
    let b = node_with(bcfg, TcpConfig::default());
    const N: u64 = 32;
    const LEN: u64 = 4096;
    let src = owned(&a, "a5/s", pattern(5, (N * LEN) as usize), Access::NONE);
    let dst = owned(
        &b,
        "b5/d",
        vec![0; (N * LEN) as usize],
        Access::REMOTE_WRITE,
    );
    let remote = a
        .engine
        .open_segment(&format!("{}/b5/d", b.meta.local_addr()))
        .unwrap();
    let mut w = a.engine.worker().unwrap();
    let mut batch = a.engine.allocate_batch(1).unwrap();
    let served0 = b.fabric.stats().served;
    let want = pattern(5, (N * LEN) as usize);
    for i in 0..N {
        batch = a.engine.recycle_batch(batch).unwrap();
        let r =
            Request::write(src, i * LEN, remote, i * LEN, LEN).with_op(Opcode::WriteWithNotify(3));
        w.submit(batch, &[r]).unwrap();
        let t0 = std::time::Instant::now();
        while b.engine.notifications().count(3).unwrap() <= i {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "request {i}'s notification"
            );
            w.progress();
        }
        let at = (i * LEN) as usize;
        let mut got = vec![0; LEN as usize];
        b.engine.read_owned(dst, i * LEN, &mut got).unwrap();
        assert!(
            got == want[at..at + LEN as usize],
            "request {i}: bytes placed when the tag counts"
        );
        assert!(w
            .wait(batch, Duration::from_secs(10))
            .unwrap()
            .all_completed());
    }
    assert_eq!(
        b.fabric.stats().served - served0,
        N,
        "one request served per message"
    );
    batch = a.engine.recycle_batch(batch).unwrap();
    // Tag 10 is within the initiator's table (1024) but not the target's (4): request 1's
    // bytes sent over request 0's stay unplaced.
    let r = Request::write(src, LEN, remote, 0, LEN).with_op(Opcode::WriteWithNotify(10));
    w.submit(batch, &[r]).unwrap();
    let st = w.wait(batch, Duration::from_secs(10)).unwrap();
    assert_eq!(st.failed, 1, "{st:?}");
    assert_eq!(
        a.engine.request_status(batch, 0).unwrap(),
        RequestStatus::Failed(FailReason::RemoteAbort)
    );
    let mut got = vec![0; LEN as usize];
    b.engine.read_owned(dst, 0, &mut got).unwrap();
    assert!(
        got == want[..LEN as usize],
        "nothing placed for a tag the target lacks"
    );
    a.engine.free_batch(batch).unwrap();
}

#[test]
fn tcp_open_by_peer_list_and_unknown_names() {
    let (a, b) = (
        node("a2", TcpConfig::default()),
        node("b2", TcpConfig::default()),
    );
    owned(&b, "shared/x", pattern(1, 100), Access::REMOTE_READ);
    assert!(matches!(
        a.engine.open_segment("shared/x"),
        Err(TransportError::SegmentNotFound(_))
    ));
    a.meta.add_peer(b.meta.local_addr().to_string());
    let r = a.engine.open_segment("shared/x").unwrap();
    assert_eq!(a.engine.remote_descriptor(r).unwrap().len, 100);
    assert!(matches!(
        a.engine.open_segment("shared/missing"),
        Err(TransportError::SegmentNotFound(_))
    ));
    assert!(b.meta.stats().served >= 1);
}

/// Drives one raw endpoint: the target must check every request itself, not trust the
/// initiator's engine.
fn run_raw(ep: &mut dyn Endpoint, wrs: &[WorkRequest]) -> Vec<Completion> {
    let mut posted = 0;
    let mut out = Vec::new();
    let mut buf = [Completion::default(); 16];
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < wrs.len() && Instant::now() < deadline {
        if posted < wrs.len() {
            posted += ep.post(&wrs[posted..]);
        }
        let n = ep.poll(&mut buf);
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out.len(), wrs.len(), "every posted request completes");
    out.sort_by_key(|c| c.token);
    out
}

#[test]
fn tcp_target_checks_key_bounds_and_rights() {
    let ini = TcpFabric::new(TcpConfig::default()).unwrap();
    let tgt = TcpFabric::new(TcpConfig::default()).unwrap();
    let mut local = vec![0xAAu8; 4096];
    let mut ro = vec![0x11u8; 256];
    let mut wo = vec![0x22u8; 256];
    // SAFETY: the vectors outlive the fabrics' use of them (deregistered below, before drop).
    let (lreg, roreg, woreg) = unsafe {
        (
            ini.register(MemoryRegion {
                addr: local.as_mut_ptr() as u64,
                len: 4096,
                access: Access::NONE,
            })
            .unwrap(),
            tgt.register(MemoryRegion {
                addr: ro.as_mut_ptr() as u64,
                len: 256,
                access: Access::REMOTE_READ,
            })
            .unwrap(),
            tgt.register(MemoryRegion {
                addr: wo.as_mut_ptr() as u64,
                len: 256,
                access: Access::REMOTE_WRITE,
            })
            .unwrap(),
        )
    };
    let peer = ini.connect(&tgt.local_addresses()).unwrap();
    let rkey =
        |r: &transport::fabric::Registration| ini.decode_remote_key(0, &r.remote_keys[0]).unwrap();
    // READs land in local[..2048]; WRITEs send from local[2048..] (they run concurrently).
    let wr = |token, op, remote_addr: u64, remote_key, len| WorkRequest {
        token,
        op,
        rail: 0,
        peer,
        remote_rail: 0,
        local_addr: local.as_ptr() as u64 + if op == WorkOp::Write { 2048 } else { 0 },
        local_key: lreg.local_keys[0],
        remote_addr,
        remote_key,
        len,
    };
    let (ro_base, wo_base) = (ro.as_ptr() as u64, wo.as_ptr() as u64);
    let wrs = [
        wr(0, WorkOp::Read, ro_base, rkey(&roreg), 256), // ok
        wr(1, WorkOp::Write, ro_base, rkey(&roreg), 16), // no write right
        wr(2, WorkOp::Read, wo_base, rkey(&woreg), 16),  // no read right
        wr(3, WorkOp::Write, wo_base + 200, rkey(&woreg), 57), // past the end
        wr(4, WorkOp::Write, wo_base - 1, rkey(&woreg), 8), // before the start
        wr(5, WorkOp::Write, wo_base, rkey(&woreg) ^ (1 << 16), 8), // stale generation
        wr(6, WorkOp::Write, wo_base, rkey(&woreg) + 1, 8), // another slot
        wr(7, WorkOp::Write, wo_base + 8, rkey(&woreg), 8), // ok
        wr(8, WorkOp::Write, u64::MAX - 3, rkey(&woreg), 8), // overflowing range
    ];
    let out = run_raw(&mut *ini.endpoint().unwrap(), &wrs);
    let errors: Vec<_> = out.iter().map(|c| c.error).collect();
    let bad = Some(FailReason::RemoteBadAddress);
    assert_eq!(
        errors,
        [None, bad, bad, bad, bad, bad, bad, None, bad],
        "{out:?}"
    );
    assert_eq!(&local[..256], &[0x11; 256][..], "the allowed READ landed");
    assert_eq!(ro, vec![0x11; 256], "read-only memory untouched");
    assert_eq!(&wo[..8], &[0x22; 8], "denied writes left no trace");
    assert_eq!(&wo[8..16], &[0xAA; 8], "the allowed WRITE landed");
    assert_eq!(&wo[16..], &[0x22; 240][..]);
    assert_eq!(tgt.stats().denied, 7);
    // The connection survived the denials: a later request on it still works.
    let out = run_raw(
        &mut *ini.endpoint().unwrap(),
        &[wr(9, WorkOp::Write, wo_base, rkey(&woreg), 4)],
    );
    assert_eq!(out[0].error, None);
    // A deregistered key is refused.
    tgt.deregister(&woreg).unwrap();
    let out = run_raw(
        &mut *ini.endpoint().unwrap(),
        &[wr(10, WorkOp::Write, wo_base, rkey(&woreg), 4)],
    );
    assert_eq!(out[0].error, bad);
    // The initiator checks its own local key.
    let mut bad_local = wr(11, WorkOp::Write, ro_base, rkey(&roreg), 4);
    bad_local.local_key ^= 1 << 16;
    let out = run_raw(&mut *ini.endpoint().unwrap(), &[bad_local]);
    assert_eq!(out[0].error, Some(FailReason::InvalidLkey));
    ini.deregister(&lreg).unwrap();
    tgt.deregister(&roreg).unwrap();
}

fn hello_ok(sock: &mut TcpStream, instance: u64) {
    let mut h = [0u8; 24];
    h[..4].copy_from_slice(b"ETCH");
    h[4] = 2;
    h[8..16].copy_from_slice(&instance.to_le_bytes());
    sock.write_all(&h).unwrap();
    let mut r = [0u8; 16];
    sock.read_exact(&mut r).unwrap();
    assert_eq!((&r[..4], r[5]), (&b"ETCA"[..], 0));
}

fn closed(sock: &mut TcpStream) -> bool {
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    matches!(sock.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn tcp_malformed_frames_close_only_their_connection() {
    let (a, b) = (
        node("a3", TcpConfig::default()),
        node("b3", TcpConfig::default()),
    );
    let target = owned(&b, "b3/t", vec![0; 1024], Access::REMOTE_WRITE);
    let src = owned(&a, "a3/s", pattern(3, 1024), Access::NONE);
    let remote = a
        .engine
        .open_segment(&format!("{}/b3/t", b.meta.local_addr()))
        .unwrap();
    let mut w = a.engine.worker().unwrap();
    let batch = a.engine.allocate_batch(4).unwrap();
    w.submit(batch, &[Request::write(src, 0, remote, 0, 512)])
        .unwrap();
    assert!(w
        .wait(batch, Duration::from_secs(10))
        .unwrap()
        .all_completed());

    let addr = b.fabric.local_addr();
    let inst = b.fabric.instance();
    let rejected0 = b.fabric.stats().rejected;
    // Bad hello magic, a wrong instance, an old version, then garbage after a good hello, an
    // unknown opcode, and an oversized WRITE.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0xFF; 24]).unwrap();
    assert!(closed(&mut s));
    let mut s = TcpStream::connect(addr).unwrap();
    let mut h = [0u8; 24];
    h[..4].copy_from_slice(b"ETCH");
    h[4] = 2;
    h[8..16].copy_from_slice(&(inst ^ 1).to_le_bytes());
    s.write_all(&h).unwrap();
    let mut r = [0u8; 16];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[5], 1, "wrong instance refused");
    assert!(closed(&mut s));
    // A version-1 hello (a peer from before WRITE_NOTIFY).
    let mut s = TcpStream::connect(addr).unwrap();
    h[4] = 1;
    h[8..16].copy_from_slice(&inst.to_le_bytes());
    s.write_all(&h).unwrap();
    assert!(closed(&mut s));
    let mut s = TcpStream::connect(addr).unwrap();
    hello_ok(&mut s, inst);
    s.write_all(&[0x5A; 48]).unwrap();
    assert!(closed(&mut s));
    let mut s = TcpStream::connect(addr).unwrap();
    hello_ok(&mut s, inst);
    let mut f = [0u8; 48];
    f[..2].copy_from_slice(b"TQ");
    f[2] = 2;
    f[3] = 77;
    s.write_all(&f).unwrap();
    assert!(closed(&mut s));
    let mut s = TcpStream::connect(addr).unwrap();
    hello_ok(&mut s, inst);
    f[3] = 2;
    f[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    s.write_all(&f).unwrap();
    assert!(closed(&mut s));
    assert_eq!(b.fabric.stats().rejected - rejected0, 6);

    // The engine's own connection was not disturbed.
    let batch = a.engine.recycle_batch(batch).unwrap();
    w.submit(batch, &[Request::write(src, 512, remote, 512, 512)])
        .unwrap();
    assert!(w
        .wait(batch, Duration::from_secs(10))
        .unwrap()
        .all_completed());
    assert_eq!(read_back(&b, target), pattern(3, 1024));
    // A request addressed with a bad peer address fails to open, naming it.
    let mut bogus = a.fabric.local_addresses();
    bogus[0].truncate(6);
    assert!(a.fabric.connect(&bogus).is_err());
    assert!(TcpAddress::parse(0, &bogus[0]).is_err());
}

#[test]
fn tcp_backpressure_accepts_a_prefix_and_loses_nothing() {
    let cfg = TcpConfig {
        queue_depth: 4,
        ..TcpConfig::default()
    };
    let ini = TcpFabric::new(cfg.clone()).unwrap();
    let tgt = TcpFabric::new(cfg).unwrap();
    let mut local = pattern(9, 64 << 10);
    let mut remote = vec![0u8; 64 << 10];
    // SAFETY: both vectors outlive their registrations (deregistered at the end).
    let (l, r) = unsafe {
        (
            ini.register(MemoryRegion {
                addr: local.as_mut_ptr() as u64,
                len: local.len() as u64,
                access: Access::NONE,
            })
            .unwrap(),
            tgt.register(MemoryRegion {
                addr: remote.as_mut_ptr() as u64,
                len: remote.len() as u64,
                access: Access::REMOTE_WRITE,
            })
            .unwrap(),
        )
    };
    let peer = ini.connect(&tgt.local_addresses()).unwrap();
    let key = ini.decode_remote_key(0, &r.remote_keys[0]).unwrap();
    let wrs: Vec<WorkRequest> = (0..16u64)
        .map(|i| WorkRequest {
            token: i,
            op: WorkOp::Write,
            rail: 0,
            peer,
            remote_rail: 0,
            local_addr: local.as_ptr() as u64 + i * 4096,
            local_key: l.local_keys[0],
            remote_addr: remote.as_ptr() as u64 + i * 4096,
            remote_key: key,
            len: 4096,
        })
        .collect();
    let mut ep = ini.endpoint().unwrap();
    assert_eq!(ep.post(&wrs), 4, "a full queue accepts a prefix");
    assert_eq!(ep.outstanding(), 4);
    let mut posted = 4;
    let mut tokens = Vec::new();
    let mut buf = [Completion::default(); 3];
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokens.len() < wrs.len() && Instant::now() < deadline {
        if posted < wrs.len() {
            posted += ep.post(&wrs[posted..]);
            assert!(ep.outstanding() <= 4, "never more than the queue depth");
        }
        let n = ep.poll(&mut buf);
        for c in &buf[..n] {
            assert_eq!(c.error, None);
            tokens.push(c.token);
        }
    }
    tokens.sort_unstable();
    assert_eq!(
        tokens,
        (0..16).collect::<Vec<_>>(),
        "each request completes once"
    );
    assert_eq!(ep.outstanding(), 0);
    assert_eq!(remote, local);
    ini.deregister(&l).unwrap();
    tgt.deregister(&r).unwrap();
}

#[test]
fn tcp_silent_or_stalled_connections_are_dropped() {
    let tgt = TcpFabric::new(TcpConfig {
        timeout: Duration::from_millis(300),
        ..TcpConfig::default()
    })
    .unwrap();
    let addr = tgt.local_addr();
    // Says nothing at all.
    let mut mute = TcpStream::connect(addr).unwrap();
    assert!(closed(&mut mute));
    // Greets, then stalls half way through a request header.
    let mut slow = TcpStream::connect(addr).unwrap();
    hello_ok(&mut slow, tgt.instance());
    slow.write_all(b"TQ\x01\x02").unwrap();
    assert!(closed(&mut slow));
    let deadline = Instant::now() + Duration::from_secs(5);
    while tgt.stats().dropped < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(tgt.stats().dropped, 2);
}

/// A request larger than the target's `max_transfer_size` (but within ours) fails by that
/// name, and the connection stays in step for the next requests (it used to be closed, and
/// the request reported as `UNRESP_REMOTE`).
#[test]
fn tcp_request_over_the_peers_limit_fails_by_name() {
    let a = node("a", TcpConfig::default());
    let b = node(
        "b",
        TcpConfig {
            max_transfer_size: 4096,
            ..TcpConfig::default()
        },
    );
    owned(&b, "b/dst", vec![0; 1 << 20], Access::REMOTE_READ_WRITE);
    let src = owned(&a, "a/src", pattern(3, 1 << 20), Access::NONE);
    let r = a
        .engine
        .open_segment(&format!("{}/b/dst", b.meta.local_addr()))
        .unwrap();
    let mut w = a.engine.worker().unwrap();
    let batch = a.engine.allocate_batch(8).unwrap();
    w.submit(
        batch,
        &[
            Request::write(src, 0, r, 0, 64 << 10),
            Request::read(src, 0, r, 0, 64 << 10),
            Request::write(src, 0, r, 0, 4096),
        ],
    )
    .unwrap();
    w.wait(batch, Duration::from_secs(20)).unwrap();
    for i in 0..2 {
        match a.engine.request_status(batch, i).unwrap() {
            RequestStatus::Failed(reason) => {
                assert_eq!(reason.name(), "EXCEEDS_PEER_LIMIT", "request {i}")
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    assert_eq!(
        a.engine.request_status(batch, 2).unwrap(),
        RequestStatus::Completed
    );
    assert_eq!(b.fabric.stats().rejected, 0, "{:?}", b.fabric.stats());
}

/// Settings that cannot work are refused when the fabric is built, naming the value.
#[test]
fn tcp_config_values_are_checked_when_built() {
    type Edit = fn(&mut TcpConfig);
    let cases: [(&str, Edit); 10] = [
        ("timeout", |c| c.timeout = Duration::ZERO),
        ("connect_timeout", |c| c.connect_timeout = Duration::ZERO),
        ("idle_wait", |c| c.idle_wait = Some(Duration::ZERO)),
        ("idle_wait", |c| c.idle_wait = Some(Duration::MAX)),
        ("socket_buffer", |c| c.socket_buffer = Some(0)),
        ("socket_buffer", |c| c.socket_buffer = Some(usize::MAX)),
        ("queue_depth", |c| c.queue_depth = u32::MAX),
        ("max_peers", |c| c.max_peers = 1 << 36),
        ("max_regions", |c| c.max_regions = 1 << 36),
        ("max_connections", |c| c.max_connections = 0),
    ];
    for (field, edit) in cases {
        let mut c = TcpConfig::default();
        edit(&mut c);
        match TcpFabric::new(c) {
            Err(e) => assert!(e.to_string().contains(field), "{field}: {e}"),
            Ok(_) => panic!("{field}: accepted"),
        }
    }
}

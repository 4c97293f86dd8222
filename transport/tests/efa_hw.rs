//! The `efa` fabric end to end on EFA hardware (SRD). Nothing here runs without an EFA device.
//!
//! On an EFA-enabled EC2 instance (e.g. c6gn, c7gn, p4d, p5, hpc6a; the EFA installer's
//! rdma-core, and `ulimit -l unlimited` or a large memlock limit), from the repository root:
//!
//! ```text
//! cargo test --release -p transport --test efa_hw -- --ignored --test-threads=1
//! ```
//!
//! The tests print the devices' capabilities. A device without RDMA WRITE runs the READ and
//! notification tests and checks that WRITE is refused at submit with a typed error.
#![cfg(feature = "rdma")]

use std::sync::Arc;
use std::time::Duration;

use transport::fabric::efa::{EfaConfig, EfaFabric};
use transport::*;

const WAIT: Duration = Duration::from_secs(30);

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32) as u8
                ^ seed
        })
        .collect()
}

/// Two engines on the EFA devices of this host, each accepting the other (the discovery
/// handshake does this between hosts).
fn pair() -> (Engine, Engine) {
    let meta = Arc::new(LocalRegistry::new());
    let mk = |name: &str| {
        let f = EfaFabric::new(EfaConfig::default()).expect("an EFA device");
        println!("{name}: {f:?}");
        let mut c = EngineConfig::new(name);
        c.slice_size = 1 << 20;
        Engine::new(c, f, meta.clone()).unwrap()
    };
    let (a, b) = (mk("a"), mk("b"));
    a.accept_peer(&b.local_addresses()).unwrap();
    b.accept_peer(&a.local_addresses()).unwrap();
    (a, b)
}

/// Registers `mem` as a CPU segment `name` of `e` with `access`.
fn owned(e: &Engine, name: &str, mem: OwnedMemory, access: Access) -> SegmentId {
    e.register_owned(name, mem, Location::Cpu(0), access)
        .unwrap()
}

fn contents(e: &Engine, seg: SegmentId, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    e.read_owned(seg, off, &mut v).unwrap();
    v
}

#[test]
#[ignore = "needs EFA hardware: see README"]
fn efa_hw_read_write_notify_sizes() {
    let (a, b) = pair();
    let caps = a.capabilities().clone();
    let max = (16 << 20) + 3;
    let src = owned(
        &a,
        "a/src",
        OwnedMemory::from_vec(pattern(max, 3)).unwrap(),
        Access::NONE,
    );
    let sink = owned(
        &a,
        "a/sink",
        OwnedMemory::zeroed(max, 4096).unwrap(),
        Access::NONE,
    );
    let target = owned(
        &b,
        "b/kv",
        OwnedMemory::from_vec(pattern(max, 9)).unwrap(),
        Access::REMOTE_READ_WRITE,
    );
    let remote = a.open_segment("b/kv").unwrap();
    let mut w = a.worker().unwrap();
    let mut batch = a.allocate_batch(8).unwrap();
    for len in [1usize, 4096, (1 << 20) + 1, max - 5] {
        batch = a.recycle_batch(batch).unwrap();
        w.submit(batch, &[Request::read(sink, 0, remote, 5, len as u64)])
            .unwrap();
        let s = w.wait(batch, WAIT).unwrap();
        assert!(
            s.all_completed(),
            "READ {len}: {:?}",
            a.request_status(batch, 0)
        );
        assert!(
            contents(&a, sink, 0, len) == contents(&b, target, 5, len),
            "READ {len}"
        );
        batch = a.recycle_batch(batch).unwrap();
        let write =
            Request::write(src, 0, remote, 1, len as u64).with_op(Opcode::WriteWithNotify(2));
        let r = w.submit(batch, &[write]);
        if !caps.supports_write {
            assert!(
                matches!(
                    r,
                    Err(TransportError::Fabric(FabricError::Unsupported { .. }))
                ),
                "{r:?}"
            );
            continue;
        }
        r.unwrap();
        let s = w.wait(batch, WAIT).unwrap();
        assert!(
            s.all_completed(),
            "WRITE {len}: {:?}",
            a.request_status(batch, 0)
        );
        assert!(
            contents(&b, target, 1, len) == contents(&a, src, 0, len),
            "WRITE {len}"
        );
    }
    if caps.supports_write {
        assert_eq!(b.notifications().wait_for(2, 4, WAIT).unwrap(), 4);
        // The 1-byte WRITE went inline where device and library allow it: soft-efa counts
        // inline work requests (refreshed every 200 ms); hardware has no such counter.
        let dev = efa::efa_devices().unwrap().remove(0);
        let inline = || dev.hw_counters().unwrap().get("inline_wrs");
        let lib = efa::Context::open(&dev.name)
            .unwrap()
            .efa_max_sq_depth(1, 0, true)
            .unwrap();
        if inline().is_some() && lib.is_some() {
            let t0 = std::time::Instant::now();
            while inline() == Some(0) && t0.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(inline().unwrap() >= 1, "small WRITEs are posted inline");
        }
    }
}

#[test]
#[ignore = "needs EFA hardware: see README"]
fn efa_hw_bad_remote_key_is_remote_bad_address() {
    let (a, b) = pair();
    let sink = owned(
        &a,
        "a/sink",
        OwnedMemory::zeroed(8192, 4096).unwrap(),
        Access::NONE,
    );
    let target = owned(
        &b,
        "b/kv",
        OwnedMemory::zeroed(8192, 4096).unwrap(),
        Access::REMOTE_READ,
    );
    let remote = a.open_segment("b/kv").unwrap();
    b.unregister(target).unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(1).unwrap();
    w.submit(batch, &[Request::read(sink, 0, remote, 0, 4096)])
        .unwrap();
    w.wait(batch, WAIT).unwrap();
    assert_eq!(
        a.request_status(batch, 0).unwrap(),
        RequestStatus::Failed(FailReason::RemoteBadAddress)
    );
}

#[test]
#[ignore = "needs EFA hardware: see README"]
fn efa_hw_error_receives_are_reposted_so_notifications_go_on() {
    let meta = Arc::new(LocalRegistry::new());
    let config = EfaConfig {
        recv_depth: 4,
        ..EfaConfig::default()
    };
    let fb = EfaFabric::new(config).expect("an EFA device");
    let service = fb.addresses()[0];
    let b = Engine::new(EngineConfig::new("b"), fb, meta.clone()).unwrap();
    let fa = EfaFabric::new(EfaConfig::default()).unwrap();
    let a = Engine::new(EngineConfig::new("a"), fa, meta).unwrap();
    a.accept_peer(&b.local_addresses()).unwrap();
    b.accept_peer(&a.local_addresses()).unwrap();

    // A misbehaving peer sends twice as many messages as the service QP has receives, each too
    // big for them: every one ends its receive in an error completion.
    let ctx = efa::Context::open_first_efa().unwrap();
    let pd = efa::Pd::new(&ctx).unwrap();
    let mut cq = efa::Cq::new(&ctx, 64).unwrap();
    let mut qp: efa::SrdQp = efa::QpBuilder::new(&pd, &cq, &cq).build_srd().unwrap();
    let mr = efa::Mr::alloc(&pd, 4096, efa::Access::LOCAL_WRITE).unwrap();
    let ah = efa::Ah::new(&pd, efa::AhAttr::new(service.gid, 0)).unwrap();
    let dest = efa::Dest::new(&ah, service.qpn, service.qkey);
    for i in 0..8 {
        let mut batch = qp.batch().unwrap();
        batch.send(i, &dest, &[mr.sge(0, 1024).unwrap()]).unwrap();
        batch.commit().unwrap();
        let mut wc = [efa::WorkCompletion::default()];
        assert_eq!(cq.wait_into(&mut wc, 1, WAIT).unwrap(), 1);
        println!("oversized send {i}: {:?}", wc[0].efa_status);
    }

    // Notifications still arrive: every receive slot was posted again.
    let src = owned(
        &a,
        "a/src",
        OwnedMemory::from_vec(pattern(64, 1)).unwrap(),
        Access::NONE,
    );
    owned(
        &b,
        "b/dst",
        OwnedMemory::zeroed(4096, 4096).unwrap(),
        Access::REMOTE_READ_WRITE,
    );
    let remote = a.open_segment("b/dst").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(8).unwrap();
    let reqs: Vec<Request> = (0..8)
        .map(|i| Request::write(src, 0, remote, i * 64, 64).with_op(Opcode::WriteWithNotify(7)))
        .collect();
    w.submit(batch, &reqs).unwrap();
    let s = w.wait(batch, WAIT).unwrap();
    assert!(s.all_completed(), "{s:?}");
    let t0 = std::time::Instant::now();
    while b.notifications().count(7).unwrap() < 8 && t0.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(b.notifications().count(7).unwrap(), 8);
}

#[test]
#[ignore = "needs EFA hardware: see README"]
fn efa_hw_a_peer_restarting_2000_times_keeps_its_slot() {
    use transport::fabric::Fabric;
    let config = EfaConfig {
        max_peers: 4,
        ..EfaConfig::default()
    };
    let fa = EfaFabric::new(config).expect("an EFA device");
    let mut first = None;
    for i in 0..2000 {
        // A restart: a new fabric instance on the same devices (the same GIDs), new service QPs.
        let fb = EfaFabric::new(EfaConfig::default()).unwrap();
        let id = fa
            .connect(&fb.local_addresses())
            .unwrap_or_else(|e| panic!("restart {i}: {e}"));
        assert_eq!(
            *first.get_or_insert(id),
            id,
            "restart {i} took a new peer slot"
        );
        fb.accept(&fa.local_addresses()).unwrap();
    }
    // The last route is the one in use: a transfer to a fresh instance goes through.
    let meta = Arc::new(LocalRegistry::new());
    let a = Engine::new(EngineConfig::new("a"), fa, meta.clone()).unwrap();
    let b = Engine::new(
        EngineConfig::new("b"),
        EfaFabric::new(EfaConfig::default()).unwrap(),
        meta,
    )
    .unwrap();
    a.accept_peer(&b.local_addresses()).unwrap();
    b.accept_peer(&a.local_addresses()).unwrap();
    let src = owned(
        &a,
        "a/src",
        OwnedMemory::from_vec(pattern(4096, 5)).unwrap(),
        Access::NONE,
    );
    let dst = owned(
        &b,
        "b/dst",
        OwnedMemory::zeroed(4096, 4096).unwrap(),
        Access::REMOTE_READ_WRITE,
    );
    let remote = a.open_segment("b/dst").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(1).unwrap();
    let op = if a.capabilities().supports_write {
        Request::write(src, 0, remote, 0, 4096)
    } else {
        Request::read(src, 0, remote, 0, 4096)
    };
    w.submit(batch, &[op]).unwrap();
    assert!(w.wait(batch, WAIT).unwrap().all_completed());
    if a.capabilities().supports_write {
        assert!(contents(&b, dst, 0, 4096) == pattern(4096, 5));
    }
}

/// Notifications are 0-byte SENDs with immediate posted inline with no buffer, as libfabric
/// posts 0-byte sends on EFA (a zero-SGE, non-inline send is not something EFA is known to
/// take). soft-efa counts inline work requests; on hardware the notifications arriving is the
/// check.
#[test]
#[ignore = "needs EFA hardware: see README"]
fn efa_hw_notifications_are_inline_zero_byte_sends() {
    let probe = EfaFabric::new(EfaConfig::default()).unwrap();
    // The target answers each two-sided WRITE with an inline zero-byte reply too.
    let replies = match probe.path(true) {
        Some(transport::fabric::efa::Path::TwoSided) => 4,
        _ => 0,
    };
    drop(probe);
    let (a, b) = pair();
    let dev = efa::efa_devices().unwrap().remove(0);
    let inline = || dev.hw_counters().unwrap().get("inline_wrs");
    let settle = |want: Option<u64>| {
        let t0 = std::time::Instant::now();
        let mut last = inline();
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let now = inline();
            if now == last && want.is_none_or(|w| now.unwrap_or(0) >= w)
                || t0.elapsed() > Duration::from_secs(5)
            {
                return now;
            }
            last = now;
        }
    };
    let src = owned(
        &a,
        "a/src",
        OwnedMemory::from_vec(pattern(4 * 4096, 3)).unwrap(),
        Access::NONE,
    );
    owned(
        &b,
        "b/dst",
        OwnedMemory::zeroed(4 * 4096, 4096).unwrap(),
        Access::REMOTE_READ_WRITE,
    );
    let remote = a.open_segment("b/dst").unwrap();
    let before = settle(None);
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(4).unwrap();
    // 4 KiB writes are too big to go inline: only the notifications can.
    let reqs: Vec<Request> = (0..4)
        .map(|i| {
            Request::write(src, i * 4096, remote, i * 4096, 4096)
                .with_op(Opcode::WriteWithNotify(9))
        })
        .collect();
    w.submit(batch, &reqs).unwrap();
    assert!(w.wait(batch, WAIT).unwrap().all_completed());
    assert_eq!(b.notifications().wait_for(9, 4, WAIT).unwrap(), 4);
    if let Some(before) = before {
        let after = settle(Some(before + 4)).unwrap();
        assert_eq!(
            after - before,
            4 + replies,
            "each notification is one inline work request ({replies} two-sided replies)"
        );
    }
}

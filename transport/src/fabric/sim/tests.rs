//! Fabric-level tests of the sim, below the engine.

use super::*;
use crate::fabric::{Completion, WorkOp, WorkRequest};
use crate::Access;

struct Pair {
    a: Arc<SimFabric>,
    b: Arc<SimFabric>,
    peer_b: PeerId,
}

fn pair(ca: SimConfig, cb: SimConfig) -> Pair {
    let net = SimNetwork::new();
    let a = SimFabric::new(&net, ca).unwrap();
    let b = SimFabric::new(&net, cb).unwrap();
    let peer_b = a.connect(&b.local_addresses()).unwrap();
    Pair { a, b, peer_b }
}

fn reg(f: &SimFabric, buf: &mut [u8], access: Access) -> Registration {
    // SAFETY: the test buffers outlive every request posted against them.
    unsafe {
        f.register(MemoryRegion {
            addr: buf.as_mut_ptr() as u64,
            len: buf.len() as u64,
            access,
        })
        .unwrap()
    }
}

// Mirrors the work request's fields one to one; a builder would only hide them.
#[allow(clippy::too_many_arguments)]
fn wr(
    op: WorkOp,
    token: u64,
    peer: PeerId,
    local: &[u8],
    lk: u64,
    remote: &[u8],
    rk: u64,
    len: u64,
) -> WorkRequest {
    WorkRequest {
        token,
        op,
        rail: 0,
        peer,
        remote_rail: 0,
        local_addr: local.as_ptr() as u64,
        local_key: lk,
        remote_addr: remote.as_ptr() as u64,
        remote_key: rk,
        len,
    }
}

fn poll_all(ep: &mut dyn Endpoint, n: usize) -> Vec<Completion> {
    let mut out = vec![Completion::default(); n.max(1)];
    let mut got = Vec::new();
    for _ in 0..100_000 {
        let k = ep.poll(&mut out);
        got.extend_from_slice(&out[..k]);
        if got.len() >= n {
            break;
        }
        if k == 0 {
            std::thread::yield_now();
        }
    }
    got
}

#[test]
fn write_read_and_key_checks() {
    let p = pair(SimConfig::default(), SimConfig::default());
    let mut src = vec![5u8; 64];
    let mut dst = vec![0u8; 64];
    let ls = reg(&p.a, &mut src, Access::NONE);
    let rd = reg(&p.b, &mut dst, Access::REMOTE_WRITE);
    let (lk, rk) = (
        ls.local_keys[0],
        p.a.decode_remote_key(0, &rd.remote_keys[0]).unwrap(),
    );
    let mut ep = p.a.endpoint().unwrap();
    let ok = wr(WorkOp::Write, 1, p.peer_b, &src, lk, &dst, rk, 64);
    let mut past_end = wr(WorkOp::Write, 2, p.peer_b, &src, lk, &dst, rk, 64);
    past_end.remote_addr += 1;
    let read_denied = wr(WorkOp::Read, 3, p.peer_b, &src, lk, &dst, rk, 8);
    let bad_lkey = wr(
        WorkOp::Write,
        4,
        p.peer_b,
        &src,
        lk ^ (1 << 16),
        &dst,
        rk,
        8,
    );
    assert_eq!(ep.post(&[ok, past_end, read_denied, bad_lkey]), 4);
    let mut got = poll_all(&mut *ep, 4);
    got.sort_by_key(|c| c.token);
    let errs: Vec<_> = got.iter().map(|c| c.error).collect();
    assert_eq!(
        errs,
        vec![
            None,
            Some(FailReason::RemoteBadAddress),
            Some(FailReason::RemoteBadAddress),
            Some(FailReason::InvalidLkey)
        ]
    );
    assert_eq!(dst, vec![5u8; 64]);
    p.b.deregister(&rd).unwrap();
    assert_eq!(ep.post(&[ok]), 1);
    assert_eq!(
        poll_all(&mut *ep, 1)[0].error,
        Some(FailReason::RemoteBadAddress)
    );
}

#[test]
fn unknown_peer_without_target_ah() {
    let cfg = SimConfig {
        handshake: false,
        ..SimConfig::default()
    };
    let p = pair(cfg, SimConfig::default());
    let mut src = vec![1u8; 8];
    let mut dst = vec![0u8; 8];
    let ls = reg(&p.a, &mut src, Access::NONE);
    let rd = reg(&p.b, &mut dst, Access::REMOTE_WRITE);
    let w = wr(
        WorkOp::Write,
        9,
        p.peer_b,
        &src,
        ls.local_keys[0],
        &dst,
        rd.handle,
        8,
    );
    let mut ep = p.a.endpoint().unwrap();
    ep.post(&[w]);
    assert_eq!(
        poll_all(&mut *ep, 1)[0].error,
        Some(FailReason::UnknownPeer)
    );
    assert_eq!(dst, vec![0u8; 8]);
    // The target creating its AH (the skipped half of the handshake) fixes it.
    p.b.accept(&p.a.local_addresses()).unwrap();
    ep.post(&[w]);
    assert_eq!(poll_all(&mut *ep, 1)[0].error, None);
    assert_eq!(dst, vec![1u8; 8]);
}

#[test]
fn limits_and_send_size() {
    let cfg = SimConfig {
        max_rdma_size: 16,
        max_msg_size: 4,
        ..SimConfig::default()
    };
    let p = pair(cfg, SimConfig::default());
    p.b.bind_notifications(Arc::new(Notifications::new(2)));
    let mut src = vec![1u8; 32];
    let mut dst = vec![0u8; 32];
    let ls = reg(&p.a, &mut src, Access::NONE);
    let rd = reg(&p.b, &mut dst, Access::REMOTE_WRITE);
    let big = wr(
        WorkOp::Write,
        1,
        p.peer_b,
        &src,
        ls.local_keys[0],
        &dst,
        rd.handle,
        17,
    );
    let mut send = wr(WorkOp::Notify { tag: 1 }, 2, p.peer_b, &src, 0, &dst, 0, 5);
    let mut ep = p.a.endpoint().unwrap();
    ep.post(&[big, send]);
    send.len = 0;
    send.token = 3;
    ep.post(&[send]);
    let mut got = poll_all(&mut *ep, 3);
    got.sort_by_key(|c| c.token);
    assert_eq!(got[0].error, Some(FailReason::BadLength));
    assert_eq!(got[1].error, Some(FailReason::BadLength));
    assert_eq!(got[2].error, None);
}

#[test]
fn bounded_queue_backpressure() {
    let cfg = SimConfig {
        queue_depth: 3,
        ..SimConfig::default()
    };
    let p = pair(cfg, SimConfig::default());
    let mut src = vec![1u8; 8];
    let mut dst = vec![0u8; 8];
    let ls = reg(&p.a, &mut src, Access::NONE);
    let rd = reg(&p.b, &mut dst, Access::REMOTE_WRITE);
    let w = wr(
        WorkOp::Write,
        0,
        p.peer_b,
        &src,
        ls.local_keys[0],
        &dst,
        rd.handle,
        8,
    );
    let mut ep = p.a.endpoint().unwrap();
    assert_eq!(ep.post(&[w; 5]), 3);
    assert_eq!(ep.post(&[w]), 0);
    assert_eq!(poll_all(&mut *ep, 3).len(), 3);
    assert_eq!(ep.post(&[w; 5]), 3);
}

#[test]
fn dead_peer_fails_after_timeout_and_order_is_seeded() {
    let cfg = SimConfig {
        faults: SimFaults {
            unresp_timeout: Duration::from_millis(5),
            ..SimFaults::default()
        },
        ..SimConfig::default()
    };
    let p = pair(cfg.clone(), SimConfig::default());
    let mut src = vec![1u8; 8];
    let mut dst = vec![0u8; 8];
    let ls = reg(&p.a, &mut src, Access::NONE);
    let rd = reg(&p.b, &mut dst, Access::REMOTE_WRITE);
    let w = wr(
        WorkOp::Write,
        0,
        p.peer_b,
        &src,
        ls.local_keys[0],
        &dst,
        rd.handle,
        8,
    );
    p.b.set_alive(false);
    let mut ep = p.a.endpoint().unwrap();
    ep.post(&[w]);
    let mut out = [Completion::default(); 1];
    assert_eq!(ep.poll(&mut out), 0, "a dead peer does not answer at once");
    let got = poll_all(&mut *ep, 1);
    assert_eq!(got[0].error, Some(FailReason::UnresponsiveRemote));

    // Same seed, same sequence -> same completion order; and it is not the post order.
    p.b.set_alive(true);
    let order = |seed: u64| {
        let q = pair(
            SimConfig {
                seed,
                ..cfg.clone()
            },
            SimConfig::default(),
        );
        let mut src = vec![1u8; 8];
        let mut dst = vec![0u8; 8];
        let ls = reg(&q.a, &mut src, Access::NONE);
        let rd = reg(&q.b, &mut dst, Access::REMOTE_WRITE);
        let mut ep = q.a.endpoint().unwrap();
        let wrs: Vec<_> = (0..32)
            .map(|t| {
                wr(
                    WorkOp::Write,
                    t,
                    q.peer_b,
                    &src,
                    ls.local_keys[0],
                    &dst,
                    rd.handle,
                    8,
                )
            })
            .collect();
        ep.post(&wrs);
        poll_all(&mut *ep, 32)
            .iter()
            .map(|c| c.token)
            .collect::<Vec<_>>()
    };
    assert_eq!(order(7), order(7));
    assert_ne!(order(7), (0..32).collect::<Vec<_>>());
}

#[test]
fn rejects_bad_addresses() {
    let p = pair(SimConfig::default(), SimConfig::default());
    assert!(p.a.connect(&[vec![1, 2, 3]]).is_err());
    assert!(p.a.connect(&[]).is_err());
    let mut addrs = p.b.local_addresses();
    addrs.push(addrs[0].clone());
    assert!(p.a.connect(&addrs).is_err());
    assert!(p.a.decode_remote_key(0, &[1, 2]).is_err());
}

#[test]
fn a_registration_on_some_rails_refuses_requests_on_the_others() {
    let two = SimConfig {
        rails: 2,
        ..SimConfig::default()
    };
    let p = pair(two.clone(), two);
    let mut src = vec![5u8; 64];
    let mut dst = vec![0u8; 64];
    let ls = reg(&p.a, &mut src, Access::NONE);
    let mut on1 = crate::RailSet::new();
    on1.push(1);
    // SAFETY: `dst` outlives every request posted against it.
    let rd = unsafe {
        p.b.register_on(
            MemoryRegion {
                addr: dst.as_mut_ptr() as u64,
                len: 64,
                access: Access::REMOTE_WRITE,
            },
            &on1,
        )
        .unwrap()
    };
    assert!(rd.remote_keys[0].is_empty(), "no key on rail 0");
    let rk = p.a.decode_remote_key(1, &rd.remote_keys[1]).unwrap();
    let mut ep = p.a.endpoint().unwrap();
    let to_rail0 = wr(
        WorkOp::Write,
        1,
        p.peer_b,
        &src,
        ls.local_keys[0],
        &dst,
        rk,
        64,
    );
    let to_rail1 = WorkRequest {
        token: 2,
        remote_rail: 1,
        ..to_rail0
    };
    assert_eq!(ep.post(&[to_rail0, to_rail1]), 2);
    let mut got = poll_all(&mut *ep, 2);
    got.sort_by_key(|c| c.token);
    assert_eq!(
        got.iter().map(|c| c.error).collect::<Vec<_>>(),
        vec![Some(FailReason::RemoteBadAddress), None]
    );
    assert_eq!(dst, vec![5u8; 64]);
}

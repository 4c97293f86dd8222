//! Tests on a real verbs device: the Soft-RoCE (rxe) VM stage runs them (`tests/vm/run`).
//!
//! Device: `$EFA_TEST_DEVICE`, else `rxe0`. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use efa::{
    Access, AhAttr, Context, Cq, Dest, DeviceKind, Error, Gid, Limit, Mr, Pd, QpAddress, QpBuilder,
    QpState, RcOptions, RcQp, RemoteAddr, Srq, UdQp, WcOpcode, WcStatus, WorkCompletion, GRH_BYTES,
};

const WAIT: Duration = Duration::from_secs(30);

fn device_name() -> String {
    std::env::var("EFA_TEST_DEVICE").unwrap_or_else(|_| "rxe0".to_owned())
}

fn open() -> Arc<Context> {
    Context::open(&device_name()).expect("open the test device")
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read_back(mr: &Mr<'_>, off: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mr.read_at(off, &mut v).unwrap();
    v
}

/// Wait for exactly `n` completions on `cq`; panics on timeout.
fn wait(cq: &mut Cq, n: usize) -> Vec<WorkCompletion> {
    let mut out = vec![WorkCompletion::default(); n];
    let got = cq.wait_into(&mut out, n, WAIT).unwrap();
    assert_eq!(got, n, "completions before the deadline: {:?}", &out[..got]);
    out
}

struct RcSide {
    _pd: Arc<Pd>,
    cq: Cq,
    qp: RcQp,
    mr: Mr<'static>,
}

fn rc_side(ctx: &Arc<Context>, depth: u32, mr_len: usize) -> RcSide {
    let pd = Pd::new(ctx).unwrap();
    let cq = Cq::new(ctx, depth * 2 + 16).unwrap();
    let qp = QpBuilder::new(&pd, &cq, &cq)
        .max_send_wr(depth)
        .max_recv_wr(depth)
        .max_inline_data(64)
        .build_rc()
        .unwrap();
    assert_eq!(qp.state(), QpState::Init);
    let mr = Mr::alloc(
        &pd,
        mr_len,
        Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE,
    )
    .unwrap();
    RcSide {
        _pd: pd,
        cq,
        qp,
        mr,
    }
}

fn rc_pair(depth: u32, mr_len: usize) -> (RcSide, RcSide) {
    let (ca, cb) = (open(), open());
    let mut a = rc_side(&ca, depth, mr_len);
    let mut b = rc_side(&cb, depth, mr_len);
    let (ea, eb) = (a.qp.endpoint(), b.qp.endpoint());
    a.qp.connect(&eb).unwrap();
    b.qp.connect(&ea).unwrap();
    assert_eq!(a.qp.query_state().unwrap(), QpState::Rts);
    (a, b)
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_device_is_listed_queried_and_not_efa() {
    let name = device_name();
    let devs = efa::devices().unwrap();
    let info = devs.iter().find(|d| d.name == name).expect("device listed");
    assert_eq!(info.kind, DeviceKind::SoftRoce, "{info:?}");
    assert!(!info.is_efa());
    let ctx = open();
    assert!(ctx.efa_attr().is_none());
    assert!(matches!(ctx.require_efa(), Err(Error::NotEfa { .. })));
    let port = ctx.query_port(1).unwrap();
    assert_eq!(port.state, efa::PortState::Active);
    assert_eq!(port.link_layer, efa::LinkLayer::Ethernet);
    assert!(port.max_msg_sz >= 1 << 20, "{port:?}");
    assert!(ctx.device_attr().max_qp_wr > 0);
    let table = ctx.gid_table(1).unwrap();
    let best = ctx.preferred_gid(1).unwrap();
    assert!(table.contains(&best));
    assert_eq!(best.gid_type, efa::GidType::RoceV2, "{table:?}");
    assert!(
        best.gid.ipv4().is_some(),
        "RoCE v2 IPv4 GID expected: {table:?}"
    );
    // rxe publishes per-port counters; reading them must work (values are whatever they are).
    ctx.hw_counters().unwrap();
    assert!(matches!(
        ctx.query_port(9),
        Err(Error::Verbs {
            call: "ibv_query_port",
            ..
        })
    ));
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_rc_inline_send_and_receive_list() {
    let (mut a, mut b) = rc_pair(64, 64 << 10);
    // Chained receives; inline sends (the data is copied at posting, no SGE).
    let wrs: Vec<(u64, efa::Sge)> = (0..40u64)
        .map(|i| (i, b.mr.sge(i as usize * 64, 64).unwrap()))
        .collect();
    b.qp.post_recv_list(&wrs).unwrap();
    let mut batch = a.qp.batch().unwrap();
    for i in 0..40u8 {
        batch.send_inline(u64::from(i), &[i; 48], None).unwrap();
    }
    batch.commit().unwrap();
    for w in wait(&mut a.cq, 40) {
        assert_eq!(w.status, WcStatus::Success, "{w:?}");
    }
    let mut rwcs = wait(&mut b.cq, 40);
    rwcs.sort_by_key(|w| w.wr_id);
    for (i, w) in rwcs.iter().enumerate() {
        assert_eq!((w.wr_id, w.byte_len), (i as u64, 48), "{w:?}");
        assert_eq!(read_back(&b.mr, i * 64, 48), vec![i as u8; 48]);
    }
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_rc_write_read_send_and_write_imm_between_threads() {
    let (mut a, mut b) = rc_pair(64, 64 << 10);
    let write = pattern(1, 4096);
    let send = pattern(2, 256);
    let imm_data = pattern(3, 1024);
    let remote_src = pattern(4, 4096);
    a.mr.write_at(0, &write).unwrap();
    a.mr.write_at(8192, &send).unwrap();
    a.mr.write_at(12288, &imm_data).unwrap();
    b.mr.write_at(32768, &remote_src).unwrap();
    b.qp.post_recv(100, &[b.mr.sge(40960, 256).unwrap()])
        .unwrap();
    b.qp.post_recv(101, &[b.mr.sge(45056, 16).unwrap()])
        .unwrap();

    let peer = b.mr.remote();
    let handle = std::thread::spawn(move || {
        let mut b = b;
        let wcs = wait(&mut b.cq, 2);
        (b, wcs)
    });
    let mut batch = a.qp.batch().unwrap();
    batch
        .write(
            1,
            &[a.mr.sge(0, 4096).unwrap()],
            RemoteAddr {
                addr: peer.at(0, 4096).unwrap(),
                rkey: peer.rkey,
            },
        )
        .unwrap();
    batch
        .read(
            2,
            &[a.mr.sge(16384, 4096).unwrap()],
            RemoteAddr {
                addr: peer.at(32768, 4096).unwrap(),
                rkey: peer.rkey,
            },
        )
        .unwrap();
    batch.send(3, &[a.mr.sge(8192, 256).unwrap()]).unwrap();
    batch
        .write_imm(
            4,
            &[a.mr.sge(12288, 1024).unwrap()],
            RemoteAddr {
                addr: peer.at(20480, 1024).unwrap(),
                rkey: peer.rkey,
            },
            0xdead_beef,
        )
        .unwrap();
    batch.commit().unwrap();
    let mut wcs = wait(&mut a.cq, 4);
    wcs.sort_by_key(|w| w.wr_id);
    for (w, op) in wcs.iter().zip([
        WcOpcode::RdmaWrite,
        WcOpcode::RdmaRead,
        WcOpcode::Send,
        WcOpcode::RdmaWrite,
    ]) {
        assert_eq!(w.status, WcStatus::Success, "{w:?}");
        assert_eq!(w.opcode, Some(op), "{w:?}");
    }
    assert_eq!(read_back(&a.mr, 16384, 4096), remote_src, "RDMA read data");

    let (b, rwcs) = handle.join().unwrap();
    assert_eq!(rwcs[0].wr_id, 100);
    assert_eq!(rwcs[0].opcode, Some(WcOpcode::Recv));
    assert_eq!(rwcs[0].byte_len, 256);
    assert_eq!(rwcs[0].imm, None);
    assert_eq!(rwcs[1].wr_id, 101);
    assert_eq!(rwcs[1].opcode, Some(WcOpcode::RecvRdmaWithImm));
    assert_eq!(rwcs[1].imm, Some(0xdead_beef));
    assert_eq!(rwcs[1].byte_len, 1024);
    assert_eq!(read_back(&b.mr, 0, 4096), write, "RDMA write data");
    assert_eq!(read_back(&b.mr, 40960, 256), send, "SEND data");
    assert_eq!(
        read_back(&b.mr, 20480, 1024),
        imm_data,
        "write-with-imm data"
    );
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_srq_feeds_two_rc_qps_reposted_from_another_thread() {
    let (ca, cb) = (open(), open());
    let mut a = rc_side(&ca, 16, 4096);
    // Side b: two RC QPs that take their receives from one SRQ, completing into one CQ.
    let pd = Pd::new(&cb).unwrap();
    let d = cb.device_attr();
    assert!(d.max_srq > 0 && d.max_srq_wr >= 8, "{d:?}");
    assert!(matches!(
        Srq::new(&pd, d.max_srq_wr + 1, 1),
        Err(Error::Limit { .. })
    ));
    let srq = Srq::new(&pd, 8, 1).unwrap();
    assert!(srq.capacity() >= 8, "{srq:?}");
    let mut cq = Cq::new(&cb, 64).unwrap();
    let build = || {
        QpBuilder::new(&pd, &cq, &cq)
            .max_send_wr(16)
            .max_inline_data(64)
            .srq(&srq)
            .build_rc()
            .unwrap()
    };
    let (mut b1, mut b2) = (build(), build());
    // A receive belongs to the SRQ now, not to the QP.
    assert!(b1.post_recv(0, &[]).is_err());
    let a2_cq = Cq::new(&ca, 64).unwrap();
    let mut a2 = QpBuilder::new(&a._pd, &a2_cq, &a2_cq)
        .max_send_wr(16)
        .max_recv_wr(1)
        .build_rc()
        .unwrap();
    a.qp.connect(&b1.endpoint()).unwrap();
    b1.connect(&a.qp.endpoint()).unwrap();
    a2.connect(&b2.endpoint()).unwrap();
    b2.connect(&a2.endpoint()).unwrap();

    // Only 4 receives posted for 8 messages: the rest wait (RNR retries) until the other
    // thread reposts, through its own handle on the SRQ.
    for i in 0..4 {
        srq.post_recv(i, &[]).unwrap();
    }
    let reposter = {
        let srq = Arc::clone(&srq);
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [WorkCompletion::default(); 8];
            let deadline = std::time::Instant::now() + WAIT;
            while seen.len() < 8 && std::time::Instant::now() < deadline {
                let n = cq.poll_into(&mut buf).unwrap();
                for w in &buf[..n] {
                    assert_eq!(w.status, WcStatus::Success, "{w:?}");
                    seen.push((w.qp_num, w.imm));
                    srq.post_recv(100 + seen.len() as u64, &[]).unwrap();
                }
            }
            (seen, cq)
        })
    };
    let mut batch = a.qp.batch().unwrap();
    for i in 0..4u32 {
        batch.send_imm(u64::from(i), &[], 0x100 + i).unwrap();
    }
    batch.commit().unwrap();
    let mut batch = a2.batch().unwrap();
    for i in 0..4u32 {
        batch.send_imm(u64::from(i), &[], 0x200 + i).unwrap();
    }
    batch.commit().unwrap();
    for w in wait(&mut a.cq, 4) {
        assert_eq!(w.status, WcStatus::Success, "{w:?}");
    }
    let (seen, mut cq) = reposter.join().unwrap();
    let from = |qpn: u32| -> Vec<Option<u32>> {
        seen.iter()
            .filter(|(q, _)| *q == qpn)
            .map(|(_, imm)| *imm)
            .collect()
    };
    // In order per QP, each on the QP it arrived at.
    assert_eq!(
        from(b1.qp_num()),
        (0..4).map(|i| Some(0x100 + i)).collect::<Vec<_>>()
    );
    assert_eq!(
        from(b2.qp_num()),
        (0..4).map(|i| Some(0x200 + i)).collect::<Vec<_>>()
    );

    // The QPs on the SRQ still send: b1 writes back to a over the same connection.
    let peer = a.mr.remote();
    let mut batch = b1.batch().unwrap();
    batch
        .write_inline(
            7,
            &[0x5a; 32],
            RemoteAddr {
                addr: peer.at(64, 32).unwrap(),
                rkey: peer.rkey,
            },
        )
        .unwrap();
    batch.commit().unwrap();
    let w = wait(&mut cq, 1)[0];
    assert_eq!(
        (w.wr_id, w.status, w.qp_num),
        (7, WcStatus::Success, b1.qp_num()),
        "{w:?}"
    );
    assert_eq!(read_back(&a.mr, 64, 32), vec![0x5a; 32]);
}

/// Wire format of the two-process test: endpoint then region.
fn encode(e: &QpAddress, r: &efa::RemoteMr) -> [u8; 44] {
    let mut b = [0u8; 44];
    b[..16].copy_from_slice(e.gid.as_bytes());
    b[16..20].copy_from_slice(&e.qpn.to_le_bytes());
    b[20..24].copy_from_slice(&e.qkey_or_psn.to_le_bytes());
    b[24..32].copy_from_slice(&r.addr.to_le_bytes());
    b[32..40].copy_from_slice(&r.len.to_le_bytes());
    b[40..44].copy_from_slice(&r.rkey.to_le_bytes());
    b
}

fn decode(b: &[u8; 44]) -> (QpAddress, efa::RemoteMr) {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let mut gid = [0u8; 16];
    gid.copy_from_slice(&b[..16]);
    (
        QpAddress {
            gid: Gid(gid),
            qpn: u32_at(16),
            qkey_or_psn: u32_at(20),
            lid: 0,
        },
        efa::RemoteMr {
            addr: u64_at(24),
            len: u64_at(32),
            rkey: u32_at(40),
        },
    )
}

fn exchange(s: &mut TcpStream, mine: &[u8; 44]) -> [u8; 44] {
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(mine).unwrap();
    let mut theirs = [0u8; 44];
    s.read_exact(&mut theirs).unwrap();
    theirs
}

const PEER_ENV: &str = "EFA_VM_RC_PEER_PORT";

/// The responder half, run in a child process: it receives a SEND and a write-with-imm, then
/// checks everything the initiator wrote and reports over TCP.
fn rc_responder(port: u16) {
    let ctx = open();
    let mut me = rc_side(&ctx, 16, 64 << 10);
    me.mr.write_at(32768, &pattern(9, 4096)).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (peer, _) = decode(&exchange(
        &mut s,
        &encode(&me.qp.endpoint(), &me.mr.remote()),
    ));
    me.qp.connect(&peer).unwrap();
    me.qp
        .post_recv(1, &[me.mr.sge(40960, 512).unwrap()])
        .unwrap();
    me.qp.post_recv(2, &[me.mr.sge(45056, 8).unwrap()]).unwrap();
    s.write_all(b"R").unwrap();
    let w = wait(&mut me.cq, 2);
    let ok = w[0].opcode == Some(WcOpcode::Recv)
        && w[0].byte_len == 300
        && w[1].imm == Some(0x0bad_cafe)
        && read_back(&me.mr, 0, 8192) == pattern(5, 8192)
        && read_back(&me.mr, 40960, 300) == pattern(6, 300)
        && read_back(&me.mr, 20480, 2048) == pattern(7, 2048);
    s.write_all(if ok { b"K" } else { b"F" }).unwrap();
    assert!(ok, "responder saw {w:?}");
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_rc_two_processes() {
    if let Ok(port) = std::env::var(PEER_ENV) {
        rc_responder(port.parse().unwrap());
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "vm_rc_two_processes",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PEER_ENV, port.to_string())
        .spawn()
        .unwrap();
    let (mut s, _) = listener.accept().unwrap();
    let ctx = open();
    let mut me = rc_side(&ctx, 16, 64 << 10);
    me.mr.write_at(0, &pattern(5, 8192)).unwrap();
    me.mr.write_at(8192, &pattern(6, 300)).unwrap();
    me.mr.write_at(12288, &pattern(7, 2048)).unwrap();
    let (peer, region) = decode(&exchange(
        &mut s,
        &encode(&me.qp.endpoint(), &me.mr.remote()),
    ));
    me.qp.connect(&peer).unwrap();
    let mut ready = [0u8; 1];
    s.read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"R");
    let at = |off: u64, len: u64| RemoteAddr {
        addr: region.at(off, len).unwrap(),
        rkey: region.rkey,
    };
    let mut b = me.qp.batch().unwrap();
    b.write(1, &[me.mr.sge(0, 8192).unwrap()], at(0, 8192))
        .unwrap();
    b.read(2, &[me.mr.sge(24576, 4096).unwrap()], at(32768, 4096))
        .unwrap();
    b.send(3, &[me.mr.sge(8192, 300).unwrap()]).unwrap();
    b.write_imm(
        4,
        &[me.mr.sge(12288, 2048).unwrap()],
        at(20480, 2048),
        0x0bad_cafe,
    )
    .unwrap();
    b.commit().unwrap();
    let w = wait(&mut me.cq, 4);
    assert!(w.iter().all(WorkCompletion::is_success), "{w:?}");
    assert_eq!(
        read_back(&me.mr, 24576, 4096),
        pattern(9, 4096),
        "RDMA read across processes"
    );
    let mut verdict = [0u8; 1];
    s.read_exact(&mut verdict).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(&verdict, b"K", "responder verdict");
    assert!(status.success(), "responder exit: {status}");
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_rc_thousand_op_batch() {
    const N: usize = 1000;
    let (mut a, b) = rc_pair(1024, 64 * N);
    let data = pattern(11, 64 * N);
    a.mr.write_at(0, &data).unwrap();
    let peer = b.mr.remote();
    let mut batch = a.qp.batch().unwrap();
    for i in 0..N {
        let off = (i * 64) as u64;
        batch
            .write(
                i as u64,
                &[a.mr.sge(i * 64, 64).unwrap()],
                RemoteAddr {
                    addr: peer.at(off, 64).unwrap(),
                    rkey: peer.rkey,
                },
            )
            .unwrap();
    }
    assert_eq!(batch.len() as usize, N);
    batch.commit().unwrap();
    let w = wait(&mut a.cq, N);
    let mut ids: Vec<u64> = w
        .iter()
        .map(|w| {
            assert_eq!(w.status, WcStatus::Success, "{w:?}");
            w.wr_id
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..N as u64).collect::<Vec<_>>());
    assert_eq!(read_back(&b.mr, 0, 64 * N), data);

    // A batch longer than the send queue is refused before the device sees it.
    let depth = a.qp.caps().max_send_wr;
    let mut batch = a.qp.batch().unwrap();
    let sge = a.mr.sge(0, 8).unwrap();
    let mut refused = None;
    for i in 0..=depth {
        if let Err(e) = batch.write(
            u64::from(i),
            &[sge],
            RemoteAddr {
                addr: peer.addr,
                rkey: peer.rkey,
            },
        ) {
            refused = Some((i, e));
            break;
        }
    }
    drop(batch);
    let (at, e) = refused.expect("over-long batch refused");
    assert_eq!(at, depth);
    assert!(
        matches!(
            e,
            Error::Limit {
                limit: Limit::BatchLength,
                ..
            }
        ),
        "{e:?}"
    );
    // The aborted batch posted nothing.
    let mut none = [WorkCompletion::default(); 4];
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(a.cq.poll_into(&mut none).unwrap(), 0);
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_ud_send_recv_through_ah() {
    let ctx = open();
    let pd = Pd::new(&ctx).unwrap();
    let mut cq = Cq::new(&ctx, 64).unwrap();
    let mut rcq = Cq::new(&ctx, 64).unwrap();
    let mut tx: UdQp = QpBuilder::new(&pd, &cq, &cq)
        .qkey(0x1234)
        .build_ud()
        .unwrap();
    let mut rx: UdQp = QpBuilder::new(&pd, &rcq, &rcq)
        .qkey(0x1234)
        .build_ud()
        .unwrap();
    assert_eq!(tx.state(), QpState::Rts);
    let mtu = tx.limits().max_send_bytes as usize;
    assert!(mtu >= 256);
    let mut mr = Mr::alloc(&pd, 16384, Access::LOCAL_WRITE).unwrap();
    let payload = pattern(21, 512.min(mtu));
    mr.write_at(0, &payload).unwrap();
    let recv_len = (GRH_BYTES + payload.len()) as u32;
    rx.post_recv(7, &[mr.sge(4096, recv_len).unwrap()]).unwrap();
    rx.post_recv(8, &[mr.sge(8192, recv_len).unwrap()]).unwrap();
    let rxe = rx.endpoint();
    let ah = efa::Ah::new(&pd, AhAttr::new(rxe.gid, tx.gid_entry().index as u8)).unwrap();
    let dest = Dest::new(&ah, rxe.qpn, rxe.qkey_or_psn);
    let mut b = tx.batch().unwrap();
    b.send(1, &dest, &[mr.sge(0, payload.len() as u32).unwrap()])
        .unwrap();
    b.send_imm(2, &dest, &[mr.sge(0, payload.len() as u32).unwrap()], 77)
        .unwrap();
    b.commit().unwrap();
    assert!(wait(&mut cq, 2).iter().all(WorkCompletion::is_success));
    let w = wait(&mut rcq, 2);
    for (w, id) in w.iter().zip([7, 8]) {
        assert_eq!(w.status, WcStatus::Success, "{w:?}");
        assert_eq!(w.wr_id, id);
        assert_eq!(w.byte_len, recv_len, "GRH + payload");
        assert_eq!(w.src_qp, tx.qp_num());
    }
    assert_eq!(w[1].imm, Some(77));
    assert_eq!(read_back(&mr, 4096 + GRH_BYTES, payload.len()), payload);
    assert_eq!(read_back(&mr, 8192 + GRH_BYTES, payload.len()), payload);

    // Datagrams above the path MTU are refused before the device sees them.
    let big = Mr::alloc(&pd, mtu + 1, Access::LOCAL_WRITE).unwrap();
    let mut b = tx.batch().unwrap();
    let e = b.send(3, &dest, &[big.sge_all().unwrap()]).unwrap_err();
    assert_eq!(
        e,
        Error::Limit {
            limit: Limit::DatagramBytes,
            value: mtu as u64 + 1,
            max: mtu as u64
        }
    );
    // UD has no RDMA and SRD needs EFA: both are typed errors.
    drop(b);
    assert!(matches!(
        QpBuilder::new(&pd, &cq, &cq).build_srd(),
        Err(Error::NotEfa { .. })
    ));
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_bad_rkey_is_remote_access_error() {
    let (mut a, mut b) = rc_pair(16, 8192);
    let peer = b.mr.remote();
    let mut batch = a.qp.batch().unwrap();
    batch
        .write(
            1,
            &[a.mr.sge(0, 64).unwrap()],
            RemoteAddr {
                addr: peer.addr,
                rkey: peer.rkey ^ 0x00ff_ff00,
            },
        )
        .unwrap();
    batch.commit().unwrap();
    let w = wait(&mut a.cq, 1);
    assert_eq!(w[0].wr_id, 1);
    assert_eq!(w[0].status, WcStatus::RemAccessErr, "{w:?}");
    assert_eq!(w[0].efa_status, None, "vendor_err is only named on EFA");
    // The requester moved to the error state; later work is flushed, typed as such.
    let mut batch = a.qp.batch().unwrap();
    batch
        .write(
            2,
            &[a.mr.sge(0, 64).unwrap()],
            RemoteAddr {
                addr: peer.addr,
                rkey: peer.rkey,
            },
        )
        .unwrap();
    batch.commit().unwrap();
    let w = wait(&mut a.cq, 1);
    assert_eq!(w[0].status, WcStatus::WrFlushErr, "{w:?}");
    assert_eq!(a.qp.query_state().unwrap(), QpState::Err);
    // Nothing reached the target region.
    assert_eq!(read_back(&b.mr, 0, 64), vec![0; 64]);
    let mut none = [WorkCompletion::default(); 2];
    let _ = b.cq.poll_into(&mut none).unwrap();
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_wrong_state_transitions_are_typed_errors() {
    let ctx = open();
    let mut side = rc_side(&ctx, 8, 4096);
    let sge = side.mr.sge(0, 8).unwrap();
    assert!(matches!(
        side.qp.batch(),
        Err(Error::QpState {
            op: "post sends",
            state: QpState::Init
        })
    ));
    let mut other = rc_side(&ctx, 8, 4096);
    let ep = other.qp.endpoint();
    side.qp.connect(&ep).unwrap();
    other.qp.connect(&side.qp.endpoint()).unwrap();
    assert_eq!(
        side.qp.connect(&ep),
        Err(Error::QpState {
            op: "connect",
            state: QpState::Rts
        })
    );
    side.qp.set_error().unwrap();
    assert_eq!(side.qp.query_state().unwrap(), QpState::Err);
    assert!(matches!(
        side.qp.batch(),
        Err(Error::QpState {
            state: QpState::Err,
            ..
        })
    ));
    let bad = QpAddress { qpn: 1 << 24, ..ep };
    assert!(matches!(other.qp.connect(&bad), Err(Error::QpState { .. })));
    let mut fresh = rc_side(&ctx, 8, 4096);
    assert!(matches!(
        fresh.qp.connect(&bad),
        Err(Error::Limit {
            limit: Limit::Bits24,
            ..
        })
    ));
    // A transition the device refuses (more outstanding reads than it supports) is a typed
    // verbs error naming the target state, and the handle's state stays where the device left it.
    let pd = Pd::new(&ctx).unwrap();
    let cq = Cq::new(&ctx, 16).unwrap();
    let too_many = ctx
        .device_attr()
        .max_qp_rd_atom
        .max(ctx.device_attr().max_qp_init_rd_atom)
        + 1;
    let mut greedy = QpBuilder::new(&pd, &cq, &cq)
        .rc_options(RcOptions {
            max_rd_atomic: too_many.min(255) as u8,
            ..RcOptions::default()
        })
        .build_rc()
        .unwrap();
    match greedy.connect(&ep) {
        Err(Error::Verbs {
            call: "ibv_modify_qp",
            errno,
            arg: Some(("target state", target)),
        }) => {
            assert_eq!(errno, 22, "EINVAL");
            let before = if target == 2 {
                QpState::Init
            } else {
                QpState::Rtr
            };
            assert_eq!(greedy.state(), before);
            assert_eq!(greedy.query_state().unwrap(), before);
        }
        other => panic!("device accepted max_rd_atomic {too_many}: {other:?}"),
    }
    // Receives may be posted in INIT, and too many SGEs are refused by count.
    fresh.qp.post_recv(1, &[sge]).unwrap();
    assert!(matches!(
        fresh.qp.post_recv(2, &[sge, sge, sge]),
        Err(Error::Limit {
            limit: Limit::RecvSges,
            ..
        })
    ));
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_drop_with_outstanding_work_is_clean() {
    let (mut a, mut b) = rc_pair(256, 1 << 20);
    for i in 0..64 {
        b.qp.post_recv(i, &[b.mr.sge((i as usize) * 1024, 1024).unwrap()])
            .unwrap();
    }
    let peer = b.mr.remote();
    let mut batch = a.qp.batch().unwrap();
    for i in 0..200u64 {
        batch
            .write(
                i,
                &[a.mr.sge(0, 4096).unwrap()],
                RemoteAddr {
                    addr: peer.addr,
                    rkey: peer.rkey,
                },
            )
            .unwrap();
    }
    batch.commit().unwrap();
    // Drop the receiver's QP with 64 receives posted, and the sender's CQ before its QP.
    let RcSide {
        cq: bcq,
        qp: bqp,
        mr: bmr,
        ..
    } = b;
    drop(bqp);
    let RcSide {
        cq: acq,
        qp: aqp,
        mr: amr,
        ..
    } = a;
    drop(acq);
    drop(aqp);
    drop(amr);
    // The receiver's CQ still polls (flushed entries or nothing), then everything unwinds.
    let mut cq = bcq;
    let mut out = [WorkCompletion::default(); 128];
    let n = cq.poll_into(&mut out).unwrap();
    assert!(
        out[..n]
            .iter()
            .all(|w| w.status == WcStatus::WrFlushErr || w.is_success()),
        "{:?}",
        &out[..n]
    );
    drop(bmr);
    drop(cq);
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_memory_and_domains_fail_typed() {
    let ctx = open();
    let pd = Pd::new(&ctx).unwrap();
    // Borrowed buffer: registered, used for an SGE, released on drop.
    let mut buf = vec![0u8; 4096];
    {
        let mr = Mr::register(&pd, &mut buf, Access::default()).unwrap();
        assert_eq!(mr.access(), Access::LOCAL_WRITE);
        assert!(mr.sge(4000, 200).is_err());
        assert_eq!(mr.sge(0, 4096).unwrap().lkey(), mr.lkey());
    }
    buf[0] = 1;
    // dma-buf with a descriptor that is no dma-buf: a typed verbs error (or Unsupported on
    // libraries without the symbol), never a crash.
    let file = std::fs::File::open("/dev/null").unwrap();
    use std::os::fd::AsFd;
    match Mr::register_dmabuf(&pd, file.as_fd(), 0, 4096, 0, Access::LOCAL_WRITE) {
        Err(Error::Verbs {
            call: "ibv_reg_dmabuf_mr",
            ..
        })
        | Err(Error::Unsupported { .. }) => {}
        other => panic!("unexpected {other:?}"),
    }
    // Thread domains: rxe has none; the failure is typed and names the call.
    match efa::ThreadDomain::new(&pd) {
        Ok(_) => {}
        Err(Error::Verbs { call, errno, .. }) => {
            assert_eq!(call, "ibv_alloc_td");
            assert!(errno == libc_eopnotsupp() || errno == 38, "errno {errno}");
        }
        Err(e) => panic!("unexpected {e:?}"),
    }
    // A CQ deeper than the device allows is refused with the limit.
    let max = ctx.device_attr().max_cqe;
    assert!(matches!(
        Cq::new(&ctx, max + 1),
        Err(Error::Limit {
            limit: Limit::CqDepth,
            ..
        })
    ));
    assert!(matches!(
        Mr::alloc(&pd, 0, Access::default()),
        Err(Error::Invalid { .. })
    ));
}

fn libc_eopnotsupp() -> i32 {
    95
}

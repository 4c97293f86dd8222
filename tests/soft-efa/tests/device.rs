//! soft-efa as a program sees it, through the project's `efa` crate and raw `efa-sys` calls: the
//! rules EFA enforces, each with the error the hardware gives, and SRD's exactly-once delivery
//! under loss and reordering between two processes.
//!
//! The binary re-executes itself with `LD_LIBRARY_PATH` pointing at soft-efa (built beside it by
//! cargo), so `cargo test` needs no set-up. Every case runs with 5% packet loss and 10% of packets
//! reordered (`SOFT_EFA_FAULTS`): what they assert holds on a lossy fabric. It prints cargo's
//! summary line.

use std::io::{BufRead, BufReader, Write};
use std::panic::catch_unwind;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use efa::{
    Access, Ah, AhAttr, Context, Cq, Dest, EfaStatus, Gid, Mr, Pd, QpBuilder, RemoteAddr, SrdQp,
    WorkCompletion,
};

const MARK: &str = "SOFT_EFA_DEVICE_TEST";
const FAULTS: &str = "loss=0.05,reorder=0.1,delay_us=3000,seed=17";
const WAIT: Duration = Duration::from_secs(30);

/// soft-efa's library directory: the cdylib cargo built beside this test, under rdma-core's names.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let lib = profile_dir.join("libsoft_efa.so");
    let age = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    assert!(
        age(&lib)
            >= age(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/device.rs")
                .as_path()),
        "{} is missing or older than its sources: run `cargo build -p soft-efa` first",
        lib.display()
    );
    let dir = profile_dir.join("soft-efa-test-lib");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["libibverbs.so.1", "libefa.so.1"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(profile_dir.join("libsoft_efa.so"), &link).unwrap();
    }
    dir
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os(MARK).is_none() {
        let status = Command::new(std::env::current_exe().unwrap())
            .args(&args)
            .env(MARK, "1")
            .env("LD_LIBRARY_PATH", lib_dir())
            .env(
                "SOFT_EFA_DEVICES",
                "softefa0=newest@127.0.0.1,softefa1=newest@127.0.0.1",
            )
            .env("SOFT_EFA_UNRESP_MS", "20000")
            .env("SOFT_EFA_FAULTS", FAULTS)
            .status()
            .unwrap();
        return ExitCode::from(status.code().unwrap_or(1) as u8);
    }
    if args.first().map(String::as_str) == Some("--peer") {
        return peer();
    }
    if args.first().map(String::as_str) == Some("--deadlock") {
        deadlock(args.get(1).map_or("", String::as_str));
        // Reaching here means soft-efa let the call through.
        return ExitCode::SUCCESS;
    }
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let cases: [(&str, fn()); 9] = [
        (
            "loads_soft_efa_with_the_profile_attributes",
            loads_soft_efa_with_the_profile_attributes,
        ),
        (
            "unsignaled_wr_is_refused_with_einval",
            unsignaled_wr_is_refused_with_einval,
        ),
        (
            "two_sges_on_rdma_are_refused_with_einval",
            two_sges_on_rdma_are_refused_with_einval,
        ),
        (
            "send_over_max_msg_sz_completes_bad_length",
            send_over_max_msg_sz_completes_bad_length,
        ),
        (
            "rdma_without_target_ah_is_unknown_peer",
            rdma_without_target_ah_is_unknown_peer,
        ),
        (
            "qkey_with_bit_31_is_refused_with_eperm",
            qkey_with_bit_31_is_refused_with_eperm,
        ),
        (
            "write_to_read_only_mr_is_remote_bad_address",
            write_to_read_only_mr_is_remote_bad_address,
        ),
        (
            "lossy_reordered_srd_delivers_every_wr_once_between_processes",
            lossy_srd_between_processes,
        ),
        (
            "same_thread_provider_deadlocks_abort_with_their_cause",
            same_thread_provider_deadlocks_abort_with_their_cause,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        match catch_unwind(case) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!("\ntest result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One SRD endpoint: context, PD, CQ, QP and a registration.
struct Side {
    pd: Arc<Pd>,
    cq: Cq,
    qp: SrdQp,
    mr: Mr<'static>,
}

fn side(device: &str, len: usize, access: Access) -> Side {
    let ctx = Context::open(device).unwrap();
    let pd = Pd::new(&ctx).unwrap();
    let cq = Cq::new(&ctx, 4096).unwrap();
    let qp = QpBuilder::new(&pd, &cq, &cq)
        .max_send_wr(1024)
        .max_recv_wr(1024)
        .build_srd()
        .unwrap();
    let mr = Mr::alloc(&pd, len, access).unwrap();
    Side { pd, cq, qp, mr }
}

fn ah_to(from: &Side, gid: Gid) -> Arc<Ah> {
    Ah::new(&from.pd, AhAttr::new(gid, 0)).unwrap()
}

fn wait_one(cq: &mut Cq) -> WorkCompletion {
    let mut out = [WorkCompletion::default(); 1];
    assert_eq!(
        cq.wait_into(&mut out, 1, WAIT).unwrap(),
        1,
        "no completion in time"
    );
    out[0]
}

const RW: Access = Access::LOCAL_WRITE
    .union(Access::REMOTE_WRITE)
    .union(Access::REMOTE_READ);

fn loads_soft_efa_with_the_profile_attributes() {
    let names: Vec<String> = efa::devices()
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["softefa0", "softefa1"]);
    let ctx = Context::open("softefa0").unwrap();
    let attr = ctx.require_efa().unwrap();
    assert_eq!(ctx.device_attr().vendor_id, 0x1d0f);
    assert_eq!(attr.max_rdma_size, 1 << 30);
    let port = ctx.query_port(1).unwrap();
    assert_eq!(port.max_msg_sz, 8928);
}

/// The raw extended QP of `qp`, for posts the `efa` crate would refuse before the device.
fn qpx(qp: &SrdQp) -> *mut efa_sys::ibv_qp_ex {
    let v = efa_sys::verbs().unwrap();
    // SAFETY: the QP is live and was created with send ops.
    let x = unsafe { (v.ibv_qp_to_qp_ex)(qp.as_raw()) };
    assert!(!x.is_null());
    x
}

/// Posts one work request through the raw `ibv_wr_*` calls and returns `ibv_wr_complete`'s result.
fn raw_post(
    qp: &SrdQp,
    ah: &Ah,
    dest_qpn: u32,
    qkey: u32,
    flags: u32,
    build: impl FnOnce(*mut efa_sys::ibv_qp_ex),
) -> i32 {
    let x = qpx(qp);
    // SAFETY: a live extended QP in RTS; the AH is live; the buffers given to `build` are
    // registered and outlive the completion, which the callers wait for.
    unsafe {
        efa_sys::ibv_wr_start(x);
        (*x).wr_id = 77;
        (*x).wr_flags = flags;
        build(x);
        efa_sys::ibv_wr_set_ud_addr(x, ah.as_raw(), dest_qpn, qkey);
        efa_sys::ibv_wr_complete(x)
    }
}

/// A raw SRD QP without `sq_sig_all` (the `efa` crate always sets it), moved to RTS.
fn raw_srd_qp(a: &Side) -> *mut efa_sys::ibv_qp {
    let v = efa_sys::verbs().unwrap();
    let dv = efa_sys::efadv().unwrap();
    // SAFETY: plain C structs filled as efadv_create_qp_ex(3) and ibv_modify_qp(3) describe; the
    // PD and CQ are live for the test.
    unsafe {
        let mut init: efa_sys::ibv_qp_init_attr_ex = std::mem::zeroed();
        init.send_cq = a.cq.as_raw().cast();
        init.recv_cq = a.cq.as_raw().cast();
        init.cap.max_send_wr = 16;
        init.cap.max_recv_wr = 16;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        init.qp_type = efa_sys::IBV_QPT_DRIVER;
        init.comp_mask = efa_sys::IBV_QP_INIT_ATTR_PD | efa_sys::IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
        init.pd = a.pd.as_raw();
        init.send_ops_flags = u64::from(efa_sys::IBV_QP_EX_WITH_SEND);
        let mut efa: efa_sys::efadv_qp_init_attr = std::mem::zeroed();
        efa.driver_qp_type = efa_sys::EFADV_QP_DRIVER_TYPE_SRD;
        let qp = (dv.efadv_create_qp_ex)(
            (*a.pd.as_raw()).context,
            &mut init,
            &mut efa,
            std::mem::size_of_val(&efa) as u32,
        );
        assert!(!qp.is_null());
        let mut attr: efa_sys::ibv_qp_attr = std::mem::zeroed();
        attr.qp_state = efa_sys::IBV_QPS_INIT;
        attr.port_num = 1;
        attr.qkey = 0x1234;
        let m = efa_sys::IBV_QP_STATE
            | efa_sys::IBV_QP_PKEY_INDEX
            | efa_sys::IBV_QP_PORT
            | efa_sys::IBV_QP_QKEY;
        assert_eq!((v.ibv_modify_qp)(qp, &mut attr, m as i32), 0);
        attr.qp_state = efa_sys::IBV_QPS_RTR;
        assert_eq!(
            (v.ibv_modify_qp)(qp, &mut attr, efa_sys::IBV_QP_STATE as i32),
            0
        );
        attr.qp_state = efa_sys::IBV_QPS_RTS;
        let m = efa_sys::IBV_QP_STATE | efa_sys::IBV_QP_SQ_PSN;
        assert_eq!((v.ibv_modify_qp)(qp, &mut attr, m as i32), 0);
        qp
    }
}

/// The raw calls the `efa` crate never makes, on which rdma-core's provider would spin for ever
/// on a lock the calling thread holds: each ends the process with a message naming the lock.
fn same_thread_provider_deadlocks_abort_with_their_cause() {
    use std::os::unix::process::ExitStatusExt;
    for (mode, cause) in [
        ("poll-in-batch", "whose send-queue lock this thread holds"),
        ("destroy-in-pass", "which this thread holds in a poll pass"),
    ] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--deadlock", mode])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{mode}: {err}");
        assert!(
            err.contains("soft-efa: deadlock: ") && err.contains(cause),
            "{mode}: {err}"
        );
    }
}

/// One side with a send to itself completed (or on its way) into its CQ, unpolled.
fn side_with_a_send_to_itself() -> Side {
    let mut a = side("softefa0", 4096, Access::LOCAL_WRITE);
    let ah = ah_to(&a, a.qp.endpoint().gid);
    a.qp.post_recv(1, &[a.mr.sge(2048, 64).unwrap()]).unwrap();
    let dest = Dest::new(&ah, a.qp.qp_num(), a.qp.qkey());
    let mut b = a.qp.batch().unwrap();
    b.send(2, &dest, &[a.mr.sge(0, 64).unwrap()]).unwrap();
    b.commit().unwrap();
    a
}

/// `--deadlock MODE`: the child side of [`same_thread_provider_deadlocks_abort_with_their_cause`].
fn deadlock(mode: &str) {
    let a = side_with_a_send_to_itself();
    let cq = a.cq.as_raw();
    let deadline = Instant::now() + WAIT;
    match mode {
        // Poll the send CQ, the QP's send-queue lock held by an open `ibv_wr_*` session, until
        // the send completion comes up.
        "poll-in-batch" => {
            let x = qpx(&a.qp);
            // SAFETY: a live extended QP in RTS; the session is never closed (the process
            // ends in the poll).
            unsafe { efa_sys::ibv_wr_start(x) };
            while Instant::now() < deadline {
                let mut attr = efa_sys::ibv_poll_cq_attr { comp_mask: 0 };
                // SAFETY: a live CQ polled by this thread only; each pass is ended.
                unsafe {
                    while efa_sys::ibv_start_poll(cq, &mut attr) == 0 {
                        efa_sys::ibv_end_poll(cq);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // Destroy the QP inside a pass over its CQ (a completion holds the pass open).
        "destroy-in-pass" => {
            let mut attr = efa_sys::ibv_poll_cq_attr { comp_mask: 0 };
            // SAFETY: a live CQ polled by this thread only.
            while unsafe { efa_sys::ibv_start_poll(cq, &mut attr) } != 0
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            let v = efa_sys::verbs().unwrap();
            // SAFETY: the QP is live; the `efa` crate's handle never runs again (the process
            // ends here, or leaks the handle below).
            unsafe { (v.ibv_destroy_qp)(a.qp.as_raw()) };
            std::mem::forget(a);
        }
        other => panic!("unknown --deadlock mode {other:?}"),
    }
}

fn unsignaled_wr_is_refused_with_einval() {
    let a = side("softefa0", 4096, Access::LOCAL_WRITE);
    let ah = ah_to(&a, a.qp.endpoint().gid);
    let qp = raw_srd_qp(&a);
    let v = efa_sys::verbs().unwrap();
    let post = |flags: u32| {
        // SAFETY: a live extended QP in RTS, a live AH and a registered buffer.
        unsafe {
            let x = (v.ibv_qp_to_qp_ex)(qp);
            efa_sys::ibv_wr_start(x);
            (*x).wr_id = 5;
            (*x).wr_flags = flags;
            efa_sys::ibv_wr_send(x);
            efa_sys::ibv_wr_set_sge(x, a.mr.lkey(), a.mr.addr(), 64);
            efa_sys::ibv_wr_set_ud_addr(x, ah.as_raw(), a.qp.qp_num(), a.qp.qkey());
            efa_sys::ibv_wr_complete(x)
        }
    };
    assert_eq!(post(0), libc::EINVAL);
    // Signaled, the same request is accepted.
    assert_eq!(post(efa_sys::IBV_SEND_SIGNALED), 0);
    // SAFETY: the QP is ours and no longer used.
    assert_eq!(unsafe { (v.ibv_destroy_qp)(qp) }, 0);
}

fn two_sges_on_rdma_are_refused_with_einval() {
    let a = side("softefa0", 4096, RW);
    let ah = ah_to(&a, a.qp.endpoint().gid);
    let (qpn, qkey, lkey, addr, rkey) = (
        a.qp.qp_num(),
        a.qp.qkey(),
        a.mr.lkey(),
        a.mr.addr(),
        a.mr.rkey(),
    );
    let sges = [
        efa_sys::ibv_sge {
            addr,
            length: 8,
            lkey,
        },
        efa_sys::ibv_sge {
            addr: addr + 8,
            length: 8,
            lkey,
        },
    ];
    // SAFETY (inside): registered buffers.
    let rc = raw_post(
        &a.qp,
        &ah,
        qpn,
        qkey,
        efa_sys::IBV_SEND_SIGNALED,
        |x| unsafe {
            efa_sys::ibv_wr_rdma_write(x, rkey, addr + 1024);
            efa_sys::ibv_wr_set_sge_list(x, 2, sges.as_ptr());
        },
    );
    assert_eq!(rc, libc::EINVAL);
}

fn send_over_max_msg_sz_completes_bad_length() {
    let mut a = side("softefa0", 16384, Access::LOCAL_WRITE);
    let ah = ah_to(&a, a.qp.endpoint().gid);
    let (qpn, qkey, lkey, addr) = (a.qp.qp_num(), a.qp.qkey(), a.mr.lkey(), a.mr.addr());
    // The provider posts it; the device completes it with LOCAL_ERROR_BAD_LENGTH.
    // SAFETY (inside): a registered buffer of 16 KiB.
    let rc = raw_post(
        &a.qp,
        &ah,
        qpn,
        qkey,
        efa_sys::IBV_SEND_SIGNALED,
        |x| unsafe {
            efa_sys::ibv_wr_send(x);
            efa_sys::ibv_wr_set_sge(x, lkey, addr, 8929);
        },
    );
    assert_eq!(rc, 0);
    let c = wait_one(&mut a.cq);
    assert_eq!(
        (c.wr_id, c.efa_status),
        (77, Some(EfaStatus::BadLength)),
        "{c:?}"
    );
}

fn rdma_without_target_ah_is_unknown_peer() {
    let mut a = side("softefa0", 4096, RW);
    let b = side("softefa1", 4096, RW);
    let to_b = ah_to(&a, b.qp.endpoint().gid);
    let dest = Dest::new(&to_b, b.qp.qp_num(), b.qp.qkey());
    let remote = RemoteAddr {
        addr: b.mr.addr(),
        rkey: b.mr.rkey(),
    };
    let mut batch = a.qp.batch().unwrap();
    batch
        .write(1, &dest, &[a.mr.sge(0, 64).unwrap()], remote)
        .unwrap();
    batch.commit().unwrap();
    let c = wait_one(&mut a.cq);
    assert_eq!(c.efa_status, Some(EfaStatus::UnknownPeer), "{c:?}");
    // Once the target has an AH for the initiator, the same write goes through.
    let _back = ah_to(&b, a.qp.endpoint().gid);
    let mut batch = a.qp.batch().unwrap();
    batch
        .write(2, &dest, &[a.mr.sge(0, 64).unwrap()], remote)
        .unwrap();
    batch.commit().unwrap();
    let c = wait_one(&mut a.cq);
    assert!(c.is_success(), "{c:?}");
}

fn qkey_with_bit_31_is_refused_with_eperm() {
    let a = side("softefa0", 4096, Access::LOCAL_WRITE);
    let v = efa_sys::verbs().unwrap();
    // SAFETY: plain data; then a live QP and a valid attribute struct.
    let rc = unsafe {
        let mut attr: efa_sys::ibv_qp_attr = std::mem::zeroed();
        attr.qkey = 0x8000_0000;
        (v.ibv_modify_qp)(a.qp.as_raw(), &mut attr, efa_sys::IBV_QP_QKEY as i32)
    };
    assert_eq!(rc, libc::EPERM);
    // Below bit 31 the same change is accepted.
    // SAFETY: as above.
    let rc = unsafe {
        let mut attr: efa_sys::ibv_qp_attr = std::mem::zeroed();
        attr.qkey = 0x7fff_ffff;
        (v.ibv_modify_qp)(a.qp.as_raw(), &mut attr, efa_sys::IBV_QP_QKEY as i32)
    };
    assert_eq!(rc, 0);
}

fn write_to_read_only_mr_is_remote_bad_address() {
    let mut a = side("softefa0", 4096, RW);
    let b = side(
        "softefa0",
        4096,
        Access::LOCAL_WRITE.union(Access::REMOTE_READ),
    );
    let ah = ah_to(&a, b.qp.endpoint().gid);
    let dest = Dest::new(&ah, b.qp.qp_num(), b.qp.qkey());
    let mut batch = a.qp.batch().unwrap();
    let remote = RemoteAddr {
        addr: b.mr.addr(),
        rkey: b.mr.rkey(),
    };
    batch
        .write(3, &dest, &[a.mr.sge(0, 64).unwrap()], remote)
        .unwrap();
    batch.commit().unwrap();
    let c = wait_one(&mut a.cq);
    assert_eq!(c.efa_status, Some(EfaStatus::RemoteBadAddress), "{c:?}");
    // A read of the same memory is allowed.
    let mut batch = a.qp.batch().unwrap();
    batch
        .read(4, &dest, &[a.mr.sge(0, 64).unwrap()], remote)
        .unwrap();
    batch.commit().unwrap();
    assert!(wait_one(&mut a.cq).is_success());
}

// ---- loss and reordering between two processes ----

const OPS: u64 = 100_000;
const SLOT: usize = 64;
const BIG_EVERY: u64 = 500;
const BIG: usize = 64 * 1024;
const SENDS_EVERY: u64 = 4;
const TARGET_LEN: usize = OPS as usize * SLOT + BIG;

fn byte(op: u64, i: usize) -> u8 {
    (op.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8
}

fn counters(device: &str) -> String {
    let hw = efa::hw_counters(device);
    let dir = std::env::temp_dir()
        .join("soft-efa-sysfs")
        .join(std::process::id().to_string())
        .join(device);
    let read = |n: &str| {
        std::fs::read_to_string(dir.join("ports/1/hw_counters").join(n))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let _ = hw;
    format!(
        "tx_pkts={} retrans_pkts={} dropped_pkts={} reordered_pkts={} dup_pkts={}",
        read("tx_pkts"),
        read("retrans_pkts"),
        read("dropped_pkts"),
        read("reordered_pkts"),
        read("dup_pkts")
    )
}

/// The target process: registers memory, posts receives, answers over stdin/stdout, then checks
/// every SEND arrived once with its bytes, and every WRITE's bytes.
fn peer() -> ExitCode {
    let mut b = side("softefa0", TARGET_LEN, RW);
    let recv = Mr::alloc(&b.pd, 1024 * SLOT, Access::LOCAL_WRITE).unwrap();
    for i in 0..1024 {
        b.qp.post_recv(i, &[recv.sge(i as usize * SLOT, SLOT as u32).unwrap()])
            .unwrap();
    }
    let ep = b.qp.endpoint();
    println!(
        "READY {} {} {} {} {}",
        ep.gid,
        b.qp.qp_num(),
        b.qp.qkey(),
        b.mr.addr(),
        b.mr.rkey()
    );
    let mut lines = BufReader::new(std::io::stdin()).lines();
    let gid: Gid = lines.next().unwrap().unwrap().trim().parse().unwrap();
    let _ah = ah_to(&b, gid);
    println!("AH_OK");
    let mut seen = vec![false; OPS as usize];
    let mut out = vec![WorkCompletion::default(); 256];
    let mut got = vec![0u8; SLOT];
    let (mut recvs, mut bad) = (0u64, 0u64);
    let expected = OPS / SENDS_EVERY;
    let deadline = Instant::now() + Duration::from_secs(240);
    while recvs < expected && Instant::now() < deadline {
        let n = b.cq.poll_into(&mut out).unwrap();
        for c in &out[..n] {
            let slot = c.wr_id as usize;
            recv.read_at(slot * SLOT, &mut got).unwrap();
            let op = u64::from_le_bytes(got[..8].try_into().unwrap());
            let ok = c.is_success()
                && op < OPS
                && !seen[op as usize]
                && (8..SLOT).all(|i| got[i] == byte(op, i));
            if ok {
                seen[op as usize] = true;
            } else {
                bad += 1;
            }
            recvs += 1;
            b.qp.post_recv(c.wr_id, &[recv.sge(slot * SLOT, SLOT as u32).unwrap()])
                .unwrap();
        }
    }
    let _ = lines.next(); // DONE
    let mut mem = vec![0u8; TARGET_LEN];
    b.mr.read_at(0, &mut mem).unwrap();
    let mut wrong = 0u64;
    for op in (0..OPS).filter(|op| op % SENDS_EVERY != 0) {
        let (off, len) = if op % BIG_EVERY == 1 {
            (OPS as usize * SLOT, BIG)
        } else {
            (op as usize * SLOT, SLOT)
        };
        if op % BIG_EVERY == 1 && op + BIG_EVERY < OPS {
            continue; // the big area keeps only the last big write
        }
        if (0..len).any(|i| mem[off + i] != byte(op, i)) {
            wrong += 1;
        }
    }
    println!(
        "VERIFIED recvs={recvs} bad={bad} wrong_writes={wrong} {}",
        counters("softefa0")
    );
    ExitCode::SUCCESS
}

/// Local buffers in flight: op `k` uses ring slot `k % RING` (big writes one area of their own).
const RING: usize = 256;

/// Posts op `op` unless its local buffer is still in use by an op that has not completed.
fn post_one(
    a: &mut Side,
    dest: &Dest<'_>,
    op: u64,
    completed: &[bool],
    raddr: u64,
    rkey: u32,
) -> bool {
    let big = op % BIG_EVERY == 1;
    let previous = if big {
        op.checked_sub(BIG_EVERY)
    } else {
        op.checked_sub(RING as u64)
    };
    if previous.is_some_and(|p| !completed[p as usize]) {
        return false;
    }
    let (local, len) = if big {
        (RING * SLOT, BIG)
    } else {
        ((op as usize % RING) * SLOT, SLOT)
    };
    let mut data: Vec<u8> = (0..len).map(|i| byte(op, i)).collect();
    if op % SENDS_EVERY == 0 {
        data[..8].copy_from_slice(&op.to_le_bytes());
    }
    a.mr.write_at(local, &data).unwrap();
    let sge = a.mr.sge(local, len as u32).unwrap();
    let mut batch = a.qp.batch().unwrap();
    if op % SENDS_EVERY == 0 {
        batch.send(op, dest, &[sge]).unwrap();
    } else {
        let off = if big {
            OPS * SLOT as u64
        } else {
            op * SLOT as u64
        };
        batch
            .write(
                op,
                dest,
                &[sge],
                RemoteAddr {
                    addr: raddr + off,
                    rkey,
                },
            )
            .unwrap();
    }
    batch.commit().unwrap();
    true
}

fn lossy_srd_between_processes() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--peer")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    let f: Vec<&str> = ready.split_whitespace().collect();
    assert_eq!(f[0], "READY", "{ready}");
    let (gid, qpn, qkey): (Gid, u32, u32) = (
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
    );
    let (raddr, rkey): (u64, u32) = (f[4].parse().unwrap(), f[5].parse().unwrap());

    let mut a = side("softefa1", RING * SLOT + BIG, RW);
    writeln!(stdin, "{}", a.qp.endpoint().gid).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "AH_OK");
    let ah = ah_to(&a, gid);
    let dest = Dest::new(&ah, qpn, qkey);

    let mut out = vec![WorkCompletion::default(); 256];
    let (mut posted, mut done, mut failed) = (0u64, 0u64, 0u64);
    let mut completed = vec![false; OPS as usize];
    let t0 = Instant::now();
    while done < OPS && t0.elapsed() < Duration::from_secs(240) {
        while posted < OPS && post_one(&mut a, &dest, posted, &completed, raddr, rkey) {
            posted += 1;
        }
        let n = a.cq.wait_into(&mut out, 1, WAIT).unwrap();
        let n = n + a.cq.poll_into(&mut out[n..]).unwrap();
        for c in &out[..n] {
            assert!(
                !completed[c.wr_id as usize],
                "wr {} completed twice",
                c.wr_id
            );
            completed[c.wr_id as usize] = true;
            failed += u64::from(!c.is_success());
            done += 1;
        }
    }
    writeln!(stdin, "DONE").unwrap();
    let verified = lines.next().unwrap().unwrap();
    let _ = child.wait();
    println!(
        "  initiator: {} ops in {:.1?}, {}",
        done,
        t0.elapsed(),
        counters("softefa1")
    );
    println!("  target:    {verified}");
    assert_eq!((done, failed), (OPS, 0));
    assert!(completed.iter().all(|c| *c));
    assert!(
        verified.contains(&format!("recvs={} bad=0 wrong_writes=0", OPS / SENDS_EVERY)),
        "{verified}"
    );
    let count = |key: &str| -> u64 {
        verified
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .unwrap_or("0")
            .parse()
            .unwrap()
    };
    assert!(
        count("dropped_pkts=") > 0 && count("reordered_pkts=") > 0,
        "faults really happened: {verified}"
    );
}

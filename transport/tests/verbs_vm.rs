//! The `verbs` fabric end to end on a real verbs device (Soft-RoCE `rxe0` in the VM stage):
//! engines in one process and in two processes, data checked byte for byte.
//!
//! Run with `tests/vm/stage` (or `tests/vm/run -- cargo test -p transport --test verbs_vm --
//! --ignored`).
#![cfg(feature = "rdma")]

#[path = "common/usage.rs"]
mod usage;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::fabric::verbs::{VerbsConfig, VerbsFabric};
use transport::fabric::{Completion, Fabric, MemoryRegion, WorkOp, WorkRequest};
use transport::*;
use usage::thread_usage;

const VM: &str = "needs a verbs device: runs in the VM stage (tests/vm)";
const WAIT: Duration = Duration::from_secs(60);

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

fn config() -> VerbsConfig {
    VerbsConfig {
        unresponsive_timeout: Duration::from_secs(2),
        ..VerbsConfig::default()
    }
}

fn pair(slice: u64) -> (Engine, Engine) {
    let meta = Arc::new(LocalRegistry::new());
    let mk = |name: &str| {
        let mut c = EngineConfig::new(name);
        c.slice_size = Some(slice);
        Engine::new(c, VerbsFabric::new(config()).unwrap(), meta.clone()).unwrap()
    };
    (mk("a"), mk("b"))
}

fn owned(e: &Engine, name: &str, data: Vec<u8>, access: Access) -> SegmentId {
    e.register_owned(
        name,
        OwnedMemory::from_vec(data).unwrap(),
        Location::Cpu(0),
        access,
    )
    .unwrap()
}

fn contents(e: &Engine, seg: SegmentId, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    e.read_owned(seg, off, &mut v).unwrap();
    v
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_verbs_read_write_sizes_one_process() {
    let _ = VM;
    // 64 KiB slices, so the larger sizes run as many work requests.
    let (a, b) = pair(64 << 10);
    let max = (6 << 20) + 5;
    let src = owned(&a, "a/src", pattern(max + 16, 3), Access::NONE);
    let sink = owned(&a, "a/sink", vec![0; max + 16], Access::NONE);
    let target = owned(&b, "b/kv", pattern(max + 16, 9), Access::REMOTE_READ_WRITE);
    let remote = a.open_segment("b/kv").unwrap();
    let mut w = a.worker().unwrap();
    let mut batch = a.allocate_batch(4).unwrap();
    // Up to `DEFAULT_INLINE` (64) bytes a WRITE goes inline, from 65 through the local key.
    for len in [1usize, 7, 64, 65, 4096, 65_537, (1 << 20) + 3, max] {
        // READ b's current contents at offset 5 into a's sink at offset 1.
        let expect = contents(&b, target, 5, len);
        batch = a.recycle_batch(batch).unwrap();
        w.submit(batch, &[Request::read(sink, 1, remote, 5, len as u64)])
            .unwrap();
        let s = w.wait(batch, WAIT).unwrap();
        assert!(
            s.all_completed(),
            "READ {len}: {s:?} {:?}",
            a.request_status(batch, 0)
        );
        assert!(
            contents(&a, sink, 1, len) == expect,
            "READ of {len} bytes differs"
        );
        // WRITE a's pattern at offset 2 to b at offset 3.
        batch = a.recycle_batch(batch).unwrap();
        w.submit(batch, &[Request::write(src, 2, remote, 3, len as u64)])
            .unwrap();
        let s = w.wait(batch, WAIT).unwrap();
        assert!(
            s.all_completed(),
            "WRITE {len}: {s:?} {:?}",
            a.request_status(batch, 0)
        );
        assert!(
            contents(&b, target, 3, len) == contents(&a, src, 2, len),
            "WRITE of {len} bytes differs"
        );
    }
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_verbs_many_requests_per_batch() {
    let (a, b) = pair(64 << 10);
    let n = 600usize;
    let chunk = 3000usize;
    let src = owned(&a, "a/src", pattern(n * chunk, 5), Access::NONE);
    let sink = owned(&a, "a/sink", vec![0; n * chunk], Access::NONE);
    let target = owned(&b, "b/kv", vec![0; n * chunk], Access::REMOTE_READ_WRITE);
    let remote = a.open_segment("b/kv").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(n).unwrap();
    // Chunk i of a goes to chunk n-1-i of b: every request lands somewhere else.
    let writes: Vec<_> = (0..n)
        .map(|i| {
            Request::write(
                src,
                (i * chunk) as u64,
                remote,
                ((n - 1 - i) * chunk) as u64,
                chunk as u64,
            )
        })
        .collect();
    w.submit(batch, &writes).unwrap();
    let s = w.wait(batch, WAIT).unwrap();
    assert!(s.all_completed(), "{s:?}");
    assert_eq!(s.completed as usize, n);
    let src_bytes = contents(&a, src, 0, n * chunk);
    let dst_bytes = contents(&b, target, 0, n * chunk);
    for i in 0..n {
        let j = n - 1 - i;
        assert!(
            src_bytes[i * chunk..(i + 1) * chunk] == dst_bytes[j * chunk..(j + 1) * chunk],
            "chunk {i}"
        );
    }
    // And read them all back in one batch, in the other order.
    let batch = a.recycle_batch(batch).unwrap();
    let reads: Vec<_> = (0..n)
        .map(|i| {
            Request::read(
                sink,
                (i * chunk) as u64,
                remote,
                (i * chunk) as u64,
                chunk as u64,
            )
        })
        .collect();
    w.submit(batch, &reads).unwrap();
    let s = w.wait(batch, WAIT).unwrap();
    assert!(s.all_completed(), "{s:?}");
    assert!(contents(&a, sink, 0, n * chunk) == dst_bytes);
}

/// A port counter of every verbs device (`hw_counters/NAME` of port 1), summed. The kernel keeps
/// a read of these counters for `hw_counters/lifespan` milliseconds and answers the next reads from
/// it, so each read first waits that long: it then counts everything before it.
fn device_counter(name: &str) -> u64 {
    let ports: Vec<PathBuf> = std::fs::read_dir("/sys/class/infiniband")
        .expect("no verbs devices in sysfs")
        .flatten()
        .map(|d| d.path().join("ports/1/hw_counters"))
        .collect();
    let read = |p: PathBuf| {
        let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        s.trim().parse::<u64>().unwrap()
    };
    let lifespan = ports
        .iter()
        .map(|p| p.join("lifespan"))
        .filter(|p| p.exists())
        .map(read)
        .max()
        .unwrap_or(10);
    std::thread::sleep(Duration::from_millis(lifespan + 20));
    ports.into_iter().map(|p| read(p.join(name))).sum()
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_verbs_one_slice_write_with_notify_is_one_write_with_immediate() {
    // A one-slice WRITE with notification is one RDMA WRITE with immediate: one packet and its
    // ACK, where a WRITE and then a SEND with immediate take two and two. Both engines sit on
    // the same device, so its `sent_pkts` counts the requests and the ACKs. One request at a
    // time, so no ACK covers two.
    const N: u64 = 16;
    let (a, b) = pair(64 << 10);
    let src = owned(&a, "a/src", pattern(N as usize * 64, 2), Access::NONE);
    let target = owned(&b, "b/kv", vec![0; N as usize * 64], Access::REMOTE_WRITE);
    let remote = a.open_segment("b/kv").unwrap();
    let mut w = a.worker().unwrap();
    let mut batch = a.allocate_batch(1).unwrap();
    let sent = device_counter("sent_pkts");
    for i in 0..N {
        let r = Request::write(src, i * 64, remote, i * 64, 64).with_op(Opcode::WriteWithNotify(3));
        w.submit(batch, &[r]).unwrap();
        let s = w.wait(batch, WAIT).unwrap();
        assert!(s.all_completed(), "request {i}: {s:?}");
        batch = a.recycle_batch(batch).unwrap();
    }
    assert_eq!(device_counter("sent_pkts") - sent, 2 * N);
    assert_eq!(b.notifications().wait_for(3, N, WAIT).unwrap(), N);
    assert!(contents(&b, target, 0, N as usize * 64) == contents(&a, src, 0, N as usize * 64));
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_verbs_write_with_notify_counts_tags() {
    let (a, b) = pair(64 << 10);
    let src = owned(&a, "a/src", pattern(1 << 20, 7), Access::NONE);
    let target = owned(&b, "b/kv", vec![0; 1 << 20], Access::REMOTE_WRITE);
    let remote = a.open_segment("b/kv").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(64).unwrap();
    // 40 writes of 20 KiB with tag 5 (one slice each: the tag travels with the WRITE), 8 of
    // 100 bytes with tag 6.
    let mut reqs: Vec<_> = (0..40u64)
        .map(|i| {
            Request::write(src, i * 20_000, remote, i * 20_000, 20_000)
                .with_op(Opcode::WriteWithNotify(5))
        })
        .collect();
    reqs.extend((0..8u64).map(|i| {
        Request::write(src, 900_000 + i, remote, 900_000 + i * 100, 100)
            .with_op(Opcode::WriteWithNotify(6))
    }));
    w.submit(batch, &reqs).unwrap();
    let s = w.wait(batch, WAIT).unwrap();
    assert!(s.all_completed(), "{s:?}");
    assert_eq!(b.notifications().wait_for(5, 40, WAIT).unwrap(), 40);
    assert_eq!(b.notifications().wait_for(6, 8, WAIT).unwrap(), 8);
    assert_eq!(b.notifications().count(4).unwrap(), 0);
    assert!(contents(&b, target, 0, 800_000) == contents(&a, src, 0, 800_000));
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_verbs_bad_remote_range_fails_typed() {
    // Through the engine: a range past the segment is refused before posting, by name.
    let (a, b) = pair(64 << 10);
    let src = owned(&a, "a/src", pattern(8192, 1), Access::NONE);
    let target = owned(&b, "b/kv", vec![0; 4096], Access::REMOTE_READ_WRITE);
    let remote = a.open_segment("b/kv").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(4).unwrap();
    let e = w
        .submit(batch, &[Request::write(src, 0, remote, 4000, 200)])
        .unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::RemoteOutOfRange {
                offset: 4000,
                len: 200,
                ..
            }
        ),
        "{e}"
    );
    // Past the engine's checks: the target dropped the segment after the initiator opened it,
    // so the device refuses the key.
    b.unregister(target).unwrap();
    w.submit(batch, &[Request::write(src, 0, remote, 0, 4096)])
        .unwrap();
    let s = w.wait(batch, WAIT).unwrap();
    assert_eq!(s.failed, 1, "{s:?}");
    assert_eq!(
        a.request_status(batch, 0).unwrap(),
        RequestStatus::Failed(FailReason::RemoteBadAddress)
    );
}

/// `v` as a region to register with `access`.
fn region(v: &mut [u8], access: Access) -> MemoryRegion {
    MemoryRegion {
        addr: v.as_mut_ptr() as u64,
        len: v.len() as u64,
        access,
    }
}

/// Posts one work request and returns its completion.
fn post_one(ep: &mut Box<dyn transport::fabric::Endpoint>, wr: WorkRequest) -> Completion {
    assert_eq!(ep.post(&[wr]), 1);
    let got = poll_n(ep, 1);
    assert_eq!(got.len(), 1, "{got:?}");
    got[0]
}

/// Polls `ep` until `n` completions came (bounded by [`WAIT`]); returns them in order.
fn poll_n(ep: &mut Box<dyn transport::fabric::Endpoint>, n: usize) -> Vec<Completion> {
    let mut got = Vec::new();
    let mut out = [Completion::default(); 4];
    let t = Instant::now();
    while got.len() < n {
        let k = ep.poll(&mut out);
        got.extend_from_slice(&out[..k]);
        assert!(
            t.elapsed() < WAIT,
            "{} of {n} completions: {got:?}",
            got.len()
        );
        if k == 0 {
            std::thread::yield_now();
        }
    }
    got
}

/// Registers 4 KiB on two fresh fabrics (the target's with `access`), connects them, and
/// posts `op` at `remote_offset` and then `peer` as given, followed by a READ on the same
/// connection. Returns both completions and whether the first READ copied the target's bytes.
fn fabric_case(
    op: WorkOp,
    remote_offset: u64,
    access: Access,
    bad_peer: bool,
) -> (Completion, Completion, bool) {
    let a = VerbsFabric::new(config()).unwrap();
    let b = VerbsFabric::new(config()).unwrap();
    let mut src = vec![1u8; 4096];
    let mut dst = vec![2u8; 4096];
    // SAFETY: both vectors outlive the registrations (deregistered below, before they drop).
    let (ra, rb) = unsafe {
        (
            a.register(region(&mut src, Access::NONE)).unwrap(),
            b.register(region(&mut dst, access)).unwrap(),
        )
    };
    let rkey = a.decode_remote_key(0, &rb.remote_keys[0]).unwrap();
    let peer = a.connect(&b.local_addresses()).unwrap();
    assert_eq!(
        a.connect(&b.local_addresses()).unwrap(),
        peer,
        "same peer, same id"
    );
    let wr = WorkRequest {
        token: 77,
        op,
        rail: 0,
        peer: if bad_peer { peer + 9 } else { peer },
        remote_rail: 0,
        local_addr: src.as_ptr() as u64,
        local_key: ra.local_keys[0],
        remote_addr: dst.as_ptr() as u64 + remote_offset,
        remote_key: rkey,
        len: 4096 - 8,
    };
    let mut ep = a.endpoint().unwrap();
    let first = post_one(&mut ep, wr);
    let copied = src[..4088].iter().all(|&x| x == 2);
    let then = post_one(
        &mut ep,
        WorkRequest {
            token: 78,
            op: WorkOp::Read,
            peer,
            remote_addr: dst.as_ptr() as u64,
            ..wr
        },
    );
    a.deregister(&ra).unwrap();
    b.deregister(&rb).unwrap();
    (first, then, copied)
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_verbs_fabric_reports_bad_keys_and_ranges_by_name() {
    let ok = |token| Completion { token, error: None };
    // In bounds: both succeed and the bytes arrive.
    let (c, then, copied) = fabric_case(WorkOp::Read, 0, Access::REMOTE_READ, false);
    assert_eq!((c, then, copied), (ok(77), ok(78), true));
    // Past the region's end: REMOTE_BAD_ADDRESS. RC holds that QP in error; the endpoint's next
    // post replaces the connection, so the following READ succeeds.
    let (c, then, _) = fabric_case(WorkOp::Read, 16, Access::REMOTE_READ, false);
    assert_eq!(c.error, Some(FailReason::RemoteBadAddress), "{c:?}");
    assert_eq!(then, ok(78));
    // A WRITE into a read-only region.
    let (c, _, _) = fabric_case(WorkOp::Write, 0, Access::REMOTE_READ, false);
    assert_eq!(c.error, Some(FailReason::RemoteBadAddress), "{c:?}");
    // A peer id never handed out completes with an error instead of vanishing, and harms
    // nothing else.
    let (c, then, _) = fabric_case(WorkOp::Read, 0, Access::REMOTE_READ, true);
    assert_eq!(c.error, Some(FailReason::InvalidAh), "{c:?}");
    assert_eq!(then, ok(78));
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_verbs_one_run_completes_each_request_once_and_flushes_after_an_error() {
    // One post of one queue's requests (one doorbell): each completes once, in order. An error
    // in the middle fails that request, flushes the ones after it, and the next post connects
    // anew.
    let a = VerbsFabric::new(config()).unwrap();
    let b = VerbsFabric::new(config()).unwrap();
    let mut src = pattern(4096, 9);
    let mut dst = vec![0u8; 4096];
    // SAFETY: both vectors outlive the registrations (deregistered below, before they drop).
    let (ra, rb) = unsafe {
        (
            a.register(region(&mut src, Access::NONE)).unwrap(),
            b.register(region(&mut dst, Access::REMOTE_READ_WRITE))
                .unwrap(),
        )
    };
    let peer = a.connect(&b.local_addresses()).unwrap();
    let write = |token: u64, slot: u64| WorkRequest {
        token,
        op: WorkOp::Write,
        rail: 0,
        peer,
        remote_rail: 0,
        local_addr: src.as_ptr() as u64 + slot * 256,
        local_key: ra.local_keys[0],
        remote_addr: dst.as_ptr() as u64 + slot * 256,
        remote_key: a.decode_remote_key(0, &rb.remote_keys[0]).unwrap(),
        len: 256,
    };
    let mut ep = a.endpoint().unwrap();
    let run: Vec<_> = (0..16).map(|i| write(100 + i, i)).collect();
    assert_eq!(ep.post(&run), 16);
    let got = poll_n(&mut ep, 16);
    let mut tokens: Vec<_> = got.iter().map(|c| c.token).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, (100..116).collect::<Vec<_>>(), "each once");
    assert!(got.iter().all(|c| c.error.is_none()), "{got:?}");
    assert_eq!(ep.poll(&mut [Completion::default(); 4]), 0, "nothing more");
    assert_eq!(ep.outstanding(), 0);
    assert!(dst == src, "every WRITE landed");

    // The third of eight goes past the region's end.
    let mut run: Vec<_> = (0..8).map(|i| write(200 + i, i)).collect();
    run[2].remote_addr += 4096;
    assert_eq!(ep.post(&run), 8);
    let got = poll_n(&mut ep, 8);
    let f = Some(FailReason::Flushed);
    let want: Vec<_> = (0..8)
        .map(|i| match i {
            0 | 1 => (200 + i, None),
            2 => (202, Some(FailReason::RemoteBadAddress)),
            _ => (200 + i, f),
        })
        .collect();
    let got_pairs: Vec<_> = got.iter().map(|c| (c.token, c.error)).collect();
    assert_eq!(got_pairs, want);
    assert_eq!(ep.outstanding(), 0);
    // A new connection serves the next run.
    assert_eq!(ep.post(&[write(300, 0), write(301, 1)]), 2);
    let got = poll_n(&mut ep, 2);
    assert!(got.iter().all(|c| c.error.is_none()), "{got:?}");
    a.deregister(&ra).unwrap();
    b.deregister(&rb).unwrap();
}

/// One fabric's side of [`vm_verbs_one_connection_serves_both_directions`]: a fabric, its
/// notification counts, and 4 KiB registered for remote READ and WRITE.
struct Side {
    fabric: Arc<VerbsFabric>,
    sink: Arc<Notifications>,
    mem: Vec<u8>,
    reg: transport::fabric::Registration,
}

fn side(fill: u8) -> Side {
    let fabric = VerbsFabric::new(config()).unwrap();
    let sink = Arc::new(Notifications::new(16));
    fabric.bind_notifications(sink.clone());
    let mut mem = vec![fill; 4096];
    let region = MemoryRegion {
        addr: mem.as_mut_ptr() as u64,
        len: mem.len() as u64,
        access: Access::REMOTE_READ_WRITE,
    };
    // SAFETY: `mem` lives in the same `Side` and is deregistered before it drops.
    let reg = unsafe { fabric.register(region) }.unwrap();
    Side {
        fabric,
        sink,
        mem,
        reg,
    }
}

/// A work request from `from` to `to`'s memory at `offset`.
fn wr(from: &Side, to: &Side, peer: u32, token: u64, op: WorkOp, offset: u64) -> WorkRequest {
    WorkRequest {
        token,
        op,
        rail: 0,
        peer,
        remote_rail: 0,
        local_addr: from.mem.as_ptr() as u64,
        local_key: from.reg.local_keys[0],
        remote_addr: to.mem.as_ptr() as u64 + offset,
        remote_key: from
            .fabric
            .decode_remote_key(0, &to.reg.remote_keys[0])
            .unwrap(),
        len: 64,
    }
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_verbs_one_connection_serves_both_directions() {
    use transport::fabric::verbs::VerbsConnections;
    let (mut a, b) = (side(0xaa), side(0xbb));
    a.mem[256..320].fill(0x11);
    let to_b = a.fabric.connect(&b.fabric.local_addresses()).unwrap();
    // b connects back: it already holds the other end of a's QPs, so no handshake runs.
    let to_a = b.fabric.connect(&a.fabric.local_addresses()).unwrap();
    let conns = |s: &Side| s.fabric.connections();
    let (dialed, answered, adopted) = (1, 1, 1);
    assert_eq!(
        (conns(&a), conns(&b)),
        (
            VerbsConnections {
                dialed,
                ..Default::default()
            },
            VerbsConnections {
                answered,
                adopted,
                ..Default::default()
            }
        )
    );
    let ok = |token| Completion { token, error: None };
    let (mut ea, mut eb) = (a.fabric.endpoint().unwrap(), b.fabric.endpoint().unwrap());
    // Both directions at once on the one QP pair: WRITEs, a READ and notifications each way.
    assert_eq!(
        post_one(&mut eb, wr(&b, &a, to_a, 1, WorkOp::Write, 64)),
        ok(1)
    );
    assert_eq!(a.mem[64..128], [0xbb; 64], "b's WRITE");
    assert_eq!(
        post_one(&mut ea, wr(&a, &b, to_b, 2, WorkOp::Write, 0)),
        ok(2)
    );
    assert_eq!(b.mem[..64], [0xaa; 64], "a's WRITE");
    assert_eq!(
        post_one(&mut eb, wr(&b, &a, to_a, 3, WorkOp::Read, 256)),
        ok(3)
    );
    assert_eq!(b.mem[..64], [0x11; 64], "b's READ of a's bytes");
    for (i, tag) in [(4, 5u32), (5, 5), (6, 7)] {
        let n = wr(&b, &a, to_a, i, WorkOp::Notify { tag }, 0);
        assert_eq!(post_one(&mut eb, n), ok(i));
    }
    let n = wr(&a, &b, to_b, 7, WorkOp::Notify { tag: 9 }, 0);
    assert_eq!(post_one(&mut ea, n), ok(7));
    assert_eq!(a.sink.wait_for(5, 2, WAIT).unwrap(), 2);
    assert_eq!(a.sink.wait_for(7, 1, WAIT).unwrap(), 1);
    assert_eq!(b.sink.wait_for(9, 1, WAIT).unwrap(), 1);
    assert_eq!(conns(&b).dialed, 0, "b never dialed");

    // A failure on the shared pair (b WRITEs past a's region) breaks it for both sides; each
    // side's next posts connect again with a handshake of its own and succeed.
    let bad = post_one(&mut eb, wr(&b, &a, to_a, 8, WorkOp::Write, 4096));
    assert_eq!(bad.error, Some(FailReason::RemoteBadAddress), "{bad:?}");
    assert_eq!(
        post_one(&mut eb, wr(&b, &a, to_a, 9, WorkOp::Write, 0)),
        ok(9)
    );
    assert_eq!(conns(&b).dialed, 1, "b connected again");
    let mut first = post_one(&mut ea, wr(&a, &b, to_b, 10, WorkOp::Write, 0));
    if first.error.is_some() {
        // a learns of the broken pair from this request (flushed, or its retries ran out).
        first = post_one(&mut ea, wr(&a, &b, to_b, 11, WorkOp::Write, 0));
    }
    assert_eq!(first.error, None, "{first:?}");
    drop((ea, eb));
    for s in [&a, &b] {
        s.fabric.deregister(&s.reg).unwrap();
    }
}

fn example(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps, examples in target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: build it with `cargo build -p transport --example {name}`",
        p.display()
    );
    p
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_verbs_two_processes() {
    let peer = example("verbs_peer");
    let dir = std::env::temp_dir().join(format!("verbs-two-proc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let size = (3 << 20) + 17;
    let mut server = Command::new(&peer)
        .args(["serve", dir.to_str().unwrap(), &size.to_string()])
        .spawn()
        .unwrap();
    let client = Command::new(&peer)
        .args(["fetch", dir.to_str().unwrap()])
        .status()
        .unwrap();
    let t = Instant::now();
    let served = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > WAIT {
            let _ = server.kill();
            panic!("server did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert!(client.success(), "client: {client}");
    assert!(served.success(), "server: {served}");
}

#[test]
#[ignore = "needs a verbs device: runs in the VM stage (tests/vm)"]
fn vm_verbs_killed_peer_process_fails_in_bounded_time() {
    let peer = example("verbs_peer");
    let dir = std::env::temp_dir().join(format!("verbs-killed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut server = Command::new(&peer)
        .args(["serve", dir.to_str().unwrap(), "65536", "linger"])
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !dir.join("desc").exists() {
        assert!(t.elapsed() < WAIT, "the server published nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let desc = SegmentDescriptor::decode(&std::fs::read(dir.join("desc")).unwrap()).unwrap();
    let meta = Arc::new(LocalRegistry::new());
    meta.publish(&desc).unwrap();
    // 2 s of RC retries before a silent peer counts as dead.
    let e = Engine::new(
        EngineConfig::new("a"),
        VerbsFabric::new(config()).unwrap(),
        meta,
    )
    .unwrap();
    let src = owned(&e, "a/src", pattern(65536, 4), Access::NONE);
    let remote = e.open_segment("peer/buf").unwrap();
    let mut w = e.worker().unwrap();
    let mut batch = e.allocate_batch(1).unwrap();
    w.submit(batch, &[Request::write(src, 0, remote, 0, 65536)])
        .unwrap();
    assert!(w.wait(batch, WAIT).unwrap().all_completed(), "peer alive");
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // The peer's QPs are gone: its kernel no longer answers for them. The worker waits in
    // block mode, on its endpoint's completion channel.
    batch = e.recycle_batch(batch).unwrap();
    w.set_wait_mode(WaitMode::Block);
    let t = Instant::now();
    w.submit(batch, &[Request::write(src, 0, remote, 0, 65536)])
        .unwrap();
    let usage0 = thread_usage();
    let s = w.wait(batch, WAIT).unwrap();
    let (elapsed, usage1) = (t.elapsed(), thread_usage());
    let (cpu, sleeps) = (usage1.0 - usage0.0, usage1.1 - usage0.1);
    println!("blocked worker: {cpu:?} of CPU and {sleeps} sleeps over {elapsed:?}");
    if elapsed >= Duration::from_secs(1) {
        // Pauses of up to 2 ms would be hundreds of sleeps a second; blocks of up to
        // BLOCK_BOUND on the channel are a few dozen.
        let bound = 4 * elapsed.as_millis() as i64 / BLOCK_BOUND.as_millis() as i64 + 20;
        assert!(
            sleeps <= bound,
            "{sleeps} sleeps over {elapsed:?} (bound {bound})"
        );
        assert!(cpu * 20 < elapsed, "{cpu:?} of CPU over {elapsed:?}");
    }
    let st = e.request_status(batch, 0).unwrap();
    assert_eq!(s.failed, 1, "{s:?} {st:?}");
    assert!(
        matches!(
            st,
            RequestStatus::Failed(FailReason::UnresponsiveRemote | FailReason::Flushed)
        ),
        "{st:?}"
    );
    // Generous bound: 2 s of retries, plus the emulated CPU's slowness.
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

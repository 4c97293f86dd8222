//! The tcp fabric between processes: this test binary re-executes itself as the peer (the
//! ignored `peer_process_main` test, selected with `--exact --ignored` and an env var), so the
//! peers are real separate processes with their own address spaces. Data is checked byte for
//! byte on both sides, and peers are stopped and `kill -9`ed mid-batch.

#[path = "common/process.rs"]
mod process;

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::discovery::{DiscoveryConfig, PeerMetadata};
use transport::fabric::tcp::{TcpConfig, TcpFabric};
use transport::*;

const ROLE: &str = "TRANSPORT_TCP_PEER";
const SEG_LEN: usize = 8 << 20;

fn pattern(seed: u64, off: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (off + i).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ seed.wrapping_mul(0xD6E8_FEB8_6659_FD93);
            (x >> 29) as u8
        })
        .collect()
}

fn engine(name: &str, tcp: TcpConfig) -> (Engine, Arc<PeerMetadata>) {
    let fabric = TcpFabric::new(tcp).unwrap();
    let meta = PeerMetadata::bind(DiscoveryConfig::new(name)).unwrap();
    meta.attach_fabric(fabric.clone());
    let engine = Engine::new(EngineConfig::new(name), fabric, meta.clone()).unwrap();
    (engine, meta)
}

/// The peer process: serves segment `data` (pattern of its seed) and answers `verify` lines on
/// stdin until stdin closes or 120 s pass.
#[test]
#[ignore = "peer process body: started by the other tests of this file"]
fn peer_process_main() {
    let Ok(seed) = std::env::var(ROLE) else {
        return;
    };
    let seed: u64 = seed.parse().unwrap();
    let (engine, meta) = engine("peer", TcpConfig::default());
    let mem = OwnedMemory::from_vec(pattern(seed, 0, SEG_LEN)).unwrap();
    let seg = engine
        .register_owned("data", mem, Location::Cpu(0), Access::REMOTE_READ_WRITE)
        .unwrap();
    println!("PEER_READY {}", meta.local_addr());
    std::io::stdout().flush().unwrap();
    let rx = process::lines_of(std::io::stdin());
    let end = Instant::now() + Duration::from_secs(120);
    while let Ok(line) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let reply = if f.len() == 3 {
            let mut got = vec![0u8; f[1] as usize];
            engine.read_owned(seg, f[0], &mut got).unwrap();
            match got
                .iter()
                .zip(pattern(f[2], f[0], got.len()))
                .position(|(g, w)| *g != w)
            {
                None => "ok".to_string(),
                Some(i) => format!("mismatch at {}", f[0] + i as u64),
            }
        } else {
            format!("bad command {line:?}")
        };
        println!("PEER_REPLY {reply}");
        std::io::stdout().flush().unwrap();
    }
}

/// A peer process, killed on drop.
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    discovery: String,
}

impl Peer {
    fn spawn(seed: u64) -> Peer {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args(["--exact", "peer_process_main", "--ignored", "--nocapture"])
            .env(ROLE, seed.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = process::lines_of(child.stdout.take().unwrap());
        let mut peer = Peer {
            stdin: child.stdin.take(),
            child,
            lines,
            discovery: String::new(),
        };
        let ready = peer.expect("PEER_READY ");
        peer.discovery = ready;
        peer
    }

    fn expect(&self, prefix: &str) -> String {
        process::expect_line(&self.lines, prefix)
    }

    /// Asks the peer to compare its own memory with `pattern(seed)` at `off..off+len`.
    fn verify(&mut self, off: u64, len: u64, seed: u64) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "verify {off} {len} {seed}").unwrap();
        stdin.flush().unwrap();
        self.expect("PEER_REPLY ")
    }

    fn signal(&self, sig: i32) {
        process::signal(self.child.id(), sig);
    }

    fn stop(&self) {
        process::stop(self.child.id());
    }

    fn name(&self, seg: &str) -> String {
        format!("{}/{seg}", self.discovery)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn owned(engine: &Engine, name: &str, data: Vec<u8>) -> SegmentId {
    engine
        .register_owned(
            name,
            OwnedMemory::from_vec(data).unwrap(),
            Location::Cpu(0),
            Access::NONE,
        )
        .unwrap()
}

#[test]
fn tcp_two_peer_processes_data_verified_both_ways() {
    let (mut b, mut c) = (Peer::spawn(11), Peer::spawn(12));
    let (a, _meta) = engine(
        "a",
        TcpConfig {
            rails: 2,
            ..TcpConfig::default()
        },
    );
    let rb = a.open_segment(&b.name("data")).unwrap();
    let rc = a.open_segment(&c.name("data")).unwrap();
    // READ what each peer initialised in its own process.
    let sink = owned(&a, "sink", vec![0; 2 * SEG_LEN]);
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(16).unwrap();
    w.submit(
        batch,
        &[
            Request::read(sink, 0, rb, 0, SEG_LEN as u64),
            Request::read(sink, SEG_LEN as u64, rc, 0, SEG_LEN as u64),
        ],
    )
    .unwrap();
    assert!(w
        .wait(batch, Duration::from_secs(30))
        .unwrap()
        .all_completed());
    let mut got = vec![0; SEG_LEN];
    a.read_owned(sink, 0, &mut got).unwrap();
    assert!(got == pattern(11, 0, SEG_LEN), "peer b's bytes");
    a.read_owned(sink, SEG_LEN as u64, &mut got).unwrap();
    assert!(got == pattern(12, 0, SEG_LEN), "peer c's bytes");

    // WRITE new patterns in uneven pieces to both, and let each peer check its own memory.
    let src = owned(&a, "src", pattern(21, 0, SEG_LEN));
    let cuts = [0usize, 3, 70_000, 1 << 20, (5 << 20) + 1, SEG_LEN];
    let mut reqs = Vec::new();
    for p in cuts.windows(2) {
        let (off, len) = (p[0] as u64, (p[1] - p[0]) as u64);
        reqs.push(Request::write(src, off, rb, off, len));
        reqs.push(Request::write(src, off, rc, off, len));
    }
    let batch = a.recycle_batch(batch).unwrap();
    w.submit(batch, &reqs).unwrap();
    assert!(w
        .wait(batch, Duration::from_secs(30))
        .unwrap()
        .all_completed());
    assert_eq!(b.verify(0, SEG_LEN as u64, 21), "ok");
    assert_eq!(c.verify(0, SEG_LEN as u64, 21), "ok");
    assert_eq!(
        b.verify(0, 16, 11),
        "mismatch at 0",
        "the check itself can fail"
    );
}

fn statuses(a: &Engine, batch: BatchId, n: usize) -> Vec<RequestStatus> {
    (0..n)
        .map(|i| a.request_status(batch, i).unwrap())
        .collect()
}

#[test]
fn tcp_kill_9_mid_batch_fails_only_that_peer_and_reopens_after_restart() {
    let timeout = Duration::from_secs(2);
    let (b, mut c) = (Peer::spawn(31), Peer::spawn(32));
    let (a, _meta) = engine(
        "a",
        TcpConfig {
            timeout,
            queue_depth: 8,
            ..TcpConfig::default()
        },
    );
    let rb = a.open_segment(&b.name("data")).unwrap();
    let rc = a.open_segment(&c.name("data")).unwrap();
    let src = owned(&a, "src", pattern(41, 0, SEG_LEN));
    // Stop b first so its data is stuck in flight, then kill -9 it while submit is blocked on
    // b's full queue.
    b.stop();
    let mut reqs = Vec::new();
    const PIECE: usize = 256 << 10;
    for round in 0..4u64 {
        for i in 0..SEG_LEN / PIECE {
            let off = (i * PIECE) as u64;
            reqs.push(Request::write(src, off, rb, off, PIECE as u64));
            if round == 0 {
                reqs.push(Request::write(src, off, rc, off, PIECE as u64));
            }
        }
    }
    let pid = b.child.id() as i32;
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) on our child's pid; the child is reaped only by `Peer::drop`, later.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(reqs.len()).unwrap();
    let t0 = Instant::now();
    w.submit(batch, &reqs).unwrap();
    let st = w.wait(batch, Duration::from_secs(30)).unwrap();
    let elapsed = t0.elapsed();
    killer.join().unwrap();
    assert!(st.is_done(), "{st:?}");
    assert!(
        elapsed < Duration::from_secs(20),
        "bounded: {elapsed:?} for {st:?}"
    );
    let all = statuses(&a, batch, reqs.len());
    let mut b_failed = 0;
    for (r, s) in reqs.iter().zip(&all) {
        if r.remote == rc {
            assert_eq!(*s, RequestStatus::Completed, "the live peer is unaffected");
        } else if *s != RequestStatus::Completed {
            assert!(
                matches!(
                    s,
                    RequestStatus::Failed(
                        FailReason::UnresponsiveRemote | FailReason::UnreachableRemote
                    )
                ),
                "{s:?}"
            );
            b_failed += 1;
        }
    }
    assert!(b_failed > 0, "the killed peer's requests failed");
    assert_eq!(c.verify(0, SEG_LEN as u64, 41), "ok");
    drop(b);

    // A restarted peer (new process, new port and instance) opens afresh and works.
    let b2 = Peer::spawn(33);
    let rb2 = a.open_segment(&b2.name("data")).unwrap();
    let sink = owned(&a, "sink", vec![0; SEG_LEN]);
    let batch = a.allocate_batch(2).unwrap();
    w.submit(batch, &[Request::read(sink, 0, rb2, 0, SEG_LEN as u64)])
        .unwrap();
    assert!(w
        .wait(batch, Duration::from_secs(30))
        .unwrap()
        .all_completed());
    let mut got = vec![0; SEG_LEN];
    a.read_owned(sink, 0, &mut got).unwrap();
    assert!(got == pattern(33, 0, SEG_LEN));
}

#[test]
fn tcp_stalled_peer_times_out_and_others_go_on() {
    let timeout = Duration::from_millis(800);
    let (b, mut c) = (Peer::spawn(51), Peer::spawn(52));
    let (a, _meta) = engine(
        "a",
        TcpConfig {
            timeout,
            queue_depth: 4,
            ..TcpConfig::default()
        },
    );
    let rb = a.open_segment(&b.name("data")).unwrap();
    let rc = a.open_segment(&c.name("data")).unwrap();
    let src = owned(&a, "src", pattern(61, 0, SEG_LEN));
    let reqs = [
        Request::write(src, 0, rb, 0, SEG_LEN as u64),
        Request::write(src, 0, rc, 0, SEG_LEN as u64),
    ];
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(2).unwrap();
    // Connected and working first...
    w.submit(batch, &reqs).unwrap();
    assert!(w
        .wait(batch, Duration::from_secs(30))
        .unwrap()
        .all_completed());
    let batch = a.recycle_batch(batch).unwrap();
    // ...then a stopped process keeps its sockets open but reads nothing: a link gone dark.
    b.stop();
    let t0 = Instant::now();
    w.submit(batch, &reqs).unwrap();
    let st = w.wait(batch, Duration::from_secs(30)).unwrap();
    let elapsed = t0.elapsed();
    assert!(st.is_done());
    assert!(elapsed < Duration::from_secs(15), "bounded: {elapsed:?}");
    assert_eq!(
        statuses(&a, batch, 2),
        [
            RequestStatus::Failed(FailReason::UnresponsiveRemote),
            RequestStatus::Completed
        ]
    );
    assert_eq!(c.verify(0, SEG_LEN as u64, 61), "ok");
    // Once it runs again, a fresh open reconnects.
    b.signal(libc::SIGCONT);
    let rb = a.open_segment(&b.name("data")).unwrap();
    let _ = w.drain(batch, Duration::from_secs(5));
    let batch = a.recycle_batch(batch).unwrap();
    w.submit(batch, &[Request::write(src, 0, rb, 0, 4096)])
        .unwrap();
    assert!(w
        .wait(batch, Duration::from_secs(30))
        .unwrap()
        .all_completed());
}

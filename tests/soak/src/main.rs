//! Soak: a million mixed requests through the engine, checking that every request reaches exactly
//! one terminal state and that the process gives back its memory, threads and file descriptors.
//!
//! ```text
//! soak sim  [--requests N] [--max-seconds S] [--rss-tolerance-mib M]
//!     Two engines on the sim fabric; faults: injected errors, delayed completions, a dead peer
//!     for one batch in 50, a worker dropped with its batch in flight one batch in 200.
//! soak tcp  [--requests N] [--max-seconds S] [--rss-tolerance-mib M]
//!     The tcp fabric between this process and a peer process (`soak peer`), over loopback; the
//!     peer is killed (SIGKILL) with a batch in flight half-way and a new one started.
//! soak peer
//!     The peer process: serves segment `data`, prints `READY <discovery address>`, exits when
//!     its stdin closes (or after an hour).
//! ```
//!
//! The mix: WRITE, READ and WRITE_WITH_NOTIFY of 1 to 4096 bytes, one request in 50 invalid
//! (zero length, out of range, a tag past the engine's) and submitted alone so it is refused,
//! one batch in 20 cancelled right after its submit. Each batch (up to 128 requests, submitted
//! in several calls) is waited for and drained, each request's state read twice (it must be
//! terminal and the same), the batch counters compared with the requests' states, and the
//! batch freed.
//!
//! Resources (RSS, threads, open fds from /proc/self) are sampled at start, after a warm-up
//! round (set-up, 10,000 requests, tear-down: the baseline), every tenth of the run, and after
//! the tear-down; threads and fds must return to the baseline exactly, RSS within the
//! tolerance. Exit 0 when every check holds, 1 otherwise. Every loop is bounded in count and
//! time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use transport::discovery::{DiscoveryConfig, PeerMetadata};
use transport::fabric::sim::{SimConfig, SimFabric, SimFaults, SimNetwork};
use transport::fabric::tcp::{TcpConfig, TcpFabric};
use transport::*;

/// Bytes of every segment.
const SEG: u64 = 1 << 20;
/// Requests per batch.
const BATCH: usize = 128;
/// Requests per submit call.
const CHUNK: usize = 16;
/// Tags the engines count; a notification to a tag at or past this is invalid.
const TAGS: u32 = 64;
/// Requests of the warm-up round.
const WARM_UP: u64 = 10_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse().unwrap_or_else(|_| {
                    eprintln!("soak: bad value {v:?} for {name}");
                    std::process::exit(2)
                })
            })
            .unwrap_or(default)
    };
    let cfg = RunConfig {
        requests: opt("--requests", 1_000_000),
        max_time: Duration::from_secs(opt("--max-seconds", 1800)),
        rss_tolerance_kib: opt("--rss-tolerance-mib", 8) * 1024,
    };
    let ok = match args.first().map(String::as_str) {
        Some("sim") => run(&cfg, "sim", SimTarget::new),
        Some("tcp") => run(&cfg, "tcp", TcpTarget::new),
        Some("peer") => {
            peer();
            true
        }
        _ => {
            eprintln!(
                "usage: soak sim|tcp [--requests N] [--max-seconds S] [--rss-tolerance-mib M]"
            );
            std::process::exit(2)
        }
    };
    std::process::exit(if ok { 0 } else { 1 })
}

struct RunConfig {
    requests: u64,
    max_time: Duration,
    rss_tolerance_kib: u64,
}

/// What /proc/self says of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resources {
    rss_kib: u64,
    threads: u64,
    fds: u64,
}

impl std::fmt::Display for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rss {:.1} MiB, threads {}, fds {}",
            self.rss_kib as f64 / 1024.0,
            self.threads,
            self.fds
        )
    }
}

fn sample() -> Resources {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Resources {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        // The directory handle `read_dir` holds is one of the entries it lists.
        fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64 - 1),
    }
}

/// The outcome of every request generated.
#[derive(Debug, Default)]
struct Tally {
    generated: u64,
    refused: u64,
    /// Valid requests a submit refused (none expected).
    refused_valid: u64,
    submitted: u64,
    completed: u64,
    failed: BTreeMap<String, u64>,
    timed_out: u64,
    cancelled: u64,
    /// Requests found not terminal after a drain, or whose terminal state changed.
    violations: u64,
    batches: u64,
    stuck_batches: u64,
}

impl Tally {
    fn terminal(&self) -> u64 {
        self.completed + self.failed.values().sum::<u64>() + self.timed_out + self.cancelled
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Where requests go, and the faults of a fabric.
trait Target {
    fn engine(&self) -> &Engine;
    fn remote(&self) -> RemoteSegment;
    fn src(&self) -> SegmentId;
    fn sink(&self) -> SegmentId;
    /// Called before batch `n` is submitted, `progress` (0 to 1) through the run.
    fn before_batch(&mut self, _n: u64, _progress: f64) {}
    /// Called after batch `n` was submitted, before it is waited for; may drop `worker` (and
    /// leave a new one in its place).
    fn after_submit(&mut self, _n: u64, _worker: &mut Worker, _progress: f64) {}
    /// Called after batch `n` was freed.
    fn after_batch(&mut self, _n: u64) {}
    /// How long to wait for a batch, and to drain it.
    fn wait_time(&self) -> Duration;
}

/// One request of the mix; `false` if it is meant to be refused.
fn request(rng: &mut Rng, t: &dyn Target) -> (Request, bool) {
    let len = rng.below(4096) + 1;
    let lo = rng.below(SEG - len + 1);
    let ro = rng.below(SEG - len + 1);
    let (mut r, valid) = match rng.below(100) {
        0..=39 => (Request::write(t.src(), lo, t.remote(), ro, len), true),
        40..=69 => (Request::read(t.sink(), lo, t.remote(), ro, len), true),
        70..=97 => (
            Request::write(t.src(), lo, t.remote(), ro, len)
                .with_op(Opcode::WriteWithNotify(rng.below(TAGS as u64) as u32)),
            true,
        ),
        _ => (Request::write(t.src(), lo, t.remote(), ro, len), false),
    };
    if !valid {
        match rng.below(4) {
            0 => r.len = 0,
            1 => r.remote_offset = SEG - len + 1,
            2 => r = r.with_op(Opcode::WriteWithNotify(TAGS + rng.below(1000) as u32)),
            _ => {
                r = Request::write(t.src(), SEG, t.remote(), ro, len);
            }
        }
    }
    (r, valid)
}

/// Runs `requests` requests through `t`, bounded by `deadline`; prints progress with resource
/// samples.
fn drive(t: &mut dyn Target, requests: u64, deadline: Instant, label: &str, report: bool) -> Tally {
    let engine = t.engine().clone();
    let mut w = engine.worker().expect("a worker");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut tally = Tally::default();
    let mut next_report = requests / 10;
    let mut reqs = Vec::with_capacity(BATCH);
    let started = Instant::now();
    while tally.generated < requests && Instant::now() < deadline {
        let n = tally.batches;
        t.before_batch(n, tally.generated as f64 / requests.max(1) as f64);
        let batch = engine.allocate_batch(BATCH).expect("a batch");
        let want = (requests - tally.generated).min(BATCH as u64) as usize;
        reqs.clear();
        for _ in 0..want {
            tally.generated += 1;
            let (r, valid) = request(&mut rng, t);
            if valid {
                reqs.push(r);
            } else {
                // Alone, so only it is refused.
                match w.submit(batch, &[r]) {
                    Err(_) => tally.refused += 1,
                    Ok(_) => {
                        eprintln!("soak: an invalid request was accepted: {r:?}");
                        tally.violations += 1;
                        tally.submitted += 1;
                    }
                }
            }
        }
        for chunk in reqs.chunks(CHUNK) {
            match w.submit(batch, chunk) {
                Ok(_) => tally.submitted += chunk.len() as u64,
                Err(e) => {
                    tally.refused += chunk.len() as u64;
                    tally.refused_valid += chunk.len() as u64;
                    if tally.refused_valid <= 4 * CHUNK as u64 {
                        eprintln!("soak: valid requests refused: {e}");
                    }
                }
            }
        }
        if rng.below(20) == 0 {
            engine.cancel(batch).expect("cancel a live batch");
        }
        t.after_submit(n, &mut w, tally.generated as f64 / requests.max(1) as f64);
        let wait = t.wait_time();
        w.wait(batch, wait).expect("wait on a live batch");
        let first = engine.batch_status(batch).expect("status");
        let drained = w.drain(batch, wait).expect("drain a live batch");
        if drained.in_flight != 0 {
            tally.stuck_batches += 1;
        }
        check_batch(&engine, batch, first, &mut tally);
        if engine.free_batch(batch).is_err() {
            tally.stuck_batches += 1;
        }
        tally.batches += 1;
        t.after_batch(n);
        if report && tally.generated >= next_report {
            println!(
                "{label}: {:>8} requests, {:>5.1} s, {}",
                tally.generated,
                started.elapsed().as_secs_f64(),
                sample()
            );
            next_report += requests / 10;
        }
    }
    tally
}

/// Reads every request's state twice around the batch counters: terminal, unchanged, and
/// adding up to the counters.
fn check_batch(engine: &Engine, batch: BatchId, after_wait: BatchStatus, tally: &mut Tally) {
    let st = engine.batch_status(batch).expect("status");
    let mut counts = [0u32; 4];
    for i in 0..st.submitted as usize {
        let a = engine
            .request_status(batch, i)
            .expect("a submitted request");
        let b = engine
            .request_status(batch, i)
            .expect("a submitted request");
        if !a.is_terminal() || a != b {
            tally.violations += 1;
            continue;
        }
        match a {
            RequestStatus::Completed => {
                tally.completed += 1;
                counts[0] += 1;
            }
            RequestStatus::Failed(reason) => {
                *tally.failed.entry(format!("{reason:?}")).or_insert(0) += 1;
                counts[1] += 1;
            }
            RequestStatus::TimedOut => {
                tally.timed_out += 1;
                counts[2] += 1;
            }
            _ => {
                tally.cancelled += 1;
                counts[3] += 1;
            }
        }
    }
    let counters = [st.completed, st.failed, st.timed_out, st.cancelled];
    // After the wait every request was terminal already, so the drain changed no state.
    let at_wait = [
        after_wait.completed,
        after_wait.failed,
        after_wait.timed_out,
        after_wait.cancelled,
    ];
    if counts != counters || counters != at_wait || st.pending != 0 {
        eprintln!(
            "soak: batch counters {st:?} (after wait {after_wait:?}) but requests {counts:?}"
        );
        tally.violations += 1;
    }
}

/// Set-up, warm-up, baseline, the run, tear-down, checks. Returns whether every check held.
fn run<T: Target>(cfg: &RunConfig, label: &str, make: fn() -> T) -> bool {
    let start = sample();
    let t0 = Instant::now();
    let deadline = t0 + cfg.max_time;
    println!("{label}: start: {start}");
    {
        let mut t = make();
        let warm = drive(&mut t, WARM_UP.min(cfg.requests), deadline, label, false);
        if warm.violations != 0 {
            println!("{label}: warm-up: {warm:?}");
            return false;
        }
    }
    let baseline = settle(start);
    println!(
        "{label}: baseline (after a warm-up of {WARM_UP} requests and its tear-down): {baseline}"
    );
    let t1 = Instant::now();
    let tally = {
        let mut t = make();
        println!("{label}: set up: {}", sample());
        drive(&mut t, cfg.requests, deadline, label, true)
    };
    let secs = t1.elapsed().as_secs_f64();
    let after = settle(baseline);
    let failed: u64 = tally.failed.values().sum();
    println!(
        "{label}: requests {}, in {secs:.1} s ({:.0}/s)",
        tally.generated,
        tally.generated as f64 / secs
    );
    println!(
        "{label}: refused {} (valid among them {}), submitted {}, terminal {}: completed {}, failed {} {:?}, timed out {}, cancelled {}",
        tally.refused,
        tally.refused_valid,
        tally.submitted,
        tally.terminal(),
        tally.completed,
        failed,
        tally.failed,
        tally.timed_out,
        tally.cancelled
    );
    println!(
        "{label}: batches {}, stuck {}, violations {}",
        tally.batches, tally.stuck_batches, tally.violations
    );
    println!("{label}: before: {baseline}");
    println!("{label}: after:  {after}");
    let mut ok = true;
    let mut check = |cond: bool, what: &str| {
        if !cond {
            println!("{label}: FAILED: {what}");
            ok = false;
        }
    };
    check(
        tally.generated == cfg.requests,
        "every request was generated in time",
    );
    check(
        tally.refused + tally.submitted == tally.generated,
        "every request was refused or submitted",
    );
    check(
        tally.terminal() == tally.submitted,
        "every submitted request reached one terminal state",
    );
    check(tally.violations == 0, "no state violations");
    check(tally.refused_valid == 0, "no valid request refused");
    check(tally.stuck_batches == 0, "every batch drained and freed");
    check(
        after.threads == baseline.threads,
        "threads back to baseline",
    );
    check(after.fds == baseline.fds, "fds back to baseline");
    check(
        after.rss_kib <= baseline.rss_kib + cfg.rss_tolerance_kib,
        &format!(
            "RSS back to baseline within {} MiB",
            cfg.rss_tolerance_kib / 1024
        ),
    );
    println!(
        "{label}: {} (RSS tolerance {} MiB; total {:.1} s)",
        if ok { "PASS" } else { "FAIL" },
        cfg.rss_tolerance_kib / 1024,
        t0.elapsed().as_secs_f64()
    );
    ok
}

/// Samples until threads and fds come back to `want`'s (threads of a dropped fabric exit
/// asynchronously), for at most 10 s.
fn settle(want: Resources) -> Resources {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let now = sample();
        if (now.threads <= want.threads && now.fds <= want.fds) || Instant::now() >= end {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Registers the initiator's source and sink.
fn local_segments(engine: &Engine) -> (SegmentId, SegmentId) {
    let src = engine
        .register_owned(
            "soak/src",
            OwnedMemory::from_vec((0..SEG).map(|i| (i % 251) as u8).collect()).unwrap(),
            Location::Cpu(0),
            Access::NONE,
        )
        .expect("register src");
    let sink = engine
        .register_owned(
            "soak/sink",
            OwnedMemory::zeroed(SEG as usize, 4096).unwrap(),
            Location::Cpu(0),
            Access::NONE,
        )
        .expect("register sink");
    (src, sink)
}

fn engine_config(name: &str) -> EngineConfig {
    let mut c = EngineConfig::new(name);
    c.notify_tags = TAGS;
    c.slice_size = Some(2048);
    c
}

struct SimTarget {
    a: Engine,
    _b: Engine,
    fb: Arc<SimFabric>,
    remote: RemoteSegment,
    src: SegmentId,
    sink: SegmentId,
}

impl SimTarget {
    fn new() -> Self {
        let net = SimNetwork::new();
        let meta = Arc::new(LocalRegistry::new());
        let sim = SimConfig {
            rails: 2,
            queue_depth: 64,
            faults: SimFaults {
                error_rate: 0.002,
                max_delay_steps: 3,
                unresp_timeout: Duration::from_millis(5),
                ..SimFaults::default()
            },
            ..SimConfig::default()
        };
        let fa = SimFabric::new(&net, sim).unwrap();
        let a = Engine::new(engine_config("a"), fa, meta.clone()).unwrap();
        let fb = SimFabric::new(&net, SimConfig::default()).unwrap();
        let b = Engine::new(engine_config("b"), fb.clone(), meta).unwrap();
        b.register_owned(
            "b/data",
            OwnedMemory::zeroed(SEG as usize, 4096).unwrap(),
            Location::Cpu(0),
            Access::REMOTE_READ_WRITE,
        )
        .unwrap();
        let (src, sink) = local_segments(&a);
        let remote = a.open_segment("b/data").unwrap();
        SimTarget {
            a,
            _b: b,
            fb,
            remote,
            src,
            sink,
        }
    }
}

impl Target for SimTarget {
    fn engine(&self) -> &Engine {
        &self.a
    }
    fn remote(&self) -> RemoteSegment {
        self.remote
    }
    fn src(&self) -> SegmentId {
        self.src
    }
    fn sink(&self) -> SegmentId {
        self.sink
    }
    fn before_batch(&mut self, n: u64, _progress: f64) {
        // One batch in 50 meets a dead peer: its requests fail with UNRESP_REMOTE.
        self.fb.set_alive(n % 50 != 49);
    }
    fn after_submit(&mut self, n: u64, worker: &mut Worker, _progress: f64) {
        // One batch in 200 loses its worker mid-flight: the engine finishes its requests.
        if n % 200 == 199 {
            *worker = self.a.worker().expect("a worker");
        }
    }
    fn wait_time(&self) -> Duration {
        Duration::from_secs(10)
    }
}

/// A peer process running `soak peer`.
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    reader: Option<JoinHandle<()>>,
    discovery: String,
}

impl Peer {
    fn spawn() -> Peer {
        let exe = std::env::current_exe().expect("own executable");
        let mut child = Command::new(exe)
            .arg("peer")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the peer");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx): (_, Receiver<String>) = channel();
        // Ends when the peer's stdout closes (the peer exits).
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the peer says READY within 30 s");
        let discovery = ready
            .strip_prefix("READY ")
            .expect("READY line")
            .trim()
            .to_string();
        Peer {
            stdin: child.stdin.take(),
            child,
            reader: Some(reader),
            discovery,
        }
    }

    /// Kills the peer (SIGKILL) and reaps it.
    fn kill(mut self) {
        let _ = self.child.kill();
        self.reap();
    }

    /// Closes its stdin (it exits) and reaps it, bounded.
    fn stop(mut self) {
        drop(self.stdin.take());
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.reap();
    }

    fn reap(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

struct TcpTarget {
    a: Engine,
    _meta: Arc<PeerMetadata>,
    peer: Option<Peer>,
    remote: RemoteSegment,
    src: SegmentId,
    sink: SegmentId,
    restarted: bool,
    /// Kills the stopped peer while this batch's submit runs (set half-way).
    killer: Option<JoinHandle<()>>,
}

impl TcpTarget {
    fn new() -> Self {
        let fabric = TcpFabric::new(TcpConfig {
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            ..TcpConfig::default()
        })
        .expect("tcp fabric");
        let meta = PeerMetadata::bind(DiscoveryConfig::new("soak")).expect("discovery");
        meta.attach_fabric(fabric.clone());
        let a = Engine::new(engine_config("soak"), fabric, meta.clone()).expect("engine");
        let peer = Peer::spawn();
        let remote = a
            .open_segment(&format!("{}/data", peer.discovery))
            .expect("open the peer's segment");
        let (src, sink) = local_segments(&a);
        TcpTarget {
            a,
            _meta: meta,
            peer: Some(peer),
            remote,
            src,
            sink,
            restarted: false,
            killer: None,
        }
    }
}

impl Target for TcpTarget {
    fn engine(&self) -> &Engine {
        &self.a
    }
    fn remote(&self) -> RemoteSegment {
        self.remote
    }
    fn src(&self) -> SegmentId {
        self.src
    }
    fn sink(&self) -> SegmentId {
        self.sink
    }
    fn before_batch(&mut self, _n: u64, progress: f64) {
        if self.restarted || progress < 0.5 {
            return;
        }
        // Half-way: stop the peer so the next batch stays in flight, and kill it (SIGKILL)
        // while that batch is being submitted and waited for.
        let pid = self.peer.as_ref().expect("a peer").child.id();
        signal(pid, libc::SIGSTOP);
        wait_for_state(pid, 'T');
        self.killer = Some(std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            signal(pid, libc::SIGKILL);
        }));
    }
    fn after_batch(&mut self, _n: u64) {
        let Some(killer) = self.killer.take() else {
            return;
        };
        let _ = killer.join();
        if let Some(p) = self.peer.take() {
            p.kill();
        }
        self.restarted = true;
        let peer = Peer::spawn();
        let _ = self.a.close_segment(self.remote);
        self.remote = self
            .a
            .open_segment(&format!("{}/data", peer.discovery))
            .expect("open the restarted peer's segment");
        self.peer = Some(peer);
        println!("tcp: peer killed with a batch in flight and restarted");
    }
    fn wait_time(&self) -> Duration {
        Duration::from_secs(10)
    }
}

impl Drop for TcpTarget {
    fn drop(&mut self) {
        if let Some(p) = self.peer.take() {
            p.stop();
        }
    }
}

/// Sends `sig` to our child `pid` (not reaped yet: `Peer` reaps only after the signals).
fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; `pid` is a child of ours that is not reaped yet, so
    // the pid cannot name another process.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Waits (at most 10 s) until `/proc/PID/stat` shows `state`: signals are asynchronous.
fn wait_for_state(pid: u32, state: char) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let now = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next());
        if now == Some(state) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The peer process: serves `data` until stdin closes (at most an hour).
fn peer() {
    let fabric = TcpFabric::new(TcpConfig::default()).expect("tcp fabric");
    let meta = PeerMetadata::bind(DiscoveryConfig::new("peer")).expect("discovery");
    meta.attach_fabric(fabric.clone());
    let engine = Engine::new(engine_config("peer"), fabric, meta.clone()).expect("engine");
    engine
        .register_owned(
            "data",
            OwnedMemory::zeroed(SEG as usize, 4096).unwrap(),
            Location::Cpu(0),
            Access::REMOTE_READ_WRITE,
        )
        .expect("register data");
    println!("READY {}", meta.local_addr());
    std::io::stdout().flush().unwrap();
    let (tx, rx) = channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut sink);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(3600));
}

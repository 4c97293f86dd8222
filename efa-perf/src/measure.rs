//! Measurement loops over the transport engine, shared by loopback and client/server runs.
//!
//! Every side owns one segment laid out the same way (one stripe of slots per stream), so a request's local
//! and remote offsets are equal. SEND is carried as the transport's two-sided primitive, WRITE with
//! notification (write-with-immediate on verbs and EFA): the target learns of each message by its tag count.

use crate::cpu;
use crate::runner::{cycle_slots, Amount, Point};
use crate::stamp::Run;
use crate::stats::Event;
use anyhow::{bail, Context};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use transport::{
    BatchId, Engine, Notifications, Opcode, OwnedView, RemoteSegment, Request, RequestStatus,
    SegmentId, TransportError, WaitMode, Worker,
};

/// Notification tag of SEND bandwidth messages.
pub const TAG_SEND: u32 = 1;
/// Tag of ping messages (client to server) in latency tests.
pub const TAG_PING: u32 = 2;
/// Tag of pong messages (server to client).
pub const TAG_PONG: u32 = 3;

/// Largest memory one side registers for a sweep.
const MAX_REGION: u64 = 256 << 20;

/// One side's view of the connection: its engine, its segment, the peer's segment.
#[derive(Clone, Debug)]
pub struct Link {
    /// This side's engine.
    pub engine: Engine,
    /// This side's registered segment.
    pub local: SegmentId,
    /// The peer's segment, opened.
    pub remote: RemoteSegment,
    /// Bytes of each stream's stripe.
    pub stripe: u64,
}

impl Link {
    /// Where a WRITE latency test's pings land: the second half of stream 0's stripe.
    pub fn rx_offset(&self) -> u64 {
        self.stripe / 2
    }

    /// Clears the byte a WRITE latency test polls for a message of `size` bytes, before the test starts.
    pub fn reset_rx(&self, size: u64) -> anyhow::Result<()> {
        if size > self.rx_offset() {
            bail!(
                "{size}-byte latency messages need a stripe of at least {} bytes",
                2 * size
            );
        }
        self.engine
            .write_owned(self.local, self.rx_offset() + size - 1, &[0])?;
        Ok(())
    }
}

/// Sequence byte of ping `i` (never 0, so a cleared byte is never mistaken for an arrival).
fn seq(i: u64) -> u8 {
    (i % 255) as u8 + 1
}

/// Polls this side's own memory (through `view`, pinned once) until the byte at `at` reads `want`
/// (perftest's write_lat detects arrival the same way, at the receive slot's last byte);
/// `Ok(false)` when `stop` is set first. A pure spin, as perftest's and the `--raw` loops spin:
/// the WRITE lands without any thread of this process, and a PAUSE or a yield per pass would only
/// see it later.
fn await_byte(
    view: &OwnedView<'_>,
    at: u64,
    want: u8,
    timeout: Duration,
    stop: Option<&AtomicBool>,
) -> anyhow::Result<bool> {
    let mut patience = Patience::default();
    let mut spins = 0u32;
    loop {
        if view.load(at)? == want {
            return Ok(true);
        }
        spins = spins.wrapping_add(1);
        if spins % 256 == 0 {
            if stop.is_some_and(|s| s.load(Ordering::Acquire)) {
                return Ok(false);
            }
            if patience.exhausted(timeout) {
                bail!("no WRITE arrived within {timeout:?} (waiting for sequence {want})");
            }
        }
    }
}

/// A wait's timeout, its clock first read at its first check rather than when the wait starts:
/// most waits of a latency loop end before their first check, and a clock read can cost a
/// system call (a VM's emulated clock source, see [`stamp`](crate::stamp)).
#[derive(Default)]
pub(crate) struct Patience {
    since: Option<Instant>,
}

impl Patience {
    /// Whether `timeout` passed since the first call.
    pub(crate) fn exhausted(&mut self, timeout: Duration) -> bool {
        self.since.get_or_insert_with(Instant::now).elapsed() >= timeout
    }
}

/// Pause of a wait loop after fruitless pass `spins`: a short pure spin, then a yield on every
/// pass. A waiter that only spins holds its CPU against the threads that make the awaited event
/// happen (the engine's target thread counting notifications, the device's kernel work on
/// Soft-RoCE); with as many spinners as CPUs those then run only at the next scheduler tick.
pub(crate) fn relax(spins: u32) {
    if spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Bytes each stream's stripe needs so `depth` messages of `max_size` fit (capped; overlapping slots are
/// fine for bandwidth, as in perftest's cyclic buffer).
pub fn stripe_len(max_size: u64, depth: u32, streams: u32) -> u64 {
    let want = max_size.saturating_mul(depth as u64);
    let cap = (MAX_REGION / streams.max(1) as u64).max(max_size);
    want.min(cap).max(max_size)
}

/// What one stream did.
#[derive(Clone, Debug, Default)]
pub struct StreamResult {
    /// Completion events since the common start.
    pub events: Vec<Event>,
    /// Operations completed.
    pub ops: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Time from the common start to the last completion.
    pub end: Duration,
    /// CPU time this thread used.
    pub cpu: Duration,
}

/// The operation a stream issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamOp {
    /// RDMA READ from the peer.
    Read,
    /// RDMA WRITE to the peer.
    Write,
    /// SEND (WRITE with notification of `TAG_SEND`).
    Send,
}

fn opcode(op: StreamOp) -> Opcode {
    match op {
        StreamOp::Read => Opcode::Read,
        StreamOp::Write => Opcode::Write,
        StreamOp::Send => Opcode::WriteWithNotify(TAG_SEND),
    }
}

/// Turns a finished batch's status into an error naming what failed.
fn check_batch(
    engine: &Engine,
    worker: &mut Worker,
    batch: BatchId,
    timeout: Duration,
) -> anyhow::Result<u32> {
    let st = worker
        .wait(batch, timeout)
        .context("waiting for completions")?;
    if st.completed == st.submitted {
        return Ok(st.completed);
    }
    let mut first = None;
    for i in 0..st.submitted as usize {
        match engine.request_status(batch, i) {
            Ok(RequestStatus::Completed) => {}
            Ok(other) => {
                first = Some(format!("{other:?}"));
                break;
            }
            Err(e) => {
                first = Some(e.to_string());
                break;
            }
        }
    }
    // Leave nothing in flight behind the error.
    let _ = worker.drain(batch, Duration::from_secs(1));
    bail!(
        "{} of {} requests did not complete ({} failed, {} timed out after {:?}); first: {}",
        st.submitted - st.completed,
        st.submitted,
        st.failed,
        st.timed_out,
        timeout,
        first.unwrap_or_else(|| "unknown".into())
    )
}

/// Batches a bandwidth stream splits its `-t` requests into (fewer when `-t` is smaller).
const STREAM_BATCHES: u32 = 8;

/// How a stream of `depth` requests in flight is batched: `(batches, requests per batch)`. A stream waits
/// for its oldest batch whole before it refills it, so `n` batches keep at least `(n - 1) / n` of `depth`
/// in flight (perftest refills per completion and keeps all of it; two batches kept half).
fn stream_batches(depth: u32) -> (u32, u32) {
    let depth = depth.max(1);
    let per = depth.div_ceil(STREAM_BATCHES);
    (depth / per, per)
}

/// Runs bandwidth stream `index` of point `p`: keeps up to `p.depth` requests of `p.size` bytes in
/// flight (in [`stream_batches`], refilled as each completes, so the queue never drains) until
/// `p.amount` is done, cycling through the places of its stripe that `p.cycle_buffer` allows.
pub fn stream(
    link: &Link,
    index: u32,
    op: StreamOp,
    p: &Point,
    start: Instant,
    timeout: Duration,
) -> anyhow::Result<StreamResult> {
    let (size, amount) = (p.size, p.amount);
    let cpu0 = cpu::thread_cpu();
    let engine = &link.engine;
    let mut worker = engine.worker().context("creating a worker")?;
    let (nbatches, per) = stream_batches(p.depth);
    let per = per as usize;
    let base = index as u64 * link.stripe;
    let slots = cycle_slots(size, p.cycle_buffer, link.stripe / size);
    let mut slot = 0u64;
    let mut issued = 0u64;
    let deadline = match amount {
        Amount::Duration(d) => start.checked_add(d),
        Amount::Iterations(_) => None,
    };
    let want = |issued: u64| match amount {
        Amount::Iterations(n) => n.saturating_sub(issued),
        Amount::Duration(_) => u64::MAX,
    };
    let mut reqs: Vec<Request> = Vec::with_capacity(per);
    let mut batches: Vec<(BatchId, u64)> = Vec::with_capacity(nbatches as usize);
    let code = opcode(op);
    let mut fill = |batch: BatchId, issued: &mut u64, worker: &mut Worker| -> anyhow::Result<u64> {
        let k = (per as u64).min(want(*issued));
        reqs.clear();
        for _ in 0..k {
            let off = base + slot * size;
            slot = (slot + 1) % slots;
            let mut r = Request::write(link.local, off, link.remote, off, size);
            r.op = code;
            reqs.push(r);
        }
        if k > 0 {
            worker.submit(batch, &reqs).context("submitting requests")?;
        }
        *issued += k;
        Ok(k)
    };
    for _ in 0..nbatches {
        let b = engine.allocate_batch(per).context("allocating a batch")?;
        let k = fill(b, &mut issued, &mut worker)?;
        batches.push((b, k));
    }
    let mut result = StreamResult::default();
    let mut live = batches.iter().filter(|b| b.1 > 0).count();
    let mut i = 0;
    while live > 0 {
        let (b, k) = batches[i];
        if k > 0 {
            let done = check_batch(engine, &mut worker, b, timeout)? as u64;
            let at = start.elapsed();
            result.events.push(Event {
                at,
                ops: done,
                bytes: done * size,
            });
            result.ops += done;
            result.bytes += done * size;
            result.end = at;
            let more = match deadline {
                Some(d) => Instant::now() < d,
                None => true,
            };
            let nb = engine.recycle_batch(b).context("recycling a batch")?;
            let k2 = if more {
                fill(nb, &mut issued, &mut worker)?
            } else {
                0
            };
            if k2 == 0 {
                live -= 1;
            }
            batches[i] = (nb, k2);
        }
        i = (i + 1) % batches.len();
    }
    for (b, _) in batches {
        let _ = engine.free_batch(b);
    }
    result.cpu = cpu::thread_cpu().saturating_sub(cpu0);
    Ok(result)
}

/// Spins until `tag` on `engine` has at least `n` arrivals, yielding now and then so a peer thread on the
/// same core can run; fails after `timeout`.
pub fn await_tag(engine: &Engine, tag: u32, n: u64, timeout: Duration) -> anyhow::Result<()> {
    if await_tag_or_stop(engine, tag, n, timeout, None, false)? {
        Ok(())
    } else {
        bail!("stopped while waiting for tag {tag}")
    }
}

/// Like [`await_tag`], but returns `Ok(false)` as soon as `stop` is set and the count is still
/// short; with `sleep`, the wait sleeps until the arrival ([`Notifications::wait_for`], for `-e`)
/// instead of spinning.
pub fn await_tag_or_stop(
    engine: &Engine,
    tag: u32,
    n: u64,
    timeout: Duration,
    stop: Option<&AtomicBool>,
    sleep: bool,
) -> anyhow::Result<bool> {
    let notes = engine.notifications();
    if sleep {
        return sleep_for_tag(notes, tag, n, timeout, stop);
    }
    let mut patience = Patience::default();
    let mut spins = 0u32;
    loop {
        let c = notes.count(tag)?;
        if c >= n {
            return Ok(true);
        }
        spins = spins.wrapping_add(1);
        if spins % 256 == 0 {
            if stop.is_some_and(|s| s.load(Ordering::Acquire)) {
                return Ok(false);
            }
            if patience.exhausted(timeout) {
                return Err(short_of(c, n, tag, timeout));
            }
        }
        relax(spins);
    }
}

/// Longest sleep of a notification wait between two looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(20);

/// [`await_tag_or_stop`] asleep: the engine's target thread wakes the wait at the arrival.
fn sleep_for_tag(
    notes: &Notifications,
    tag: u32,
    n: u64,
    timeout: Duration,
    stop: Option<&AtomicBool>,
) -> anyhow::Result<bool> {
    let start = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let c = notes.wait_for(tag, n, left.min(STOP_CHECK))?;
        if c >= n {
            return Ok(true);
        }
        if stop.is_some_and(|s| s.load(Ordering::Acquire)) {
            return Ok(false);
        }
        if left <= STOP_CHECK {
            return Err(short_of(c, n, tag, timeout));
        }
    }
}

/// A notification wait's timeout, with what had come.
fn short_of(c: u64, n: u64, tag: u32, timeout: Duration) -> anyhow::Error {
    anyhow::anyhow!("peer sent {c} of {n} messages (tag {tag}) within {timeout:?}")
}

/// The request of a latency test's side: `size` bytes from local offset 0. WRITE pings land in the
/// peer's receive half (see [`Link::rx_offset`]) so the bytes a side sends never look like bytes it
/// received.
fn request(link: &Link, op: Opcode, size: u64) -> Request {
    let remote_off = if op == Opcode::Write {
        link.rx_offset()
    } else {
        0
    };
    Request::write(link.local, 0, link.remote, remote_off, size).with_op(op)
}

/// One request, waited for.
fn one(
    link: &Link,
    worker: &mut Worker,
    batch: &mut BatchId,
    op: Opcode,
    size: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    worker
        .submit(*batch, &[request(link, op, size)])
        .context("submitting")?;
    complete_one(link, worker, batch, timeout)
}

/// Waits for the request in `batch` (checked, see [`check_batch`]) and recycles the batch.
fn complete_one(
    link: &Link,
    worker: &mut Worker,
    batch: &mut BatchId,
    timeout: Duration,
) -> anyhow::Result<()> {
    check_batch(&link.engine, worker, *batch, timeout)?;
    *batch = link.engine.recycle_batch(*batch)?;
    Ok(())
}

/// Requests a ping-pong side's batch holds: it is recycled once per this many messages, not after
/// each (a message waits for its own request; the batch's earlier ones are done by then).
const PING_BATCH: u32 = 64;

/// A ping-pong side's next message, prepared while the peer's is on its way: its sequence byte
/// written, the request validated, pinned and turned into work requests
/// ([`Worker::submit_deferred`]), so only the doorbell stands between an arrival and the answer. perftest
/// builds its work request before its loop and stores the sequence byte just before each post; the
/// engine's own share of a message then sits off the round trip, as perftest's does. A message of more
/// work requests than a worker defers (large messages in small slices) is submitted when due.
///
/// The side's segment is held open ([`Engine::owned_view`]) for the sequence bytes it writes and
/// the arrivals it polls for, as perftest reads and writes its own buffer.
struct Pinger<'a> {
    link: &'a Link,
    view: OwnedView<'a>,
    worker: Worker,
    batch: BatchId,
    /// Requests submitted into `batch` so far (it is recycled at [`PING_BATCH`]).
    used: u32,
    op: Opcode,
    size: u64,
    timeout: Duration,
    /// Whether the next message is deferred (else it is submitted by `send`).
    deferred: bool,
}

impl<'a> Pinger<'a> {
    /// A side sending `op` messages of `size` bytes, message 0 prepared.
    fn new(link: &'a Link, op: Opcode, size: u64, timeout: Duration) -> anyhow::Result<Self> {
        let mut p = Pinger {
            link,
            view: link.engine.owned_view(link.local)?,
            worker: link.engine.worker()?,
            batch: link.engine.allocate_batch(PING_BATCH as usize)?,
            used: 0,
            op,
            size,
            timeout,
            deferred: false,
        };
        p.prepare(0)?;
        Ok(p)
    }

    /// Prepares message `i` (deferred until [`send`](Self::send)), first recycling the batch
    /// when it is full.
    fn prepare(&mut self, i: u64) -> anyhow::Result<()> {
        if self.used == PING_BATCH {
            self.batch = self.link.engine.recycle_batch(self.batch)?;
            self.used = 0;
        }
        if self.op == Opcode::Write {
            self.view.write(self.size - 1, &[seq(i)])?;
        }
        let r = request(self.link, self.op, self.size);
        self.deferred = match self.worker.submit_deferred(self.batch, &[r]) {
            Ok(_) => true,
            Err(TransportError::DeferredQueueFull { .. }) => false,
            Err(e) => return Err(anyhow::Error::new(e).context("submitting")),
        };
        Ok(())
    }

    /// Rings the doorbell of the prepared message `i`, waits for its completion (the device has
    /// read its bytes) and prepares message `i + 1`.
    fn send(&mut self, i: u64) -> anyhow::Result<()> {
        if self.deferred {
            self.worker.post_deferred();
        } else {
            let r = request(self.link, self.op, self.size);
            self.worker.submit(self.batch, &[r]).context("submitting")?;
        }
        self.used += 1;
        check_batch(
            &self.link.engine,
            &mut self.worker,
            self.batch,
            self.timeout,
        )?;
        self.prepare(i + 1)
    }

    /// Waits until the peer's WRITE of message `i` has landed (its sequence byte, the last of the
    /// receive slot, reads `seq(i)`); `Ok(false)` when `stop` is set first.
    fn await_write(&self, i: u64, stop: Option<&AtomicBool>) -> anyhow::Result<bool> {
        let at = self.link.rx_offset() + self.size - 1;
        await_byte(&self.view, at, seq(i), self.timeout, stop)
    }

    /// Waits until the peer's notifications of `tag` number `n`; `Ok(false)` when `stop` is set
    /// first. Asleep when this side's worker blocks (`-e`): the whole round trip then sleeps.
    fn await_tag(&self, tag: u32, n: u64, stop: Option<&AtomicBool>) -> anyhow::Result<bool> {
        let sleep = self.worker.wait_mode() == WaitMode::Block;
        await_tag_or_stop(&self.link.engine, tag, n, self.timeout, stop, sleep)
    }

    /// Takes back the message prepared last (never sent) and frees the batch.
    fn finish(mut self) {
        self.worker.discard_deferred();
        let _ = self.link.engine.free_batch(self.batch);
    }
}

/// Client side of a latency test: operations one at a time until `amount` is done. READ reports the full
/// time of each read; WRITE and SEND report half the round trip of a ping-pong, as perftest does. Tag
/// counts start at zero: each test consumes what it counted.
pub fn latency_client(
    link: &Link,
    op: StreamOp,
    size: u64,
    amount: Amount,
    timeout: Duration,
) -> anyhow::Result<(Vec<f64>, Duration)> {
    let cpu0 = cpu::thread_cpu();
    // One stamp per iteration, as perftest stamps each one (see `stamp`).
    let mut run = Run::new(amount);
    if op == StreamOp::Read {
        let mut worker = link.engine.worker()?;
        let mut batch = link.engine.allocate_batch(1)?;
        while run.goes_on() {
            one(link, &mut worker, &mut batch, Opcode::Read, size, timeout)?;
            run.lap();
        }
        let _ = link.engine.free_batch(batch);
        return Ok((
            run.stamps.finish(1.0),
            cpu::thread_cpu().saturating_sub(cpu0),
        ));
    }
    let mut ping = Pinger::new(link, ping_op(op, TAG_PING), size, timeout)?;
    while run.goes_on() {
        let i = run.stamps.len() as u64;
        ping.send(i)?;
        let arrived = if op == StreamOp::Write {
            ping.await_write(i, None)
        } else {
            ping.await_tag(TAG_PONG, i + 1, None)
        };
        arrived.context("waiting for the pong")?;
        run.lap();
    }
    ping.finish();
    let i = run.stamps.len() as u64;
    // Half a round trip per sample.
    let samples = run.stamps.finish(0.5);
    if op == StreamOp::Send {
        link.engine.notifications().consume(TAG_PONG, i)?;
    }
    Ok((samples, cpu::thread_cpu().saturating_sub(cpu0)))
}

/// The engine operation of a ping-pong's messages: a WRITE, or for SEND a WRITE with notification
/// `tag`.
fn ping_op(op: StreamOp, tag: u32) -> Opcode {
    if op == StreamOp::Write {
        Opcode::Write
    } else {
        Opcode::WriteWithNotify(tag)
    }
}

/// Server side of a WRITE/SEND latency test: answers each ping with a pong of the same size until `stop`
/// is set (the client sets it once it has every pong). WRITE pings are seen by polling this side's memory,
/// SENDs by their notification count. Returns the pings answered and the CPU time used.
pub fn latency_server(
    link: &Link,
    op: StreamOp,
    size: u64,
    stop: &AtomicBool,
    timeout: Duration,
) -> anyhow::Result<(u64, Duration)> {
    let cpu0 = cpu::thread_cpu();
    let mut pong = Pinger::new(link, ping_op(op, TAG_PONG), size, timeout)?;
    let mut i = 0u64;
    loop {
        let arrived = if op == StreamOp::Write {
            pong.await_write(i, Some(stop))
        } else {
            pong.await_tag(TAG_PING, i + 1, Some(stop))
        };
        if !arrived.context("waiting for the ping")? {
            break;
        }
        pong.send(i)?;
        i += 1;
    }
    pong.finish();
    if op == StreamOp::Send {
        link.engine.notifications().consume(TAG_PING, i)?;
    }
    Ok((i, cpu::thread_cpu().saturating_sub(cpu0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use transport::fabric::sim::{SimConfig, SimFabric, SimFaults, SimNetwork};
    use transport::EngineConfig;

    #[test]
    fn stream_batches_keep_most_of_the_depth_in_flight() {
        for depth in 1..=4096u32 {
            let (n, per) = stream_batches(depth);
            assert!((1..=STREAM_BATCHES).contains(&n), "{depth}: {n} batches");
            assert!(n * per <= depth, "{depth}: {n} x {per}");
            // Short of the depth by less than one batch.
            assert!(n * per + per > depth, "{depth}: {n} x {per}");
        }
        assert_eq!(stream_batches(128), (8, 16));
        assert_eq!(stream_batches(2), (2, 1));
        assert_eq!(stream_batches(0), (1, 1));
    }

    /// A client and a server link on one simulated network, the client's fabric with `faults`.
    fn sim_links(client_faults: SimFaults) -> (Link, Link) {
        sim_links_waiting(client_faults, WaitMode::default())
    }

    /// As [`sim_links`], both engines' workers waiting in `wait`.
    fn sim_links_waiting(client_faults: SimFaults, wait: WaitMode) -> (Link, Link) {
        let config = |name| {
            let mut c = EngineConfig::new(name);
            c.wait = wait;
            c
        };
        let net = SimNetwork::new();
        let fabric = |faults| {
            let config = SimConfig {
                faults,
                ..SimConfig::default()
            };
            SimFabric::new(&net, config).unwrap()
        };
        crate::loopback::link_pair(
            fabric(SimFaults::default()),
            fabric(client_faults),
            config("server"),
            config("client"),
            1 << 16,
            1 << 16,
        )
        .unwrap()
    }

    /// A ping-pong of `n` `op` messages of `size` bytes over `links`: the client's samples (or its
    /// error) and the pings the server answered.
    fn ping_pong(
        (client, server): &(Link, Link),
        op: StreamOp,
        size: u64,
        n: u64,
    ) -> (anyhow::Result<Vec<f64>>, u64) {
        let timeout = Duration::from_secs(30);
        if op == StreamOp::Write {
            client.reset_rx(size).unwrap();
            server.reset_rx(size).unwrap();
        }
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let answered = s.spawn(|| latency_server(server, op, size, &stop, timeout));
            let samples = latency_client(client, op, size, Amount::Iterations(n), timeout);
            stop.store(true, Ordering::Release);
            let (answered, _) = answered.join().unwrap().unwrap();
            (samples.map(|(samples, _)| samples), answered)
        })
    }

    #[test]
    fn a_ping_pong_answers_every_ping_while_completions_lag() {
        // Completions held back up to 20 polls: each side waits out its own message's before the
        // next, and no ping may be lost, answered twice or mistaken for another.
        let faults = SimFaults {
            max_delay_steps: 20,
            ..SimFaults::default()
        };
        let links = sim_links(faults);
        for op in [StreamOp::Write, StreamOp::Send] {
            for size in [2, 4096] {
                let (samples, answered) = ping_pong(&links, op, size, 300);
                let samples = samples.unwrap();
                assert_eq!(samples.len(), 300, "{op:?} {size}");
                assert_eq!(answered, 300, "{op:?} {size}");
            }
        }
    }

    #[test]
    fn a_ping_pong_of_sleeping_sides_answers_every_ping_and_stops() {
        // Workers that block (-e): each side sleeps in its notification waits until the peer's
        // message wakes it, and the server's wait ends when the client stops it.
        let links = sim_links_waiting(SimFaults::default(), WaitMode::Block);
        let (samples, answered) = ping_pong(&links, StreamOp::Send, 64, 100);
        assert_eq!(samples.unwrap().len(), 100);
        assert_eq!(answered, 100);
    }

    #[test]
    fn a_failed_ping_ends_the_run_with_its_cause() {
        let faults = SimFaults {
            error_rate: 1.0,
            ..SimFaults::default()
        };
        let links = sim_links(faults);
        for op in [StreamOp::Write, StreamOp::Send] {
            let (samples, answered) = ping_pong(&links, op, 2, 100);
            let err = format!("{:#}", samples.unwrap_err());
            // The completion's failure and its reason, not a wait's timeout.
            assert!(err.contains("did not complete"), "{op:?}: {err}");
            assert!(err.contains("RemoteAbort"), "{op:?}: {err}");
            assert_eq!(answered, 0, "{op:?}");
        }
    }
}

//! The loops of a raw test on one side: a bandwidth pump (operations kept `-t` deep on every
//! queue pair; in SEND tests receives kept posted, both at once with `-b`), the two ends of a
//! ping-pong (SEND, or perftest's RDMA WRITE ping-pong: each side's WRITE completed, then the
//! peer's polled for in memory) and the READ latency loop (one READ at a time). They poll the CQs
//! from the calling thread, as perftest does, and allocate nothing per message.
//!
//! In RDMA tests the target posts nothing and learns of nothing: its pump (with `-b`, its own
//! WRITEs or READs) ends when its operations complete, and the run ends when the initiator's
//! did.
//!
//! With `-e` (a [`Side`] on a completion channel) a pass that finds nothing does not spin: the
//! next arms the CQs and polls once more, and only a pass that still finds nothing blocks on the
//! channel ([`Rest`]), as perftest's `-e` sleeps in `ibv_get_cq_event`.

use super::error::RawError;
use super::plan::{seq, Op};
use super::side::Side;
use crate::cpu;
use crate::measure::{relax, Patience, StreamResult};
use crate::runner::Amount;
use crate::stamp::Run;
use crate::stats::Event;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A count not known yet.
pub const UNKNOWN: u64 = u64::MAX;

/// Fruitless polls between two looks at the clock and the abort flag.
const CHECK_EVERY: u32 = 1024;
/// Fruitless receive polls of a ping-pong between two polls of the send CQ.
const SEND_POLL_EVERY: u32 = 16;
/// Longest sleep on the completion channel (`-e`) before a loop looks at its abort flag and
/// clock again.
const EVENT_BOUND: Duration = Duration::from_millis(50);

/// What a loop on a completion channel (`-e`) does after a pass that found nothing: the first
/// arms the CQs (the loop then polls once more, which finds any completion that landed before
/// the arming), the next blocks on the channel. A pass that finds something starts over.
#[derive(Default)]
struct Rest {
    armed: bool,
}

impl Rest {
    /// A pass found completions: the CQs must be armed again before the next block.
    fn progress(&mut self) {
        self.armed = false;
    }

    /// A pass found nothing.
    fn empty(&mut self, side: &mut Side) -> Result<(), RawError> {
        if self.armed {
            side.wait_event(EVENT_BOUND)?;
            self.armed = false;
        } else {
            side.arm()?;
            self.armed = true;
        }
        Ok(())
    }
}

/// What a bandwidth run does on this side.
#[derive(Clone, Copy, Debug)]
pub struct BwRun {
    /// Message size.
    pub size: u64,
    /// Sends per queue pair, or a duration.
    pub amount: Amount,
    /// Sends in flight per queue pair.
    pub depth: u32,
    /// Whether this side sends (the client, and the server with `-b`).
    pub send: bool,
    /// The common start.
    pub start: Instant,
    /// Longest wait without a completion.
    pub timeout: Duration,
}

/// How a run's two sides meet: this side publishes `sent` once its sends are complete and ends
/// once it has received `expect` messages (set by the peer's side, or by the control thread
/// from the peer's count); `abort` ends it early.
#[derive(Clone, Copy, Debug)]
pub struct Meet<'a> {
    /// Messages this side must receive ([`UNKNOWN`] until known).
    pub expect: &'a AtomicU64,
    /// Where this side publishes how many it sent.
    pub sent: &'a AtomicU64,
    /// Set when the other side failed.
    pub abort: &'a AtomicBool,
    /// A thread parked until `sent` is published.
    pub wake: Option<&'a std::thread::Thread>,
}

/// Completion events, preallocated: one per half queue of completions, merged into the last
/// once the room is used, so recording never allocates.
struct Events {
    list: Vec<Event>,
    pending: u64,
    every: u64,
    size: u64,
}

impl Events {
    fn new(run: &BwRun, lanes: u32) -> Self {
        let every = u64::from((run.depth / 2).max(1));
        let ops = match run.amount {
            Amount::Iterations(n) => n.saturating_mul(u64::from(lanes)),
            Amount::Duration(_) => 1 << 20,
        };
        let room = (ops / every + 2).min(1 << 16) as usize;
        Self {
            list: Vec::with_capacity(if run.send { room } else { 0 }),
            pending: 0,
            every,
            size: run.size,
        }
    }

    fn add(&mut self, ops: u64, at: Duration, flush: bool) {
        self.pending += ops;
        if self.pending == 0 || (self.pending < self.every && !flush) {
            return;
        }
        let (ops, bytes) = (self.pending, self.pending * self.size);
        self.pending = 0;
        if self.list.len() < self.list.capacity() {
            self.list.push(Event { at, ops, bytes });
        } else if let Some(last) = self.list.last_mut() {
            last.at = at;
            last.ops += ops;
            last.bytes += bytes;
        }
    }
}

/// Posts what the send queues have room for: at most `want` per queue pair, in batches of at
/// least a quarter queue so one doorbell carries many sends. Returns how many were posted.
fn fill(side: &mut Side, want: u64, depth: u32, size: u32) -> Result<u64, RawError> {
    let burst = u64::from((depth / 4).max(1));
    let mut posted = 0;
    for i in 0..side.lanes() as usize {
        let (done, outstanding) = side.lane_counts(i);
        let left = want.saturating_sub(done);
        let room = u64::from(depth.saturating_sub(outstanding));
        let k = room.min(left);
        if k > 0 && k >= burst.min(left) {
            side.post_ops(i, k as u32, size)?;
            posted += k;
        }
    }
    Ok(posted)
}

/// Waits between fruitless polls; every [`CHECK_EVERY`] of them (every one with `-e`, where
/// a wait is a system call anyway), fails when `abort` is set or nothing completed for
/// `timeout` since `last`.
fn idle(
    spins: &mut u32,
    rest: &mut Rest,
    last: Instant,
    timeout: Duration,
    abort: &AtomicBool,
    side: &mut Side,
    expect: u64,
) -> Result<(), RawError> {
    *spins = spins.wrapping_add(1);
    if *spins % CHECK_EVERY == 0 || side.has_events() {
        if abort.load(Ordering::Acquire) {
            return Err(RawError::Aborted);
        }
        if last.elapsed() >= timeout {
            return Err(RawError::Stalled {
                timeout,
                sent: side.posted(),
                outstanding: side.outstanding(),
                received: side.received(),
                expect,
            });
        }
    }
    if side.has_events() {
        return rest.empty(side);
    }
    relax(*spins);
    Ok(())
}

/// Runs one bandwidth run on this side (see [`Meet`] for how it ends). The result counts this
/// side's completed sends.
pub fn bandwidth(side: &mut Side, run: &BwRun, meet: Meet<'_>) -> Result<StreamResult, RawError> {
    let cpu0 = cpu::thread_cpu();
    let size = u32::try_from(run.size).unwrap_or(u32::MAX);
    let (mut want, deadline) = match run.amount {
        Amount::Iterations(n) => (n, None),
        Amount::Duration(d) => (u64::MAX, run.start.checked_add(d)),
    };
    if !run.send {
        want = 0;
    }
    let mut events = Events::new(run, side.lanes());
    let mut end = None;
    let (mut spins, mut last) = (0u32, Instant::now());
    let mut rest = Rest::default();
    loop {
        let mut progress = 0;
        if end.is_none() && want > 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // Time is up: what each queue pair posted is all it sends.
                want = 0;
            }
            progress += fill(side, want, run.depth, size)?;
        }
        let sent = side.poll_sends()?;
        events.add(sent.into(), run.start.elapsed(), false);
        progress += u64::from(sent) + u64::from(side.poll_recvs(run.size)?);
        if end.is_none() && sends_done(side, want) {
            let at = run.start.elapsed();
            events.add(0, at, true);
            end = Some(at);
            meet.sent.store(side.completed(), Ordering::Release);
            if let Some(t) = meet.wake {
                t.unpark();
            }
        }
        // RDMA targets receive nothing: a side is done once its own operations are.
        let expect = match side.op().two_sided() {
            true => meet.expect.load(Ordering::Acquire),
            false => 0,
        };
        if end.is_some() && side.received() >= expect {
            break;
        }
        if progress > 0 {
            (spins, last) = (0, Instant::now());
            rest.progress();
        } else {
            idle(
                &mut spins,
                &mut rest,
                last,
                run.timeout,
                meet.abort,
                side,
                expect,
            )?;
        }
    }
    Ok(StreamResult {
        events: events.list,
        ops: side.completed(),
        bytes: side.completed() * run.size,
        end: end.unwrap_or_default(),
        cpu: cpu::thread_cpu().saturating_sub(cpu0),
    })
}

/// Whether every queue pair posted its `want` sends (0 once a duration ran out) and every
/// send completed.
fn sends_done(side: &Side, want: u64) -> bool {
    (0..side.lanes() as usize).all(|i| {
        let (posted, outstanding) = side.lane_counts(i);
        outstanding == 0 && posted >= want
    })
}

/// Posts one `size`-byte operation on queue pair 0, first making room in the send queue.
fn send_one(side: &mut Side, size: u32, timeout: Duration) -> Result<(), RawError> {
    // The clock is read only when the queue is full: a read can cost a system call (a VM's clock).
    let (mut patience, mut rest) = (Patience::default(), Rest::default());
    while side.lane_counts(0).1 >= side.tx_depth {
        if side.poll_sends()? > 0 {
            rest.progress();
            continue;
        }
        if patience.exhausted(timeout) {
            return Err(stalled(side, timeout, 0));
        }
        if side.has_events() {
            rest.empty(side)?;
        }
    }
    side.post_ops(0, 1, size)
}

fn stalled(side: &Side, timeout: Duration, expect: u64) -> RawError {
    RawError::Stalled {
        timeout,
        sent: side.posted(),
        outstanding: side.outstanding(),
        received: side.received(),
        expect,
    }
}

/// Why a spinning wait ends before what it waits for.
enum End {
    /// The stop flag was raised.
    Stopped,
    /// The deadline passed.
    Late,
}

/// The periodic duties of a pure spin (no yield and no PAUSE, as perftest's latency loops
/// spin): a look at the send CQ every [`SEND_POLL_EVERY`] spins while sends are in flight
/// (send completions only free send-queue room, so now and then keeps the awaited CQ or memory
/// polled as often as perftest polls it), the stop flag and the deadline every
/// [`CHECK_EVERY`], the clock first read then, not per message.
#[derive(Default)]
struct Spin {
    spins: u32,
    patience: Patience,
}

impl Spin {
    /// Whether the wait must end now: `stop` raised, or `timeout` passed since the first check.
    fn check(&mut self, stop: &AtomicBool, timeout: Duration) -> Option<End> {
        if stop.load(Ordering::Acquire) {
            return Some(End::Stopped);
        }
        self.patience.exhausted(timeout).then_some(End::Late)
    }

    /// One spin with its duties.
    fn spin(
        &mut self,
        side: &mut Side,
        stop: &AtomicBool,
        timeout: Duration,
    ) -> Result<Option<End>, RawError> {
        self.spins = self.spins.wrapping_add(1);
        // With nothing in flight (a WRITE ping-pong waits for its WRITE's completion before it
        // polls memory) the spin stays pure, as perftest's memory poll is.
        if self.spins % SEND_POLL_EVERY == 0 && side.outstanding() > 0 {
            side.poll_sends()?;
        }
        // No PAUSE (`spin_loop`), as perftest's loops have none: the awaited byte or CQE is
        // seen a PAUSE sooner (about 40 ns on hardware, 230 ns in the TCG guest, where it
        // leaves the translated code).
        Ok(match self.spins % CHECK_EVERY {
            0 => self.check(stop, timeout),
            _ => None,
        })
    }
}

/// Waits until `n` messages have arrived this run, reaping send completions meanwhile, spinning
/// without yielding; `Ok(false)` when `stop` is set first.
fn await_received(
    side: &mut Side,
    n: u64,
    size: u64,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<bool, RawError> {
    let (mut spin, mut rest) = (Spin::default(), Rest::default());
    while side.received() < n {
        if side.poll_recvs(size)? > 0 {
            rest.progress();
            continue;
        }
        let end = if side.has_events() {
            // Send completions raise events too: take them, or each would wake this loop.
            if side.poll_sends()? > 0 {
                rest.progress();
                continue;
            }
            let end = spin.check(stop, timeout);
            if end.is_none() {
                rest.empty(side)?;
            }
            end
        } else {
            spin.spin(side, stop, timeout)?
        };
        match end {
            Some(End::Stopped) => return Ok(false),
            Some(End::Late) => return Err(stalled(side, timeout, n)),
            None => {}
        }
    }
    Ok(true)
}

/// Polls this side's own memory until the peer's WRITE ping ending in `want` has landed,
/// reaping send completions meanwhile; `Ok(false)` when `stop` is set first.
fn await_landed(
    side: &mut Side,
    size: u64,
    want: u8,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<bool, RawError> {
    let mut spin = Spin::default();
    while side.landed(size) != want {
        match spin.spin(side, stop, timeout)? {
            Some(End::Stopped) => return Ok(false),
            Some(End::Late) => return Err(RawError::NoArrival { timeout, want }),
            None => {}
        }
    }
    Ok(true)
}

/// Waits for every outstanding operation to complete. The clock is read only after
/// [`CHECK_EVERY`] empty polls (or at once with `-e`), not per operation.
fn drain_sends(side: &mut Side, timeout: Duration) -> Result<(), RawError> {
    let (mut spins, mut patience, mut rest) = (0u32, Patience::default(), Rest::default());
    while side.outstanding() > 0 {
        if side.poll_sends()? > 0 {
            rest.progress();
            continue;
        }
        spins = spins.wrapping_add(1);
        if (side.has_events() || spins % CHECK_EVERY == 0) && patience.exhausted(timeout) {
            return Err(stalled(side, timeout, 0));
        }
        if side.has_events() {
            rest.empty(side)?;
        }
    }
    Ok(())
}

/// Waits until the peer's message `i` (counted from 0 this run) arrived: a receive (SEND) or
/// the ping's last byte in this side's memory (WRITE); `Ok(false)` when `stop` is set first.
fn await_ping(
    side: &mut Side,
    i: u64,
    size: u64,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<bool, RawError> {
    match side.op() {
        Op::Write => await_landed(side, size, seq(i), timeout, stop),
        _ => await_received(side, i + 1, size, timeout, stop),
    }
}

/// A WRITE ping-pong's wait for its WRITE's completion before it polls its memory for the
/// peer's, as perftest's `write_lat` polls its send CQ after each post.
fn await_write_done(side: &mut Side, timeout: Duration) -> Result<(), RawError> {
    match side.op() {
        Op::Write => drain_sends(side, timeout),
        _ => Ok(()),
    }
}

/// Posts this side's message `i` of a ping-pong (a WRITE first gets its sequence byte).
fn post_ping(side: &mut Side, i: u64, size: u64, timeout: Duration) -> Result<(), RawError> {
    if side.op() == Op::Write {
        side.stamp(size, seq(i))?;
    }
    send_one(side, u32::try_from(size).unwrap_or(u32::MAX), timeout)
}

/// READ latency, as perftest's read_lat: one READ at a time, each timed from its post to its
/// completion (one stamp per READ: a sample is the time between two stamps).
fn reads(
    side: &mut Side,
    size: u64,
    amount: Amount,
    timeout: Duration,
) -> Result<(Vec<f64>, Duration), RawError> {
    let cpu0 = cpu::thread_cpu();
    let size32 = u32::try_from(size).unwrap_or(u32::MAX);
    let mut run = Run::new(amount);
    while run.goes_on() {
        send_one(side, size32, timeout)?;
        drain_sends(side, timeout)?;
        run.lap();
    }
    Ok((
        run.stamps.finish(1.0),
        cpu::thread_cpu().saturating_sub(cpu0),
    ))
}

/// The client's end of a latency run. A ping-pong: one SEND (or WRITE, awaiting its own
/// completion first), then the peer's back, timed; half the round trip per sample, as perftest
/// reports it; stops early when `abort` is set. A READ test: each READ's own time ([`reads`]).
pub fn ping(
    side: &mut Side,
    size: u64,
    amount: Amount,
    timeout: Duration,
    abort: &AtomicBool,
) -> Result<(Vec<f64>, Duration), RawError> {
    if side.op() == Op::Read {
        return reads(side, size, amount, timeout);
    }
    let cpu0 = cpu::thread_cpu();
    side.moderate_latency_sends(amount);
    // One stamp per round trip, as perftest stamps each iteration: a sample is the time
    // between two stamps, halved.
    let mut run = Run::new(amount);
    while run.goes_on() {
        let i = run.stamps.len() as u64;
        post_ping(side, i, size, timeout)?;
        await_write_done(side, timeout)?;
        if !await_ping(side, i, size, timeout, abort)? {
            return Err(RawError::Aborted);
        }
        run.lap();
    }
    drain_sends(side, timeout)?;
    Ok((
        run.stamps.finish(0.5),
        cpu::thread_cpu().saturating_sub(cpu0),
    ))
}

/// The server's end of a ping-pong of `amount` (the client's): answers each message with one of
/// the same size until `stop` is set and nothing more arrived. Returns how many it answered.
pub fn pong(
    side: &mut Side,
    size: u64,
    amount: Amount,
    stop: &AtomicBool,
    timeout: Duration,
) -> Result<u64, RawError> {
    side.moderate_latency_sends(amount);
    let mut answered = 0;
    // The wait for a ping has no bound of its own: the client's pause between runs is not a
    // stall; `stop` ends it.
    while await_ping(side, answered, size, Duration::MAX, stop)? {
        post_ping(side, answered, size, timeout)?;
        await_write_done(side, timeout)?;
        answered += 1;
    }
    drain_sends(side, timeout)?;
    Ok(answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n: u64, depth: u32) -> BwRun {
        BwRun {
            size: 64,
            amount: Amount::Iterations(n),
            depth,
            send: true,
            start: Instant::now(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn events_group_half_queues_and_never_grow() {
        let mut e = Events::new(&run(100, 8), 1);
        let room = e.list.capacity();
        for i in 0..1000u64 {
            e.add(1, Duration::from_micros(i), false);
        }
        e.add(0, Duration::from_micros(1000), true);
        assert_eq!(e.list.capacity(), room, "recording allocates nothing");
        let ops: u64 = e.list.iter().map(|v| v.ops).sum();
        assert_eq!(ops, 1000);
        assert_eq!(e.list.iter().map(|v| v.bytes).sum::<u64>(), 64_000);
        assert!(e.list[..e.list.len() - 1].iter().all(|v| v.ops == 4));
        // Full: the last event took in the rest, up to the last completion.
        assert_eq!(
            e.list.last().map(|v| v.at),
            Some(Duration::from_micros(999))
        );
    }

    #[test]
    fn a_receiver_records_nothing() {
        let e = Events::new(
            &BwRun {
                send: false,
                ..run(100, 8)
            },
            1,
        );
        assert_eq!(e.list.capacity(), 0);
    }
}

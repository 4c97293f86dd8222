//! Engine metrics: operations and bytes by opcode, failures by reason, per peer and per rail,
//! requests in flight, registration time and submit-to-complete latency.
//!
//! Each [`Worker`](crate::Worker) owns a block of counters that only it writes (relaxed loads and
//! stores of plain atomics: no lock, no read-modify-write, no allocation). The engine keeps the
//! list of blocks, registered when a worker is created; [`Engine::metrics`](crate::Engine::metrics)
//! sums them into a [`MetricsSnapshot`]. A dropped worker's counts are folded into the engine's
//! retired block, so the list stays as long as the number of live workers. A submit or poll
//! gathers its counts in local integers and adds them to the block once.
//!
//! Latency is measured on one submit call in [`LATENCY_SAMPLE_EVERY`]: one clock read for the
//! submit and one per poll that ends any of its requests, shared by every request of the batch.
//! With [`EngineConfig::metrics`](crate::EngineConfig) off, workers have no block and read no
//! clock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::fabric::{PeerId, MAX_RAILS};
use crate::{FailReason, Opcode};

/// Peers counted one by one; peers with a higher [`PeerId`] share one overflow row.
pub const MAX_PEER_ROWS: usize = 64;
/// Latency buckets: bucket `i` counts latencies in `[2^i, 2^(i+1))` ns (bucket 0 also holds 0
/// and 1 ns; the last also holds everything above).
pub const LATENCY_BUCKETS: usize = 40;
/// A worker times the requests of one submit call in this many (the first, then every 8th): a
/// clock read per submit and per poll costs more than the rest of the metrics together on an
/// 8-byte request.
pub const LATENCY_SAMPLE_EVERY: u32 = 8;
/// Opcode rows: READ, WRITE, WRITE_WITH_NOTIFY.
const OPS: usize = 3;
const REASONS: usize = FailReason::ALL.len();

/// A counter written by one thread at a time: a relaxed load and store, no atomic
/// read-modify-write (the block's owner is the only writer; readers may see a value a few
/// updates old).
#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    #[inline]
    fn add(&self, v: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(v), Relaxed);
    }

    #[inline]
    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Row of an opcode: READ 0, WRITE 1, WRITE_WITH_NOTIFY 2 (from facts the submit has at hand,
/// without matching the request's opcode again).
#[inline]
pub(crate) fn op_row(read: bool, notify: bool) -> usize {
    (!read) as usize + notify as usize
}

/// Latency bucket of `ns` nanoseconds: `floor(log2(ns))`, clamped.
#[inline]
pub(crate) fn bucket(ns: u64) -> usize {
    let b = 63 - (ns | 1).leading_zeros() as usize;
    b.min(LATENCY_BUCKETS - 1)
}

/// Row of a peer in the per-peer table.
#[inline]
fn peer_row(peer: PeerId) -> usize {
    (peer as usize).min(MAX_PEER_ROWS)
}

/// The counters of one worker (or of the engine's retired and dropped-worker blocks). Written
/// by one thread at a time, read by any.
pub(crate) struct CounterBlock {
    submitted: [Counter; OPS],
    bytes: [Counter; OPS],
    completed: Counter,
    failed: [Counter; OPS],
    /// Requests that ended after they timed out or were cancelled.
    late: Counter,
    rejected: Counter,
    reasons: [Counter; REASONS],
    /// Per peer (last row: peers past the table).
    peer_ops: [Counter; MAX_PEER_ROWS + 1],
    peer_bytes: [Counter; MAX_PEER_ROWS + 1],
    peer_failed: [Counter; MAX_PEER_ROWS + 1],
    rail_wrs: [Counter; MAX_RAILS],
    rail_bytes: [Counter; MAX_RAILS],
    latency: [Counter; LATENCY_BUCKETS],
    latency_sum_ns: Counter,
}

fn zeros<const N: usize>() -> [Counter; N] {
    std::array::from_fn(|_| Counter::default())
}

impl Default for CounterBlock {
    fn default() -> Self {
        CounterBlock {
            submitted: zeros(),
            bytes: zeros(),
            completed: Counter::default(),
            failed: zeros(),
            late: Counter::default(),
            rejected: Counter::default(),
            reasons: zeros(),
            peer_ops: zeros(),
            peer_bytes: zeros(),
            peer_failed: zeros(),
            rail_wrs: zeros(),
            rail_bytes: zeros(),
            latency: zeros(),
            latency_sum_ns: Counter::default(),
        }
    }
}

impl CounterBlock {
    /// A submit call was refused by validation.
    pub(crate) fn rejected(&self) {
        self.rejected.add(1);
    }

    /// A request failed with reason code `error` (rare: counted at once).
    #[cold]
    pub(crate) fn failed(&self, op: usize, error: u32, peer: PeerId) {
        self.failed[op.min(OPS - 1)].add(1);
        self.peer_failed[peer_row(peer)].add(1);
        let code = error as u8;
        if let Some(i) = FailReason::ALL.iter().position(|r| r.code() == code) {
            self.reasons[i].add(1);
        }
    }

    /// Adds every counter of `self` into `into` (which the caller alone writes).
    fn fold_into(&self, into: &CounterBlock) {
        let pairs = [
            (&self.submitted[..], &into.submitted[..]),
            (&self.bytes[..], &into.bytes[..]),
            (&self.failed[..], &into.failed[..]),
            (&self.reasons[..], &into.reasons[..]),
            (&self.peer_ops[..], &into.peer_ops[..]),
            (&self.peer_bytes[..], &into.peer_bytes[..]),
            (&self.peer_failed[..], &into.peer_failed[..]),
            (&self.rail_wrs[..], &into.rail_wrs[..]),
            (&self.rail_bytes[..], &into.rail_bytes[..]),
            (&self.latency[..], &into.latency[..]),
            (
                std::slice::from_ref(&self.completed),
                std::slice::from_ref(&into.completed),
            ),
            (
                std::slice::from_ref(&self.late),
                std::slice::from_ref(&into.late),
            ),
            (
                std::slice::from_ref(&self.rejected),
                std::slice::from_ref(&into.rejected),
            ),
            (
                std::slice::from_ref(&self.latency_sum_ns),
                std::slice::from_ref(&into.latency_sum_ns),
            ),
        ];
        for (from, to) in pairs {
            for (f, t) in from.iter().zip(to) {
                t.add(f.get());
            }
        }
    }
}

/// What one submit call posted, gathered in plain integers and added to the worker's block once
/// at its end. Per-peer counts are taken per run of requests to one peer, as the difference of
/// the totals at its ends.
pub(crate) struct SubmitTally {
    ops: [u64; OPS],
    bytes: [u64; OPS],
    /// The current run's peer and the totals when it started.
    peer: PeerId,
    run_ops: u64,
    run_bytes: u64,
    rail_wrs: [u32; MAX_RAILS],
    rail_bytes: [u64; MAX_RAILS],
}

impl SubmitTally {
    #[inline]
    pub(crate) fn new() -> Self {
        SubmitTally {
            ops: [0; OPS],
            bytes: [0; OPS],
            peer: PeerId::MAX,
            run_ops: 0,
            run_bytes: 0,
            rail_wrs: [0; MAX_RAILS],
            rail_bytes: [0; MAX_RAILS],
        }
    }

    /// A request of `len` bytes to `peer` is posted; `op` is its opcode row.
    #[inline]
    pub(crate) fn request(&mut self, block: &CounterBlock, op: usize, len: u64, peer: PeerId) {
        if peer != self.peer {
            self.end_run(block);
            self.peer = peer;
        }
        self.ops[op] += 1;
        self.bytes[op] += len;
    }

    /// A work request of `len` bytes goes out on `rail`.
    #[inline]
    pub(crate) fn slice(&mut self, rail: u16, len: u64) {
        let r = rail as usize;
        if let Some(w) = self.rail_wrs.get_mut(r) {
            *w += 1;
            self.rail_bytes[r] += len;
        }
    }

    /// Counts the current run for its peer and starts the next at the present totals.
    #[cold]
    fn end_run(&mut self, block: &CounterBlock) {
        let (ops, bytes) = (self.ops.iter().sum::<u64>(), self.bytes.iter().sum::<u64>());
        if ops > self.run_ops {
            let p = peer_row(self.peer);
            block.peer_ops[p].add(ops - self.run_ops);
            block.peer_bytes[p].add(bytes - self.run_bytes);
        }
        (self.run_ops, self.run_bytes) = (ops, bytes);
    }

    /// Adds the gathered counts to `block`; `rails` is the fabric's rail count.
    #[inline]
    pub(crate) fn flush(&mut self, block: &CounterBlock, rails: usize) {
        self.end_run(block);
        for op in 0..OPS {
            if self.ops[op] > 0 {
                block.submitted[op].add(self.ops[op]);
                block.bytes[op].add(self.bytes[op]);
            }
        }
        for r in 0..rails.min(MAX_RAILS) {
            if self.rail_wrs[r] > 0 {
                block.rail_wrs[r].add(self.rail_wrs[r] as u64);
                block.rail_bytes[r].add(self.rail_bytes[r]);
            }
        }
    }
}

/// Requests ended in one poll, gathered in plain integers and added to the block when the poll
/// is tallied: completions, late ones, and the latency of the timed ones as runs of one bucket
/// (the requests of a poll mostly share one). The clock is read once, at the first timed
/// request the poll ends.
pub(crate) struct PollTally<'a> {
    block: &'a CounterBlock,
    registry: &'a Registry,
    /// The poll's time, ns since the engine started; 0 until read.
    now: u64,
    pub completed: u64,
    pub late: u64,
    bucket: usize,
    in_bucket: u64,
    sum_ns: u64,
}

impl<'a> PollTally<'a> {
    #[inline]
    pub(crate) fn new(block: &'a CounterBlock, registry: &'a Registry) -> Self {
        PollTally {
            block,
            registry,
            now: 0,
            completed: 0,
            late: 0,
            bucket: 0,
            in_bucket: 0,
            sum_ns: 0,
        }
    }

    /// A request failed with reason code `error`; `started` is its stamp
    /// (`RequestSlot::started`).
    #[cold]
    pub(crate) fn failed(&self, started: u64, error: u32, peer: PeerId) {
        self.block.failed((started & 3) as usize, error, peer);
    }

    /// A request ended; `started` is its stamp, timed if above 3.
    #[inline]
    pub(crate) fn ended(&mut self, started: u64) {
        if started >= 4 {
            self.timed(started);
        }
    }

    fn timed(&mut self, started: u64) {
        if self.now == 0 {
            self.now = self.registry.now();
        }
        let ns = self.now.saturating_sub(started >> 2);
        let b = bucket(ns);
        if b != self.bucket {
            self.flush_bucket();
            self.bucket = b;
        }
        self.in_bucket += 1;
        self.sum_ns += ns;
    }

    #[inline]
    fn flush_bucket(&mut self) {
        if self.in_bucket > 0 {
            self.block.latency[self.bucket].add(self.in_bucket);
        }
        self.in_bucket = 0;
    }

    /// Adds the gathered counts to the block.
    #[inline]
    pub(crate) fn flush(&mut self) {
        self.flush_bucket();
        if self.completed > 0 {
            self.block.completed.add(self.completed);
            self.completed = 0;
        }
        if self.late > 0 {
            self.block.late.add(self.late);
            self.late = 0;
        }
        if self.sum_ns > 0 {
            self.block.latency_sum_ns.add(self.sum_ns);
            self.sum_ns = 0;
        }
    }
}

/// The engine's side: the live workers' blocks, what dropped workers counted, and the control
/// path's registration figures.
pub(crate) struct Registry {
    enabled: bool,
    epoch: Instant,
    live: Mutex<Vec<Arc<CounterBlock>>>,
    /// Folded counts of dropped workers; written under the `live` lock.
    retired: CounterBlock,
    /// Completions of dropped workers' endpoints; written under the engine's orphans lock.
    pub orphans: CounterBlock,
    registrations: AtomicU64,
    registration_ns: AtomicU64,
    registered_bytes: AtomicU64,
    unregistrations: AtomicU64,
}

impl Registry {
    pub(crate) fn new(enabled: bool) -> Self {
        Registry {
            enabled,
            epoch: Instant::now(),
            live: Mutex::new(Vec::new()),
            retired: CounterBlock::default(),
            orphans: CounterBlock::default(),
            registrations: AtomicU64::new(0),
            registration_ns: AtomicU64::new(0),
            registered_bytes: AtomicU64::new(0),
            unregistrations: AtomicU64::new(0),
        }
    }

    /// Whether counting is on.
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Nanoseconds since the engine started: the one clock read of a submit or poll.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A block for a new worker (none when metrics are off).
    pub(crate) fn worker_block(&self) -> Option<Arc<CounterBlock>> {
        if !self.enabled {
            return None;
        }
        let block = Arc::new(CounterBlock::default());
        self.lock().push(block.clone());
        Some(block)
    }

    /// Folds a dropped worker's block into the retired counts.
    pub(crate) fn retire(&self, block: &Arc<CounterBlock>) {
        let mut live = self.lock();
        block.fold_into(&self.retired);
        live.retain(|b| !Arc::ptr_eq(b, block));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<CounterBlock>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A registration of `len` bytes took `took`.
    pub(crate) fn registered(&self, took: Duration, len: u64) {
        self.registrations.fetch_add(1, Relaxed);
        self.registered_bytes.fetch_add(len, Relaxed);
        self.registration_ns
            .fetch_add(took.as_nanos() as u64, Relaxed);
    }

    /// A segment was unregistered.
    pub(crate) fn unregistered(&self) {
        self.unregistrations.fetch_add(1, Relaxed);
    }

    /// Sums every block.
    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let sum = CounterBlock::default();
        let workers = {
            let live = self.lock();
            for b in live.iter() {
                b.fold_into(&sum);
            }
            self.retired.fold_into(&sum);
            live.len()
        };
        self.orphans.fold_into(&sum);
        MetricsSnapshot::from_sum(self, &sum, workers)
    }
}

/// Counts of one opcode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpMetrics {
    /// Requests posted.
    pub submitted: u64,
    /// Bytes of the requests posted.
    pub bytes: u64,
    /// Requests failed.
    pub failed: u64,
}

/// Counts of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerMetrics {
    /// The fabric's peer id; `None` for the row shared by peers past [`MAX_PEER_ROWS`].
    pub peer: Option<PeerId>,
    /// Requests posted to it.
    pub submitted: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Requests to it that failed.
    pub failed: u64,
}

/// Counts of one rail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RailMetrics {
    /// Rail index.
    pub rail: u16,
    /// Work requests (slices) posted on it, notifications not included.
    pub work_requests: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Submit-to-complete latency of the timed requests (those of one submit call in
/// [`LATENCY_SAMPLE_EVERY`]), in log2 buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// `buckets[i]` counts latencies in `[2^i, 2^(i+1))` ns (see [`LATENCY_BUCKETS`]).
    pub buckets: Vec<u64>,
    /// Requests measured.
    pub count: u64,
    /// Sum of their latencies in ns.
    pub sum_ns: u64,
}

impl LatencyHistogram {
    /// Mean latency, if any request was measured.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.sum_ns / self.count))
    }

    /// Upper bound of the bucket holding quantile `q` (0..=1), if any request was measured: the
    /// true quantile is at most this and more than half of it.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_nanos(1u64 << (i + 1).min(63)));
            }
        }
        None
    }
}

/// What an engine has done, summed over its workers when read
/// ([`Engine::metrics`](crate::Engine::metrics)). Counters only grow; take two snapshots and
/// subtract for a rate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Whether the engine counts at all ([`EngineConfig::metrics`](crate::EngineConfig)); when
    /// off, every request counter stays 0.
    pub enabled: bool,
    /// Live workers.
    pub workers: usize,
    /// READ requests.
    pub read: OpMetrics,
    /// WRITE requests.
    pub write: OpMetrics,
    /// WRITE_WITH_NOTIFY requests.
    pub write_with_notify: OpMetrics,
    /// Requests completed, every opcode.
    pub completed: u64,
    /// Requests posted and not yet ended (by completion, failure, or a late completion after a
    /// timeout or cancel).
    pub in_flight: u64,
    /// Requests whose work ended after they had timed out or been cancelled.
    pub late: u64,
    /// Submit calls refused by validation (nothing posted).
    pub rejected_submits: u64,
    /// Work requests posted again after a transient failure ([`crate::retry`]; counted
    /// whether or not metrics are on).
    pub retries: u64,
    /// Failed requests by reason (reasons with a nonzero count).
    pub failures: Vec<(FailReason, u64)>,
    /// Per peer (peers with traffic).
    pub peers: Vec<PeerMetrics>,
    /// Per rail (rails with traffic).
    pub rails: Vec<RailMetrics>,
    /// Submit-to-complete latency of ended requests.
    pub latency: LatencyHistogram,
    /// Segments registered.
    pub registrations: u64,
    /// Time spent in the fabric's memory registration, all registrations together.
    pub registration_time: Duration,
    /// Bytes registered, all registrations together (divided by `registration_time`: the
    /// registration rate).
    pub registered_bytes: u64,
    /// Segments unregistered.
    pub unregistrations: u64,
}

impl MetricsSnapshot {
    fn from_sum(reg: &Registry, s: &CounterBlock, workers: usize) -> Self {
        let op = |i: usize| OpMetrics {
            submitted: s.submitted[i].get(),
            bytes: s.bytes[i].get(),
            failed: s.failed[i].get(),
        };
        let (read, write, write_with_notify) = (op(0), op(1), op(2));
        let failed = read.failed + write.failed + write_with_notify.failed;
        let ended = s.completed.get() + failed + s.late.get();
        let posted = read.submitted + write.submitted + write_with_notify.submitted;
        MetricsSnapshot {
            enabled: reg.enabled,
            workers,
            read,
            write,
            write_with_notify,
            completed: s.completed.get(),
            in_flight: posted.saturating_sub(ended),
            late: s.late.get(),
            rejected_submits: s.rejected.get(),
            retries: 0,
            failures: FailReason::ALL
                .iter()
                .zip(&s.reasons)
                .filter(|(_, c)| c.get() > 0)
                .map(|(&r, c)| (r, c.get()))
                .collect(),
            peers: (0..=MAX_PEER_ROWS)
                .filter(|&p| s.peer_ops[p].get() > 0)
                .map(|p| PeerMetrics {
                    peer: (p < MAX_PEER_ROWS).then_some(p as PeerId),
                    submitted: s.peer_ops[p].get(),
                    bytes: s.peer_bytes[p].get(),
                    failed: s.peer_failed[p].get(),
                })
                .collect(),
            rails: (0..MAX_RAILS)
                .filter(|&r| s.rail_wrs[r].get() > 0)
                .map(|r| RailMetrics {
                    rail: r as u16,
                    work_requests: s.rail_wrs[r].get(),
                    bytes: s.rail_bytes[r].get(),
                })
                .collect(),
            latency: LatencyHistogram {
                buckets: s.latency.iter().map(Counter::get).collect(),
                count: s.latency.iter().map(Counter::get).sum(),
                sum_ns: s.latency_sum_ns.get(),
            },
            registrations: reg.registrations.load(Relaxed),
            registration_time: Duration::from_nanos(reg.registration_ns.load(Relaxed)),
            registered_bytes: reg.registered_bytes.load(Relaxed),
            unregistrations: reg.unregistrations.load(Relaxed),
        }
    }

    /// The counts of one opcode.
    pub fn op(&self, op: Opcode) -> &OpMetrics {
        match op {
            Opcode::Read => &self.read,
            Opcode::Write => &self.write,
            Opcode::WriteWithNotify(_) => &self.write_with_notify,
        }
    }

    /// Requests posted, every opcode.
    pub fn submitted(&self) -> u64 {
        self.read.submitted + self.write.submitted + self.write_with_notify.submitted
    }

    /// Bytes posted, every opcode.
    pub fn bytes(&self) -> u64 {
        self.read.bytes + self.write.bytes + self.write_with_notify.bytes
    }

    /// Requests failed, every opcode.
    pub fn failed(&self) -> u64 {
        self.read.failed + self.write.failed + self.write_with_notify.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_floor_log2_clamped() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(3), 1);
        assert_eq!(bucket(1024), 10);
        assert_eq!(bucket(2047), 10);
        assert_eq!(bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn snapshot_sums_live_retired_and_orphan_blocks() {
        let reg = Registry::new(true);
        let a = reg.worker_block().unwrap();
        let b = reg.worker_block().unwrap();
        let mut t = SubmitTally::new();
        t.request(&a, 1, 100, 2);
        t.slice(0, 100);
        t.flush(&a, 1);
        let mut t = SubmitTally::new();
        t.request(&b, 1, 50, 2);
        t.request(&b, 0, 8, 999);
        t.flush(&b, 1);
        let mut p = PollTally::new(&a, &reg);
        p.completed += 1;
        p.ended(1 << 2 | 1);
        p.flush();
        let reason = FailReason::RemoteBadAddress.code() as u32;
        let p = PollTally::new(&b, &reg);
        p.failed(0, reason, 999);
        reg.retire(&b);
        let mut p = PollTally::new(&reg.orphans, &reg);
        p.late += 1;
        p.ended(2 << 2 | 1);
        p.ended(1);
        p.flush();
        let s = reg.snapshot();
        assert_eq!(s.workers, 1);
        assert_eq!(s.write.submitted, 2);
        assert_eq!(s.write.bytes, 150);
        assert_eq!(s.completed, 1);
        assert_eq!(s.read.failed, 1);
        assert_eq!(s.late, 1);
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.failures, vec![(FailReason::RemoteBadAddress, 1)]);
        assert_eq!(s.peers.len(), 2);
        assert_eq!(s.peers[0].peer, Some(2));
        assert_eq!(s.peers[0].bytes, 150);
        assert_eq!(s.peers[1].peer, None, "peer 999 is in the overflow row");
        assert_eq!(s.peers[1].failed, 1);
        assert_eq!(s.rails[0].work_requests, 1);
        // Two timed requests (stamps 1 and 2 ns); the untimed one (stamp below 4) is not.
        assert_eq!(s.latency.count, 2);
        let mean = s.latency.mean().unwrap();
        assert!(mean > Duration::ZERO);
        assert!(s.latency.quantile(1.0).unwrap() >= mean);
    }

    #[test]
    fn disabled_registry_hands_out_no_blocks() {
        let reg = Registry::new(false);
        assert!(reg.worker_block().is_none());
        assert!(!reg.snapshot().enabled);
    }
}

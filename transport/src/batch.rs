//! Batches: pre-allocated slots of per-request state, updated with atomics only.
//!
//! A work request's token names its batch slot, slot generation, rail and request index, so a
//! completion goes straight to its counters: no map, no lock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

use crate::store::RequestStore;
use crate::{BatchId, FailReason, TransportError};

/// The state of one request of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestStatus {
    /// Reserved, not yet submitted.
    Waiting,
    /// Submitted, work requests in flight.
    Pending,
    /// All bytes transferred (and the notification counted, for write-with-notify).
    Completed,
    /// A work request failed; the first failure's reason.
    Failed(FailReason),
    /// The wait deadline passed first; late completions are absorbed.
    TimedOut,
    /// Cancelled before it finished; late completions are absorbed.
    Cancelled,
}

impl RequestStatus {
    /// Whether the request has reached a final state.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RequestStatus::Waiting | RequestStatus::Pending)
    }
}

/// Counters of a batch, read without locks from any thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchStatus {
    /// Capacity given at allocation.
    pub capacity: u32,
    /// Requests submitted so far.
    pub submitted: u32,
    /// Submitted and not yet terminal.
    pub pending: u32,
    /// Completed.
    pub completed: u32,
    /// Failed.
    pub failed: u32,
    /// Timed out.
    pub timed_out: u32,
    /// Cancelled.
    pub cancelled: u32,
    /// Work requests still owned by the fabric, plus one per submit call in progress (the
    /// batch can be freed or recycled when 0).
    pub in_flight: u32,
}

impl BatchStatus {
    /// Every submitted request is terminal.
    pub fn is_done(&self) -> bool {
        self.pending == 0
    }

    /// Every submitted request completed successfully.
    pub fn all_completed(&self) -> bool {
        self.completed == self.submitted
    }
}

const ST_WAITING: u32 = 0;
pub(crate) const ST_PENDING: u32 = 1;
const ST_COMPLETED: u32 = 2;
const ST_FAILED: u32 = 3;
const ST_TIMED_OUT: u32 = 4;
const ST_CANCELLED: u32 = 5;

/// Per-request state, all atomics.
#[derive(Debug, Default)]
pub(crate) struct RequestSlot {
    /// `ST_*` in the low byte, failure reason code in the second.
    pub status: AtomicU32,
    /// Work requests (plus the notification, if any) not yet completed.
    pub remaining: AtomicU32,
    /// Reason code of the first failed work request, 0 if none.
    pub error: AtomicU32,
    /// Local segment slot pinned for the request.
    pub segment: AtomicU32,
    /// Notification tag + 1, or 0; bit 31 set when the tag travels with the request's one
    /// WRITE (see `FUSED` in the worker).
    pub notify: AtomicU32,
    /// Peer and remote rail for the notification.
    pub peer: AtomicU32,
    pub remote_rail: AtomicU32,
    /// Remote segment slot and generation the request targets (for the peer-gone sweep and
    /// retries).
    pub remote: AtomicU32,
    pub remote_generation: AtomicU32,
    /// What a retry needs to rebuild a slice (written at submit when retries are on): the
    /// retries taken so far, with bit 31 set for a WRITE; both start addresses and the length.
    pub retries: AtomicU32,
    pub local_addr: AtomicU64,
    pub remote_addr: AtomicU64,
    pub len: AtomicU64,
    /// Metrics only: submit time (ns since the engine started) shifted left by 2, opcode row
    /// in the low 2 bits.
    pub started: AtomicU64,
}

impl RequestSlot {
    pub(crate) fn status(&self) -> RequestStatus {
        let s = self.status.load(Acquire);
        match s & 0xff {
            ST_WAITING => RequestStatus::Waiting,
            ST_PENDING => RequestStatus::Pending,
            ST_COMPLETED => RequestStatus::Completed,
            ST_FAILED => RequestStatus::Failed(
                FailReason::from_code((s >> 8) as u8).unwrap_or(FailReason::Injected),
            ),
            ST_TIMED_OUT => RequestStatus::TimedOut,
            _ => RequestStatus::Cancelled,
        }
    }

    /// Whether the request is submitted and not yet terminal.
    #[inline]
    pub(crate) fn is_pending(&self) -> bool {
        self.status.load(Acquire) & 0xff == ST_PENDING
    }

    /// Moves Pending to a final state; false if it already left Pending.
    #[inline]
    fn leave_pending(&self, to: u32) -> bool {
        self.status
            .compare_exchange(ST_PENDING, to, AcqRel, Relaxed)
            .is_ok()
    }
}

const SLOT_FREE: u64 = 0;
const SLOT_USED: u64 = 1;
/// Free or recycle is checking whether work requests are in flight (it may go back to USED).
const SLOT_CLOSING: u64 = 2;
/// Free, recycle or allocate owns the slot: its request storage may change. Readers stay out.
const SLOT_FREEING: u64 = 3;

/// How long free, recycle and allocate wait for status readers to leave a slot (they hold it
/// only for a read, so this is never reached in practice; then the call reports busy).
const READERS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// One batch slot: counters, and request storage sized to what is used (see `store.rs`).
///
/// Request storage is read under a *read pin* ([`BatchSlot::pin`]): status reads, cancel and
/// timeouts, and completions (one pin per run of completions of the batch); submits read it
/// inside the batch ([`Entered`]), which holds it as a pin does. Its
/// storage changes only in the FREEING state, entered with no work request in flight and
/// held until the pins are gone.
#[derive(Debug, Default)]
pub(crate) struct BatchSlot {
    state: AtomicU64,
    pub capacity: AtomicU32,
    pub submitted: AtomicU32,
    /// Work requests owned by the fabric, plus one per submit call in progress.
    pub in_flight: AtomicU32,
    pub open: AtomicU32,
    pub completed: AtomicU32,
    pub failed: AtomicU32,
    pub timed_out: AtomicU32,
    pub cancelled: AtomicU32,
    /// The engine's peer-gone epoch this batch was last swept at (see `peer_gone.rs`).
    pub swept: AtomicU64,
    /// Read pins held.
    readers: AtomicU32,
    store: RequestStore,
}

/// Proof that a slot's request storage stays as it is; see [`BatchSlot::pin`].
pub(crate) struct ReadPin<'a> {
    slot: &'a BatchSlot,
}

impl ReadPin<'_> {
    /// Request `i`, if it has storage (every reserved request has).
    #[inline]
    pub(crate) fn request(&self, i: u32) -> Option<&RequestSlot> {
        self.slot.store.get(i)
    }
}

/// A submit call inside batch `id` ([`BatchSlot::enter`]): counted in flight, so free and
/// recycle, which check the count after leaving USED (as `enter` checks the state after
/// counting, both sequentially consistent), cannot move the slot to FREEING. The request storage
/// then stays as it is without a read pin: the guard is one.
pub(crate) struct Entered<'a> {
    slot: &'a BatchSlot,
}

impl Entered<'_> {
    /// Request `i`, if it has storage (every reserved request has).
    #[inline]
    pub(crate) fn request(&self, i: u32) -> Option<&RequestSlot> {
        self.slot.store.get(i)
    }

    /// Allocates storage for requests `first..first + n` where missing.
    pub(crate) fn ensure(&self, first: u32, n: u32) {
        self.slot.store.ensure(first, n)
    }
}

impl Drop for Entered<'_> {
    /// Leaves the batch, on every exit of the submit, unwinding included, so it can always be
    /// freed.
    #[inline]
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Release);
    }
}

impl Drop for ReadPin<'_> {
    #[inline]
    fn drop(&mut self) {
        self.slot.readers.fetch_sub(1, Release);
    }
}

#[inline]
fn slot_state(generation: u32, st: u64) -> u64 {
    ((generation as u64) << 2) | st
}

impl BatchSlot {
    pub(crate) fn generation(&self) -> u32 {
        (self.state.load(Acquire) >> 2) as u32
    }

    pub(crate) fn is(&self, id: BatchId) -> bool {
        self.state.load(SeqCst) == slot_state(id.generation, SLOT_USED)
    }

    /// Pins the request storage if the slot is in use (or being checked for closing) by a
    /// generation whose low `mask` bits equal `generation`.
    #[inline]
    fn pin_where(&self, generation: u32, mask: u32) -> Option<ReadPin<'_>> {
        self.readers.fetch_add(1, SeqCst);
        let pin = ReadPin { slot: self };
        let s = self.state.load(SeqCst);
        let live = matches!(s & 3, SLOT_USED | SLOT_CLOSING);
        (live && (s >> 2) as u32 & mask == generation & mask).then_some(pin)
    }

    /// Pins the request storage of batch `id` (see [`ReadPin`]).
    #[inline]
    pub(crate) fn pin(&self, id: BatchId) -> Option<ReadPin<'_>> {
        self.pin_where(id.generation, u32::MAX)
    }

    /// Pins the request storage for a completion whose token carries the low 12 bits of the
    /// generation.
    #[inline]
    pub(crate) fn pin_token(&self, gen12: u32) -> Option<ReadPin<'_>> {
        self.pin_where(gen12, 0xfff)
    }

    /// Waits (bounded) until no read pin is held; the caller has moved the slot to FREEING.
    /// The clock is read only when a pin is held (it almost never is): a recycle per operation
    /// then reads none.
    fn await_readers(&self) -> bool {
        let mut start = None;
        while self.readers.load(SeqCst) != 0 {
            if start.get_or_insert_with(std::time::Instant::now).elapsed() >= READERS_WAIT {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    pub(crate) fn status(&self) -> BatchStatus {
        BatchStatus {
            capacity: self.capacity.load(Acquire),
            submitted: self.submitted.load(Acquire),
            pending: self.open.load(Acquire),
            completed: self.completed.load(Acquire),
            failed: self.failed.load(Acquire),
            timed_out: self.timed_out.load(Acquire),
            cancelled: self.cancelled.load(Acquire),
            in_flight: self.in_flight.load(Acquire),
        }
    }

    /// Enters a submit call: holds the batch against free/recycle until the guard drops.
    pub(crate) fn enter(&self, id: BatchId) -> Result<Entered<'_>, TransportError> {
        self.in_flight.fetch_add(1, SeqCst);
        if !self.is(id) {
            self.in_flight.fetch_sub(1, SeqCst);
            return Err(TransportError::StaleBatch(id));
        }
        Ok(Entered { slot: self })
    }

    /// Counts `n` more work requests in flight, unless that would pass [`MAX_IN_FLIGHT`].
    #[inline]
    pub(crate) fn add_in_flight(&self, id: BatchId, n: u64) -> Result<(), TransportError> {
        let add = |cur: u32| {
            u32::try_from(n)
                .ok()
                .and_then(|n| cur.checked_add(n))
                .filter(|&v| v <= MAX_IN_FLIGHT)
        };
        self.in_flight
            .fetch_update(AcqRel, Acquire, add)
            .map(drop)
            .map_err(|in_flight| TransportError::TooManyInFlight {
                batch: id,
                in_flight,
                adding: n,
                max: MAX_IN_FLIGHT,
            })
    }

    /// Reserves `n` request indices; returns the first. Callers validate their requests first:
    /// a reservation is never given back (another submit may have reserved after it), so every
    /// reserved index must be started.
    pub(crate) fn reserve(&self, id: BatchId, n: usize) -> Result<u32, TransportError> {
        let cap = self.capacity.load(Acquire);
        let mut cur = self.submitted.load(Acquire);
        loop {
            if n as u64 + cur as u64 > cap as u64 {
                return Err(TransportError::BatchFull {
                    batch: id,
                    submitted: cur as usize,
                    adding: n,
                    capacity: cap as usize,
                });
            }
            match self
                .submitted
                .compare_exchange_weak(cur, cur + n as u32, AcqRel, Acquire)
            {
                Ok(_) => return Ok(cur),
                Err(v) => cur = v,
            }
        }
    }

    /// Ends a request when its last work request completed: `Some(true)` completed,
    /// `Some(false)` failed, `None` if it had already left Pending (timed out, cancelled). The
    /// caller updates the batch counters (see `Tally`), so a poll of many completions touches
    /// them once.
    #[inline]
    pub(crate) fn finish(&self, req: &RequestSlot) -> Option<bool> {
        let err = req.error.load(Acquire);
        if err == 0 {
            req.leave_pending(ST_COMPLETED).then_some(true)
        } else {
            req.leave_pending(ST_FAILED | (err << 8)).then_some(false)
        }
    }

    /// Fails `req` with `reason` if it is still Pending (its late completions are then
    /// absorbed, as a cancelled request's are); returns whether it moved.
    pub(crate) fn fail_pending(&self, req: &RequestSlot, reason: FailReason) -> bool {
        if !req.leave_pending(ST_FAILED | ((reason.code() as u32) << 8)) {
            return false;
        }
        self.failed.fetch_add(1, Relaxed);
        self.open.fetch_sub(1, Release);
        true
    }

    /// Moves every Pending request of batch `id` to TimedOut (or Cancelled); returns how many
    /// moved.
    pub(crate) fn abandon(&self, id: BatchId, cancelled: bool) -> u32 {
        let Some(pin) = self.pin(id) else {
            return 0;
        };
        let n = self.submitted.load(Acquire);
        let to = if cancelled {
            ST_CANCELLED
        } else {
            ST_TIMED_OUT
        };
        let mut moved = 0;
        for r in (0..n).filter_map(|i| pin.request(i)) {
            if r.leave_pending(to) {
                moved += 1;
                self.open.fetch_sub(1, Release);
            }
        }
        if cancelled {
            self.cancelled.fetch_add(moved, Relaxed);
        } else {
            self.timed_out.fetch_add(moved, Relaxed);
        }
        moved
    }

    /// Marks request `i` pending with `remaining` work requests.
    #[inline]
    pub(crate) fn start(&self, req: &RequestSlot, remaining: u32) {
        req.error.store(0, Relaxed);
        req.remaining.store(remaining, Relaxed);
        req.status.store(ST_PENDING, Release);
    }
}

/// All batch slots of an engine.
#[derive(Debug)]
pub(crate) struct BatchTable {
    /// Id of the owning engine, carried by every handle.
    engine: u32,
    pub slots: Box<[BatchSlot]>,
}

impl BatchTable {
    pub(crate) fn new(engine: u32, max: usize) -> Self {
        BatchTable {
            engine,
            slots: (0..max).map(|_| BatchSlot::default()).collect(),
        }
    }

    /// Refuses a handle of another engine.
    #[inline]
    pub(crate) fn check(&self, id: BatchId) -> Result<(), TransportError> {
        if id.engine == self.engine {
            Ok(())
        } else {
            Err(TransportError::ForeignHandle {
                handle: crate::Handle::Batch(id),
                engine: self.engine,
            })
        }
    }

    pub(crate) fn get(&self, id: BatchId) -> Result<&BatchSlot, TransportError> {
        self.check(id)?;
        let slot = self
            .slots
            .get(id.index as usize)
            .ok_or_else(|| TransportError::StaleBatch(id))?;
        if slot.is(id) {
            Ok(slot)
        } else {
            Err(TransportError::StaleBatch(id))
        }
    }

    /// Allocates a batch. Prefers a free slot whose storage already holds `capacity` requests
    /// (then nothing is allocated); else any free slot, whose table is resized.
    pub(crate) fn allocate(&self, capacity: u32) -> Result<BatchId, TransportError> {
        if capacity == 0 || capacity > MAX_BATCH_CAPACITY {
            return Err(TransportError::Config(format!(
                "batch capacity {capacity} not in 1..={MAX_BATCH_CAPACITY}"
            )));
        }
        for pass in 0..2 {
            for (i, slot) in self.slots.iter().enumerate() {
                if pass == 0 && slot.store.ready() < capacity {
                    continue;
                }
                if let Some(generation) = Self::take(slot, capacity) {
                    return Ok(BatchId {
                        engine: self.engine,
                        index: i as u32,
                        generation,
                    });
                }
            }
        }
        Err(TransportError::Exhausted {
            what: "batch slots",
            max: self.slots.len(),
        })
    }

    /// Takes `slot` if it is free and sets it up for `capacity`; returns its generation.
    fn take(slot: &BatchSlot, capacity: u32) -> Option<u32> {
        let s = slot.state.load(SeqCst);
        if s & 3 != SLOT_FREE {
            return None;
        }
        let generation = (s >> 2) as u32;
        let freeing = slot_state(generation, SLOT_FREEING);
        slot.state
            .compare_exchange(s, freeing, SeqCst, SeqCst)
            .ok()?;
        if !slot.await_readers() {
            slot.state.store(s, SeqCst);
            return None;
        }
        // SAFETY: FREEING with no read pin: nobody else touches the storage (pins fail in this
        // state, and a free slot has no work request in flight).
        unsafe { slot.store.fit(capacity) };
        slot.capacity.store(capacity, Relaxed);
        slot.state.store(slot_state(generation, SLOT_USED), SeqCst);
        Some(generation)
    }

    /// Frees (`reuse == false`) or recycles the batch. Refused while work requests are in flight.
    pub(crate) fn release(&self, id: BatchId, reuse: bool) -> Result<BatchId, TransportError> {
        self.check(id)?;
        let slot = self
            .slots
            .get(id.index as usize)
            .ok_or_else(|| TransportError::StaleBatch(id))?;
        let used = slot_state(id.generation, SLOT_USED);
        slot.state
            .compare_exchange(
                used,
                slot_state(id.generation, SLOT_CLOSING),
                SeqCst,
                SeqCst,
            )
            .map_err(|_| TransportError::StaleBatch(id))?;
        let in_flight = slot.in_flight.load(SeqCst);
        if in_flight != 0 {
            slot.state.store(used, SeqCst);
            return Err(TransportError::BatchBusy {
                batch: id,
                in_flight,
            });
        }
        slot.state
            .store(slot_state(id.generation, SLOT_FREEING), SeqCst);
        if !slot.await_readers() {
            slot.state.store(used, SeqCst);
            return Err(TransportError::BatchBusy {
                batch: id,
                in_flight: 0,
            });
        }
        // Token generations are 12 bits wide; skip none, the full generation is checked too.
        let generation = id.generation.wrapping_add(1);
        let cap = slot.capacity.load(Acquire);
        slot.reset(cap);
        if reuse {
            slot.state.store(slot_state(generation, SLOT_USED), SeqCst);
        } else {
            // SAFETY: FREEING with no read pin and no work request in flight: nothing
            // references the storage.
            unsafe { slot.store.trim() };
            slot.state.store(slot_state(generation, SLOT_FREE), SeqCst);
        }
        Ok(BatchId {
            engine: self.engine,
            index: id.index,
            generation,
        })
    }
}

impl BatchSlot {
    /// Empties the slot's counters and requests. Called in the FREEING state only.
    fn reset(&self, capacity: u32) {
        let used = self.submitted.load(Acquire);
        for r in (0..used).filter_map(|i| self.store.get(i)) {
            r.status.store(ST_WAITING, Relaxed);
        }
        self.capacity.store(capacity, Relaxed);
        self.submitted.store(0, Relaxed);
        self.open.store(0, Relaxed);
        self.completed.store(0, Relaxed);
        self.failed.store(0, Relaxed);
        self.timed_out.store(0, Relaxed);
        // `in_flight` is left alone: it is 0 (checked before FREEING) but for the transient
        // +1 of a stale `enter`, which takes it back itself; storing 0 could make it wrap.
        self.cancelled.store(0, Release);
    }
}

/// Most work requests a batch counts in flight at once (half the counter's range, so a count
/// can never wrap).
pub(crate) const MAX_IN_FLIGHT: u32 = u32::MAX / 2;

/// Largest batch capacity (request indices are 32-bit in tokens; kept far lower so a slot's
/// storage stays reasonable).
pub const MAX_BATCH_CAPACITY: u32 = 1 << 20;

/// Token layout: batch index (16 bits) | generation (12) | rail (4) | request index (32).
/// Work request tokens: batch slot (16 bits), generation (low 12 bits), rail (4 bits), the
/// slice's index in its request (12 bits, kept for retries: see [`crate::retry`]) and the
/// request's index in its batch (20 bits, [`MAX_BATCH_CAPACITY`]).
pub(crate) mod token {
    const REQUEST_BITS: u32 = 20;
    const REQUEST_MASK: u64 = (1 << REQUEST_BITS) - 1;

    #[inline]
    pub fn encode(batch: u32, generation: u32, rail: u16, request: u32) -> u64 {
        ((batch as u64 & 0xffff) << 48)
            | ((generation as u64 & 0xfff) << 36)
            | ((rail as u64 & 0xf) << 32)
            | (request as u64 & REQUEST_MASK)
    }

    /// (batch, generation, rail, request).
    #[inline]
    pub fn decode(t: u64) -> (u32, u32, u16, u32) {
        (
            (t >> 48) as u32,
            ((t >> 36) & 0xfff) as u32,
            ((t >> 32) & 0xf) as u16,
            (t & REQUEST_MASK) as u32,
        )
    }

    /// Same token on another rail.
    #[inline]
    pub fn with_rail(t: u64, rail: u16) -> u64 {
        (t & !(0xf << 32)) | ((rail as u64 & 0xf) << 32)
    }

    /// The token with the slice index `slice` (its low 12 bits).
    #[inline]
    pub fn with_slice(t: u64, slice: u64) -> u64 {
        (t & !(0xfff << REQUEST_BITS)) | ((slice & 0xfff) << REQUEST_BITS)
    }

    /// The slice index carried by the token.
    #[inline]
    pub fn slice(t: u64) -> u64 {
        (t >> REQUEST_BITS) & 0xfff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_slots_stay_small() {
        // 28 bytes of state, 36 kept for retries, 8 for metrics: 1024 requests in 72 KiB.
        assert_eq!(std::mem::size_of::<RequestSlot>(), 72);
    }

    #[test]
    fn token_round_trip() {
        let last = MAX_BATCH_CAPACITY - 1;
        let t = token::encode(65535, 4095 + 4096, 15, last);
        assert_eq!(token::decode(t), (65535, 4095, 15, last));
        assert_eq!(token::decode(token::with_rail(t, 3)).2, 3);
        let s = token::with_slice(t, 4095);
        assert_eq!(
            (token::decode(s), token::slice(s)),
            (token::decode(t), 4095)
        );
        assert_eq!(token::slice(token::with_rail(s, 1)), 4095);
    }

    #[test]
    fn allocate_free_reuse_and_stale() {
        let t = BatchTable::new(1, 2);
        let a = t.allocate(4).unwrap();
        let b = t.allocate(8).unwrap();
        assert!(matches!(
            t.allocate(1),
            Err(TransportError::Exhausted { .. })
        ));
        let a2 = t.release(a, true).unwrap();
        assert_ne!(a, a2);
        assert!(matches!(t.get(a), Err(TransportError::StaleBatch(_))));
        assert!(t.get(a2).is_ok());
        let slot = t.get(b).unwrap();
        assert_eq!(slot.reserve(b, 8).unwrap(), 0);
        assert!(matches!(
            slot.reserve(b, 1),
            Err(TransportError::BatchFull { .. })
        ));
        slot.in_flight.store(2, SeqCst);
        assert_eq!(
            t.release(b, false),
            Err(TransportError::BatchBusy {
                batch: b,
                in_flight: 2
            })
        );
        slot.in_flight.store(0, SeqCst);
        t.release(b, false).unwrap();
        assert!(t.allocate(0).is_err());
    }
}

//! Target-side counters for write-with-notification.
//!
//! Delivery is unordered, so a target never waits for "the last message": it counts arrivals
//! per tag and waits until the count reaches what it expects.
//!
//! A waiter ([`Notifications::wait_for`]) spins briefly, then sleeps until an arrival wakes it:
//! the fabric's target thread records each one ([`Notifications::record`]) and wakes the
//! sleepers, taking a lock only when some thread sleeps. A blocked wait costs no CPU, and the
//! whole path from the device to the application can sleep: the target thread blocks on its
//! completion channel, the waiter on the counters.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::TransportError;

/// Passes a waiter spins (then [`YIELDS`] it yields) before it sleeps: a notification a round
/// trip away in a busy exchange comes within them, and costs no wake-up.
const SPINS: u32 = 64;
/// Passes a waiter yields its core after spinning, before it sleeps.
const YIELDS: u32 = 192;

/// Per-tag arrival counters of one engine. Tags are dense indices `0..tags()`.
#[derive(Debug)]
pub struct Notifications {
    counts: Box<[AtomicU64]>,
    /// Threads asleep in [`Notifications::wait_for`] (or about to be); [`record`](Self::record)
    /// takes the lock and wakes them only when there are some.
    sleepers: AtomicU32,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Notifications {
    /// A table of `tags` counters, all zero.
    pub fn new(tags: u32) -> Self {
        Notifications {
            counts: (0..tags).map(|_| AtomicU64::new(0)).collect(),
            sleepers: AtomicU32::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Number of tags.
    pub fn tags(&self) -> u32 {
        self.counts.len() as u32
    }

    pub(crate) fn check(&self, tag: u32) -> Result<(), TransportError> {
        if (tag as usize) < self.counts.len() {
            Ok(())
        } else {
            Err(TransportError::BadTag {
                tag,
                tags: self.tags(),
            })
        }
    }

    /// Records one arrival of `tag` and wakes the threads waiting in
    /// [`wait_for`](Self::wait_for); returns `false` (and records nothing) for a tag outside the
    /// table. Called by fabrics on the target side.
    pub fn record(&self, tag: u32) -> bool {
        match self.counts.get(tag as usize) {
            Some(c) => {
                // SeqCst with the sleepers' count (below and in `wait_for`): a waiter either sees
                // this arrival or is seen asleep, never neither.
                c.fetch_add(1, Ordering::SeqCst);
                if self.sleepers.load(Ordering::SeqCst) != 0 {
                    self.wake_sleepers();
                }
                true
            }
            None => false,
        }
    }

    /// Wakes every sleeping waiter; they check their own count.
    #[cold]
    fn wake_sleepers(&self) {
        // Taking the lock waits out a waiter between its check of the count and its sleep, so
        // the wake-up cannot fall between them.
        drop(self.lock.lock().unwrap_or_else(PoisonError::into_inner));
        self.wake.notify_all();
    }

    /// Arrivals of `tag` so far.
    pub fn count(&self, tag: u32) -> Result<u64, TransportError> {
        self.check(tag)?;
        Ok(self.counts[tag as usize].load(Ordering::Acquire))
    }

    /// Subtracts `n` arrivals of `tag` (for reuse of a tag across rounds); returns the count left.
    /// Saturates at zero.
    pub fn consume(&self, tag: u32, n: u64) -> Result<u64, TransportError> {
        self.check(tag)?;
        let c = &self.counts[tag as usize];
        let mut cur = c.load(Ordering::Acquire);
        loop {
            let next = cur.saturating_sub(n);
            match c.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(next),
                Err(v) => cur = v,
            }
        }
    }

    /// Waits until `tag` has at least `n` arrivals or `timeout` passes (`Duration::MAX`: no
    /// deadline). Returns the count seen last (`>= n` on success).
    ///
    /// Spins a few passes, yields a few more, then sleeps until [`record`](Self::record) wakes
    /// it: a wait that blocks uses no CPU, whatever its length. [`Duration::ZERO`] only looks.
    ///
    /// # Errors
    ///
    /// [`TransportError::BadTag`] for a tag outside the table.
    pub fn wait_for(&self, tag: u32, n: u64, timeout: Duration) -> Result<u64, TransportError> {
        self.check(tag)?;
        let c = &self.counts[tag as usize];
        let v = c.load(Ordering::Acquire);
        if v >= n || timeout.is_zero() {
            // Done, or only a look: no clock read.
            return Ok(v);
        }
        // `elapsed` rather than a deadline sum: `Duration::MAX` waits for ever.
        let start = Instant::now();
        for pass in 0..SPINS + YIELDS {
            let v = c.load(Ordering::Acquire);
            if v >= n {
                return Ok(v);
            }
            if pass < SPINS {
                std::hint::spin_loop();
            } else if start.elapsed() >= timeout {
                return Ok(v);
            } else {
                std::thread::yield_now();
            }
        }
        self.sleep_until(c, n, start, timeout)
    }

    /// The sleeping part of [`wait_for`](Self::wait_for).
    fn sleep_until(
        &self,
        c: &AtomicU64,
        n: u64,
        start: Instant,
        timeout: Duration,
    ) -> Result<u64, TransportError> {
        let _asleep = Sleeper::new(&self.sleepers);
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let v = c.load(Ordering::SeqCst);
            let left = timeout.saturating_sub(start.elapsed());
            if v >= n || left.is_zero() {
                return Ok(v);
            }
            guard = self
                .wake
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// One thread counted in [`Notifications::sleepers`] for as long as it lives.
struct Sleeper<'a>(&'a AtomicU32);

impl<'a> Sleeper<'a> {
    fn new(sleepers: &'a AtomicU32) -> Self {
        sleepers.fetch_add(1, Ordering::SeqCst);
        Sleeper(sleepers)
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_bounds() {
        let n = Notifications::new(4);
        assert!(n.record(3));
        assert!(n.record(3));
        assert!(!n.record(4));
        assert_eq!(n.count(3).unwrap(), 2);
        assert_eq!(n.count(4), Err(TransportError::BadTag { tag: 4, tags: 4 }));
        assert_eq!(n.wait_for(3, 2, Duration::ZERO).unwrap(), 2);
        assert_eq!(n.wait_for(0, 1, Duration::from_millis(1)).unwrap(), 0);
        assert_eq!(n.consume(3, 5).unwrap(), 0);
    }

    #[test]
    fn a_sleeping_waiter_wakes_at_its_own_arrivals_only() {
        let n = Notifications::new(2);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| n.wait_for(1, 2, Duration::from_secs(60)).unwrap());
            // Past its spins and yields it sleeps, counted.
            let t0 = Instant::now();
            while n.sleepers.load(Ordering::SeqCst) == 0 {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "the waiter never slept"
                );
                std::thread::yield_now();
            }
            // Another tag's arrival and the first of two wake it, and it sleeps again.
            assert!(n.record(0));
            assert!(n.record(1));
            assert!(!waiter.is_finished());
            assert!(n.record(1));
            assert_eq!(waiter.join().unwrap(), 2);
        });
        assert_eq!(n.sleepers.load(Ordering::SeqCst), 0);
    }
}

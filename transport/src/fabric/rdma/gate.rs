//! Polling a CQ only when a hardware completion counter says something completed.
//!
//! A completion counter attached to a send queue's QP counts its finished work requests
//! (successes and errors). EFA still writes a CQE for every one of them, so the CQ is drained
//! as before; the gate only skips the CQ polls that would come back empty: while requests are
//! in flight, a poll reads the counter (two loads for a counter in host memory) instead of
//! entering the provider's CQ poll (a call, a lock unless on a thread domain, and a read of the
//! next CQE).
//!
//! The gate never withholds a completion for good. It opens when the count differs from the
//! CQEs drained so far, on every [`FORCE_EVERY`]th poll whatever the count says (should a
//! device write a CQE before its count, or count a kind of completion not at all), and
//! whenever the counter cannot be read. When the queue has nothing in flight it re-bases on
//! the count, so a counter that wraps at a device maximum or counts differently stays in step.

use std::sync::Arc;

/// Closed polls in a row after which the gate opens anyway.
pub(crate) const FORCE_EVERY: u32 = 64;

/// Something that counts completed work requests.
pub(crate) trait Completed {
    /// Work requests completed so far (successes plus errors, wrapping); `None`: unknown.
    fn completed(&self) -> Option<u64>;
}

impl Completed for ::efa::CompCounter {
    #[inline]
    fn completed(&self) -> Option<u64> {
        ::efa::CompCounter::completed(self).ok()
    }
}

/// The gate of one CQ (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct CounterGate<C: ?Sized> {
    counter: Arc<C>,
    /// CQEs drained since the last re-base, plus the count at that re-base.
    drained: u64,
    /// Closed polls since the gate last opened.
    closed: u32,
}

impl<C: Completed + ?Sized> CounterGate<C> {
    /// A gate over `counter`, which counts every work request of the CQ's queue from now on.
    pub(crate) fn new(counter: Arc<C>) -> Self {
        let drained = counter.completed().unwrap_or(0);
        CounterGate {
            counter,
            drained,
            closed: 0,
        }
    }

    /// Whether to poll the CQ now.
    #[inline]
    pub(crate) fn open(&mut self) -> bool {
        let moved = self.counter.completed() != Some(self.drained);
        if moved || self.closed >= FORCE_EVERY {
            self.closed = 0;
            true
        } else {
            self.closed += 1;
            false
        }
    }

    /// Counts `n` CQEs drained by an open poll; `in_flight`: requests still on the queue after
    /// it.
    #[inline]
    pub(crate) fn drained(&mut self, n: usize, in_flight: u32) {
        self.drained = self.drained.wrapping_add(n as u64);
        if in_flight == 0 {
            if let Some(done) = self.counter.completed() {
                self.drained = done;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A counter the test moves by hand; `u64::MAX` reads as unreadable.
    #[derive(Default)]
    struct Fake(AtomicU64);

    impl Fake {
        fn set(&self, v: u64) {
            self.0.store(v, Ordering::Relaxed);
        }
    }

    impl Completed for Fake {
        fn completed(&self) -> Option<u64> {
            Some(self.0.load(Ordering::Relaxed)).filter(|&v| v != u64::MAX)
        }
    }

    fn gate() -> (Arc<Fake>, CounterGate<Fake>) {
        let c = Arc::new(Fake::default());
        (c.clone(), CounterGate::new(c))
    }

    #[test]
    fn stays_closed_while_nothing_completes_and_opens_on_a_count() {
        let (c, mut g) = gate();
        for _ in 0..10 {
            assert!(!g.open());
        }
        c.set(3);
        assert!(g.open());
        g.drained(2, 1);
        assert!(g.open(), "one counted completion is still in the CQ");
        g.drained(1, 0);
        assert!(!g.open());
    }

    #[test]
    fn opens_every_force_every_polls_whatever_the_count() {
        let (_c, mut g) = gate();
        let opened: Vec<bool> = (0..3 * (FORCE_EVERY + 1)).map(|_| g.open()).collect();
        let opens = opened.iter().filter(|&&o| o).count();
        assert_eq!(opens, 3);
        assert!(opened[FORCE_EVERY as usize]);
    }

    #[test]
    fn an_unreadable_counter_keeps_the_gate_open() {
        let (c, mut g) = gate();
        c.set(u64::MAX);
        assert!((0..5).all(|_| g.open()));
    }

    #[test]
    fn an_idle_queue_rebases_on_the_count() {
        let (c, mut g) = gate();
        // A CQE the device did not count (say a flushed request): the gate would stay open
        // for good after it, as the drained figure runs ahead of the count...
        g.drained(1, 1);
        assert!(g.open());
        // ...until the queue is idle and the gate takes the count as it is.
        g.drained(0, 0);
        assert!(!g.open());
        // A counter that wrapped at a device maximum: the same.
        c.set(5);
        assert!(g.open());
        g.drained(2, 0);
        assert!(!g.open());
        c.set(0);
        assert!(g.open());
        g.drained(0, 0);
        assert!(!g.open());
    }

    #[test]
    fn a_counter_ahead_of_its_cqe_keeps_the_gate_open_until_drained() {
        let (c, mut g) = gate();
        c.set(1);
        assert!(g.open());
        // The CQE is not visible yet: nothing drained, and the gate stays open.
        g.drained(0, 1);
        assert!(g.open());
        g.drained(1, 0);
        assert!(!g.open());
    }
}

//! Idle backoff of the target-side polling threads: busy-poll while work arrives and for a
//! bounded spin window after the last activity, then sleep up to a bound, so an idle fabric does
//! not burn a core and a busy one (a ping-pong whose messages come a round trip apart) reacts at
//! once instead of measuring a sleep.

use std::time::{Duration, Instant};

/// Default spin window of the target threads (`idle_spin` in the fabric configs): long enough to
/// cover a round trip of a latency test under emulation (a few hundred microseconds), short
/// enough that an idle engine stops polling almost at once.
pub(crate) const DEFAULT_IDLE_SPIN: Duration = Duration::from_millis(1);

/// Longest sleep of an idle poller; bounds the notification latency of an idle target.
pub(crate) const MAX_SLEEP: Duration = Duration::from_micros(500);

/// Idle passes that only spin before the clock is read (reading it every pass costs more than
/// a CQ poll).
const PURE_SPINS: u32 = 64;

/// Backoff state of one polling loop.
#[derive(Debug)]
pub(crate) struct Backoff {
    /// Busy-poll window after the last pass that found work.
    spin: Duration,
    /// Fruitless passes since the last busy one.
    idle: u32,
    /// When the current idle run passed [`PURE_SPINS`].
    since: Option<Instant>,
    /// Sleeps taken since the spin window ran out (grows the sleep).
    sleeps: u32,
}

impl Backoff {
    /// A backoff that busy-polls for `spin` after the last activity before it starts sleeping.
    pub(crate) fn new(spin: Duration) -> Backoff {
        Backoff {
            spin,
            idle: 0,
            since: None,
            sleeps: 0,
        }
    }

    /// Call after each polling pass with whether it found work: spins, yields or sleeps.
    pub(crate) fn step(&mut self, busy: bool) {
        if self.spun(busy) {
            std::thread::sleep(self.pause());
        }
    }

    /// The spinning part of [`step`](Self::step): true once the spin window is over, when the
    /// caller should sleep or block (on a completion channel) rather than poll at once.
    pub(crate) fn spun(&mut self, busy: bool) -> bool {
        if busy {
            self.idle = 0;
            self.since = None;
            self.sleeps = 0;
            return false;
        }
        self.idle = self.idle.saturating_add(1);
        if self.idle <= PURE_SPINS {
            std::hint::spin_loop();
            return false;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if self.sleeps == 0 && since.elapsed() < self.spin {
            // Still in the spin window: poll again at once, but let a thread that shares this
            // core (the application waiting on our count, the device's kernel thread) run.
            std::thread::yield_now();
            return false;
        }
        self.sleeps = self.sleeps.saturating_add(1);
        true
    }

    /// The next sleep once the spin window is over: 10 µs more each time, up to [`MAX_SLEEP`].
    fn pause(&self) -> Duration {
        MAX_SLEEP.min(Duration::from_micros(u64::from(self.sleeps) * 10))
    }

    /// Whether the next idle pass would sleep rather than poll at once.
    #[cfg(test)]
    fn sleeping(&self) -> bool {
        self.sleeps > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spins_through_the_window_then_sleeps_and_wakes_on_work() {
        let mut b = Backoff::new(Duration::from_millis(20));
        let start = Instant::now();
        while !b.sleeping() && start.elapsed() < Duration::from_secs(10) {
            b.step(false);
        }
        assert!(b.sleeping(), "the backoff never left its spin window");
        assert!(
            start.elapsed() >= Duration::from_millis(20),
            "left the spin window after {:?}",
            start.elapsed()
        );
        b.step(true);
        assert!(!b.sleeping(), "activity must restart the spin window");
    }

    #[test]
    fn zero_window_sleeps_after_the_pure_spins() {
        let mut b = Backoff::new(Duration::ZERO);
        for _ in 0..PURE_SPINS {
            b.step(false);
            assert!(!b.sleeping());
        }
        b.step(false);
        assert!(b.sleeping());
    }

    #[test]
    fn sleeps_grow_to_the_bound() {
        let mut b = Backoff::new(Duration::ZERO);
        b.sleeps = 1;
        assert_eq!(b.pause(), Duration::from_micros(10));
        b.sleeps = 1000;
        assert_eq!(b.pause(), MAX_SLEEP);
    }
}

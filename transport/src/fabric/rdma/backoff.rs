//! Idle backoff of the target-side polling threads: spin while work arrives, then yield, then
//! sleep up to a bound, so an idle fabric does not burn a core and a busy one reacts at once.

use std::time::Duration;

/// Backoff state of one polling loop.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    idle: u32,
}

/// Longest sleep of an idle poller; bounds the notification latency of an idle target.
pub(crate) const MAX_SLEEP: Duration = Duration::from_micros(500);

impl Backoff {
    /// Call after each polling pass with whether it found work.
    pub(crate) fn step(&mut self, busy: bool) {
        if busy {
            self.idle = 0;
            return;
        }
        self.idle = self.idle.saturating_add(1);
        match self.idle {
            0..=64 => std::hint::spin_loop(),
            65..=128 => std::thread::yield_now(),
            n => std::thread::sleep(MAX_SLEEP.min(Duration::from_micros(u64::from(n - 128) * 10))),
        }
    }
}

//! How a worker waits for completions ([`Worker::wait`](crate::Worker::wait),
//! [`Worker::drain`](crate::Worker::drain)) once its polls come back empty: spin for the lowest
//! latency, or pause to give the core back.
//!
//! A pause blocks on the endpoint's completion channels where the fabric has them (the `efa`
//! and `verbs` fabrics with `cq_events` in their configuration, on devices that raise CQ
//! events): the worker arms its CQs, polls once more, and sleeps until a completion arrives (at
//! most [`BLOCK_BOUND`]), so it wakes at once instead of at the end of a pause, as perftest's
//! `-e` does. Elsewhere (`sim`, `tcp`, several fabrics in one engine, EFA's first generation,
//! and while the two-sided protocol or held retries need polls) the pause is a sleep.

use std::time::Duration;

/// A worker's way of waiting (see the [module docs](self)); set per engine in
/// [`EngineConfig::wait`](crate::EngineConfig::wait) or per worker with
/// [`Worker::set_wait_mode`](crate::Worker::set_wait_mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Poll without pause: the lowest latency, and a whole core while waiting.
    Busy,
    /// Poll `spin` times, then yield the core between polls, then pause between polls for a
    /// time that doubles from [`MIN_PAUSE`] to [`SHORT_PAUSE`], and past it grows with the time
    /// waited (at most [`PAUSE_SHARE`]th of it, and [`MAX_PAUSE`]). The default (`spin` 1024)
    /// keeps the latency of a busy poll for completions that come within microseconds and costs
    /// almost nothing while a batch waits long.
    Adaptive {
        /// Empty polls before the worker starts yielding.
        spin: u32,
    },
    /// Pause from the first empty poll: the least CPU. Blocks on completion channels where the
    /// fabric has them (no added latency beyond a wake-up), else sleeps, noticing a completion
    /// at most a pause late (see `Adaptive`). Also the faster mode where the completion needs
    /// the CPU the worker would spin on: a software device (Soft-RoCE) on a one-CPU machine,
    /// where it moved 4 KiB bandwidth from 0.63-0.81 of perftest's (busy polling) to 0.86-1.36
    /// (`BENCHMARKS.md`).
    Block,
}

impl Default for WaitMode {
    fn default() -> Self {
        WaitMode::Adaptive { spin: 1024 }
    }
}

/// The first pause of a waiting worker.
pub const MIN_PAUSE: Duration = Duration::from_micros(20);
/// Pauses double up to this whatever the wait has lasted.
pub const SHORT_PAUSE: Duration = Duration::from_millis(2);
/// Past [`SHORT_PAUSE`], a pause is at most this share of the time waited so far: a completion
/// is noticed at most 1/32 of the wait late, and a long wait sleeps a few dozen times a second
/// instead of 500 (each sleep costs a timer and two context switches: about 37 us of CPU on a
/// virtual machine, 1.8% of a core at 500 a second).
pub const PAUSE_SHARE: u32 = 32;
/// The longest pause of a waiting worker.
pub const MAX_PAUSE: Duration = Duration::from_millis(20);
/// The longest block of a waiting worker on its endpoint's completion channels (where the
/// fabric has them: see [`WaitMode`]): bounds how late it notices a deadline, a dropped worker's
/// requests or a peer reported gone, none of which raises a completion event.
pub const BLOCK_BOUND: Duration = Duration::from_millis(50);
/// Yields of an adaptive worker between spinning and pausing.
const YIELDS: u32 = 64;
/// Empty polls of a spinning worker between two checks of its deadline (a clock read, which
/// costs a system call where the vDSO cannot read the clock source, as in an emulated guest) and
/// of dropped workers: most waits for a completion end before the first.
const SPIN_CHECK_EVERY: u32 = 256;

/// What a waiting worker does after an empty poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Poll again at once.
    Spin,
    /// Yield the core, then poll.
    Yield,
    /// Sleep this long, then poll.
    Pause(Duration),
}

/// The empty polls of one wait, and the pause they have grown to.
#[derive(Debug)]
pub(crate) struct Idle {
    mode: WaitMode,
    empty: u32,
    pause: Duration,
    /// What the pause may grow to, set by the time waited ([`Idle::waited`]).
    longest: Duration,
}

impl Idle {
    pub(crate) fn new(mode: WaitMode) -> Self {
        Idle {
            mode,
            empty: 0,
            pause: MIN_PAUSE,
            longest: SHORT_PAUSE,
        }
    }

    /// The wait has lasted `waited`: later pauses may grow to its [`PAUSE_SHARE`]th (between
    /// [`SHORT_PAUSE`] and [`MAX_PAUSE`]).
    #[inline]
    pub(crate) fn waited(&mut self, waited: Duration) {
        self.longest = (waited / PAUSE_SHARE).clamp(SHORT_PAUSE, MAX_PAUSE);
    }

    /// A poll found completions: start over.
    #[inline]
    pub(crate) fn reset(&mut self) {
        self.empty = 0;
        self.pause = MIN_PAUSE;
    }

    /// A poll came back empty: what to do next.
    #[inline]
    pub(crate) fn step(&mut self) -> Step {
        self.empty = self.empty.saturating_add(1);
        let spin = match self.mode {
            WaitMode::Busy => return Step::Spin,
            WaitMode::Block => 0,
            WaitMode::Adaptive { spin } => spin,
        };
        if self.empty <= spin {
            return Step::Spin;
        }
        if self.mode != WaitMode::Block && self.empty <= spin.saturating_add(YIELDS) {
            return Step::Yield;
        }
        let pause = self.pause;
        self.pause = (pause * 2).min(self.longest);
        Step::Pause(pause)
    }

    /// Whether this empty poll is one at which the wait checks its deadline and dropped
    /// workers (every [`SPIN_CHECK_EVERY`]th while spinning, every one otherwise).
    #[inline]
    pub(crate) fn check_due(&self, step: Step) -> bool {
        step != Step::Spin || self.empty % SPIN_CHECK_EVERY == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(mode: WaitMode, n: usize) -> Vec<Step> {
        let mut idle = Idle::new(mode);
        (0..n).map(|_| idle.step()).collect()
    }

    #[test]
    fn busy_only_spins() {
        assert!(steps(WaitMode::Busy, 10_000)
            .iter()
            .all(|s| *s == Step::Spin));
    }

    #[test]
    fn adaptive_spins_then_yields_then_pauses_longer_up_to_the_cap() {
        let s = steps(WaitMode::Adaptive { spin: 3 }, 3 + 64 + 9);
        assert!(s[..3].iter().all(|s| *s == Step::Spin));
        assert!(s[3..67].iter().all(|s| *s == Step::Yield));
        let pauses: Vec<_> = s[67..]
            .iter()
            .map(|s| match s {
                Step::Pause(d) => d.as_micros(),
                other => panic!("expected a pause, got {other:?}"),
            })
            .collect();
        assert_eq!(pauses, [20, 40, 80, 160, 320, 640, 1280, 2000, 2000]);
    }

    /// A wait of `total` in Block mode on a simulated clock (each pause lasts what it says);
    /// returns the pauses, each with the time waited before it.
    fn long_wait(total: Duration) -> Vec<(Duration, Duration)> {
        let mut idle = Idle::new(WaitMode::Block);
        let (mut waited, mut out) = (Duration::ZERO, Vec::new());
        while waited < total {
            idle.waited(waited);
            let Step::Pause(d) = idle.step() else {
                panic!("Block mode only pauses");
            };
            out.push((waited, d));
            waited += d;
        }
        out
    }

    #[test]
    fn pauses_past_the_short_cap_grow_with_the_time_waited_up_to_the_longest() {
        let pauses = long_wait(Duration::from_secs(2));
        for &(waited, d) in &pauses {
            let allowed = (waited / PAUSE_SHARE).clamp(SHORT_PAUSE, MAX_PAUSE);
            assert!(
                d <= allowed,
                "a {d:?} pause after {waited:?} (at most {allowed:?})"
            );
        }
        assert_eq!(pauses.last().map(|p| p.1), Some(MAX_PAUSE));
        // Doubling to 2 ms and staying there would be about a thousand sleeps.
        assert!(
            pauses.len() < 250,
            "{} sleeps over 2 s: the pause did not grow",
            pauses.len()
        );
        // A short wait keeps the short pauses.
        let short = long_wait(Duration::from_millis(40));
        assert!(short.iter().all(|&(_, d)| d <= SHORT_PAUSE));
    }

    #[test]
    fn block_pauses_at_once_and_a_reset_starts_over() {
        let mut idle = Idle::new(WaitMode::Block);
        assert_eq!(idle.step(), Step::Pause(MIN_PAUSE));
        assert_eq!(idle.step(), Step::Pause(MIN_PAUSE * 2));
        idle.reset();
        assert_eq!(idle.step(), Step::Pause(MIN_PAUSE));
        assert!(idle.check_due(Step::Pause(MIN_PAUSE)));
    }

    #[test]
    fn a_spinning_wait_checks_its_deadline_every_256th_empty_poll_and_every_slower_one() {
        let mut idle = Idle::new(WaitMode::Busy);
        let due: Vec<u32> = (1..=1024)
            .filter(|_| {
                let step = idle.step();
                idle.check_due(step)
            })
            .collect();
        assert_eq!(due, [256, 512, 768, 1024]);
        let mut idle = Idle::new(WaitMode::Adaptive { spin: 2 });
        let due: Vec<bool> = (0..4)
            .map(|_| {
                let step = idle.step();
                idle.check_due(step)
            })
            .collect();
        assert_eq!(due, [false, false, true, true]);
    }
}

//! Latency samples stamped with the CPU's cycle counter, as perftest stamps its iterations with
//! `get_cycles()`, and turned into microseconds by the run's own wall time.
//!
//! A sample is the time between two stamps, so a latency loop stamps once per iteration; the
//! stamp must cost next to nothing. `Instant::now` does on a machine whose clock source the vDSO
//! reads (the TSC of any EC2 instance), but not in a guest whose clock source is an emulated
//! timer: the TCG guest of `tests/vm`, on the boots whose clock source is the HPET (some are
//! on the TSC), pays about 1.3 µs a read, which alone put 1.3 µs on every round trip and about
//! 2.5 µs on a 2 B WRITE ping-pong's half round trip there (`BENCHMARKS.md`). The cycle counter
//! costs a few nanoseconds everywhere.
//!
//! Ticks become microseconds at the rate the run itself shows: the ticks and the wall time
//! (`Instant`) between the run's first stamp and its end. The samples then add up to the run's
//! wall time exactly, whatever the counter's frequency, with no calibration pause and no
//! `/proc/cpuinfo` reading (perftest's way, which a frequency-scaled or emulated CPU can get
//! wrong). Where the counter is not read directly (not x86-64), a tick is a nanosecond of
//! `Instant`.

use crate::runner::Amount;
use std::time::Instant;

/// Iterations of a timed run ([`Amount::Duration`]) between two looks at the clock.
const DEADLINE_EVERY: u64 = 16;
/// Samples a run makes room for before it starts (more grow the vector).
const MAX_PREALLOCATED: u64 = 1 << 20;

/// A latency loop's bound and its stamps: `amount` iterations, or as many as fit in its time
/// (the clock read every [`DEADLINE_EVERY`] iterations, not per iteration).
pub struct Run {
    /// The samples so far.
    pub stamps: Stamps,
    limit: u64,
    deadline: Option<Instant>,
}

impl Run {
    /// A run of `amount`, started now.
    pub fn new(amount: Amount) -> Self {
        let (limit, deadline) = match amount {
            Amount::Iterations(n) => (n, None),
            Amount::Duration(d) => (u64::MAX, Instant::now().checked_add(d)),
        };
        Run {
            stamps: Stamps::start(limit.min(MAX_PREALLOCATED) as usize),
            limit,
            deadline,
        }
    }

    /// Whether another iteration is due.
    #[inline]
    pub fn goes_on(&self) -> bool {
        let n = self.stamps.len() as u64;
        n < self.limit
            && self
                .deadline
                .map_or(true, |d| n % DEADLINE_EVERY != 0 || Instant::now() < d)
    }

    /// Ends an iteration: its sample.
    #[inline]
    pub fn lap(&mut self) {
        self.stamps.lap();
    }
}

/// The stamps of one latency run: its start on both clocks, and the samples as tick counts
/// until [`finish`](Self::finish) converts them.
pub struct Stamps {
    wall0: Instant,
    tick0: u64,
    last: u64,
    ticks: Vec<f64>,
}

impl Stamps {
    /// Starts a run that takes up to `capacity` samples without allocating.
    pub fn start(capacity: usize) -> Self {
        let wall0 = Instant::now();
        let tick0 = ticks(wall0);
        Stamps {
            wall0,
            tick0,
            last: tick0,
            ticks: Vec::with_capacity(capacity),
        }
    }

    /// Ends the current sample and starts the next: one counter read.
    #[inline]
    pub fn lap(&mut self) {
        let now = ticks(self.wall0);
        self.ticks.push(now.wrapping_sub(self.last) as f64);
        self.last = now;
    }

    /// Samples taken so far.
    pub fn len(&self) -> usize {
        self.ticks.len()
    }

    /// The samples in microseconds, each multiplied by `scale` (½ for half a round trip).
    pub fn finish(mut self, scale: f64) -> Vec<f64> {
        let wall_us = self.wall0.elapsed().as_secs_f64() * 1e6;
        let total = ticks(self.wall0).wrapping_sub(self.tick0) as f64;
        // A run too short for one tick (or a counter that did not move) keeps tick counts as
        // they are rather than dividing by zero.
        let us_per_tick = if total > 0.0 { wall_us / total } else { 0.0 };
        for s in &mut self.ticks {
            *s *= us_per_tick * scale;
        }
        self.ticks
    }
}

/// The cycle counter.
#[cfg(target_arch = "x86_64")]
#[inline]
fn ticks(_epoch: Instant) -> u64 {
    // SAFETY: RDTSC is part of the x86-64 baseline; it reads a counter and touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Nanoseconds since `epoch`.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn ticks(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn samples_add_up_to_the_wall_time_between_the_stamps() {
        let mut s = Stamps::start(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(2));
            s.lap();
        }
        let wall = t0.elapsed().as_secs_f64() * 1e6;
        let us = s.finish(1.0);
        assert_eq!(us.len(), 3);
        // Each sample covers one 2 ms sleep or more; together they cover the laps' wall time,
        // which the run's end (taken after) bounds from above.
        assert!(us.iter().all(|&x| x >= 2000.0), "{us:?}");
        let sum: f64 = us.iter().sum();
        assert!(
            sum <= wall + 1000.0 && sum >= 6000.0,
            "sum {sum} us, wall {wall} us"
        );
    }

    #[test]
    fn a_run_stops_at_its_count_or_its_time() {
        let mut r = Run::new(Amount::Iterations(5));
        while r.goes_on() {
            r.lap();
        }
        assert_eq!(r.stamps.len(), 5);
        let mut r = Run::new(Amount::Duration(Duration::from_millis(20)));
        let t0 = Instant::now();
        while r.goes_on() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
            r.lap();
        }
        // Stopped by its deadline (looked at every 16 iterations), well before the guard.
        assert!(r.stamps.len() >= 16, "{}", r.stamps.len());
        assert!(t0.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn scale_halves_a_round_trip() {
        let mut s = Stamps::start(1);
        std::thread::sleep(Duration::from_millis(2));
        s.lap();
        let half = s.finish(0.5);
        assert!(half[0] >= 1000.0, "{half:?}");
    }

    #[test]
    fn laps_do_not_allocate_within_capacity() {
        let mut s = Stamps::start(100);
        let cap = s.ticks.capacity();
        for _ in 0..100 {
            s.lap();
        }
        assert_eq!(s.ticks.capacity(), cap);
        assert_eq!(s.len(), 100);
    }
}

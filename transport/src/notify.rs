//! Target-side counters for write-with-notification.
//!
//! Delivery is unordered, so a target never waits for "the last message": it counts arrivals
//! per tag and waits until the count reaches what it expects.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::TransportError;

/// Per-tag arrival counters of one engine. Tags are dense indices `0..tags()`.
#[derive(Debug)]
pub struct Notifications {
    counts: Box<[AtomicU64]>,
}

impl Notifications {
    /// A table of `tags` counters, all zero.
    pub fn new(tags: u32) -> Self {
        Notifications {
            counts: (0..tags).map(|_| AtomicU64::new(0)).collect(),
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

    /// Records one arrival of `tag`; returns `false` (and records nothing) for a tag outside the
    /// table. Called by fabrics on the target side.
    pub fn record(&self, tag: u32) -> bool {
        match self.counts.get(tag as usize) {
            Some(c) => {
                c.fetch_add(1, Ordering::Release);
                true
            }
            None => false,
        }
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
    /// deadline). Returns the count seen last (`>= n` on success). Spins briefly, then yields, then sleeps, so a long wait does not
    /// burn a core.
    pub fn wait_for(&self, tag: u32, n: u64, timeout: Duration) -> Result<u64, TransportError> {
        self.check(tag)?;
        let c = &self.counts[tag as usize];
        // `elapsed` rather than a deadline sum: `Duration::MAX` waits for ever.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let v = c.load(Ordering::Acquire);
            if v >= n || start.elapsed() >= timeout {
                return Ok(v);
            }
            spins = spins.saturating_add(1);
            if spins < 64 {
                std::hint::spin_loop();
            } else if spins < 256 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
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
}

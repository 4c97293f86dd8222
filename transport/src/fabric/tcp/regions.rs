//! The registration table: what the service threads check every incoming request against.
//!
//! A remote key names a slot and its generation (`generation << 16 | slot`), so a stale key
//! never matches a reused slot. Every field is atomic: service threads check keys while the
//! owner registers and deregisters, without a lock. A request holds an [`Access`] guard while
//! it touches the memory; deregistration waits for guards to drop, and service sockets have
//! read/write timeouts, so that wait is bounded.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::time::Duration;

use crate::{Access, FailReason};

const FREE: u64 = 0;
const BUSY: u64 = 1;
const ACTIVE: u64 = 2;
const RETIRING: u64 = 3;

#[derive(Debug, Default)]
struct Region {
    state: AtomicU64,
    inflight: AtomicU32,
    base: AtomicU64,
    len: AtomicU64,
    access: AtomicU8,
}

/// A fixed-capacity table of registrations.
#[derive(Debug)]
pub(crate) struct Regions {
    slots: Box<[Region]>,
}

/// Proof that a checked range stays registered until dropped.
pub(crate) struct Guard<'a> {
    region: &'a Region,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.region.inflight.fetch_sub(1, SeqCst);
    }
}

fn key(slot: usize, generation: u64) -> u64 {
    (generation << 16) | slot as u64
}

impl Regions {
    pub(crate) fn new(capacity: usize) -> Regions {
        Regions {
            slots: (0..capacity.clamp(1, 1 << 16))
                .map(|_| Region::default())
                .collect(),
        }
    }

    /// Adds a registration; `None` when the table is full.
    pub(crate) fn register(&self, base: u64, len: u64, access: Access) -> Option<u64> {
        for (i, r) in self.slots.iter().enumerate() {
            let s = r.state.load(SeqCst);
            if s & 3 != FREE {
                continue;
            }
            let generation = s >> 2;
            if r.state
                .compare_exchange(s, (generation << 2) | BUSY, SeqCst, SeqCst)
                .is_err()
            {
                continue;
            }
            r.base.store(base, Relaxed);
            r.len.store(len, Relaxed);
            r.access.store(access.bits(), Relaxed);
            r.state.store((generation << 2) | ACTIVE, SeqCst);
            return Some(key(i, generation));
        }
        None
    }

    /// Removes a registration and waits until no request uses it. Returns whether the key was
    /// registered.
    pub(crate) fn deregister(&self, key: u64) -> bool {
        let Some(r) = self.slots.get((key & 0xffff) as usize) else {
            return false;
        };
        let generation = key >> 16;
        if r.state
            .compare_exchange(
                (generation << 2) | ACTIVE,
                (generation << 2) | RETIRING,
                SeqCst,
                SeqCst,
            )
            .is_err()
        {
            return false;
        }
        // Guards are held only across socket I/O that has a timeout, so this ends.
        let mut spins = 0u32;
        while r.inflight.load(SeqCst) != 0 {
            spins += 1;
            if spins < 128 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        r.state.store(((generation + 1) << 2) | FREE, SeqCst);
        true
    }

    /// Retires every registration (fabric shutdown), waiting for requests using them.
    pub(crate) fn retire_all(&self) {
        for (i, r) in self.slots.iter().enumerate() {
            let s = r.state.load(SeqCst);
            if s & 3 == ACTIVE {
                self.deregister(key(i, s >> 2));
            }
        }
    }

    fn active(&self, key: u64) -> Option<&Region> {
        let r = self.slots.get((key & 0xffff) as usize)?;
        (r.state.load(SeqCst) == ((key >> 16) << 2) | ACTIVE).then_some(r)
    }

    fn in_bounds(r: &Region, addr: u64, len: u64) -> bool {
        let base = r.base.load(Relaxed);
        let end = base + r.len.load(Relaxed);
        addr >= base && addr.checked_add(len).is_some_and(|e| e <= end)
    }

    /// Checks a peer's request: the key names a live registration, the range lies inside it and
    /// its rights allow `need`. The guard keeps the registration alive while held.
    pub(crate) fn acquire(
        &self,
        key: u64,
        addr: u64,
        len: u64,
        need: Access,
    ) -> Result<Guard<'_>, FailReason> {
        let r = self.active(key).ok_or(FailReason::RemoteBadAddress)?;
        r.inflight.fetch_add(1, SeqCst);
        let guard = Guard { region: r };
        // Re-check after announcing ourselves: deregister flips the state before it waits.
        if r.state.load(SeqCst) != ((key >> 16) << 2) | ACTIVE {
            return Err(FailReason::RemoteBadAddress);
        }
        if !Self::in_bounds(r, addr, len) {
            return Err(FailReason::RemoteBadAddress);
        }
        let granted = Access::from_bits(r.access.load(Relaxed)).unwrap_or(Access::NONE);
        if (need.can_read() && !granted.can_read()) || (need.can_write() && !granted.can_write()) {
            return Err(FailReason::RemoteBadAddress);
        }
        Ok(guard)
    }

    /// Checks the initiator's own local key and range (the engine's lkey).
    pub(crate) fn check_local(&self, key: u64, addr: u64, len: u64) -> bool {
        self.active(key)
            .is_some_and(|r| Self::in_bounds(r, addr, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_bounds_rights_and_staleness() {
        let t = Regions::new(4);
        let k = t.register(1000, 100, Access::REMOTE_WRITE).unwrap();
        assert!(t.acquire(k, 1000, 100, Access::REMOTE_WRITE).is_ok());
        assert!(t.acquire(k, 1050, 50, Access::REMOTE_WRITE).is_ok());
        let denied =
            |r: Result<Guard<'_>, FailReason>| r.err() == Some(FailReason::RemoteBadAddress);
        assert!(denied(t.acquire(k, 999, 10, Access::REMOTE_WRITE)));
        assert!(denied(t.acquire(k, 1050, 51, Access::REMOTE_WRITE)));
        assert!(denied(t.acquire(k, u64::MAX, 2, Access::REMOTE_WRITE)));
        assert!(denied(t.acquire(k, 1000, 1, Access::REMOTE_READ)));
        assert!(denied(t.acquire(k ^ 1, 1000, 1, Access::REMOTE_WRITE)));
        assert!(t.check_local(k, 1000, 100));
        assert!(t.deregister(k));
        assert!(!t.deregister(k));
        assert!(denied(t.acquire(k, 1000, 1, Access::REMOTE_WRITE)));
        let k2 = t.register(1000, 100, Access::REMOTE_READ_WRITE).unwrap();
        assert_ne!(k, k2, "a reused slot gets a new generation");
        assert!(denied(t.acquire(k, 1000, 1, Access::REMOTE_WRITE)));
    }

    #[test]
    fn full_table_refuses() {
        let t = Regions::new(2);
        assert!(t.register(0, 1, Access::NONE).is_some());
        assert!(t.register(0, 1, Access::NONE).is_some());
        assert!(t.register(0, 1, Access::NONE).is_none());
    }
}

//! One simulated engine's devices: its memory registrations (the keys peers present) and the
//! address handles it holds for initiators.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Arc, OnceLock};

use crate::{Access, Notifications};

const FREE: u64 = 0;
const BUSY: u64 = 1;
const ACTIVE: u64 = 2;

/// A registered region. All fields are atomics so a peer may check a key while the owner
/// (de)registers; `inflight` keeps deregistration from returning while a copy runs.
#[derive(Debug, Default)]
pub(crate) struct Region {
    state: AtomicU64,
    inflight: AtomicU32,
    base: AtomicU64,
    len: AtomicU64,
    access: AtomicU8,
}

/// Keys are `generation << 16 | slot`, so a stale key never matches a reused slot.
pub(crate) fn key(slot: usize, generation: u64) -> u64 {
    (generation << 16) | slot as u64
}

#[derive(Debug)]
pub(crate) struct Node {
    pub id: u32,
    pub rails: u16,
    pub alive: AtomicBool,
    regions: Box<[Region]>,
    /// `ah[i]`: this node holds an address handle for node `i` (it accepts its requests).
    ah: Box<[AtomicBool]>,
    pub notifications: OnceLock<Arc<Notifications>>,
}

impl Node {
    pub(crate) fn new(id: u32, rails: u16, max_regions: usize, max_nodes: usize) -> Self {
        Node {
            id,
            rails,
            alive: AtomicBool::new(true),
            regions: (0..max_regions.min(1 << 16))
                .map(|_| Region::default())
                .collect(),
            ah: (0..max_nodes).map(|_| AtomicBool::new(false)).collect(),
            notifications: OnceLock::new(),
        }
    }

    pub(crate) fn register(&self, base: u64, len: u64, access: Access) -> Option<u64> {
        for (i, r) in self.regions.iter().enumerate() {
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

    /// Deregisters; waits (bounded) for copies into the region to finish.
    pub(crate) fn deregister(&self, k: u64) -> bool {
        let slot = (k & 0xffff) as usize;
        let generation = k >> 16;
        let Some(r) = self.regions.get(slot) else {
            return false;
        };
        if r.state
            .compare_exchange(
                (generation << 2) | ACTIVE,
                (generation << 2) | BUSY,
                SeqCst,
                SeqCst,
            )
            .is_err()
        {
            return false;
        }
        // Copies are memcpy-sized; this spin ends quickly, but bound it regardless.
        let mut spins = 0u64;
        while r.inflight.load(SeqCst) != 0 && spins < 1 << 32 {
            std::hint::spin_loop();
            spins += 1;
        }
        r.state.store(((generation + 1) << 2) | FREE, SeqCst);
        true
    }

    /// Pins the region named by key `k` if the key is current; the caller must call
    /// [`Node::release`] with the returned slot. Deregistration waits while it is pinned.
    #[inline]
    pub(crate) fn pin(&self, k: u64) -> Option<usize> {
        let slot = (k & 0xffff) as usize;
        let want = ((k >> 16) << 2) | ACTIVE;
        let r = self.regions.get(slot)?;
        r.inflight.fetch_add(1, SeqCst);
        if r.state.load(SeqCst) == want {
            Some(slot)
        } else {
            r.inflight.fetch_sub(1, SeqCst);
            None
        }
    }

    /// Whether the pinned region `slot` covers `addr..addr+len` and grants `need`.
    #[inline]
    pub(crate) fn covers(&self, slot: usize, addr: u64, len: u64, need: Access) -> bool {
        let Some(r) = self.regions.get(slot) else {
            return false;
        };
        let base = r.base.load(Relaxed);
        let rlen = r.len.load(Relaxed);
        let access = Access::from_bits(r.access.load(Relaxed)).unwrap_or(Access::NONE);
        let inside = addr >= base && addr.checked_add(len).is_some_and(|end| end <= base + rlen);
        inside
            && (!need.can_read() || access.can_read())
            && (!need.can_write() || access.can_write())
    }

    /// Checks the owner's own key (no pin: the owner keeps its memory registered while its
    /// work requests are posted, which is the fabric contract).
    #[inline]
    pub(crate) fn check_local(&self, k: u64, addr: u64, len: u64) -> bool {
        let slot = (k & 0xffff) as usize;
        let want = ((k >> 16) << 2) | ACTIVE;
        let Some(r) = self.regions.get(slot) else {
            return false;
        };
        if r.state.load(Acquire) != want {
            return false;
        }
        let base = r.base.load(Relaxed);
        let rlen = r.len.load(Relaxed);
        addr >= base && addr.checked_add(len).is_some_and(|end| end <= base + rlen)
    }

    #[inline]
    pub(crate) fn release(&self, slot: usize) {
        if let Some(r) = self.regions.get(slot) {
            r.inflight.fetch_sub(1, SeqCst);
        }
    }

    pub(crate) fn knows(&self, peer: u32) -> bool {
        self.ah.get(peer as usize).is_some_and(|a| a.load(Acquire))
    }

    pub(crate) fn create_ah(&self, peer: u32) -> bool {
        match self.ah.get(peer as usize) {
            Some(a) => {
                a.store(true, Release);
                true
            }
            None => false,
        }
    }

    pub(crate) fn destroy_ah(&self, peer: u32) {
        if let Some(a) = self.ah.get(peer as usize) {
            a.store(false, Release);
        }
    }
}

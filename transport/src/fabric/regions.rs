//! The registration table of the software fabrics (`sim`, `tcp`): what every incoming request is
//! checked against before a byte moves.
//!
//! A remote key names a slot and its generation (`generation << 16 | slot`), so a stale key
//! never matches a reused slot. Every field is atomic: peers check keys while the owner
//! registers and deregisters, without a lock. A request holds a pin (a [`Guard`], or a bare
//! [`Regions::pin`] for callers that keep one pin across many requests) while it touches the
//! memory; deregistration waits for pins to drop. Pins are held only across a copy or across
//! socket I/O that has a timeout, so that wait is bounded.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::time::Duration;

use crate::fabric::{MemoryRegion, Registration};
use crate::{Access, FabricError, FailReason};

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
    /// Bit `r` set: registered on rail `r` (a fabric that registers on a subset, see
    /// `Fabric::register_on`).
    rails: AtomicU32,
}

/// A fixed-capacity table of registrations.
#[derive(Debug)]
pub(crate) struct Regions {
    slots: Box<[Region]>,
}

/// Proof that a checked range stays registered until dropped.
#[derive(Debug)]
#[cfg_attr(not(feature = "rdma"), allow(dead_code))] // Pins of the RDMA fabrics' targets.
pub(crate) struct Guard<'a> {
    region: &'a Region,
    slot: usize,
}

#[cfg_attr(not(feature = "rdma"), allow(dead_code))]
impl Guard<'_> {
    /// Keeps the pin past the guard: the caller must [`Regions::release`] the returned slot.
    pub(crate) fn into_pin(self) -> usize {
        let slot = self.slot;
        std::mem::forget(self);
        slot
    }
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

    /// Adds a registration on every rail; `None` when the table is full.
    pub(crate) fn register(&self, base: u64, len: u64, access: Access) -> Option<u64> {
        self.register_on(base, len, access, u32::MAX)
    }

    /// Adds a registration on the rails of the bit mask `rails`; `None` when the table is full.
    pub(crate) fn register_on(
        &self,
        base: u64,
        len: u64,
        access: Access,
        rails: u32,
    ) -> Option<u64> {
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
            r.rails.store(rails, Relaxed);
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

    /// Pins the live registration named by `key`, or `None` for a stale or unknown key. The
    /// caller must [`Regions::release`] the returned slot; deregistration waits until it does.
    #[inline]
    pub(crate) fn pin(&self, key: u64) -> Option<usize> {
        self.pin_if(key, |state| state == ((key >> 16) << 2) | ACTIVE)
    }

    /// Pins slot `key & 0xffff` if its state passes `live`.
    #[inline]
    fn pin_if(&self, key: u64, live: impl Fn(u64) -> bool) -> Option<usize> {
        let slot = (key & 0xffff) as usize;
        let r = self.slots.get(slot)?;
        r.inflight.fetch_add(1, SeqCst);
        // Checked after announcing the pin: deregister flips the state before it waits.
        if live(r.state.load(SeqCst)) {
            Some(slot)
        } else {
            r.inflight.fetch_sub(1, SeqCst);
            None
        }
    }

    /// A 32-bit form of `key` (the slot and the low 16 bits of its generation), for protocols
    /// that carry keys in 32 bits. A short key goes stale like a full one, except that it
    /// matches again after 65,536 re-registrations of its slot (as a hardware rkey may be
    /// reused).
    #[cfg_attr(not(feature = "rdma"), allow(dead_code))]
    pub(crate) fn short_key(key: u64) -> u32 {
        key as u32
    }

    /// [`acquire`](Self::acquire) by a [`short_key`](Self::short_key).
    #[cfg_attr(not(feature = "rdma"), allow(dead_code))]
    pub(crate) fn acquire_short(
        &self,
        short: u32,
        addr: u64,
        len: u64,
        need: Access,
    ) -> Result<Guard<'_>, FailReason> {
        let generation = u64::from(short >> 16);
        let slot = self
            .pin_if(u64::from(short), |s| {
                s & 3 == ACTIVE && (s >> 2) & 0xffff == generation
            })
            .ok_or(FailReason::RemoteBadAddress)?;
        self.guard_covering(slot, addr, len, need)
    }

    fn guard_covering(
        &self,
        slot: usize,
        addr: u64,
        len: u64,
        need: Access,
    ) -> Result<Guard<'_>, FailReason> {
        let guard = Guard {
            region: &self.slots[slot],
            slot,
        };
        if !self.covers(slot, addr, len, need) {
            return Err(FailReason::RemoteBadAddress);
        }
        Ok(guard)
    }

    /// Drops a pin taken by [`Regions::pin`].
    #[inline]
    pub(crate) fn release(&self, slot: usize) {
        if let Some(r) = self.slots.get(slot) {
            r.inflight.fetch_sub(1, SeqCst);
        }
    }

    /// Whether the pinned registration `slot` covers `addr..addr+len` and grants `need`.
    #[inline]
    pub(crate) fn covers(&self, slot: usize, addr: u64, len: u64, need: Access) -> bool {
        let Some(r) = self.slots.get(slot) else {
            return false;
        };
        let granted = Access::from_bits(r.access.load(Relaxed)).unwrap_or(Access::NONE);
        Self::in_bounds(r, addr, len)
            && (!need.can_read() || granted.can_read())
            && (!need.can_write() || granted.can_write())
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
        let slot = self.pin(key).ok_or(FailReason::RemoteBadAddress)?;
        self.guard_covering(slot, addr, len, need)
    }

    /// The rails (bit mask) the pinned registration `slot` is registered on.
    #[inline]
    pub(crate) fn rails_of(&self, slot: usize) -> u32 {
        self.slots.get(slot).map_or(0, |r| r.rails.load(Relaxed))
    }

    /// Checks the initiator's own local key and range on `rail` (below 32).
    #[inline]
    pub(crate) fn check_local_on(&self, key: u64, rail: u16, addr: u64, len: u64) -> bool {
        match self.active(key) {
            Some(r) => {
                Self::in_bounds(r, addr, len) && (r.rails.load(Relaxed) >> (rail & 31)) & 1 != 0
            }
            None => false,
        }
    }

    /// Checks the initiator's own local key and range (the engine's lkey).
    #[inline]
    pub(crate) fn check_local(&self, key: u64, addr: u64, len: u64) -> bool {
        self.active(key)
            .is_some_and(|r| Self::in_bounds(r, addr, len))
    }
}

/// `Fabric::register` for a fabric whose one key serves every rail; `fabric` names it in errors.
pub(crate) fn register(
    regions: &Regions,
    region: MemoryRegion,
    rails: u16,
    fabric: &'static str,
) -> Result<Registration, FabricError> {
    let key = regions
        .register(region.addr, region.len, region.access)
        .ok_or(FabricError::Exhausted(fabric))?;
    let rails = rails as usize;
    Ok(Registration {
        handle: key,
        local_keys: vec![key; rails],
        remote_keys: vec![key.to_le_bytes().to_vec(); rails],
    })
}

/// `Fabric::register_on` for a fabric whose one key serves every rail it is registered on: the
/// rails outside `on` get an empty remote key, and requests on them are refused
/// ([`Regions::rails_of`], [`Regions::check_local_on`]).
pub(crate) fn register_on(
    regions: &Regions,
    region: MemoryRegion,
    rails: u16,
    on: &crate::RailSet,
    fabric: &'static str,
) -> Result<Registration, FabricError> {
    let mask = on
        .as_slice()
        .iter()
        .filter(|&&r| r < rails.min(32))
        .fold(0u32, |m, &r| m | 1 << r);
    let key = regions
        .register_on(region.addr, region.len, region.access, mask)
        .ok_or(FabricError::Exhausted(fabric))?;
    Ok(Registration {
        handle: key,
        local_keys: vec![key; rails as usize],
        remote_keys: (0..rails)
            .map(|r| {
                if mask & (1 << r) != 0 {
                    key.to_le_bytes().to_vec()
                } else {
                    Vec::new()
                }
            })
            .collect(),
    })
}

/// `Fabric::deregister` for registrations made by [`register`].
pub(crate) fn deregister(
    regions: &Regions,
    registration: &Registration,
    fabric: &'static str,
) -> Result<(), FabricError> {
    if regions.deregister(registration.handle) {
        Ok(())
    } else {
        Err(FabricError::UnknownRegistration {
            fabric,
            handle: registration.handle,
        })
    }
}

/// `Fabric::decode_remote_key` for keys published by [`register`]: 8 bytes, little endian.
pub(crate) fn decode_key(rail: u16, key: &[u8]) -> Result<u64, FabricError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| FabricError::BadKey { rail })?;
    Ok(u64::from_le_bytes(bytes))
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

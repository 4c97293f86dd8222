//! A fixed-capacity table of generation-tagged slots that threads read without locks.
//!
//! Readers *pin* a slot (a counter) before reading its value; a slot cannot be retired while
//! pinned, and a retired slot's generation moves on so stale handles are detected. This is the
//! one place where shared slot contents are accessed through `UnsafeCell`.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

const FREE: u64 = 0;
const BUSY: u64 = 1;
const ACTIVE: u64 = 2;

#[inline]
fn state(generation: u32, st: u64) -> u64 {
    ((generation as u64) << 2) | st
}

struct Slot<T> {
    state: AtomicU64,
    pins: AtomicU32,
    value: UnsafeCell<Option<T>>,
}

/// A table of `T`s addressed by `(index, generation)`.
pub(crate) struct Slab<T> {
    slots: Box<[Slot<T>]>,
}

// SAFETY: the value of a slot is written only by the thread that moved the slot to BUSY (an
// exclusive state won by CAS) and read only by threads holding a pin on an ACTIVE slot; the pin
// protocol in `pin`/`retire` keeps those two from overlapping. `T: Send + Sync` because values
// are created on one thread, shared by reference, and dropped on another.
unsafe impl<T: Send + Sync> Sync for Slab<T> {}
// SAFETY: as above; the slab owns its values.
unsafe impl<T: Send + Sync> Send for Slab<T> {}

impl<T> Slab<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Slab {
            slots: (0..capacity)
                .map(|_| Slot {
                    state: AtomicU64::new(FREE),
                    pins: AtomicU32::new(0),
                    value: UnsafeCell::new(None),
                })
                .collect(),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Stores `value` in a free slot; returns its `(index, generation)`, or gives the value
    /// back when the table is full.
    pub(crate) fn insert(&self, value: T) -> Result<(u32, u32), T> {
        for (i, slot) in self.slots.iter().enumerate() {
            let s = slot.state.load(SeqCst);
            if s & 3 != FREE {
                continue;
            }
            let generation = (s >> 2) as u32;
            if slot
                .state
                .compare_exchange(s, state(generation, BUSY), SeqCst, SeqCst)
                .is_err()
            {
                continue;
            }
            // SAFETY: this thread won FREE -> BUSY, so no reader holds a pin that reads the value
            // (pins only succeed on ACTIVE) and no other writer exists.
            unsafe { *slot.value.get() = Some(value) };
            slot.state.store(state(generation, ACTIVE), SeqCst);
            return Ok((i as u32, generation));
        }
        Err(value)
    }

    /// Pins the slot if it holds generation `generation`; the returned reference is valid until
    /// the matching [`Slab::unpin`]. Callers must call `unpin` exactly once per successful pin.
    #[inline]
    pub(crate) fn pin(&self, index: u32, generation: u32) -> Option<&T> {
        let slot = self.slots.get(index as usize)?;
        // Cheap rejection of stale handles before touching the shared counter.
        if slot.state.load(SeqCst) != state(generation, ACTIVE) {
            return None;
        }
        slot.pins.fetch_add(1, SeqCst);
        if slot.state.load(SeqCst) != state(generation, ACTIVE) {
            slot.pins.fetch_sub(1, SeqCst);
            return None;
        }
        // SAFETY: the slot is ACTIVE and pinned; `retire` refuses to leave ACTIVE while pins are
        // held, so the value is initialised and nobody writes it until `unpin`.
        unsafe { (*slot.value.get()).as_ref() }
    }

    /// Releases a pin taken by [`Slab::pin`] (or [`Slab::pin_again`]).
    #[inline]
    pub(crate) fn unpin(&self, index: u32) {
        if let Some(slot) = self.slots.get(index as usize) {
            slot.pins.fetch_sub(1, SeqCst);
        }
    }

    /// Adds `n` pins to a slot the caller already holds pinned (one atomic for a run of
    /// requests on the same slot).
    #[inline]
    pub(crate) fn add_pins(&self, index: u32, n: u32) {
        if let Some(slot) = self.slots.get(index as usize) {
            slot.pins.fetch_add(n, SeqCst);
        }
    }

    /// Releases `n` pins at once.
    #[inline]
    pub(crate) fn unpin_many(&self, index: u32, n: u32) {
        if let Some(slot) = self.slots.get(index as usize) {
            slot.pins.fetch_sub(n, SeqCst);
        }
    }

    /// Reads a slot the caller has pinned.
    #[inline]
    pub(crate) fn get_pinned(&self, index: u32) -> Option<&T> {
        let slot = self.slots.get(index as usize)?;
        debug_assert!(slot.pins.load(SeqCst) > 0);
        // SAFETY: callers hold a pin on this slot (see `pin`), so it is ACTIVE and unchanging.
        unsafe { (*slot.value.get()).as_ref() }
    }

    /// Removes the value of generation `generation` unless it is pinned.
    /// `Err(None)`: stale handle; `Err(Some(pins))`: in use by that many pins.
    pub(crate) fn retire(&self, index: u32, generation: u32) -> Result<T, Option<u32>> {
        let slot = self.slots.get(index as usize).ok_or(None)?;
        slot.state
            .compare_exchange(
                state(generation, ACTIVE),
                state(generation, BUSY),
                SeqCst,
                SeqCst,
            )
            .map_err(|_| None)?;
        let pins = slot.pins.load(SeqCst);
        if pins != 0 {
            slot.state.store(state(generation, ACTIVE), SeqCst);
            return Err(Some(pins));
        }
        // SAFETY: BUSY with no pins: no reader can pin (pins require ACTIVE) and the state CAS
        // made this thread the only writer.
        let value = unsafe { (*slot.value.get()).take() };
        slot.state
            .store(state(generation.wrapping_add(1), FREE), SeqCst);
        value.ok_or(None)
    }

    /// Takes every value out of the table. Exclusive access (`&mut self`) means no reader can
    /// hold a pin, so nothing is in use.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.slots.iter_mut().filter_map(|slot| {
            *slot.state.get_mut() = FREE;
            slot.value.get_mut().take()
        })
    }

    /// Pins every active slot in turn and calls `f`; stops at the first `Some`. The pin is
    /// kept for the slot whose answer is returned (caller unpins it).
    pub(crate) fn find_pinned<R>(&self, mut f: impl FnMut(&T) -> Option<R>) -> Option<(u32, R)> {
        for (i, slot) in self.slots.iter().enumerate() {
            let s = slot.state.load(SeqCst);
            if s & 3 != ACTIVE {
                continue;
            }
            if let Some(v) = self.pin(i as u32, (s >> 2) as u32) {
                if let Some(r) = f(v) {
                    return Some((i as u32, r));
                }
                self.unpin(i as u32);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_handles_and_pins() {
        let s: Slab<String> = Slab::new(2);
        let (i, g) = s.insert("a".into()).unwrap();
        assert_eq!(s.pin(i, g).map(String::as_str), Some("a"));
        assert_eq!(s.retire(i, g), Err(Some(1)));
        s.unpin(i);
        assert_eq!(s.retire(i, g).unwrap(), "a");
        assert!(s.pin(i, g).is_none());
        assert_eq!(s.retire(i, g), Err(None));
        let (i2, g2) = s.insert("b".into()).unwrap();
        assert_eq!((i2, g2), (i, g + 1));
        s.insert("c".into()).unwrap();
        assert_eq!(s.insert("d".into()), Err("d".to_string()));
        let found = s.find_pinned(|v| (v == "c").then_some(7));
        assert_eq!(found.map(|(_, r)| r), Some(7));
    }

    #[test]
    fn drain_takes_every_live_value_once() {
        let mut s: Slab<String> = Slab::new(4);
        let (i, g) = s.insert("a".into()).unwrap();
        s.insert("b".into()).unwrap();
        s.insert("c".into()).unwrap();
        s.retire(i, g).unwrap();
        let mut drained: Vec<String> = s.drain().collect();
        drained.sort();
        assert_eq!(drained, ["b", "c"]);
        assert_eq!(s.drain().count(), 0);
        assert!(s.insert("d".into()).is_ok());
    }
}

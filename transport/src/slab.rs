//! A fixed-capacity table of generation-tagged slots that threads read without locks.
//!
//! Readers *pin* a slot (a counter) before reading its value; a slot cannot be retired while
//! pinned, and a retired slot's generation moves on so stale handles are detected. This is the
//! one place where shared slot contents are accessed through `UnsafeCell`.
//!
//! A pin is a [`Pin`] guard: it reads the value and releases the pin when dropped, so a pin
//! cannot leak on an early return. A pin that must outlive its scope (a request keeps its local
//! segment pinned until its last completion, perhaps on another thread) is handed over with
//! [`Pin::keep`]; its owner then reads the value with the `unsafe` [`Slab::get_pinned`] and
//! releases it with [`Slab::unpin`] or [`Slab::unpin_many`].

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

    /// Pins the slot if it holds generation `generation`; the guard reads the value and
    /// releases the pin when dropped.
    #[inline]
    pub(crate) fn pin(&self, index: u32, generation: u32) -> Option<Pin<'_, T>> {
        let value = self.pin_raw(index, generation)?;
        Some(Pin {
            slab: self,
            index,
            value,
        })
    }

    /// [`Slab::pin`] without the guard: the caller owns the pin.
    #[inline]
    fn pin_raw(&self, index: u32, generation: u32) -> Option<&T> {
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

    /// Releases a pin kept with [`Pin::keep`] (or added with [`Slab::add_pins`]).
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

    /// Reads a slot the caller holds a kept pin on.
    ///
    /// # Safety
    ///
    /// The caller owns a pin on slot `index` of this slab (from [`Pin::keep`] or
    /// [`Slab::add_pins`]) that it releases only after the returned reference is dropped.
    #[inline]
    pub(crate) unsafe fn get_pinned(&self, index: u32) -> &T {
        let slot = &self.slots[index as usize];
        debug_assert!(slot.pins.load(SeqCst) > 0);
        // SAFETY: per the contract the slot is pinned, so it is ACTIVE (initialised) and
        // `retire` cannot take the value until the pin is released.
        let value = unsafe { (*slot.value.get()).as_ref() };
        value.expect("a pinned slot holds a value")
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

    /// Pins every active slot in turn and calls `f`; stops at the first `Some`, returning it
    /// with the pin of its slot.
    pub(crate) fn find_pinned<R>(
        &self,
        mut f: impl FnMut(&T) -> Option<R>,
    ) -> Option<(Pin<'_, T>, R)> {
        for (i, slot) in self.slots.iter().enumerate() {
            let s = slot.state.load(SeqCst);
            if s & 3 != ACTIVE {
                continue;
            }
            if let Some(pin) = self.pin(i as u32, (s >> 2) as u32) {
                if let Some(r) = f(&pin) {
                    return Some((pin, r));
                }
            }
        }
        None
    }
}

/// A pin on one slot of a [`Slab`]: reads its value, which stays in place until the guard is
/// dropped (the pin is released then) or kept ([`Pin::keep`]).
pub(crate) struct Pin<'a, T> {
    slab: &'a Slab<T>,
    index: u32,
    value: &'a T,
}

impl<'a, T> Pin<'a, T> {
    /// The slot's index.
    #[inline]
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// Hands the pin over to the caller, who releases it later with [`Slab::unpin`] (and may
    /// read the slot meanwhile with [`Slab::get_pinned`]); returns the value.
    #[inline]
    pub(crate) fn keep(self) -> &'a T {
        let value = self.value;
        std::mem::forget(self);
        value
    }
}

impl<T> std::ops::Deref for Pin<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        self.value
    }
}

impl<T> Drop for Pin<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.slab.unpin(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_handles_and_pins() {
        let s: Slab<String> = Slab::new(2);
        let (i, g) = s.insert("a".into()).unwrap();
        let pin = s.pin(i, g).unwrap();
        assert_eq!(*pin, "a");
        assert_eq!(s.retire(i, g), Err(Some(1)));
        drop(pin);
        assert_eq!(s.retire(i, g).unwrap(), "a");
        assert!(s.pin(i, g).is_none());
        assert_eq!(s.retire(i, g), Err(None));
        let (i2, g2) = s.insert("b".into()).unwrap();
        assert_eq!((i2, g2), (i, g + 1));
        s.insert("c".into()).unwrap();
        assert_eq!(s.insert("d".into()), Err("d".to_string()));
        let (pin, r) = s.find_pinned(|v| (v == "c").then_some(7)).unwrap();
        assert_eq!((pin.as_str(), r), ("c", 7));
        let (i3, g3) = (pin.index(), g);
        assert_eq!(
            s.retire(i3, g3),
            Err(Some(1)),
            "the found slot stays pinned"
        );
    }

    #[test]
    fn kept_pins_last_until_unpinned() {
        let s: Slab<String> = Slab::new(1);
        let (i, g) = s.insert("a".into()).unwrap();
        assert_eq!(s.pin(i, g).unwrap().keep(), "a");
        // SAFETY: the pin kept above is still held.
        assert_eq!(unsafe { s.get_pinned(i) }, "a");
        s.add_pins(i, 2);
        assert_eq!(s.retire(i, g), Err(Some(3)));
        s.unpin_many(i, 2);
        s.unpin(i);
        assert_eq!(s.retire(i, g).unwrap(), "a");
    }

    #[test]
    fn a_pin_dropped_on_an_early_return_is_released() {
        fn early(s: &Slab<String>, i: u32, g: u32) -> Option<usize> {
            let pin = s.pin(i, g)?;
            (pin.len() > 10).then_some(pin.len())
        }
        let s: Slab<String> = Slab::new(1);
        let (i, g) = s.insert("short".into()).unwrap();
        assert_eq!(early(&s, i, g), None);
        assert_eq!(s.retire(i, g).unwrap(), "short");
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

//! The request storage of one batch slot: sized to what is used, given back when freed.
//!
//! Requests live in chunks of [`CHUNK`] entries, reached through a table of chunk pointers
//! sized to the batch's capacity. A chunk is allocated when a request in it is first reserved
//! (so a batch of capacity 2^20 costs 8 KiB until it is used), kept while the batch is
//! recycled (so steady-state reuse allocates nothing), and all but the first are given back
//! when the batch is freed.
//!
//! The table itself is replaced, and chunks freed, only with exclusive access, which the batch
//! slot's state machine provides (see `BatchSlot`); everything else reads through atomics.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering::*};

use crate::batch::RequestSlot;

/// Requests per chunk (72 KiB of request state).
pub(crate) const CHUNK: usize = 1024;

/// Chunked request storage. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct RequestStore {
    /// One pointer per chunk: null until allocated, else `CHUNK` initialised `RequestSlot`s
    /// from `Box<[RequestSlot]>::into_raw`.
    table: UnsafeCell<Box<[AtomicPtr<RequestSlot>]>>,
    /// Requests storable without allocating (the leading allocated chunks): a hint for
    /// choosing a slot, readable without exclusive access.
    ready: AtomicU32,
}

// SAFETY: the table box is replaced only through the `unsafe` exclusive methods, whose callers
// guarantee no other thread uses the store meanwhile; all other access is shared reads of the
// box and atomic operations on its pointers. The chunks hold atomics only (`RequestSlot`).
unsafe impl Sync for RequestStore {}
// SAFETY: the store owns its chunks, like a `Vec<Box<[RequestSlot]>>`.
unsafe impl Send for RequestStore {}

fn new_chunk() -> *mut RequestSlot {
    let chunk: Box<[RequestSlot]> = (0..CHUNK).map(|_| RequestSlot::default()).collect();
    Box::into_raw(chunk).cast()
}

/// Frees a chunk made by [`new_chunk`] (null is ignored).
///
/// # Safety
///
/// `p` is null or came from `new_chunk` and is freed once, with no reference into it left.
unsafe fn free_chunk(p: *mut RequestSlot) {
    if !p.is_null() {
        // SAFETY: per the contract, `p` is the start of a leaked `Box<[RequestSlot]>` of
        // `CHUNK` entries that nobody references any more.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, CHUNK)) });
    }
}

impl RequestStore {
    fn table(&self) -> &[AtomicPtr<RequestSlot>] {
        // SAFETY: shared access to the box; it is replaced only by the exclusive methods, whose
        // callers guarantee no shared access overlaps them.
        unsafe { &*self.table.get() }
    }

    /// Requests storable without allocating.
    pub(crate) fn ready(&self) -> u32 {
        self.ready.load(Relaxed)
    }

    /// Request `i`, if its chunk exists.
    #[inline]
    pub(crate) fn get(&self, i: u32) -> Option<&RequestSlot> {
        let i = i as usize;
        let p = self.table().get(i / CHUNK)?.load(Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: a non-null entry points at `CHUNK` live entries (freed only with exclusive
        // access, which excludes this shared borrow) and `i % CHUNK < CHUNK`.
        Some(unsafe { &*p.add(i % CHUNK) })
    }

    /// Allocates the missing chunks of requests `first..first + n` (nothing once they exist).
    pub(crate) fn ensure(&self, first: u32, n: u32) {
        if n == 0 {
            return;
        }
        let (from, to) = (first as usize / CHUNK, (first + n - 1) as usize / CHUNK);
        for slot in self.table().iter().take(to + 1).skip(from) {
            if !slot.load(Acquire).is_null() {
                continue;
            }
            let p = new_chunk();
            if slot
                .compare_exchange(std::ptr::null_mut(), p, AcqRel, Acquire)
                .is_err()
            {
                // SAFETY: `p` is ours, never published.
                unsafe { free_chunk(p) };
            }
        }
    }

    /// Makes room for `capacity` requests in the table (chunks still come on use) and
    /// refreshes the hint.
    ///
    /// # Safety
    ///
    /// No other thread uses the store during the call.
    pub(crate) unsafe fn fit(&self, capacity: u32) {
        let needed = (capacity as usize).div_ceil(CHUNK);
        // SAFETY: exclusive access per the contract.
        let table = unsafe { &mut *self.table.get() };
        if table.len() < needed {
            let mut bigger: Box<[AtomicPtr<RequestSlot>]> = (0..needed)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect();
            for (new, old) in bigger.iter_mut().zip(table.iter_mut()) {
                *new.get_mut() = *old.get_mut();
            }
            *table = bigger;
        }
        self.refresh_hint();
    }

    /// Gives back every chunk but the first, and the table beyond it.
    ///
    /// # Safety
    ///
    /// No other thread uses the store during the call, and no reference into it is left.
    pub(crate) unsafe fn trim(&self) {
        // SAFETY: exclusive access per the contract.
        let table = unsafe { &mut *self.table.get() };
        if table.len() > 1 {
            for p in table.iter_mut().skip(1) {
                // SAFETY: exclusive, and nothing references the chunk (contract).
                unsafe { free_chunk(*p.get_mut()) };
            }
            let first = *table[0].get_mut();
            *table = Box::new([AtomicPtr::new(first)]);
        }
        self.refresh_hint();
    }

    fn refresh_hint(&self) {
        let present = self
            .table()
            .iter()
            .take_while(|p| !p.load(Acquire).is_null())
            .count();
        self.ready.store((present * CHUNK) as u32, Relaxed);
    }
}

impl Drop for RequestStore {
    fn drop(&mut self) {
        for p in self.table.get_mut().iter_mut() {
            // SAFETY: `&mut self`: nothing else references the chunks.
            unsafe { free_chunk(*p.get_mut()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_come_on_use_and_go_on_trim() {
        let s = RequestStore::default();
        // SAFETY: the test is the only user.
        unsafe { s.fit(3 * CHUNK as u32) };
        assert_eq!(s.ready(), 0);
        assert!(s.get(0).is_none());
        s.ensure(CHUNK as u32 - 1, 2);
        assert!(s.get(0).is_some() && s.get(CHUNK as u32).is_some());
        assert!(s.get(2 * CHUNK as u32).is_none());
        assert!(s.get(3 * CHUNK as u32).is_none());
        // SAFETY: as above.
        unsafe { s.fit(2 * CHUNK as u32) };
        assert_eq!(s.ready(), 2 * CHUNK as u32);
        // SAFETY: as above, and no reference into the store is held.
        unsafe { s.trim() };
        assert_eq!(s.ready(), CHUNK as u32);
        assert!(s.get(CHUNK as u32).is_none());
        assert!(s.get(1).is_some());
    }
}

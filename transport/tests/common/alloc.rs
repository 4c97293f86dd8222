//! A counting global allocator for the zero-allocation tests. Included by those test crates
//! only (`#[path = "common/alloc.rs"] mod counting;`): it installs itself as the allocator.
#![allow(dead_code)] // Each test crate that includes it uses a different part.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    /// Bytes allocated minus bytes freed by the calling thread.
    static NET_BYTES: Cell<i64> = const { Cell::new(0) };
}
/// Allocations on any thread (a target's service threads included) while `WATCH` is set.
static ALL_ALLOCS: AtomicU64 = AtomicU64::new(0);
static WATCH: AtomicBool = AtomicBool::new(false);

fn add_bytes(n: i64) {
    NET_BYTES.with(|c| c.set(c.get() + n));
}

fn count() {
    ALLOCS.with(|c| c.set(c.get() + 1));
    if WATCH.load(Ordering::Relaxed) {
        ALL_ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator; the counters are const-initialised thread-locals
// and atomics, so counting never allocates or recurses.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        add_bytes(layout.size() as i64);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add_bytes(-(layout.size() as i64));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        add_bytes(new_size as i64 - layout.size() as i64);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made so far by the calling thread.
pub fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

/// Bytes the calling thread allocated and has not freed (frees by other threads of its
/// allocations are not subtracted).
pub fn net_bytes() -> i64 {
    NET_BYTES.with(|c| c.get())
}

/// Starts counting allocations on every thread.
pub fn watch_all() {
    ALL_ALLOCS.store(0, Ordering::SeqCst);
    WATCH.store(true, Ordering::SeqCst);
}

/// Stops counting on every thread and returns what was counted since [`watch_all`].
pub fn stop_watching() -> u64 {
    WATCH.store(false, Ordering::SeqCst);
    ALL_ALLOCS.load(Ordering::SeqCst)
}

/// A positive control: fails unless this allocator really counts, so a zero count proves
/// something.
pub fn assert_counting() {
    let before = allocs();
    drop(std::hint::black_box(vec![0u8; 64]));
    assert!(allocs() > before, "the counting allocator is not installed");
}

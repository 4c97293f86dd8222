//! One-time initialisation without std: an atomic state plus a slot.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU8, Ordering};

use crate::error::LoadError;

const EMPTY: u8 = 0;
const RUNNING: u8 = 1;
const READY: u8 = 2;

/// Holds the result of a load, computed by the first caller; racing callers
/// wait (yielding the CPU) until it is published.
pub(crate) struct OnceLoad<T> {
    state: AtomicU8,
    slot: UnsafeCell<MaybeUninit<Result<T, LoadError>>>,
}

// SAFETY: the slot is written once, by the thread that won the EMPTY->RUNNING
// exchange, before the Release store of READY; it is read only after an
// Acquire load of READY. `T` is shared across threads, hence `T: Sync`, and it
// is created on one thread and read on others, hence `T: Send`.
unsafe impl<T: Send + Sync> Sync for OnceLoad<T> {}

/// Puts the state back to EMPTY if the initialiser unwinds, so that waiting
/// threads retry instead of spinning forever.
struct ResetOnUnwind<'a>(&'a AtomicU8);

impl Drop for ResetOnUnwind<'_> {
    fn drop(&mut self) {
        self.0.store(EMPTY, Ordering::Release);
    }
}

impl<T> OnceLoad<T> {
    pub(crate) const fn new() -> Self {
        Self {
            state: AtomicU8::new(EMPTY),
            slot: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    pub(crate) fn get_or_init(
        &'static self,
        init: impl FnOnce() -> Result<T, LoadError>,
    ) -> Result<&'static T, LoadError> {
        let mut init = Some(init);
        loop {
            match self
                .state
                .compare_exchange(EMPTY, RUNNING, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => {
                    let guard = ResetOnUnwind(&self.state);
                    // `init` is taken exactly once: only the winner of the
                    // exchange gets here, and it leaves the loop below.
                    let result = match init.take() {
                        Some(f) => f(),
                        None => unreachable_state(),
                    };
                    // SAFETY: this thread holds RUNNING, so nobody else reads
                    // or writes the slot until READY is published.
                    unsafe { (*self.slot.get()).write(result) };
                    core::mem::forget(guard);
                    self.state.store(READY, Ordering::Release);
                    break;
                }
                Err(READY) => break,
                // Another thread is inside dlopen: give it the CPU.
                // SAFETY: sched_yield has no preconditions.
                Err(_) => unsafe {
                    libc::sched_yield();
                },
            }
        }
        // SAFETY: READY was observed (Acquire) or stored by this thread, so
        // the slot is initialised and never written again.
        match unsafe { (*self.slot.get()).assume_init_ref() } {
            Ok(v) => Ok(v),
            Err(e) => Err(*e),
        }
    }
}

#[cold]
fn unreachable_state() -> ! {
    // Only reachable if the initialiser were taken twice, which the state
    // machine rules out; abort rather than continue with an empty slot.
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

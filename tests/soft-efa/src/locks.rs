//! The provider's spinlocks that stay held between two calls, and the same-thread deadlocks
//! they make (rdma-core's `providers/efa/verbs.c`).
//!
//! - A QP's send-queue lock, without a thread domain shared by the QP and its send CQ
//!   (`need_lock`): taken by `ibv_wr_start`, released by `ibv_wr_complete` / `ibv_wr_abort`,
//!   and taken again to retire each send completion of the QP (`efa_wq_cqe_finalize`).
//! - A CQ's lock, unless the CQ is single-threaded or on a parent domain with a thread domain:
//!   held from a successful `ibv_start_poll` to `ibv_end_poll`, and taken by `ibv_destroy_qp`
//!   for the QP's CQs (`efa_lock_cqs`).
//!
//! soft-efa keeps no such locks (its state has its own), so it cannot wait like the provider.
//! It records which thread holds each, and a call that would make the provider spin for ever
//! on a lock its own thread holds aborts the process with a message naming both instead: a
//! program that would hang on EFA fails loudly here.

use std::sync::atomic::{AtomicU64, Ordering};

/// A lock's holder: the key of the thread that holds it, 0 when none does.
#[derive(Debug, Default)]
pub struct Holder(AtomicU64);

impl Holder {
    /// This thread takes the lock.
    pub fn take(&self) {
        self.0.store(me(), Ordering::Relaxed);
    }

    /// The lock is released.
    pub fn release(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Whether this thread holds the lock.
    pub fn mine(&self) -> bool {
        self.0.load(Ordering::Relaxed) == me()
    }
}

/// This thread's key: the address of a thread-local, unique among live threads and never 0.
fn me() -> u64 {
    thread_local! {
        static KEY: u8 = const { 0 };
    }
    KEY.with(|k| k as *const u8 as u64)
}

/// The provider would spin for ever here on a lock this thread holds: say so and abort.
#[cold]
pub fn deadlock(what: std::fmt::Arguments<'_>) -> ! {
    eprintln!("soft-efa: deadlock: {what}; rdma-core's efa provider spins for ever here");
    std::process::abort()
}

//! Provider locks a thread holds across calls of this crate, and the calls they would deadlock.
//!
//! rdma-core's providers take spinlocks that stay held between two verbs calls:
//!
//! - **A batch's send-queue lock.** Without a thread domain shared by the QP and its send CQ,
//!   EFA's provider takes the QP's send-queue lock in `ibv_wr_start` and releases it in
//!   `ibv_wr_complete` or `ibv_wr_abort`. Polling the send CQ takes the same lock to retire each
//!   send completion of that QP (`efa_wq_cqe_finalize`, from `ibv_next_poll` and
//!   `ibv_end_poll`), so a thread that polls it with its own batch open spins for ever once such
//!   a completion is due. That poll is refused with
//!   [`Error::PollInBatch`](crate::Error::PollInBatch) instead, at every poll, not only when a
//!   completion happens to be due.
//! - **A poll pass's CQ lock.** A CQ that is not single-threaded is locked from
//!   `ibv_start_poll` to `ibv_end_poll`, and destroying a QP takes the locks of its CQs (EFA's
//!   and mlx5's `destroy_qp`). A QP dropped on this thread inside a pass over one of its CQs (in
//!   a [`Cq::poll_with`](crate::Cq::poll_with) closure, say) is therefore destroyed when the last
//!   such pass ends, not at once.
//!
//! Both are recorded per thread. A [`Batch`](crate::Batch) and a [`Poll`](crate::Poll) are not
//! `Send`, so each opens and closes on the same thread.

use std::cell::{Cell, RefCell};

/// Locks held at once on one thread that are told apart by CQ; more are counted only.
const TRACKED: usize = 4;

/// Locks this thread holds: the CQ each blocks (raw address, 0 for a free slot) and a value
/// kept with it (the QP number of a batch).
#[derive(Clone, Copy)]
struct Open {
    cqs: [(usize, u32); TRACKED],
    /// Locks past [`TRACKED`], whose CQ is not recorded: every CQ counts as blocked meanwhile.
    untracked: u32,
}

impl Open {
    const NONE: Open = Open {
        cqs: [(0, 0); TRACKED],
        untracked: 0,
    };

    fn enter(&mut self, cq: usize, value: u32) {
        match self.cqs.iter_mut().find(|(c, _)| *c == 0) {
            Some(slot) => *slot = (cq, value),
            None => self.untracked += 1,
        }
    }

    fn leave(&mut self, cq: usize, value: u32) {
        match self.cqs.iter_mut().find(|e| **e == (cq, value)) {
            Some(slot) => *slot = (0, 0),
            None => self.untracked = self.untracked.saturating_sub(1),
        }
    }

    /// The value of a lock on `cq` (`u32::MAX` when some locks are not told apart).
    fn on(&self, cq: usize) -> Option<u32> {
        if self.untracked != 0 {
            return Some(u32::MAX);
        }
        self.cqs
            .iter()
            .find(|(c, _)| *c == cq && cq != 0)
            .map(|&(_, v)| v)
    }
}

thread_local! {
    /// Open batches on QPs whose provider holds the send-queue lock, by send CQ.
    static BATCHES: Cell<Open> = const { Cell::new(Open::NONE) };
    /// How many there are: the one read a poll makes while this thread holds none.
    static BATCH_COUNT: Cell<u32> = const { Cell::new(0) };
    /// Open poll passes on CQs whose provider holds the CQ lock through the pass.
    static PASSES: Cell<Open> = const { Cell::new(Open::NONE) };
    /// QPs dropped inside a pass over one of their CQs, destroyed when it ends.
    static DEFERRED: RefCell<Vec<Deferred>> = const { RefCell::new(Vec::new()) };
    /// Whether [`DEFERRED`] may hold anything: a plain flag, so a pass that defers nothing
    /// never touches the list (whose first use registers a thread-exit destructor, which can
    /// allocate).
    static ANY_DEFERRED: Cell<bool> = const { Cell::new(false) };
}

fn update(set: &'static std::thread::LocalKey<Cell<Open>>, f: impl FnOnce(&mut Open)) {
    set.with(|s| {
        let mut open = s.get();
        f(&mut open);
        s.set(open);
    });
}

/// The lock a batch holds for its whole life: the send CQ it blocks (raw address) and the QP.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendLock {
    pub(crate) cq: usize,
    pub(crate) qpn: u32,
}

/// Records that this thread opened a batch holding `lock`.
pub(crate) fn enter_batch(lock: SendLock) {
    update(&BATCHES, |o| o.enter(lock.cq, lock.qpn));
    BATCH_COUNT.with(|n| n.set(n.get() + 1));
}

/// Records that this thread closed the batch that held `lock`.
pub(crate) fn leave_batch(lock: SendLock) {
    update(&BATCHES, |o| o.leave(lock.cq, lock.qpn));
    BATCH_COUNT.with(|n| n.set(n.get().saturating_sub(1)));
}

/// The QP whose open batch on this thread makes polling `cq` deadlock, if any (`u32::MAX` when
/// more batches are open than are told apart).
#[inline]
pub(crate) fn batch_blocking(cq: usize) -> Option<u32> {
    if BATCH_COUNT.with(Cell::get) == 0 {
        return None;
    }
    BATCHES.with(|o| o.get().on(cq))
}

/// Records that this thread started a pass over `cq` that holds its lock.
#[inline]
pub(crate) fn enter_pass(cq: usize) {
    update(&PASSES, |o| o.enter(cq, 0));
}

/// Records that the pass over `cq` ended, and destroys the QPs it held back.
#[inline]
pub(crate) fn leave_pass(cq: usize) {
    update(&PASSES, |o| o.leave(cq, 0));
    if ANY_DEFERRED.with(Cell::get) {
        run_deferred();
    }
}

/// Whether this thread is inside a pass over one of `cqs` that holds its lock.
pub(crate) fn in_pass(cqs: [usize; 2]) -> bool {
    PASSES.with(|o| {
        let open = o.get();
        cqs.iter().any(|&cq| open.on(cq).is_some())
    })
}

/// A QP's destruction, held back until no pass on this thread holds one of its CQs' locks.
pub(crate) struct Deferred {
    pub(crate) cqs: [usize; 2],
    pub(crate) destroy: Box<dyn FnOnce()>,
}

/// Holds `d` back until the passes over its CQs on this thread have ended.
pub(crate) fn defer(d: Deferred) {
    // While the thread exits, past the list's destruction, no pass can end any more: `d` is
    // dropped unrun, and the QP leaks rather than spin on its CQ's lock.
    let _ = DEFERRED.try_with(|list| list.borrow_mut().push(d));
    ANY_DEFERRED.with(|a| a.set(true));
}

/// Destroys the held-back QPs no pass blocks any more (outside the list's borrow: a destroy may
/// drop the last handle of something that defers again).
#[cold]
fn run_deferred() {
    let ready: Vec<Deferred> = DEFERRED.with(|list| {
        let mut list = list.borrow_mut();
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut *list)
            .into_iter()
            .partition(|d| !in_pass(d.cqs));
        ANY_DEFERRED.with(|a| a.set(!wait.is_empty()));
        *list = wait;
        ready
    });
    for d in ready {
        (d.destroy)();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn lock(cq: usize, qpn: u32) -> SendLock {
        SendLock { cq, qpn }
    }

    #[test]
    fn a_poll_is_blocked_only_by_a_batch_on_its_own_cq_and_thread() {
        let a = lock(0x1000, 7);
        enter_batch(a);
        assert_eq!(batch_blocking(0x1000), Some(7));
        assert_eq!(batch_blocking(0x2000), None, "another CQ");
        let other = std::thread::spawn(|| batch_blocking(0x1000))
            .join()
            .unwrap();
        assert_eq!(other, None, "another thread only waits for the lock");
        leave_batch(a);
        assert_eq!(batch_blocking(0x1000), None);
    }

    #[test]
    fn two_batches_on_one_cq_block_it_until_both_close() {
        let (a, b) = (lock(0x1000, 7), lock(0x1000, 8));
        enter_batch(a);
        enter_batch(b);
        leave_batch(a);
        assert_eq!(batch_blocking(0x1000), Some(8));
        leave_batch(b);
        assert_eq!(batch_blocking(0x1000), None);
    }

    #[test]
    fn batches_past_the_tracked_ones_block_every_cq_until_they_close() {
        let locks: Vec<_> = (1..=TRACKED + 2)
            .map(|i| lock(i * 0x1000, i as u32))
            .collect();
        locks.iter().for_each(|&l| enter_batch(l));
        assert_eq!(
            batch_blocking(0x9999_0000),
            Some(u32::MAX),
            "untracked: refuse all"
        );
        // Closing in any order frees the slots and the count alike.
        for &l in locks.iter().rev().take(2) {
            leave_batch(l);
        }
        assert_eq!(batch_blocking(0x9999_0000), None);
        assert_eq!(batch_blocking(0x1000), Some(1));
        locks.iter().take(TRACKED).for_each(|&l| leave_batch(l));
        assert_eq!(batch_blocking(0x1000), None);
    }

    fn deferred(cqs: [usize; 2], ran: &Rc<Cell<u32>>) -> Deferred {
        let ran = Rc::clone(ran);
        Deferred {
            cqs,
            destroy: Box::new(move || ran.set(ran.get() + 1)),
        }
    }

    #[test]
    fn a_qp_dropped_inside_passes_is_destroyed_when_the_last_of_them_ends() {
        let ran = Rc::new(Cell::new(0));
        enter_pass(0xa000);
        enter_pass(0xb000);
        assert!(in_pass([0xa000, 0xc000]) && in_pass([0xc000, 0xb000]));
        assert!(!in_pass([0xc000, 0xd000]));
        defer(deferred([0xa000, 0xb000], &ran));
        defer(deferred([0xb000, 0xb000], &ran));
        leave_pass(0xa000);
        assert_eq!(ran.get(), 0, "the pass over its other CQ still holds it");
        leave_pass(0xb000);
        assert_eq!(ran.get(), 2);
        assert!(DEFERRED.with(|d| d.borrow().is_empty()));
    }

    #[test]
    fn passes_elsewhere_do_not_hold_a_qp_back() {
        enter_pass(0xe000);
        let here = in_pass([0xa000, 0xb000]);
        let there = std::thread::spawn(|| in_pass([0xe000, 0xe000]))
            .join()
            .unwrap();
        leave_pass(0xe000);
        assert!(!here, "another CQ");
        assert!(!there, "another thread");
        assert!(!in_pass([0xe000, 0xe000]), "ended");
    }
}

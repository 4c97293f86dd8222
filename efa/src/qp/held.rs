//! The send-queue lock an open batch holds on EFA, and the polls it would deadlock.
//!
//! Without a thread domain shared by the QP and its send CQ, rdma-core's EFA provider takes the
//! QP's send-queue spinlock in `ibv_wr_start` and releases it only in `ibv_wr_complete` or
//! `ibv_wr_abort`. Polling the QP's send CQ takes the same lock to retire each send completion of
//! that QP (`efa_wq_cqe_finalize`, from `ibv_next_poll` and `ibv_end_poll`). A thread that polls
//! that CQ while its own batch is open therefore spins for ever, as soon as one of the QP's send
//! completions is at the head of the CQ.
//!
//! This module records, per thread, the send CQs of the batches open on such QPs. A poll of one
//! of them is refused with [`Error::PollInBatch`](crate::Error::PollInBatch) instead: a typed
//! error at every poll, where the provider would hang only when a completion happens to be due.
//! A [`Batch`](crate::Batch) is not `Send`, so it opens and closes on the same thread.

use std::cell::Cell;

/// Batches open on one thread at once that are tracked by CQ; more are tracked by count only.
const TRACKED: usize = 4;

/// The send CQs (their raw address, 0 for a free slot) and QP numbers of this thread's open
/// batches on QPs that hold the send-queue lock.
#[derive(Clone, Copy)]
struct Open {
    cqs: [(usize, u32); TRACKED],
    /// Open batches past [`TRACKED`], whose CQ is not recorded: every poll is refused meanwhile.
    untracked: u32,
}

thread_local! {
    static OPEN: Cell<Open> = const {
        Cell::new(Open {
            cqs: [(0, 0); TRACKED],
            untracked: 0,
        })
    };
}

/// The lock a batch holds for its whole life: the send CQ it blocks (raw address) and the QP.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendLock {
    pub(crate) cq: usize,
    pub(crate) qpn: u32,
}

/// Records that this thread opened a batch holding `lock`.
pub(crate) fn enter(lock: SendLock) {
    OPEN.with(|o| {
        let mut open = o.get();
        match open.cqs.iter_mut().find(|(cq, _)| *cq == 0) {
            Some(slot) => *slot = (lock.cq, lock.qpn),
            None => open.untracked += 1,
        }
        o.set(open);
    });
}

/// Records that this thread closed the batch that held `lock`.
pub(crate) fn leave(lock: SendLock) {
    OPEN.with(|o| {
        let mut open = o.get();
        let entry = (lock.cq, lock.qpn);
        match open.cqs.iter_mut().find(|e| **e == entry) {
            Some(slot) => *slot = (0, 0),
            None => open.untracked = open.untracked.saturating_sub(1),
        }
        o.set(open);
    });
}

/// The QP whose open batch on this thread makes polling `cq` deadlock, if any (`u32::MAX` when
/// more batches are open than are tracked by CQ).
#[inline]
pub(crate) fn blocking(cq: usize) -> Option<u32> {
    OPEN.with(|o| {
        let open = o.get();
        if open.untracked != 0 {
            return Some(u32::MAX);
        }
        open.cqs
            .iter()
            .find(|(c, _)| *c == cq && cq != 0)
            .map(|&(_, qpn)| qpn)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(cq: usize, qpn: u32) -> SendLock {
        SendLock { cq, qpn }
    }

    #[test]
    fn a_poll_is_blocked_only_by_a_batch_on_its_own_cq_and_thread() {
        let a = lock(0x1000, 7);
        enter(a);
        assert_eq!(blocking(0x1000), Some(7));
        assert_eq!(blocking(0x2000), None, "another CQ");
        let other = std::thread::spawn(|| blocking(0x1000)).join().unwrap();
        assert_eq!(other, None, "another thread only waits for the lock");
        leave(a);
        assert_eq!(blocking(0x1000), None);
    }

    #[test]
    fn two_batches_on_one_cq_block_it_until_both_close() {
        let (a, b) = (lock(0x1000, 7), lock(0x1000, 8));
        enter(a);
        enter(b);
        leave(a);
        assert_eq!(blocking(0x1000), Some(8));
        leave(b);
        assert_eq!(blocking(0x1000), None);
    }

    #[test]
    fn batches_past_the_tracked_ones_block_every_cq_until_they_close() {
        let locks: Vec<_> = (1..=TRACKED + 2)
            .map(|i| lock(i * 0x1000, i as u32))
            .collect();
        locks.iter().for_each(|&l| enter(l));
        assert_eq!(
            blocking(0x9999_0000),
            Some(u32::MAX),
            "untracked: refuse all"
        );
        // Closing in any order frees the slots and the count alike.
        for &l in locks.iter().rev().take(2) {
            leave(l);
        }
        assert_eq!(blocking(0x9999_0000), None);
        assert_eq!(blocking(0x1000), Some(1));
        locks.iter().take(TRACKED).for_each(|&l| leave(l));
        assert_eq!(blocking(0x1000), None);
    }
}

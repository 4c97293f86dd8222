//! Retrying work requests that fail for a transient reason: on another rail at once, or on the
//! same rail after a backoff when the request has only one.
//!
//! A slice that completes with a transient reason ([`RetryPolicy::is_transient`]: the peer or
//! the path did not answer, a receiver was not ready, the queue was flushed, the connection
//! dropped) is posted again in place of the failed work request, so its request and batch
//! counts do not move: the request completes once, with the retry's outcome. The retry goes
//! on another rail of the request's fabric, or, for the reasons a short wait can cure
//! ([`RetryPolicy::may_retry_on_same_rail`]), on the same rail after a backoff. A peer that
//! stayed silent through the fabric's own timeout is not asked again on the same rail: that
//! would only double the time its death takes to be reported. Permanent reasons (bad address,
//! rights, lengths, keys, a peer that is gone) are never retried. Each request may retry up to
//! [`RetryPolicy::max_retries`] times per slice in all; a request of more than
//! [`MAX_RETRY_SLICES`] slices is not retried (its slice index does not fit the work request's
//! token). Retries are counted per engine ([`Engine::retries`](crate::Engine::retries), and
//! in [`Engine::metrics`](crate::Engine::metrics)).
//!
//! Only the worker's own endpoint retries; the work requests of a dropped worker complete as
//! they come.

use std::time::{Duration, Instant};

use crate::fabric::{Completion, WorkRequest};
use crate::FailReason;

/// Most slices a request may have and still be retried (the token's slice field).
pub const MAX_RETRY_SLICES: u64 = 1 << 12;
/// Most retries per slice a policy may allow.
pub const MAX_RETRIES: u32 = 16;
/// Retries a worker may hold back at once (waiting for a backoff or queue room); a failure
/// past this completes without retry.
pub(crate) const QUEUE: usize = 256;

/// When failed work requests are posted again (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries per slice, on average over the request (`0` turns retries off).
    pub max_retries: u32,
    /// Wait before a retry on the same rail; doubled on each further retry of the request.
    /// A retry on another rail goes at once.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    /// Two retries per slice, 1 ms backoff.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            backoff: Duration::from_millis(1),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub const OFF: RetryPolicy = RetryPolicy {
        max_retries: 0,
        backoff: Duration::ZERO,
    };

    /// Whether a work request that failed for `reason` may succeed if posted again.
    pub const fn is_transient(reason: FailReason) -> bool {
        matches!(
            reason,
            FailReason::Flushed
                | FailReason::RemoteRnr
                | FailReason::UnresponsiveRemote
                | FailReason::UnreachableRemote
                | FailReason::Io
        )
    }

    /// Whether a retry on the rail that failed, after a backoff, may cure `reason`: a receiver
    /// not ready, a flushed queue, a dropped connection. A peer or path that did not answer
    /// within the fabric's own timeout (`UNRESP_REMOTE`, `UNREACH_REMOTE`) is retried on
    /// another rail only.
    pub const fn may_retry_on_same_rail(reason: FailReason) -> bool {
        matches!(
            reason,
            FailReason::Flushed | FailReason::RemoteRnr | FailReason::Io
        )
    }

    /// The wait before retry number `retry` (counted from 0) of a request on the same rail.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        self.backoff.saturating_mul(1 << retry.min(10))
    }
}

/// A work request held back until `due` (a backoff) or until its rail has room: a retry, or a
/// notification whose rail a retry filled first.
#[derive(Clone, Copy)]
struct Held {
    wr: WorkRequest,
    due: Option<Instant>,
    /// The reason it failed, reported if it cannot be posted in the end.
    reason: FailReason,
    /// Whether it is a retry (counted as one once posted).
    retry: bool,
}

/// A worker's held-back retries and notifications (capacity [`QUEUE`], allocated once).
pub(crate) struct RetryQueue {
    held: Vec<Held>,
}

impl RetryQueue {
    pub(crate) fn new() -> Self {
        RetryQueue {
            held: Vec::with_capacity(QUEUE),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// Holds `wr` back; `false` when the queue is full.
    pub(crate) fn hold(
        &mut self,
        wr: WorkRequest,
        due: Option<Instant>,
        reason: FailReason,
    ) -> bool {
        self.push(Held {
            wr,
            due,
            reason,
            retry: true,
        })
    }

    /// Holds back a notification until its rail has room (it failed for no reason yet: it is
    /// reported as [`FailReason::Flushed`] if it is never posted); `false` when the queue is full.
    pub(crate) fn hold_notify(&mut self, wr: WorkRequest) -> bool {
        self.push(Held {
            wr,
            due: None,
            reason: FailReason::Flushed,
            retry: false,
        })
    }

    fn push(&mut self, h: Held) -> bool {
        if self.held.len() == QUEUE {
            return false;
        }
        self.held.push(h);
        true
    }

    /// Posts what is due through `post` (which returns whether the work request was taken);
    /// keeps the rest. Returns how many retries were posted.
    pub(crate) fn post_due(
        &mut self,
        now: Instant,
        mut post: impl FnMut(&WorkRequest) -> bool,
    ) -> usize {
        let mut retries = 0;
        self.held.retain(|h| {
            let keep = h.due.is_some_and(|d| d > now) || !post(&h.wr);
            retries += (!keep && h.retry) as usize;
            keep
        });
        retries
    }

    /// Empties the queue: each held work request as the completion it never got, with the
    /// reason it first failed for.
    pub(crate) fn drain_failed(&mut self) -> impl Iterator<Item = Completion> + '_ {
        self.held.drain(..).map(|h| Completion {
            token: h.wr.token,
            error: Some(h.reason),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_reasons_are_retried() {
        let transient: Vec<_> = FailReason::ALL
            .into_iter()
            .filter(|r| RetryPolicy::is_transient(*r))
            .collect();
        assert_eq!(
            transient,
            [
                FailReason::Flushed,
                FailReason::RemoteRnr,
                FailReason::UnresponsiveRemote,
                FailReason::UnreachableRemote,
                FailReason::Io
            ]
        );
    }

    #[test]
    fn silent_peers_are_retried_on_another_rail_only() {
        let same: Vec<_> = FailReason::ALL
            .into_iter()
            .filter(|r| RetryPolicy::may_retry_on_same_rail(*r))
            .collect();
        assert_eq!(
            same,
            [FailReason::Flushed, FailReason::RemoteRnr, FailReason::Io]
        );
        assert!(same.iter().all(|r| RetryPolicy::is_transient(*r)));
    }

    #[test]
    fn backoff_doubles_and_saturates() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(0), Duration::from_millis(1));
        assert_eq!(p.backoff(3), Duration::from_millis(8));
        assert_eq!(p.backoff(40), Duration::from_millis(1024));
        let huge = RetryPolicy {
            backoff: Duration::MAX,
            ..p
        };
        assert_eq!(huge.backoff(2), Duration::MAX);
    }

    #[test]
    fn held_retries_go_when_due_and_taken() {
        let wr = |token| WorkRequest {
            token,
            op: crate::fabric::WorkOp::Read,
            rail: 0,
            peer: 0,
            remote_rail: 0,
            local_addr: 0,
            local_key: 0,
            remote_addr: 0,
            remote_key: 0,
            len: 1,
        };
        let now = Instant::now();
        let mut q = RetryQueue::new();
        assert!(q.hold(wr(1), None, FailReason::Io));
        assert!(q.hold(wr(2), Some(now + Duration::from_secs(60)), FailReason::Io));
        assert!(q.hold(wr(3), None, FailReason::Flushed));
        assert!(q.hold_notify(wr(4)));
        assert!(q.hold_notify(wr(5)));
        // 3's and 5's rails are full: 1 and 4 go, and only 1 counts as a retry.
        let mut posted = vec![];
        assert_eq!(
            q.post_due(now, |w| w.token != 3 && w.token != 5 && {
                posted.push(w.token);
                true
            }),
            1
        );
        assert_eq!((posted, q.len()), (vec![1, 4], 3));
        let failed: Vec<_> = q
            .drain_failed()
            .map(|c| (c.token, c.error.unwrap()))
            .collect();
        assert_eq!(
            failed,
            [
                (2, FailReason::Io),
                (3, FailReason::Flushed),
                (5, FailReason::Flushed)
            ]
        );
        for t in 0..QUEUE as u64 {
            assert!(q.hold(wr(t), None, FailReason::Io));
        }
        assert!(!q.hold(wr(0), None, FailReason::Io));
        assert!(!q.hold_notify(wr(0)));
    }
}

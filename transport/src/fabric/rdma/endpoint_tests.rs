//! The shared RDMA core against a fake fabric: runs, send-queue room, refusals and failed
//! doorbells, every accepted request completing exactly once, and no allocation.

use super::*;
use crate::fabric::WorkOp;

#[path = "../../../tests/common/alloc.rs"]
mod counting;

/// Queues of the fake: one per local rail (`rail` 0..4); rail 3 is "another path".
const RAILS: usize = 4;
const OTHER_PATH: u16 = 3;
/// A peer the fake has no route to.
const UNKNOWN_PEER: u32 = 9;

/// A fake fabric: the device completes what it was given, in order, on the next poll.
struct Fake {
    depth: u32,
    queues: [SendQueue; RAILS],
    /// Requests on the device (queue, token), completed by `poll`.
    device: VecDeque<(usize, u64)>,
    /// Requests taken by the other path, completed by `poll`.
    other: VecDeque<u64>,
    /// Room of the other path.
    other_room: usize,
    /// Post-time refusal of single requests: tokens divisible by this (0: none).
    refuse_every: u64,
    /// The doorbell of the next run fails.
    fail_next_commit: bool,
    /// Longest run posted, and whether a run ever mixed queues or exceeded its room.
    longest_run: usize,
    bad_run: bool,
}

impl Fake {
    fn new(depth: u32) -> Self {
        Fake {
            depth,
            queues: Default::default(),
            device: VecDeque::with_capacity(RAILS * depth as usize),
            other: VecDeque::with_capacity(64),
            other_room: 64,
            refuse_every: 0,
            fail_next_commit: false,
            longest_run: 0,
            bad_run: false,
        }
    }
}

impl RdmaPoster for Fake {
    fn route(&mut self, wr: &WorkRequest) -> Route {
        if wr.peer == UNKNOWN_PEER {
            return Route::Refused(FailReason::InvalidAh);
        }
        if wr.rail == OTHER_PATH {
            if self.other.len() == self.other_room {
                return Route::Full;
            }
            self.other.push_back(wr.token);
            return Route::Taken;
        }
        Route::Queue {
            room: self.queues[usize::from(wr.rail)].room(self.depth),
        }
    }

    fn joins(&self, _first: &WorkRequest, next: &WorkRequest) -> bool {
        // Notifications travel alone, as EFA's may take the protocol QP.
        !matches!(next.op, WorkOp::Notify { .. })
    }

    fn post_run(&mut self, run: &[WorkRequest], refused: &mut Failed) -> Result<(), FailReason> {
        let q = usize::from(run[0].rail);
        self.longest_run = self.longest_run.max(run.len());
        self.bad_run |= run.iter().any(|w| usize::from(w.rail) != q)
            || run.len() as u32 > self.queues[q].room(self.depth);
        let mark = self.device.len();
        for w in run {
            if self.refuse_every != 0 && w.token % self.refuse_every == 0 {
                refused.push(w.token, FailReason::BadLength);
            } else {
                self.device.push_back((q, w.token));
            }
        }
        if std::mem::take(&mut self.fail_next_commit) {
            self.device.truncate(mark);
            return Err(FailReason::Flushed);
        }
        Ok(())
    }

    fn posted(&mut self, first: &WorkRequest, n: u32) {
        self.queues[usize::from(first.rail)].add(n);
    }

    fn poll(&mut self, out: &mut [Completion]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let token = if let Some((q, token)) = self.device.pop_front() {
                self.queues[q].outstanding -= 1;
                token
            } else if let Some(token) = self.other.pop_front() {
                token
            } else {
                break;
            };
            out[n] = Completion { token, error: None };
            n += 1;
        }
        n
    }
}

fn wr(token: u64, peer: u32, rail: u16) -> WorkRequest {
    WorkRequest {
        token,
        op: WorkOp::Write,
        rail,
        peer,
        remote_rail: 0,
        local_addr: 0x1000,
        local_key: 1,
        remote_addr: 0x2000,
        remote_key: 2,
        len: 8,
    }
}

/// Posts `wrs` to completion (polling whenever the endpoint pushes back); returns each token's
/// completion count and the failed ones' reasons.
fn run_all(ep: &mut RdmaEndpoint<Fake>, wrs: &[WorkRequest]) -> Vec<(u64, Option<FailReason>)> {
    let mut done = Vec::new();
    let mut out = [Completion::default(); 16];
    let mut i = 0;
    // Bounded: every round either posts or completes something.
    for _ in 0..10 * wrs.len() + 10 {
        i += ep.post(&wrs[i..]);
        let n = ep.poll(&mut out);
        done.extend(out[..n].iter().map(|c| (c.token, c.error)));
        if i == wrs.len() && ep.outstanding() == 0 {
            break;
        }
    }
    assert_eq!(i, wrs.len(), "everything was accepted in the end");
    assert_eq!(ep.outstanding(), 0);
    done.sort_by_key(|d| d.0);
    done
}

#[test]
fn runs_follow_queues_and_room() {
    let mut ep = RdmaEndpoint::new(Fake::new(4), 8);
    // Two queues of depth 4, requests in blocks of 3: runs 0..3 (queue 0), 3..6 (queue 1),
    // 6..7 (the last slot of queue 0); then queue 0 is full and posting stops, in order.
    let wrs: Vec<_> = (0..24).map(|t| wr(t, 0, ((t / 3) % 2) as u16)).collect();
    assert_eq!(ep.post(&wrs), 7);
    assert_eq!(ep.outstanding(), 7);
    assert_eq!(ep.poster().longest_run, 3);
    assert_eq!(
        (
            ep.poster().queues[0].in_flight(),
            ep.poster().queues[1].in_flight()
        ),
        (4, 3)
    );
    let done = run_all(&mut ep, &wrs[7..]);
    assert_eq!(done.len(), 17 + 7);
    assert!(
        !ep.poster().bad_run,
        "no run mixed queues or exceeded its room"
    );
}

#[test]
fn every_accepted_request_completes_exactly_once() {
    let mut ep = RdmaEndpoint::new(Fake::new(8), 16);
    ep.poster.refuse_every = 5;
    let wrs: Vec<_> = (1..=40)
        .map(|t| {
            let mut w = wr(
                t,
                if t % 13 == 0 { UNKNOWN_PEER } else { 0 },
                (t % 4) as u16,
            );
            if t % 7 == 0 {
                w.op = WorkOp::Notify { tag: 1 };
            }
            w
        })
        .collect();
    let done = run_all(&mut ep, &wrs);
    let tokens: Vec<u64> = done.iter().map(|d| d.0).collect();
    assert_eq!(
        tokens,
        (1..=40).collect::<Vec<_>>(),
        "each token exactly once"
    );
    for (t, e) in done {
        let want = if t % 13 == 0 {
            Some(FailReason::InvalidAh)
        } else if t % 5 == 0 && t % 4 != u64::from(OTHER_PATH) {
            Some(FailReason::BadLength)
        } else {
            None
        };
        assert_eq!(e, want, "token {t}");
    }
}

#[test]
fn a_failed_doorbell_completes_its_whole_run_once() {
    let mut ep = RdmaEndpoint::new(Fake::new(8), 8);
    ep.poster.refuse_every = 2; // token 2 is refused on its own, then the doorbell fails
    ep.poster.fail_next_commit = true;
    let wrs: Vec<_> = (1..=4).map(|t| wr(t, 0, 0)).collect();
    assert_eq!(ep.post(&wrs), 4);
    assert_eq!(
        ep.poster().queues[0].in_flight(),
        0,
        "nothing reached the queue"
    );
    let mut out = [Completion::default(); 8];
    assert_eq!(ep.poll(&mut out), 4);
    assert!(
        out[..4]
            .iter()
            .all(|c| c.error == Some(FailReason::Flushed)),
        "{out:?}"
    );
    let mut tokens: Vec<u64> = out[..4].iter().map(|c| c.token).collect();
    tokens.sort_unstable();
    assert_eq!(
        tokens,
        [1, 2, 3, 4],
        "the refused one is not completed twice"
    );
    assert_eq!(ep.outstanding(), 0);
}

#[test]
fn refusals_are_bounded_by_what_can_be_completed() {
    let mut ep = RdmaEndpoint::new(Fake::new(8), 3);
    let wrs: Vec<_> = (0..10).map(|t| wr(t, UNKNOWN_PEER, 0)).collect();
    assert_eq!(
        ep.post(&wrs),
        3,
        "no more refusals than room to complete them"
    );
    let mut out = [Completion::default(); 2];
    assert_eq!(ep.poll(&mut out), 2, "polling respects the output's length");
    assert_eq!(ep.post(&wrs[3..]), 2);
    ep.poster.other_room = 0;
    let mut out = [Completion::default(); 8];
    assert_eq!(ep.poll(&mut out), 3);
    assert_eq!(
        ep.post(&[wr(20, 0, OTHER_PATH)]),
        0,
        "a full path pushes back"
    );
}

#[test]
fn posting_and_polling_allocate_nothing() {
    let mut ep = RdmaEndpoint::new(Fake::new(64), 64);
    ep.poster.refuse_every = 3;
    let wrs: Vec<_> = (1..=32).map(|t| wr(t, 0, (t % 4) as u16)).collect();
    let mut out = [Completion::default(); 64];
    let before = counting::allocs();
    for _ in 0..100 {
        assert_eq!(ep.post(&wrs), 32);
        ep.poster.fail_next_commit = true;
        let mut got = 0;
        for _ in 0..4 {
            got += ep.poll(&mut out[got..]);
        }
        assert_eq!(got, 32);
    }
    assert_eq!(counting::allocs() - before, 0);
}

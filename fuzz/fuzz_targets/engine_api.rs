//! The engine's public API as sequences of calls: allocate, submit (valid and invalid requests,
//! foreign handles, stale batches), cancel, wait, drain, free and recycle, progress, replacing a
//! worker, and peer deaths, across two workers of one engine on the `sim` fabric with faults.
//! The sequence is decoded with `arbitrary`; both workers run on the fuzzing thread, so a run
//! is deterministic and replays.
//!
//! Checked: every call returns `Ok` or a typed error, never panics; a refused submit leaves the
//! batch as it was; the batch counters always equal the per-request states; a request never
//! goes back to `Waiting`, and once terminal it never changes (exactly one terminal state);
//! a batch with nothing in flight has only terminal requests. At the end every live batch
//! drains within a bounded time, every request is terminal, every batch frees and every
//! segment unregisters.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use transport::fabric::sim::{SimConfig, SimFabric, SimFaults, SimNetwork};
use transport::*;

const SEG: u64 = 8 << 10;
/// Most operations per input.
const MAX_OPS: usize = 64;
/// Most batch handles remembered (live and stale).
const MAX_HANDLES: usize = 8;
/// Deadline of the final drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Op {
    Allocate(usize),
    Submit {
        worker: usize,
        batch: usize,
        reqs: Vec<Req>,
    },
    Cancel(usize),
    Wait {
        worker: usize,
        batch: usize,
        micros: u64,
    },
    Drain {
        worker: usize,
        batch: usize,
        micros: u64,
    },
    Free(usize),
    Recycle(usize),
    Progress(usize),
    Check(usize),
    PeerAlive(bool),
    ReplaceWorker(usize),
    ForeignBatch,
}

#[derive(Debug, Clone, Copy)]
enum Local {
    Source,
    Sink,
    Foreign,
}

#[derive(Debug, Clone, Copy)]
struct Req {
    op: Opcode,
    local: Local,
    foreign_remote: bool,
    local_offset: u64,
    remote_offset: u64,
    len: u64,
}

fn req(u: &mut Unstructured) -> ArbResult<Req> {
    let op = match u.int_in_range(0..=2u8)? {
        0 => Opcode::Read,
        1 => Opcode::Write,
        // Tags past the engine's 16 are invalid.
        _ => Opcode::WriteWithNotify(u.int_in_range(0..=20)?),
    };
    // Mostly valid; sometimes a foreign handle, an out-of-range offset or a zero length.
    let local = match u.int_in_range(0..=15u8)? {
        0 => Local::Foreign,
        _ if op == Opcode::Read => Local::Sink,
        _ => Local::Source,
    };
    let foreign_remote = u.ratio(1, 16)?;
    let len = if u.ratio(1, 16)? {
        u.choose(&[0, SEG + 1, u64::MAX, 1 << 32])?.to_owned()
    } else {
        u.int_in_range(1..=SEG / 2)?
    };
    Ok(Req {
        op,
        local,
        foreign_remote,
        local_offset: u.int_in_range(0..=SEG)?,
        remote_offset: u.int_in_range(0..=SEG + 64)?,
        len,
    })
}

fn op(u: &mut Unstructured) -> ArbResult<Op> {
    let w = |u: &mut Unstructured| u.int_in_range(0..=1usize);
    let b = |u: &mut Unstructured| u.int_in_range(0..=MAX_HANDLES - 1);
    Ok(match u.int_in_range(0..=13u8)? {
        0 => Op::Allocate(if u.ratio(1, 8)? {
            *u.choose(&[0, MAX_BATCH_CAPACITY as usize + 1, usize::MAX])?
        } else {
            u.int_in_range(1..=24)?
        }),
        1..=4 => {
            let (worker, batch) = (w(u)?, b(u)?);
            let n = u.int_in_range(0..=6)?;
            let reqs = (0..n).map(|_| req(u)).collect::<ArbResult<_>>()?;
            Op::Submit {
                worker,
                batch,
                reqs,
            }
        }
        5 => Op::Cancel(b(u)?),
        6 => Op::Wait {
            worker: w(u)?,
            batch: b(u)?,
            micros: u.int_in_range(0..=10)?,
        },
        7 => Op::Drain {
            worker: w(u)?,
            batch: b(u)?,
            micros: u.int_in_range(0..=10)?,
        },
        8 => Op::Free(b(u)?),
        9 => Op::Recycle(b(u)?),
        10 => Op::Progress(w(u)?),
        11 => Op::Check(b(u)?),
        12 => match u.int_in_range(0..=3u8)? {
            0 => Op::PeerAlive(false),
            1 => Op::PeerAlive(true),
            2 => Op::ReplaceWorker(w(u)?),
            _ => Op::ForeignBatch,
        },
        _ => Op::Progress(w(u)?),
    })
}

/// What the fuzzer knows of a live batch: requests submitted, and each one's terminal state
/// once observed.
#[derive(Default)]
struct Track {
    submitted: u32,
    terminal: Vec<Option<RequestStatus>>,
}

struct World {
    a: Engine,
    handles: Vec<BatchId>,
    live: HashMap<BatchId, Track>,
}

impl World {
    fn handle(&self, i: usize) -> Option<BatchId> {
        (!self.handles.is_empty()).then(|| self.handles[i % self.handles.len()])
    }

    fn remember(&mut self, id: BatchId) {
        if self.handles.len() == MAX_HANDLES {
            // Forget the oldest handle; a live batch forgotten here is freed at the end.
            self.handles.remove(0);
        }
        self.handles.push(id);
        self.live.insert(id, Track::default());
    }

    /// Checks batch `id` against what is known of it: counters equal per-request states, no
    /// submitted request is `Waiting`, terminal states never change, nothing in flight means
    /// everything terminal.
    fn check(&mut self, id: BatchId) {
        let Some(track) = self.live.get_mut(&id) else {
            assert!(
                matches!(self.a.batch_status(id), Err(TransportError::StaleBatch(_))),
                "a freed or recycled batch still answers"
            );
            return;
        };
        let st = self.a.batch_status(id).expect("a live batch has a status");
        assert_eq!(st.submitted, track.submitted, "submitted count");
        let mut counts = [0u32; 5];
        for i in 0..st.submitted as usize {
            let s = self.a.request_status(id, i).expect("a submitted request");
            let k = match s {
                RequestStatus::Waiting => panic!("request {i} is Waiting after its submit"),
                RequestStatus::Pending => 0,
                RequestStatus::Completed => 1,
                RequestStatus::Failed(_) => 2,
                RequestStatus::TimedOut => 3,
                RequestStatus::Cancelled => 4,
            };
            counts[k] += 1;
            if s.is_terminal() {
                match track.terminal[i] {
                    Some(seen) => assert_eq!(seen, s, "request {i} changed terminal state"),
                    None => track.terminal[i] = Some(s),
                }
            } else {
                assert_eq!(
                    track.terminal[i], None,
                    "request {i} left its terminal state"
                );
            }
        }
        assert_eq!(
            counts,
            [
                st.pending,
                st.completed,
                st.failed,
                st.timed_out,
                st.cancelled
            ],
            "batch counters against request states ({st:?})"
        );
        if st.in_flight == 0 {
            assert_eq!(st.pending, 0, "pending requests with nothing in flight");
        }
        assert!(matches!(
            self.a.request_status(id, st.submitted as usize),
            Err(TransportError::NoSuchRequest { .. })
        ));
    }

    /// Frees or recycles `id`; checks the outcome against the batch's state.
    fn release(&mut self, id: BatchId, recycle: bool) {
        // What free/recycle would apply first, so the check below sees the same state.
        self.a.progress_dropped_workers();
        let live = self.live.contains_key(&id);
        if live {
            self.check(id);
        }
        let before = self.a.batch_status(id);
        let r = if recycle {
            self.a.recycle_batch(id)
        } else {
            self.a.free_batch(id).map(|()| id)
        };
        match r {
            Ok(new) => {
                assert!(live, "a stale batch was released");
                self.live.remove(&id);
                if recycle {
                    assert_ne!(new, id, "a recycled batch keeps its handle");
                    self.remember(new);
                    let st = self.a.batch_status(new).unwrap();
                    assert_eq!((st.submitted, st.in_flight, st.pending), (0, 0, 0));
                }
            }
            Err(TransportError::BatchBusy { .. }) => {
                assert!(live);
                assert!(before.unwrap().in_flight > 0, "busy with nothing in flight");
            }
            Err(TransportError::StaleBatch(_)) => assert!(!live, "a live batch is stale"),
            Err(e) => panic!("release: unexpected {e}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(run) = setup(&mut u) else { return };
    let ops: Vec<Op> = (0..MAX_OPS)
        .map_while(|_| (!u.is_empty()).then(|| op(&mut u).ok()).flatten())
        .collect();
    run_ops(run, ops);
});

struct Run {
    _net: Arc<SimNetwork>,
    a: Engine,
    b: Engine,
    fb: Arc<SimFabric>,
    src: SegmentId,
    sink: SegmentId,
    target: SegmentId,
    foreign_seg: SegmentId,
    remote: RemoteSegment,
    foreign_remote: RemoteSegment,
}

fn setup(u: &mut Unstructured) -> ArbResult<Run> {
    let net = SimNetwork::new();
    let meta = Arc::new(LocalRegistry::new());
    let faults = SimFaults {
        error_rate: u.int_in_range(0..=3u8)? as f64 * 0.1,
        max_delay_steps: u.int_in_range(0..=3)?,
        unresp_timeout: Duration::from_micros(20),
        ..SimFaults::default()
    };
    let sim = SimConfig {
        rails: u.int_in_range(1..=3)?,
        queue_depth: u.int_in_range(1..=8)?,
        max_rdma_size: u.int_in_range(256..=SEG)?,
        seed: u.arbitrary()?,
        faults,
        ..SimConfig::default()
    };
    let mut cfg = EngineConfig::new("a");
    cfg.slice_size = Some(u.int_in_range(256..=8192)?);
    cfg.max_batches = u.int_in_range(1..=6)?;
    cfg.notify_tags = 16;
    // Small tables: a run sets up two engines, and setting up is most of its cost.
    cfg.max_segments = 4;
    cfg.max_remote_segments = 4;
    cfg.submit_timeout = Duration::from_secs(1);
    let a = Engine::new(cfg, SimFabric::new(&net, sim).unwrap(), meta.clone()).unwrap();
    let fb = SimFabric::new(&net, SimConfig::default()).unwrap();
    let mut cfg_b = EngineConfig::new("b");
    (
        cfg_b.max_segments,
        cfg_b.max_remote_segments,
        cfg_b.max_batches,
    ) = (4, 4, 4);
    cfg_b.notify_tags = 16;
    let b = Engine::new(cfg_b, fb.clone(), meta.clone()).unwrap();
    let access = Access::from_bits(u.int_in_range(0..=3)?).unwrap();
    let owned = |fill: u8| OwnedMemory::from_vec(vec![fill; SEG as usize]).unwrap();
    let src = a
        .register_owned("a/src", owned(7), Location::Cpu(0), Access::NONE)
        .unwrap();
    let sink = a
        .register_owned("a/sink", owned(0), Location::Cpu(0), Access::NONE)
        .unwrap();
    let target = b
        .register_owned("b/t", owned(0), Location::Cpu(0), access)
        .unwrap();
    // b's own handles, to hand to a.
    let foreign_seg = b
        .register_owned("b/own", owned(1), Location::Cpu(0), Access::NONE)
        .unwrap();
    let remote = a.open_segment("b/t").unwrap();
    let foreign_remote = b.open_segment("b/t").unwrap();
    Ok(Run {
        _net: net,
        a,
        b,
        fb,
        src,
        sink,
        target,
        foreign_seg,
        remote,
        foreign_remote,
    })
}

fn run_ops(run: Run, ops: Vec<Op>) {
    let a = run.a.clone();
    let mut workers = [Some(a.worker().unwrap()), Some(a.worker().unwrap())];
    let mut world = World {
        a: a.clone(),
        handles: Vec::new(),
        live: HashMap::new(),
    };
    for op in ops {
        match op {
            Op::Allocate(cap) => match a.allocate_batch(cap) {
                Ok(id) => world.remember(id),
                Err(TransportError::Config(_)) => {
                    assert!(cap == 0 || cap > MAX_BATCH_CAPACITY as usize)
                }
                Err(TransportError::Exhausted { .. }) => {}
                Err(e) => panic!("allocate_batch({cap}): unexpected {e}"),
            },
            Op::Submit {
                worker,
                batch,
                reqs,
            } => {
                let Some(id) = world.handle(batch) else {
                    continue;
                };
                let reqs: Vec<Request> = reqs
                    .iter()
                    .map(|r| {
                        let local = match r.local {
                            Local::Source => run.src,
                            Local::Sink => run.sink,
                            Local::Foreign => run.foreign_seg,
                        };
                        let remote = if r.foreign_remote {
                            run.foreign_remote
                        } else {
                            run.remote
                        };
                        Request::write(local, r.local_offset, remote, r.remote_offset, r.len)
                            .with_op(r.op)
                    })
                    .collect();
                let before = a.batch_status(id);
                let w = workers[worker].as_mut().unwrap();
                match w.submit(id, &reqs) {
                    Ok(first) => {
                        let track = world.live.get_mut(&id).expect("submit to a stale batch");
                        assert_eq!(first, track.submitted as usize, "first index");
                        track.submitted += reqs.len() as u32;
                        track.terminal.resize(track.submitted as usize, None);
                    }
                    Err(e) => {
                        if let Some(track) = world.live.get(&id) {
                            let after = a.batch_status(id).unwrap();
                            assert_eq!(after.submitted, track.submitted, "refused submit: {e}");
                            let before = before.unwrap();
                            assert_eq!(after.in_flight, before.in_flight, "refused submit: {e}");
                            assert!(!matches!(e, TransportError::StaleBatch(_)));
                        } else {
                            assert!(matches!(e, TransportError::StaleBatch(_)), "{e}");
                        }
                    }
                }
            }
            Op::Cancel(b) => {
                let Some(id) = world.handle(b) else { continue };
                match a.cancel(id) {
                    Ok(_) => assert!(world.live.contains_key(&id)),
                    Err(TransportError::StaleBatch(_)) => assert!(!world.live.contains_key(&id)),
                    Err(e) => panic!("cancel: unexpected {e}"),
                }
                world.check(id);
            }
            Op::Wait {
                worker,
                batch,
                micros,
            }
            | Op::Drain {
                worker,
                batch,
                micros,
            } => {
                let Some(id) = world.handle(batch) else {
                    continue;
                };
                let w = workers[worker].as_mut().unwrap();
                let t = Duration::from_micros(micros);
                let r = if matches!(op, Op::Wait { .. }) {
                    w.wait(id, t)
                        .inspect(|st| assert_eq!(st.pending, 0, "wait left requests pending"))
                } else {
                    w.drain(id, t)
                };
                match r {
                    Ok(_) => assert!(world.live.contains_key(&id)),
                    Err(TransportError::StaleBatch(_)) => assert!(!world.live.contains_key(&id)),
                    Err(e) => panic!("wait/drain: unexpected {e}"),
                }
                world.check(id);
            }
            Op::Free(b) | Op::Recycle(b) => {
                let Some(id) = world.handle(b) else { continue };
                world.release(id, matches!(op, Op::Recycle(_)));
            }
            Op::Progress(w) => {
                workers[w].as_mut().unwrap().progress();
            }
            Op::Check(b) => {
                if let Some(id) = world.handle(b) {
                    world.check(id);
                }
            }
            Op::PeerAlive(alive) => run.fb.set_alive(alive),
            Op::ReplaceWorker(w) => {
                // A dropped worker hands what it has in flight to the engine.
                workers[w] = None;
                workers[w] = Some(a.worker().unwrap());
            }
            Op::ForeignBatch => {
                let foreign = run.b.allocate_batch(1).unwrap();
                let w = workers[0].as_mut().unwrap();
                assert!(matches!(
                    w.submit(foreign, &[]),
                    Err(TransportError::ForeignHandle { .. })
                ));
                assert!(matches!(
                    a.free_batch(foreign),
                    Err(TransportError::ForeignHandle { .. })
                ));
                assert!(matches!(
                    a.cancel(foreign),
                    Err(TransportError::ForeignHandle { .. })
                ));
                run.b.free_batch(foreign).unwrap();
            }
        }
    }

    // Drain every live batch with both workers, bounded in rounds and time.
    run.fb.set_alive(true);
    let live: Vec<BatchId> = world.live.keys().copied().collect();
    let start = Instant::now();
    for round in 0.. {
        a.progress_dropped_workers();
        let busy = live
            .iter()
            .filter(|&&id| a.batch_status(id).unwrap().in_flight > 0)
            .count();
        if busy == 0 {
            break;
        }
        assert!(
            round < 100_000 && start.elapsed() < DRAIN_LIMIT,
            "{busy} batches still in flight after {round} rounds"
        );
        for w in workers.iter_mut().flatten() {
            for &id in &live {
                w.drain(id, Duration::from_micros(20)).unwrap();
            }
        }
    }
    for &id in &live {
        world.check(id);
        let st = a.batch_status(id).unwrap();
        assert_eq!(st.pending, 0);
        assert_eq!(
            st.completed + st.failed + st.timed_out + st.cancelled,
            st.submitted,
            "every request ends in exactly one terminal state"
        );
        a.free_batch(id).expect("a drained batch frees");
    }
    for id in world.handles {
        assert!(matches!(
            a.free_batch(id),
            Err(TransportError::StaleBatch(_))
        ));
    }
    drop(workers);
    // Nothing stays pinned: every segment unregisters; the source was never written.
    let src = a.unregister(run.src).unwrap().unwrap();
    assert!(
        src.as_slice().iter().all(|&b| b == 7),
        "a source was written"
    );
    a.unregister(run.sink).unwrap();
    a.close_segment(run.remote).unwrap();
    run.b.unregister(run.target).unwrap();
    run.b.unregister(run.foreign_seg).unwrap();
}

//! One side of a raw test straight on the `efa` crate: a device, one registered region, one
//! send and one receive CQ shared by `-q` queue pairs (SRD on EFA, RC on other verbs devices),
//! and the counters of a run. The side posts SENDs, RDMA WRITEs or RDMA READs (its [`Op`]);
//! in RDMA tests its region grants the peer the matching remote right and the peer's region is
//! the target. Posting and polling allocate nothing.

use super::error::{verbs, RawError};
use super::plan::{self, Layout, Op};
use crate::runner::{cycle_slots, Amount};
use efa::{
    Ah, AhAttr, CompChannel, Completion, Context, Cq, Dest, Gid, Mr, Pd, QpBuilder, RcOptions,
    RcQp, RemoteAddr, RemoteMr, SrdQp, WcOpcode, WcStatus, WorkCompletion,
};
use efa_perf::control::{QpAddress, Region};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Completions taken from a CQ per poll.
const POLL_BATCH: usize = 64;

/// What a side is built with.
#[derive(Clone, Debug)]
pub struct Options {
    /// Device name.
    pub device: String,
    /// What the side posts.
    pub op: Op,
    /// A latency test (one operation at a time, in one slot each way: [`Layout::latency`]).
    pub lat: bool,
    /// Port (1 on EFA).
    pub port: u8,
    /// GID index (verbs devices; EFA has only 0).
    pub gid_index: Option<u32>,
    /// Queue pairs.
    pub qps: u32,
    /// Largest message of the test: the size of every slot and receive.
    pub slot: u64,
    /// Send-queue depth per queue pair.
    pub tx_depth: u32,
    /// Bytes each queue pair cycles its messages through, sends and receives (`--cycle-buffer`,
    /// [`cycle_slots`]); `None`: every slot of the [`Layout`].
    pub cycle_buffer: Option<u64>,
    /// Receives to keep posted per queue pair (bounded by the device; SEND tests only).
    pub rx_depth: u32,
    /// Inline bytes to ask for (bounded by the device; 0: none).
    pub inline: u32,
    /// Wait for completions on a completion channel instead of busy polling (perftest's `-e`).
    pub events: bool,
}

/// Where inline SENDs take their bytes from: their content is never read (inline WRITEs take
/// theirs from [`Side::stamp`]'s buffer).
static INLINE_BYTES: [u8; plan::INLINE_LAT as usize] = [0; plan::INLINE_LAT as usize];

/// An SRD peer: every SEND names it.
struct Peer {
    ah: Arc<Ah>,
    qpn: u32,
    qkey: u32,
}

enum LaneQp {
    Srd(SrdQp),
    Rc(RcQp),
}

/// A queue pair and its counters for the current run.
struct Lane {
    qp: LaneQp,
    peer: Option<Peer>,
    /// Sends posted this run.
    posted: u64,
    /// Sends not yet completed.
    outstanding: u32,
    /// Sends completed this run.
    done: u64,
    /// Receives posted since creation (names the next receive slot).
    recv_posted: u64,
    /// Receives completed and not yet reposted.
    to_refill: u32,
}

/// One side: device objects and run counters.
pub struct Side {
    op: Op,
    lanes: Vec<Lane>,
    scq: Cq,
    rcq: Cq,
    /// The completion channel both CQs are on, with `-e`.
    channel: Option<CompChannel>,
    mr: Mr<'static>,
    /// The peer's region, in RDMA tests.
    remote: Option<RemoteMr>,
    /// The bytes of an inline WRITE ping: zeros ending in the ping's sequence byte.
    ping: [u8; plan::INLINE_LAT as usize],
    pd: Arc<Pd>,
    layout: Layout,
    /// Bytes each queue pair cycles its messages through ([`Options::cycle_buffer`]).
    cycle_buffer: Option<u64>,
    /// Receive slots each queue pair cycles its receives through (fixed at opening).
    recv_cycle: u64,
    refill: u32,
    /// Sends completed this run.
    completed: u64,
    /// Receives completed this run.
    received: u64,
    wcs: Vec<WorkCompletion>,
    /// The largest message of the side's operation: the port's `max_msg_sz`, or EFA's
    /// `max_rdma_size` for RDMA.
    pub max_msg_sz: u64,
    /// Device name.
    pub device: String,
    /// Whether the device is EFA (SRD) rather than another verbs device (RC).
    pub efa: bool,
    /// Send-queue depth granted.
    pub tx_depth: u32,
    /// Messages up to this size are sent inline.
    inline: u32,
    /// The SENDs of this latency run on queue pair 0, when known (see
    /// [`Side::moderate_latency_sends`]).
    run_sends: Option<u64>,
}

/// Checks that `device` runs the test ([`plan::check_device`]) and returns the largest message
/// of its operation (see [`plan::limit_name`]) and whether it is EFA, before anything is built.
pub fn max_size(device: &str, port: u8, o: &Options) -> Result<(u64, bool), RawError> {
    let ctx = Context::open(device).map_err(verbs("opening the device", device))?;
    plan::check_device(
        o.op,
        o.lat,
        o.events,
        ctx.efa_attr().map(|a| a.caps),
        device,
    )?;
    Ok((op_limit(&ctx, port, o.op)?, ctx.is_efa()))
}

fn op_limit(ctx: &Context, port: u8, op: Op) -> Result<u64, RawError> {
    let dev = ctx.name();
    let max_msg_sz = u64::from(
        ctx.query_port(port)
            .map_err(verbs("querying the port", dev))?
            .max_msg_sz,
    );
    Ok(match (op, ctx.efa_attr()) {
        (Op::Write | Op::Read, Some(efa)) => efa.max_rdma_size.into(),
        _ => max_msg_sz,
    })
}

/// What a completion of `op` is called in errors, and what posting it is.
fn op_words(op: Op) -> (&'static str, &'static str) {
    match op {
        Op::Send => ("send", "posting SENDs"),
        Op::Write => ("RDMA WRITE", "posting RDMA WRITEs"),
        Op::Read => ("RDMA READ", "posting RDMA READs"),
    }
}

impl Side {
    /// Opens the device and builds the queue pairs, with every receive posted.
    pub fn open(o: &Options) -> Result<Self, RawError> {
        let dev = o.device.as_str();
        let ctx = Context::open(dev).map_err(verbs("opening the device", dev))?;
        plan::check_device(o.op, o.lat, o.events, ctx.efa_attr().map(|a| a.caps), dev)?;
        let max_msg_sz = op_limit(&ctx, o.port, o.op)?;
        plan::check_size(o.slot, max_msg_sz, dev, o.op, ctx.is_efa())?;
        let attr = ctx.device_attr();
        // RDMA targets post no receives: one receive-queue entry, never used.
        let rx = match o.op.two_sided() {
            true => plan::rx_depth(o.rx_depth, o.qps, attr.max_qp_wr, attr.max_cqe),
            false => 1,
        };
        // RC READs: as many outstanding as the device takes (perftest's out_reads).
        let rd_atomic = attr.rc_read_depth();
        let pd = Pd::new(&ctx).map_err(verbs("allocating a PD", dev))?;
        let channel = match o.events {
            true => Some(
                CompChannel::new(&ctx).map_err(verbs("creating a completion channel (-e)", dev))?,
            ),
            false => None,
        };
        // With -e both CQs sit on the channel (tokens 0 and 1), as perftest's -e puts them.
        let cq = |cqe: u32, token: u64| match &channel {
            Some(ch) => Cq::builder(&ctx, cqe).channel(ch, token).build(),
            None => Cq::new(&ctx, cqe),
        };
        let scq = cq(o.tx_depth.saturating_mul(o.qps).min(attr.max_cqe), 0)
            .map_err(verbs("creating the send CQ", dev))?;
        let rcq = cq(rx.saturating_mul(o.qps), 1).map_err(verbs("creating the receive CQ", dev))?;
        let layout = match (o.lat, o.op.two_sided()) {
            (true, _) => Layout::latency(o.qps, o.slot),
            (false, true) => Layout::new(o.qps, o.slot, o.tx_depth, rx),
            (false, false) => Layout::rdma(o.qps, o.slot, o.tx_depth),
        };
        let len = usize::try_from(layout.len()).unwrap_or(usize::MAX);
        let mr =
            Mr::alloc(&pd, len, o.op.access()).map_err(verbs("registering the buffers", dev))?;
        let mut lanes = Vec::with_capacity(o.qps as usize);
        let mut inline = match ctx.efa_attr() {
            Some(a) => o.inline.min(a.max_inline()).min(plan::INLINE_EFA),
            None => o.inline,
        };
        for _ in 0..o.qps {
            let build = |inline: u32| {
                let mut b = QpBuilder::new(&pd, &scq, &rcq)
                    .max_send_wr(o.tx_depth)
                    .max_recv_wr(rx)
                    .max_inline_data(inline)
                    .port(o.port);
                if let Some(g) = o.gid_index {
                    b = b.gid_index(g);
                }
                if ctx.is_efa() {
                    b.build_srd().map(LaneQp::Srd)
                } else {
                    b.rc_options(RcOptions {
                        max_rd_atomic: rd_atomic,
                        ..RcOptions::default()
                    })
                    .build_rc()
                    .map(LaneQp::Rc)
                }
            };
            // A device that grants no inline data still runs the test, without it.
            let qp = match build(inline) {
                Err(_) if inline > 0 => {
                    inline = 0;
                    build(0)
                }
                r => r,
            }
            .map_err(verbs("creating a queue pair", dev))?;
            inline = inline.min(match &qp {
                LaneQp::Srd(qp) => qp.caps().max_inline_data,
                LaneQp::Rc(qp) => qp.caps().max_inline_data,
            });
            lanes.push(Lane {
                qp,
                peer: None,
                posted: 0,
                outstanding: 0,
                done: 0,
                recv_posted: 0,
                to_refill: 0,
            });
        }
        let mut side = Self {
            op: o.op,
            lanes,
            scq,
            rcq,
            channel,
            mr,
            remote: None,
            ping: [0; plan::INLINE_LAT as usize],
            run_sends: None,
            pd,
            layout,
            cycle_buffer: o.cycle_buffer,
            recv_cycle: cycle_slots(layout.slot, o.cycle_buffer, layout.recv_slots),
            refill: plan::refill_batch(rx),
            completed: 0,
            received: 0,
            wcs: vec![WorkCompletion::default(); POLL_BATCH],
            max_msg_sz,
            device: o.device.clone(),
            efa: ctx.is_efa(),
            tx_depth: o.tx_depth,
            inline,
        };
        if o.op.two_sided() {
            for i in 0..side.lanes.len() {
                side.post_recvs(i, rx)?;
            }
        }
        Ok(side)
    }

    /// What the side posts.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The region the peer reaches, in RDMA tests.
    pub fn region(&self) -> Option<Region> {
        (!self.op.two_sided()).then(|| {
            let r = self.mr.remote();
            Region {
                addr: r.addr,
                len: r.len,
                rkey: r.rkey,
            }
        })
    }

    /// The addresses a peer needs, one per queue pair.
    pub fn addresses(&self) -> Vec<QpAddress> {
        self.lanes
            .iter()
            .map(|l| {
                let e = match &l.qp {
                    LaneQp::Srd(qp) => qp.endpoint(),
                    LaneQp::Rc(qp) => qp.endpoint(),
                };
                QpAddress {
                    gid: e.gid.0,
                    qpn: e.qpn,
                    qkey_or_psn: e.qkey_or_psn,
                    lid: e.lid,
                }
            })
            .collect()
    }

    /// Points each queue pair at its peer: an address handle (SRD) or a connection (RC); an
    /// RDMA test's side takes the peer's region as its target.
    pub fn connect(&mut self, peers: &[QpAddress], region: Option<Region>) -> Result<(), RawError> {
        if !self.op.two_sided() {
            let r = region.ok_or(RawError::NoRegion(self.op.name()))?;
            self.remote = Some(RemoteMr {
                addr: r.addr,
                len: r.len,
                rkey: r.rkey,
            });
        }
        let dev = self.device.as_str();
        for (lane, a) in self.lanes.iter_mut().zip(peers) {
            match &mut lane.qp {
                LaneQp::Srd(_) => {
                    let ah = Ah::new(&self.pd, AhAttr::new(Gid(a.gid), 0))
                        .map_err(verbs("creating an address handle", dev))?;
                    lane.peer = Some(Peer {
                        ah,
                        qpn: a.qpn,
                        qkey: a.qkey_or_psn,
                    });
                }
                LaneQp::Rc(qp) => {
                    let remote = efa::QpAddress {
                        gid: Gid(a.gid),
                        qpn: a.qpn,
                        qkey_or_psn: a.qkey_or_psn,
                        lid: a.lid,
                    };
                    qp.connect(&remote)
                        .map_err(verbs("connecting an RC QP", dev))?;
                }
            }
        }
        Ok(())
    }

    /// Whether completions are waited for on a completion channel (`-e`).
    pub fn has_events(&self) -> bool {
        self.channel.is_some()
    }

    /// Arms both CQs: their next completion raises an event on the channel. Poll them once more
    /// before [`Side::wait_event`]: a completion that landed before the arming raises none.
    pub fn arm(&mut self) -> Result<(), RawError> {
        let dev = self.device.as_str();
        self.scq
            .req_notify(false)
            .map_err(verbs("arming the send CQ", dev))?;
        self.rcq
            .req_notify(false)
            .map_err(verbs("arming the receive CQ", dev))
    }

    /// Blocks on the completion channel until an armed CQ has a completion or `bound` passes
    /// (the event is acknowledged as it is read); returns at once without a channel.
    pub fn wait_event(&self, bound: std::time::Duration) -> Result<(), RawError> {
        let Some(ch) = &self.channel else {
            return Ok(());
        };
        ch.wait(bound)
            .map_err(verbs("waiting on the completion channel", &self.device))?;
        // Both CQs share the channel: take any event already queued too, so the next wait
        // sleeps until a new completion.
        while ch
            .try_event()
            .map_err(verbs("reading the completion channel", &self.device))?
            .is_some()
        {}
        Ok(())
    }

    /// Queue pairs.
    pub fn lanes(&self) -> u32 {
        self.lanes.len() as u32
    }

    /// Starts a run's counts (nothing may be outstanding).
    pub fn begin_run(&mut self) {
        for l in &mut self.lanes {
            l.posted = 0;
            l.done = 0;
        }
        self.completed = 0;
        self.received = 0;
        self.run_sends = None;
    }

    /// Makes this run's SENDs (a latency run of `amount`) ask for a completion only every
    /// [`plan::LAT_CQ_MOD`]th and at the run's last, on RC: every completion is work for the
    /// device and a CQE to poll. perftest's `send_lat` signals every SEND and waits for its
    /// completion before it polls for the peer's (its latency send queue is one deep, which
    /// caps `cq_mod` at 1); done so, SEND latency on rxe measured level with this (`BENCHMARKS.md`).
    /// A run of a time (its last SEND not known in advance) and the other operations keep one
    /// completion per operation (a WRITE ping-pong signals each, as perftest's `write_lat` does).
    pub fn moderate_latency_sends(&mut self, amount: Amount) {
        self.run_sends = match (self.op, amount) {
            (Op::Send, Amount::Iterations(n)) => Some(n),
            _ => None,
        };
    }

    /// Sends posted this run on queue pair `i`, and how many are outstanding.
    pub fn lane_counts(&self, i: usize) -> (u64, u32) {
        let l = &self.lanes[i];
        (l.posted, l.outstanding)
    }

    /// Sends posted this run, on every queue pair.
    pub fn posted(&self) -> u64 {
        self.lanes.iter().map(|l| l.posted).sum()
    }

    /// Sends completed this run.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Sends posted and not completed.
    pub fn outstanding(&self) -> u64 {
        self.posted() - self.completed
    }

    /// Messages received this run.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Posts `count` operations (the side's [`Op`]) of `size` bytes on queue pair `i` as one
    /// batch (one doorbell). Operation `n` takes send slot `n`; an RDMA one reaches the peer's
    /// receive slot `n` (see [`Layout`]); both wrap within the cycle buffer.
    pub fn post_ops(&mut self, i: usize, count: u32, size: u32) -> Result<(), RawError> {
        let op = self.op;
        let inline = match op {
            Op::Send if size <= self.inline => Some(&INLINE_BYTES[..size as usize]),
            Op::Write if size <= self.inline => Some(&self.ping[..size as usize]),
            _ => None,
        };
        let Self {
            lanes,
            mr,
            remote,
            layout,
            cycle_buffer,
            device,
            run_sends,
            ..
        } = self;
        let lane = &mut lanes[i];
        let qp_index = i as u32;
        let dev = device.as_str();
        let (_, posting) = op_words(op);
        let cycle = cycle_slots(size.into(), *cycle_buffer, layout.send_slots);
        let sge = |n: u64| {
            mr.sge(layout.send_offset(qp_index, n % cycle) as usize, size)
                .map_err(verbs("slicing a send buffer", dev))
        };
        let target = |n: u64| {
            let r = remote.as_ref().ok_or(RawError::NoRegion(op.name()))?;
            let addr = r
                .at(layout.recv_offset(qp_index, n % cycle), size.into())
                .map_err(verbs("addressing the peer's region", dev))?;
            Ok::<_, RawError>(RemoteAddr { addr, rkey: r.rkey })
        };
        match &mut lane.qp {
            LaneQp::Srd(qp) => {
                let peer = lane.peer.as_ref().ok_or(RawError::NotConnected(qp_index))?;
                let dest = Dest::new(&peer.ah, peer.qpn, peer.qkey);
                let mut b = qp.batch().map_err(verbs("opening a send batch", dev))?;
                for n in lane.posted..lane.posted + u64::from(count) {
                    let id = plan::wr_id(qp_index, n);
                    match (op, inline) {
                        (Op::Send, Some(data)) => b.send_inline(id, &dest, data, None),
                        (Op::Send, None) => b.send(id, &dest, &[sge(n)?]),
                        // SRD QPs here have no inline WRITE: its bytes come from the region.
                        (Op::Write, _) => b.write(id, &dest, &[sge(n)?], target(n)?),
                        (Op::Read, _) => b.read(id, &dest, &[sge(n)?], target(n)?),
                    }
                    .map_err(verbs(posting, dev))?;
                }
                b.commit().map_err(verbs(posting, dev))?;
            }
            LaneQp::Rc(qp) => {
                let mut b = qp.batch().map_err(verbs("opening a send batch", dev))?;
                let end = lane.posted + u64::from(count);
                for n in lane.posted..end {
                    let signaled = match run_sends {
                        Some(total) => plan::lat_signaled(n, *total),
                        None => plan::signaled(n, n + 1 == end),
                    };
                    b.set_signaled(signaled)
                        .map_err(verbs("moderating completions", dev))?;
                    let id = plan::wr_id(qp_index, n);
                    match (op, inline) {
                        (Op::Send, Some(data)) => b.send_inline(id, data, None),
                        (Op::Send, None) => b.send(id, &[sge(n)?]),
                        (Op::Write, Some(data)) => b.write_inline(id, data, target(n)?),
                        (Op::Write, None) => b.write(id, &[sge(n)?], target(n)?),
                        (Op::Read, _) => b.read(id, &[sge(n)?], target(n)?),
                    }
                    .map_err(verbs(posting, dev))?;
                }
                b.commit().map_err(verbs(posting, dev))?;
            }
        }
        lane.posted += u64::from(count);
        lane.outstanding += count;
        Ok(())
    }

    /// Posts `count` receives of a whole slot each on queue pair `i`, chained
    /// ([`efa::RECV_CHAIN`] per provider call), in turn within the cycle buffer.
    fn post_recvs(&mut self, i: usize, count: u32) -> Result<(), RawError> {
        let Self {
            lanes,
            mr,
            layout,
            recv_cycle: cycle,
            device,
            ..
        } = self;
        let lane = &mut lanes[i];
        let dev = device.as_str();
        let len = u32::try_from(layout.slot).unwrap_or(u32::MAX);
        let mut chain = [(0u64, efa::Sge::new(0, 0, 0)); efa::RECV_CHAIN];
        let mut left = count as usize;
        while left > 0 {
            let k = left.min(efa::RECV_CHAIN);
            for (j, wr) in chain[..k].iter_mut().enumerate() {
                let n = lane.recv_posted + j as u64;
                let sge = mr
                    .sge(layout.recv_offset(i as u32, n % *cycle) as usize, len)
                    .map_err(verbs("slicing a receive buffer", dev))?;
                *wr = (plan::wr_id(i as u32, n), sge);
            }
            match &mut lane.qp {
                LaneQp::Srd(qp) => qp.post_recv_list(&chain[..k]),
                LaneQp::Rc(qp) => qp.post_recv_list(&chain[..k]),
            }
            .map_err(verbs("posting receives", dev))?;
            lane.recv_posted += k as u64;
            left -= k;
        }
        lane.to_refill = lane.to_refill.saturating_sub(count);
        Ok(())
    }

    /// Makes the next WRITE ping of `size` bytes end in `seq`: the last byte of send slot 0,
    /// and of the inline bytes.
    pub fn stamp(&mut self, size: u64, seq: u8) -> Result<(), RawError> {
        let last = size.max(1) - 1;
        if let Some(b) = self.ping.get_mut(last as usize) {
            *b = seq;
        }
        let at = (self.layout.send_offset(0, 0) + last) as usize;
        self.mr
            .write_at(at, &[seq])
            .map_err(verbs("stamping a ping", &self.device))
    }

    /// Clears the byte a WRITE ping of `size` bytes is detected by (the last of receive slot
    /// 0), before a run: a byte left from an earlier run is never taken for an arrival.
    pub fn clear_landing(&mut self, size: u64) -> Result<(), RawError> {
        let at = (self.layout.recv_offset(0, 0) + size.max(1) - 1) as usize;
        self.mr
            .write_at(at, &[0])
            .map_err(verbs("clearing the landing byte", &self.device))
    }

    /// The last byte of receive slot 0 for `size`-byte pings, where the peer's WRITE ping lands
    /// last on RC (perftest's write_lat polls it the same way).
    pub fn landed(&self, size: u64) -> u8 {
        let at = (self.layout.recv_offset(0, 0) + size.max(1) - 1) as usize;
        let at = at.min(self.mr.len() - 1);
        let base = self.mr.addr() as *mut u8;
        // SAFETY: `at` lies inside the region, host memory Mr::alloc allocated and `self.mr`
        // owns for as long as `self` lives. The device writes it by RDMA while we read, so the
        // byte is read as an atomic (AtomicU8 has u8's size and alignment), never through a
        // reference to plain memory.
        let byte = unsafe { AtomicU8::from_ptr(base.add(at)) };
        byte.load(Ordering::Acquire)
    }

    /// Reaps send-queue completions (SENDs, WRITEs, READs); returns how many operations they
    /// complete.
    pub fn poll_sends(&mut self) -> Result<u32, RawError> {
        let (what, _) = op_words(self.op);
        let dev = self.device.as_str();
        let n = self
            .scq
            .poll_into_with(&mut self.wcs, |c| reaped(c, false))
            .map_err(verbs("polling the send CQ", dev))?;
        let mut sends = 0;
        for wc in &self.wcs[..n] {
            let qp = plan::wr_qp(wc.wr_id);
            check(what, qp, wc)?;
            let Some(l) = self.lanes.get_mut(qp as usize) else {
                continue;
            };
            // SRD: one completion per send, in any order. RC: in order, moderated.
            let done = match l.qp {
                LaneQp::Srd(_) => l.done + 1,
                LaneQp::Rc(_) => plan::covered(l.done, wc.wr_id as u32).min(l.posted),
            };
            let k = done.saturating_sub(l.done);
            l.done = done;
            l.outstanding = l.outstanding.saturating_sub(k as u32);
            sends += k;
        }
        self.completed += sends;
        Ok(sends as u32)
    }

    /// Reaps receive completions of `size`-byte messages, reposting each queue pair's receives
    /// once a batch of them has completed; returns how many.
    pub fn poll_recvs(&mut self, size: u64) -> Result<u32, RawError> {
        if !self.op.two_sided() {
            // RDMA targets post no receives: nothing can complete there.
            return Ok(0);
        }
        let n = self
            .rcq
            .poll_into_with(&mut self.wcs, |c| reaped(c, true))
            .map_err(verbs("polling the receive CQ", &self.device))?;
        for k in 0..n {
            let wc = self.wcs[k];
            let qp = plan::wr_qp(wc.wr_id);
            if wc.status == WcStatus::WrFlushErr {
                // A flushed receive follows the error that broke the queue pair: name that one.
                self.poll_sends()?;
            }
            check("receive", qp, &wc)?;
            if u64::from(wc.byte_len) != size || wc.opcode != Some(WcOpcode::Recv) {
                return Err(RawError::Length {
                    got: wc.byte_len,
                    want: size,
                });
            }
            let i = qp as usize;
            if let Some(l) = self.lanes.get_mut(i) {
                l.to_refill += 1;
                if l.to_refill >= self.refill {
                    let count = l.to_refill;
                    self.post_recvs(i, count)?;
                }
            }
        }
        self.received += n as u64;
        Ok(n as u32)
    }
}

/// What a test reads of completion `c`: [`Completion::brief`] (`wr_id` and status, no provider
/// call; every field of a failure for the error), and of a successful receive its opcode and
/// length (a call each). perftest's `ibv_poll_cq` is one call per poll; the whole copy
/// ([`Completion::to_owned`](efa::Completion::to_owned)) makes three per send and six or seven
/// per receive (up to nine on EFA).
fn reaped(c: &Completion<'_>, recv: bool) -> WorkCompletion {
    let mut wc = c.brief();
    if recv && wc.is_success() {
        wc.opcode = Some(c.opcode());
        wc.byte_len = c.byte_len();
    }
    wc
}

/// A failed completion as an error naming the queue pair and EFA's status.
fn check(what: &'static str, qp: u32, wc: &WorkCompletion) -> Result<(), RawError> {
    if wc.is_success() {
        return Ok(());
    }
    Err(RawError::Completion {
        what,
        qp,
        status: wc.status,
        efa: wc.efa_status,
        vendor_err: wc.vendor_err,
    })
}

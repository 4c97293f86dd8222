//! One side of a SEND test straight on the `efa` crate: a device, one registered region, one
//! send and one receive CQ shared by `-q` queue pairs (SRD on EFA, RC on other verbs devices),
//! and the counters of a run. Posting and polling allocate nothing.

use super::error::{verbs, SendError};
use super::plan::{self, Layout};
use efa::{
    Access, Ah, AhAttr, CompChannel, Context, Cq, Dest, Gid, Mr, Pd, QpBuilder, RcQp, SrdQp,
    WcOpcode, WcStatus, WorkCompletion,
};
use efa_perf::control::QpAddress;
use std::sync::Arc;

/// Completions taken from a CQ per poll.
const POLL_BATCH: usize = 64;

/// What a side is built with.
#[derive(Clone, Debug)]
pub struct Options {
    /// Device name.
    pub device: String,
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
    /// Receives to keep posted per queue pair (bounded by the device).
    pub rx_depth: u32,
    /// Inline bytes to ask for (bounded by the device; 0: none).
    pub inline: u32,
    /// Wait for completions on a completion channel instead of busy polling (perftest's `-e`).
    pub events: bool,
}

/// Where inline SENDs take their bytes from: their content is never read.
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
    lanes: Vec<Lane>,
    scq: Cq,
    rcq: Cq,
    /// The completion channel both CQs are on, with `-e`.
    channel: Option<CompChannel>,
    mr: Mr<'static>,
    pd: Arc<Pd>,
    layout: Layout,
    refill: u32,
    /// Sends completed this run.
    completed: u64,
    /// Receives completed this run.
    received: u64,
    wcs: Vec<WorkCompletion>,
    /// The port's `max_msg_sz`.
    pub max_msg_sz: u64,
    /// Device name.
    pub device: String,
    /// Whether the device is EFA (SRD) rather than another verbs device (RC).
    pub efa: bool,
    /// Send-queue depth granted.
    pub tx_depth: u32,
    /// Messages up to this size are sent inline.
    inline: u32,
}

/// The port's largest message on `device`, for checking sizes before anything is built.
pub fn max_msg_sz(device: &str, port: u8) -> Result<u64, SendError> {
    let ctx = Context::open(device).map_err(verbs("opening the device", device))?;
    let attr = ctx
        .query_port(port)
        .map_err(verbs("querying the port", device))?;
    Ok(attr.max_msg_sz.into())
}

impl Side {
    /// Opens the device and builds the queue pairs, with every receive posted.
    pub fn open(o: &Options) -> Result<Self, SendError> {
        let dev = o.device.as_str();
        let ctx = Context::open(dev).map_err(verbs("opening the device", dev))?;
        let max_msg_sz = u64::from(
            ctx.query_port(o.port)
                .map_err(verbs("querying the port", dev))?
                .max_msg_sz,
        );
        plan::check_size(o.slot, max_msg_sz, dev)?;
        let attr = ctx.device_attr();
        let rx = plan::rx_depth(o.rx_depth, o.qps, attr.max_qp_wr, attr.max_cqe);
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
        let layout = Layout::new(o.qps, o.slot, o.tx_depth, rx);
        let len = usize::try_from(layout.len()).unwrap_or(usize::MAX);
        let mr = Mr::alloc(&pd, len, Access::LOCAL_WRITE)
            .map_err(verbs("registering the buffers", dev))?;
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
                    b.build_rc().map(LaneQp::Rc)
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
            lanes,
            scq,
            rcq,
            channel,
            mr,
            pd,
            layout,
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
        for i in 0..side.lanes.len() {
            side.post_recvs(i, rx)?;
        }
        Ok(side)
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

    /// Points each queue pair at its peer: an address handle (SRD) or a connection (RC).
    pub fn connect(&mut self, peers: &[QpAddress]) -> Result<(), SendError> {
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
    pub fn arm(&mut self) -> Result<(), SendError> {
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
    pub fn wait_event(&self, bound: std::time::Duration) -> Result<(), SendError> {
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

    /// Posts `count` SENDs of `size` bytes on queue pair `i` as one batch (one doorbell).
    pub fn post_sends(&mut self, i: usize, count: u32, size: u32) -> Result<(), SendError> {
        let inline = (size <= self.inline).then(|| &INLINE_BYTES[..size as usize]);
        let Self {
            lanes,
            mr,
            layout,
            device,
            ..
        } = self;
        let lane = &mut lanes[i];
        let qp_index = i as u32;
        let dev = device.as_str();
        let sge = |n: u64| {
            mr.sge(layout.send_offset(qp_index, n) as usize, size)
                .map_err(verbs("slicing a send buffer", dev))
        };
        match &mut lane.qp {
            LaneQp::Srd(qp) => {
                let peer = lane
                    .peer
                    .as_ref()
                    .ok_or(SendError::NotConnected(qp_index))?;
                let dest = Dest::new(&peer.ah, peer.qpn, peer.qkey);
                let mut b = qp.batch().map_err(verbs("opening a send batch", dev))?;
                for n in lane.posted..lane.posted + u64::from(count) {
                    let id = plan::wr_id(qp_index, n);
                    match inline {
                        Some(data) => b.send_inline(id, &dest, data, None),
                        None => b.send(id, &dest, &[sge(n)?]),
                    }
                    .map_err(verbs("posting a SEND", dev))?;
                }
                b.commit().map_err(verbs("posting SENDs", dev))?;
            }
            LaneQp::Rc(qp) => {
                let mut b = qp.batch().map_err(verbs("opening a send batch", dev))?;
                let end = lane.posted + u64::from(count);
                for n in lane.posted..end {
                    b.set_signaled(plan::signaled(n, n + 1 == end))
                        .map_err(verbs("moderating completions", dev))?;
                    let id = plan::wr_id(qp_index, n);
                    match inline {
                        Some(data) => b.send_inline(id, data, None),
                        None => b.send(id, &[sge(n)?]),
                    }
                    .map_err(verbs("posting a SEND", dev))?;
                }
                b.commit().map_err(verbs("posting SENDs", dev))?;
            }
        }
        lane.posted += u64::from(count);
        lane.outstanding += count;
        Ok(())
    }

    /// Posts `count` receives of a whole slot each on queue pair `i`, chained
    /// ([`efa::RECV_CHAIN`] per provider call).
    fn post_recvs(&mut self, i: usize, count: u32) -> Result<(), SendError> {
        let Self {
            lanes,
            mr,
            layout,
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
                    .sge(layout.recv_offset(i as u32, n) as usize, len)
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

    /// Reaps send completions; returns how many.
    pub fn poll_sends(&mut self) -> Result<u32, SendError> {
        let dev = self.device.as_str();
        let n = self
            .scq
            .poll_into(&mut self.wcs)
            .map_err(verbs("polling the send CQ", dev))?;
        let mut sends = 0;
        for wc in &self.wcs[..n] {
            let qp = plan::wr_qp(wc.wr_id);
            check("send", qp, wc)?;
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
    pub fn poll_recvs(&mut self, size: u64) -> Result<u32, SendError> {
        let n = self
            .rcq
            .poll_into(&mut self.wcs)
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
                return Err(SendError::Length {
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

/// A failed completion as an error naming the queue pair and EFA's status.
fn check(what: &'static str, qp: u32, wc: &WorkCompletion) -> Result<(), SendError> {
    if wc.is_success() {
        return Ok(());
    }
    Err(SendError::Completion {
        what,
        qp,
        status: wc.status,
        efa: wc.efa_status,
        vendor_err: wc.vendor_err,
    })
}

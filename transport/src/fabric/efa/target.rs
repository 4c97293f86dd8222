//! The target side of the `efa` fabric: one SRD service QP per rail, owned by one thread that
//! keeps receives posted on it, counts notification tags and serves the two-sided protocol's
//! requests ([`proto`](super::proto)): it checks each against the registrations, copies, and
//! replies.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use ::efa::{Ah, Completion, Cq, Dest, Gid, Mr, QpBuilder, SrdQp, WcStatus, WorkCompletion};

use super::proto::{self, Header, ProtoOp, HEADER_LEN};
use super::{io, EfaConfig, Rail, Shared};
use crate::fabric::rdma::backoff::Backoff;
use crate::fabric::rdma::events::{self, Events, WAIT_BOUND};
use crate::FabricError;

/// Sends (replies) carry this bit in their `wr_id`, with the receive slot they answer.
const REPLY: u64 = 1 << 32;
/// A rendezvous WRITE's RDMA READ carries this bit, with the receive slot of its request.
const PULL: u64 = 1 << 33;

/// One rail's service QP, its CQ and its receive buffers (one message each).
struct ServiceRail {
    qp: SrdQp,
    cq: Cq,
    buffers: Mr<'static>,
    /// Bytes of each receive buffer: the port's `max_msg_sz`.
    msg: u32,
    /// The reply in flight for each receive slot (sent again after a receiver-not-ready answer).
    replies: Vec<Option<Reply>>,
    /// The registration pinned by each receive slot's rendezvous READ, while it runs.
    pins: Vec<Option<usize>>,
}

/// A reply, kept until its send completes.
struct Reply {
    ah: Arc<Ah>,
    qpn: u32,
    qkey: u32,
    imm: u32,
    /// Bytes of data, at the start of the slot's buffer.
    len: u32,
    since: Instant,
}

/// Every rail's service QP, created with the fabric (their QPNs are its addresses).
pub(crate) struct Service {
    rails: Vec<ServiceRail>,
    recv_depth: u32,
    /// The completion channels the idle thread blocks on; `None` where a device cannot raise
    /// CQ events or the config turned them off.
    events: Option<Events>,
}

impl Service {
    /// Creates the service QPs; `msg` is each receive buffer's size (the port's `max_msg_sz`).
    pub(crate) fn new(
        rails: &[Rail],
        config: &EfaConfig,
        msg: u32,
    ) -> Result<Service, FabricError> {
        let mut out = Vec::with_capacity(rails.len());
        let mut events = if config.cq_events {
            Some(
                Events::new(rails.iter().map(|r| &r.ctx))
                    .map_err(|e| io("completion channel", e))?,
            )
        } else {
            None
        };
        for (i, r) in rails.iter().enumerate() {
            let name = r.ctx.name();
            let depth = config.recv_depth;
            // Receives, and at most one reply per receive.
            let cq = events::cq_for(|| Cq::builder(&r.ctx, 2 * depth), &mut events, i)
                .map_err(|e| io(format_args!("{name} service CQ"), e))?;
            let qp = QpBuilder::new(&r.pd, &cq, &cq)
                .max_send_wr(depth)
                .max_recv_wr(depth)
                .qkey(config.qkey)
                .gid_index(r.gid.index)
                .build_srd()
                .map_err(|e| io(format_args!("{name} service QP"), e))?;
            let len = (depth as usize) * msg as usize;
            let buffers = Mr::alloc(&r.pd, len, ::efa::Access::LOCAL_WRITE)
                .map_err(|e| io(format_args!("{name} receive buffers"), e))?;
            let mut rail = ServiceRail {
                qp,
                cq,
                buffers,
                msg,
                replies: (0..depth).map(|_| None).collect(),
                pins: vec![None; depth as usize],
            };
            for i in 0..depth {
                rail.post(u64::from(i))
                    .map_err(|e| io(format_args!("{name} receive"), e))?;
            }
            out.push(rail);
        }
        Ok(Service {
            rails: out,
            recv_depth: config.recv_depth,
            events,
        })
    }

    /// Whether the target thread blocks on completion channels when idle.
    pub(crate) fn has_events(&self) -> bool {
        self.events.is_some()
    }

    /// The service QPNs, by rail.
    pub(crate) fn qpns(&self) -> impl Iterator<Item = u32> + '_ {
        self.rails.iter().map(|r| r.qp.qp_num())
    }
}

impl ServiceRail {
    /// Posts receive `slot` (its own message of the buffer region).
    fn post(&mut self, slot: u64) -> Result<(), ::efa::Error> {
        let sge = self
            .buffers
            .sge(slot as usize * self.msg as usize, self.msg)?;
        self.qp.post_recv(slot, &[sge])
    }
}

/// Starts the target thread, pinned to `cpus` when given.
pub(crate) fn start(
    shared: Arc<Shared>,
    service: Service,
    cpus: Option<crate::affinity::CpuSet>,
) -> Result<JoinHandle<()>, FabricError> {
    crate::affinity::spawn_pinned("efa-target", cpus, move || run(shared, service))
        .map_err(|e| FabricError::affinity("efa", "the target thread", e))
}

fn run(shared: Arc<Shared>, mut service: Service) {
    let mut scratch = vec![WorkCompletion::default(); 64];
    let mut backoff = Backoff::new(shared.config.idle_spin);
    let mut ahs = AhCache::default();
    let mut events = service.events.take();
    while !shared.stop.load(Ordering::Relaxed) {
        let busy = pass(&shared, &mut service, &mut scratch, &mut ahs);
        if !backoff.spun(busy) {
            continue;
        }
        let Some(ev) = events.as_mut() else {
            backoff.step(false);
            continue;
        };
        // Idle past the spin window: arm, poll once more (a completion that landed before the
        // arming raises no event), and only then block.
        if events::arm(service.rails.iter_mut().map(|r| &mut r.cq)).is_err() {
            shared.poll_errors.fetch_add(1, Ordering::Relaxed);
            events = None;
            continue;
        }
        if pass(&shared, &mut service, &mut scratch, &mut ahs) {
            backoff.spun(true);
            continue;
        }
        if ev.wait(WAIT_BOUND).is_err() {
            // The channels failed: poll with sleeps from now on.
            shared.poll_errors.fetch_add(1, Ordering::Relaxed);
            events = None;
        }
    }
}

/// One polling pass over every rail's service CQ; whether it found work.
fn pass(
    shared: &Shared,
    service: &mut Service,
    scratch: &mut [WorkCompletion],
    ahs: &mut AhCache,
) -> bool {
    let depth = u64::from(service.recv_depth);
    let mut busy = false;
    for (index, r) in service.rails.iter_mut().enumerate() {
        // A poll error loses no completion (the efa crate returns the ones it consumed and
        // reports the error on the next call); it is counted, and polling goes on.
        let n = match r.cq.poll_into_with(scratch, served) {
            Ok(n) => n,
            Err(_) => {
                shared.poll_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        busy |= n > 0;
        for wc in &scratch[..n] {
            let slot = wc.wr_id & !(REPLY | PULL);
            if slot >= depth {
                continue;
            }
            if wc.wr_id & PULL != 0 {
                pulled(shared, r, slot as usize, wc);
                continue;
            }
            if wc.status == WcStatus::WrFlushErr {
                continue;
            }
            let answered = wc.wr_id & REPLY != 0;
            if answered && again(shared, r, slot as usize, wc) {
                continue;
            }
            if answered {
                // The reply is done: its receive slot (which held the reply's data) is free.
                r.replies[slot as usize] = None;
            } else if wc.status == WcStatus::Success && on_receive(shared, r, index as u16, ahs, wc)
            {
                // The slot goes back when its reply's send completes.
                continue;
            }
            // Every slot goes back, after an error completion too (a peer's oversized or
            // malformed message): a slot left out would, with rnr_retry 7, stall the
            // senders for good. Only a flush (QP in error, shutdown) retires it. On failure
            // the slot stays unposted; senders see RNR retries.
            let _ = r.post(slot);
        }
    }
    busy
}

/// What the service reads of completion `c`: [`Completion::brief`] (`wr_id` and status, no
/// provider call; every field of a failure); of a successful receive its immediate, and of a
/// request (no immediate) the length and the source QP its reply goes to. No other field of a
/// success, EFA's source GID and unsolicited flag among them, is read: the service never looks
/// at them. A request and its reply's send completion cost three provider calls here, where the
/// whole copy of both ([`Completion::to_owned`]) makes ten on EFA.
fn served(c: &Completion<'_>) -> WorkCompletion {
    let mut wc = c.brief();
    // Only receives are posted with a bare slot number as their `wr_id`.
    if wc.wr_id & (REPLY | PULL) == 0 && wc.status.is_success() {
        wc.imm = c.imm();
        if wc.imm.is_none() {
            wc.byte_len = c.byte_len();
            wc.src_qp = c.src_qp();
        }
    }
    wc
}

/// The target's address handles by (local rail, initiator GID), filled from the fabric's table
/// (where `accept` created them) on first use.
#[derive(Default)]
struct AhCache(HashMap<(u16, Gid), Arc<Ah>>);

impl AhCache {
    fn get(&mut self, shared: &Shared, rail: u16, gid: Gid) -> Option<Arc<Ah>> {
        if let Some(ah) = self.0.get(&(rail, gid)) {
            return Some(ah.clone());
        }
        let ah = shared
            .ahs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(rail, gid)?;
        self.0.insert((rail, gid), ah.clone());
        Some(ah)
    }
}

/// Handles one successful receive: a notification is counted; a protocol request is served and
/// answered. Returns whether a reply is in flight (its slot then goes back on the reply's send
/// completion).
fn on_receive(
    shared: &Shared,
    r: &mut ServiceRail,
    rail: u16,
    ahs: &mut AhCache,
    wc: &WorkCompletion,
) -> bool {
    // A receive with an immediate is a notification (a SEND or a WRITE with one); a request
    // carries none.
    if let Some(tag) = wc.imm {
        if let Some(sink) = shared.notifications.get() {
            sink.record(tag);
        }
        return false;
    }
    let at = wc.wr_id as usize * r.msg as usize;
    let len = (wc.byte_len as usize).min(r.msg as usize);
    let mut head = [0u8; HEADER_LEN];
    let header = r
        .buffers
        .read_at(at, head.get_mut(..len.min(HEADER_LEN)).unwrap_or(&mut []))
        .ok()
        .and_then(|()| Header::decode(&head));
    let Some(h) = header.filter(|_| len >= HEADER_LEN) else {
        shared.bad_requests.fetch_add(1, Ordering::Relaxed);
        return false;
    };
    let Some(ah) = ahs.get(shared, rail, h.gid) else {
        // No AH for that GID: the initiator never went through `accept`; nothing can answer.
        shared.bad_requests.fetch_add(1, Ordering::Relaxed);
        return false;
    };
    if h.op == ProtoOp::Pull {
        return pull(shared, r, rail, wc, &h, ah);
    }
    let (status, reply_len) = serve(shared, r, at, len - HEADER_LEN, &h);
    if status != proto::status::OK {
        shared.bad_requests.fetch_add(1, Ordering::Relaxed);
    }
    let slot = wc.wr_id as usize;
    r.replies[slot] = Some(Reply {
        ah,
        qpn: wc.src_qp,
        qkey: h.qkey,
        imm: proto::reply_imm(h.chunk, status),
        len: reply_len,
        since: Instant::now(),
    });
    send_reply(r, slot).is_ok()
}

/// Serves a rendezvous WRITE: checks it, then RDMA-READs the initiator's bytes straight into
/// the target range (kept pinned until the READ completes, see [`pulled`]); or replies with the
/// check's status. Returns whether the slot is held (a READ or a reply in flight).
fn pull(
    shared: &Shared,
    r: &mut ServiceRail,
    rail: u16,
    wc: &WorkCompletion,
    h: &Header,
    ah: Arc<Ah>,
) -> bool {
    let slot = wc.wr_id as usize;
    let at = slot * r.msg as usize;
    let payload = (wc.byte_len as usize).saturating_sub(HEADER_LEN);
    let limits = proto::Limits {
        max_reply: r.msg as usize,
        max_pull: shared.max_pull as usize,
    };
    let mut desc = [0u8; proto::PULL_LEN];
    let checked = proto::check(h, payload, limits, &shared.regions).and_then(|placed| {
        r.buffers
            .read_at(at + HEADER_LEN, &mut desc)
            .ok()
            .and_then(|()| proto::Pull::decode(&desc))
            .map(|from| (placed, from))
            .ok_or(proto::status::BAD_LENGTH)
    });
    let mut reply = Reply {
        ah,
        qpn: wc.src_qp,
        qkey: h.qkey,
        imm: proto::reply_imm(h.chunk, proto::status::OK),
        len: 0,
        since: Instant::now(),
    };
    let (placed, from) = match checked {
        Ok(p) => p,
        Err(status) => {
            shared.bad_requests.fetch_add(1, Ordering::Relaxed);
            reply.imm = proto::reply_imm(h.chunk, status);
            r.replies[slot] = Some(reply);
            return send_reply(r, slot).is_ok();
        }
    };
    let (addr, len) = (placed.addr, placed.len as u32);
    let region = placed.into_pin();
    let lkey = shared.lkey(region, rail);
    let dest = Dest::new(&reply.ah, reply.qpn, reply.qkey);
    let remote = ::efa::RemoteAddr {
        addr: from.addr,
        rkey: from.rkey,
    };
    let posted = r.qp.batch().and_then(|mut b| {
        b.read(
            PULL | slot as u64,
            &dest,
            &[::efa::Sge::new(addr, len, lkey)],
            remote,
        )?;
        b.commit()
    });
    r.replies[slot] = Some(reply);
    if posted.is_err() {
        shared.regions.release(region);
        set_status(r, slot, proto::status::ABORTED);
        return send_reply(r, slot).is_ok();
    }
    r.pins[slot] = Some(region);
    true
}

/// A rendezvous READ ended: the pin goes, and the reply (success, or the READ's failure) goes
/// out. A flushed READ (shutdown) frees the slot without a reply.
fn pulled(shared: &Shared, r: &mut ServiceRail, slot: usize, wc: &WorkCompletion) {
    if let Some(region) = r.pins[slot].take() {
        shared.regions.release(region);
    }
    if wc.status == WcStatus::WrFlushErr {
        r.replies[slot] = None;
        return;
    }
    if wc.status != WcStatus::Success {
        set_status(r, slot, proto::status::BAD_ADDRESS);
    }
    if send_reply(r, slot).is_err() {
        r.replies[slot] = None;
        let _ = r.post(slot as u64);
    }
}

/// Replaces the status of slot `slot`'s reply.
fn set_status(r: &mut ServiceRail, slot: usize, status: u8) {
    if let Some(p) = r.replies[slot].as_mut() {
        p.imm = proto::reply_imm(p.imm, status);
    }
}

/// Sends slot `slot`'s reply again if the initiator answered receiver-not-ready (a device without
/// RNR_RETRY reports it at once), for up to the reply timeout. Returns whether it went out.
fn again(shared: &Shared, r: &mut ServiceRail, slot: usize, wc: &WorkCompletion) -> bool {
    let retry = wc.status == WcStatus::RnrRetryExcErr
        && r.replies[slot]
            .as_ref()
            .is_some_and(|p| p.since.elapsed() < shared.config.reply_timeout);
    retry && send_reply(r, slot).is_ok()
}

/// Checks and executes a request whose message starts at `at` of the receive buffers and has
/// `payload` bytes after the header. Returns the reply status and how many bytes the reply
/// carries (a READ's data, placed at the start of the same receive buffer).
fn serve(shared: &Shared, r: &mut ServiceRail, at: usize, payload: usize, h: &Header) -> (u8, u32) {
    let msg = r.msg as usize;
    let limits = proto::Limits {
        max_reply: msg,
        max_pull: 0,
    };
    let placed = match proto::check(h, payload, limits, &shared.regions) {
        Ok(p) => p,
        Err(status) => return (status, 0),
    };
    let buffer = (r.buffers.addr() as usize + at) as *mut u8;
    // SAFETY: receive slot `at..at + msg` lies inside the owned receive-buffer region; the
    // device writes it only while a receive is posted on the slot, and this slot's receive
    // completed and is not posted again until its reply's send completes. Only one of the two
    // views is made: a WRITE's payload (after the header), or a READ's reply (the whole slot).
    let (payload, reply): (&[u8], &mut [u8]) = unsafe {
        match h.op {
            ProtoOp::Write => (
                std::slice::from_raw_parts(buffer.add(HEADER_LEN), payload),
                &mut [],
            ),
            ProtoOp::Read => (&[], std::slice::from_raw_parts_mut(buffer, msg)),
            // Served by `pull`; `check` refuses it here (no pull limit).
            ProtoOp::Pull => (&[], &mut []),
        }
    };
    // SAFETY: `placed` comes from `check` over this fabric's registrations, whose memory the
    // registering application keeps valid while registered (`Fabric::register`); the receive
    // buffers are a separate, owned region, so nothing overlaps.
    let (status, len) = unsafe { proto::execute(h, &placed, payload, reply) };
    (status, len as u32)
}

/// Posts slot `slot`'s reply: its immediate data, with its bytes from the start of the slot.
fn send_reply(r: &mut ServiceRail, slot: usize) -> Result<(), ::efa::Error> {
    let Some(p) = r.replies[slot].as_ref() else {
        return Ok(());
    };
    let dest = Dest::new(&p.ah, p.qpn, p.qkey);
    let wr_id = REPLY | slot as u64;
    if p.len == 0 {
        let mut batch = r.qp.batch()?;
        batch.send_inline(wr_id, &dest, &[], Some(p.imm))?;
        return batch.commit();
    }
    let sge = r.buffers.sge(slot * r.msg as usize, p.len)?;
    let mut batch = r.qp.batch()?;
    batch.send_imm(wr_id, &dest, &[sge], p.imm)?;
    batch.commit()
}

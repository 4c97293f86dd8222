//! The initiator side of the two-sided protocol ([`proto`](super::proto)): READ and WRITE over
//! SEND/RECV on one extra SRD QP per endpoint rail, created the first time a rail needs it.
//!
//! Each operation is cut into chunks of at most `max_msg_sz - HEADER_LEN` bytes. A chunk is one
//! request SEND and one reply; it ends when both its send completion and its reply are in (or
//! its send failed, or no reply came within the reply timeout). An operation completes, once,
//! when its last chunk ends, with the first failure of any of its chunks. Every table is sized
//! by the send-queue depth when the rail's protocol QP is created: nothing allocates afterwards.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ::efa::{Cq, Dest, Gid, Mr, QpBuilder, Sge, SrdQp, WcStatus, WorkCompletion};

use super::proto::{self, Header, ProtoOp, Pull, HEADER_LEN, PULL_LEN};
use super::{io, Shared};
use crate::fabric::rdma::status::{efa_reason, post_reason};
use crate::fabric::{Completion, PeerId, WorkRequest};
use crate::{FabricError, FailReason};

/// Empty polls between looks for overdue replies (a look reads the clock and every chunk).
const EXPIRY_POLLS: u32 = 1024;

/// Bytes of each request's header slot: a header and, for a rendezvous WRITE, its [`Pull`].
const HEADER_SLOT: usize = 64;

/// Receive completions carry this bit in their `wr_id`; sends carry the chunk slot.
const RECV: u64 = 1 << 32;

#[derive(Debug, Default, Clone, Copy)]
struct Chunk {
    live: bool,
    generation: u8,
    op: u16,
    offset: u64,
    len: u32,
    sent: bool,
    replied: bool,
    posted_at: Option<Instant>,
    /// When the first receiver-not-ready answer came (retries end a reply timeout later).
    rnr_since: Option<Instant>,
}

/// What one operation of the protocol QP does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A READ over the protocol.
    Read,
    /// A WRITE over the protocol.
    Write,
    /// A notification (a zero-byte SEND with the tag as immediate data, no reply), sent here on
    /// devices without RNR_RETRY so that a receiver-not-ready answer is retried in software.
    Notify(u32),
    /// A WRITE, then its notification: once every chunk of the WRITE has been acknowledged
    /// (its bytes placed), the operation goes on as [`Kind::Notify`] and completes when that
    /// has been sent. A failed chunk ends it without a notification.
    WriteNotify(u32),
}

impl Kind {
    /// Whether the operation carries bytes to the target.
    fn writes(self) -> bool {
        matches!(self, Kind::Write | Kind::WriteNotify(_))
    }
}

#[derive(Debug, Clone, Copy)]
struct Op {
    token: u64,
    kind: Kind,
    /// A WRITE the target pulls with RDMA READ (rendezvous) rather than receives in messages.
    pull: bool,
    local: u64,
    lkey: u32,
    /// The local device's rkey for `local` (the target's READ names it).
    rkey: u32,
    remote: u64,
    region: u32,
    len: u64,
    posted: u64,
    live_chunks: u32,
    error: Option<FailReason>,
    peer: PeerId,
    remote_rail: u16,
}

/// One endpoint rail's protocol QP and its bookkeeping.
pub(crate) struct TwoSided {
    // Field order is drop order: the QP before its CQ and the buffers it uses.
    qp: SrdQp,
    cq: Cq,
    headers: Mr<'static>,
    replies: Mr<'static>,
    rail: u16,
    gid: Gid,
    max_msg: u32,
    chunk_max: u32,
    /// Most bytes of one rendezvous chunk (the device's `max_rdma_size`, capped to 32 bits).
    max_pull: u64,
    depth: u32,
    sq_used: u32,
    chunks: Box<[Chunk]>,
    free_chunks: Vec<u16>,
    ops: Box<[Option<Op>]>,
    free_ops: Vec<u16>,
    /// Operations with bytes not yet posted, oldest first.
    pending: VecDeque<u16>,
    /// Chunks to send again after a receiver-not-ready answer.
    retry: VecDeque<u16>,
    /// Finished operations not yet handed to `poll`.
    ready: VecDeque<Completion>,
    scratch: Box<[WorkCompletion]>,
    reply_timeout: Duration,
    /// Empty polls since the last look for overdue replies.
    idle_polls: u32,
}

impl TwoSided {
    /// Creates rail `rail`'s protocol QP and posts its reply buffers.
    pub(crate) fn new(shared: &Shared, rail: u16) -> Result<TwoSided, FabricError> {
        let r = &shared.rails[usize::from(rail)];
        let name = r.ctx.name();
        // Chunk ids carry the slot in 16 bits.
        let depth = shared.caps.queue_depth.min(u32::from(u16::MAX));
        let max_msg = shared.max_msg;
        let cq = Cq::builder(&r.ctx, 2 * depth)
            .build()
            .map_err(|e| io(format_args!("{name} protocol CQ"), e))?;
        let qp = QpBuilder::new(&r.pd, &cq, &cq)
            .max_send_wr(depth)
            .max_recv_wr(depth)
            .max_send_sge(2)
            .qkey(shared.config.qkey)
            .gid_index(r.gid.index)
            .build_srd()
            .map_err(|e| io(format_args!("{name} protocol QP"), e))?;
        let headers = Mr::alloc(
            &r.pd,
            depth as usize * HEADER_SLOT,
            ::efa::Access::LOCAL_WRITE,
        )
        .map_err(|e| io(format_args!("{name} protocol headers"), e))?;
        let replies = Mr::alloc(
            &r.pd,
            depth as usize * max_msg as usize,
            ::efa::Access::LOCAL_WRITE,
        )
        .map_err(|e| io(format_args!("{name} reply buffers"), e))?;
        let mut t = TwoSided {
            qp,
            cq,
            headers,
            replies,
            rail,
            gid: r.gid.gid,
            max_msg,
            chunk_max: max_msg - HEADER_LEN as u32,
            max_pull: shared.caps.max_transfer_size.min(u64::from(u32::MAX)),
            depth,
            sq_used: 0,
            chunks: vec![Chunk::default(); depth as usize].into_boxed_slice(),
            free_chunks: (0..depth as u16).rev().collect(),
            ops: vec![None; depth as usize].into_boxed_slice(),
            free_ops: (0..depth as u16).rev().collect(),
            pending: VecDeque::with_capacity(depth as usize),
            retry: VecDeque::with_capacity(depth as usize),
            ready: VecDeque::with_capacity(depth as usize),
            scratch: vec![WorkCompletion::default(); 64].into_boxed_slice(),
            reply_timeout: shared.config.reply_timeout,
            idle_polls: 0,
        };
        for slot in 0..depth {
            t.post_recv(slot)
                .map_err(|e| io(format_args!("{name} reply receive"), e))?;
        }
        Ok(t)
    }

    fn post_recv(&mut self, slot: u32) -> Result<(), ::efa::Error> {
        let sge = self
            .replies
            .sge(slot as usize * self.max_msg as usize, self.max_msg)?;
        self.qp.post_recv(RECV | u64::from(slot), &[sge])
    }

    /// Moves the protocol QP to the error state (its CQ can no longer be trusted).
    pub(crate) fn set_error(&mut self) {
        let _ = self.qp.set_error();
    }

    /// Whether operations are in flight (poll has work).
    pub(crate) fn busy(&self) -> bool {
        self.free_ops.len() < self.depth as usize || !self.ready.is_empty()
    }

    /// Takes `wr` (a READ or WRITE) and posts what the send queue holds of it; `false` when
    /// every operation slot is taken (the caller posts it later).
    /// `pull`: the WRITE may use the rendezvous protocol (both devices have RDMA READ).
    pub(crate) fn start(
        &mut self,
        shared: &Shared,
        wr: &WorkRequest,
        kind: Kind,
        pull: bool,
    ) -> bool {
        let Some(i) = self.free_ops.pop() else {
            return false;
        };
        let notify = matches!(kind, Kind::Notify(_));
        let error = (!notify && wr.len == 0).then_some(FailReason::BadLength);
        let pull = pull
            && kind.writes()
            && shared.config.rendezvous_min > 0
            && wr.len >= shared.config.rendezvous_min;
        self.ops[usize::from(i)] = Some(Op {
            token: wr.token,
            kind,
            pull,
            local: wr.local_addr,
            lkey: wr.local_key as u32,
            rkey: (wr.local_key >> 32) as u32,
            remote: wr.remote_addr,
            region: (wr.remote_key >> 32) as u32,
            // A notification is one chunk that carries nothing.
            len: if notify { 1 } else { wr.len },
            posted: 0,
            live_chunks: 0,
            error,
            peer: wr.peer,
            remote_rail: wr.remote_rail,
        });
        self.pending.push_back(i);
        self.pump(shared);
        true
    }

    /// Posts chunks while chunk slots and send-queue room last: first those a receiver-not-ready
    /// answer sent back, then new chunks of pending operations.
    fn pump(&mut self, shared: &Shared) {
        while self.sq_used < self.depth {
            let Some(slot) = self.retry.pop_front() else {
                break;
            };
            if let Err(reason) = self.send_chunk(shared, slot) {
                self.chunk_failed(slot, reason);
            }
        }
        while let Some(&i) = self.pending.front() {
            let op = self.ops[usize::from(i)].expect("pending operations are live");
            if op.error.is_some() || op.posted == op.len {
                self.pending.pop_front();
                self.finish_if_done(i);
                continue;
            }
            if self.sq_used == self.depth || self.free_chunks.is_empty() {
                return;
            }
            let most = if op.pull {
                self.max_pull
            } else {
                u64::from(self.chunk_max)
            };
            let len = (op.len - op.posted).min(most) as u32;
            let slot = self.free_chunks.pop().expect("checked above");
            let c = &mut self.chunks[usize::from(slot)];
            *c = Chunk {
                live: true,
                generation: c.generation,
                op: i,
                offset: op.posted,
                len,
                // A notification gets no reply.
                replied: matches!(op.kind, Kind::Notify(_)),
                ..Chunk::default()
            };
            let op = self.ops[usize::from(i)].as_mut().expect("live");
            op.posted += u64::from(len);
            op.live_chunks += 1;
            if let Err(reason) = self.send_chunk(shared, slot) {
                self.chunk_failed(slot, reason);
            }
        }
    }

    /// Writes chunk `slot`'s header and posts its request.
    fn send_chunk(&mut self, shared: &Shared, slot: u16) -> Result<(), FailReason> {
        let c = self.chunks[usize::from(slot)];
        let op = self.ops[usize::from(c.op)].expect("a live chunk's operation is live");
        let route = shared.peers.get(op.peer as usize).and_then(|p| p.get());
        let (ah, qpn, qkey) = route
            .and_then(|r| r.dest(self.rail, op.remote_rail))
            .ok_or(FailReason::InvalidAh)?;
        let dest = Dest::new(ah, qpn, qkey);
        let reason = |e: ::efa::Error| post_reason(&e);
        let (proto_op, data) = match op.kind {
            kind if kind.writes() && op.pull => (ProtoOp::Pull, None),
            Kind::Notify(tag) => {
                let mut batch = self.qp.batch().map_err(reason)?;
                batch
                    .send_inline(u64::from(slot), &dest, &[], Some(tag))
                    .map_err(reason)?;
                batch.commit().map_err(reason)?;
                self.sq_used += 1;
                return Ok(());
            }
            Kind::Read => (ProtoOp::Read, None),
            Kind::Write | Kind::WriteNotify(_) => (
                ProtoOp::Write,
                Some(Sge::new(op.local + c.offset, c.len, op.lkey)),
            ),
        };
        let header = Header {
            op: proto_op,
            chunk: proto::chunk_id(slot, c.generation),
            qkey: self.qp.qkey(),
            len: c.len,
            region: op.region,
            addr: op.remote + c.offset,
            gid: self.gid,
        };
        let at = usize::from(slot) * HEADER_SLOT;
        self.headers
            .write_at(at, &header.encode())
            .map_err(reason)?;
        let mut hdr_len = HEADER_LEN;
        if proto_op == ProtoOp::Pull {
            let from = Pull {
                addr: op.local + c.offset,
                rkey: op.rkey,
            };
            self.headers
                .write_at(at + HEADER_LEN, &from.encode())
                .map_err(reason)?;
            hdr_len += PULL_LEN;
        }
        let hdr = self.headers.sge(at, hdr_len as u32).map_err(reason)?;
        let both = [hdr, data.unwrap_or(hdr)];
        let sges = if data.is_some() {
            &both[..]
        } else {
            &both[..1]
        };
        let mut batch = self.qp.batch().map_err(reason)?;
        batch.send(u64::from(slot), &dest, sges).map_err(reason)?;
        batch.commit().map_err(reason)?;
        self.sq_used += 1;
        Ok(())
    }

    /// Ends chunk `slot`, which never reached the device, with `reason`.
    fn chunk_failed(&mut self, slot: u16, reason: FailReason) {
        let c = &mut self.chunks[usize::from(slot)];
        (c.sent, c.replied) = (true, true);
        let i = c.op;
        self.fail(i, reason);
        self.end_chunk_if_done(slot);
    }

    /// Records `reason` as operation `i`'s failure (the first one wins).
    fn fail(&mut self, i: u16, reason: FailReason) {
        if let Some(op) = self.ops[usize::from(i)].as_mut() {
            op.error.get_or_insert(reason);
        }
    }

    /// Completes operation `i` if nothing of it is in flight and nothing more will be posted; a
    /// WRITE with notification whose bytes are all placed goes on as its notification instead.
    fn finish_if_done(&mut self, i: u16) {
        let Some(op) = self.ops[usize::from(i)] else {
            return;
        };
        let all_posted = op.error.is_some() || op.posted == op.len;
        if !all_posted || op.live_chunks > 0 || self.pending.contains(&i) {
            return;
        }
        if let (Kind::WriteNotify(tag), None) = (op.kind, op.error) {
            self.ops[usize::from(i)] = Some(Op {
                kind: Kind::Notify(tag),
                pull: false,
                // A notification is one chunk that carries nothing.
                len: 1,
                posted: 0,
                ..op
            });
            self.pending.push_back(i);
            return;
        }
        self.ops[usize::from(i)] = None;
        self.free_ops.push(i);
        self.ready.push_back(Completion {
            token: op.token,
            error: op.error,
        });
    }

    /// Ends chunk `slot` once both its send and its reply are in.
    fn end_chunk_if_done(&mut self, slot: u16) {
        let c = &mut self.chunks[usize::from(slot)];
        if !(c.live && c.sent && c.replied) {
            return;
        }
        c.live = false;
        c.generation = c.generation.wrapping_add(1);
        let i = c.op;
        self.free_chunks.push(slot);
        if let Some(op) = self.ops[usize::from(i)].as_mut() {
            op.live_chunks -= 1;
        }
        self.finish_if_done(i);
    }

    /// Progress: reads the protocol CQ, posts waiting chunks, fails chunks whose reply is
    /// overdue, and moves finished operations to `out`. Returns how many it wrote.
    pub(crate) fn poll(&mut self, shared: &Shared, out: &mut [Completion]) -> Result<usize, ()> {
        let got = self
            .cq
            .poll_into_with(&mut self.scratch, reaped)
            .map_err(|_| ())?;
        for k in 0..got {
            let wc = self.scratch[k];
            if wc.wr_id & RECV != 0 {
                self.on_reply(&wc);
            } else {
                self.on_send(&wc);
            }
        }
        self.idle_polls = if got == 0 { self.idle_polls + 1 } else { 0 };
        if self.idle_polls % EXPIRY_POLLS == EXPIRY_POLLS - 1 {
            self.expire_replies();
        }
        self.pump(shared);
        Ok(crate::fabric::rdma::endpoint::drain_queue(
            &mut self.ready,
            out,
        ))
    }

    fn on_send(&mut self, wc: &WorkCompletion) {
        let slot = wc.wr_id as u16;
        self.sq_used -= 1;
        let Some(c) = self.chunks.get_mut(usize::from(slot)).filter(|c| c.live) else {
            return;
        };
        let now = Instant::now();
        match efa_reason(wc.status, wc.efa_status) {
            // The target had no receive posted. Devices without RNR_RETRY report it at once;
            // like libfabric, send again (after the other chunks), for up to a reply timeout.
            Some(FailReason::RemoteRnr)
                if now - *c.rnr_since.get_or_insert(now) < self.reply_timeout =>
            {
                self.retry.push_back(slot);
                return;
            }
            Some(reason) => {
                // A request that failed to send gets no reply.
                c.replied = true;
                let i = c.op;
                self.fail(i, reason);
            }
            None => {}
        }
        let c = &mut self.chunks[usize::from(slot)];
        c.sent = true;
        c.posted_at = Some(now);
        self.end_chunk_if_done(slot);
    }

    fn on_reply(&mut self, wc: &WorkCompletion) {
        let buffer = (wc.wr_id & 0xffff_ffff) as u32;
        if wc.status == WcStatus::WrFlushErr {
            return;
        }
        if wc.status == WcStatus::Success {
            if let Some(imm) = wc.imm {
                self.take_reply(imm, buffer, wc.byte_len);
            }
        }
        // Back to the receive queue (a failed repost leaves one fewer buffer; the target's
        // sends then wait in RNR retries, bounded by the reply timeout).
        let _ = self.post_recv(buffer);
    }

    /// Applies one reply to its chunk, if it is the chunk's current one.
    fn take_reply(&mut self, imm: u32, buffer: u32, byte_len: u32) {
        let (slot, generation, status) = proto::parse_imm(imm);
        let Some(c) = self.chunks.get(usize::from(slot)).copied() else {
            return;
        };
        if !c.live || c.generation != generation || c.replied {
            return;
        }
        let op = self.ops[usize::from(c.op)].expect("a live chunk's operation is live");
        let mut error = proto::reason(status);
        if error.is_none() && op.kind == Kind::Read {
            error = self.place_read(&op, &c, buffer, byte_len).err();
        }
        if let Some(reason) = error {
            self.fail(c.op, reason);
        }
        self.chunks[usize::from(slot)].replied = true;
        self.end_chunk_if_done(slot);
    }

    /// Copies a READ reply's bytes to the operation's local memory.
    fn place_read(&self, op: &Op, c: &Chunk, buffer: u32, byte_len: u32) -> Result<(), FailReason> {
        if byte_len != c.len {
            return Err(FailReason::RemoteBadLength);
        }
        // SAFETY: the engine validated `op.local..+op.len` against a registered local segment,
        // which stays registered and mapped while this request is outstanding; `c.offset + c.len
        // <= op.len` by construction. The reply buffer is a separate, owned region.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(
                (op.local + c.offset) as usize as *mut u8,
                c.len as usize,
            )
        };
        self.replies
            .read_at(buffer as usize * self.max_msg as usize, dst)
            .map_err(|_| FailReason::BadLength)
    }

    /// Fails chunks whose request was delivered but whose reply is overdue (a target that died
    /// after receiving it).
    fn expire_replies(&mut self) {
        let now = Instant::now();
        for slot in 0..self.chunks.len() {
            let c = self.chunks[slot];
            let overdue = c.posted_at.is_some_and(|t| now - t > self.reply_timeout);
            if c.live && c.sent && !c.replied && overdue {
                self.fail(c.op, FailReason::UnresponsiveRemote);
                self.chunks[slot].replied = true;
                self.end_chunk_if_done(slot as u16);
            }
        }
    }
}

impl std::fmt::Debug for TwoSided {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwoSided")
            .field("rail", &self.rail)
            .field("chunk_max", &self.chunk_max)
            .field("in_flight", &(self.depth as usize - self.free_ops.len()))
            .finish_non_exhaustive()
    }
}

/// What the protocol reads of a completion (completions on demand): [`::efa::Completion::brief`]
/// (request id and status, no provider call; every field of a failure, its vendor error among
/// them), and immediate data and length of successful receives only (the receive fields of a
/// send completion alias its request id on EFA).
fn reaped(c: &::efa::Completion<'_>) -> WorkCompletion {
    let mut wc = c.brief();
    if wc.wr_id & RECV != 0 && wc.status.is_success() {
        wc.imm = c.imm();
        wc.byte_len = c.byte_len();
    }
    wc
}

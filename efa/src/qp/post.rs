//! Posting: the device-limit checks and the batch guard over `ibv_wr_*`.

use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::ah::Ah;
use crate::error::{Error, Limit, Result};
use crate::held::{self, SendLock};
use crate::mr::{sge_total, Sge};
use crate::qp::{Rc, Srd, TransportKind};

/// A send-queue operation, for limit checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendOp {
    /// SEND.
    Send,
    /// SEND with immediate.
    SendImm,
    /// RDMA write.
    Write,
    /// RDMA write with immediate.
    WriteImm,
    /// RDMA read.
    Read,
}

impl SendOp {
    /// The `IBV_QP_EX_WITH_*` bit the QP must have been created with.
    pub fn ops_bit(self) -> u64 {
        u64::from(match self {
            SendOp::Send => efa_sys::IBV_QP_EX_WITH_SEND,
            SendOp::SendImm => efa_sys::IBV_QP_EX_WITH_SEND_WITH_IMM,
            SendOp::Write => efa_sys::IBV_QP_EX_WITH_RDMA_WRITE,
            SendOp::WriteImm => efa_sys::IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM,
            SendOp::Read => efa_sys::IBV_QP_EX_WITH_RDMA_READ,
        })
    }

    /// Whether the op moves data by RDMA.
    pub fn is_rdma(self) -> bool {
        matches!(self, SendOp::Write | SendOp::WriteImm | SendOp::Read)
    }

    fn name(self) -> &'static str {
        match self {
            SendOp::Send => "SEND",
            SendOp::SendImm => "SEND with immediate",
            SendOp::Write => "RDMA write",
            SendOp::WriteImm => "RDMA write with immediate",
            SendOp::Read => "RDMA read",
        }
    }
}

/// What a QP may post, fixed at creation from the device, port and granted capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendLimits {
    /// Largest SEND payload (SRD/RC: port `max_msg_sz`; UD on RoCE: the path MTU).
    pub max_send_bytes: u64,
    /// Largest RDMA read/write (EFA: `max_rdma_size`; RC: `max_msg_sz`).
    pub max_rdma_bytes: u64,
    /// Most SGEs of a SEND.
    pub max_send_sge: u32,
    /// Most SGEs of an RDMA read/write.
    pub max_rdma_sge: u32,
    /// Most inline bytes.
    pub max_inline: u32,
    /// Whether inline data is allowed on RDMA writes.
    pub inline_rdma: bool,
    /// Most WRs in one batch (the send-queue depth).
    pub max_batch: u32,
    /// `send_ops_flags` the QP was created with.
    pub ops: u64,
    /// Whether every WR must be signaled (EFA).
    pub signal_required: bool,
}

/// The data of a work request.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// Scatter/gather entries in registered memory.
    Sges(&'a [Sge]),
    /// Bytes copied into the WQE at posting time; no registration needed.
    Inline(&'a [u8]),
}

impl Payload<'_> {
    fn bytes(&self) -> u64 {
        match self {
            Payload::Sges(s) => sge_total(s),
            Payload::Inline(d) => d.len() as u64,
        }
    }
}

/// Check one work request against the limits; what the device would reject is refused here,
/// with the offending value.
pub(crate) fn check_wr(
    l: &SendLimits,
    kind: TransportKind,
    op: SendOp,
    payload: &Payload<'_>,
) -> Result<()> {
    if l.ops & op.ops_bit() == 0 {
        return Err(Error::Unsupported {
            what: op.name(),
            why: match (kind, op) {
                (TransportKind::Ud, _) => "UD queue pairs only send",
                (TransportKind::Srd, SendOp::Read) => "device lacks the RDMA_READ capability",
                (TransportKind::Srd, _) => "device lacks the RDMA_WRITE capability",
                _ => "the queue pair was not created with this operation",
            },
        });
    }
    let bytes = payload.bytes();
    if op.is_rdma() {
        if bytes > l.max_rdma_bytes {
            return Err(Error::limit(Limit::RdmaBytes, bytes, l.max_rdma_bytes));
        }
    } else if bytes > l.max_send_bytes {
        let which = if kind == TransportKind::Ud {
            Limit::DatagramBytes
        } else {
            Limit::SendBytes
        };
        return Err(Error::limit(which, bytes, l.max_send_bytes));
    }
    match payload {
        Payload::Sges(s) => {
            let (max, which) = if op.is_rdma() {
                (l.max_rdma_sge, Limit::RdmaSges)
            } else {
                (l.max_send_sge, Limit::SendSges)
            };
            if s.len() as u64 > u64::from(max) {
                return Err(Error::limit(which, s.len() as u64, max.into()));
            }
        }
        Payload::Inline(d) => {
            if op == SendOp::Read || (op.is_rdma() && !l.inline_rdma) {
                return Err(Error::Unsupported {
                    what: "inline data",
                    why: "only sends (and RDMA writes where the device allows) carry inline data",
                });
            }
            if d.len() as u64 > u64::from(l.max_inline) {
                return Err(Error::limit(
                    Limit::InlineBytes,
                    d.len() as u64,
                    l.max_inline.into(),
                ));
            }
        }
    }
    Ok(())
}

/// Where a datagram (SRD or UD) work request goes: an AH plus the peer's QP number and Q_Key.
///
/// Borrows the AH, so it stays alive while work requests are built from it.
#[derive(Debug, Clone, Copy)]
pub struct Dest<'a> {
    ah: *mut efa_sys::ibv_ah,
    /// The peer's QP number.
    pub qpn: u32,
    /// The peer's Q_Key.
    pub qkey: u32,
    _ah: PhantomData<&'a Ah>,
}

impl<'a> Dest<'a> {
    /// A destination through `ah`.
    pub fn new(ah: &'a Ah, qpn: u32, qkey: u32) -> Self {
        Dest {
            ah: ah.as_raw(),
            qpn,
            qkey,
            _ah: PhantomData,
        }
    }

    /// A destination whose AH pointer is only a marker, for posting tests against fake ops.
    #[cfg(test)]
    pub(crate) fn fake(marker: usize, qpn: u32, qkey: u32) -> Dest<'static> {
        Dest {
            ah: marker as *mut efa_sys::ibv_ah,
            qpn,
            qkey,
            _ah: PhantomData,
        }
    }
}

/// A remote RDMA target: address and key (see [`RemoteMr::at`](crate::RemoteMr::at)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteAddr {
    /// Address in the peer's region.
    pub addr: u64,
    /// The region's remote key.
    pub rkey: u32,
}

/// The operation part of one work request.
#[derive(Clone, Copy)]
struct Wr {
    wr_id: u64,
    op: SendOp,
    imm: u32,
    remote: RemoteAddr,
}

/// The posting half of a QP: the raw extended QP and its limits.
pub(crate) struct SendCore {
    pub(crate) qpx: *mut efa_sys::ibv_qp_ex,
    pub(crate) kind: TransportKind,
    pub(crate) limits: SendLimits,
    /// The efadv view of an SRD QP created with processing hints (rdma-core 64).
    pub(crate) efadv_qp: Option<NonNull<efa_sys::efadv_qp>>,
    /// The send-queue lock an open batch holds, where the provider takes one ([`held`]).
    pub(crate) lock: Option<SendLock>,
    /// Whether a provider session (`ibv_wr_start`) is open: a batch is alive, or was forgotten
    /// (`mem::forget`) before it could close the session.
    pub(crate) in_session: bool,
}

impl SendCore {
    /// Aborts the open provider session, if any (`ibv_wr_abort`: its work requests are never
    /// rung): a dropped batch's, or one a forgotten batch left holding the provider's send-queue
    /// lock.
    ///
    /// # Safety
    /// `self.qpx` must be live.
    pub(crate) unsafe fn abort_session(&mut self) {
        if self.in_session {
            // SAFETY: the QP is live (caller) and its session is open.
            unsafe { efa_sys::ibv_wr_abort(self.qpx) };
            self.end_session();
        }
    }

    /// Records that the provider's session closed and released its send-queue lock.
    fn end_session(&mut self) {
        self.in_session = false;
        if let Some(lock) = self.lock {
            held::leave_batch(lock);
        }
    }

    /// Append one WR to the open batch. Nothing reaches the QP unless every check passes, so a
    /// refused WR leaves the batch as it was.
    ///
    /// # Safety
    /// `self.qpx` must be live and inside `ibv_wr_start`; `dest`'s AH must be live.
    unsafe fn push(
        &mut self,
        wr: &Wr,
        signaled: bool,
        dest: Option<&Dest<'_>>,
        payload: Payload<'_>,
    ) -> Result<()> {
        let Wr {
            wr_id,
            op,
            imm,
            remote,
        } = *wr;
        check_wr(&self.limits, self.kind, op, &payload)?;
        let q = self.qpx;
        // SAFETY: (whole block) `q` is live inside a batch (caller), the op is in the QP's
        // send_ops_flags (checked above, so the provider set its pointer), SGE and inline
        // pointers are valid for the call (providers copy them into the WQE).
        unsafe {
            (*q).wr_id = wr_id;
            (*q).wr_flags = if signaled {
                efa_sys::IBV_SEND_SIGNALED
            } else {
                0
            };
            // Soft-RoCE's kernel side reads the data from the WQE only when the flag says
            // inline (else a send with no SGE fails with LOC_QP_OP_ERR); EFA and mlx5 take
            // `wr_set_inline_data` alone and ignore the flag.
            if matches!(payload, Payload::Inline(_)) {
                (*q).wr_flags |= efa_sys::IBV_SEND_INLINE;
            }
            let imm_be = imm.to_be();
            match op {
                SendOp::Send => efa_sys::ibv_wr_send(q),
                SendOp::SendImm => efa_sys::ibv_wr_send_imm(q, imm_be),
                SendOp::Write => efa_sys::ibv_wr_rdma_write(q, remote.rkey, remote.addr),
                SendOp::WriteImm => {
                    efa_sys::ibv_wr_rdma_write_imm(q, remote.rkey, remote.addr, imm_be)
                }
                SendOp::Read => efa_sys::ibv_wr_rdma_read(q, remote.rkey, remote.addr),
            }
            if let Some(d) = dest {
                efa_sys::ibv_wr_set_ud_addr(q, d.ah, d.qpn, d.qkey);
            }
            match payload {
                Payload::Sges([one]) => {
                    efa_sys::ibv_wr_set_sge(q, one.lkey(), one.addr(), one.len())
                }
                Payload::Sges(list) => {
                    efa_sys::ibv_wr_set_sge_list(q, list.len(), Sge::as_raw_slice(list))
                }
                Payload::Inline(data) => {
                    efa_sys::ibv_wr_set_inline_data(q, data.as_ptr() as *mut _, data.len())
                }
            }
        }
        Ok(())
    }
}

/// An open batch of send work requests (`ibv_wr_start` .. `ibv_wr_complete`).
///
/// Holds the QP mutably, so nothing else can post while it is open. [`commit`](Self::commit)
/// rings the doorbell once for the whole batch; dropping an uncommitted batch calls
/// `ibv_wr_abort` and posts nothing.
///
/// Do not `mem::forget` a batch: `ibv_wr_start` takes the provider's send-queue lock (EFA's QPs
/// without a thread domain) and only `ibv_wr_complete` or `ibv_wr_abort` release it. A
/// forgotten batch's work requests are never posted: the QP's next batch, or its drop, aborts
/// them first, so nothing waits for the lock.
///
/// For the same reason, while a batch is open on an EFA QP without a thread domain, polling the
/// QP's send CQ from the same thread fails with [`Error::PollInBatch`]: the provider retires
/// each send completion under that lock, so the poll would spin for ever. Commit or abort
/// first, or create the QP and its send CQ on one [`ThreadDomain`](crate::ThreadDomain).
///
/// ```compile_fail
/// # fn f(qp: &mut efa::RcQp) {
/// let a = qp.batch().unwrap();
/// let b = qp.batch().unwrap(); // a batch is exclusive: the first one is still open
/// drop(a);
/// # }
/// ```
#[must_use = "an uncommitted batch is aborted on drop"]
pub struct Batch<'q, T> {
    core: &'q mut SendCore,
    count: u32,
    signaled: bool,
    _t: PhantomData<T>,
}

impl<T> std::fmt::Debug for Batch<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("len", &self.count)
            .field("signaled", &self.signaled)
            .finish()
    }
}

impl<'q, T> Batch<'q, T> {
    /// Open a batch.
    ///
    /// # Safety
    /// `core.qpx` must be a live extended QP in RTS.
    pub(crate) unsafe fn start(core: &'q mut SendCore) -> Self {
        // SAFETY: forwarded from the caller. A session still open was left by a forgotten batch.
        unsafe { core.abort_session() };
        // SAFETY: forwarded from the caller; every QP of this crate sets wr_start.
        unsafe { efa_sys::ibv_wr_start(core.qpx) };
        core.in_session = true;
        if let Some(lock) = core.lock {
            held::enter_batch(lock);
        }
        Batch {
            core,
            count: 0,
            signaled: true,
            _t: PhantomData,
        }
    }

    /// Work requests added so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether no work request was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the following work requests generate a completion (default: yes).
    ///
    /// Unsignaled work requests are refused on EFA (every WR must complete).
    pub fn set_signaled(&mut self, signaled: bool) -> Result<()> {
        if !signaled && self.core.limits.signal_required {
            return Err(Error::Unsupported {
                what: "unsignaled work requests",
                why: "EFA completes every work request",
            });
        }
        self.signaled = signaled;
        Ok(())
    }

    fn push(
        &mut self,
        wr_id: u64,
        op: SendOp,
        imm: u32,
        remote: RemoteAddr,
        dest: Option<&Dest<'_>>,
        payload: Payload<'_>,
    ) -> Result<()> {
        let wr = Wr {
            wr_id,
            op,
            imm,
            remote,
        };
        if self.count >= self.core.limits.max_batch {
            return Err(Error::limit(
                Limit::BatchLength,
                u64::from(self.count) + 1,
                self.core.limits.max_batch.into(),
            ));
        }
        // SAFETY: the batch is open on a live QP (Batch::start); `dest` borrows a live AH.
        unsafe { self.core.push(&wr, self.signaled, dest, payload)? };
        self.count += 1;
        Ok(())
    }

    /// Post the batch: one doorbell for every work request added.
    pub fn commit(self) -> Result<()> {
        // SAFETY: the batch is open on a live QP; closed exactly once.
        let rc = unsafe { efa_sys::ibv_wr_complete(self.core.qpx) };
        self.core.end_session();
        if rc != 0 {
            return Err(Error::verbs_arg(
                "ibv_wr_complete",
                rc,
                "batch length",
                self.count.into(),
            ));
        }
        Ok(())
    }

    /// Drop every work request added; same as dropping the batch.
    pub fn abort(self) {}
}

impl<T> Drop for Batch<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the batch borrows a live QP; a committed one has no session left to abort.
        unsafe { self.core.abort_session() };
    }
}

const NO_REMOTE: RemoteAddr = RemoteAddr { addr: 0, rkey: 0 };

/// Operations of datagram queue pairs (SRD and UD): every WR names its destination.
impl<T: super::Datagram> Batch<'_, T> {
    /// SEND `sges` to `dest`.
    pub fn send(&mut self, wr_id: u64, dest: &Dest<'_>, sges: &[Sge]) -> Result<()> {
        self.push(
            wr_id,
            SendOp::Send,
            0,
            NO_REMOTE,
            Some(dest),
            Payload::Sges(sges),
        )
    }

    /// SEND `sges` to `dest` with immediate data `imm`.
    pub fn send_imm(&mut self, wr_id: u64, dest: &Dest<'_>, sges: &[Sge], imm: u32) -> Result<()> {
        self.push(
            wr_id,
            SendOp::SendImm,
            imm,
            NO_REMOTE,
            Some(dest),
            Payload::Sges(sges),
        )
    }

    /// SEND `data` inline (copied now, no registration) to `dest`, with optional immediate.
    pub fn send_inline(
        &mut self,
        wr_id: u64,
        dest: &Dest<'_>,
        data: &[u8],
        imm: Option<u32>,
    ) -> Result<()> {
        let op = if imm.is_some() {
            SendOp::SendImm
        } else {
            SendOp::Send
        };
        self.push(
            wr_id,
            op,
            imm.unwrap_or(0),
            NO_REMOTE,
            Some(dest),
            Payload::Inline(data),
        )
    }
}

/// RDMA on SRD: like every SRD WR, it carries the destination's address.
impl Batch<'_, Srd> {
    /// RDMA write `data`, copied into the WQE now (no registration), to `remote` at `dest`. Needs
    /// a QP built with [`QpBuilder::inline_write`](crate::QpBuilder::inline_write); at most the
    /// QP's `max_inline_data` bytes.
    pub fn write_inline(
        &mut self,
        wr_id: u64,
        dest: &Dest<'_>,
        data: &[u8],
        remote: RemoteAddr,
    ) -> Result<()> {
        self.push(
            wr_id,
            SendOp::Write,
            0,
            remote,
            Some(dest),
            Payload::Inline(data),
        )
    }

    /// Sets processing hints (`EFADV_WR_PROCESSING_HINT_*`, e.g. BURST_PPS_SENSITIVE) on the
    /// work request pushed last. Needs a QP built with
    /// [`QpBuilder::processing_hints`](crate::QpBuilder::processing_hints).
    pub fn processing_hints(&mut self, hints: u32) -> Result<()> {
        let Some(dv) = self.core.efadv_qp else {
            return Err(Error::Unsupported {
                what: "processing hints",
                why: "the queue pair was not built with processing hints",
            });
        };
        if self.count == 0 {
            return Err(Error::Invalid {
                what: "processing hints before any work request in the batch",
                value: u64::from(hints),
            });
        }
        // SAFETY: the batch is open (ibv_wr_start ran) and its last WR is being built; `dv`
        // came from efadv_qp_from_ibv_qp_ex on this QP, created with the hints flag.
        unsafe { efa_sys::efadv_wr_set_processing_hints(dv.as_ptr(), hints) };
        Ok(())
    }

    /// RDMA write `local` to `remote` at `dest`.
    pub fn write(
        &mut self,
        wr_id: u64,
        dest: &Dest<'_>,
        local: &[Sge],
        remote: RemoteAddr,
    ) -> Result<()> {
        self.push(
            wr_id,
            SendOp::Write,
            0,
            remote,
            Some(dest),
            Payload::Sges(local),
        )
    }

    /// RDMA write with immediate data, which completes a receive (or an unsolicited
    /// completion) at the target.
    pub fn write_imm(
        &mut self,
        wr_id: u64,
        dest: &Dest<'_>,
        local: &[Sge],
        remote: RemoteAddr,
        imm: u32,
    ) -> Result<()> {
        self.push(
            wr_id,
            SendOp::WriteImm,
            imm,
            remote,
            Some(dest),
            Payload::Sges(local),
        )
    }

    /// RDMA read `remote` at `dest` into `local`.
    pub fn read(
        &mut self,
        wr_id: u64,
        dest: &Dest<'_>,
        local: &[Sge],
        remote: RemoteAddr,
    ) -> Result<()> {
        self.push(
            wr_id,
            SendOp::Read,
            0,
            remote,
            Some(dest),
            Payload::Sges(local),
        )
    }
}

/// Operations of connected RC queue pairs: the peer is fixed at connect time.
impl Batch<'_, Rc> {
    /// SEND `sges`.
    pub fn send(&mut self, wr_id: u64, sges: &[Sge]) -> Result<()> {
        self.push(wr_id, SendOp::Send, 0, NO_REMOTE, None, Payload::Sges(sges))
    }

    /// SEND `sges` with immediate data.
    pub fn send_imm(&mut self, wr_id: u64, sges: &[Sge], imm: u32) -> Result<()> {
        self.push(
            wr_id,
            SendOp::SendImm,
            imm,
            NO_REMOTE,
            None,
            Payload::Sges(sges),
        )
    }

    /// SEND `data` inline, with optional immediate.
    pub fn send_inline(&mut self, wr_id: u64, data: &[u8], imm: Option<u32>) -> Result<()> {
        let op = if imm.is_some() {
            SendOp::SendImm
        } else {
            SendOp::Send
        };
        self.push(
            wr_id,
            op,
            imm.unwrap_or(0),
            NO_REMOTE,
            None,
            Payload::Inline(data),
        )
    }

    /// RDMA write `local` to `remote`.
    pub fn write(&mut self, wr_id: u64, local: &[Sge], remote: RemoteAddr) -> Result<()> {
        self.push(wr_id, SendOp::Write, 0, remote, None, Payload::Sges(local))
    }

    /// RDMA write `data` inline to `remote`.
    pub fn write_inline(&mut self, wr_id: u64, data: &[u8], remote: RemoteAddr) -> Result<()> {
        self.push(wr_id, SendOp::Write, 0, remote, None, Payload::Inline(data))
    }

    /// RDMA write with immediate data (consumes a receive at the target).
    pub fn write_imm(
        &mut self,
        wr_id: u64,
        local: &[Sge],
        remote: RemoteAddr,
        imm: u32,
    ) -> Result<()> {
        self.push(
            wr_id,
            SendOp::WriteImm,
            imm,
            remote,
            None,
            Payload::Sges(local),
        )
    }

    /// RDMA read `remote` into `local`.
    pub fn read(&mut self, wr_id: u64, local: &[Sge], remote: RemoteAddr) -> Result<()> {
        self.push(wr_id, SendOp::Read, 0, remote, None, Payload::Sges(local))
    }
}

//! Queue pairs typed by transport: [`SrdQp`], [`UdQp`], [`RcQp`].

mod post;

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

#[cfg(test)]
use post::check_wr;
use post::SendCore;
pub use post::{Batch, Dest, Payload, RemoteAddr, SendLimits, SendOp};

use crate::caps::EfaCaps;
use crate::cq::{Cq, CqInner};
use crate::error::{Error, Limit, Result};
use crate::gid::{Gid, GidEntry};
use crate::held::{self, SendLock};
use crate::mr::Sge;
use crate::pd::{Pd, ThreadDomain};
use crate::status::QpState;

/// Bytes of the Global Routing Header that UD receives on RoCE place before the payload.
pub const GRH_BYTES: usize = 40;

/// Largest Q_Key a user may choose; higher ones are privileged.
pub const MAX_QKEY: u32 = 0x7fff_ffff;

/// The transport of a queue pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// EFA Scalable Reliable Datagram: reliable, unordered, connectionless.
    Srd,
    /// Unreliable datagram.
    Ud,
    /// Reliable connected (not on EFA).
    Rc,
}

mod sealed {
    pub trait Sealed {}
}

/// A queue pair transport, as a type parameter of [`Qp`].
pub trait Transport: sealed::Sealed + Send + Sync + 'static {
    /// Which transport.
    const KIND: TransportKind;
}

/// Transports whose work requests name a destination ([`Dest`]).
pub trait Datagram: Transport {}

/// EFA SRD.
#[derive(Debug, Clone, Copy)]
pub enum Srd {}
/// Unreliable datagram.
#[derive(Debug, Clone, Copy)]
pub enum Ud {}
/// Reliable connected.
#[derive(Debug, Clone, Copy)]
pub enum Rc {}

impl sealed::Sealed for Srd {}
impl sealed::Sealed for Ud {}
impl sealed::Sealed for Rc {}
impl Transport for Srd {
    const KIND: TransportKind = TransportKind::Srd;
}
impl Transport for Ud {
    const KIND: TransportKind = TransportKind::Ud;
}
impl Transport for Rc {
    const KIND: TransportKind = TransportKind::Rc;
}
impl Datagram for Srd {}
impl Datagram for Ud {}

/// An EFA SRD queue pair.
pub type SrdQp = Qp<Srd>;
/// A UD queue pair.
pub type UdQp = Qp<Ud>;
/// An RC queue pair.
pub type RcQp = Qp<Rc>;

/// Queue sizes of a QP: requested at creation, then what the provider granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Send-queue depth.
    pub max_send_wr: u32,
    /// Receive-queue depth.
    pub max_recv_wr: u32,
    /// SGEs per send WR.
    pub max_send_sge: u32,
    /// SGEs per receive WR.
    pub max_recv_sge: u32,
    /// Inline bytes per send WR.
    pub max_inline_data: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        QpCaps {
            max_send_wr: 256,
            max_recv_wr: 256,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        }
    }
}

/// Receive SGEs clamped without allocation (EFA devices take at most 3).
const MAX_CLAMPED_RECV_SGES: usize = 8;

/// Receives [`Qp::post_recv_list`] hands the provider in one call.
pub const RECV_CHAIN: usize = 32;

/// EFA's RX descriptor length is 16 bits: rdma-core before 57 wraps a 64 KiB SGE to 0 bytes,
/// later ones clamp it. Clamping here makes every release receive into 65535 bytes.
fn clamp_efa_recv(s: Sge) -> Sge {
    Sge::new(s.addr(), s.len().min(u32::from(u16::MAX)), s.lkey())
}

/// Check requested queue sizes against the device's limits.
pub(crate) fn check_caps(
    c: &QpCaps,
    max_sq_wr: u32,
    max_rq_wr: u32,
    max_sq_sge: u32,
    max_rq_sge: u32,
    max_inline: u32,
) -> Result<()> {
    let checks = [
        (c.max_send_wr, max_sq_wr, Limit::SendQueueDepth),
        (c.max_recv_wr, max_rq_wr, Limit::RecvQueueDepth),
        (c.max_send_sge, max_sq_sge, Limit::SendSges),
        (c.max_recv_sge, max_rq_sge, Limit::RecvSges),
        (c.max_inline_data, max_inline, Limit::InlineBytes),
    ];
    for (value, max, limit) in checks {
        if value > max {
            return Err(Error::limit(limit, value.into(), max.into()));
        }
    }
    if c.max_send_wr == 0 {
        return Err(Error::Invalid {
            what: "send queue depth",
            value: 0,
        });
    }
    Ok(())
}

/// Checks queue depths the way EFA's provider sizes them, so what it would refuse with a bare
/// EINVAL is a typed [`Limit`] here.
///
/// - The send queue holds `rounddown_pow2(max_llq_size / wqe_size)` WQEs and the provider rounds
///   `max_send_wr` up to a power of two before the kernel checks it against `max_sq_wr`. A WQE is
///   128 bytes instead of 64 once inline data exceeds 32 bytes, which halves the depth (the LLQ is
///   taken as `max_sq_wr` 64-byte WQEs until `efadv_get_max_sq_depth` is bound).
/// - Receive descriptors are shared by a WR's SGEs: `max_recv_wr * max_recv_sge`, rounded up to
///   a power of two, must fit `max_rq_wr`. `max_recv_sge` 0 would divide by zero in the provider.
pub(crate) fn check_efa_depths(c: &QpCaps, max_sq_wr: u32, max_rq_wr: u32) -> Result<()> {
    let pow2_floor = |v: u32| {
        if v == 0 {
            0
        } else {
            1 << (31 - v.leading_zeros())
        }
    };
    let llq = if c.max_inline_data > 32 {
        max_sq_wr / 2
    } else {
        max_sq_wr
    };
    let sq = pow2_floor(llq);
    if c.max_send_wr > sq {
        return Err(Error::limit(
            Limit::SendQueueDepth,
            c.max_send_wr.into(),
            sq.into(),
        ));
    }
    if c.max_recv_sge == 0 {
        return Err(Error::Invalid {
            what: "receive SGEs per work request on EFA (at least 1)",
            value: 0,
        });
    }
    let rq = pow2_floor(max_rq_wr) / c.max_recv_sge;
    if c.max_recv_wr > rq {
        return Err(Error::limit(
            Limit::RecvQueueDepth,
            c.max_recv_wr.into(),
            rq.into(),
        ));
    }
    Ok(())
}

/// The address of a datagram QP, to hand to peers: GID, QP number and Q_Key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QpAddress {
    /// The port GID.
    pub gid: Gid,
    /// The QP number.
    pub qpn: u32,
    /// The Q_Key (datagram) or initial PSN (RC).
    pub qkey_or_psn: u32,
    /// The port LID (InfiniBand; 0 on RoCE and EFA).
    pub lid: u16,
}

/// RC connection parameters beyond the peer's endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RcOptions {
    /// Local ACK timeout exponent (4.096 us * 2^timeout).
    pub timeout: u8,
    /// Transport retries.
    pub retry_cnt: u8,
    /// RNR retries (7 = forever).
    pub rnr_retry: u8,
    /// Minimum RNR NAK timer code.
    pub min_rnr_timer: u8,
    /// Outstanding RDMA reads, each direction.
    pub max_rd_atomic: u8,
}

impl Default for RcOptions {
    fn default() -> Self {
        RcOptions {
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 12,
            max_rd_atomic: 1,
        }
    }
}

/// Options for a QP; finish with [`build_srd`](Self::build_srd), [`build_ud`](Self::build_ud)
/// or [`build_rc`](Self::build_rc).
#[derive(Debug)]
#[must_use]
pub struct QpBuilder<'a> {
    pd: &'a Arc<Pd>,
    send_cq: &'a Cq,
    recv_cq: &'a Cq,
    caps: QpCaps,
    qkey: u32,
    psn: u32,
    port: u8,
    gid_index: Option<u32>,
    rnr_retry: u8,
    unsolicited_write_recv: bool,
    inline_write: bool,
    processing_hints: bool,
    rc: RcOptions,
    remote_access: crate::mr::Access,
    td: Option<Arc<ThreadDomain>>,
    srq: Option<Arc<crate::srq::Srq>>,
    counters: Vec<(Arc<crate::counter::CompCounter>, crate::counter::CounterOps)>,
}

impl<'a> QpBuilder<'a> {
    /// A builder for a QP on `pd` completing sends into `send_cq` and receives into `recv_cq`.
    pub fn new(pd: &'a Arc<Pd>, send_cq: &'a Cq, recv_cq: &'a Cq) -> Self {
        QpBuilder {
            pd,
            send_cq,
            recv_cq,
            caps: QpCaps::default(),
            qkey: 0x1111_1111,
            psn: 0,
            port: 1,
            gid_index: None,
            rnr_retry: 7,
            unsolicited_write_recv: false,
            inline_write: false,
            processing_hints: false,
            rc: RcOptions::default(),
            remote_access: crate::mr::Access::REMOTE_READ | crate::mr::Access::REMOTE_WRITE,
            td: None,
            srq: None,
            counters: Vec::new(),
        }
    }

    /// Queue sizes to request.
    pub fn caps(mut self, caps: QpCaps) -> Self {
        self.caps = caps;
        self
    }

    /// Send-queue depth.
    pub fn max_send_wr(mut self, n: u32) -> Self {
        self.caps.max_send_wr = n;
        self
    }

    /// Receive-queue depth.
    pub fn max_recv_wr(mut self, n: u32) -> Self {
        self.caps.max_recv_wr = n;
        self
    }

    /// SGEs per send WR.
    pub fn max_send_sge(mut self, n: u32) -> Self {
        self.caps.max_send_sge = n;
        self
    }

    /// SGEs per receive WR.
    pub fn max_recv_sge(mut self, n: u32) -> Self {
        self.caps.max_recv_sge = n;
        self
    }

    /// Inline bytes per send WR.
    pub fn max_inline_data(mut self, n: u32) -> Self {
        self.caps.max_inline_data = n;
        self
    }

    /// Q_Key of a datagram QP (below `0x8000_0000`; default `0x11111111`).
    pub fn qkey(mut self, qkey: u32) -> Self {
        self.qkey = qkey;
        self
    }

    /// Initial send PSN (24 bits).
    pub fn psn(mut self, psn: u32) -> Self {
        self.psn = psn;
        self
    }

    /// Local port (default 1).
    pub fn port(mut self, port: u8) -> Self {
        self.port = port;
        self
    }

    /// Local GID index to address this QP by (default: [`Context::preferred_gid`](crate::Context::preferred_gid)).
    pub fn gid_index(mut self, index: u32) -> Self {
        self.gid_index = Some(index);
        self
    }

    /// SRD RNR retry count, applied only when the device has `RNR_RETRY` (default 7: retry
    /// forever, as libfabric does).
    pub fn rnr_retry(mut self, n: u8) -> Self {
        self.rnr_retry = n;
        self
    }

    /// Allow inline data on RDMA WRITE (`EFADV_QP_FLAGS_INLINE_WRITE`, SRD; needs the RDMA_WRITE
    /// capability and rdma-core 63). The QP then uses the 128-byte WQE, which halves its send
    /// queue depth. Off by default; see [`Batch::write_inline`](crate::qp::Batch::write_inline).
    pub fn inline_write(mut self, on: bool) -> Self {
        self.inline_write = on;
        self
    }

    /// Allow processing hints per work request (`EFADV_WR_EX_WITH_PROCESSING_HINTS`, SRD; needs
    /// rdma-core 64's `efadv_qp_from_ibv_qp_ex`). Off by default; see
    /// [`Batch::processing_hints`](crate::qp::Batch::processing_hints).
    pub fn processing_hints(mut self, on: bool) -> Self {
        self.processing_hints = on;
        self
    }

    /// Let RDMA write with immediate complete without a posted receive (EFA
    /// `UNSOLICITED_WRITE_RECV`; refused at build on devices without it).
    pub fn unsolicited_write_recv(mut self, on: bool) -> Self {
        self.unsolicited_write_recv = on;
        self
    }

    /// RC connection options.
    pub fn rc_options(mut self, rc: RcOptions) -> Self {
        self.rc = rc;
        self
    }

    /// Remote operations an RC QP accepts (default remote read and write; each MR still
    /// grants its own rights).
    pub fn remote_access(mut self, access: crate::mr::Access) -> Self {
        self.remote_access = access;
        self
    }

    /// Attach `counter` to the QP, counting `ops`: done right after creation, in RESET, as
    /// `ibv_qp_attach_comp_cntr(3)` requires (see [`CompCounter`](crate::CompCounter)). May be
    /// given more than once, with disjoint `ops`. The build fails with the counter's error
    /// (for example `EBUSY` for overlapping `ops`).
    pub fn counter(
        mut self,
        counter: &Arc<crate::counter::CompCounter>,
        ops: crate::counter::CounterOps,
    ) -> Self {
        self.counters.push((Arc::clone(counter), ops));
        self
    }

    /// Create the QP on a thread domain (both CQs must be on the same one for a lock-free path).
    ///
    /// # Safety
    /// As [`CqBuilder::thread_domain`](crate::CqBuilder::thread_domain): the QP and the CQs on
    /// `td` must never be used from two threads at the same time.
    pub unsafe fn thread_domain(mut self, td: &Arc<ThreadDomain>) -> Self {
        self.td = Some(Arc::clone(td));
        self
    }

    /// Take receives from `srq` instead of a receive queue of the QP's own (the receive
    /// queue sizes are then ignored, and [`Qp::post_recv`] fails: post to the SRQ). The QP
    /// keeps the SRQ alive. RC and UD on verbs devices; `srq` must be on the QP's PD.
    pub fn srq(mut self, srq: &Arc<crate::srq::Srq>) -> Self {
        self.srq = Some(Arc::clone(srq));
        self
    }

    fn local_gid(&self) -> Result<GidEntry> {
        let ctx = self.pd.context();
        match self.gid_index {
            Some(index) => Ok(GidEntry {
                port: self.port,
                index,
                gid: ctx.query_gid(self.port, index)?,
                gid_type: crate::sysfs::gid_type(&ctx.info().ibdev_path, self.port, index),
            }),
            None => ctx.preferred_gid(self.port),
        }
    }

    fn pd_raw(&self) -> *mut efa_sys::ibv_pd {
        match &self.td {
            Some(td) => td.parent_raw(),
            None => self.pd.as_raw(),
        }
    }

    fn init_attr(&self, qp_type: u32, ops: u64, sig_all: bool) -> efa_sys::ibv_qp_init_attr_ex {
        // SAFETY: plain C struct; zero means no SRQ, no XRC, no RSS.
        let mut a: efa_sys::ibv_qp_init_attr_ex = unsafe { std::mem::zeroed() };
        a.send_cq = self.send_cq.inner().as_cq();
        a.recv_cq = self.recv_cq.inner().as_cq();
        a.cap.max_send_wr = self.caps.max_send_wr;
        a.cap.max_send_sge = self.caps.max_send_sge;
        match &self.srq {
            Some(srq) => a.srq = srq.as_raw(),
            None => {
                a.cap.max_recv_wr = self.caps.max_recv_wr;
                a.cap.max_recv_sge = self.caps.max_recv_sge;
            }
        }
        a.cap.max_inline_data = self.caps.max_inline_data;
        a.qp_type = qp_type as _;
        a.sq_sig_all = sig_all.into();
        a.comp_mask = efa_sys::IBV_QP_INIT_ATTR_PD | efa_sys::IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
        a.pd = self.pd_raw();
        a.send_ops_flags = ops;
        a
    }

    fn check_limits(&self) -> Result<()> {
        if let Some(td) = &self.td {
            if !Arc::ptr_eq(td.pd(), self.pd) {
                return Err(Error::Invalid {
                    what: "thread domain made for another protection domain than the QP's (its PD handle)",
                    value: td.pd().handle().into(),
                });
            }
        }
        if let Some(srq) = &self.srq {
            if !Arc::ptr_eq(srq.pd(), self.pd) {
                return Err(Error::Invalid {
                    what: "shared receive queue made for another protection domain than the QP's (its PD handle)",
                    value: srq.pd().handle().into(),
                });
            }
        }
        let ctx = self.pd.context();
        match ctx.efa_attr() {
            Some(e) => {
                check_caps(
                    &self.caps,
                    e.max_sq_wr,
                    e.max_rq_wr,
                    e.max_sq_sge.into(),
                    e.max_rq_sge.into(),
                    e.max_inline(),
                )?;
                let c = &self.caps;
                let sq =
                    ctx.efa_max_sq_depth(c.max_send_sge, c.max_inline_data, self.inline_write)?;
                let rq = match c.max_recv_sge {
                    0 => None,
                    sge => ctx.efa_max_rq_depth(sge)?,
                };
                match (sq, rq) {
                    // The library's own answer (rdma-core 63 and later).
                    (Some(sq), Some(rq)) => {
                        if c.max_send_wr > sq {
                            return Err(Error::limit(
                                Limit::SendQueueDepth,
                                c.max_send_wr.into(),
                                sq.into(),
                            ));
                        }
                        if c.max_recv_wr > rq {
                            return Err(Error::limit(
                                Limit::RecvQueueDepth,
                                c.max_recv_wr.into(),
                                rq.into(),
                            ));
                        }
                        Ok(())
                    }
                    _ => check_efa_depths(c, e.max_sq_wr, e.max_rq_wr),
                }
            }
            None => {
                let d = ctx.device_attr();
                check_caps(
                    &self.caps,
                    d.max_qp_wr,
                    d.max_qp_wr,
                    d.max_sge,
                    d.max_sge,
                    u32::MAX,
                )
            }
        }
    }

    /// The efadv options of an SRD QP against the device and the library.
    fn check_srd_options(&self, efa: &crate::EfaDeviceAttr, dv: &efa_sys::Efadv) -> Result<()> {
        if self.unsolicited_write_recv && !efa.caps.contains(EfaCaps::UNSOLICITED_WRITE_RECV) {
            return Err(Error::Unsupported {
                what: "unsolicited write-receive",
                why: "device lacks the UNSOLICITED_WRITE_RECV capability",
            });
        }
        if self.inline_write && !efa.caps.contains(EfaCaps::RDMA_WRITE) {
            return Err(Error::Unsupported {
                what: "inline RDMA write",
                why: "device lacks the RDMA_WRITE capability",
            });
        }
        if self.inline_write && dv.efadv_get_max_sq_depth.is_none() {
            return Err(Error::Unsupported {
                what: "inline RDMA write",
                why: "libefa older than rdma-core 63 (no EFA_1.5 symbols)",
            });
        }
        if self.processing_hints && dv.efadv_qp_from_ibv_qp_ex.is_none() {
            return Err(Error::Unsupported {
                what: "processing hints",
                why: "libefa older than rdma-core 64 (no efadv_qp_from_ibv_qp_ex)",
            });
        }
        Ok(())
    }

    fn check_qkey(&self) -> Result<()> {
        if self.qkey > MAX_QKEY {
            return Err(Error::limit(Limit::QKey, self.qkey.into(), MAX_QKEY.into()));
        }
        if self.psn > 0x00ff_ffff {
            return Err(Error::limit(Limit::Bits24, self.psn.into(), 0x00ff_ffff));
        }
        Ok(())
    }

    /// Create an SRD QP and bring it to RTS (EFA only).
    ///
    /// # Errors
    ///
    /// [`Error::NotEfa`] on another device, [`Error::Limit`] for queue sizes or a Q_Key beyond
    /// the device's limits, [`Error::Unsupported`] for options the device lacks, [`Error::Verbs`]
    /// when creation or a state transition fails (with its errno and the attribute at fault).
    pub fn build_srd(self) -> Result<SrdQp> {
        let ctx = Arc::clone(self.pd.context());
        let efa = *ctx.require_efa()?;
        self.check_qkey()?;
        self.check_limits()?;
        let dv = efa_sys::efadv()?;
        self.check_srd_options(&efa, dv)?;
        let gid = self.local_gid()?;
        let port = ctx.query_port(self.port)?;
        let ops = efa.srd_send_ops();
        let mut attr = self.init_attr(efa_sys::IBV_QPT_DRIVER, ops, true);
        // Zeroed, with only the fields this library generation knows set: flags stay zero unless
        // the capability (and so a library that has the field) is present.
        let mut efa_attr_flags = 0u16;
        if self.unsolicited_write_recv {
            efa_attr_flags |= efa_sys::EFADV_QP_FLAGS_UNSOLICITED_WRITE_RECV as u16;
        }
        if self.inline_write {
            efa_attr_flags |= efa_sys::EFADV_QP_FLAGS_INLINE_WRITE as u16;
        }
        let mut efa_attr = efa_sys::efadv_qp_init_attr {
            driver_qp_type: efa_sys::EFADV_QP_DRIVER_TYPE_SRD,
            flags: efa_attr_flags,
            wr_flags: if self.processing_hints {
                u64::from(efa_sys::EFADV_WR_EX_WITH_PROCESSING_HINTS)
            } else {
                0
            },
            ..Default::default()
        };
        // SAFETY: the context is open, attrs initialised, and the efadv struct's full size is
        // passed: older libraries check the tail is zero, newer ones copy what they get.
        let raw = unsafe {
            (dv.efadv_create_qp_ex)(
                ctx.as_raw(),
                &mut attr,
                &mut efa_attr,
                std::mem::size_of::<efa_sys::efadv_qp_init_attr>() as u32,
            )
        };
        let raw = NonNull::new(raw).ok_or_else(|| {
            Error::verbs_arg(
                "efadv_create_qp_ex",
                crate::error::last_errno(),
                "send_ops_flags",
                ops,
            )
        })?;
        let limits = SendLimits {
            max_send_bytes: port.max_msg_sz.into(),
            max_rdma_bytes: efa.max_rdma_size.into(),
            max_send_sge: attr.cap.max_send_sge,
            max_rdma_sge: 1,
            max_inline: attr.cap.max_inline_data,
            inline_rdma: self.inline_write,
            max_batch: attr.cap.max_send_wr,
            ops,
            signal_required: true,
        };
        let hints = self.processing_hints;
        let mut qp = Qp::<Srd>::wrap(self, raw, attr.cap, limits, gid)?;
        if hints {
            qp.attach_efadv_qp(dv)?;
        }
        qp.modify(
            QpState::Init,
            efa_sys::IBV_QP_PKEY_INDEX | efa_sys::IBV_QP_PORT | efa_sys::IBV_QP_QKEY,
            |_| {},
        )?;
        qp.modify(QpState::Rtr, 0, |_| {})?;
        let rnr = efa.caps.contains(EfaCaps::RNR_RETRY);
        let (psn, rnr_retry) = (qp.psn, qp.rnr_retry);
        qp.modify(
            QpState::Rts,
            efa_sys::IBV_QP_SQ_PSN | if rnr { efa_sys::IBV_QP_RNR_RETRY } else { 0 },
            |a| {
                a.sq_psn = psn;
                a.rnr_retry = rnr_retry;
            },
        )?;
        Ok(qp)
    }

    /// Create a UD QP and bring it to RTS.
    ///
    /// # Errors
    ///
    /// [`Error::Limit`] for queue sizes or a Q_Key beyond the device's limits, [`Error::Verbs`]
    /// when creation or a state transition fails (with its errno and the attribute at fault).
    pub fn build_ud(self) -> Result<UdQp> {
        let ctx = Arc::clone(self.pd.context());
        self.check_qkey()?;
        self.check_limits()?;
        let gid = self.local_gid()?;
        let port = ctx.query_port(self.port)?;
        let ops = u64::from(efa_sys::IBV_QP_EX_WITH_SEND | efa_sys::IBV_QP_EX_WITH_SEND_WITH_IMM);
        let mut attr = self.init_attr(efa_sys::IBV_QPT_UD, ops, ctx.is_efa());
        // SAFETY: the context is open and `attr` initialised; NULL reports failure via errno.
        let raw = unsafe { efa_sys::ibv_create_qp_ex(ctx.verbs(), ctx.as_raw(), &mut attr) };
        let raw = NonNull::new(raw).ok_or_else(|| {
            Error::verbs_arg(
                "ibv_create_qp_ex",
                crate::error::last_errno(),
                "max_send_wr",
                self.caps.max_send_wr.into(),
            )
        })?;
        let max_send = if ctx.is_efa() {
            port.max_msg_sz
        } else {
            port.active_mtu.bytes()
        };
        let limits = SendLimits {
            max_send_bytes: max_send.into(),
            max_rdma_bytes: 0,
            max_send_sge: attr.cap.max_send_sge,
            max_rdma_sge: 0,
            max_inline: attr.cap.max_inline_data,
            inline_rdma: false,
            max_batch: attr.cap.max_send_wr,
            ops,
            signal_required: ctx.is_efa(),
        };
        let mut qp = Qp::<Ud>::wrap(self, raw, attr.cap, limits, gid)?;
        qp.modify(
            QpState::Init,
            efa_sys::IBV_QP_PKEY_INDEX | efa_sys::IBV_QP_PORT | efa_sys::IBV_QP_QKEY,
            |_| {},
        )?;
        qp.modify(QpState::Rtr, 0, |_| {})?;
        let psn = qp.psn;
        qp.modify(QpState::Rts, efa_sys::IBV_QP_SQ_PSN, |a| a.sq_psn = psn)?;
        Ok(qp)
    }

    /// Create an RC QP in INIT; [`Qp::connect`] takes it to RTS. Not on EFA.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] on EFA devices (no RC), [`Error::Limit`] for queue sizes beyond the
    /// device's limits, [`Error::Verbs`] when creation fails (with its errno).
    pub fn build_rc(self) -> Result<RcQp> {
        let ctx = Arc::clone(self.pd.context());
        if ctx.is_efa() {
            return Err(Error::Unsupported {
                what: "RC queue pairs",
                why: "EFA offers SRD and UD only",
            });
        }
        self.check_qkey()?;
        self.check_limits()?;
        let gid = self.local_gid()?;
        let port = ctx.query_port(self.port)?;
        let ops = u64::from(
            efa_sys::IBV_QP_EX_WITH_SEND
                | efa_sys::IBV_QP_EX_WITH_SEND_WITH_IMM
                | efa_sys::IBV_QP_EX_WITH_RDMA_WRITE
                | efa_sys::IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM
                | efa_sys::IBV_QP_EX_WITH_RDMA_READ,
        );
        let mut attr = self.init_attr(efa_sys::IBV_QPT_RC, ops, false);
        // SAFETY: as in build_ud.
        let raw = unsafe { efa_sys::ibv_create_qp_ex(ctx.verbs(), ctx.as_raw(), &mut attr) };
        let raw = NonNull::new(raw).ok_or_else(|| {
            Error::verbs_arg(
                "ibv_create_qp_ex",
                crate::error::last_errno(),
                "max_send_wr",
                self.caps.max_send_wr.into(),
            )
        })?;
        let limits = SendLimits {
            max_send_bytes: port.max_msg_sz.into(),
            max_rdma_bytes: port.max_msg_sz.into(),
            max_send_sge: attr.cap.max_send_sge,
            max_rdma_sge: attr.cap.max_send_sge,
            max_inline: attr.cap.max_inline_data,
            inline_rdma: true,
            max_batch: attr.cap.max_send_wr,
            ops,
            signal_required: false,
        };
        let access = self.remote_access.bits() | crate::mr::Access::LOCAL_WRITE.bits();
        let mut qp = Qp::<Rc>::wrap(self, raw, attr.cap, limits, gid)?;
        qp.active_mtu = port.active_mtu;
        qp.modify(
            QpState::Init,
            efa_sys::IBV_QP_PKEY_INDEX | efa_sys::IBV_QP_PORT | efa_sys::IBV_QP_ACCESS_FLAGS,
            |a| a.qp_access_flags = access,
        )?;
        Ok(qp)
    }
}

/// The send-queue lock a batch on this QP holds while it is open ([`held`]): on EFA unless
/// the QP and its send CQ share a thread domain (rdma-core's `efa_check_cq_on_same_pd_td`).
fn send_lock(b: &QpBuilder<'_>, raw: NonNull<efa_sys::ibv_qp>) -> Option<SendLock> {
    let cq = b.send_cq.inner();
    let shared_td = matches!((&b.td, cq.td()), (Some(q), Some(c)) if Arc::ptr_eq(q, c));
    if !b.pd.context().is_efa() || shared_td {
        return None;
    }
    Some(SendLock {
        cq: cq.raw_addr(),
        // SAFETY: the QP was just created and is live.
        qpn: unsafe { (*raw.as_ptr()).qp_num },
    })
}

/// A queue pair of transport `T`, destroyed on drop (outstanding work is discarded; its CQs,
/// PD and thread domain stay alive until then).
pub struct Qp<T: Transport> {
    core: SendCore,
    raw: NonNull<efa_sys::ibv_qp>,
    pd: Arc<Pd>,
    _send_cq: Arc<CqInner>,
    _recv_cq: Arc<CqInner>,
    _td: Option<Arc<ThreadDomain>>,
    _srq: Option<Arc<crate::srq::Srq>>,
    caps: QpCaps,
    state: QpState,
    qkey: u32,
    psn: u32,
    port: u8,
    gid: GidEntry,
    rnr_retry: u8,
    rc: RcOptions,
    active_mtu: crate::context::Mtu,
    /// Completion counters attached to the QP: they outlive it.
    counters: Vec<Arc<crate::counter::CompCounter>>,
    _t: PhantomData<T>,
}

// SAFETY: a QP has no thread affinity; posting needs &mut. QPs on a thread domain carry the
// caller's promise made in `QpBuilder::thread_domain`.
unsafe impl<T: Transport> Send for Qp<T> {}
// SAFETY: &self methods only read immutable fields.
unsafe impl<T: Transport> Sync for Qp<T> {}

impl<T: Transport> std::fmt::Debug for Qp<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qp")
            .field("transport", &T::KIND)
            .field("qpn", &self.qp_num())
            .field("state", &self.state)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Qp<T> {
    fn wrap(
        b: QpBuilder<'_>,
        raw: NonNull<efa_sys::ibv_qp>,
        cap: efa_sys::ibv_qp_cap,
        limits: SendLimits,
        gid: GidEntry,
    ) -> Result<Self> {
        let ctx = b.pd.context();
        // SAFETY: the QP is live and was created with IBV_QP_INIT_ATTR_SEND_OPS_FLAGS.
        let qpx = unsafe { (ctx.verbs().ibv_qp_to_qp_ex)(raw.as_ptr()) };
        if qpx.is_null() {
            let e = Error::last_os("ibv_qp_to_qp_ex");
            // SAFETY: created above, not yet wrapped, destroyed once.
            unsafe { (ctx.verbs().ibv_destroy_qp)(raw.as_ptr()) };
            return Err(e);
        }
        let lock = send_lock(&b, raw);
        let counters = b.counters;
        let mut qp = Qp {
            core: SendCore {
                qpx,
                kind: T::KIND,
                limits,
                efadv_qp: None,
                lock,
                in_session: false,
            },
            raw,
            pd: Arc::clone(b.pd),
            _send_cq: Arc::clone(b.send_cq.inner()),
            _recv_cq: Arc::clone(b.recv_cq.inner()),
            _td: b.td,
            _srq: b.srq,
            caps: QpCaps {
                max_send_wr: cap.max_send_wr,
                max_recv_wr: cap.max_recv_wr,
                max_send_sge: cap.max_send_sge,
                max_recv_sge: cap.max_recv_sge,
                max_inline_data: cap.max_inline_data,
            },
            state: QpState::Reset,
            qkey: b.qkey,
            psn: b.psn,
            port: b.port,
            gid,
            rnr_retry: b.rnr_retry,
            rc: b.rc,
            active_mtu: crate::context::Mtu::Mtu1024,
            counters: Vec::new(),
            _t: PhantomData,
        };
        for (c, ops) in counters {
            c.attach(&mut qp, ops)?;
        }
        Ok(qp)
    }

    /// Keeps a completion counter alive as long as the QP (see [`CompCounter::attach`]).
    pub(crate) fn keep_counter(&mut self, c: Arc<crate::counter::CompCounter>) {
        self.counters.push(c);
    }

    /// Takes the efadv view of the QP (processing hints).
    fn attach_efadv_qp(&mut self, dv: &efa_sys::Efadv) -> Result<()> {
        let f = dv.efadv_qp_from_ibv_qp_ex.ok_or(Error::Unsupported {
            what: "processing hints",
            why: "libefa older than rdma-core 64 (no efadv_qp_from_ibv_qp_ex)",
        })?;
        // SAFETY: the extended QP is live and was created by efadv_create_qp_ex.
        let p = unsafe { f(self.core.qpx) };
        self.core.efadv_qp =
            Some(NonNull::new(p).ok_or_else(|| Error::last_os("efadv_qp_from_ibv_qp_ex"))?);
        Ok(())
    }

    /// Move to `to`, setting `mask` attributes (besides the state) through `set`.
    fn modify(
        &mut self,
        to: QpState,
        mask: u32,
        set: impl FnOnce(&mut efa_sys::ibv_qp_attr),
    ) -> Result<()> {
        // SAFETY: plain C struct; zero is a valid starting point.
        let mut a: efa_sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = to.raw() as _;
        a.port_num = self.port;
        a.qkey = self.qkey;
        set(&mut a);
        let mask = mask | efa_sys::IBV_QP_STATE;
        // SAFETY: the QP is live and `a` initialised for every bit in `mask`.
        let rc = unsafe {
            (self.pd.context().verbs().ibv_modify_qp)(
                self.raw.as_ptr(),
                &mut a,
                mask as libc::c_int,
            )
        };
        if rc != 0 {
            return Err(Error::verbs_arg(
                "ibv_modify_qp",
                rc,
                "target state",
                to.raw().into(),
            ));
        }
        self.state = to;
        Ok(())
    }

    /// The QP number.
    pub fn qp_num(&self) -> u32 {
        // SAFETY: the QP is live; qp_num is immutable.
        unsafe { self.raw.as_ref().qp_num }
    }

    /// The transport.
    pub fn transport(&self) -> TransportKind {
        T::KIND
    }

    /// Queue sizes the provider granted.
    pub fn caps(&self) -> &QpCaps {
        &self.caps
    }

    /// What a work request may carry on this QP.
    pub fn limits(&self) -> &SendLimits {
        &self.core.limits
    }

    /// The state this handle last moved the QP to (asynchronous errors are not reflected; see
    /// [`query_state`](Self::query_state)).
    pub fn state(&self) -> QpState {
        self.state
    }

    /// Ask the device for the QP's current state.
    pub fn query_state(&self) -> Result<QpState> {
        // SAFETY: plain C structs; zero is valid.
        let mut a: efa_sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut init: efa_sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the QP is live; both out pointers are valid.
        let rc = unsafe {
            (self.pd.context().verbs().ibv_query_qp)(
                self.raw.as_ptr(),
                &mut a,
                efa_sys::IBV_QP_STATE as libc::c_int,
                &mut init,
            )
        };
        if rc != 0 {
            return Err(Error::verbs("ibv_query_qp", rc));
        }
        Ok(QpState::from_raw(a.qp_state as u32))
    }

    /// The address peers use for this QP: GID, QP number and Q_Key (datagram) or PSN (RC).
    pub fn endpoint(&self) -> QpAddress {
        QpAddress {
            gid: self.gid.gid,
            qpn: self.qp_num(),
            qkey_or_psn: if T::KIND == TransportKind::Rc {
                self.psn
            } else {
                self.qkey
            },
            lid: 0,
        }
    }

    /// The local GID entry this QP is addressed by.
    pub fn gid_entry(&self) -> &GidEntry {
        &self.gid
    }

    /// The Q_Key (datagram QPs).
    pub fn qkey(&self) -> u32 {
        self.qkey
    }

    /// Open a batch of send work requests. Needs RTS.
    pub fn batch(&mut self) -> Result<Batch<'_, T>> {
        if self.state != QpState::Rts {
            return Err(Error::QpState {
                op: "post sends",
                state: self.state,
            });
        }
        // SAFETY: the QP is live, in RTS, and the batch borrows it exclusively.
        Ok(unsafe { Batch::start(&mut self.core) })
    }

    /// Post one receive of `sges` (on UD over RoCE the first [`GRH_BYTES`] receive the GRH).
    pub fn post_recv(&mut self, wr_id: u64, sges: &[Sge]) -> Result<()> {
        self.check_recv_state()?;
        check_recv_sges(sges, self.caps.max_recv_sge)?;
        let mut clamped = [Sge::new(0, 0, 0); MAX_CLAMPED_RECV_SGES];
        let sges = if self.pd.context().is_efa()
            && sges.len() <= MAX_CLAMPED_RECV_SGES
            && sges.iter().any(|s| s.len() > u32::from(u16::MAX))
        {
            for (c, s) in clamped.iter_mut().zip(sges) {
                *c = clamp_efa_recv(*s);
            }
            &clamped[..sges.len()]
        } else {
            sges
        };
        let mut wr = recv_wr(wr_id, sges);
        let mut bad = std::ptr::null_mut();
        // SAFETY: the QP is live; the WR and SGEs are valid for the call (providers copy them).
        let rc = unsafe { efa_sys::ibv_post_recv(self.raw.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::verbs_arg("ibv_post_recv", rc, "wr_id", wr_id));
        }
        Ok(())
    }

    /// Post one receive per `(wr_id, sge)`, chained so the provider takes up to
    /// [`RECV_CHAIN`] of them in one call (one doorbell). Allocates nothing.
    ///
    /// On an error the receives before the failing one are posted; the error's argument says
    /// how many.
    pub fn post_recv_list(&mut self, wrs: &[(u64, Sge)]) -> Result<()> {
        self.check_recv_state()?;
        let efa = self.pd.context().is_efa();
        let mut posted = 0u64;
        for chunk in wrs.chunks(RECV_CHAIN) {
            let mut sges = [Sge::new(0, 0, 0); RECV_CHAIN];
            for (s, (_, sge)) in sges.iter_mut().zip(chunk) {
                *s = if efa { clamp_efa_recv(*sge) } else { *sge };
            }
            let sg = Sge::as_raw_slice(&sges) as *mut efa_sys::ibv_sge;
            let mut chain = [efa_sys::ibv_recv_wr {
                wr_id: 0,
                next: std::ptr::null_mut(),
                sg_list: std::ptr::null_mut(),
                num_sge: 1,
            }; RECV_CHAIN];
            let base = chain.as_mut_ptr();
            for (k, (wr_id, _)) in chunk.iter().enumerate() {
                chain[k].wr_id = *wr_id;
                chain[k].sg_list = sg.wrapping_add(k);
                if k + 1 < chunk.len() {
                    chain[k].next = base.wrapping_add(k + 1);
                }
            }
            let mut bad = std::ptr::null_mut();
            // SAFETY: the QP is live; the chain links only entries of `chain`, each naming one
            // entry of `sges`, and both arrays outlive the call (providers copy them).
            let rc = unsafe { efa_sys::ibv_post_recv(self.raw.as_ptr(), base, &mut bad) };
            if rc != 0 {
                let before = if bad.is_null() {
                    0
                } else {
                    (bad as usize).saturating_sub(base as usize)
                        / std::mem::size_of::<efa_sys::ibv_recv_wr>()
                };
                return Err(Error::verbs_arg(
                    "ibv_post_recv",
                    rc,
                    "receives posted before the failure",
                    posted + before as u64,
                ));
            }
            posted += chunk.len() as u64;
        }
        Ok(())
    }

    fn check_recv_state(&self) -> Result<()> {
        if self.state == QpState::Reset {
            return Err(Error::QpState {
                op: "post receives",
                state: self.state,
            });
        }
        Ok(())
    }

    /// Move the QP to the error state: outstanding work completes with `WrFlushErr`.
    pub fn set_error(&mut self) -> Result<()> {
        self.modify(QpState::Err, 0, |_| {})
    }

    /// The raw QP; valid while `self` lives.
    pub fn as_raw(&self) -> *mut efa_sys::ibv_qp {
        self.raw.as_ptr()
    }

    /// The provider's send and receive work queues (`efadv_query_qp_wqs`, rdma-core 59): buffer,
    /// entry size, entry count, doorbell and batch size, for users who write WQEs themselves.
    ///
    /// # Safety
    /// The pointers are the provider's own rings: writing through them bypasses every check of
    /// this crate and of the provider, and must follow EFA's WQE format and doorbell protocol;
    /// they are valid while `self` lives, and posting through this crate at the same time
    /// corrupts the provider's producer counters.
    pub unsafe fn efa_work_queues(
        &self,
    ) -> Result<(efa_sys::efadv_wq_attr, efa_sys::efadv_wq_attr)> {
        let f = efa_sys::efadv()?
            .efadv_query_qp_wqs
            .ok_or(Error::Unsupported {
                what: "work queue query",
                why: "libefa older than rdma-core 59 (no efadv_query_qp_wqs)",
            })?;
        let mut sq = efa_sys::efadv_wq_attr::default();
        let mut rq = efa_sys::efadv_wq_attr::default();
        // SAFETY: the QP is live; both structs are initialised and passed with their size.
        let rc = unsafe {
            f(
                self.raw.as_ptr(),
                &mut sq,
                &mut rq,
                std::mem::size_of_val(&sq) as u32,
            )
        };
        if rc != 0 {
            return Err(Error::verbs("efadv_query_qp_wqs", rc));
        }
        Ok((sq, rq))
    }
}

impl Qp<Rc> {
    /// Connect to the peer at `remote` (INIT -> RTR -> RTS).
    ///
    /// Fails with [`Error::QpState`] unless the QP is in INIT (freshly built).
    pub fn connect(&mut self, remote: &QpAddress) -> Result<()> {
        if self.state != QpState::Init {
            return Err(Error::QpState {
                op: "connect",
                state: self.state,
            });
        }
        if remote.qpn > 0x00ff_ffff || remote.qkey_or_psn > 0x00ff_ffff {
            return Err(Error::limit(
                Limit::Bits24,
                remote.qpn.max(remote.qkey_or_psn).into(),
                0x00ff_ffff,
            ));
        }
        let rc = self.rc;
        let sgid = u8::try_from(self.gid.index)
            .map_err(|_| Error::limit(Limit::GidIndex, self.gid.index.into(), 255))?;
        let mtu = self.active_mtu;
        let port = self.port;
        self.modify(
            QpState::Rtr,
            efa_sys::IBV_QP_AV
                | efa_sys::IBV_QP_PATH_MTU
                | efa_sys::IBV_QP_DEST_QPN
                | efa_sys::IBV_QP_RQ_PSN
                | efa_sys::IBV_QP_MAX_DEST_RD_ATOMIC
                | efa_sys::IBV_QP_MIN_RNR_TIMER,
            |a| {
                a.path_mtu = mtu.raw() as _;
                a.dest_qp_num = remote.qpn;
                a.rq_psn = remote.qkey_or_psn;
                a.max_dest_rd_atomic = rc.max_rd_atomic;
                a.min_rnr_timer = rc.min_rnr_timer;
                a.ah_attr.is_global = 1;
                a.ah_attr.dlid = remote.lid;
                a.ah_attr.port_num = port;
                a.ah_attr.grh.dgid = remote.gid.to_raw();
                a.ah_attr.grh.sgid_index = sgid;
                a.ah_attr.grh.hop_limit = 64;
            },
        )?;
        let psn = self.psn;
        self.modify(
            QpState::Rts,
            efa_sys::IBV_QP_TIMEOUT
                | efa_sys::IBV_QP_RETRY_CNT
                | efa_sys::IBV_QP_RNR_RETRY
                | efa_sys::IBV_QP_SQ_PSN
                | efa_sys::IBV_QP_MAX_QP_RD_ATOMIC,
            |a| {
                a.timeout = rc.timeout;
                a.retry_cnt = rc.retry_cnt;
                a.rnr_retry = rc.rnr_retry;
                a.sq_psn = psn;
                a.max_rd_atomic = rc.max_rd_atomic;
            },
        )
    }
}

/// Refuses a receive of more entries than `max` (the queue's `max_recv_sge`).
pub(crate) fn check_recv_sges(sges: &[Sge], max: u32) -> Result<()> {
    if sges.len() as u64 > u64::from(max) {
        return Err(Error::limit(Limit::RecvSges, sges.len() as u64, max.into()));
    }
    Ok(())
}

/// One receive work request of `sges`, unchained; valid while `sges` is.
pub(crate) fn recv_wr(wr_id: u64, sges: &[Sge]) -> efa_sys::ibv_recv_wr {
    efa_sys::ibv_recv_wr {
        wr_id,
        next: std::ptr::null_mut(),
        sg_list: Sge::as_raw_slice(sges) as *mut _,
        num_sge: sges.len() as libc::c_int,
    }
}

/// `ibv_destroy_qp` of a QP whose CQs, SRQ, counters and thread domain the caller keeps alive
/// until after the call.
fn destroy_qp(pd: &Pd, raw: NonNull<efa_sys::ibv_qp>) {
    // SAFETY: the QP was created once and is destroyed once, here.
    let rc = unsafe { (pd.context().verbs().ibv_destroy_qp)(raw.as_ptr()) };
    crate::teardown::check("ibv_destroy_qp", rc);
}

impl<T: Transport> Drop for Qp<T> {
    fn drop(&mut self) {
        // SAFETY: the QP is live; no batch can be open (it would borrow self), only a forgotten
        // one's session.
        unsafe { self.core.abort_session() };
        let cqs = [self._send_cq.raw_addr(), self._recv_cq.raw_addr()];
        if held::in_pass(cqs) {
            // Destroying takes the CQs' locks, which this thread's pass holds: wait for the
            // pass to end, keeping alive what the QP needs until then.
            let (raw, pd) = (self.raw, Arc::clone(&self.pd));
            let keep = (
                Arc::clone(&self._send_cq),
                Arc::clone(&self._recv_cq),
                self._td.clone(),
                self._srq.clone(),
                self.counters.clone(),
            );
            held::defer(held::Deferred {
                cqs,
                destroy: Box::new(move || {
                    destroy_qp(&pd, raw);
                    drop(keep);
                }),
            });
            return;
        }
        destroy_qp(&self.pd, self.raw);
    }
}

#[cfg(test)]
mod tests;

//! Queue pairs: creation with the provider's limit checks, the state machine with the provider's
//! and kernel's attribute checks, and posting through `ibv_post_send`/`ibv_post_recv` and the
//! `ibv_wr_*` functions.

use std::collections::VecDeque;
use std::ffi::c_int;
use std::ptr::null_mut;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use efa_sys::*;

use crate::cq::{QpSlots, SoftCq};
use crate::device::{Dest, Device, QpEntry, QpKind, RecvWr, SendWr, WrKind};
use crate::verbs::{self, fail, free_box, into_c};

/// The send operations an SRD QP may ask for, by device capability.
fn supported_send_ops(dev: &Device, kind: QpKind) -> u64 {
    let mut ops = u64::from(IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_SEND_WITH_IMM);
    if kind == QpKind::Srd {
        if dev.profile.has(EFADV_DEVICE_ATTR_CAPS_RDMA_READ) {
            ops |= u64::from(IBV_QP_EX_WITH_RDMA_READ);
        }
        if dev.profile.has(EFADV_DEVICE_ATTR_CAPS_RDMA_WRITE) {
            ops |= u64::from(IBV_QP_EX_WITH_RDMA_WRITE | IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM);
        }
    }
    ops
}

#[derive(Debug)]
struct Staged {
    wr: SendWr,
    flags: u32,
    dest_set: bool,
    hints: u32,
}

#[derive(Debug, Default)]
struct Session {
    wrs: Vec<Staged>,
    err: c_int,
}

/// The program-visible QP.
#[repr(C)]
pub struct SoftQp {
    qpx: ibv_qp_ex,
    /// The efadv view (`efadv_qp_from_ibv_qp_ex`).
    dv: efadv_qp,
    dev: Arc<Device>,
    kind: QpKind,
    cap: ibv_qp_cap,
    sq_sig_all: bool,
    slots: Arc<QpSlots>,
    session: Mutex<Session>,
    flags: EfaQpFlags,
    /// Whether `ibv_wr_start` takes the send-queue lock: the QP and its send CQ do not share a
    /// parent domain with a thread domain (the provider's `efa_check_cq_on_same_pd_td`).
    need_lock: bool,
}

/// The efadv options of an SRD QP.
#[derive(Debug, Clone, Copy, Default)]
pub struct EfaQpFlags {
    /// `EFADV_QP_FLAGS_UNSOLICITED_WRITE_RECV`.
    pub unsolicited: bool,
    /// `EFADV_QP_FLAGS_INLINE_WRITE`: RDMA WRITE may carry inline data (128-byte WQE).
    pub inline_write: bool,
    /// `EFADV_WR_EX_WITH_PROCESSING_HINTS`: `efadv_qp_from_ibv_qp_ex` gives the hints setter.
    pub hints: bool,
}

/// The send queue depth the provider grants (`efadv_get_max_sq_depth`): soft-efa's LLQ holds
/// `max_sq_wr` 64-byte WQEs, and a WQE is 128 bytes once inline data exceeds 32 bytes or the QP
/// writes inline.
pub fn sq_depth(p: &crate::profile::Profile, max_inline: u32, inline_write: bool) -> u32 {
    let wqe = if max_inline > 32 || inline_write {
        128
    } else {
        64
    };
    let slots = p.max_sq_wr * 64 / wqe;
    if slots == 0 {
        0
    } else {
        1 << (31 - slots.leading_zeros())
    }
}

unsafe fn soft<'a>(qp: *mut ibv_qp) -> &'a SoftQp {
    &*qp.cast::<SoftQp>()
}

/// What a new QP asks for.
struct Request {
    pd: *mut ibv_pd,
    send_cq: *mut ibv_cq,
    recv_cq: *mut ibv_cq,
    cap: ibv_qp_cap,
    sq_sig_all: bool,
    kind: QpKind,
    send_ops: Option<u64>,
    flags: EfaQpFlags,
    qp_context: *mut std::ffi::c_void,
    /// Where the QP's actual capacities are written back.
    cap_out: *mut ibv_qp_cap,
}

/// Checks the requested capacities as the provider (rdma-core 63+) does, and returns them as the
/// QP gets them: depths rounded up to powers of two. The send queue holds
/// `max_llq_size / wqe_size` WQEs (soft-efa's LLQ holds `max_sq_wr` 64-byte WQEs), and a WQE is
/// 128 bytes once inline data exceeds 32 bytes; the receive queue's descriptors are shared by
/// its SGEs. (The provider divides by `max_recv_sge` unchecked; 0 counts as 1 here.)
fn check_cap(dev: &Device, cap: &ibv_qp_cap, inline_write: bool) -> Result<ibv_qp_cap, c_int> {
    let p = dev.profile;
    let sq_depth = sq_depth(p, cap.max_inline_data, inline_write);
    let rq_depth = p.max_rq_wr / cap.max_recv_sge.max(1);
    if cap.max_send_sge > u32::from(p.max_sq_sge)
        || cap.max_recv_sge > u32::from(p.max_rq_sge)
        || cap.max_send_wr > sq_depth
        || cap.max_recv_wr > rq_depth
        || cap.max_inline_data > u32::from(p.inline_buf_size_ex)
    {
        return Err(libc::EINVAL);
    }
    let sge = cap.max_recv_sge.max(1);
    Ok(ibv_qp_cap {
        max_send_wr: cap.max_send_wr.max(1).next_power_of_two(),
        max_recv_wr: (cap.max_recv_wr.max(1) * sge).next_power_of_two() / sge,
        ..*cap
    })
}

impl Request {
    /// A QP from the legacy `ibv_qp_init_attr` (no send ops, no efadv flags).
    fn legacy(pd: *mut ibv_pd, a: &ibv_qp_init_attr, kind: QpKind) -> Request {
        Request {
            pd,
            send_cq: a.send_cq,
            recv_cq: a.recv_cq,
            cap: a.cap,
            sq_sig_all: a.sq_sig_all != 0,
            kind,
            send_ops: None,
            flags: EfaQpFlags::default(),
            qp_context: a.qp_context,
            cap_out: std::ptr::addr_of!(a.cap).cast_mut(),
        }
    }
}

unsafe fn create(r: Request) -> *mut ibv_qp {
    if r.pd.is_null() || r.send_cq.is_null() || r.recv_cq.is_null() {
        return fail(libc::EINVAL);
    }
    let context = (*r.pd).context;
    let dev = verbs::ctx(context).dev.clone();
    if let Some(ops) = r.send_ops {
        if ops & !supported_send_ops(&dev, r.kind) != 0 {
            return fail(libc::EOPNOTSUPP);
        }
    }
    let cap = match check_cap(&dev, &r.cap, r.flags.inline_write) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let slots = Arc::new(QpSlots::default());
    let pd = verbs::pd(r.pd);
    let soft_send_cq = SoftCq::from_ex(r.send_cq.cast());
    let need_lock = pd.td.is_null() || soft_send_cq.parent_domain != r.pd;
    let send_cq = soft_send_cq.shared.clone();
    let recv_cq = SoftCq::from_ex(r.recv_cq.cast()).shared.clone();
    let pd_id = pd.id;
    let qpn = {
        let mut st = dev.lock();
        if st.qps.len() >= dev.profile.max_qp as usize {
            return fail(libc::ENOMEM);
        }
        st.next_qpn += 1;
        let qpn = st.next_qpn;
        slots.qpn.store(qpn, Ordering::Relaxed);
        st.qps.insert(
            qpn,
            QpEntry {
                pd: pd_id,
                kind: r.kind,
                state: IBV_QPS_RESET,
                qkey: 0,
                rnr_retry: 0,
                send_cq,
                recv_cq,
                rq: VecDeque::new(),
                slots: slots.clone(),
                unsolicited: r.flags.unsolicited,
                counters: Vec::new(),
            },
        );
        qpn
    };
    // SAFETY: all-zero is a valid ibv_qp_ex (null pointers, `None` functions); its pthread
    // objects are never used by soft-efa.
    let mut q = Box::new(SoftQp {
        qpx: std::mem::zeroed(),
        dv: efadv_qp {
            comp_mask: 0,
            wr_set_processing_hints: r.flags.hints.then_some(wr_set_processing_hints as _),
        },
        flags: r.flags,
        dev,
        kind: r.kind,
        cap,
        sq_sig_all: r.sq_sig_all,
        slots,
        session: Mutex::new(Session::default()),
        need_lock,
    });
    let b = &mut q.qpx.qp_base;
    b.context = context;
    b.qp_context = r.qp_context;
    b.pd = r.pd;
    b.send_cq = r.send_cq;
    b.recv_cq = r.recv_cq;
    b.handle = qpn;
    b.qp_num = qpn;
    b.state = IBV_QPS_RESET;
    b.qp_type = if r.kind == QpKind::Srd {
        IBV_QPT_DRIVER
    } else {
        IBV_QPT_UD
    };
    if let Some(ops) = r.send_ops {
        set_wr_functions(&mut q.qpx, ops);
    }
    if !r.cap_out.is_null() {
        *r.cap_out = cap;
    }
    into_c(q).cast()
}

fn set_wr_functions(x: &mut ibv_qp_ex, ops: u64) {
    let has = |f: u32| ops & u64::from(f) != 0;
    x.comp_mask = u64::from(IBV_QP_EX_WITH_SEND);
    x.wr_start = Some(wr_start);
    x.wr_complete = Some(wr_complete);
    x.wr_abort = Some(wr_abort);
    x.wr_set_ud_addr = Some(wr_set_ud_addr);
    x.wr_set_sge = Some(wr_set_sge);
    x.wr_set_sge_list = Some(wr_set_sge_list);
    x.wr_set_inline_data = Some(wr_set_inline_data);
    x.wr_set_inline_data_list = Some(wr_set_inline_data_list);
    if has(IBV_QP_EX_WITH_SEND) {
        x.wr_send = Some(wr_send);
    }
    if has(IBV_QP_EX_WITH_SEND_WITH_IMM) {
        x.wr_send_imm = Some(wr_send_imm);
    }
    if has(IBV_QP_EX_WITH_RDMA_READ) {
        x.wr_rdma_read = Some(wr_rdma_read);
    }
    if has(IBV_QP_EX_WITH_RDMA_WRITE) {
        x.wr_rdma_write = Some(wr_rdma_write);
    }
    if has(IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM) {
        x.wr_rdma_write_imm = Some(wr_rdma_write_imm);
    }
}

/// `ibv_create_qp`: UD only (an SRD QP needs efadv).
pub unsafe extern "C" fn create_qp(pd: *mut ibv_pd, a: *mut ibv_qp_init_attr) -> *mut ibv_qp {
    let a = &*a;
    if a.qp_type != IBV_QPT_UD || !a.srq.is_null() {
        return fail(libc::EOPNOTSUPP);
    }
    create(Request::legacy(pd, a, QpKind::Ud))
}

/// Creates a QP from extended attributes: `create_qp_ex` (UD) and `efadv_create_qp_ex` (SRD).
pub unsafe fn create_ex(a: &ibv_qp_init_attr_ex, kind: QpKind, flags: EfaQpFlags) -> *mut ibv_qp {
    let known = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
    if a.comp_mask & IBV_QP_INIT_ATTR_PD == 0 || a.comp_mask & !known != 0 || !a.srq.is_null() {
        return fail(libc::EINVAL);
    }
    let send_ops = (a.comp_mask & IBV_QP_INIT_ATTR_SEND_OPS_FLAGS != 0).then_some(a.send_ops_flags);
    create(Request {
        pd: a.pd,
        send_cq: a.send_cq,
        recv_cq: a.recv_cq,
        cap: a.cap,
        sq_sig_all: a.sq_sig_all != 0,
        kind,
        send_ops,
        flags,
        qp_context: a.qp_context,
        cap_out: std::ptr::addr_of!(a.cap).cast_mut(),
    })
}

/// `verbs_context::create_qp_ex`: UD; SRD needs `efadv_create_qp_ex`.
pub unsafe extern "C" fn create_qp_ex(
    _c: *mut ibv_context,
    a: *mut ibv_qp_init_attr_ex,
) -> *mut ibv_qp {
    if (*a).qp_type != IBV_QPT_UD {
        return fail(libc::EOPNOTSUPP);
    }
    create_ex(&*a, QpKind::Ud, EfaQpFlags::default())
}

/// `efadv_create_driver_qp`: an SRD QP from legacy attributes.
pub unsafe fn create_srd_legacy(pd: *mut ibv_pd, a: &ibv_qp_init_attr) -> *mut ibv_qp {
    if a.qp_type != IBV_QPT_DRIVER {
        return fail(libc::EINVAL);
    }
    create(Request::legacy(pd, a, QpKind::Srd))
}

/// `ibv_qp_to_qp_ex`: null unless the QP was created with send ops (its `wr_*` are set then).
pub unsafe extern "C" fn qp_to_qp_ex(qp: *mut ibv_qp) -> *mut ibv_qp_ex {
    if (*qp.cast::<ibv_qp_ex>()).wr_start.is_some() {
        qp.cast()
    } else {
        null_mut()
    }
}

/// `ibv_destroy_qp`: outstanding work is dropped without completions, as the device forgets it.
pub unsafe extern "C" fn destroy_qp(qp: *mut ibv_qp) -> c_int {
    // As the provider's `efa_lock_cqs`: destroying takes the QP's CQ locks.
    for cq in [(*qp).send_cq, (*qp).recv_cq] {
        if SoftCq::from_ex(cq.cast()).pass.mine() {
            crate::locks::deadlock(format_args!(
                "ibv_destroy_qp of QP {:#x} takes the lock of its CQ, which this thread holds in \
                 a poll pass (ibv_start_poll without ibv_end_poll)",
                (*qp).qp_num
            ));
        }
    }
    let q = qp.cast::<SoftQp>();
    {
        let dev = &(*q).dev;
        let mut st = dev.lock();
        dev.forget_qp(&mut st, (*qp).qp_num);
    }
    free_box(q);
    0
}

/// The attribute masks the kernel requires and allows (besides STATE) for each transition of an
/// SRD QP (`srd_qp_state_table`) or a UD QP (`ib_modify_qp_is_ok`): RNR_RETRY only on SRD.
fn transition_masks(from: ibv_qp_state, to: ibv_qp_state, srd: bool) -> Option<(u32, u32)> {
    let rnr = if srd { IBV_QP_RNR_RETRY } else { 0 };
    Some(match (from, to) {
        (_, IBV_QPS_RESET) | (_, IBV_QPS_ERR) => (0, 0),
        (IBV_QPS_RESET, IBV_QPS_INIT) => {
            let m = IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY;
            (m, m)
        }
        (IBV_QPS_INIT, IBV_QPS_INIT) => (0, IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY),
        (IBV_QPS_INIT, IBV_QPS_RTR) => (0, IBV_QP_PKEY_INDEX | IBV_QP_QKEY),
        (IBV_QPS_RTR, IBV_QPS_RTS) => (
            IBV_QP_SQ_PSN,
            IBV_QP_SQ_PSN | IBV_QP_CUR_STATE | IBV_QP_QKEY | rnr,
        ),
        (IBV_QPS_RTS, IBV_QPS_RTS) => (0, IBV_QP_CUR_STATE | IBV_QP_QKEY),
        _ => return None,
    })
}

/// The attributes the EFA kernel driver knows; any other gives EOPNOTSUPP.
const KNOWN_ATTRS: u32 = IBV_QP_STATE
    | IBV_QP_CUR_STATE
    | IBV_QP_EN_SQD_ASYNC_NOTIFY
    | IBV_QP_PKEY_INDEX
    | IBV_QP_PORT
    | IBV_QP_QKEY
    | IBV_QP_SQ_PSN
    | IBV_QP_RNR_RETRY;

/// `ibv_modify_qp`, checked in the kernel's order: the core's port and Q_Key checks (a Q_Key
/// with bit 31 set needs privileges soft-efa does not grant: EPERM), then the EFA driver's
/// attribute and transition checks.
pub unsafe extern "C" fn modify_qp(qp: *mut ibv_qp, attr: *mut ibv_qp_attr, mask: c_int) -> c_int {
    let q = soft(qp);
    let a = &*attr;
    let mask = mask as u32;
    if mask & IBV_QP_PORT != 0 && a.port_num != 1 {
        return libc::EINVAL;
    }
    if mask & IBV_QP_QKEY != 0 && a.qkey & 0x8000_0000 != 0 {
        return libc::EPERM;
    }
    if mask & !KNOWN_ATTRS != 0 {
        return libc::EOPNOTSUPP;
    }
    let dev = &q.dev;
    let mut st = dev.lock();
    let Some(entry) = st.qps.get(&(*qp).qp_num) else {
        return libc::EINVAL;
    };
    let cur = if mask & IBV_QP_CUR_STATE != 0 {
        a.cur_qp_state
    } else {
        entry.state
    };
    let to = if mask & IBV_QP_STATE != 0 {
        a.qp_state
    } else {
        cur
    };
    let Some((required, allowed)) = transition_masks(cur, to, q.kind == QpKind::Srd) else {
        return libc::EINVAL;
    };
    let rest = mask & !IBV_QP_STATE;
    if rest & required != required || rest & !allowed != 0 {
        return libc::EINVAL;
    }
    if mask & IBV_QP_PKEY_INDEX != 0 && a.pkey_index != 0 {
        return libc::EOPNOTSUPP;
    }
    // The kernel leaves RNR_RETRY to the device; a device without the capability refuses it.
    if mask & IBV_QP_RNR_RETRY != 0 && !dev.profile.has(EFADV_DEVICE_ATTR_CAPS_RNR_RETRY) {
        return libc::EOPNOTSUPP;
    }
    let qpn = (*qp).qp_num;
    let entry = st.qps.get_mut(&qpn).unwrap();
    if mask & IBV_QP_QKEY != 0 {
        entry.qkey = a.qkey;
    }
    if mask & IBV_QP_RNR_RETRY != 0 {
        entry.rnr_retry = a.rnr_retry.min(7);
    }
    entry.state = to;
    match to {
        IBV_QPS_ERR => dev.flush_qp(&mut st, qpn),
        IBV_QPS_RESET => {
            let e = st.qps.get_mut(&qpn).unwrap();
            e.rq.clear();
            e.qkey = 0;
            e.rnr_retry = 0;
        }
        _ => {}
    }
    (*qp).state = to;
    0
}

/// `ibv_query_qp`.
pub unsafe extern "C" fn query_qp(
    qp: *mut ibv_qp,
    attr: *mut ibv_qp_attr,
    _mask: c_int,
    init: *mut ibv_qp_init_attr,
) -> c_int {
    let q = soft(qp);
    let st = q.dev.lock();
    let Some(e) = st.qps.get(&(*qp).qp_num) else {
        return libc::EINVAL;
    };
    // SAFETY: ibv_qp_attr is plain data; all-zero is valid.
    let mut a: ibv_qp_attr = std::mem::zeroed();
    a.qp_state = e.state;
    a.cur_qp_state = e.state;
    a.qkey = e.qkey;
    a.cap = q.cap;
    a.port_num = 1;
    a.rnr_retry = e.rnr_retry;
    *attr = a;
    if !init.is_null() {
        let i = &mut *init;
        i.qp_context = (*qp).qp_context;
        i.send_cq = (*qp).send_cq;
        i.recv_cq = (*qp).recv_cq;
        i.srq = null_mut();
        i.cap = q.cap;
        i.qp_type = (*qp).qp_type;
        i.sq_sig_all = c_int::from(q.sq_sig_all);
    }
    0
}

// ---- posting ----

impl SoftQp {
    /// Checks one work request as the provider does before it reaches the device.
    fn check(&self, s: &Staged, state: ibv_qp_state) -> c_int {
        let p = self.dev.profile;
        let _ = p;
        if state != IBV_QPS_RTS && state != IBV_QPS_SQD {
            return libc::EINVAL;
        }
        // EFA completes every work request: unsignaled ones are refused.
        if s.flags & IBV_SEND_SIGNALED == 0 && !self.sq_sig_all {
            return libc::EINVAL;
        }
        if s.flags & !(IBV_SEND_SIGNALED | IBV_SEND_INLINE) != 0 {
            return libc::EINVAL;
        }
        if !s.dest_set {
            return libc::EINVAL;
        }
        match (s.wr.kind, &s.wr.inline) {
            (WrKind::Send { .. }, Some(b)) if b.len() > self.cap.max_inline_data as usize => {
                libc::EINVAL
            }
            (WrKind::Send { .. }, None) if s.wr.sges.len() > self.cap.max_send_sge as usize => {
                libc::EINVAL
            }
            // Inline RDMA WRITE needs a QP created with EFADV_QP_FLAGS_INLINE_WRITE; READ never.
            (WrKind::Write { .. }, Some(b))
                if self.flags.inline_write && b.len() <= self.cap.max_inline_data as usize =>
            {
                0
            }
            (WrKind::Write { .. } | WrKind::Read { .. }, Some(_)) => libc::EINVAL,
            // RDMA takes one local SGE (`max_sge_rd`).
            (WrKind::Write { .. } | WrKind::Read { .. }, None) if s.wr.sges.len() > 1 => {
                libc::EINVAL
            }
            _ => 0,
        }
    }

    /// Checks and posts `wrs` as one doorbell: all or nothing.
    fn post_all(&self, wrs: Vec<Staged>) -> c_int {
        let qpn = self.qpx.qp_base.qp_num;
        let mut st = self.dev.lock();
        let state = st.qps.get(&qpn).map_or(IBV_QPS_ERR, |e| e.state);
        for s in &wrs {
            let e = self.check(s, state);
            if e != 0 {
                return e;
            }
        }
        if self.slots.sq.load(Ordering::Acquire) as usize + wrs.len()
            > self.cap.max_send_wr as usize
        {
            return libc::ENOMEM;
        }
        for s in wrs {
            if s.hints != 0 {
                self.dev.counters.hinted.fetch_add(1, Ordering::Relaxed);
            }
            if s.wr.inline.is_some() {
                self.dev.counters.inline.fetch_add(1, Ordering::Relaxed);
            }
            self.dev.post_send(&mut st, qpn, s.wr);
        }
        0
    }
}

/// `ibv_post_send` (legacy): EFA accepts SEND and SEND_WITH_IMM only.
pub unsafe extern "C" fn post_send(
    qp: *mut ibv_qp,
    mut wr: *mut ibv_send_wr,
    bad: *mut *mut ibv_send_wr,
) -> c_int {
    let q = soft(qp);
    while !wr.is_null() {
        let w = &*wr;
        let imm = match w.opcode {
            IBV_WR_SEND => None,
            IBV_WR_SEND_WITH_IMM => Some(w.__bindgen_anon_1.imm_data),
            _ => {
                *bad = wr;
                return libc::EINVAL;
            }
        };
        let sges = if w.num_sge > 0 && !w.sg_list.is_null() {
            std::slice::from_raw_parts(w.sg_list, w.num_sge as usize).to_vec()
        } else {
            Vec::new()
        };
        let inline = (w.send_flags & IBV_SEND_INLINE != 0).then(|| gather(&sges));
        let ud = w.wr.ud;
        let dest = if ud.ah.is_null() {
            None
        } else {
            Some(Dest {
                gid: verbs::ah(ud.ah).gid,
                qpn: ud.remote_qpn,
                qkey: ud.remote_qkey,
            })
        };
        let staged = Staged {
            wr: SendWr {
                wr_id: w.wr_id,
                kind: WrKind::Send { imm },
                dest: dest.unwrap_or(Dest {
                    gid: [0; 16],
                    qpn: 0,
                    qkey: 0,
                }),
                sges: if inline.is_some() { Vec::new() } else { sges },
                inline,
            },
            flags: w.send_flags,
            dest_set: dest.is_some(),
            hints: 0,
        };
        let e = q.post_all(vec![staged]);
        if e != 0 {
            *bad = wr;
            return e;
        }
        wr = w.next;
    }
    0
}

fn gather(sges: &[ibv_sge]) -> Vec<u8> {
    // SAFETY: inline data is read at post time from the program's buffers, which it passes
    // valid for the call (no registration needed, as for the hardware's inline copy).
    sges.iter()
        .flat_map(|s| unsafe {
            std::slice::from_raw_parts(s.addr as usize as *const u8, s.length as usize)
        })
        .copied()
        .collect()
}

/// `ibv_post_recv`.
pub unsafe extern "C" fn post_recv(
    qp: *mut ibv_qp,
    mut wr: *mut ibv_recv_wr,
    bad: *mut *mut ibv_recv_wr,
) -> c_int {
    let q = soft(qp);
    let qpn = (*qp).qp_num;
    let mut st = q.dev.lock();
    while !wr.is_null() {
        let w = &*wr;
        let e = match st.qps.get(&qpn) {
            None => libc::EINVAL,
            Some(e) if e.state == IBV_QPS_RESET || e.state == IBV_QPS_ERR => libc::EINVAL,
            Some(_) if w.num_sge < 0 || w.num_sge as u32 > q.cap.max_recv_sge.max(1) => {
                libc::EINVAL
            }
            Some(_) if q.slots.rq.load(Ordering::Acquire) >= q.cap.max_recv_wr => libc::ENOMEM,
            Some(_) => 0,
        };
        if e != 0 {
            *bad = wr;
            return e;
        }
        let sges = if w.num_sge > 0 {
            std::slice::from_raw_parts(w.sg_list, w.num_sge as usize).to_vec()
        } else {
            Vec::new()
        };
        q.slots.rq.fetch_add(1, Ordering::AcqRel);
        // The RX descriptor's length is 16 bits: from rdma-core 57 a receive SGE of 64 KiB or
        // more holds 65535 bytes; before, its length wrapped (65536 became 0).
        let release = crate::device::release();
        let clamp = |len: u32| {
            if release >= 57 {
                len.min(65535)
            } else {
                u32::from(len as u16)
            }
        };
        let sges = sges
            .into_iter()
            .map(|s| ibv_sge {
                length: clamp(s.length),
                ..s
            })
            .collect();
        st.qps.get_mut(&qpn).unwrap().rq.push_back(RecvWr {
            wr_id: w.wr_id,
            sges,
        });
        wr = w.next;
    }
    0
}

// ---- ibv_wr_* ----

unsafe fn from_ex<'a>(x: *mut ibv_qp_ex) -> &'a SoftQp {
    &*x.cast::<SoftQp>()
}

unsafe fn push(x: *mut ibv_qp_ex, kind: WrKind) {
    let q = from_ex(x);
    let mut s = q.session.lock().unwrap();
    s.wrs.push(Staged {
        wr: SendWr {
            wr_id: (*x).wr_id,
            kind,
            dest: Dest {
                gid: [0; 16],
                qpn: 0,
                qkey: 0,
            },
            sges: Vec::new(),
            inline: None,
        },
        flags: (*x).wr_flags,
        dest_set: false,
        hints: 0,
    });
}

unsafe fn with_last(x: *mut ibv_qp_ex, f: impl FnOnce(&mut Staged)) {
    let q = from_ex(x);
    let mut s = q.session.lock().unwrap();
    match s.wrs.last_mut() {
        Some(last) => f(last),
        None => s.err = libc::EINVAL,
    }
}

unsafe extern "C" fn wr_start(x: *mut ibv_qp_ex) {
    let q = from_ex(x);
    if q.need_lock {
        q.slots.sq_lock.take();
    }
    let mut s = q.session.lock().unwrap();
    s.wrs.clear();
    s.err = 0;
}

unsafe extern "C" fn wr_complete(x: *mut ibv_qp_ex) -> c_int {
    let q = from_ex(x);
    let (wrs, err) = {
        let mut s = q.session.lock().unwrap();
        (std::mem::take(&mut s.wrs), std::mem::replace(&mut s.err, 0))
    };
    q.slots.sq_lock.release();
    if err != 0 {
        return err;
    }
    q.post_all(wrs)
}

unsafe extern "C" fn wr_abort(x: *mut ibv_qp_ex) {
    let q = from_ex(x);
    let mut s = q.session.lock().unwrap();
    s.wrs.clear();
    s.err = 0;
    q.slots.sq_lock.release();
}

unsafe extern "C" fn wr_send(x: *mut ibv_qp_ex) {
    push(x, WrKind::Send { imm: None });
}

unsafe extern "C" fn wr_send_imm(x: *mut ibv_qp_ex, imm: u32) {
    push(x, WrKind::Send { imm: Some(imm) });
}

unsafe extern "C" fn wr_rdma_read(x: *mut ibv_qp_ex, rkey: u32, addr: u64) {
    push(x, WrKind::Read { rkey, addr });
}

unsafe extern "C" fn wr_rdma_write(x: *mut ibv_qp_ex, rkey: u32, addr: u64) {
    push(
        x,
        WrKind::Write {
            rkey,
            addr,
            imm: None,
        },
    );
}

unsafe extern "C" fn wr_rdma_write_imm(x: *mut ibv_qp_ex, rkey: u32, addr: u64, imm: u32) {
    push(
        x,
        WrKind::Write {
            rkey,
            addr,
            imm: Some(imm),
        },
    );
}

unsafe extern "C" fn wr_set_ud_addr(x: *mut ibv_qp_ex, ah: *mut ibv_ah, qpn: u32, qkey: u32) {
    if ah.is_null() {
        from_ex(x).session.lock().unwrap().err = libc::EINVAL;
        return;
    }
    let gid = verbs::ah(ah).gid;
    with_last(x, |s| {
        s.wr.dest = Dest { gid, qpn, qkey };
        s.dest_set = true;
    });
}

unsafe extern "C" fn wr_set_sge(x: *mut ibv_qp_ex, lkey: u32, addr: u64, length: u32) {
    with_last(x, |s| s.wr.sges = vec![ibv_sge { addr, length, lkey }]);
}

unsafe extern "C" fn wr_set_sge_list(x: *mut ibv_qp_ex, n: usize, list: *const ibv_sge) {
    let sges = if n == 0 {
        Vec::new()
    } else {
        std::slice::from_raw_parts(list, n).to_vec()
    };
    with_last(x, |s| s.wr.sges = sges);
}

unsafe extern "C" fn wr_set_inline_data(
    x: *mut ibv_qp_ex,
    addr: *mut std::ffi::c_void,
    len: usize,
) {
    let data = if len == 0 {
        Vec::new()
    } else {
        std::slice::from_raw_parts(addr.cast::<u8>(), len).to_vec()
    };
    with_last(x, |s| s.wr.inline = Some(data));
}

unsafe extern "C" fn wr_set_inline_data_list(
    x: *mut ibv_qp_ex,
    n: usize,
    list: *const ibv_data_buf,
) {
    let bufs = if n == 0 {
        &[][..]
    } else {
        std::slice::from_raw_parts(list, n)
    };
    let data: Vec<u8> = bufs
        .iter()
        .flat_map(|b| std::slice::from_raw_parts(b.addr.cast::<u8>(), b.length))
        .copied()
        .collect();
    with_last(x, |s| s.wr.inline = Some(data));
}

/// `efadv_qp_from_ibv_qp_ex` (EFA_1.6, rdma-core 64): the efadv view of an extended QP.
pub unsafe extern "C" fn efadv_qp_of(x: *mut ibv_qp_ex) -> *mut efadv_qp {
    let release = crate::device::release();
    if release < 64 {
        return fail(libc::EOPNOTSUPP);
    }
    std::ptr::addr_of_mut!((*x.cast::<SoftQp>()).dv)
}

/// Sets processing hints on the work request being built. soft-efa has no scheduling to hint,
/// so it counts hinted requests (`hinted_wrs`) for tests to read.
unsafe extern "C" fn wr_set_processing_hints(dv: *mut efadv_qp, hints: u32) {
    let q = &*dv
        .byte_sub(std::mem::offset_of!(SoftQp, dv))
        .cast::<SoftQp>();
    with_last(q as *const SoftQp as *mut ibv_qp_ex, |s| s.hints = hints);
}

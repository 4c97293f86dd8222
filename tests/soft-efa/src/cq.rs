//! Completion queues: the shared queue the device fills, the `ibv_cq_ex` / `efadv_cq` the program
//! polls, and completion channels.

use std::collections::VecDeque;
use std::ffi::c_int;
use std::mem::offset_of;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use efa_sys::*;

use crate::locks::Holder;
use crate::status;

/// Send and receive queue slots in use by one QP. A slot is taken when a work request is posted
/// and given back when its completion is polled, as on the hardware.
#[derive(Debug, Default)]
pub struct QpSlots {
    /// Send queue slots in use.
    pub sq: AtomicU32,
    /// Receive queue slots in use.
    pub rq: AtomicU32,
    /// Who holds the send-queue lock of a QP that takes it (`ibv_wr_start` to
    /// `ibv_wr_complete`), which retiring the QP's send completions takes again.
    pub sq_lock: Holder,
    /// The QP's number, for the deadlock message.
    pub qpn: AtomicU32,
}

/// Which queue slot a completion gives back when polled.
#[derive(Debug, Clone, Default)]
pub enum Slot {
    /// None (a completion of a destroyed QP).
    #[default]
    None,
    /// A send queue slot.
    Sq(Arc<QpSlots>),
    /// A receive queue slot.
    Rq(Arc<QpSlots>),
}

/// One completion.
#[derive(Debug, Clone, Default)]
pub struct Cqe {
    /// The work request's id.
    pub wr_id: u64,
    /// EFA status (`vendor_err`).
    pub status: u8,
    /// Completion opcode.
    pub opcode: ibv_wc_opcode,
    /// Bytes received (0 on requester completions, as on EFA).
    pub byte_len: u32,
    /// Immediate data, network order.
    pub imm: Option<u32>,
    /// The local QP.
    pub qp_num: u32,
    /// The sender's QP (receive completions).
    pub src_qp: u32,
    /// The sender's GID (receive completions).
    pub sgid: [u8; 16],
    /// A write-with-immediate that consumed no receive buffer.
    pub unsolicited: bool,
    /// Receive completions: the receiver's AH number for the sender, `0xffff` when it has none.
    pub slid: u16,
    /// The queue slot to give back.
    pub slot: Slot,
}

impl Cqe {
    fn is_recv(&self) -> bool {
        self.opcode & IBV_WC_RECV != 0
    }
}

/// The device side of a completion channel: a pipe that becomes readable with one byte per event.
#[derive(Debug)]
pub struct Channel {
    read_fd: c_int,
    write_fd: c_int,
    events: Mutex<VecDeque<usize>>,
}

impl Channel {
    /// A new channel, or the errno of `pipe2`.
    pub fn new() -> Result<Channel, c_int> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(errno());
        }
        Ok(Channel {
            read_fd: fds[0],
            write_fd: fds[1],
            events: Mutex::new(VecDeque::new()),
        })
    }

    /// The descriptor programs poll (`ibv_comp_channel::fd`).
    pub fn fd(&self) -> c_int {
        self.read_fd
    }

    /// Raises an event for the CQ whose address `cq` holds, unless that CQ was destroyed (its
    /// address reads 0): checked under the event lock, so [`purge`](Self::purge) never misses
    /// one.
    fn notify(&self, cq: &AtomicUsize) {
        let mut events = self.events.lock().unwrap();
        let addr = cq.load(Ordering::SeqCst);
        if addr == 0 {
            return;
        }
        events.push_back(addr);
        drop(events);
        let one = 1u8;
        // SAFETY: writes one byte from a live local to our own pipe.
        unsafe { libc::write(self.write_fd, (&one as *const u8).cast(), 1) };
    }

    /// Drops the pending events of a CQ being destroyed, as the kernel does
    /// (`ib_uverbs_release_ucq`): none may name freed memory. Their pipe bytes stay; a read that
    /// finds no event behind its byte reads the next.
    fn purge(&self, cq: usize) {
        self.events.lock().unwrap().retain(|&c| c != cq);
    }

    /// Waits for one event (blocking unless the program made the fd non-blocking) and returns the
    /// CQ it is for, or the errno.
    pub fn get_event(&self) -> Result<usize, c_int> {
        loop {
            self.read_byte()?;
            if let Some(cq) = self.events.lock().unwrap().pop_front() {
                return Ok(cq);
            }
        }
    }

    fn read_byte(&self) -> Result<(), c_int> {
        let mut byte = 0u8;
        loop {
            // SAFETY: reads one byte into a live local from our own pipe.
            let n = unsafe { libc::read(self.read_fd, (&mut byte as *mut u8).cast(), 1) };
            if n == 1 {
                break;
            }
            let e = errno();
            if n < 0 && e == libc::EINTR {
                continue;
            }
            return Err(if n == 0 { libc::EIO } else { e });
        }
        Ok(())
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // SAFETY: the descriptors are ours and closed once.
        unsafe {
            libc::close(self.read_fd);
            libc::close(self.write_fd);
        }
    }
}

/// The errno of the last failed call.
pub fn errno() -> c_int {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The queue a device pushes completions into.
#[derive(Debug)]
pub struct CqShared {
    queue: Mutex<VecDeque<Cqe>>,
    armed: AtomicBool,
    channel: Option<Arc<Channel>>,
    /// Address of the program-visible `ibv_cq`, reported by `ibv_get_cq_event`.
    cq_addr: AtomicUsize,
}

impl CqShared {
    /// A queue that reports events on `channel` when armed.
    pub fn new(channel: Option<Arc<Channel>>) -> CqShared {
        CqShared {
            queue: Mutex::new(VecDeque::new()),
            armed: AtomicBool::new(false),
            channel,
            cq_addr: AtomicUsize::new(0),
        }
    }

    /// Adds a completion and, if the CQ is armed, raises its event.
    pub fn push(&self, cqe: Cqe) {
        self.queue.lock().unwrap().push_back(cqe);
        if self.armed.swap(false, Ordering::AcqRel) {
            if let Some(ch) = &self.channel {
                ch.notify(&self.cq_addr);
            }
        }
    }

    /// Takes the oldest completion and gives its queue slot back.
    pub fn pop(&self) -> Option<Cqe> {
        let cqe = self.queue.lock().unwrap().pop_front()?;
        match &cqe.slot {
            Slot::Sq(s) => s.sq.fetch_sub(1, Ordering::AcqRel),
            Slot::Rq(s) => s.rq.fetch_sub(1, Ordering::AcqRel),
            Slot::None => 0,
        };
        Some(cqe)
    }

    /// Detaches the CQ from its channel as it is destroyed: no event is raised for it any more
    /// and the pending ones are dropped.
    pub fn release(&self) {
        let addr = self.cq_addr.swap(0, Ordering::SeqCst);
        self.armed.store(false, Ordering::Release);
        if let Some(ch) = &self.channel {
            ch.purge(addr);
        }
    }

    /// Arms the CQ: the next completion raises an event. One that is already queued raises it now,
    /// so a program that arms, then polls, then waits never misses one.
    pub fn arm(&self) -> c_int {
        if self.channel.is_none() {
            return libc::EINVAL;
        }
        self.armed.store(true, Ordering::Release);
        let pending = !self.queue.lock().unwrap().is_empty();
        if pending && self.armed.swap(false, Ordering::AcqRel) {
            if let Some(ch) = &self.channel {
                ch.notify(&self.cq_addr);
            }
        }
        0
    }
}

/// The program-visible CQ.
#[repr(C)]
pub struct SoftCq {
    /// The extended CQ; `ibv_cq` is its prefix.
    pub ex: ibv_cq_ex,
    /// The efadv view (`efadv_cq_from_ibv_cq_ex`).
    pub dv: efadv_cq,
    /// The queue the device fills.
    pub shared: Arc<CqShared>,
    /// `wc_flags` the CQ was created with.
    pub wc_flags: u64,
    /// The parent domain the CQ was created on (`IBV_CQ_INIT_ATTR_MASK_PD`), else null.
    pub parent_domain: *mut ibv_pd,
    /// Whether a poll pass holds the CQ's lock (neither single-threaded nor on a thread domain).
    pub locked_passes: bool,
    /// Who holds the CQ's lock through a pass, which `ibv_destroy_qp` takes.
    pub pass: Holder,
    cur: Cqe,
}

impl SoftCq {
    /// A CQ on `ctx` for `shared`, with the poll functions set.
    pub fn new(
        ctx: *mut ibv_context,
        cqe: c_int,
        shared: Arc<CqShared>,
        wc_flags: u64,
    ) -> Box<SoftCq> {
        // SAFETY: all-zero is a valid ibv_cq_ex/efadv_cq (null pointers, `None` functions); the
        // pthread objects are never used by soft-efa.
        let mut cq = Box::new(SoftCq {
            ex: unsafe { std::mem::zeroed() },
            dv: unsafe { std::mem::zeroed() },
            shared,
            wc_flags,
            parent_domain: std::ptr::null_mut(),
            locked_passes: true,
            pass: Holder::default(),
            cur: Cqe::default(),
        });
        cq.ex.context = ctx;
        cq.ex.cqe = cqe;
        cq.ex.start_poll = Some(start_poll);
        cq.ex.next_poll = Some(next_poll);
        cq.ex.end_poll = Some(end_poll);
        // As the provider: the opcode, vendor_err and wc_flags readers always, the others only
        // for the fields the CQ was created with.
        cq.ex.read_opcode = Some(read_opcode);
        cq.ex.read_vendor_err = Some(read_vendor_err);
        cq.ex.read_wc_flags = Some(read_wc_flags);
        let has = |f: u32| wc_flags & u64::from(f) != 0;
        if has(IBV_WC_EX_WITH_BYTE_LEN) {
            cq.ex.read_byte_len = Some(read_byte_len);
        }
        if has(IBV_WC_EX_WITH_IMM) {
            cq.ex.read_imm_data = Some(read_imm_data);
        }
        if has(IBV_WC_EX_WITH_QP_NUM) {
            cq.ex.read_qp_num = Some(read_qp_num);
        }
        if has(IBV_WC_EX_WITH_SRC_QP) {
            cq.ex.read_src_qp = Some(read_src_qp);
        }
        if has(IBV_WC_EX_WITH_SLID) {
            cq.ex.read_slid = Some(read_slid);
        }
        if has(IBV_WC_EX_WITH_SL) {
            cq.ex.read_sl = Some(read_zero8);
        }
        if has(IBV_WC_EX_WITH_DLID_PATH_BITS) {
            cq.ex.read_dlid_path_bits = Some(read_zero8);
        }
        cq.dv.comp_mask = 0;
        if wc_flags & u64::from(EFADV_WC_EX_WITH_SGID) != 0 {
            cq.dv.wc_read_sgid = Some(wc_read_sgid);
        }
        if wc_flags & u64::from(EFADV_WC_EX_WITH_IS_UNSOLICITED) != 0 {
            cq.dv.wc_is_unsolicited = Some(wc_is_unsolicited);
        }
        let addr = &*cq as *const SoftCq as usize;
        cq.shared.cq_addr.store(addr, Ordering::Relaxed);
        cq
    }

    /// The SoftCq whose `ex` is at `p`.
    ///
    /// # Safety
    /// `p` must come from a live SoftCq (every CQ soft-efa hands out is one).
    pub unsafe fn from_ex<'a>(p: *mut ibv_cq_ex) -> &'a mut SoftCq {
        &mut *p.cast::<SoftCq>()
    }

    fn load(&mut self) -> c_int {
        let popped = self.shared.pop();
        match popped {
            Some(c) => {
                if let Slot::Sq(slots) = &c.slot {
                    if slots.sq_lock.mine() {
                        crate::locks::deadlock(format_args!(
                            "retiring a send completion of QP {:#x}, whose send-queue lock this \
                             thread holds (ibv_wr_start without ibv_wr_complete or ibv_wr_abort)",
                            slots.qpn.load(Ordering::Relaxed)
                        ));
                    }
                }
                self.ex.wr_id = c.wr_id;
                self.ex.status = status::to_ibv(c.status);
                self.cur = c;
                0
            }
            None => libc::ENOENT,
        }
    }

    /// Fills `wc` from up to `wc.len()` completions (`ibv_poll_cq`); returns how many.
    pub fn poll_legacy(&mut self, wc: &mut [ibv_wc]) -> usize {
        let mut n = 0;
        while n < wc.len() && self.load() == 0 {
            let c = &self.cur;
            let w = &mut wc[n];
            // As the provider: a send completion leaves byte_len, src_qp, slid, sl and imm_data
            // as the caller had them.
            w.wr_id = c.wr_id;
            w.status = status::to_ibv(c.status);
            w.opcode = c.opcode;
            w.vendor_err = u32::from(c.status);
            w.qp_num = c.qp_num;
            w.wc_flags = flags(c);
            if c.is_recv() {
                w.byte_len = c.byte_len;
                w.src_qp = c.src_qp;
                w.slid = c.slid;
                w.sl = 0;
                if let Some(imm) = c.imm {
                    w.__bindgen_anon_1.imm_data = imm;
                }
            }
            n += 1;
        }
        n
    }
}

fn flags(c: &Cqe) -> u32 {
    if c.imm.is_some() {
        IBV_WC_WITH_IMM
    } else {
        0
    }
}

unsafe extern "C" fn start_poll(cq: *mut ibv_cq_ex, attr: *mut ibv_poll_cq_attr) -> c_int {
    if !attr.is_null() && (*attr).comp_mask != 0 {
        return libc::EINVAL;
    }
    let c = SoftCq::from_ex(cq);
    let rc = c.load();
    // As the provider: the lock stays held only when a completion was found.
    if rc == 0 && c.locked_passes {
        c.pass.take();
    }
    rc
}

unsafe extern "C" fn next_poll(cq: *mut ibv_cq_ex) -> c_int {
    SoftCq::from_ex(cq).load()
}

unsafe extern "C" fn end_poll(cq: *mut ibv_cq_ex) {
    SoftCq::from_ex(cq).pass.release();
}

unsafe extern "C" fn read_opcode(cq: *mut ibv_cq_ex) -> ibv_wc_opcode {
    SoftCq::from_ex(cq).cur.opcode
}

unsafe extern "C" fn read_vendor_err(cq: *mut ibv_cq_ex) -> u32 {
    u32::from(SoftCq::from_ex(cq).cur.status)
}

unsafe extern "C" fn read_byte_len(cq: *mut ibv_cq_ex) -> u32 {
    SoftCq::from_ex(cq).cur.byte_len
}

unsafe extern "C" fn read_imm_data(cq: *mut ibv_cq_ex) -> u32 {
    SoftCq::from_ex(cq).cur.imm.unwrap_or(0)
}

unsafe extern "C" fn read_qp_num(cq: *mut ibv_cq_ex) -> u32 {
    SoftCq::from_ex(cq).cur.qp_num
}

/// On a send completion the receive-only fields alias the 64-bit request id, as in EFA's CQE:
/// `src_qp` reads as the request id's top 16 bits. Programs must not read it there.
unsafe extern "C" fn read_src_qp(cq: *mut ibv_cq_ex) -> u32 {
    let c = &SoftCq::from_ex(cq).cur;
    if c.is_recv() {
        c.src_qp
    } else {
        (c.wr_id >> 48) as u32
    }
}

unsafe extern "C" fn read_wc_flags(cq: *mut ibv_cq_ex) -> u32 {
    flags(&SoftCq::from_ex(cq).cur)
}

unsafe extern "C" fn read_slid(cq: *mut ibv_cq_ex) -> u32 {
    u32::from(SoftCq::from_ex(cq).cur.slid)
}

unsafe extern "C" fn read_zero8(_cq: *mut ibv_cq_ex) -> u8 {
    0
}

unsafe fn from_dv<'a>(dv: *mut efadv_cq) -> &'a mut SoftCq {
    &mut *dv.byte_sub(offset_of!(SoftCq, dv)).cast::<SoftCq>()
}

/// As the provider: the source GID is there only when the receiver has no AH for the sender
/// (`-ENOENT` otherwise, and on send completions).
unsafe extern "C" fn wc_read_sgid(dv: *mut efadv_cq, sgid: *mut ibv_gid) -> c_int {
    let cq = from_dv(dv);
    if !cq.cur.is_recv() || cq.cur.slid != 0xffff {
        return -libc::ENOENT;
    }
    (*sgid).raw = cq.cur.sgid;
    0
}

unsafe extern "C" fn wc_is_unsolicited(dv: *mut efadv_cq) -> bool {
    from_dv(dv).cur.unsolicited
}

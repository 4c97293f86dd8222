//! Completion counters (rdma-core master: `ibv_create_comp_cntr`, `efadv_create_comp_cntr`,
//! IBVERBS_1.18 / EFA_1.7): a counter attached to a QP counts that QP's completed work requests
//! of the attached kinds, successes and errors apart, optionally mirrored into program memory.
//! Completions still reach the CQ as well.

use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use efa_sys::*;

use crate::verbs::{self, fail, free_box, into_c};

/// The attach operations soft-efa counts (remote operations are not counted per request here).
pub const SUPPORTED_OPS: u32 = IBV_QP_ATTACH_COMP_CNTR_OP_SEND
    | IBV_QP_ATTACH_COMP_CNTR_OP_RECV
    | IBV_QP_ATTACH_COMP_CNTR_OP_RDMA_READ
    | IBV_QP_ATTACH_COMP_CNTR_OP_RDMA_WRITE;

/// The device side of a counter.
#[derive(Debug, Default)]
pub struct Counter {
    comp: AtomicU64,
    err: AtomicU64,
    /// Program memory the values are mirrored into (0: none).
    comp_mem: usize,
    err_mem: usize,
}

impl Counter {
    /// Counts one completed work request.
    pub fn add(&self, ok: bool) {
        self.update(!ok, |cell| cell.fetch_add(1, Ordering::AcqRel) + 1);
    }

    /// Changes the success (`err` false) or error count with `f`, which returns the new value,
    /// and mirrors it into program memory where the counter has some.
    fn update(&self, err: bool, f: impl FnOnce(&AtomicU64) -> u64) {
        let (cell, mem) = if err {
            (&self.err, self.err_mem)
        } else {
            (&self.comp, self.comp_mem)
        };
        let v = f(cell);
        if mem != 0 {
            // SAFETY: the program gave this 8-byte aligned location for the counter's life
            // (efadv_create_comp_cntr with external memory); an atomic store as the NIC's DMA.
            unsafe { (*(mem as *const AtomicU64)).store(v, Ordering::Release) };
        }
    }
}

/// The program-visible counter.
#[repr(C)]
pub struct SoftCntr {
    c: ibv_comp_cntr,
    /// The device side.
    pub shared: Arc<Counter>,
}

unsafe fn soft<'a>(c: *mut ibv_comp_cntr) -> &'a SoftCntr {
    &*c.cast::<SoftCntr>()
}

fn available(ctx: *mut ibv_context) -> bool {
    // SAFETY: a live context from ibv_open_device.
    let dev = unsafe { &verbs::ctx(ctx).dev };
    crate::device::release() >= 65 && dev.profile.has(EFADV_DEVICE_ATTR_CAPS_COMP_CNTR)
}

/// `_ibv_query_comp_cntr_caps`.
pub unsafe extern "C" fn query_caps(
    ctx: *mut ibv_context,
    caps: *mut ibv_comp_cntr_caps,
    size: usize,
) -> c_int {
    if !available(ctx) {
        return libc::EOPNOTSUPP;
    }
    if size < std::mem::size_of::<ibv_comp_cntr_caps>() {
        return libc::EINVAL;
    }
    *caps = ibv_comp_cntr_caps {
        max_value: u64::MAX,
        max_counters: 64,
        supported_qp_attach_ops: SUPPORTED_OPS,
    };
    0
}

unsafe fn create(
    ctx: *mut ibv_context,
    attr: *mut ibv_comp_cntr_init_attr,
    comp_mem: usize,
    err_mem: usize,
) -> *mut ibv_comp_cntr {
    if !available(ctx) {
        return fail(libc::EOPNOTSUPP);
    }
    let a = &*attr;
    if a.comp_mask != 0 || a.flags != 0 || a.type_ != IBV_COMP_CNTR_TYPE_WRS {
        return fail(libc::EOPNOTSUPP);
    }
    let c = SoftCntr {
        c: ibv_comp_cntr {
            context: ctx,
            handle: 0,
        },
        shared: Arc::new(Counter {
            comp_mem,
            err_mem,
            ..Counter::default()
        }),
    };
    into_c(Box::new(c)).cast()
}

/// `ibv_create_comp_cntr`.
pub unsafe extern "C" fn create_cntr(
    ctx: *mut ibv_context,
    attr: *mut ibv_comp_cntr_init_attr,
) -> *mut ibv_comp_cntr {
    create(ctx, attr, 0, 0)
}

/// `efadv_create_comp_cntr`: the values may live in program memory (virtual addresses; dma-buf
/// is refused, soft-efa has no device memory).
pub unsafe extern "C" fn efadv_create_cntr(
    ctx: *mut ibv_context,
    attr: *mut ibv_comp_cntr_init_attr,
    efa: *mut efadv_comp_cntr_init_attr,
    inlen: u32,
) -> *mut ibv_comp_cntr {
    if efa.is_null() || inlen <= 48 {
        return fail(libc::EINVAL);
    }
    let e = &*efa;
    let known =
        EFADV_COMP_CNTR_INIT_WITH_COMP_EXTERNAL_MEM | EFADV_COMP_CNTR_INIT_WITH_ERR_EXTERNAL_MEM;
    if e.comp_mask != 0 || e.flags & !known != 0 {
        return fail(libc::EOPNOTSUPP);
    }
    let mem = |on: bool, loc: &efadv_memory_location| -> Result<usize, c_int> {
        if !on {
            return Ok(0);
        }
        if u32::from(loc.type_) != EFADV_MEMORY_LOCATION_VA {
            return Err(libc::EOPNOTSUPP);
        }
        let p = loc.ptr as usize;
        if p == 0 || p % 8 != 0 {
            return Err(libc::EINVAL);
        }
        Ok(p)
    };
    let comp = mem(
        e.flags & EFADV_COMP_CNTR_INIT_WITH_COMP_EXTERNAL_MEM != 0,
        &e.comp_cntr_ext_mem,
    );
    let err = mem(
        e.flags & EFADV_COMP_CNTR_INIT_WITH_ERR_EXTERNAL_MEM != 0,
        &e.err_cntr_ext_mem,
    );
    match (comp, err) {
        (Ok(c), Ok(r)) => create(ctx, attr, c, r),
        (Err(x), _) | (_, Err(x)) => fail(x),
    }
}

/// `ibv_destroy_comp_cntr`.
pub unsafe extern "C" fn destroy(c: *mut ibv_comp_cntr) -> c_int {
    free_box(c.cast::<SoftCntr>());
    0
}

/// `ibv_set_comp_cntr` / `ibv_set_err_comp_cntr`.
pub unsafe fn set(c: *mut ibv_comp_cntr, value: u64, err: bool) -> c_int {
    soft(c).shared.update(err, |cell| {
        cell.store(value, Ordering::Release);
        value
    });
    0
}

/// `ibv_inc_comp_cntr` / `ibv_inc_err_comp_cntr`.
pub unsafe fn inc(c: *mut ibv_comp_cntr, amount: u64, err: bool) -> c_int {
    soft(c).shared.update(err, |cell| {
        cell.fetch_add(amount, Ordering::AcqRel)
            .wrapping_add(amount)
    });
    0
}

/// `ibv_read_comp_cntr` / `ibv_read_err_comp_cntr`.
pub unsafe fn read(c: *mut ibv_comp_cntr, value: *mut u64, err: bool) -> c_int {
    let s = &soft(c).shared;
    *value = if err { &s.err } else { &s.comp }.load(Ordering::Acquire);
    0
}

/// `ibv_qp_attach_comp_cntr`.
pub unsafe extern "C" fn attach(
    qp: *mut ibv_qp,
    c: *mut ibv_comp_cntr,
    attr: *mut ibv_qp_attach_comp_cntr_attr,
) -> c_int {
    let a = &*attr;
    if a.comp_mask != 0 || a.op_mask == 0 || a.op_mask & !SUPPORTED_OPS != 0 {
        return libc::EOPNOTSUPP;
    }
    let dev = &verbs::ctx((*qp).context).dev;
    let mut st = dev.lock();
    match st.qps.get_mut(&(*qp).qp_num) {
        // As the verbs man page has it: only a QP in RESET or INIT takes a counter, and two
        // counters of one QP count disjoint operations.
        Some(e) if e.state != IBV_QPS_RESET && e.state != IBV_QPS_INIT => libc::EINVAL,
        Some(e) if e.counters.iter().any(|(_, m)| m & a.op_mask != 0) => libc::EBUSY,
        Some(e) => {
            e.counters.push((soft(c).shared.clone(), a.op_mask));
            0
        }
        None => libc::EINVAL,
    }
}

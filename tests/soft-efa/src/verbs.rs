//! The libibverbs entry points: device list, context, PD, thread and parent domains, MRs, AHs, CQs
//! and completion channels. QPs are in `qp.rs`, efadv in `efadv.rs`.
//!
//! Every function follows the C convention of the symbol it implements: pointers come back null
//! with `errno` set, ints are 0 or an errno value (or -1 with `errno`, where libibverbs does that).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::mem::{offset_of, size_of};
use std::ptr::{self, null_mut};
use std::sync::{Arc, OnceLock};

use efa_sys::*;

use crate::cq::{Channel, CqShared, SoftCq};
use crate::device::{self, Device, MrEntry};
use crate::qp;

/// Sets `errno`.
pub fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// Returns null with `errno = e`.
pub fn fail<T>(e: c_int) -> *mut T {
    set_errno(e);
    null_mut()
}

/// Moves `v` to the heap for C; freed by [`free_box`].
pub fn into_c<T>(v: Box<T>) -> *mut T {
    Box::into_raw(v)
}

/// Frees what [`into_c`] made.
///
/// # Safety
/// `p` must come from `into_c::<T>` and not be used afterwards.
pub unsafe fn free_box<T>(p: *mut T) {
    drop(Box::from_raw(p));
}

// ---- devices ----

/// The program-visible device.
#[repr(C)]
pub struct SoftDevice {
    dev: ibv_device,
    index: usize,
}

fn fill(dst: &mut [c_char], s: &str) {
    for (d, b) in dst.iter_mut().zip(s.bytes().chain(std::iter::once(0))) {
        *d = b as c_char;
    }
    if let Some(last) = dst.last_mut() {
        *last = 0;
    }
}

fn soft_devices() -> Result<&'static [SoftDevice], &'static str> {
    static LIST: OnceLock<Result<Vec<SoftDevice>, &'static str>> = OnceLock::new();
    LIST.get_or_init(|| {
        let devs = device::devices()?;
        Ok(devs
            .iter()
            .map(|d| {
                // SAFETY: all-zero is a valid ibv_device (no ops, empty strings).
                let mut dev: ibv_device = unsafe { std::mem::zeroed() };
                dev.node_type = IBV_NODE_UNSPECIFIED;
                dev.transport_type = IBV_TRANSPORT_UNSPECIFIED;
                fill(&mut dev.name, &d.name);
                fill(&mut dev.dev_name, &format!("uverbs{}", d.index));
                fill(&mut dev.dev_path, &d.sysfs.to_string_lossy());
                fill(&mut dev.ibdev_path, &d.sysfs.to_string_lossy());
                SoftDevice {
                    dev,
                    index: d.index,
                }
            })
            .collect())
    })
    .as_deref()
    .map_err(|e| *e)
}

/// The emulated device behind `dev`.
///
/// # Safety
/// `dev` must come from `ibv_get_device_list`.
pub unsafe fn device_of(dev: *mut ibv_device) -> &'static Arc<Device> {
    let index = (*dev.cast::<SoftDevice>()).index;
    &device::devices().expect("device list exists")[index]
}

/// `ibv_get_device_list`.
pub unsafe extern "C" fn get_device_list(num: *mut c_int) -> *mut *mut ibv_device {
    let list = match soft_devices() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return fail(libc::EINVAL);
        }
    };
    let arr = libc::calloc(list.len() + 1, size_of::<*mut ibv_device>()).cast::<*mut ibv_device>();
    if arr.is_null() {
        return fail(libc::ENOMEM);
    }
    for (i, d) in list.iter().enumerate() {
        *arr.add(i) = ptr::addr_of!(d.dev).cast_mut();
    }
    if !num.is_null() {
        *num = list.len() as c_int;
    }
    arr
}

/// `ibv_free_device_list`.
pub unsafe extern "C" fn free_device_list(list: *mut *mut ibv_device) {
    libc::free(list.cast());
}

/// `ibv_get_device_name`.
pub unsafe extern "C" fn get_device_name(dev: *mut ibv_device) -> *const c_char {
    (*dev).name.as_ptr()
}

/// `ibv_get_device_guid` (network order).
pub unsafe extern "C" fn get_device_guid(dev: *mut ibv_device) -> u64 {
    device_of(dev).guid.to_be()
}

/// `ibv_get_device_index`.
pub unsafe extern "C" fn get_device_index(dev: *mut ibv_device) -> c_int {
    device_of(dev).index as c_int
}

// ---- contexts ----

/// The program-visible context.
#[repr(C)]
pub struct SoftContext {
    vctx: verbs_context,
    /// The device.
    pub dev: Arc<Device>,
    async_fds: [c_int; 2],
}

/// The context behind `ctx`.
///
/// # Safety
/// `ctx` must come from `ibv_open_device`.
pub unsafe fn ctx<'a>(ctx: *mut ibv_context) -> &'a SoftContext {
    &*ctx
        .byte_sub(offset_of!(verbs_context, context))
        .cast::<SoftContext>()
}

/// `ibv_open_device`.
pub unsafe extern "C" fn open_device(dev: *mut ibv_device) -> *mut ibv_context {
    let d = device_of(dev).clone();
    d.start();
    let mut fds = [-1; 2];
    if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) != 0 {
        return fail(crate::cq::errno());
    }
    // SAFETY: all-zero is a valid verbs_context (no ops; the mutex is never used by soft-efa).
    let mut c = Box::new(SoftContext {
        vctx: std::mem::zeroed(),
        dev: d,
        async_fds: fds,
    });
    let v = &mut c.vctx;
    v.sz = size_of::<verbs_context>();
    v.query_port = Some(query_port_op);
    v.query_device_ex = Some(query_device_ex);
    v.create_cq_ex = Some(create_cq_ex);
    v.create_qp_ex = Some(qp::create_qp_ex);
    v.alloc_td = Some(alloc_td);
    v.dealloc_td = Some(dealloc_td);
    v.alloc_parent_domain = Some(alloc_parent_domain);
    v.context.device = dev;
    v.context.cmd_fd = -1;
    v.context.async_fd = fds[0];
    v.context.num_comp_vectors = 1;
    v.context.abi_compat = VERBS_ABI_IS_EXTENDED;
    let ops = &mut v.context.ops;
    ops.poll_cq = Some(poll_cq);
    ops.req_notify_cq = Some(req_notify_cq);
    ops.post_send = Some(qp::post_send);
    ops.post_recv = Some(qp::post_recv);
    let c = into_c(c);
    ptr::addr_of_mut!((*c).vctx.context)
}

/// `ibv_close_device`.
pub unsafe extern "C" fn close_device(context: *mut ibv_context) -> c_int {
    let c = context
        .byte_sub(offset_of!(verbs_context, context))
        .cast::<SoftContext>();
    let dev = &(&*c).dev;
    crate::sysfs::write_counters(&dev.sysfs, &dev.counters);
    libc::close((*c).async_fds[0]);
    libc::close((*c).async_fds[1]);
    free_box(c);
    0
}

/// `ibv_get_async_event`: soft-efa raises no asynchronous events; the fd never becomes readable
/// and the call fails with `EAGAIN`.
pub unsafe extern "C" fn get_async_event(_c: *mut ibv_context, _e: *mut ibv_async_event) -> c_int {
    set_errno(libc::EAGAIN);
    -1
}

/// `ibv_ack_async_event`.
pub unsafe extern "C" fn ack_async_event(_e: *mut ibv_async_event) {}

fn device_attr(d: &Device) -> ibv_device_attr {
    let p = d.profile;
    // SAFETY: ibv_device_attr is plain data; all-zero is valid.
    let mut a: ibv_device_attr = unsafe { std::mem::zeroed() };
    fill(&mut a.fw_ver, "soft-efa 0.1");
    a.node_guid = d.guid.to_be();
    a.sys_image_guid = d.guid.to_be();
    a.max_mr_size = p.max_mr_size;
    a.page_size_cap = 0xffff_f000;
    a.vendor_id = 0x1d0f;
    a.vendor_part_id = p.vendor_part_id;
    a.hw_ver = p.hw_ver;
    a.max_qp = p.max_qp as c_int;
    a.max_qp_wr = p.max_sq_wr.min(p.max_rq_wr) as c_int;
    a.max_sge = c_int::from(p.max_sq_sge.min(p.max_rq_sge));
    a.max_sge_rd = 1;
    a.max_cq = p.max_cq as c_int;
    a.max_cqe = p.max_cqe as c_int;
    a.max_mr = p.max_mr as c_int;
    a.max_pd = p.max_pd as c_int;
    a.max_ah = p.max_ah as c_int;
    a.max_pkeys = 1;
    a.phys_port_cnt = 1;
    a
}

/// `ibv_query_device`.
pub unsafe extern "C" fn query_device(c: *mut ibv_context, attr: *mut ibv_device_attr) -> c_int {
    *attr = device_attr(&ctx(c).dev);
    0
}

unsafe extern "C" fn query_device_ex(
    c: *mut ibv_context,
    input: *const ibv_query_device_ex_input,
    attr: *mut ibv_device_attr_ex,
    attr_size: usize,
) -> c_int {
    if !input.is_null() && (*input).comp_mask != 0 {
        return libc::EINVAL;
    }
    if attr_size < size_of::<ibv_device_attr>() {
        return libc::EINVAL;
    }
    // SAFETY: ibv_device_attr_ex is plain data; all-zero is valid.
    let mut full: ibv_device_attr_ex = std::mem::zeroed();
    full.orig_attr = device_attr(&ctx(c).dev);
    full.phys_port_cnt_ex = 1;
    let n = attr_size.min(size_of::<ibv_device_attr_ex>());
    ptr::copy_nonoverlapping(
        (&full as *const ibv_device_attr_ex).cast::<u8>(),
        attr.cast::<u8>(),
        n,
    );
    0
}

fn port_attr(d: &Device) -> ibv_port_attr {
    // SAFETY: ibv_port_attr is plain data; all-zero is valid.
    let mut a: ibv_port_attr = unsafe { std::mem::zeroed() };
    a.state = IBV_PORT_ACTIVE;
    a.max_mtu = IBV_MTU_4096;
    a.active_mtu = IBV_MTU_4096;
    a.gid_tbl_len = 1;
    a.max_msg_sz = d.profile.max_msg_sz;
    a.pkey_tbl_len = 1;
    a.lid = 0;
    a.active_width = 2; // 4x
    a.active_speed = 32; // EDR (25 Gbps per lane)
    a.phys_state = 5; // LinkUp
    a.link_layer = IBV_LINK_LAYER_UNSPECIFIED as u8;
    a
}

unsafe extern "C" fn query_port_op(
    c: *mut ibv_context,
    port: u8,
    attr: *mut ibv_port_attr,
    len: usize,
) -> c_int {
    if port != 1 {
        return libc::EINVAL;
    }
    let full = port_attr(&ctx(c).dev);
    let n = len.min(size_of::<ibv_port_attr>());
    ptr::copy_nonoverlapping(
        (&full as *const ibv_port_attr).cast::<u8>(),
        attr.cast::<u8>(),
        n,
    );
    0
}

/// `ibv_query_port` (the compat export: the fields of the original, shorter struct).
pub unsafe extern "C" fn query_port(
    c: *mut ibv_context,
    port: u8,
    attr: *mut _compat_ibv_port_attr,
) -> c_int {
    query_port_op(c, port, attr.cast(), size_of::<_compat_ibv_port_attr>())
}

/// `ibv_query_gid`.
pub unsafe extern "C" fn query_gid(
    c: *mut ibv_context,
    port: u8,
    index: c_int,
    gid: *mut ibv_gid,
) -> c_int {
    if port != 1 || index != 0 {
        set_errno(libc::EINVAL);
        return -1;
    }
    (*gid).raw = ctx(c).dev.gid;
    0
}

/// `_ibv_query_gid_ex`.
pub unsafe extern "C" fn query_gid_ex(
    c: *mut ibv_context,
    port: u32,
    index: u32,
    entry: *mut ibv_gid_entry,
    flags: u32,
    entry_size: usize,
) -> c_int {
    if port != 1 || index != 0 || flags != 0 || entry_size < size_of::<ibv_gid_entry>() {
        return libc::EINVAL;
    }
    (*entry).gid.raw = ctx(c).dev.gid;
    (*entry).gid_index = 0;
    (*entry).port_num = 1;
    (*entry).gid_type = IBV_GID_TYPE_IB;
    (*entry).ndev_ifindex = 0;
    0
}

/// `_ibv_query_gid_table`: returns the number of entries, or a negative errno.
pub unsafe extern "C" fn query_gid_table(
    c: *mut ibv_context,
    entries: *mut ibv_gid_entry,
    max: usize,
    flags: u32,
    entry_size: usize,
) -> isize {
    if max == 0 {
        return -(libc::EINVAL as isize);
    }
    match query_gid_ex(c, 1, 0, entries, flags, entry_size) {
        0 => 1,
        e => -(e as isize),
    }
}

/// `ibv_query_gid_type` (IBVERBS_PRIVATE): EFA GIDs are of the IB type.
pub unsafe extern "C" fn query_gid_type(
    _c: *mut ibv_context,
    port: u8,
    index: c_uint,
    ty: *mut c_int,
) -> c_int {
    if port != 1 || index != 0 {
        return libc::EINVAL;
    }
    *ty = 0;
    0
}

/// `ibv_query_pkey`: the one default P_Key.
pub unsafe extern "C" fn query_pkey(
    _c: *mut ibv_context,
    port: u8,
    index: c_int,
    pkey: *mut u16,
) -> c_int {
    if port != 1 || index != 0 {
        return libc::EINVAL;
    }
    *pkey = 0xffffu16.to_be();
    0
}

/// `ibv_get_pkey_index`.
pub unsafe extern "C" fn get_pkey_index(_c: *mut ibv_context, port: u8, pkey: u16) -> c_int {
    if port == 1 && u16::from_be(pkey) == 0xffff {
        0
    } else {
        set_errno(libc::ENOENT);
        -1
    }
}

// ---- protection, thread and parent domains ----

/// The program-visible PD (or parent domain).
#[repr(C)]
pub struct SoftPd {
    pd: ibv_pd,
    /// The protection domain's id (a parent domain has its PD's).
    pub id: u32,
    /// The thread domain of a parent domain.
    pub td: *mut ibv_td,
    parent: bool,
}

/// The PD behind `pd`.
///
/// # Safety
/// `pd` must come from `ibv_alloc_pd` or `ibv_alloc_parent_domain`.
pub unsafe fn pd<'a>(pd: *mut ibv_pd) -> &'a SoftPd {
    &*pd.cast::<SoftPd>()
}

/// `ibv_alloc_pd`.
pub unsafe extern "C" fn alloc_pd(c: *mut ibv_context) -> *mut ibv_pd {
    let id = {
        let mut st = ctx(c).dev.lock();
        st.next_pd += 1;
        st.next_pd
    };
    let p = Box::new(SoftPd {
        pd: ibv_pd {
            context: c,
            handle: id,
        },
        id,
        td: null_mut(),
        parent: false,
    });
    into_c(p).cast()
}

/// `ibv_dealloc_pd` (PDs and parent domains).
pub unsafe extern "C" fn dealloc_pd(p: *mut ibv_pd) -> c_int {
    let s = p.cast::<SoftPd>();
    if !(*s).parent {
        let dev = &ctx((*p).context).dev;
        let st = dev.lock();
        if st.mrs.values().any(|m| m.pd == (*s).id) || st.qps.values().any(|q| q.pd == (*s).id) {
            return libc::EBUSY;
        }
    }
    free_box(s);
    0
}

/// The program-visible thread domain.
#[repr(C)]
pub struct SoftTd {
    td: ibv_td,
}

unsafe extern "C" fn alloc_td(c: *mut ibv_context, attr: *mut ibv_td_init_attr) -> *mut ibv_td {
    if attr.is_null() || (*attr).comp_mask != 0 {
        return fail(libc::EINVAL);
    }
    into_c(Box::new(SoftTd {
        td: ibv_td { context: c },
    }))
    .cast()
}

unsafe extern "C" fn dealloc_td(td: *mut ibv_td) -> c_int {
    free_box(td.cast::<SoftTd>());
    0
}

unsafe extern "C" fn alloc_parent_domain(
    c: *mut ibv_context,
    attr: *mut ibv_parent_domain_init_attr,
) -> *mut ibv_pd {
    let a = &*attr;
    if a.pd.is_null() || a.comp_mask != 0 {
        return fail(libc::EINVAL);
    }
    let parent = pd(a.pd);
    if parent.parent {
        return fail(libc::EINVAL);
    }
    let p = Box::new(SoftPd {
        pd: ibv_pd {
            context: c,
            handle: parent.id,
        },
        id: parent.id,
        td: a.td,
        parent: true,
    });
    into_c(p).cast()
}

// ---- memory regions ----

/// The program-visible MR.
#[repr(C)]
pub struct SoftMr {
    mr: ibv_mr,
}

fn supported_access(d: &Device) -> u32 {
    use efa_sys::{
        EFADV_DEVICE_ATTR_CAPS_RDMA_READ as READ, EFADV_DEVICE_ATTR_CAPS_RDMA_WRITE as WRITE,
    };
    let mut a = IBV_ACCESS_LOCAL_WRITE;
    if d.profile.has(READ) {
        a |= IBV_ACCESS_REMOTE_READ;
    }
    if d.profile.has(WRITE) {
        a |= IBV_ACCESS_REMOTE_WRITE;
    }
    a
}

/// Registers `[addr, addr + len)`; the device checks the access flags as the EFA kernel driver
/// does: only what the device supports, optional flags ignored.
pub unsafe fn register(
    p: *mut ibv_pd,
    addr: *mut c_void,
    len: usize,
    access: c_int,
) -> *mut ibv_mr {
    let softpd = pd(p);
    let dev = &ctx((*p).context).dev;
    let access = access as u32;
    let required = access & !IBV_ACCESS_OPTIONAL_RANGE;
    if required & !supported_access(dev) != 0 {
        return fail(libc::EOPNOTSUPP);
    }
    if len == 0 || addr.is_null() || len as u64 > dev.profile.max_mr_size {
        return fail(libc::EINVAL);
    }
    // Remote writes need local write, as the verbs spec requires.
    if required & IBV_ACCESS_REMOTE_WRITE != 0 && required & IBV_ACCESS_LOCAL_WRITE == 0 {
        return fail(libc::EINVAL);
    }
    let key = {
        let mut st = dev.lock();
        if st.mrs.len() >= dev.profile.max_mr as usize {
            return fail(libc::ENOMEM);
        }
        st.next_key += 1;
        let key = st.next_key;
        st.mrs.insert(
            key,
            MrEntry {
                addr: addr as u64,
                len: len as u64,
                access: required,
                pd: softpd.id,
            },
        );
        key
    };
    let mr = Box::new(SoftMr {
        mr: ibv_mr {
            context: (*p).context,
            pd: p,
            addr,
            length: len,
            handle: key,
            lkey: key,
            rkey: key,
        },
    });
    into_c(mr).cast()
}

/// `ibv_reg_mr` (IBVERBS_1.1).
pub unsafe extern "C" fn reg_mr(
    p: *mut ibv_pd,
    addr: *mut c_void,
    len: usize,
    access: c_int,
) -> *mut ibv_mr {
    register(p, addr, len, access)
}

/// `ibv_reg_mr_iova`.
pub unsafe extern "C" fn reg_mr_iova(
    p: *mut ibv_pd,
    addr: *mut c_void,
    len: usize,
    iova: u64,
    access: c_int,
) -> *mut ibv_mr {
    if iova != addr as u64 {
        return fail(libc::EOPNOTSUPP);
    }
    register(p, addr, len, access)
}

/// `ibv_reg_mr_iova2`.
pub unsafe extern "C" fn reg_mr_iova2(
    p: *mut ibv_pd,
    addr: *mut c_void,
    len: usize,
    iova: u64,
    access: c_uint,
) -> *mut ibv_mr {
    reg_mr_iova(p, addr, len, iova, access as c_int)
}

/// `ibv_reg_dmabuf_mr`: soft-efa has no device memory to import from.
pub unsafe extern "C" fn reg_dmabuf_mr(
    _p: *mut ibv_pd,
    _o: u64,
    _l: usize,
    _i: u64,
    _fd: c_int,
    _a: c_int,
) -> *mut ibv_mr {
    fail(libc::EOPNOTSUPP)
}

/// `ibv_dereg_mr`.
pub unsafe extern "C" fn dereg_mr(mr: *mut ibv_mr) -> c_int {
    ctx((*mr).context).dev.lock().mrs.remove(&(*mr).lkey);
    free_box(mr.cast::<SoftMr>());
    0
}

// ---- address handles ----

/// The program-visible AH.
#[repr(C)]
pub struct SoftAh {
    ah: ibv_ah,
    /// Destination GID.
    pub gid: [u8; 16],
    /// The device's AH number (`efadv_query_ah`).
    pub ahn: u16,
}

/// The AH behind `ah`.
///
/// # Safety
/// `ah` must come from `ibv_create_ah`.
pub unsafe fn ah<'a>(ah: *mut ibv_ah) -> &'a SoftAh {
    &*ah.cast::<SoftAh>()
}

/// `ibv_create_ah`: the destination GID on port 1. Neither the provider nor the kernel checks
/// `is_global`; without it the GID is zero and the AH reaches nobody.
pub unsafe extern "C" fn create_ah(p: *mut ibv_pd, attr: *mut ibv_ah_attr) -> *mut ibv_ah {
    let a = &*attr;
    if a.port_num != 1 {
        return fail(libc::EINVAL);
    }
    let dev = &ctx((*p).context).dev;
    let gid = if a.is_global != 0 {
        a.grh.dgid.raw
    } else {
        [0; 16]
    };
    let ahn = {
        let mut st = dev.lock();
        let total: u32 = st.peers.values().map(|p| p.0).sum();
        if total >= dev.profile.max_ah {
            return fail(libc::ENOMEM);
        }
        st.next_ahn = st.next_ahn.wrapping_add(1).clamp(1, 0xfffe);
        let ahn = st.next_ahn;
        let entry = st.peers.entry(gid).or_insert((0, ahn));
        entry.0 += 1;
        ahn
    };
    let ah = Box::new(SoftAh {
        ah: ibv_ah {
            context: (*p).context,
            pd: p,
            handle: u32::from(ahn),
        },
        gid,
        ahn,
    });
    into_c(ah).cast()
}

/// `ibv_destroy_ah`.
pub unsafe extern "C" fn destroy_ah(a: *mut ibv_ah) -> c_int {
    let s = a.cast::<SoftAh>();
    {
        let mut st = ctx((*a).context).dev.lock();
        if let Some((n, _)) = st.peers.get_mut(&(*s).gid) {
            *n -= 1;
            if *n == 0 {
                st.peers.remove(&(*s).gid);
            }
        }
    }
    free_box(s);
    0
}

// ---- completion channels and CQs ----

/// The program-visible completion channel.
#[repr(C)]
pub struct SoftChannel {
    ch: ibv_comp_channel,
    shared: Arc<Channel>,
}

/// `ibv_create_comp_channel`.
pub unsafe extern "C" fn create_comp_channel(c: *mut ibv_context) -> *mut ibv_comp_channel {
    let shared = match Channel::new() {
        Ok(ch) => Arc::new(ch),
        Err(e) => return fail(e),
    };
    let ch = ibv_comp_channel {
        context: c,
        fd: shared.fd(),
        refcnt: 0,
    };
    into_c(Box::new(SoftChannel { ch, shared })).cast()
}

/// `ibv_destroy_comp_channel`.
pub unsafe extern "C" fn destroy_comp_channel(ch: *mut ibv_comp_channel) -> c_int {
    if (*ch).refcnt != 0 {
        return libc::EBUSY;
    }
    free_box(ch.cast::<SoftChannel>());
    0
}

fn new_cq(
    c: *mut ibv_context,
    cqe: c_int,
    channel: *mut ibv_comp_channel,
    wc_flags: u64,
) -> Result<*mut SoftCq, c_int> {
    // SAFETY: `c` is a live context from ibv_open_device.
    let dev = unsafe { &ctx(c).dev };
    if cqe < 1 || cqe as u32 > dev.profile.max_cqe {
        return Err(libc::EINVAL);
    }
    let shared_ch = if channel.is_null() {
        None
    } else {
        if !dev.profile.cq_notifications {
            return Err(libc::EOPNOTSUPP);
        }
        // SAFETY: a non-null channel comes from ibv_create_comp_channel.
        unsafe {
            (*channel).refcnt += 1;
            Some((*channel.cast::<SoftChannel>()).shared.clone())
        }
    };
    let mut cq = SoftCq::new(c, cqe, Arc::new(CqShared::new(shared_ch)), wc_flags);
    cq.ex.channel = channel;
    Ok(into_c(cq))
}

/// `ibv_create_cq`.
pub unsafe extern "C" fn create_cq(
    c: *mut ibv_context,
    cqe: c_int,
    cq_context: *mut c_void,
    channel: *mut ibv_comp_channel,
    _comp_vector: c_int,
) -> *mut ibv_cq {
    match new_cq(c, cqe, channel, u64::from(IBV_WC_STANDARD_FLAGS)) {
        Ok(cq) => {
            (*cq).ex.cq_context = cq_context;
            cq.cast()
        }
        Err(e) => fail(e),
    }
}

/// The `wc_flags` EFA's extended CQs support.
pub const SUPPORTED_WC_FLAGS: u64 = (IBV_WC_EX_WITH_BYTE_LEN
    | IBV_WC_EX_WITH_IMM
    | IBV_WC_EX_WITH_QP_NUM
    | IBV_WC_EX_WITH_SRC_QP
    | IBV_WC_EX_WITH_SLID
    | IBV_WC_EX_WITH_SL
    | IBV_WC_EX_WITH_DLID_PATH_BITS) as u64;

/// `create_cq_ex` and `efadv_create_cq`: checks the attributes as the provider does, then makes
/// the CQ. `dv_flags` are the efadv `wc_flags` (SGID, unsolicited).
pub unsafe fn create_cq_checked(
    c: *mut ibv_context,
    attr: *mut ibv_cq_init_attr_ex,
    dv_flags: u64,
) -> *mut ibv_cq_ex {
    let a = &mut *attr;
    if a.wc_flags & !SUPPORTED_WC_FLAGS != 0 {
        return fail(libc::EOPNOTSUPP);
    }
    let known = IBV_CQ_INIT_ATTR_MASK_FLAGS | IBV_CQ_INIT_ATTR_MASK_PD;
    if a.comp_mask & !known != 0 {
        return fail(libc::EOPNOTSUPP);
    }
    if a.comp_mask & IBV_CQ_INIT_ATTR_MASK_FLAGS != 0 {
        // rdma-core 59 and earlier accept only the PD bit; 60 added single-threaded CQs.
        let release = crate::device::release();
        if release <= 59 || a.flags & !IBV_CREATE_CQ_ATTR_SINGLE_THREADED != 0 {
            return fail(libc::EOPNOTSUPP);
        }
    }
    if a.comp_mask & IBV_CQ_INIT_ATTR_MASK_PD != 0
        && (a.parent_domain.is_null() || !pd(a.parent_domain).parent)
    {
        return fail(libc::EINVAL);
    }
    // The provider rounds the depth up to a power of two and writes it back.
    a.cqe = a.cqe.max(1).next_power_of_two();
    match new_cq(c, a.cqe as c_int, a.channel, a.wc_flags | dv_flags) {
        Ok(cq) => {
            (*cq).ex.cq_context = a.cq_context;
            let on_td = a.comp_mask & IBV_CQ_INIT_ATTR_MASK_PD != 0 && {
                (*cq).parent_domain = a.parent_domain;
                !pd(a.parent_domain).td.is_null()
            };
            let single = a.comp_mask & IBV_CQ_INIT_ATTR_MASK_FLAGS != 0
                && a.flags & IBV_CREATE_CQ_ATTR_SINGLE_THREADED != 0;
            (*cq).locked_passes = !(single || on_td);
            cq.cast()
        }
        Err(e) => fail(e),
    }
}

unsafe extern "C" fn create_cq_ex(
    c: *mut ibv_context,
    attr: *mut ibv_cq_init_attr_ex,
) -> *mut ibv_cq_ex {
    create_cq_checked(c, attr, 0)
}

/// `ibv_destroy_cq`.
pub unsafe extern "C" fn destroy_cq(cq: *mut ibv_cq) -> c_int {
    let s = cq.cast::<SoftCq>();
    (*s).shared.release();
    let ch = (*s).ex.channel;
    if !ch.is_null() {
        (*ch).refcnt -= 1;
    }
    free_box(s);
    0
}

unsafe extern "C" fn poll_cq(cq: *mut ibv_cq, n: c_int, wc: *mut ibv_wc) -> c_int {
    if n <= 0 {
        return 0;
    }
    let out = std::slice::from_raw_parts_mut(wc, n as usize);
    SoftCq::from_ex(cq.cast()).poll_legacy(out) as c_int
}

/// As the provider's `efa_arm_cq`: solicited-only events are not supported.
unsafe extern "C" fn req_notify_cq(cq: *mut ibv_cq, solicited_only: c_int) -> c_int {
    if solicited_only != 0 {
        return libc::EOPNOTSUPP;
    }
    SoftCq::from_ex(cq.cast()).shared.arm()
}

/// `ibv_get_cq_event`.
pub unsafe extern "C" fn get_cq_event(
    ch: *mut ibv_comp_channel,
    cq: *mut *mut ibv_cq,
    cq_context: *mut *mut c_void,
) -> c_int {
    match (*ch.cast::<SoftChannel>()).shared.get_event() {
        Ok(addr) => {
            let soft = addr as *mut SoftCq;
            *cq = soft.cast();
            *cq_context = (*soft).ex.cq_context;
            0
        }
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

/// `ibv_ack_cq_events`.
pub unsafe extern "C" fn ack_cq_events(cq: *mut ibv_cq, n: c_uint) {
    (*cq).comp_events_completed = (*cq).comp_events_completed.wrapping_add(n);
}

// ---- strings and small helpers ----

/// `ibv_wc_status_str`.
pub unsafe extern "C" fn wc_status_str(status: ibv_wc_status) -> *const c_char {
    const NAMES: [&CStr; 24] = [
        c"success",
        c"local length error",
        c"local QP operation error",
        c"local EE context operation error",
        c"local protection error",
        c"Work Request Flushed Error",
        c"memory management operation error",
        c"bad response error",
        c"local access error",
        c"remote invalid request error",
        c"remote access error",
        c"remote operation error",
        c"transport retry counter exceeded",
        c"RNR retry counter exceeded",
        c"local RDD violation error",
        c"remote invalid RD request",
        c"aborted error",
        c"invalid EE context number",
        c"invalid EE context state",
        c"fatal error",
        c"response timeout error",
        c"general error",
        c"TM error",
        c"TM software rendezvous",
    ];
    NAMES.get(status as usize).unwrap_or(&c"unknown").as_ptr()
}

/// `ibv_node_type_str`.
pub unsafe extern "C" fn node_type_str(t: ibv_node_type) -> *const c_char {
    match t {
        IBV_NODE_CA => c"InfiniBand channel adapter",
        IBV_NODE_UNSPECIFIED => c"unspecified",
        _ => c"unknown",
    }
    .as_ptr()
}

/// `ibv_port_state_str`.
pub unsafe extern "C" fn port_state_str(s: ibv_port_state) -> *const c_char {
    const NAMES: [&CStr; 6] = [
        c"PORT_NOP",
        c"PORT_DOWN",
        c"PORT_INIT",
        c"PORT_ARMED",
        c"PORT_ACTIVE",
        c"PORT_ACTIVE_DEFER",
    ];
    NAMES.get(s as usize).unwrap_or(&c"invalid state").as_ptr()
}

/// `ibv_event_type_str`.
pub unsafe extern "C" fn event_type_str(_e: ibv_event_type) -> *const c_char {
    c"unknown".as_ptr()
}

/// `ibv_read_sysfs_file`: reads `dir/file` into `buf`, without its trailing newline.
pub unsafe extern "C" fn read_sysfs_file(
    dir: *const c_char,
    file: *const c_char,
    buf: *mut c_char,
    size: usize,
) -> c_int {
    let path = std::path::Path::new(&*CStr::from_ptr(dir).to_string_lossy())
        .join(&*CStr::from_ptr(file).to_string_lossy());
    let Ok(text) = std::fs::read(&path) else {
        return -1;
    };
    let text = text.strip_suffix(b"\n").unwrap_or(&text);
    if size == 0 {
        return -1;
    }
    let n = text.len().min(size - 1);
    ptr::copy_nonoverlapping(text.as_ptr().cast::<c_char>(), buf, n);
    *buf.add(n) = 0;
    n as c_int
}

const RATES: [(ibv_rate, c_int, c_int); 9] = [
    (IBV_RATE_2_5_GBPS, 1, 2500),
    (IBV_RATE_5_GBPS, 2, 5000),
    (IBV_RATE_10_GBPS, 4, 10000),
    (IBV_RATE_20_GBPS, 8, 20000),
    (IBV_RATE_25_GBPS, 10, 25000),
    (IBV_RATE_40_GBPS, 16, 40000),
    (IBV_RATE_50_GBPS, 20, 50000),
    (IBV_RATE_100_GBPS, 40, 100000),
    (IBV_RATE_200_GBPS, 80, 200000),
];

/// `ibv_rate_to_mult`.
pub unsafe extern "C" fn rate_to_mult(r: ibv_rate) -> c_int {
    RATES.iter().find(|x| x.0 == r).map_or(-1, |x| x.1)
}

/// `mult_to_ibv_rate`.
pub unsafe extern "C" fn mult_to_rate(m: c_int) -> ibv_rate {
    RATES
        .iter()
        .find(|x| x.1 == m)
        .map_or(IBV_RATE_MAX, |x| x.0)
}

/// `ibv_rate_to_mbps`.
pub unsafe extern "C" fn rate_to_mbps(r: ibv_rate) -> c_int {
    RATES.iter().find(|x| x.0 == r).map_or(-1, |x| x.2)
}

/// `mbps_to_ibv_rate`.
pub unsafe extern "C" fn mbps_to_rate(m: c_int) -> ibv_rate {
    RATES
        .iter()
        .find(|x| x.2 == m)
        .map_or(IBV_RATE_MAX, |x| x.0)
}

/// `ibv_fork_init`: nothing to do (soft-efa pins nothing).
pub unsafe extern "C" fn fork_init() -> c_int {
    0
}

/// `ibv_is_fork_initialized`: `IBV_FORK_UNNEEDED`.
pub unsafe extern "C" fn is_fork_initialized() -> c_int {
    2
}

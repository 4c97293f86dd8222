//! Memory regions: host memory (owned, borrowed or raw) and dma-buf.

use std::alloc::{self, Layout};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use bitflags::bitflags;

use crate::caps::EfaCaps;
use crate::error::{Error, Limit, Result};
use crate::pd::Pd;

bitflags! {
    /// Memory access rights (`enum ibv_access_flags`).
    ///
    /// The default is [`Access::LOCAL_WRITE`] alone: local receives and RDMA-read targets work,
    /// and no peer may touch the region. Grant remote rights only to regions peers must reach.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Access: u32 {
        /// The local device may write (receives, RDMA read results).
        const LOCAL_WRITE = 1;
        /// Peers may RDMA write (requires `LOCAL_WRITE`).
        const REMOTE_WRITE = 1 << 1;
        /// Peers may RDMA read.
        const REMOTE_READ = 1 << 2;
        /// Peers may run atomics (not on EFA).
        const REMOTE_ATOMIC = 1 << 3;
        /// The device may reorder writes to this region (optional hint).
        const RELAXED_ORDERING = 1 << 20;
    }
}

impl Default for Access {
    fn default() -> Self {
        Access::LOCAL_WRITE
    }
}

/// Check a requested access set against the rules and, on EFA, against the device's capabilities.
pub(crate) fn check_access(access: Access, efa: Option<EfaCaps>) -> Result<()> {
    if access.intersects(Access::REMOTE_WRITE | Access::REMOTE_ATOMIC)
        && !access.contains(Access::LOCAL_WRITE)
    {
        return Err(Error::Invalid {
            what: "access flags (remote write and atomics need LOCAL_WRITE)",
            value: access.bits().into(),
        });
    }
    if let Some(caps) = efa {
        if access.contains(Access::REMOTE_ATOMIC) {
            return Err(Error::Unsupported {
                what: "remote atomic access",
                why: "EFA has no atomics",
            });
        }
        if access.contains(Access::REMOTE_WRITE) && !caps.contains(EfaCaps::RDMA_WRITE) {
            return Err(Error::Unsupported {
                what: "remote write access",
                why: "device lacks the RDMA_WRITE capability",
            });
        }
        if access.contains(Access::REMOTE_READ) && !caps.contains(EfaCaps::RDMA_READ) {
            return Err(Error::Unsupported {
                what: "remote read access",
                why: "device lacks the RDMA_READ capability",
            });
        }
    }
    Ok(())
}

/// One scatter/gather entry: bytes at `addr` under local key `lkey`.
///
/// Layout-identical to `ibv_sge`, so a slice of them is handed to the device as is. Building
/// one is safe: the device checks the key and bounds against its registrations, and a region's
/// memory stays valid while it is registered.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Sge(efa_sys::ibv_sge);

impl PartialEq for Sge {
    fn eq(&self, o: &Self) -> bool {
        (self.0.addr, self.0.length, self.0.lkey) == (o.0.addr, o.0.length, o.0.lkey)
    }
}

impl Eq for Sge {}

impl Sge {
    /// An SGE from raw parts (e.g. a range of a region registered elsewhere).
    pub fn new(addr: u64, length: u32, lkey: u32) -> Self {
        Sge(efa_sys::ibv_sge { addr, length, lkey })
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.0.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> u32 {
        self.0.length
    }

    /// Whether the entry is empty.
    pub fn is_empty(&self) -> bool {
        self.0.length == 0
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.0.lkey
    }

    pub(crate) fn as_raw_slice(s: &[Sge]) -> *const efa_sys::ibv_sge {
        s.as_ptr().cast()
    }
}

impl std::fmt::Debug for Sge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sge({:#x}+{} lkey {:#x})",
            self.0.addr, self.0.length, self.0.lkey
        )
    }
}

/// Total bytes of a scatter/gather list (u64: cannot overflow for any realistic count).
pub(crate) fn sge_total(sges: &[Sge]) -> u64 {
    sges.iter().map(|s| u64::from(s.len())).sum()
}

/// What a peer needs to reach a region by RDMA: address, length and remote key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteMr {
    /// Start address in the peer's address space (or iova).
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Remote key.
    pub rkey: u32,
}

impl RemoteMr {
    /// The remote address `offset` bytes in, checked against the region's length for `len`
    /// bytes.
    pub fn at(&self, offset: u64, len: u64) -> Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.addr + offset),
            _ => Err(Error::limit(
                Limit::MrRange,
                offset.saturating_add(len),
                self.len,
            )),
        }
    }
}

/// EFA per-region attributes from `efadv_query_mr`: the interconnect ids that serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EfaMrAttr {
    /// Interconnect used for receives into the region.
    pub recv_ic_id: Option<u16>,
    /// Interconnect used when the region is read by RDMA.
    pub rdma_read_ic_id: Option<u16>,
    /// Interconnect used when the region receives RDMA writes.
    pub rdma_recv_ic_id: Option<u16>,
}

enum Backing {
    /// Page-aligned memory this region allocated and frees after deregistering.
    Owned { ptr: NonNull<u8>, layout: Layout },
    /// Caller memory: a borrowed slice (lifetime tracked) or a raw range (caller's promise).
    Host,
    /// dma-buf memory: no host mapping.
    DmaBuf,
}

/// A registered memory region (`ibv_mr`), deregistered on drop.
///
/// `'a` is the lifetime of a borrowed buffer; owned, raw and dma-buf regions are `'static`.
pub struct Mr<'a> {
    pd: Arc<Pd>,
    raw: NonNull<efa_sys::ibv_mr>,
    backing: Backing,
    addr: u64,
    len: usize,
    access: Access,
    _buf: PhantomData<&'a mut [u8]>,
}

// SAFETY: an ibv_mr is a kernel registration; keys and bounds are immutable, and host access
// through `write_at` needs &mut.
unsafe impl Send for Mr<'_> {}
// SAFETY: shared methods only read immutable fields or copy out of the region (`read_at`).
unsafe impl Sync for Mr<'_> {}

impl std::fmt::Debug for Mr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mr")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .field("lkey", &self.lkey())
            .field("rkey", &self.rkey())
            .field("access", &self.access)
            .finish()
    }
}

fn efa_caps_of(pd: &Pd) -> Option<EfaCaps> {
    pd.context().efa_attr().map(|a| a.caps)
}

/// Register `len` bytes at `ptr` after checking the access set.
///
/// # Safety
/// `ptr..ptr+len` must be valid for reads and writes while the registration lives.
unsafe fn reg_host(
    pd: &Pd,
    ptr: *mut u8,
    len: usize,
    access: Access,
) -> Result<NonNull<efa_sys::ibv_mr>> {
    check_access(access, efa_caps_of(pd))?;
    // SAFETY: the PD is live and the caller vouches for the range.
    let mr = unsafe {
        efa_sys::ibv_reg_mr(
            pd.context().verbs(),
            pd.as_raw(),
            ptr.cast(),
            len,
            access.bits(),
        )
    };
    NonNull::new(mr).ok_or_else(|| {
        Error::verbs_arg(
            "ibv_reg_mr",
            crate::error::last_errno(),
            "length",
            len as u64,
        )
    })
}

impl Mr<'static> {
    /// Allocate `len` zeroed, page-aligned bytes and register them.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a length of 0, [`Error::Verbs`] when `ibv_reg_mr` fails (with its
    /// errno and the length).
    pub fn alloc(pd: &Arc<Pd>, len: usize, access: Access) -> Result<Self> {
        if len == 0 {
            return Err(Error::Invalid {
                what: "region length",
                value: 0,
            });
        }
        let layout = Layout::from_size_align(len, 4096).map_err(|_| Error::Invalid {
            what: "region length",
            value: len as u64,
        })?;
        // SAFETY: the layout has non-zero size.
        let ptr = NonNull::new(unsafe { alloc::alloc_zeroed(layout) }).ok_or(Error::Verbs {
            call: "alloc_zeroed",
            errno: libc::ENOMEM,
            arg: Some(("length", len as u64)),
        })?;
        // SAFETY: the allocation is ours and outlives the registration (freed in Drop after
        // deregistering).
        match unsafe { reg_host(pd, ptr.as_ptr(), len, access) } {
            Ok(raw) => Ok(Mr {
                pd: Arc::clone(pd),
                raw,
                backing: Backing::Owned { ptr, layout },
                addr: ptr.as_ptr() as u64,
                len,
                access,
                _buf: PhantomData,
            }),
            Err(e) => {
                // SAFETY: allocated above with this layout, never registered.
                unsafe { alloc::dealloc(ptr.as_ptr(), layout) };
                Err(e)
            }
        }
    }

    /// Register caller memory by address and length.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a null or empty range, [`Error::Verbs`] when `ibv_reg_mr` fails
    /// (with its errno and the length).
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay valid (allocated, not unmapped) until this region is dropped,
    /// and nothing may access it in a way that conflicts with device access granted by `access`
    /// while work requests on it are in flight.
    pub unsafe fn register_raw(
        pd: &Arc<Pd>,
        ptr: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<Self> {
        // SAFETY: forwarded from the caller.
        let raw = unsafe { reg_host(pd, ptr, len, access)? };
        Ok(Mr {
            pd: Arc::clone(pd),
            raw,
            backing: Backing::Host,
            addr: ptr as u64,
            len,
            access,
            _buf: PhantomData,
        })
    }

    /// Register `len` bytes at `offset` of a dma-buf (e.g. GPU memory), addressed by peers and
    /// work requests as `iova`.
    ///
    /// Needs `ibv_reg_dmabuf_mr` (rdma-core 34+) and a kernel and device that import dma-bufs.
    /// The kernel holds its own reference on the dma-buf, so `fd` may be closed afterwards.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] when the library lacks `ibv_reg_dmabuf_mr`, [`Error::Verbs`] when the
    /// registration fails (with its errno).
    pub fn register_dmabuf(
        pd: &Arc<Pd>,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        iova: u64,
        access: Access,
    ) -> Result<Self> {
        check_access(access, efa_caps_of(pd))?;
        let reg = pd
            .context()
            .verbs()
            .ibv_reg_dmabuf_mr
            .ok_or(Error::Unsupported {
                what: "dma-buf registration",
                why: "libibverbs lacks ibv_reg_dmabuf_mr (needs rdma-core 34 or newer)",
            })?;
        // SAFETY: the PD is live; the kernel validates the fd and range.
        let mr = unsafe {
            reg(
                pd.as_raw(),
                offset,
                len,
                iova,
                fd.as_raw_fd(),
                access.bits() as libc::c_int,
            )
        };
        let raw = NonNull::new(mr).ok_or_else(|| {
            Error::verbs_arg(
                "ibv_reg_dmabuf_mr",
                crate::error::last_errno(),
                "length",
                len as u64,
            )
        })?;
        Ok(Mr {
            pd: Arc::clone(pd),
            raw,
            backing: Backing::DmaBuf,
            addr: iova,
            len,
            access,
            _buf: PhantomData,
        })
    }
}

impl<'a> Mr<'a> {
    /// Register a borrowed buffer; the region cannot outlive it, and the buffer cannot be
    /// touched except through the region until the region is dropped.
    ///
    /// # Errors
    ///
    /// As [`Mr::register_raw`].
    pub fn register(pd: &Arc<Pd>, buf: &'a mut [u8], access: Access) -> Result<Self> {
        if buf.is_empty() {
            return Err(Error::Invalid {
                what: "region length",
                value: 0,
            });
        }
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        // SAFETY: the exclusive borrow keeps the buffer alive and untouched for 'a, which
        // outlives the registration.
        let raw = unsafe { reg_host(pd, ptr, len, access)? };
        Ok(Mr {
            pd: Arc::clone(pd),
            raw,
            backing: Backing::Host,
            addr: ptr as u64,
            len,
            access,
            _buf: PhantomData,
        })
    }

    /// Start address (the iova for dma-buf regions).
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never true for a registered region).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Access rights granted.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Local key, for SGEs.
    pub fn lkey(&self) -> u32 {
        // SAFETY: the registration is live; lkey is immutable.
        unsafe { self.raw.as_ref().lkey }
    }

    /// Remote key, for peers.
    pub fn rkey(&self) -> u32 {
        // SAFETY: as for lkey.
        unsafe { self.raw.as_ref().rkey }
    }

    /// The protection domain.
    pub fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }

    /// The raw `ibv_mr`; valid while `self` lives.
    pub fn as_raw(&self) -> *mut efa_sys::ibv_mr {
        self.raw.as_ptr()
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::limit(
                Limit::MrRange,
                offset.saturating_add(len) as u64,
                self.len as u64,
            )),
        }
    }

    /// An SGE for `len` bytes at `offset`, bounds-checked.
    pub fn sge(&self, offset: usize, len: u32) -> Result<Sge> {
        self.check_range(offset, len as usize)?;
        Ok(Sge::new(self.addr + offset as u64, len, self.lkey()))
    }

    /// An SGE covering the region (up to 4 GiB - 1).
    pub fn sge_all(&self) -> Result<Sge> {
        let len = u32::try_from(self.len)
            .map_err(|_| Error::limit(Limit::MrRange, self.len as u64, u32::MAX.into()))?;
        self.sge(0, len)
    }

    /// What a peer needs to reach this region.
    pub fn remote(&self) -> RemoteMr {
        RemoteMr {
            addr: self.addr,
            len: self.len as u64,
            rkey: self.rkey(),
        }
    }

    fn host_ptr(&self) -> Result<*mut u8> {
        match self.backing {
            Backing::Owned { ptr, .. } => Ok(ptr.as_ptr()),
            Backing::Host => Ok(self.addr as *mut u8),
            Backing::DmaBuf => Err(Error::Unsupported {
                what: "host access",
                why: "a dma-buf region has no host mapping",
            }),
        }
    }

    /// Copy bytes out of the region at `offset`.
    ///
    /// The copy goes through raw pointers, so bytes the device is writing at the same time may
    /// come out torn but never break memory safety; read after the completion to get them whole.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check_range(offset, out.len())?;
        let p = self.host_ptr()?;
        // SAFETY: in bounds of registered memory that lives as long as `self`; `out` is a
        // distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(p.add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Copy bytes into the region at `offset`.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len())?;
        let p = self.host_ptr()?;
        // SAFETY: in bounds of registered memory that lives as long as `self`; &mut self rules
        // out concurrent host access through this region.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.add(offset), data.len()) };
        Ok(())
    }

    /// Fill the region with `byte`.
    pub fn fill(&mut self, byte: u8) -> Result<()> {
        let p = self.host_ptr()?;
        // SAFETY: as for write_at, over the whole region.
        unsafe { std::ptr::write_bytes(p, byte, self.len) };
        Ok(())
    }

    /// EFA interconnect attributes (`efadv_query_mr`, rdma-core 50+).
    pub fn efa_attr(&self) -> Result<EfaMrAttr> {
        let ctx = self.pd.context();
        ctx.require_efa()?;
        let dv = efa_sys::efadv()?;
        let query = dv.efadv_query_mr.ok_or(Error::Unsupported {
            what: "efadv_query_mr",
            why: "libefa predates it (needs rdma-core 50 or newer)",
        })?;
        let mut raw = efa_sys::efadv_mr_attr::default();
        // SAFETY: the registration is live; `raw` is zeroed and its full size passed.
        let rc = unsafe {
            query(
                self.raw.as_ptr(),
                &mut raw,
                std::mem::size_of_val(&raw) as u32,
            )
        };
        if rc != 0 {
            return Err(Error::verbs("efadv_query_mr", rc));
        }
        let valid = |bit: u32, v: u16| (u32::from(raw.ic_id_validity) & bit != 0).then_some(v);
        Ok(EfaMrAttr {
            recv_ic_id: valid(efa_sys::EFADV_MR_ATTR_VALIDITY_RECV_IC_ID, raw.recv_ic_id),
            rdma_read_ic_id: valid(
                efa_sys::EFADV_MR_ATTR_VALIDITY_RDMA_READ_IC_ID,
                raw.rdma_read_ic_id,
            ),
            rdma_recv_ic_id: valid(
                efa_sys::EFADV_MR_ATTR_VALIDITY_RDMA_RECV_IC_ID,
                raw.rdma_recv_ic_id,
            ),
        })
    }
}

impl Drop for Mr<'_> {
    fn drop(&mut self) {
        // SAFETY: registered once, deregistered once; after this the device no longer
        // touches the memory, so owned memory can be freed and borrowed memory handed back.
        let rc = unsafe { (self.pd.context().verbs().ibv_dereg_mr)(self.raw.as_ptr()) };
        crate::teardown::check("ibv_dereg_mr", rc);
        if let Backing::Owned { ptr, layout } = self.backing {
            // SAFETY: allocated in `alloc` with this layout.
            unsafe { alloc::dealloc(ptr.as_ptr(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sge_is_layout_identical_to_ibv_sge() {
        assert_eq!(
            std::mem::size_of::<Sge>(),
            std::mem::size_of::<efa_sys::ibv_sge>()
        );
        assert_eq!(
            std::mem::align_of::<Sge>(),
            std::mem::align_of::<efa_sys::ibv_sge>()
        );
        let s = [Sge::new(0x1000, 64, 7), Sge::new(0x2000, 32, 9)];
        // SAFETY: repr(transparent) over ibv_sge, checked by the size assertions above.
        let raw = unsafe { std::slice::from_raw_parts(Sge::as_raw_slice(&s), 2) };
        assert_eq!((raw[1].addr, raw[1].length, raw[1].lkey), (0x2000, 32, 9));
        assert_eq!(sge_total(&s), 96);
    }

    #[test]
    fn access_bits_match_verbs() {
        assert_eq!(Access::LOCAL_WRITE.bits(), efa_sys::IBV_ACCESS_LOCAL_WRITE);
        assert_eq!(
            Access::REMOTE_WRITE.bits(),
            efa_sys::IBV_ACCESS_REMOTE_WRITE
        );
        assert_eq!(Access::REMOTE_READ.bits(), efa_sys::IBV_ACCESS_REMOTE_READ);
        assert_eq!(
            Access::REMOTE_ATOMIC.bits(),
            efa_sys::IBV_ACCESS_REMOTE_ATOMIC
        );
        assert_eq!(
            Access::RELAXED_ORDERING.bits(),
            efa_sys::IBV_ACCESS_RELAXED_ORDERING
        );
        assert_eq!(Access::default(), Access::LOCAL_WRITE);
    }

    #[test]
    fn efa_access_follows_capabilities() {
        let rw = Access::LOCAL_WRITE | Access::REMOTE_WRITE;
        assert!(check_access(rw, None).is_ok());
        assert!(matches!(
            check_access(Access::REMOTE_WRITE, None),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            check_access(rw, Some(EfaCaps::RDMA_READ)),
            Err(Error::Unsupported {
                what: "remote write access",
                ..
            })
        ));
        assert!(check_access(
            rw | Access::REMOTE_READ,
            Some(EfaCaps::RDMA_READ | EfaCaps::RDMA_WRITE)
        )
        .is_ok());
        assert!(matches!(
            check_access(
                Access::LOCAL_WRITE | Access::REMOTE_ATOMIC,
                Some(EfaCaps::all())
            ),
            Err(Error::Unsupported { .. })
        ));
    }

    proptest! {
        #[test]
        fn remote_ranges_are_bounded(len in 0u64..1 << 40, off in any::<u64>(), n in any::<u64>()) {
            let r = RemoteMr { addr: 1 << 44, len, rkey: 1 };
            match r.at(off, n) {
                Ok(a) => {
                    prop_assert!(off.checked_add(n).is_some_and(|e| e <= len));
                    prop_assert_eq!(a, (1u64 << 44) + off);
                }
                Err(Error::Limit { limit: Limit::MrRange, max, .. }) => {
                    prop_assert_eq!(max, len);
                    prop_assert!(!off.checked_add(n).is_some_and(|e| e <= len));
                }
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }

        #[test]
        fn remote_write_without_local_write_is_refused(bits in any::<u32>()) {
            let a = Access::from_bits_retain(bits & 0x10000f);
            let ok = check_access(a, None).is_ok();
            let needs_local = a.intersects(Access::REMOTE_WRITE | Access::REMOTE_ATOMIC);
            prop_assert_eq!(ok, !needs_local || a.contains(Access::LOCAL_WRITE));
        }
    }
}

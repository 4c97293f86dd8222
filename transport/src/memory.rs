//! Buffers the engine owns: registered safely, accessed only through the engine.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::pages::{Backing, HugeAllocError, HugePages};

/// Memory handed to the engine with [`Engine::register_owned`](crate::Engine::register_owned).
/// While registered, the engine owns it and peers may access it, so the program reaches it only
/// through [`Engine::read_owned`](crate::Engine::read_owned) /
/// [`Engine::write_owned`](crate::Engine::write_owned) and transfers; unregistering hands it back.
#[derive(Debug)]
pub struct OwnedMemory {
    ptr: NonNull<u8>,
    len: usize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Aligned(Layout),
    Boxed,
    Mapped(crate::pages::Mapping),
}

// SAFETY: `OwnedMemory` uniquely owns its allocation, like a `Box<[u8]>`.
unsafe impl Send for OwnedMemory {}
// SAFETY: shared references expose only `as_slice` (reads) and the raw address; writes need
// `&mut self` or go through the engine's registered-memory contract.
unsafe impl Sync for OwnedMemory {}

/// A length of zero, or a size/alignment the allocator refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot allocate {len} bytes aligned to {align}")]
pub struct AllocError {
    /// Requested length.
    pub len: usize,
    /// Requested alignment.
    pub align: usize,
}

impl OwnedMemory {
    /// Zeroed memory of `len` bytes aligned to `align` (a power of two; 4096 suits DMA
    /// registration). `len` must be at least 1.
    pub fn zeroed(len: usize, align: usize) -> Result<Self, AllocError> {
        let err = AllocError { len, align };
        if len == 0 {
            return Err(err);
        }
        let layout = Layout::from_size_align(len, align).map_err(|_| err.clone())?;
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(err)?;
        Ok(OwnedMemory {
            ptr,
            len,
            kind: Kind::Aligned(layout),
        })
    }

    /// Zeroed memory of `len` bytes (at least 1) on hugepages, as `pages` asks (see
    /// [`HugePages`]): hugetlbfs pages mapped with `MAP_HUGETLB`, or for [`HugePages::Any`]
    /// when none are free, anonymous memory aligned to 2 MiB and advised for transparent
    /// hugepages. [`backing`](Self::backing) says which it got. The mapping covers whole
    /// pages (`len` rounded up); [`len`](Self::len) is `len`. Unmapped on drop.
    ///
    /// Registering hugepage-backed memory pins a page per 2 MiB or 1 GiB instead of one per
    /// 4 KiB, which is most of a large registration's cost.
    ///
    /// # Errors
    ///
    /// [`HugeAllocError`] naming the length and page size, with the OS error (`ENOMEM` when
    /// no hugepages of that size are free) as its source; also for a length of 0.
    pub fn huge(len: usize, pages: HugePages) -> Result<Self, HugeAllocError> {
        let m = crate::pages::map(len, pages)?;
        Ok(OwnedMemory {
            ptr: m.ptr,
            len,
            kind: Kind::Mapped(m),
        })
    }

    /// Zeroed memory of `len` bytes (at least 1) on base pages only: an anonymous mapping
    /// advised `MADV_NOHUGEPAGE`, so transparent hugepages never back it, even where they are
    /// `always` on (as on Debian's kernels). For comparing page sizes, or where hugepages are
    /// unwanted. Unmapped on drop.
    ///
    /// # Errors
    ///
    /// [`HugeAllocError`] naming the length (page size 4096) with the OS error as its source;
    /// also for a length of 0.
    pub fn base_pages(len: usize) -> Result<Self, HugeAllocError> {
        let m = crate::pages::map_base(len)?;
        Ok(OwnedMemory {
            ptr: m.ptr,
            len,
            kind: Kind::Mapped(m),
        })
    }

    /// What backs the memory, as chosen when it was allocated ([`page_info`](crate::page_info)
    /// tells what the kernel did with transparent hugepages).
    pub fn backing(&self) -> Backing {
        match &self.kind {
            Kind::Mapped(m) => m.backing,
            Kind::Aligned(_) | Kind::Boxed => Backing::Base,
        }
    }

    /// Takes ownership of a boxed slice (at least 1 byte).
    pub fn from_box(b: Box<[u8]>) -> Result<Self, AllocError> {
        if b.is_empty() {
            return Err(AllocError { len: 0, align: 1 });
        }
        let len = b.len();
        let raw = Box::into_raw(b) as *mut u8;
        // SAFETY: `Box::into_raw` never returns null.
        let ptr = unsafe { NonNull::new_unchecked(raw) };
        Ok(OwnedMemory {
            ptr,
            len,
            kind: Kind::Boxed,
        })
    }

    /// Takes ownership of a vector's bytes (at least 1 byte).
    pub fn from_vec(v: Vec<u8>) -> Result<Self, AllocError> {
        Self::from_box(v.into_boxed_slice())
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: owned memory has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The bytes (once the memory is no longer registered, nobody else writes them).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialised bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for OwnedMemory {
    fn drop(&mut self) {
        match &self.kind {
            // SAFETY: mapped by `pages::map`, unmapped only here; `self` is the last user.
            Kind::Mapped(m) => unsafe { crate::pages::unmap(m) },
            // SAFETY: allocated by `alloc_zeroed` with this layout.
            Kind::Aligned(layout) => unsafe { alloc::dealloc(self.ptr.as_ptr(), *layout) },
            Kind::Boxed => {
                let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
                // SAFETY: created by `Box::into_raw` of a `Box<[u8]>` of this length.
                drop(unsafe { Box::from_raw(slice) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_boxed() {
        let m = OwnedMemory::zeroed(100, 4096).unwrap();
        assert_eq!(m.addr() % 4096, 0);
        assert!(m.as_slice().iter().all(|&b| b == 0));
        let mut v = OwnedMemory::from_vec(vec![1, 2, 3]).unwrap();
        v.as_mut_slice()[0] = 9;
        assert_eq!(v.as_slice(), &[9, 2, 3]);
        assert!(OwnedMemory::zeroed(0, 8).is_err());
        assert!(OwnedMemory::zeroed(8, 3).is_err());
        assert!(OwnedMemory::from_vec(vec![]).is_err());
        assert_eq!(v.backing(), Backing::Base);
    }

    /// Hugetlbfs pages reserved on this machine (`HugePages_Free` of `/proc/meminfo`).
    fn free_hugepages() -> u64 {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("HugePages_Free:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    #[test]
    fn huge_any_falls_back_to_transparent_pages_and_reads_back() {
        let len = 3 << 20 | 123;
        let mut m = OwnedMemory::huge(len, HugePages::Any).unwrap();
        assert_eq!(m.len(), len);
        assert_eq!(m.addr() % crate::pages::SIZE_2M, 0);
        if free_hugepages() < 2 {
            assert_eq!(m.backing(), Backing::Transparent);
        } else {
            assert_eq!(m.backing(), Backing::Huge(crate::pages::SIZE_2M));
            let info = crate::page_info(m.addr()).unwrap();
            assert_eq!(info.page_size, crate::pages::SIZE_2M);
        }
        assert!(m.as_slice().iter().all(|&b| b == 0));
        m.as_mut_slice()[len - 1] = 7;
        m.as_mut_slice()[0] = 9;
        assert_eq!((m.as_slice()[0], m.as_slice()[len - 1]), (9, 7));
        let addr = m.addr();
        drop(m);
        // Unmapped on drop: no mapping holds the address any more (unless reused meanwhile by
        // another test's mapping, which then starts exactly there).
        if let Ok(info) = crate::page_info(addr) {
            assert!(info.mapping_len > 0);
        }
    }

    #[test]
    fn base_pages_are_never_transparent_hugepages() {
        let mut m = OwnedMemory::base_pages(4 << 20).unwrap();
        assert_eq!(m.backing(), Backing::Base);
        assert_eq!(m.addr() % 4096, 0);
        m.as_mut_slice().fill(3);
        let info = crate::page_info(m.addr()).unwrap();
        assert_eq!(info.page_size, 4096);
        assert_eq!(info.transparent_huge_bytes, 0, "{info:?}");
        assert!(m.as_slice().iter().all(|&b| b == 3));
        assert!(OwnedMemory::base_pages(0).is_err());
    }

    #[test]
    fn explicit_hugetlb_sizes_are_refused_by_name_when_none_are_free() {
        assert_eq!(HugePages::Size1G.page_size(), 1 << 30);
        let e = OwnedMemory::huge(0, HugePages::Any).unwrap_err();
        assert_eq!((e.len, e.source), (0, None));
        if free_hugepages() == 0 {
            let e = OwnedMemory::huge(4 << 20, HugePages::Size2M).unwrap_err();
            assert_eq!((e.len, e.page_size), (4 << 20, 2 << 20));
            assert!(e.source.is_some(), "the OS error is kept");
            assert!(e.to_string().contains("4194304"), "{e}");
            let e = OwnedMemory::huge(1 << 20, HugePages::Size1G).unwrap_err();
            assert_eq!(e.page_size, 1 << 30);
        }
    }
}

//! Buffers the engine owns: registered safely, accessed only through the engine.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

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
        match self.kind {
            // SAFETY: allocated by `alloc_zeroed` with this layout.
            Kind::Aligned(layout) => unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) },
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
    }
}

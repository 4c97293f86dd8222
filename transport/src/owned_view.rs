//! A pinned window on an engine-owned segment: reads and writes without a table lookup per access.

use crate::engine::LocalEntry;
use crate::slab::Pin;
use crate::{SegmentId, TransportError};

/// An engine-owned segment held open for direct access, from
/// [`Engine::owned_view`](crate::Engine::owned_view).
///
/// [`Engine::read_owned`](crate::Engine::read_owned) and
/// [`Engine::write_owned`](crate::Engine::write_owned) open a view for each call. A view held
/// open pins the segment once: each access is a bounds check and the copy, as a C program
/// reading its own registered buffer. [`OwnedView::load`] is the one to poll with for a flag a
/// peer's WRITE sets (as perftest's `write_lat` polls its buffer's last byte): a volatile read,
/// which the compiler never folds out of a loop.
///
/// While a view lives, [`Engine::unregister`](crate::Engine::unregister) refuses the segment
/// ([`TransportError::SegmentBusy`]), as it does while requests use it. Bytes a transfer in
/// flight is changing read as either their old or their new value.
pub struct OwnedView<'a> {
    pin: Pin<'a, LocalEntry>,
    segment: SegmentId,
    base: *mut u8,
}

impl std::fmt::Debug for OwnedView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedView")
            .field("segment", &self.segment)
            .field("len", &self.len())
            .finish()
    }
}

impl<'a> OwnedView<'a> {
    /// A view of `segment`, whose entry `pin` holds pinned.
    ///
    /// # Errors
    ///
    /// [`TransportError::NotOwned`] when the application registered the memory itself.
    pub(crate) fn new(
        pin: Pin<'a, LocalEntry>,
        segment: SegmentId,
    ) -> Result<Self, TransportError> {
        let base = pin
            .owned
            .as_ref()
            .ok_or_else(|| TransportError::NotOwned(segment))?
            .as_mut_ptr();
        Ok(OwnedView { pin, segment, base })
    }

    /// The segment.
    pub fn segment(&self) -> SegmentId {
        self.segment
    }

    /// The segment's length in bytes.
    pub fn len(&self) -> u64 {
        self.pin.len
    }

    /// Whether the segment is empty (never: segments have at least one byte).
    pub fn is_empty(&self) -> bool {
        self.pin.len == 0
    }

    /// The address of `len` bytes at `offset`.
    ///
    /// # Errors
    ///
    /// [`TransportError::OwnedOutOfRange`] when the bytes do not lie inside the segment.
    #[inline]
    fn range(&self, offset: u64, len: usize) -> Result<*mut u8, TransportError> {
        let seg_len = self.pin.len;
        if offset
            .checked_add(len as u64)
            .map_or(true, |end| end > seg_len)
        {
            return Err(TransportError::OwnedOutOfRange {
                segment: self.segment,
                offset,
                len: len as u64,
                seg_len,
            });
        }
        // `offset + len <= seg_len`, the allocation's length: in bounds.
        Ok(self.base.wrapping_add(offset as usize))
    }

    /// The byte at `offset`, read afresh from memory on every call (a volatile read).
    ///
    /// # Errors
    ///
    /// [`TransportError::OwnedOutOfRange`] when `offset` lies past the segment's end.
    #[inline]
    pub fn load(&self, offset: u64) -> Result<u8, TransportError> {
        let p = self.range(offset, 1)?;
        // SAFETY: `p` lies inside the owned allocation (checked), which the pin keeps registered
        // and alive; a volatile read of a `u8` needs no alignment.
        Ok(unsafe { p.read_volatile() })
    }

    /// Copies `out.len()` bytes at `offset` out of the segment.
    ///
    /// # Errors
    ///
    /// [`TransportError::OwnedOutOfRange`] when the bytes do not lie inside the segment.
    #[inline]
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), TransportError> {
        let src = self.range(offset, out.len())?;
        // SAFETY: `src..src+out.len()` lies inside the owned allocation (checked), kept alive by
        // the pin; `out` is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Copies `data` into the segment at `offset`.
    ///
    /// # Errors
    ///
    /// [`TransportError::OwnedOutOfRange`] when the bytes do not lie inside the segment.
    #[inline]
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), TransportError> {
        let dst = self.range(offset, data.len())?;
        // SAFETY: as in `read`, with the roles swapped.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }
}

//! The static-inline functions of `verbs.h` and `efadv.h`, in Rust.
//!
//! Each one forwards to the provider's function pointer exactly as the C
//! inline does; none allocates or locks. Where C would jump through a NULL
//! pointer, functions that return an error code return `EOPNOTSUPP` (or its
//! negative where C returns counts) and the others abort the process with a
//! message naming the op, instead of undefined behaviour.

mod compat;
mod context;
mod cq_ex;
mod efadv_cq;
mod efadv_qp;
mod legacy;
mod wr;

pub use compat::*;
pub use context::*;
pub use cq_ex::*;
pub use efadv_cq::*;
pub use efadv_qp::*;
pub use legacy::*;
pub use wr::*;

/// Aborts with a message naming the provider op that was left NULL.
#[cold]
#[inline(never)]
pub(crate) fn null_op(op: &str) -> ! {
    const PREFIX: &[u8] = b"efa-sys: provider left op NULL: ";
    // SAFETY: writing initialised byte slices to fd 2, then aborting; both
    // calls have no other preconditions.
    unsafe {
        libc::write(2, PREFIX.as_ptr().cast(), PREFIX.len());
        libc::write(2, op.as_ptr().cast(), op.len());
        libc::write(2, b"\n".as_ptr().cast(), 1);
        libc::abort()
    }
}

/// Sets the calling thread's `errno`, as the C inlines do on failure.
#[inline]
pub(crate) fn set_errno(value: core::ffi::c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = value };
}

//! Raw bindings to libibverbs and the EFA direct verbs (`efadv`) of
//! rdma-core, loaded at run time, with the header's static-inline fast path
//! re-implemented in Rust.
//!
//! - Types and constants come from bindgen over rdma-core's
//!   `infiniband/verbs.h` and `infiniband/efadv.h` (see `VERSION`), at the
//!   crate root, enums as plain constants (`IBV_WC_SUCCESS: ibv_wc_status`).
//! - [`pfn`] holds one `unsafe extern "C" fn` type per exported C function.
//! - [`verbs()`] and [`efadv()`] `dlopen` libibverbs and libefa once and
//!   return the [`Verbs`] and [`Efadv`] symbol tables; nothing links against
//!   rdma-core at build time.
//! - The header inlines (`ibv_post_send`, `ibv_poll_cq`, `ibv_wr_*`,
//!   `ibv_start_poll`, `ibv_wc_read_*`, `efadv_wc_read_sgid`, the
//!   `verbs_context` ops, and the `ibv_query_port` / `ibv_reg_mr` macro logic)
//!   are `#[inline] unsafe fn`s of the same names.
#![no_std]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

#[cfg(not(all(
    target_os = "linux",
    target_env = "gnu",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
compile_error!(
    "efa-sys bindings are generated for x86_64 and aarch64 Linux (glibc); extend efa-sys/regen-bindings for this target"
);

#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    missing_docs,
    dead_code,
    clippy::all,
    clippy::pedantic,
    rustdoc::all
)]
#[cfg_attr(target_arch = "x86_64", path = "bindings/x86_64.rs")]
#[cfg_attr(target_arch = "aarch64", path = "bindings/aarch64.rs")]
mod bindings;

pub use bindings::*;

/// One `unsafe extern "C" fn` type alias per C function the headers declare,
/// named after the C symbol; these are the field types of [`Verbs`] and
/// [`Efadv`].
pub mod pfn {
    pub use crate::bindings::pfn::*;
}

mod dl;
mod error;
mod fast;
mod loader;
mod once;

pub use error::{DlErrorText, FixedStr, LibraryName, LoadError};
pub use fast::*;
pub use loader::{efadv, verbs, Efadv, Verbs, LIBEFA, LIBIBVERBS};

#[cfg(test)]
mod tests;

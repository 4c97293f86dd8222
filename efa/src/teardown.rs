//! Teardown results: `ibv_destroy_*`, `ibv_dealloc_*`, `ibv_dereg_mr` and `ibv_close_device` run
//! in `Drop`, which cannot return an error. A failure is counted (see [`teardown_errors`]) and
//! `EBUSY`, which means this crate destroyed an object something still uses, is a bug it asserts
//! against in debug builds.

use std::sync::atomic::{AtomicU64, Ordering};

static ERRORS: AtomicU64 = AtomicU64::new(0);

/// How many teardown calls (destroy, dealloc, deregister, close) failed in this process.
pub fn teardown_errors() -> u64 {
    ERRORS.load(Ordering::Relaxed)
}

/// Records the result of teardown call `call`.
pub(crate) fn check(call: &'static str, rc: i32) {
    if rc != 0 {
        ERRORS.fetch_add(1, Ordering::Relaxed);
        debug_assert_ne!(rc, libc::EBUSY, "{call}: the object is still in use");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted() {
        let before = teardown_errors();
        check("ibv_destroy_ah", 0);
        assert_eq!(teardown_errors(), before);
        check("ibv_destroy_ah", libc::EINVAL);
        assert_eq!(teardown_errors(), before + 1);
    }
}

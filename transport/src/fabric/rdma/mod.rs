//! Pieces shared by the two fabrics over real verbs devices ([`verbs`](super::verbs) and
//! [`efa`](super::efa)): the byte codec of addresses and keys, completion-status mapping,
//! memory registration on every rail, the polling backoff of target-side threads, and the
//! completion-counter gate of CQ polls.

pub(crate) mod backoff;
pub(crate) mod codec;
pub(crate) mod endpoint;
pub(crate) mod events;
pub(crate) mod gate;
pub(crate) mod registry;
pub(crate) mod status;
pub(crate) mod threads;
pub(crate) mod wr;

/// A random-enough 64-bit value without a dependency: time, process id and a stack address
/// through the standard library's randomly keyed hasher.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    let local = 0u8;
    h.write_usize(&local as *const u8 as usize);
    h.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_values_differ() {
        assert_ne!(super::random_u64(), super::random_u64());
    }
}

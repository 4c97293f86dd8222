//! A [`WorkRequest`]'s parts as the verbs API takes them, for both RDMA fabrics.
//!
//! Each work request is validated once, in one vocabulary. The engine checks a request against
//! the fabric's [`Capabilities`](crate::fabric::Capabilities) (operation, length, bounds, keys)
//! at submit and refuses it with a `TransportError`; what remains are the queue pair's device
//! limits, which the `efa` crate checks as the request joins a batch (its `check_wr`, each limit
//! a named [`::efa::Limit`]), and [`post_reason`](super::status::post_reason) turns those
//! refusals into the request's [`FailReason`](crate::FailReason). The fabrics check nothing
//! themselves; the one conversion here that can fail, a length past the verbs API's 32 bits, is
//! refused in the same vocabulary.

use ::efa::{Limit, RemoteAddr, Sge};

use crate::fabric::WorkRequest;

/// The local scatter/gather entry of an RDMA READ or WRITE.
///
/// # Errors
/// [`::efa::Error::Limit`] ([`Limit::RdmaBytes`]) when the length does not fit 32 bits.
pub(crate) fn local_sge(wr: &WorkRequest) -> Result<Sge, ::efa::Error> {
    let len = u32::try_from(wr.len).map_err(|_| ::efa::Error::Limit {
        limit: Limit::RdmaBytes,
        value: wr.len,
        max: u32::MAX.into(),
    })?;
    // The low half of the fabric's local key is the device lkey (the `efa` fabric keeps the
    // rkey in the high half).
    Ok(Sge::new(wr.local_addr, len, wr.local_key as u32))
}

/// The local bytes of an inline WRITE, which the provider copies into the work request as it
/// joins a batch.
///
/// # Safety
/// `wr` comes from the engine: it validated `local_addr..+len` against a registered local
/// segment, which stays registered and mapped while the request is outstanding, and the slice
/// is dropped before the post returns.
pub(crate) unsafe fn local_bytes(wr: &WorkRequest) -> &[u8] {
    // SAFETY: as the caller promises (above); `len` is at most an inline size here.
    unsafe { std::slice::from_raw_parts(wr.local_addr as usize as *const u8, wr.len as usize) }
}

/// The remote side of an RDMA READ or WRITE: the low half of the fabric's remote key is the
/// device rkey (the `efa` fabric keeps its region key in the high half).
pub(crate) fn remote(wr: &WorkRequest) -> RemoteAddr {
    RemoteAddr {
        addr: wr.remote_addr,
        rkey: wr.remote_key as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::rdma::status::post_reason;
    use crate::fabric::WorkOp;
    use crate::FailReason;

    fn wr(len: u64) -> WorkRequest {
        WorkRequest {
            token: 1,
            op: WorkOp::Read,
            rail: 0,
            peer: 0,
            remote_rail: 0,
            local_addr: 0x1000,
            local_key: (7 << 32) | 5,
            remote_addr: 0x9000,
            remote_key: (9 << 32) | 6,
            len,
        }
    }

    #[test]
    fn the_device_keys_are_the_low_halves() {
        let sge = local_sge(&wr(100)).unwrap();
        assert_eq!((sge.addr(), sge.len(), sge.lkey()), (0x1000, 100, 5));
        assert_eq!(
            remote(&wr(100)),
            RemoteAddr {
                addr: 0x9000,
                rkey: 6
            }
        );
    }

    #[test]
    fn lengths_past_32_bits_are_refused_as_the_device_limit() {
        assert_eq!(local_sge(&wr(u32::MAX.into())).unwrap().len(), u32::MAX);
        let e = local_sge(&wr(1 << 32)).unwrap_err();
        assert!(
            matches!(
                e,
                ::efa::Error::Limit {
                    limit: Limit::RdmaBytes,
                    value: 0x1_0000_0000,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(post_reason(&e), FailReason::BadLength);
    }
}

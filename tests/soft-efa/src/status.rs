//! EFA completion statuses (`enum efa_io_comp_status` of rdma-core's `efa_io_defs.h`), reported as
//! `vendor_err`, and the `ibv_wc_status` the provider maps each to.

use efa_sys::*;

/// Success.
pub const OK: u8 = 0;
/// The QP went to the error state or was torn down with the request queued.
pub const FLUSHED: u8 = 1;
/// Internal error of the local QP.
pub const LOCAL_QP_INTERNAL_ERROR: u8 = 2;
/// The operation is not supported.
pub const LOCAL_UNSUPPORTED_OP: u8 = 3;
/// The address handle is not valid.
pub const LOCAL_INVALID_AH: u8 = 4;
/// A local key is not valid for the buffer.
pub const LOCAL_INVALID_LKEY: u8 = 5;
/// A local length is wrong.
pub const LOCAL_BAD_LENGTH: u8 = 6;
/// The remote address or key is not valid.
pub const REMOTE_BAD_ADDRESS: u8 = 7;
/// The remote side aborted the operation.
pub const REMOTE_ABORT: u8 = 8;
/// The destination QP does not exist or is not ready.
pub const REMOTE_BAD_DEST_QPN: u8 = 9;
/// The receiver had no buffer posted, and RNR retries ran out.
pub const REMOTE_RNR: u8 = 10;
/// The receive buffer is too small for the message.
pub const REMOTE_BAD_LENGTH: u8 = 11;
/// The remote side reported a bad status.
pub const REMOTE_BAD_STATUS: u8 = 12;
/// The remote side did not answer in time.
pub const UNRESP_REMOTE: u8 = 13;
/// The target has no address handle for the initiator.
pub const REMOTE_UNKNOWN_PEER: u8 = 14;
/// The remote side cannot be reached.
pub const UNREACH_REMOTE: u8 = 15;

/// The remote side lacks a feature the request needs.
pub const FEATURE_MISMATCH: u8 = 18;

/// The `ibv_wc_status` for an EFA status, as the provider's `to_ibv_status` maps it.
pub fn to_ibv(status: u8) -> ibv_wc_status {
    match status {
        OK => IBV_WC_SUCCESS,
        FLUSHED => IBV_WC_WR_FLUSH_ERR,
        LOCAL_QP_INTERNAL_ERROR | LOCAL_UNSUPPORTED_OP | LOCAL_INVALID_AH => IBV_WC_LOC_QP_OP_ERR,
        LOCAL_INVALID_LKEY => IBV_WC_LOC_PROT_ERR,
        LOCAL_BAD_LENGTH => IBV_WC_LOC_LEN_ERR,
        REMOTE_ABORT => IBV_WC_REM_ABORT_ERR,
        REMOTE_RNR => IBV_WC_RNR_RETRY_EXC_ERR,
        REMOTE_BAD_DEST_QPN => IBV_WC_REM_INV_RD_REQ_ERR,
        REMOTE_BAD_STATUS => IBV_WC_BAD_RESP_ERR,
        REMOTE_BAD_LENGTH => IBV_WC_REM_INV_REQ_ERR,
        UNRESP_REMOTE => IBV_WC_RESP_TIMEOUT_ERR,
        REMOTE_BAD_ADDRESS => IBV_WC_REM_ACCESS_ERR,
        REMOTE_UNKNOWN_PEER => IBV_WC_REM_OP_ERR,
        UNREACH_REMOTE => IBV_WC_RESP_TIMEOUT_ERR,
        FEATURE_MISMATCH => IBV_WC_REM_INV_REQ_ERR,
        _ => IBV_WC_GENERAL_ERR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_a_failure() {
        assert_eq!(to_ibv(OK), IBV_WC_SUCCESS);
        for s in 1..=20u8 {
            assert_ne!(to_ibv(s), IBV_WC_SUCCESS, "status {s}");
        }
        assert_eq!(to_ibv(UNRESP_REMOTE), IBV_WC_RESP_TIMEOUT_ERR);
        assert_eq!(to_ibv(FLUSHED), IBV_WC_WR_FLUSH_ERR);
    }
}

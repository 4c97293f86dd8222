//! Completion status to [`FailReason`], by name.
//!
//! On EFA the provider reports most failures as `IBV_WC_GENERAL_ERR` and the precise reason in
//! `vendor_err`, whose values [`FailReason`] mirrors; on other verbs devices the standard
//! `ibv_wc_status` is the reason and `vendor_err` is device-specific.

use ::efa::{EfaStatus, WcStatus};

use crate::FailReason;

/// The reason for a failed completion of a non-EFA verbs device (`None` on success).
pub(crate) fn verbs_reason(status: WcStatus) -> Option<FailReason> {
    Some(match status {
        WcStatus::Success => return None,
        WcStatus::WrFlushErr => FailReason::Flushed,
        WcStatus::LocLenErr => FailReason::BadLength,
        WcStatus::LocProtErr | WcStatus::LocAccessErr => FailReason::InvalidLkey,
        WcStatus::RemAccessErr => FailReason::RemoteBadAddress,
        // Responder-side length checks (beyond the region or the receive buffer).
        WcStatus::RemInvReqErr => FailReason::RemoteBadLength,
        WcStatus::RemOpErr | WcStatus::RemAbortErr | WcStatus::BadRespErr => {
            FailReason::RemoteAbort
        }
        // The peer stopped acknowledging: dead, rebooted or cut off.
        WcStatus::RetryExcErr | WcStatus::RespTimeoutErr => FailReason::UnresponsiveRemote,
        WcStatus::RnrRetryExcErr => FailReason::RemoteRnr,
        _ => FailReason::Io,
    })
}

/// The reason for a failed completion of an EFA device (`None` on success).
pub(crate) fn efa_reason(status: WcStatus, vendor: Option<EfaStatus>) -> Option<FailReason> {
    if status.is_success() {
        return None;
    }
    match vendor {
        Some(EfaStatus::Ok) | None => Some(verbs_reason(status).unwrap_or(FailReason::Io)),
        Some(v) => Some(FailReason::from_vendor_err(v.raw()).unwrap_or(match v {
            // Codes FailReason has no name of its own for.
            EfaStatus::UnsupportedOp => FailReason::FeatureMismatch,
            EfaStatus::RemoteBadStatus => FailReason::RemoteAbort,
            _ => FailReason::Io,
        })),
    }
}

/// The reason EFA completion `c` failed (`None` on success). Its vendor error is read only then:
/// a successful completion costs no provider call beyond the poll's.
pub(crate) fn efa_failure(c: &::efa::Completion<'_>) -> Option<FailReason> {
    if c.is_success() {
        return None;
    }
    efa_reason(c.status(), c.efa_status())
}

/// The reason for a work request the `efa` crate refused before the device saw it.
pub(crate) fn post_reason(e: &::efa::Error) -> FailReason {
    match e {
        ::efa::Error::Limit { .. } => FailReason::BadLength,
        ::efa::Error::Unsupported { .. } => FailReason::FeatureMismatch,
        ::efa::Error::QpState { .. } => FailReason::Flushed,
        _ => FailReason::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efa_vendor_errors_map_by_name() {
        let g = WcStatus::GeneralErr;
        for (code, name) in [
            (1, "FLUSHED"),
            (4, "INVALID_AH"),
            (5, "INVALID_LKEY"),
            (6, "BAD_LENGTH"),
            (7, "REMOTE_BAD_ADDRESS"),
            (8, "REMOTE_ABORT"),
            (9, "BAD_DEST_QPN"),
            (10, "REMOTE_RNR"),
            (11, "REMOTE_BAD_LENGTH"),
            (13, "UNRESP_REMOTE"),
            (14, "UNKNOWN_PEER"),
            (15, "UNREACH_REMOTE"),
            (18, "FEATURE_MISMATCH"),
        ] {
            let r = efa_reason(g, Some(EfaStatus::from_raw(code))).unwrap();
            assert_eq!(r.name(), name, "vendor_err {code}");
        }
        assert_eq!(
            efa_reason(g, Some(EfaStatus::from_raw(3))),
            Some(FailReason::FeatureMismatch)
        );
        assert_eq!(
            efa_reason(g, Some(EfaStatus::from_raw(99))),
            Some(FailReason::Io)
        );
        assert_eq!(
            efa_reason(WcStatus::Success, Some(EfaStatus::from_raw(7))),
            None
        );
        assert_eq!(
            efa_reason(WcStatus::WrFlushErr, None),
            Some(FailReason::Flushed)
        );
    }

    #[test]
    fn verbs_statuses_map_to_reasons() {
        assert_eq!(verbs_reason(WcStatus::Success), None);
        assert_eq!(
            verbs_reason(WcStatus::RemAccessErr),
            Some(FailReason::RemoteBadAddress)
        );
        assert_eq!(
            verbs_reason(WcStatus::RetryExcErr),
            Some(FailReason::UnresponsiveRemote)
        );
        assert_eq!(
            verbs_reason(WcStatus::WrFlushErr),
            Some(FailReason::Flushed)
        );
        assert_eq!(
            verbs_reason(WcStatus::LocProtErr),
            Some(FailReason::InvalidLkey)
        );
        assert_eq!(verbs_reason(WcStatus::Unknown(77)), Some(FailReason::Io));
    }
}

//! Completion status, opcode and the EFA vendor error, by name.

macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident : $ty:ty { $($(#[$vm:meta])* $var:ident = $val:expr,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $var,)*
            /// A value this crate has no name for.
            Unknown($ty),
        }

        impl $name {
            /// Name the raw value; unknown values are kept.
            pub fn from_raw(v: $ty) -> Self {
                match v {
                    $(x if x == $val => $name::$var,)*
                    other => $name::Unknown(other),
                }
            }

            /// The raw value.
            pub fn raw(self) -> $ty {
                match self {
                    $($name::$var => $val,)*
                    $name::Unknown(v) => v,
                }
            }
        }
    };
}

code_enum! {
    /// `enum ibv_wc_status`: the outcome of a work request.
    WcStatus: u32 {
        /// The operation completed.
        Success = 0,
        /// Local length error (receive buffer too small, or message too long).
        LocLenErr = 1,
        /// Local QP operation error.
        LocQpOpErr = 2,
        /// Local EE context operation error.
        LocEecOpErr = 3,
        /// Local protection error (lkey or access rights).
        LocProtErr = 4,
        /// Flushed because the queue pair entered the error state.
        WrFlushErr = 5,
        /// Memory window bind error.
        MwBindErr = 6,
        /// Bad response.
        BadRespErr = 7,
        /// Local access error.
        LocAccessErr = 8,
        /// Remote invalid request.
        RemInvReqErr = 9,
        /// Remote access error (bad rkey, address or rights).
        RemAccessErr = 10,
        /// Remote operation error.
        RemOpErr = 11,
        /// Transport retry counter exceeded.
        RetryExcErr = 12,
        /// Receiver-not-ready retry counter exceeded.
        RnrRetryExcErr = 13,
        /// Local RDD violation.
        LocRddViolErr = 14,
        /// Remote invalid RD request.
        RemInvRdReqErr = 15,
        /// Remote aborted.
        RemAbortErr = 16,
        /// Invalid EE context number.
        InvEecnErr = 17,
        /// Invalid EE context state.
        InvEecStateErr = 18,
        /// Fatal error.
        FatalErr = 19,
        /// Response timeout.
        RespTimeoutErr = 20,
        /// General error (EFA reports most failures this way; see the vendor error).
        GeneralErr = 21,
        /// Tag matching error.
        TmErr = 22,
        /// Tag matching rendezvous incomplete.
        TmRndvIncomplete = 23,
    }
}

impl WcStatus {
    /// Whether the work request succeeded.
    pub fn is_success(self) -> bool {
        self == WcStatus::Success
    }
}

code_enum! {
    /// `enum ibv_wc_opcode`: what kind of work completed.
    WcOpcode: u32 {
        /// A send (with or without immediate).
        Send = 0,
        /// An RDMA write.
        RdmaWrite = 1,
        /// An RDMA read.
        RdmaRead = 2,
        /// Atomic compare and swap.
        CompSwap = 3,
        /// Atomic fetch and add.
        FetchAdd = 4,
        /// Memory window bind.
        BindMw = 5,
        /// Local invalidate.
        LocalInv = 6,
        /// TCP segmentation offload send.
        Tso = 7,
        /// Flush.
        Flush = 8,
        /// Atomic write.
        AtomicWrite = 9,
        /// A receive.
        Recv = 128,
        /// A receive consumed by an RDMA write with immediate.
        RecvRdmaWithImm = 129,
    }
}

code_enum! {
    /// The EFA completion status carried in `vendor_err` (`enum efa_io_comp_status`).
    EfaStatus: u32 {
        /// Success.
        Ok = 0,
        /// Flushed during QP destroy.
        Flushed = 1,
        /// Internal QP error.
        LocalQpInternalError = 2,
        /// Unsupported operation.
        UnsupportedOp = 3,
        /// Bad address handle.
        InvalidAh = 4,
        /// LKEY not registered or not matching the IOVA.
        InvalidLkey = 5,
        /// Message too long.
        BadLength = 6,
        /// RKEY not registered or not matching the remote IOVA.
        RemoteBadAddress = 7,
        /// Connection reset by the remote side.
        RemoteAbort = 8,
        /// Bad destination QP number (absent or in error state).
        BadDestQpn = 9,
        /// Destination not ready: no receive posted.
        RemoteRnr = 10,
        /// Receiver SGL too short.
        RemoteBadLength = 11,
        /// Unexpected status from the responder.
        RemoteBadStatus = 12,
        /// Remote stopped responding after it had responded.
        UnrespRemote = 13,
        /// The remote has no address handle for us (needed for RDMA).
        UnknownPeer = 14,
        /// Remote never responded.
        UnreachRemote = 15,
        /// Feature mismatch between the two sides.
        FeatureMismatch = 18,
    }
}

/// `enum ibv_qp_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QpState {
    /// Reset.
    Reset,
    /// Initialized: receives may be posted.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Send queue drained.
    Sqd,
    /// Send queue error.
    Sqe,
    /// Error: outstanding work is flushed.
    Err,
    /// Anything else.
    Unknown(u32),
}

impl QpState {
    /// Name the raw value.
    pub fn from_raw(v: u32) -> Self {
        match v {
            0 => QpState::Reset,
            1 => QpState::Init,
            2 => QpState::Rtr,
            3 => QpState::Rts,
            4 => QpState::Sqd,
            5 => QpState::Sqe,
            6 => QpState::Err,
            o => QpState::Unknown(o),
        }
    }

    /// The raw value.
    pub fn raw(self) -> u32 {
        match self {
            QpState::Reset => 0,
            QpState::Init => 1,
            QpState::Rtr => 2,
            QpState::Rts => 3,
            QpState::Sqd => 4,
            QpState::Sqe => 5,
            QpState::Err => 6,
            QpState::Unknown(o) => o,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn efa_names_match_io_defs() {
        assert_eq!(EfaStatus::from_raw(14), EfaStatus::UnknownPeer);
        assert_eq!(EfaStatus::from_raw(10), EfaStatus::RemoteRnr);
        assert_eq!(EfaStatus::from_raw(18), EfaStatus::FeatureMismatch);
        assert_eq!(EfaStatus::from_raw(16), EfaStatus::Unknown(16));
        assert_eq!(
            WcStatus::from_raw(efa_sys::IBV_WC_REM_ACCESS_ERR),
            WcStatus::RemAccessErr
        );
        assert_eq!(
            WcStatus::from_raw(efa_sys::IBV_WC_GENERAL_ERR),
            WcStatus::GeneralErr
        );
        assert_eq!(
            WcOpcode::from_raw(efa_sys::IBV_WC_RECV_RDMA_WITH_IMM),
            WcOpcode::RecvRdmaWithImm
        );
    }

    proptest! {
        #[test]
        fn codes_round_trip(v in any::<u32>()) {
            prop_assert_eq!(WcStatus::from_raw(v).raw(), v);
            prop_assert_eq!(WcOpcode::from_raw(v).raw(), v);
            prop_assert_eq!(EfaStatus::from_raw(v).raw(), v);
        }
    }
}

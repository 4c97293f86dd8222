//! EFA device capabilities from `efadv_query_device`, as a typed attribute set.

use bitflags::bitflags;

bitflags! {
    /// Capability bits of `efadv_device_attr::device_caps`.
    ///
    /// Bits this crate does not know yet are kept (`from_bits_retain`), so a newer device or
    /// library never loses information on its way through.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct EfaCaps: u32 {
        /// RDMA read is supported (SRD).
        const RDMA_READ = 1 << 0;
        /// The RNR retry count can be set at the RTS transition.
        const RNR_RETRY = 1 << 1;
        /// Completions can report the source GID of unknown senders.
        const CQ_WITH_SGID = 1 << 2;
        /// RDMA write (and write with immediate) is supported (SRD).
        const RDMA_WRITE = 1 << 3;
        /// Write-with-immediate may complete without a posted receive.
        const UNSOLICITED_WRITE_RECV = 1 << 4;
        /// CQ rings may live in caller-provided dma-buf memory.
        const CQ_WITH_EXT_MEM_DMABUF = 1 << 5;
        /// Completion counters are supported.
        const COMP_CNTR = 1 << 6;
    }
}

impl EfaCaps {
    /// Bits set that this crate has no name for.
    pub fn unknown_bits(self) -> u32 {
        self.bits() & !Self::all().bits()
    }
}

/// Device limits and capabilities reported by `efadv_query_device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EfaDeviceAttr {
    /// Largest send-queue depth.
    pub max_sq_wr: u32,
    /// Largest receive-queue depth.
    pub max_rq_wr: u32,
    /// Most SGEs in a send work request.
    pub max_sq_sge: u16,
    /// Most SGEs in a receive work request.
    pub max_rq_sge: u16,
    /// Inline bytes with the standard (64-byte) WQE.
    pub inline_buf_size: u16,
    /// Inline bytes with the wide WQE of newer libraries; 0 when the library predates it.
    pub inline_buf_size_ex: u16,
    /// Capability bits.
    pub caps: EfaCaps,
    /// Largest RDMA read or write in bytes; 0 when RDMA is unsupported.
    pub max_rdma_size: u32,
}

impl EfaDeviceAttr {
    /// Convert from the raw struct.
    pub(crate) fn from_raw(raw: &efa_sys::efadv_device_attr) -> Self {
        EfaDeviceAttr {
            max_sq_wr: raw.max_sq_wr,
            max_rq_wr: raw.max_rq_wr,
            max_sq_sge: raw.max_sq_sge,
            max_rq_sge: raw.max_rq_sge,
            inline_buf_size: raw.inline_buf_size,
            // rdma-core 63 and later; older libraries zero these two (then reserved) bytes.
            inline_buf_size_ex: raw.inline_buf_size_ex,
            caps: EfaCaps::from_bits_retain(raw.device_caps),
            max_rdma_size: raw.max_rdma_size,
        }
    }

    /// The largest inline payload any queue pair can be granted.
    pub fn max_inline(&self) -> u32 {
        u32::from(self.inline_buf_size.max(self.inline_buf_size_ex))
    }

    /// `send_ops_flags` an SRD queue pair may request on this device.
    pub fn srd_send_ops(&self) -> u64 {
        let mut ops =
            u64::from(efa_sys::IBV_QP_EX_WITH_SEND | efa_sys::IBV_QP_EX_WITH_SEND_WITH_IMM);
        if self.caps.contains(EfaCaps::RDMA_READ) {
            ops |= u64::from(efa_sys::IBV_QP_EX_WITH_RDMA_READ);
        }
        if self.caps.contains(EfaCaps::RDMA_WRITE) {
            ops |= u64::from(
                efa_sys::IBV_QP_EX_WITH_RDMA_WRITE | efa_sys::IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM,
            );
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(caps: u32, rdma: u32) -> efa_sys::efadv_device_attr {
        // SAFETY: a plain C struct of integers; all-zero is a valid value.
        let mut r: efa_sys::efadv_device_attr = unsafe { std::mem::zeroed() };
        r.device_caps = caps;
        r.max_rdma_size = rdma;
        r.inline_buf_size = 32;
        r
    }

    #[test]
    fn bits_match_efadv_header() {
        assert_eq!(
            EfaCaps::RDMA_READ.bits(),
            efa_sys::EFADV_DEVICE_ATTR_CAPS_RDMA_READ
        );
        assert_eq!(
            EfaCaps::RNR_RETRY.bits(),
            efa_sys::EFADV_DEVICE_ATTR_CAPS_RNR_RETRY
        );
        assert_eq!(
            EfaCaps::CQ_WITH_SGID.bits(),
            efa_sys::EFADV_DEVICE_ATTR_CAPS_CQ_WITH_SGID
        );
        assert_eq!(
            EfaCaps::RDMA_WRITE.bits(),
            efa_sys::EFADV_DEVICE_ATTR_CAPS_RDMA_WRITE
        );
        assert_eq!(
            EfaCaps::UNSOLICITED_WRITE_RECV.bits(),
            efa_sys::EFADV_DEVICE_ATTR_CAPS_UNSOLICITED_WRITE_RECV
        );
    }

    #[test]
    fn rdma_less_device_offers_only_sends() {
        let a = EfaDeviceAttr::from_raw(&raw(EfaCaps::RNR_RETRY.bits(), 0));
        let send = u64::from(efa_sys::IBV_QP_EX_WITH_SEND | efa_sys::IBV_QP_EX_WITH_SEND_WITH_IMM);
        assert_eq!(a.srd_send_ops(), send);
        assert_eq!(a.max_inline(), 32);
    }

    proptest! {
        #[test]
        fn caps_round_trip_keeps_unknown_bits(bits in any::<u32>()) {
            let a = EfaDeviceAttr::from_raw(&raw(bits, 1 << 30));
            prop_assert_eq!(a.caps.bits(), bits);
            prop_assert_eq!(a.caps.unknown_bits(), bits & !0x7f);
            let ops = a.srd_send_ops();
            prop_assert_eq!(ops & u64::from(efa_sys::IBV_QP_EX_WITH_RDMA_READ) != 0, bits & 1 != 0);
            prop_assert_eq!(ops & u64::from(efa_sys::IBV_QP_EX_WITH_RDMA_WRITE) != 0, bits & 8 != 0);
            prop_assert_eq!(
                ops & u64::from(efa_sys::IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM) != 0,
                bits & 8 != 0
            );
        }
    }
}

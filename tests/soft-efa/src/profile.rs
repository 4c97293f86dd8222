//! The EFA generations soft-efa can act as: the attributes each reports through
//! `ibv_query_device(_ex)`, `ibv_query_port` and `efadv_query_device`. The values and their sources
//! are tabulated in the crate's README.

use efa_sys::{
    EFADV_DEVICE_ATTR_CAPS_COMP_CNTR as COMP_CNTR,
    EFADV_DEVICE_ATTR_CAPS_CQ_WITH_SGID as CQ_WITH_SGID, EFADV_DEVICE_ATTR_CAPS_RDMA_READ as READ,
    EFADV_DEVICE_ATTR_CAPS_RDMA_WRITE as WRITE, EFADV_DEVICE_ATTR_CAPS_RNR_RETRY as RNR_RETRY,
    EFADV_DEVICE_ATTR_CAPS_UNSOLICITED_WRITE_RECV as UNSOLICITED,
};

/// One EFA generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// The name used in `SOFT_EFA_DEVICES` / `SOFT_EFA_PROFILE`.
    pub name: &'static str,
    /// The instance types that carry this generation, for humans.
    pub like: &'static str,
    /// PCI vendor part id (`0xefa0`..`0xefa4`, the kernel driver's PCI table).
    pub vendor_part_id: u32,
    /// Hardware version reported by `ibv_query_device`.
    pub hw_ver: u32,
    /// `efadv_device_attr::device_caps` (`EFADV_DEVICE_ATTR_CAPS_*`).
    pub caps: u32,
    /// Whether CQs can be armed for completion events (`ibv_req_notify_cq`).
    pub cq_notifications: bool,
    /// Largest send queue depth (`max_sq_wr`) and receive queue depth (`max_rq_wr`).
    pub max_sq_wr: u32,
    /// See `max_sq_wr`.
    pub max_rq_wr: u32,
    /// Largest SGE count of a send WR and of a receive WR.
    pub max_sq_sge: u16,
    /// See `max_sq_sge`.
    pub max_rq_sge: u16,
    /// Bytes of inline data a 64-byte send WQE carries.
    pub inline_buf_size: u16,
    /// Bytes of inline data the largest WQE carries (`inline_buf_size_ex`, rdma-core 63+).
    pub inline_buf_size_ex: u16,
    /// Largest RDMA READ/WRITE of one work request.
    pub max_rdma_size: u32,
    /// Largest SEND payload (port `max_msg_sz`).
    pub max_msg_sz: u32,
    /// Device-wide limits reported by `ibv_query_device`.
    pub max_qp: u32,
    /// See `max_qp`.
    pub max_cq: u32,
    /// See `max_qp`.
    pub max_cqe: u32,
    /// See `max_qp`.
    pub max_mr: u32,
    /// See `max_qp`.
    pub max_pd: u32,
    /// See `max_qp`.
    pub max_ah: u32,
    /// Largest memory registration.
    pub max_mr_size: u64,
}

const BASE: Profile = Profile {
    name: "",
    like: "",
    vendor_part_id: 0xefa0,
    hw_ver: 0,
    caps: 0,
    cq_notifications: false,
    max_sq_wr: 4096,
    max_rq_wr: 32768,
    max_sq_sge: 2,
    max_rq_sge: 3,
    inline_buf_size: 32,
    inline_buf_size_ex: 32,
    max_rdma_size: 0,
    max_msg_sz: 8928,
    max_qp: 256,
    max_cq: 512,
    max_cqe: 32768,
    max_mr: 262144,
    max_pd: 256,
    max_ah: 1024,
    max_mr_size: 1 << 39,
};

/// Every profile, oldest generation first. The last one is the default.
pub const PROFILES: [Profile; 4] = [
    Profile {
        name: "send",
        like: "efa0: c5n, p3dn, m5n, hpc6a (SEND only)",
        caps: CQ_WITH_SGID,
        ..BASE
    },
    Profile {
        name: "read",
        like: "efa1: p4d, hpc7g, c6gn (RDMA READ)",
        vendor_part_id: 0xefa1,
        caps: READ | RNR_RETRY | CQ_WITH_SGID,
        cq_notifications: true,
        max_rdma_size: 1 << 30,
        ..BASE
    },
    Profile {
        name: "write",
        like: "efa2: p5, trn1 (RDMA READ and WRITE)",
        vendor_part_id: 0xefa2,
        caps: READ | RNR_RETRY | WRITE | UNSOLICITED | CQ_WITH_SGID,
        cq_notifications: true,
        max_rdma_size: 1 << 30,
        ..BASE
    },
    Profile {
        name: "newest",
        like: "efa3/efa4: p5en, p6 (READ, WRITE, 128-byte WQE, completion counters)",
        vendor_part_id: 0xefa3,
        caps: READ | RNR_RETRY | WRITE | UNSOLICITED | CQ_WITH_SGID | COMP_CNTR,
        cq_notifications: true,
        max_rdma_size: 1 << 30,
        inline_buf_size_ex: 80,
        ..BASE
    },
];

impl Profile {
    /// The profile called `name`, or the generation name `efa0`..`efa3`.
    pub fn by_name(name: &str) -> Option<&'static Profile> {
        PROFILES
            .iter()
            .find(|p| p.name == name || format!("efa{:x}", p.vendor_part_id & 0xf) == name)
    }

    /// The profile a device gets when nothing is configured.
    pub fn newest() -> &'static Profile {
        &PROFILES[PROFILES.len() - 1]
    }

    /// Whether the device has all of `caps`.
    pub fn has(&self, caps: u32) -> bool {
        self.caps & caps == caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_generations_resolve() {
        assert_eq!(Profile::by_name("send").unwrap().vendor_part_id, 0xefa0);
        assert_eq!(Profile::by_name("efa2").unwrap().name, "write");
        assert!(Profile::by_name("efa9").is_none());
        assert!(Profile::newest().has(WRITE | READ));
        assert!(!Profile::by_name("send").unwrap().has(READ));
    }
}

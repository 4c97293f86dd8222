//! Decisions of the `efa` fabric that need no device, so they are tested on any host: what the
//! devices' capabilities allow (and what the fabric refuses up front), the memory rights a
//! registration may ask for, and which path ([`path`]) carries each work request.
//!
//! # Devices without RDMA READ or WRITE
//!
//! EFA generations differ: the first has SEND only, the second adds RDMA READ, the third RDMA
//! WRITE. Where a rail pair (this rail and the peer's rail, whose capabilities travel in its
//! address) cannot do an operation in hardware, the fabric carries it over SEND/RECV with the
//! two-sided protocol ([`proto`](super::proto)) instead ([`TwoSided::Fallback`], the default),
//! so READ and WRITE work on every generation; [`path`] decides per work request.
//! [`TwoSided::Never`] restores hardware-only behaviour (an operation the devices lack is
//! refused at submit with `Unsupported`), and [`WritePolicy::Require`] refuses to start
//! without RDMA WRITE on every rail. [`TwoSided::Always`] carries everything over SEND/RECV,
//! to measure the protocol against RDMA on the same devices.

use ::efa::{EfaCaps, EfaDeviceAttr};

use crate::fabric::Capabilities;
use crate::{Access, FabricError};

/// What to do when a device lacks RDMA WRITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WritePolicy {
    /// Start without WRITE (`supports_write: false`); READ and notifications still work.
    #[default]
    IfAvailable,
    /// Refuse to start unless every rail can RDMA-write.
    Require,
}

/// When READ and WRITE travel over SEND/RECV instead of RDMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TwoSided {
    /// Where the local or the remote device lacks the RDMA operation.
    #[default]
    Fallback,
    /// Never: operations the devices lack are refused.
    Never,
    /// Always, even where RDMA would do (for measurements and tests).
    Always,
}

/// How one work request travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// RDMA READ or WRITE, or a notification SEND.
    Hardware,
    /// The two-sided protocol.
    TwoSided,
}

/// The path of a READ (`write: false`) or WRITE between a local rail with RDMA bits `local`
/// and a remote rail with `remote` ([`addr::RDMA_READ`](super::addr::RDMA_READ) | ...).
pub fn path(write: bool, local: u8, remote: u8, mode: TwoSided) -> Path {
    let bit = if write {
        super::addr::RDMA_WRITE
    } else {
        super::addr::RDMA_READ
    };
    match mode {
        TwoSided::Always => Path::TwoSided,
        TwoSided::Fallback if local & remote & bit == 0 => Path::TwoSided,
        _ => Path::Hardware,
    }
}

/// What one rail can do, from `efadv_query_device` and the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RailCaps {
    /// The device's name, for messages.
    pub device: String,
    /// RDMA READ (`EFADV_DEVICE_ATTR_CAPS_RDMA_READ`).
    pub read: bool,
    /// RDMA WRITE (`EFADV_DEVICE_ATTR_CAPS_RDMA_WRITE`).
    pub write: bool,
    /// `max_rdma_size`.
    pub max_rdma: u64,
    /// Port `max_msg_sz` (largest SEND).
    pub max_msg: u64,
    /// `max_sq_wr`.
    pub max_sq_wr: u32,
    /// The device retries receiver-not-ready answers (`EFADV_DEVICE_ATTR_CAPS_RNR_RETRY`).
    pub rnr_retry: bool,
}

impl RailCaps {
    /// The capabilities of a device from its efadv attributes and port `max_msg_sz`.
    pub fn from_device(device: &str, attr: &EfaDeviceAttr, max_msg: u32) -> RailCaps {
        RailCaps {
            device: device.to_owned(),
            read: attr.caps.contains(EfaCaps::RDMA_READ) && attr.max_rdma_size > 0,
            write: attr.caps.contains(EfaCaps::RDMA_WRITE) && attr.max_rdma_size > 0,
            max_rdma: attr.max_rdma_size.into(),
            max_msg: max_msg.into(),
            max_sq_wr: attr.max_sq_wr,
            rnr_retry: attr.caps.contains(EfaCaps::RNR_RETRY),
        }
    }

    /// How this rail carries READ (`write: false`) or WRITE towards a peer whose devices have
    /// every RDMA operation, under `mode`.
    pub fn path_to_full_peer(&self, write: bool, mode: TwoSided) -> Path {
        path(write, self.rdma_bits(), u8::MAX, mode)
    }

    /// The rail's RDMA bits, as published in its address.
    pub fn rdma_bits(&self) -> u8 {
        let mut b = 0;
        if self.read {
            b |= super::addr::RDMA_READ;
        }
        if self.write {
            b |= super::addr::RDMA_WRITE;
        }
        b
    }
}

/// The fabric's capabilities over all rails (an operation is offered when every rail has it),
/// or why it cannot start.
pub fn decide(
    rails: &[RailCaps],
    queue_depth: u32,
    policy: WritePolicy,
    mode: TwoSided,
) -> Result<Capabilities, FabricError> {
    if rails.is_empty() || rails.len() > crate::fabric::MAX_RAILS {
        return Err(FabricError::BadRail {
            rail: rails.len() as u16,
            rails: crate::fabric::MAX_RAILS as u16,
        });
    }
    if let (WritePolicy::Require, Some(r)) = (policy, rails.iter().find(|r| !r.write)) {
        return Err(FabricError::DeviceUnfit {
            fabric: "efa",
            device: r.device.clone(),
            reason: "lacks RDMA WRITE (EFADV_DEVICE_ATTR_CAPS_RDMA_WRITE; needs a newer device \
                     or rdma-core 52+), and WritePolicy::Require was asked"
                .into(),
        });
    }
    if queue_depth == 0 {
        return Err(FabricError::BadConfig {
            fabric: "efa",
            field: "queue_depth",
            value: "0".into(),
            expected: "at least 1".into(),
        });
    }
    let hw_read = rails.iter().all(|r| r.read);
    let hw_write = rails.iter().all(|r| r.write);
    let two_sided = mode != TwoSided::Never;
    let max_rdma = rails.iter().map(|r| r.max_rdma).min().unwrap_or(0);
    // The two-sided protocol cuts an operation into messages itself: no limit of its own.
    let max_transfer_size = match (hw_read || hw_write, two_sided) {
        (true, _) => max_rdma.max(1),
        (false, true) => TWO_SIDED_MAX,
        (false, false) => 1,
    };
    Ok(Capabilities {
        rails: rails.len() as u16,
        max_transfer_size,
        max_message_size: rails.iter().map(|r| r.max_msg).min().unwrap_or(0),
        queue_depth: rails
            .iter()
            .map(|r| r.max_sq_wr)
            .min()
            .unwrap_or(0)
            .min(queue_depth),
        supports_read: hw_read || two_sided,
        supports_write: hw_write || two_sided,
        // A zero-length SEND with immediate: needs no RDMA capability.
        supports_notify: true,
        // One WRITE with immediate where both rails take RDMA WRITE (the target's receive
        // completes once the bytes are placed); elsewhere the two-sided protocol sends the
        // WRITE, then the notification once every chunk is acknowledged
        // (`twosided::Kind::WriteNotify`). Either way, one work request to the engine.
        supports_write_notify: hw_write || two_sided,
    })
}

/// Largest operation when no rail has RDMA (the two-sided protocol has no limit of its own;
/// this matches EFA's `max_rdma_size`).
pub const TWO_SIDED_MAX: u64 = 1 << 30;

/// The verbs rights to register a segment with: what peers may do, minus what the devices
/// cannot do in hardware (the `efa` crate refuses remote-write rights on a device without RDMA
/// WRITE). The two-sided protocol needs no device rights: its target checks the segment's
/// rights itself.
pub fn mr_access(access: Access, rails: &[RailCaps]) -> ::efa::Access {
    let mut a = ::efa::Access::LOCAL_WRITE;
    if access.can_read() && rails.iter().all(|r| r.read) {
        a |= ::efa::Access::REMOTE_READ;
    }
    if access.can_write() && rails.iter().all(|r| r.write) {
        a |= ::efa::Access::REMOTE_WRITE;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rail(read: bool, write: bool) -> RailCaps {
        RailCaps {
            device: "rdmap0s6".into(),
            read,
            write,
            max_rdma: 1 << 30,
            max_msg: 8928,
            max_sq_wr: 512,
            rnr_retry: true,
        }
    }

    fn attr(caps: EfaCaps, rdma: u32) -> EfaDeviceAttr {
        EfaDeviceAttr {
            max_sq_wr: 512,
            max_rq_wr: 32768,
            max_sq_sge: 2,
            max_rq_sge: 3,
            inline_buf_size: 32,
            inline_buf_size_ex: 0,
            caps,
            max_rdma_size: rdma,
        }
    }

    #[test]
    fn capability_bits_drive_read_and_write() {
        let both = RailCaps::from_device(
            "d",
            &attr(EfaCaps::RDMA_READ | EfaCaps::RDMA_WRITE, 1 << 30),
            8928,
        );
        assert!(both.read && both.write);
        let read_only = RailCaps::from_device("d", &attr(EfaCaps::RDMA_READ, 1 << 30), 8928);
        assert!(read_only.read && !read_only.write);
        // RDMA bits without an RDMA size (a device reporting nothing usable) offer nothing.
        let none = RailCaps::from_device(
            "d",
            &attr(EfaCaps::RDMA_READ | EfaCaps::RDMA_WRITE, 0),
            8928,
        );
        assert!(!none.read && !none.write);
    }

    use TwoSided::{Always, Fallback, Never};

    #[test]
    fn missing_write_is_carried_refused_or_reported() {
        let mixed = [rail(true, true), rail(true, false)];
        let caps = decide(&mixed, 256, WritePolicy::IfAvailable, Never).unwrap();
        assert!(caps.supports_read && !caps.supports_write && caps.supports_notify);
        let carried = decide(&mixed, 256, WritePolicy::IfAvailable, Fallback).unwrap();
        assert!(carried.supports_read && carried.supports_write);
        assert_eq!(carried.max_transfer_size, 1 << 30);
        let send_only = decide(
            &[rail(false, false)],
            256,
            WritePolicy::IfAvailable,
            Fallback,
        );
        let send_only = send_only.unwrap();
        assert!(send_only.supports_read && send_only.supports_write);
        assert_eq!(send_only.max_transfer_size, TWO_SIDED_MAX);
        let none = decide(&[rail(false, false)], 256, WritePolicy::IfAvailable, Never).unwrap();
        assert!(!none.supports_read && !none.supports_write && none.supports_notify);
        assert_eq!(caps.queue_depth, 256);
        assert_eq!(caps.max_message_size, 8928);
        let e = decide(&[rail(true, false)], 256, WritePolicy::Require, Fallback).unwrap_err();
        assert!(
            matches!(&e, FabricError::DeviceUnfit { device, reason, .. }
                if device == "rdmap0s6" && reason.contains("lacks RDMA WRITE")),
            "{e}"
        );
        let all = decide(&[rail(true, true)], 4096, WritePolicy::Require, Fallback).unwrap();
        assert!(all.supports_write);
        assert_eq!(all.queue_depth, 512, "capped by max_sq_wr");
        assert!(decide(&[], 256, WritePolicy::IfAvailable, Fallback).is_err());
    }

    #[test]
    fn each_rail_pair_picks_rdma_or_two_sided() {
        use crate::fabric::efa::addr::{RDMA_READ as R, RDMA_WRITE as W};
        assert_eq!(path(true, R | W, R | W, Fallback), Path::Hardware);
        assert_eq!(
            path(true, R | W, R, Fallback),
            Path::TwoSided,
            "peer lacks WRITE"
        );
        assert_eq!(
            path(true, R, R | W, Fallback),
            Path::TwoSided,
            "we lack WRITE"
        );
        assert_eq!(path(false, R, R, Fallback), Path::Hardware);
        assert_eq!(path(false, 0, R | W, Fallback), Path::TwoSided);
        assert_eq!(path(false, R, R, Always), Path::TwoSided);
        assert_eq!(
            path(true, 0, 0, Never),
            Path::Hardware,
            "refused at submit (the engine checks the capabilities)"
        );
        assert_eq!(rail(true, false).rdma_bits(), R);
        assert_eq!(rail(true, true).rdma_bits(), R | W);
    }

    #[test]
    fn registration_rights_follow_capabilities() {
        let ro = [rail(true, false)];
        let a = mr_access(Access::REMOTE_READ_WRITE, &ro);
        assert!(a.contains(::efa::Access::REMOTE_READ) && !a.contains(::efa::Access::REMOTE_WRITE));
        let rw = [rail(true, true)];
        assert_eq!(
            mr_access(Access::REMOTE_WRITE, &rw),
            ::efa::Access::LOCAL_WRITE | ::efa::Access::REMOTE_WRITE
        );
        assert_eq!(mr_access(Access::NONE, &rw), ::efa::Access::LOCAL_WRITE);
    }
}

//! Decisions of the `efa` fabric that need no device, so they are tested on any host: what the
//! devices' capabilities allow (and what the fabric refuses up front), the memory rights a
//! registration may ask for, and which SRD work request carries each [`WorkRequest`].
//!
//! # RDMA write on devices without it
//!
//! Older EFA devices (and rdma-core before 52) have RDMA READ but no RDMA WRITE. The fabric then
//! reports `supports_write: false`, so the engine refuses WRITE and WRITE_WITH_NOTIFY at submit
//! with `Unsupported { what: "WRITE" }`; with [`WritePolicy::Require`] the fabric refuses to
//! start at all, naming the device. It does not emulate writes: a faithful emulation (a request
//! message answered by a target-side RDMA READ) needs target CPU work and its own completion
//! protocol, and an application that needs writes is better told at start-up. The usual pattern
//! on such devices is the pull model: the receiver READs.

use ::efa::{EfaCaps, EfaDeviceAttr};

use crate::fabric::{Capabilities, WorkOp, WorkRequest};
use crate::{Access, FabricError, FailReason};

/// What to do when a device lacks RDMA WRITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WritePolicy {
    /// Start without WRITE (`supports_write: false`); READ and notifications still work.
    #[default]
    IfAvailable,
    /// Refuse to start unless every rail can RDMA-write.
    Require,
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
        }
    }
}

/// The fabric's capabilities over all rails (an operation is offered when every rail has it),
/// or why it cannot start.
pub fn decide(
    rails: &[RailCaps],
    queue_depth: u32,
    policy: WritePolicy,
) -> Result<Capabilities, FabricError> {
    if rails.is_empty() || rails.len() > crate::fabric::MAX_RAILS {
        return Err(FabricError::BadRail {
            rail: rails.len() as u16,
            rails: crate::fabric::MAX_RAILS as u16,
        });
    }
    if let (WritePolicy::Require, Some(r)) = (policy, rails.iter().find(|r| !r.write)) {
        return Err(FabricError::Io(format!(
            "efa: {} lacks RDMA WRITE (EFADV_DEVICE_ATTR_CAPS_RDMA_WRITE; needs a newer device \
             or rdma-core 52+), and WritePolicy::Require was asked",
            r.device
        )));
    }
    if queue_depth == 0 {
        return Err(FabricError::Io("efa: queue_depth 0".into()));
    }
    let read = rails.iter().all(|r| r.read);
    let write = rails.iter().all(|r| r.write);
    let max_rdma = rails.iter().map(|r| r.max_rdma).min().unwrap_or(0);
    Ok(Capabilities {
        rails: rails.len() as u16,
        max_transfer_size: if read || write { max_rdma.max(1) } else { 1 },
        max_message_size: rails.iter().map(|r| r.max_msg).min().unwrap_or(0),
        queue_depth: rails
            .iter()
            .map(|r| r.max_sq_wr)
            .min()
            .unwrap_or(0)
            .min(queue_depth),
        supports_read: read,
        supports_write: write,
        // A zero-length SEND with immediate: needs no RDMA capability.
        supports_notify: true,
    })
}

/// The verbs rights to register a segment with: what peers may do, minus what the devices
/// cannot do (the `efa` crate refuses remote-write rights on a device without RDMA WRITE; such
/// writes are refused at submit anyway).
pub fn mr_access(access: Access, caps: &Capabilities) -> ::efa::Access {
    let mut a = ::efa::Access::LOCAL_WRITE;
    if access.can_read() && caps.supports_read {
        a |= ::efa::Access::REMOTE_READ;
    }
    if access.can_write() && caps.supports_write {
        a |= ::efa::Access::REMOTE_WRITE;
    }
    a
}

/// One SRD work request, before it meets a QP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrdWr {
    /// RDMA READ of `len` bytes from `(remote_addr, rkey)` into `(local_addr, lkey)`.
    Read {
        /// Local address.
        local_addr: u64,
        /// Local key.
        lkey: u32,
        /// Length.
        len: u32,
        /// Remote address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// RDMA WRITE, same fields.
    Write {
        /// Local address.
        local_addr: u64,
        /// Local key.
        lkey: u32,
        /// Length.
        len: u32,
        /// Remote address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// Zero-length SEND with the tag as immediate data.
    Notify {
        /// The tag.
        tag: u32,
    },
}

/// The SRD work request for `wr`, or the reason it completes with an error without reaching the
/// device.
pub fn plan(wr: &WorkRequest, caps: &Capabilities) -> Result<SrdWr, FailReason> {
    let rdma = |write: bool| {
        let allowed = if write {
            caps.supports_write
        } else {
            caps.supports_read
        };
        if !allowed {
            return Err(FailReason::FeatureMismatch);
        }
        if wr.len == 0 || wr.len > caps.max_transfer_size {
            return Err(FailReason::BadLength);
        }
        let len = u32::try_from(wr.len).map_err(|_| FailReason::BadLength)?;
        let lkey = u32::try_from(wr.local_key).map_err(|_| FailReason::InvalidLkey)?;
        let rkey = u32::try_from(wr.remote_key).map_err(|_| FailReason::RemoteBadAddress)?;
        Ok((wr.local_addr, lkey, len, wr.remote_addr, rkey))
    };
    match wr.op {
        WorkOp::Read => rdma(false).map(|(local_addr, lkey, len, remote_addr, rkey)| SrdWr::Read {
            local_addr,
            lkey,
            len,
            remote_addr,
            rkey,
        }),
        WorkOp::Write => {
            rdma(true).map(|(local_addr, lkey, len, remote_addr, rkey)| SrdWr::Write {
                local_addr,
                lkey,
                len,
                remote_addr,
                rkey,
            })
        }
        WorkOp::Notify { tag } => {
            if wr.len > caps.max_message_size {
                return Err(FailReason::BadLength);
            }
            Ok(SrdWr::Notify { tag })
        }
    }
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

    #[test]
    fn missing_write_is_refused_or_reported() {
        let caps = decide(
            &[rail(true, true), rail(true, false)],
            256,
            WritePolicy::IfAvailable,
        )
        .unwrap();
        assert!(caps.supports_read && !caps.supports_write && caps.supports_notify);
        assert_eq!(caps.queue_depth, 256);
        assert_eq!(caps.max_message_size, 8928);
        let e = decide(&[rail(true, false)], 256, WritePolicy::Require).unwrap_err();
        assert!(e.to_string().contains("rdmap0s6 lacks RDMA WRITE"), "{e}");
        let all = decide(&[rail(true, true)], 4096, WritePolicy::Require).unwrap();
        assert!(all.supports_write);
        assert_eq!(all.queue_depth, 512, "capped by max_sq_wr");
        assert!(decide(&[], 256, WritePolicy::IfAvailable).is_err());
    }

    #[test]
    fn registration_rights_follow_capabilities() {
        let ro = decide(&[rail(true, false)], 256, WritePolicy::IfAvailable).unwrap();
        let a = mr_access(Access::REMOTE_READ_WRITE, &ro);
        assert!(a.contains(::efa::Access::REMOTE_READ) && !a.contains(::efa::Access::REMOTE_WRITE));
        let rw = decide(&[rail(true, true)], 256, WritePolicy::IfAvailable).unwrap();
        assert_eq!(
            mr_access(Access::REMOTE_WRITE, &rw),
            ::efa::Access::LOCAL_WRITE | ::efa::Access::REMOTE_WRITE
        );
        assert_eq!(mr_access(Access::NONE, &rw), ::efa::Access::LOCAL_WRITE);
    }

    fn wr(op: WorkOp, len: u64) -> WorkRequest {
        WorkRequest {
            token: 1,
            op,
            rail: 0,
            peer: 0,
            remote_rail: 0,
            local_addr: 0x1000,
            local_key: 5,
            remote_addr: 0x9000,
            remote_key: 6,
            len,
        }
    }

    #[test]
    fn work_requests_map_to_srd_operations() {
        let rw = decide(&[rail(true, true)], 256, WritePolicy::IfAvailable).unwrap();
        assert_eq!(
            plan(&wr(WorkOp::Read, 100), &rw),
            Ok(SrdWr::Read {
                local_addr: 0x1000,
                lkey: 5,
                len: 100,
                remote_addr: 0x9000,
                rkey: 6
            })
        );
        assert!(
            matches!(plan(&wr(WorkOp::Write, 1 << 30), &rw), Ok(SrdWr::Write { len, .. }) if len == 1 << 30)
        );
        assert_eq!(
            plan(&wr(WorkOp::Write, (1 << 30) + 1), &rw),
            Err(FailReason::BadLength)
        );
        assert_eq!(
            plan(&wr(WorkOp::Notify { tag: 9 }, 0), &rw),
            Ok(SrdWr::Notify { tag: 9 })
        );
        assert_eq!(
            plan(&wr(WorkOp::Notify { tag: 9 }, 9000), &rw),
            Err(FailReason::BadLength)
        );
        let mut big_key = wr(WorkOp::Read, 8);
        big_key.local_key = 1 << 32;
        assert_eq!(plan(&big_key, &rw), Err(FailReason::InvalidLkey));
        let ro = decide(&[rail(true, false)], 256, WritePolicy::IfAvailable).unwrap();
        assert_eq!(
            plan(&wr(WorkOp::Write, 8), &ro),
            Err(FailReason::FeatureMismatch)
        );
        assert!(plan(&wr(WorkOp::Read, 8), &ro).is_ok());
    }
}

//! Memory registration on every rail: one `ibv_mr` per rail per region, kept until
//! deregistration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use ::efa::{Mr, Pd};

use super::codec::encode_rkey;
use crate::fabric::{MemoryRegion, Registration};
use crate::{Access, FabricError};

/// The verbs access flags for a segment with remote rights `access`. Local write is always
/// granted: RDMA READ results and receives land in local memory.
pub(crate) fn mr_access(access: Access) -> ::efa::Access {
    let mut a = ::efa::Access::LOCAL_WRITE;
    if access.can_read() {
        a |= ::efa::Access::REMOTE_READ;
    }
    if access.can_write() {
        a |= ::efa::Access::REMOTE_WRITE;
    }
    a
}

/// Registrations of one fabric instance, by handle, on the PDs of its rails.
#[derive(Debug)]
pub(crate) struct MrRegistry {
    /// One PD per rail.
    pds: Vec<Arc<Pd>>,
    /// Most registrations at a time.
    max_regions: usize,
    inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    next: u64,
    regions: HashMap<u64, Vec<Mr<'static>>>,
}

impl MrRegistry {
    /// A registry over `pds` (one per rail) holding up to `max_regions` registrations.
    pub(crate) fn new(pds: Vec<Arc<Pd>>, max_regions: usize) -> Self {
        MrRegistry {
            pds,
            max_regions,
            inner: Mutex::default(),
        }
    }

    /// Registers `region` on every rail's PD.
    ///
    /// # Safety
    ///
    /// As [`Fabric::register`](crate::fabric::Fabric::register): the memory stays valid until
    /// [`deregister`](Self::deregister) returns.
    pub(crate) unsafe fn register(
        &self,
        region: MemoryRegion,
    ) -> Result<Registration, FabricError> {
        // SAFETY: forwarded from the caller.
        unsafe { self.register_with(region, mr_access(region.access)) }
    }

    /// As [`register`](Self::register), with the verbs rights given.
    ///
    /// # Safety
    ///
    /// As [`register`](Self::register).
    pub(crate) unsafe fn register_with(
        &self,
        region: MemoryRegion,
        access: ::efa::Access,
    ) -> Result<Registration, FabricError> {
        let len =
            usize::try_from(region.len)
                .ok()
                .filter(|&l| l > 0)
                .ok_or(FabricError::BadRegion {
                    fabric: "rdma",
                    addr: region.addr,
                    len: region.len,
                    reason: "the length is 0 or beyond the address space",
                })?;
        if region.addr == 0 {
            return Err(FabricError::BadRegion {
                fabric: "rdma",
                addr: 0,
                len: region.len,
                reason: "the address is 0",
            });
        }
        let mut mrs = Vec::with_capacity(self.pds.len());
        for (rail, pd) in self.pds.iter().enumerate() {
            // SAFETY: the caller keeps the memory valid until deregistration, which drops these
            // regions (and so deregisters them) before it returns.
            let mr = unsafe { Mr::register_raw(pd, region.addr as *mut u8, len, access) }.map_err(
                |e| {
                    FabricError::device(
                        "rdma",
                        format_args!("rail {rail}: register {len} bytes at {:#x}", region.addr),
                        e,
                    )
                },
            )?;
            mrs.push(mr);
        }
        let registration = Registration {
            handle: 0,
            local_keys: mrs.iter().map(|m| u64::from(m.lkey())).collect(),
            remote_keys: mrs.iter().map(|m| encode_rkey(m.rkey())).collect(),
        };
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if g.regions.len() >= self.max_regions {
            return Err(FabricError::Exhausted("memory regions"));
        }
        g.next += 1;
        let handle = g.next;
        g.regions.insert(handle, mrs);
        Ok(Registration {
            handle,
            ..registration
        })
    }

    /// Deregisters the regions of `handle` on every rail.
    pub(crate) fn deregister(&self, handle: u64) -> Result<(), FabricError> {
        let mrs = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .regions
            .remove(&handle);
        match mrs {
            Some(m) => {
                drop(m);
                Ok(())
            }
            None => Err(FabricError::UnknownRegistration {
                fabric: "rdma",
                handle,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_always_has_local_write() {
        assert_eq!(mr_access(Access::NONE), ::efa::Access::LOCAL_WRITE);
        assert_eq!(
            mr_access(Access::REMOTE_READ_WRITE),
            ::efa::Access::LOCAL_WRITE | ::efa::Access::REMOTE_READ | ::efa::Access::REMOTE_WRITE
        );
        assert!(!mr_access(Access::REMOTE_READ).contains(::efa::Access::REMOTE_WRITE));
    }
}

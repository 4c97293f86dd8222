//! Memory registration on every rail: one `ibv_mr` per rail per region, kept until
//! deregistration.
//!
//! # Large regions
//!
//! `ibv_reg_mr` of a large region is dominated by the kernel pinning its pages, page by page,
//! on the calling thread. Each rail needs its own `ibv_mr` of the whole region (one PD per
//! device), so a region of at least [`PARALLEL_MIN_LEN`] on more than one rail is registered on
//! its rails at once, one scoped thread per rail: the wall time is about one rail's instead of
//! the sum over rails.
//!
//! One region is never split into several `ibv_mr`s (chunks registered in parallel on one
//! rail): a work request's SGE must then lie inside one chunk, so the hot path would have to
//! split slices at chunk boundaries and look up the chunk's key per slice. The work that
//! chunking parallelises (pinning) is the kernel's, and with hugepage-backed memory it is
//! already 512 (2 MiB) or 262,144 (1 GiB) times smaller; see `OwnedMemory::huge`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use ::efa::{Mr, Pd};

use super::codec::encode_rkey;
use crate::fabric::{MemoryRegion, Registration};
use crate::topology::RailSet;
use crate::{Access, FabricError};

/// The smallest region registered on its rails in parallel (one thread per rail). Below it,
/// thread start-up costs about as much as the registration saves.
pub(crate) const PARALLEL_MIN_LEN: usize = 64 << 20;

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

    /// Every rail of the registry.
    pub(crate) fn all_rails(&self) -> RailSet {
        RailSet::all(self.pds.len() as u16)
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
        unsafe { self.register_with(region, mr_access(region.access), &self.all_rails()) }
    }

    /// Registers `region` with the verbs rights `access` on the PDs of `rails` (rails out of
    /// range are ignored). The registration has an entry per rail of the registry: a rail left
    /// out has local key 0 and an empty remote key. All or nothing: when one rail fails, the
    /// rails that succeeded are deregistered and the first failure (lowest rail) is returned.
    ///
    /// # Safety
    ///
    /// As [`register`](Self::register).
    pub(crate) unsafe fn register_with(
        &self,
        region: MemoryRegion,
        access: ::efa::Access,
        rails: &RailSet,
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
        let chosen: Vec<(usize, &Arc<Pd>)> = self
            .pds
            .iter()
            .enumerate()
            .filter(|(r, _)| rails.as_slice().contains(&(*r as u16)))
            .collect();
        if chosen.is_empty() {
            return Err(FabricError::BadRegion {
                fabric: "rdma",
                addr: region.addr,
                len: region.len,
                reason: "no rail of this fabric was asked for",
            });
        }
        let register_one = |rail: usize, pd: &Arc<Pd>| {
            // SAFETY: the caller keeps the memory valid until deregistration, which drops these
            // regions (and so deregisters them) before it returns.
            unsafe { Mr::register_raw(pd, region.addr as *mut u8, len, access) }.map_err(|e| {
                FabricError::device(
                    "rdma",
                    format_args!("rail {rail}: register {len} bytes at {:#x}", region.addr),
                    e,
                )
            })
        };
        let results: Vec<Result<Mr<'static>, FabricError>> =
            if len >= PARALLEL_MIN_LEN && chosen.len() > 1 {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = chosen
                        .iter()
                        .map(|&(rail, pd)| {
                            let spawned = std::thread::Builder::new()
                                .name(format!("reg-rail{rail}"))
                                .spawn_scoped(scope, move || register_one(rail, pd));
                            (rail, pd, spawned)
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|(rail, pd, spawned)| match spawned {
                            // A panic in `ibv_reg_mr`'s wrapper is a bug, not a failure to
                            // report: passed on, after the other rails' regions are dropped.
                            Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                            // No thread to be had: register on this one.
                            Err(_) => register_one(rail, pd),
                        })
                        .collect()
                })
            } else {
                chosen
                    .iter()
                    .map(|&(rail, pd)| register_one(rail, pd))
                    .collect()
            };
        let mut mrs = Vec::with_capacity(results.len());
        let mut first_error = None;
        for r in results {
            match r {
                Ok(mr) => mrs.push(mr),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            // Dropping the regions that succeeded deregisters them.
            drop(mrs);
            return Err(e);
        }
        let rails_n = self.pds.len();
        let mut local_keys = vec![0u64; rails_n];
        let mut remote_keys = vec![Vec::new(); rails_n];
        for (&(rail, _), mr) in chosen.iter().zip(&mrs) {
            local_keys[rail] = u64::from(mr.lkey());
            remote_keys[rail] = encode_rkey(mr.rkey());
        }
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if g.regions.len() >= self.max_regions {
            return Err(FabricError::Exhausted("memory regions"));
        }
        g.next += 1;
        let handle = g.next;
        g.regions.insert(handle, mrs);
        Ok(Registration {
            handle,
            local_keys,
            remote_keys,
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

//! Address-handle bookkeeping: one AH per (local rail, remote GID), shared by every peer and
//! initiator on that GID, created on both sides (the initiator in `connect`, the target in
//! `accept`) so the target always knows its initiators (no `UNKNOWN_PEER`). Generic over the
//! handle type so the bookkeeping is tested without a device.

use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ::efa::Gid;

use super::addr::EfaAddress;

/// AHs by (local rail, remote GID).
#[derive(Debug)]
pub(crate) struct AhTable<H> {
    map: HashMap<(u16, Gid), Arc<H>>,
    max: usize,
}

impl<H> AhTable<H> {
    pub(crate) fn new(max: usize) -> Self {
        AhTable {
            map: HashMap::new(),
            max,
        }
    }

    /// The AH of `gid` on local rail `rail`, created by `create` on first use.
    pub(crate) fn get_or_create<E>(
        &mut self,
        rail: u16,
        gid: Gid,
        create: impl FnOnce() -> Result<Arc<H>, E>,
        exhausted: impl FnOnce() -> E,
    ) -> Result<Arc<H>, E> {
        if let Some(h) = self.map.get(&(rail, gid)) {
            return Ok(h.clone());
        }
        if self.map.len() >= self.max {
            return Err(exhausted());
        }
        let h = create()?;
        self.map.insert((rail, gid), h.clone());
        Ok(h)
    }

    /// The AH of `gid` on local rail `rail`, if one was created.
    pub(crate) fn get(&self, rail: u16, gid: Gid) -> Option<Arc<H>> {
        self.map.get(&(rail, gid)).cloned()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// How an initiator reaches one peer: per remote rail its service QP, per (local rail, remote
/// rail) the AH.
#[derive(Debug)]
pub(crate) struct Route<H> {
    remote_rails: usize,
    qpn: Vec<u32>,
    qkey: Vec<u32>,
    rdma: Vec<u8>,
    ahs: Vec<Arc<H>>,
}

impl<H> Route<H> {
    /// Builds the route to `remote` from `local_rails` rails, creating AHs through `table`.
    pub(crate) fn build<E>(
        local_rails: u16,
        remote: &[EfaAddress],
        table: &mut AhTable<H>,
        mut create: impl FnMut(u16, Gid) -> Result<Arc<H>, E>,
        exhausted: impl Fn() -> E,
    ) -> Result<Route<H>, E> {
        let mut ahs = Vec::with_capacity(usize::from(local_rails) * remote.len());
        for l in 0..local_rails {
            for r in remote {
                ahs.push(table.get_or_create(l, r.gid, || create(l, r.gid), &exhausted)?);
            }
        }
        Ok(Route {
            remote_rails: remote.len(),
            qpn: remote.iter().map(|r| r.qpn).collect(),
            qkey: remote.iter().map(|r| r.qkey).collect(),
            rdma: remote.iter().map(|r| r.rdma).collect(),
            ahs,
        })
    }

    /// The AH, QPN and Q_Key for posting on `rail` to the peer's `remote_rail`.
    #[inline]
    pub(crate) fn dest(&self, rail: u16, remote_rail: u16) -> Option<(&H, u32, u32)> {
        let r = usize::from(remote_rail);
        if r >= self.remote_rails {
            return None;
        }
        let ah = self.ahs.get(usize::from(rail) * self.remote_rails + r)?;
        Some((ah, self.qpn[r], self.qkey[r]))
    }

    /// The RDMA bits ([`RDMA_READ`](super::addr::RDMA_READ), ...) of the peer's `remote_rail`
    /// (0 for a rail it does not have).
    #[inline]
    pub(crate) fn rdma(&self, remote_rail: u16) -> u8 {
        self.rdma
            .get(usize::from(remote_rail))
            .copied()
            .unwrap_or(0)
    }
}

/// One peer's route, replaced when the peer restarts, read by endpoints without a lock.
///
/// A replaced route is retired, not freed: an endpoint may be posting through it at that moment.
/// Retired routes live until the fabric is dropped (after every endpoint), so a restart costs
/// one route's few bytes; the AHs they hold are the same as the new route's when the peer came
/// back on the same GIDs, so the device's AHs do not grow.
#[derive(Debug)]
pub(crate) struct RouteSlot<H> {
    current: AtomicPtr<Route<H>>,
    // Boxed on purpose: endpoints may still hold a reference into a retired route, so it must not
    // move when the vector grows.
    #[allow(clippy::vec_box)]
    retired: Mutex<Vec<Box<Route<H>>>>,
}

impl<H> RouteSlot<H> {
    pub(crate) fn new() -> Self {
        RouteSlot {
            current: AtomicPtr::new(std::ptr::null_mut()),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// The current route, if the slot has one.
    #[inline]
    pub(crate) fn get(&self) -> Option<&Route<H>> {
        let p = self.current.load(Ordering::Acquire);
        // SAFETY: a non-null pointer came from `Box::into_raw` in `set`; the box is freed only
        // in `Drop`, through `&mut self`, so it outlives every `&self` borrow.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// Installs `route`, retiring the one it replaces.
    pub(crate) fn set(&self, route: Route<H>) {
        let new = Box::into_raw(Box::new(route));
        let old = self.current.swap(new, Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: `old` came from `Box::into_raw` and is no longer reachable from the slot.
            let old = unsafe { Box::from_raw(old) };
            self.retired
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(old);
        }
    }

    #[cfg(test)]
    pub(crate) fn retired(&self) -> usize {
        self.retired.lock().unwrap().len()
    }
}

impl<H> Drop for RouteSlot<H> {
    fn drop(&mut self) {
        let p = *self.current.get_mut();
        if !p.is_null() {
            // SAFETY: from `Box::into_raw`; nothing borrows the slot any more (`&mut self`).
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn addr(rail: u16, gid_byte: u8, qpn: u32) -> EfaAddress {
        EfaAddress {
            rail,
            instance: 1,
            identity: 0,
            gid: Gid([gid_byte; 16]),
            qpn,
            qkey: 0x4242,
            rdma: 0,
        }
    }

    #[test]
    fn one_ah_per_local_rail_and_gid_shared_by_connect_and_accept() {
        let created = Cell::new(0);
        let mut table = AhTable::<(u16, Gid)>::new(16);
        let mk = |l: u16, g: Gid| {
            created.set(created.get() + 1);
            Ok::<_, ()>(Arc::new((l, g)))
        };
        let peer = [addr(0, 1, 10), addr(1, 2, 11)];
        let route = Route::build(2, &peer, &mut table, mk, || ()).unwrap();
        assert_eq!(created.get(), 4);
        let (ah, qpn, qkey) = route.dest(1, 0).unwrap();
        assert_eq!((*ah, qpn, qkey), ((1, Gid([1; 16])), 10, 0x4242));
        assert_eq!(route.dest(0, 1).unwrap().1, 11);
        assert!(route.dest(0, 2).is_none() && route.dest(2, 0).is_none());
        // The target side of the same GIDs (accept) reuses them: no new AH.
        for l in 0..2 {
            table
                .get_or_create(l, Gid([2; 16]), || mk(l, Gid([2; 16])), || ())
                .unwrap();
        }
        assert_eq!((created.get(), table.len()), (4, 4));
        // A second connection to the same GIDs, too.
        Route::build(2, &peer, &mut table, mk, || ()).unwrap();
        assert_eq!(created.get(), 4);
    }

    #[test]
    fn table_limit_and_creation_errors_are_reported() {
        let mut table = AhTable::<u8>::new(1);
        table
            .get_or_create(0, Gid([1; 16]), || Ok::<_, &str>(Arc::new(1)), || "full")
            .unwrap();
        let e = table.get_or_create(0, Gid([2; 16]), || Ok(Arc::new(2)), || "full");
        assert_eq!(e, Err("full"));
        let mut t2 = AhTable::<u8>::new(4);
        let e = Route::build(
            1,
            &[addr(0, 3, 1)],
            &mut t2,
            |_, _| Err("EINVAL"),
            || "full",
        );
        assert_eq!(e.err(), Some("EINVAL"));
        assert_eq!(t2.len(), 0, "a failed creation leaves nothing behind");
    }

    #[test]
    fn a_slot_replaces_its_route_and_keeps_the_old_one_alive() {
        let mut table: AhTable<u32> = AhTable::new(8);
        let slot: RouteSlot<u32> = RouteSlot::new();
        assert!(slot.get().is_none());
        let mk = |qpn, table: &mut AhTable<u32>| {
            Route::build(
                1,
                &[addr(0, 1, qpn)],
                table,
                |_, _| Ok::<_, ()>(Arc::new(7)),
                || (),
            )
            .unwrap()
        };
        slot.set(mk(10, &mut table));
        let before = slot.get().unwrap();
        assert_eq!(before.dest(0, 0).map(|d| d.1), Some(10));
        for qpn in 11..2011 {
            slot.set(mk(qpn, &mut table));
        }
        // The borrow taken before the swaps still reads the first route.
        assert_eq!(before.dest(0, 0).map(|d| d.1), Some(10));
        assert_eq!(slot.get().unwrap().dest(0, 0).map(|d| d.1), Some(2010));
        assert_eq!(slot.retired(), 2000);
        assert_eq!(table.len(), 1, "the same GID keeps one AH across restarts");
    }
}

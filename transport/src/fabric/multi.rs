//! One engine on several fabrics: a [`MultiFabric`] speaks each of its members as a
//! [`Plane`], so an EFA node can still reach a CPU-only box over TCP.
//!
//! The members' rails are numbered one after another (the first member's rails first), and a
//! segment is registered on every member. Each descriptor the engine publishes offers every
//! member, in the order given to [`MultiFabric::new`] (the order of preference). Opening a
//! peer's segment picks the first member the peer also offers (see
//! [`Engine::open_segment`](crate::Engine::open_segment)); the choice is visible per remote
//! segment ([`Engine::remote_fabric`](crate::Engine::remote_fabric)). A peer on one fabric
//! needs nothing new: it reads the offer for its own fabric.
//!
//! ```
//! use transport::fabric::multi::MultiFabric;
//! use transport::fabric::sim::{SimConfig, SimFabric, SimNetwork};
//! use transport::fabric::tcp::{TcpConfig, TcpFabric};
//! use transport::fabric::Fabric;
//!
//! let net = SimNetwork::new();
//! let fabric = MultiFabric::new(vec![
//!     SimFabric::new(&net, SimConfig::default())?,
//!     TcpFabric::new(TcpConfig::default())?,
//! ])?;
//! assert_eq!(fabric.name(), "sim+tcp");
//! # Ok::<(), transport::FabricError>(())
//! ```
//!
//! The hot path adds one table lookup per work request: the worker's single endpoint is a
//! [`MultiEndpoint`] that hands each run of work requests to its member's endpoint, with the
//! rail renumbered, and polls the members in turn.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::{
    Capabilities, Completion, Endpoint, Fabric, MemoryRegion, PeerId, Plane, Registration,
    WorkRequest, MAX_PLANES, MAX_RAILS,
};
use crate::{FabricError, Notifications};

const FABRIC: &str = "multi";
/// Work requests renumbered and handed to a member per call.
const RUN: usize = 64;

/// A fabric made of other fabrics (see the [module docs](self)).
pub struct MultiFabric {
    name: String,
    members: Vec<Arc<dyn Fabric>>,
    /// First rail of each member, and the end of the last.
    bases: Vec<u16>,
    caps: Capabilities,
    registrations: Mutex<HashMap<u64, Vec<Registration>>>,
    next_handle: AtomicU64,
}

impl std::fmt::Debug for MultiFabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiFabric")
            .field("name", &self.name)
            .field("planes", &self.planes())
            .finish_non_exhaustive()
    }
}

impl MultiFabric {
    /// A fabric speaking `members`, preferred in this order.
    ///
    /// # Errors
    ///
    /// [`FabricError::BadConfig`] when there are no members or more than [`MAX_PLANES`], when
    /// two have the same name, when a member is itself made of several fabrics, or when their
    /// rails add up to more than [`MAX_RAILS`].
    pub fn new(members: Vec<Arc<dyn Fabric>>) -> Result<Arc<MultiFabric>, FabricError> {
        let bad = |field, value: String, expected: &str| FabricError::BadConfig {
            fabric: FABRIC,
            field,
            value,
            expected: expected.into(),
        };
        let names: Vec<&str> = members.iter().map(|m| m.name()).collect();
        if members.is_empty() || members.len() > MAX_PLANES {
            let expected = format!("1..={MAX_PLANES} fabrics");
            return Err(bad("members", format!("{names:?}"), &expected));
        }
        if let Some(m) = members.iter().find(|m| m.planes().len() != 1) {
            let value = m.name().to_string();
            return Err(bad("members", value, "plain fabrics (not a multi-fabric)"));
        }
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(bad("members", format!("{names:?}"), "distinct fabrics"));
            }
        }
        let mut bases = vec![0u16];
        for m in &members {
            let end = bases[bases.len() - 1] as usize + m.capabilities().rails as usize;
            if end > MAX_RAILS {
                let expected = format!("at most {MAX_RAILS} rails in all");
                return Err(bad("rails", end.to_string(), &expected));
            }
            bases.push(end as u16);
        }
        Ok(Arc::new(MultiFabric {
            name: names.join("+"),
            caps: combined(&members, bases[members.len()]),
            members,
            bases,
            registrations: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
        }))
    }

    /// The member fabrics, in order of preference.
    pub fn members(&self) -> &[Arc<dyn Fabric>] {
        &self.members
    }

    fn member(&self, plane: usize) -> Result<&Arc<dyn Fabric>, FabricError> {
        self.members.get(plane).ok_or(FabricError::BadConfig {
            fabric: FABRIC,
            field: "plane",
            value: plane.to_string(),
            expected: format!("0..{}", self.members.len()),
        })
    }

    /// The member that owns rail `rail` of this fabric, and the rail in its numbering.
    fn plane_of(&self, rail: u16) -> Result<(usize, u16), FabricError> {
        let plane = self.bases[1..].iter().position(|&end| rail < end);
        plane
            .map(|p| (p, rail - self.bases[p]))
            .ok_or(FabricError::BadRail {
                rail,
                rails: self.caps.rails,
            })
    }
}

/// What every member can do: the smallest limits, the operations all of them have.
fn combined(members: &[Arc<dyn Fabric>], rails: u16) -> Capabilities {
    let caps: Vec<Capabilities> = members.iter().map(|m| m.capabilities()).collect();
    Capabilities {
        rails,
        max_transfer_size: caps.iter().map(|c| c.max_transfer_size).min().unwrap_or(0),
        max_message_size: caps.iter().map(|c| c.max_message_size).min().unwrap_or(0),
        queue_depth: caps.iter().map(|c| c.queue_depth).min().unwrap_or(0),
        supports_read: caps.iter().all(|c| c.supports_read),
        supports_write: caps.iter().all(|c| c.supports_write),
        supports_notify: caps.iter().all(|c| c.supports_notify),
        supports_write_notify: caps.iter().all(|c| c.supports_write_notify),
    }
}

impl Fabric for MultiFabric {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }

    fn local_addresses(&self) -> Vec<Vec<u8>> {
        self.members
            .iter()
            .flat_map(|m| m.local_addresses())
            .collect()
    }

    unsafe fn register(&self, region: MemoryRegion) -> Result<Registration, FabricError> {
        // SAFETY: forwarded from the caller (same contract).
        unsafe { self.register_on(region, &crate::RailSet::all(self.caps.rails)) }
    }

    /// Each member registers on its rails of `rails`, renumbered to its own; a member left
    /// without any registers on all of its rails, so every plane stays reachable.
    unsafe fn register_on(
        &self,
        region: MemoryRegion,
        rails: &crate::RailSet,
    ) -> Result<Registration, FabricError> {
        let mut done: Vec<Registration> = Vec::with_capacity(self.members.len());
        for (i, m) in self.members.iter().enumerate() {
            let (start, end) = (self.bases[i], self.bases[i + 1]);
            let mut own = crate::RailSet::new();
            for &r in rails.as_slice() {
                if (start..end).contains(&r) {
                    own.push(r - start);
                }
            }
            if own.is_empty() {
                own = crate::RailSet::all(end - start);
            }
            // SAFETY: the caller's promise (valid until deregister) is passed on unchanged;
            // every member's registration is undone before `deregister` returns.
            match unsafe { m.register_on(region, &own) } {
                Ok(r) => done.push(r),
                Err(e) => {
                    for (m, r) in self.members.iter().zip(&done) {
                        let _ = m.deregister(r);
                    }
                    return Err(e);
                }
            }
        }
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let registration = Registration {
            handle,
            local_keys: done.iter().flat_map(|r| r.local_keys.clone()).collect(),
            remote_keys: done.iter().flat_map(|r| r.remote_keys.clone()).collect(),
        };
        self.registrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(handle, done);
        Ok(registration)
    }

    fn deregister(&self, registration: &Registration) -> Result<(), FabricError> {
        let parts = self
            .registrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&registration.handle)
            .ok_or(FabricError::BadConfig {
                fabric: FABRIC,
                field: "registration",
                value: registration.handle.to_string(),
                expected: "a handle this fabric returned".into(),
            })?;
        let mut first_error = Ok(());
        for (m, r) in self.members.iter().zip(&parts) {
            if let Err(e) = m.deregister(r) {
                first_error = first_error.and(Err(e));
            }
        }
        first_error
    }

    /// Decodes a key for rail `rail` of this fabric's numbering (its member's peer rail
    /// `rail - base`); the engine uses [`Fabric::decode_plane_key`] instead.
    fn decode_remote_key(&self, rail: u16, key: &[u8]) -> Result<u64, FabricError> {
        let (plane, rail) = self.plane_of(rail)?;
        self.members[plane].decode_remote_key(rail, key)
    }

    /// Refused: a multi-fabric connects over one plane at a time ([`Fabric::connect_plane`]).
    fn connect(&self, _remote: &[Vec<u8>]) -> Result<PeerId, FabricError> {
        Err(FabricError::Unsupported {
            what: "connecting a multi-fabric without naming the plane (use connect_plane)",
        })
    }

    /// Accepts the initiator on every member that understands its addresses; fails with the
    /// first member's error when none does.
    fn accept(&self, initiator: &[Vec<u8>]) -> Result<(), FabricError> {
        let mut first_error = None;
        let mut accepted = false;
        for m in &self.members {
            match m.accept(initiator) {
                Ok(()) => accepted = true,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (accepted, first_error) {
            (false, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn bind_notifications(&self, sink: Arc<Notifications>) {
        for m in &self.members {
            m.bind_notifications(sink.clone());
        }
    }

    fn bind_name(&self, name: &str) {
        for m in &self.members {
            m.bind_name(name);
        }
    }

    fn planes(&self) -> Vec<Plane> {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| Plane {
                name: m.name().to_string(),
                rails: self.bases[i]..self.bases[i + 1],
            })
            .collect()
    }

    fn connect_plane(&self, plane: usize, remote: &[Vec<u8>]) -> Result<PeerId, FabricError> {
        self.member(plane)?.connect(remote)
    }

    fn accept_plane(&self, plane: usize, initiator: &[Vec<u8>]) -> Result<(), FabricError> {
        self.member(plane)?.accept(initiator)
    }

    fn decode_plane_key(&self, plane: usize, rail: u16, key: &[u8]) -> Result<u64, FabricError> {
        self.member(plane)?.decode_remote_key(rail, key)
    }

    /// The union of the members' cpus (`None` when no member pinned its threads).
    fn local_cpus(&self) -> Option<crate::affinity::CpuSet> {
        self.members
            .iter()
            .filter_map(|m| m.local_cpus())
            .reduce(|a, b| a.union(&b))
    }

    fn endpoint(&self) -> Result<Box<dyn Endpoint>, FabricError> {
        let eps = self
            .members
            .iter()
            .map(|m| m.endpoint())
            .collect::<Result<Vec<_>, _>>()?;
        let mut plane_of = [0u8; MAX_RAILS];
        for (p, w) in self.bases.windows(2).enumerate() {
            plane_of[w[0] as usize..w[1] as usize].fill(p as u8);
        }
        Ok(Box::new(MultiEndpoint {
            eps,
            plane_of,
            bases: self.bases.clone(),
            run: Vec::with_capacity(RUN),
            next_poll: 0,
        }))
    }
}

/// How a fabric names itself in a discovery hello: its name when it speaks one plane, else
/// each plane as `name:rails`, joined by `+` (`efa:1+tcp:2`), so a target can split the
/// addresses that follow by plane.
pub(crate) fn hello_name(planes: &[Plane]) -> String {
    match planes {
        [one] => one.name.clone(),
        many => many
            .iter()
            .map(|p| format!("{}:{}", p.name, p.rails.len()))
            .collect::<Vec<_>>()
            .join("+"),
    }
}

/// A plane named in a hello, with the addresses that belong to it.
pub(crate) type HelloPlane<'a> = (&'a str, &'a [Vec<u8>]);

/// Splits a hello's addresses by the planes its fabric name lists ([`hello_name`]); `None`
/// when the name's rail counts do not add up to the addresses.
pub(crate) fn split_hello<'a>(
    fabric: &'a str,
    addresses: &'a [Vec<u8>],
) -> Option<Vec<HelloPlane<'a>>> {
    if !fabric.contains(':') {
        return Some(vec![(fabric, addresses)]);
    }
    let mut rest = addresses;
    let mut planes = Vec::new();
    for part in fabric.split('+') {
        let (name, rails) = part.split_once(':')?;
        let rails: usize = rails.parse().ok()?;
        if rails > rest.len() {
            return None;
        }
        let (mine, tail) = rest.split_at(rails);
        planes.push((name, mine));
        rest = tail;
    }
    rest.is_empty().then_some(planes)
}

/// A worker's endpoint on a [`MultiFabric`]: one endpoint per member.
pub struct MultiEndpoint {
    eps: Vec<Box<dyn Endpoint>>,
    /// Member of each rail of the outer numbering.
    plane_of: [u8; MAX_RAILS],
    bases: Vec<u16>,
    /// Renumbered work requests of one run (capacity [`RUN`], never grown).
    run: Vec<WorkRequest>,
    /// Member polled first next time, so none starves the others.
    next_poll: usize,
}

impl std::fmt::Debug for MultiEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiEndpoint")
            .field("members", &self.eps.len())
            .field("outstanding", &self.outstanding())
            .finish_non_exhaustive()
    }
}

impl MultiEndpoint {
    /// The member of `rail`; a rail past the last member goes to the last one, which refuses
    /// it as out of range (completing it with an error, as for any bad rail).
    #[inline]
    fn plane(&self, rail: u16) -> usize {
        match self.plane_of.get(rail as usize) {
            Some(&p) if rail < self.bases[self.bases.len() - 1] => p as usize,
            _ => self.eps.len() - 1,
        }
    }
}

impl Endpoint for MultiEndpoint {
    fn post(&mut self, wrs: &[WorkRequest]) -> usize {
        let mut done = 0;
        while done < wrs.len() {
            let plane = self.plane(wrs[done].rail);
            let base = self.bases[plane];
            self.run.clear();
            for wr in wrs[done..].iter().take(RUN) {
                if self.plane(wr.rail) != plane {
                    break;
                }
                self.run.push(WorkRequest {
                    rail: wr.rail.saturating_sub(base),
                    ..*wr
                });
            }
            let n = self.eps[plane].post(&self.run);
            done += n;
            if n < self.run.len() {
                break;
            }
        }
        done
    }

    fn poll(&mut self, out: &mut [Completion]) -> usize {
        let members = self.eps.len();
        let mut n = 0;
        for k in 0..members {
            if n == out.len() {
                break;
            }
            let p = (self.next_poll + k) % members;
            n += self.eps[p].poll(&mut out[n..]);
        }
        self.next_poll = (self.next_poll + 1) % members;
        n
    }

    fn outstanding(&self) -> usize {
        self.eps.iter().map(|e| e.outstanding()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(name: &str, rails: std::ops::Range<u16>) -> Plane {
        Plane {
            name: name.into(),
            rails,
        }
    }

    #[test]
    fn hello_names_split_back_by_plane() {
        let one = [plane("tcp", 0..2)];
        assert_eq!(hello_name(&one), "tcp");
        let two = [plane("efa", 0..1), plane("tcp", 1..3)];
        let name = hello_name(&two);
        assert_eq!(name, "efa:1+tcp:2");
        let addrs = vec![vec![1], vec![2], vec![3]];
        let split = split_hello(&name, &addrs).unwrap();
        assert_eq!(split[0], ("efa", &addrs[..1]));
        assert_eq!(split[1], ("tcp", &addrs[1..]));
        assert_eq!(
            split_hello("tcp", &addrs).unwrap(),
            vec![("tcp", &addrs[..])]
        );
    }

    #[test]
    fn hello_names_that_do_not_add_up_are_refused() {
        let addrs = vec![vec![1], vec![2]];
        for bad in ["efa:1+tcp:2", "efa:3", "efa:1+tcp", "efa:x+tcp:1", "efa:1"] {
            assert_eq!(split_hello(bad, &addrs), None, "{bad}");
        }
    }
}

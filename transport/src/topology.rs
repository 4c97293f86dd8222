//! Rail choice: which devices a segment's traffic uses.

use crate::fabric::MAX_RAILS;
use crate::Location;

/// A fixed-capacity list of rail indices (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RailSet {
    rails: [u16; MAX_RAILS],
    len: u8,
}

impl RailSet {
    /// An empty set.
    pub const fn new() -> Self {
        RailSet {
            rails: [0; MAX_RAILS],
            len: 0,
        }
    }

    /// All rails `0..n` (n clamped to `MAX_RAILS`).
    pub fn all(n: u16) -> Self {
        let mut s = RailSet::new();
        for r in 0..n.min(MAX_RAILS as u16) {
            s.push(r);
        }
        s
    }

    /// Adds a rail; ignored when full or already present.
    pub fn push(&mut self, rail: u16) {
        if (self.len as usize) < MAX_RAILS && !self.as_slice().contains(&rail) {
            self.rails[self.len as usize] = rail;
            self.len += 1;
        }
    }

    /// The rails in order.
    pub fn as_slice(&self) -> &[u16] {
        &self.rails[..self.len as usize]
    }

    /// Number of rails.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for RailSet {
    fn default() -> Self {
        RailSet::new()
    }
}

/// Topology hook: the rails to prefer for memory at a location (NUMA node or GPU -> nearest
/// NICs by PCIe/NUMA distance). Consulted once per registration, never per request; the engine
/// then stripes slices round robin over the returned rails.
pub trait RailPolicy: Send + Sync {
    /// Preferred rails for `location` out of `rails` available. An empty answer (or one naming
    /// only rails `>= rails`) falls back to all rails.
    fn preferred_rails(&self, location: crate::Location, rails: u16) -> RailSet;
}

/// Uses every rail for every location.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllRails;

impl RailPolicy for AllRails {
    fn preferred_rails(&self, _location: Location, rails: u16) -> RailSet {
        RailSet::all(rails)
    }
}

/// A static affinity table: each location maps to an explicit rail list (e.g. from `lstopo`
/// or the instance type's documented GPU/NIC pairing); unlisted locations use all rails.
#[derive(Debug, Clone, Default)]
pub struct AffinityTable {
    entries: Vec<(Location, RailSet)>,
}

impl AffinityTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the rails for a location.
    pub fn with(mut self, location: Location, rails: &[u16]) -> Self {
        let mut set = RailSet::new();
        for &r in rails {
            set.push(r);
        }
        self.entries.retain(|(l, _)| *l != location);
        self.entries.push((location, set));
        self
    }
}

impl RailPolicy for AffinityTable {
    fn preferred_rails(&self, location: Location, rails: u16) -> RailSet {
        self.entries
            .iter()
            .find(|(l, _)| *l == location)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| RailSet::all(rails))
    }
}

/// Applies the fallback rule of [`RailPolicy`]: drop out-of-range rails, use all if none remain.
pub(crate) fn effective_rails(policy: &dyn RailPolicy, location: Location, rails: u16) -> RailSet {
    let mut out = RailSet::new();
    for &r in policy.preferred_rails(location, rails).as_slice() {
        if r < rails {
            out.push(r);
        }
    }
    if out.is_empty() {
        RailSet::all(rails)
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_falls_back_to_all_rails() {
        let t = AffinityTable::new()
            .with(Location::Gpu(0), &[2, 3])
            .with(Location::Gpu(1), &[9]);
        assert_eq!(effective_rails(&t, Location::Gpu(0), 4).as_slice(), &[2, 3]);
        assert_eq!(
            effective_rails(&t, Location::Gpu(1), 4).as_slice(),
            &[0, 1, 2, 3]
        );
        assert_eq!(effective_rails(&t, Location::Cpu(0), 2).as_slice(), &[0, 1]);
        assert_eq!(effective_rails(&AllRails, Location::Cpu(0), 3).len(), 3);
    }

    #[test]
    fn rail_set_dedups_and_caps() {
        let mut s = RailSet::new();
        for r in [1, 1, 2] {
            s.push(r);
        }
        assert_eq!(s.as_slice(), &[1, 2]);
        assert_eq!(RailSet::all(100).len(), MAX_RAILS);
    }
}

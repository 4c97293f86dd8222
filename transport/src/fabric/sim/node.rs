//! One simulated engine's devices: its memory registrations (the keys peers present) and the
//! address handles it holds for initiators.

use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, OnceLock};

use crate::fabric::regions::Regions;
use crate::Notifications;

#[derive(Debug)]
pub(crate) struct Node {
    pub id: u32,
    pub rails: u16,
    pub alive: AtomicBool,
    /// The registrations peers' keys name.
    pub regions: Regions,
    /// `ah[i]`: this node holds an address handle for node `i` (it accepts its requests).
    ah: Box<[AtomicBool]>,
    pub notifications: OnceLock<Arc<Notifications>>,
}

impl Node {
    pub(crate) fn new(id: u32, rails: u16, max_regions: usize, max_nodes: usize) -> Self {
        Node {
            id,
            rails,
            alive: AtomicBool::new(true),
            regions: Regions::new(max_regions),
            ah: (0..max_nodes).map(|_| AtomicBool::new(false)).collect(),
            notifications: OnceLock::new(),
        }
    }

    pub(crate) fn knows(&self, peer: u32) -> bool {
        self.ah.get(peer as usize).is_some_and(|a| a.load(Acquire))
    }

    pub(crate) fn create_ah(&self, peer: u32) -> bool {
        match self.ah.get(peer as usize) {
            Some(a) => {
                a.store(true, Release);
                true
            }
            None => false,
        }
    }

    pub(crate) fn destroy_ah(&self, peer: u32) {
        if let Some(a) = self.ah.get(peer as usize) {
            a.store(false, Release);
        }
    }
}

//! Shared setup: engines on one sim network with one registry.
#![allow(dead_code)] // Each test crate that includes it uses a different part.

use std::sync::Arc;

use transport::fabric::sim::{SimConfig, SimFabric, SimNetwork};
use transport::*;

pub mod etcd;
pub mod ops;
pub mod process;

pub struct Cluster {
    pub net: Arc<SimNetwork>,
    pub meta: Arc<LocalRegistry>,
}

impl Cluster {
    pub fn new() -> Self {
        Cluster {
            net: SimNetwork::new(),
            meta: Arc::new(LocalRegistry::new()),
        }
    }

    pub fn engine(&self, name: &str, sim: SimConfig) -> (Engine, Arc<SimFabric>) {
        self.engine_with(EngineConfig::new(name), sim)
    }

    pub fn engine_with(&self, cfg: EngineConfig, sim: SimConfig) -> (Engine, Arc<SimFabric>) {
        let fabric = SimFabric::new(&self.net, sim).unwrap();
        let engine = Engine::new(cfg, fabric.clone(), self.meta.clone()).unwrap();
        (engine, fabric)
    }
}

/// Registers `len` engine-owned bytes filled with `fill(i)`.
pub fn owned(
    engine: &Engine,
    name: &str,
    len: usize,
    access: Access,
    fill: impl Fn(usize) -> u8,
) -> SegmentId {
    let mut m = OwnedMemory::zeroed(len, 64).unwrap();
    for (i, b) in m.as_mut_slice().iter_mut().enumerate() {
        *b = fill(i);
    }
    engine
        .register_owned(name, m, Location::Cpu(0), access)
        .unwrap()
}

/// The usual WRITE path between two engines: `a/src` on `a` (4 KiB of 1s) and `b/dst` on `b`
/// (4 KiB of zeros, remote-writable), opened from `a`; returns the source and the open target.
pub fn write_path(a: &Engine, b: &Engine) -> (SegmentId, RemoteSegment) {
    let src = owned(a, "a/src", 4096, Access::NONE, |_| 1);
    owned(b, "b/dst", 4096, Access::REMOTE_WRITE, |_| 0);
    (src, a.open_segment("b/dst").unwrap())
}

pub fn read_all(engine: &Engine, seg: SegmentId) -> Vec<u8> {
    let len = engine.segment_info(seg).unwrap().len as usize;
    let mut v = vec![0; len];
    engine.read_owned(seg, 0, &mut v).unwrap();
    v
}

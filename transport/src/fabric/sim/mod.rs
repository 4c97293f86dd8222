//! `sim`: a software model of EFA's SRD transport between engines in one process.
//!
//! Each [`SimFabric`] is one engine's set of devices (rails) on a shared [`SimNetwork`]. The
//! model keeps what matters to a transport above it:
//!
//! - **Reliable, unordered**: every accepted work request completes exactly once; completions
//!   come back in a random order drawn from a seeded PRNG (deterministic by seed and call
//!   sequence).
//! - **Bounded queues**: each rail of an endpoint accepts `queue_depth` outstanding requests;
//!   beyond that `post` accepts fewer (backpressure, never loss).
//! - **RDMA READ/WRITE and SEND**: one-sided copies checked against the target's registrations
//!   (key, bounds, rights: else `REMOTE_BAD_ADDRESS`) and the initiator's own (`INVALID_LKEY`);
//!   notifications as zero-length SENDs with immediate data, counted at the target.
//! - **Address handles**: the target must hold an AH for the initiator (created by the connect
//!   handshake, or [`SimFabric::accept`]); otherwise `UNKNOWN_PEER`, as on EFA.
//! - **Limits**: `max_rdma_size` (1 GiB) for READ/WRITE, `max_msg_size` (8 KiB) for SEND;
//!   beyond them `BAD_LENGTH`.
//! - **Faults** ([`SimFaults`]): a random error-completion rate, completion delays in poll
//!   steps or wall time, and dead peers ([`SimFabric::set_alive`]) whose requests complete
//!   with `UNRESP_REMOTE` after `unresp_timeout`.
//!
//! Data moves at post time with a plain memory copy; the completion is what is delayed and
//! reordered. A transport must therefore not read a destination before its completion (it
//! might already be written, as on real hardware).

mod endpoint;
mod node;
mod rng;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::fabric::regions;
use crate::fabric::{
    check_range, Capabilities, Endpoint, Fabric, MemoryRegion, PeerId, Registration, MAX_RAILS,
};
use crate::{FabricError, FailReason, Notifications, RailSet};
use node::Node;

/// Injected faults. The default injects none.
#[derive(Debug, Clone, PartialEq)]
pub struct SimFaults {
    /// Probability in `0.0..=1.0` that a work request fails instead of executing.
    pub error_rate: f64,
    /// Reasons injected errors carry (one drawn per error). Empty means `INJECTED`.
    pub error_reasons: Vec<FailReason>,
    /// Each completion is held back a random `0..=max_delay_steps` polls.
    pub max_delay_steps: u32,
    /// Each completion is held back a random time up to this (at most `MAX_FAULT_TIME`).
    pub max_delay: Option<Duration>,
    /// How long requests to a dead peer take to fail with `UNRESP_REMOTE` (at most
    /// `MAX_FAULT_TIME`).
    pub unresp_timeout: Duration,
}

impl Default for SimFaults {
    fn default() -> Self {
        SimFaults {
            error_rate: 0.0,
            error_reasons: vec![FailReason::RemoteAbort],
            max_delay_steps: 0,
            max_delay: None,
            unresp_timeout: Duration::from_millis(50),
        }
    }
}

/// Settings of one simulated engine's devices.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Rails (devices), `1..=MAX_RAILS`.
    pub rails: u16,
    /// Send-queue depth per rail per endpoint, `1..=MAX_QUEUE_DEPTH`.
    pub queue_depth: u32,
    /// Largest READ/WRITE (EFA `max_rdma_size`).
    pub max_rdma_size: u64,
    /// Largest SEND (EFA port `max_msg_sz`).
    pub max_msg_size: u64,
    /// PRNG seed (endpoint seeds derive from it, the node id and the endpoint's ordinal).
    pub seed: u64,
    /// Most registrations, `1..=MAX_REGIONS`.
    pub max_regions: usize,
    /// Whether `connect` also creates the target's AH for this initiator. `false` models a
    /// target that skipped it: its requests then fail with `UNKNOWN_PEER`.
    pub handshake: bool,
    /// Injected faults.
    pub faults: SimFaults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            rails: 1,
            queue_depth: 256,
            max_rdma_size: 1 << 30,
            max_msg_size: 8 << 10,
            seed: 0x5EED,
            max_regions: 1024,
            handshake: true,
            faults: SimFaults::default(),
        }
    }
}

/// Most engines a [`SimNetwork`] may be made for.
pub const MAX_NODES: usize = 1 << 16;
/// Largest [`SimConfig::queue_depth`].
pub const MAX_QUEUE_DEPTH: u32 = 1 << 16;
/// Largest [`SimConfig::max_regions`].
pub const MAX_REGIONS: usize = 1 << 16;
/// Longest injected delay or dead-peer timeout.
pub const MAX_FAULT_TIME: Duration = Duration::from_secs(3600);

/// Refuses settings that cannot work or would exhaust memory, naming the value.
fn check_config(c: &SimConfig) -> Result<(), FabricError> {
    check_range("sim", "rails", c.rails, 1..=MAX_RAILS as u16)?;
    check_range("sim", "queue_depth", c.queue_depth, 1..=MAX_QUEUE_DEPTH)?;
    check_range("sim", "max_rdma_size", c.max_rdma_size, 1..=u64::MAX)?;
    check_range("sim", "max_regions", c.max_regions, 1..=MAX_REGIONS)?;
    let f = &c.faults;
    check_range("sim", "error_rate", f.error_rate, 0.0..=1.0)?;
    if let Some(d) = f.max_delay {
        check_range("sim", "max_delay", d, Duration::ZERO..=MAX_FAULT_TIME)?;
    }
    check_range(
        "sim",
        "unresp_timeout",
        f.unresp_timeout,
        Duration::ZERO..=MAX_FAULT_TIME,
    )
}

/// The shared medium: every simulated engine in the process that should reach the others.
#[derive(Debug)]
pub struct SimNetwork {
    nodes: Mutex<Vec<Arc<Node>>>,
    max_nodes: usize,
}

impl SimNetwork {
    /// A network for up to 256 engines.
    pub fn new() -> Arc<SimNetwork> {
        Self::with_capacity(256)
    }

    /// A network for up to `max_nodes` engines (`1..=MAX_NODES`, checked when a fabric joins:
    /// each one's tables are sized by it).
    pub fn with_capacity(max_nodes: usize) -> Arc<SimNetwork> {
        Arc::new(SimNetwork {
            nodes: Mutex::new(Vec::new()),
            max_nodes,
        })
    }

    fn node(&self, id: u32) -> Option<Arc<Node>> {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id as usize)
            .cloned()
    }
}

pub(crate) struct Shared {
    pub node: Arc<Node>,
    pub peers: Box<[OnceLock<Arc<Node>>]>,
    pub config: SimConfig,
    /// `error_rate` scaled to the PRNG's range.
    pub error_threshold: u64,
    /// Per rail of this engine: the code of the reason every work request posted there fails
    /// with, 0 for none ([`SimFabric::set_rail_fault`]).
    pub rail_faults: [AtomicU8; MAX_RAILS],
}

impl Shared {
    /// The fault set on `rail`, if any.
    #[inline]
    pub(crate) fn rail_fault(&self, rail: u16) -> Option<FailReason> {
        let code = self.rail_faults.get(rail as usize)?.load(Ordering::Relaxed);
        FailReason::ALL.into_iter().find(|r| *r as u8 == code)
    }
}

/// One engine's simulated devices. See the [module docs](self).
pub struct SimFabric {
    net: Arc<SimNetwork>,
    shared: Arc<Shared>,
    endpoints: AtomicU64,
}

impl std::fmt::Debug for SimFabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimFabric")
            .field("node", &self.shared.node.id)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

const ADDR_MAGIC: &[u8; 3] = b"SIM";
const ADDR_LEN: usize = 9;

fn address(node: u32, rail: u16) -> Vec<u8> {
    let mut a = Vec::with_capacity(ADDR_LEN);
    a.extend_from_slice(ADDR_MAGIC);
    a.extend_from_slice(&rail.to_le_bytes());
    a.extend_from_slice(&node.to_le_bytes());
    a
}

impl SimFabric {
    /// Adds an engine's devices to `net`.
    ///
    /// # Errors
    ///
    /// [`FabricError::BadConfig`] names a setting out of range; [`FabricError::Exhausted`] when the
    /// network has no room for another node.
    pub fn new(net: &Arc<SimNetwork>, config: SimConfig) -> Result<Arc<SimFabric>, FabricError> {
        check_config(&config)?;
        check_range("sim", "max_nodes", net.max_nodes, 1..=MAX_NODES)?;
        let rate = config.faults.error_rate;
        let error_threshold = if rate >= 1.0 {
            u64::MAX
        } else {
            (rate * u64::MAX as f64) as u64
        };
        let node = {
            let mut nodes = net.nodes.lock().unwrap_or_else(PoisonError::into_inner);
            if nodes.len() >= net.max_nodes {
                return Err(FabricError::Exhausted("sim network nodes"));
            }
            let node = Arc::new(Node::new(
                nodes.len() as u32,
                config.rails,
                config.max_regions,
                net.max_nodes,
            ));
            nodes.push(node.clone());
            node
        };
        Ok(Arc::new(SimFabric {
            net: net.clone(),
            shared: Arc::new(Shared {
                node,
                peers: (0..net.max_nodes).map(|_| OnceLock::new()).collect(),
                config,
                error_threshold,
                rail_faults: Default::default(),
            }),
            endpoints: AtomicU64::new(0),
        }))
    }

    /// This engine's node id on the network (also its [`PeerId`] at other engines).
    pub fn node_id(&self) -> u32 {
        self.shared.node.id
    }

    /// Kills (`false`) or revives this engine's devices. Requests *to* a dead engine complete
    /// with `UNRESP_REMOTE` after `unresp_timeout`.
    pub fn set_alive(&self, alive: bool) {
        self.shared.node.alive.store(alive, Ordering::SeqCst);
    }

    /// Makes every work request this engine posts on `rail` fail with `fault` (a failing
    /// device or path), until called again with `None`. A rail beyond the fabric's is ignored.
    pub fn set_rail_fault(&self, rail: u16, fault: Option<FailReason>) {
        if let Some(f) = self.shared.rail_faults.get(rail as usize) {
            f.store(fault.map_or(0, |r| r as u8), Ordering::SeqCst);
        }
    }

    /// Destroys this engine's AH for node `peer`: its later requests here fail with
    /// `UNKNOWN_PEER`.
    pub fn forget_peer(&self, peer: u32) {
        self.shared.node.destroy_ah(peer);
    }

    fn parse(&self, addrs: &[Vec<u8>]) -> Result<Arc<Node>, FabricError> {
        let mut node_id = None;
        for (i, a) in addrs.iter().enumerate() {
            let rail = i as u16;
            let bad = |reason: &str| FabricError::BadAddress {
                rail,
                reason: reason.to_string(),
            };
            if a.len() != ADDR_LEN || &a[..3] != ADDR_MAGIC {
                return Err(bad("not a sim address"));
            }
            let r = u16::from_le_bytes([a[3], a[4]]);
            let n = u32::from_le_bytes([a[5], a[6], a[7], a[8]]);
            if r != rail {
                return Err(bad("rail index out of order"));
            }
            if *node_id.get_or_insert(n) != n {
                return Err(bad("rails of different nodes"));
            }
        }
        let id = node_id.ok_or(FabricError::BadAddress {
            rail: 0,
            reason: "no rails".into(),
        })?;
        let node = self.net.node(id).ok_or(FabricError::BadAddress {
            rail: 0,
            reason: format!("no sim node {id}"),
        })?;
        if node.rails as usize != addrs.len() {
            return Err(FabricError::BadAddress {
                rail: 0,
                reason: format!(
                    "node {id} has {} rails, address lists {}",
                    node.rails,
                    addrs.len()
                ),
            });
        }
        Ok(node)
    }
}

impl Fabric for SimFabric {
    fn name(&self) -> &str {
        "sim"
    }

    fn capabilities(&self) -> Capabilities {
        let c = &self.shared.config;
        Capabilities {
            rails: c.rails,
            max_transfer_size: c.max_rdma_size,
            max_message_size: c.max_msg_size,
            queue_depth: c.queue_depth,
            supports_read: true,
            supports_write: true,
            supports_notify: true,
            supports_write_notify: true,
        }
    }

    fn local_addresses(&self) -> Vec<Vec<u8>> {
        (0..self.shared.config.rails)
            .map(|r| address(self.shared.node.id, r))
            .collect()
    }

    unsafe fn register(&self, region: MemoryRegion) -> Result<Registration, FabricError> {
        regions::register(
            &self.shared.node.regions,
            region,
            self.shared.config.rails,
            "sim memory regions",
        )
    }

    unsafe fn register_on(
        &self,
        region: MemoryRegion,
        rails: &RailSet,
    ) -> Result<Registration, FabricError> {
        regions::register_on(
            &self.shared.node.regions,
            region,
            self.shared.config.rails,
            rails,
            "sim memory regions",
        )
    }

    fn deregister(&self, registration: &Registration) -> Result<(), FabricError> {
        regions::deregister(&self.shared.node.regions, registration, "sim")
    }

    fn decode_remote_key(&self, rail: u16, key: &[u8]) -> Result<u64, FabricError> {
        regions::decode_key(rail, key)
    }

    fn connect(&self, remote: &[Vec<u8>]) -> Result<PeerId, FabricError> {
        let target = self.parse(remote)?;
        let id = target.id;
        let slot = self
            .shared
            .peers
            .get(id as usize)
            .ok_or(FabricError::Exhausted("sim peers"))?;
        slot.get_or_init(|| target.clone());
        if self.shared.config.handshake {
            target.create_ah(self.shared.node.id);
        }
        Ok(id)
    }

    fn accept(&self, initiator: &[Vec<u8>]) -> Result<(), FabricError> {
        let node = self.parse(initiator)?;
        if self.shared.node.create_ah(node.id) {
            Ok(())
        } else {
            Err(FabricError::Exhausted("sim address handles"))
        }
    }

    fn bind_notifications(&self, sink: Arc<Notifications>) {
        let _ = self.shared.node.notifications.set(sink);
    }

    fn endpoint(&self) -> Result<Box<dyn Endpoint>, FabricError> {
        let ordinal = self.endpoints.fetch_add(1, Ordering::Relaxed);
        let seed = self.shared.config.seed
            ^ ((self.shared.node.id as u64) << 40)
            ^ ordinal.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Ok(Box::new(endpoint::SimEndpoint::new(
            self.shared.clone(),
            seed,
        )))
    }
}

#[cfg(test)]
mod tests;

//! `efa`: RDMA over AWS Elastic Fabric Adapter's SRD (scalable reliable datagram) queue pairs.
//!
//! # Shape
//!
//! - **Rails** are EFA devices. Each rail has one *service QP* (SRD), created with the fabric:
//!   its GID, QPN and Q_Key are the rail's published address ([`EfaAddress`]). Every peer's
//!   RDMA and notifications address it; a target thread owns it, keeps receives posted on it
//!   and counts notification tags.
//! - **Endpoints** (one per worker) own one SRD QP and one CQ per rail, on a thread domain
//!   where the device has them (no provider lock), and post RDMA to peers' service QPs. SRD is
//!   connectionless: an endpoint needs no per-peer state beyond the route.
//! - **Address handles**: one per (local rail, remote GID), shared by every peer on that GID. `connect`
//!   creates the initiator's AHs for the target; `accept` (called by the discovery handshake
//!   on the target) creates the target's AHs for the initiator, without which EFA fails the
//!   initiator's RDMA with `UNKNOWN_PEER`. Every work request carries the UD address (AH,
//!   remote QPN, Q_Key).
//! - **Capabilities** come from `efadv_query_device`: RDMA READ and WRITE each need their bit
//!   (`EFADV_DEVICE_ATTR_CAPS_RDMA_READ` / `_RDMA_WRITE`). Each rail publishes its bits in its
//!   address; where this rail or the peer's lacks an operation, it travels over SEND/RECV with
//!   the two-sided protocol ([`proto`]), so READ and WRITE work on every EFA generation (see
//!   [`TwoSided`], [`WritePolicy`] and [`RailCaps::path_to_full_peer`]).
//!   [`EfaFabric::protocols`] tells which.
//! - **Notifications** are zero-length SENDs with the tag as immediate data (needing no RDMA
//!   capability), counted by the target thread. A WRITE with notification of one slice is one
//!   RDMA WRITE with immediate where both rails take RDMA WRITE and the local device retries
//!   receiver-not-ready answers (it consumes one of the target's receives, as a SEND does);
//!   elsewhere the two-sided protocol sends the WRITE and, once it is acknowledged, the
//!   notification.
//! - **Failures** come back as the EFA vendor error by name (`REMOTE_BAD_ADDRESS`,
//!   `UNKNOWN_PEER`, `UNRESP_REMOTE`, ...).
//!
//! Only EFA hardware runs this fabric end to end; its decisions (address codec, capabilities,
//! write refusal, work-request plans, AH bookkeeping, vendor-error names) are tested on any
//! host. On an EFA-enabled EC2 instance (AWS's EFA installer provides rdma-core and the
//! driver; raise the memlock limit), run the hardware tests from the repository root with
//!
//! ```text
//! cargo test --release -p transport --test efa_hw -- --ignored --test-threads=1
//! ```
//!
//! What only hardware confirms: SRD QP creation and state transitions on the device, RDMA
//! READ/WRITE over SRD with the UD address on every work request, the `UNKNOWN_PEER` rule
//! (the AH pair made by `connect` and `accept`), vendor errors as the device reports them,
//! thread-domain QPs and CQs, and performance.

pub mod addr;
mod endpoint;
mod peers;
mod plan;
pub mod proto;
mod target;
mod twosided;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use ::efa::{Ah, AhAttr, Context, GidEntry, Pd};

pub use ::efa::Gid;
pub use addr::EfaAddress;
pub use plan::{Path, RailCaps, TwoSided, WritePolicy};

use crate::fabric::rdma::registry::MrRegistry;
use crate::fabric::rdma::threads::Threads;
use crate::fabric::regions::Regions;
use crate::fabric::{
    Capabilities, Endpoint, Fabric, MemoryRegion, PeerId, Registration, MAX_RAILS,
};
use crate::{FabricError, Notifications};
use peers::{AhTable, Route, RouteSlot};

/// Settings of an `efa` fabric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EfaConfig {
    /// EFA devices to use as rails, in rail order. Empty: every EFA device.
    pub devices: Vec<String>,
    /// Send-queue depth per rail per endpoint (capped by the device's `max_sq_wr`).
    pub queue_depth: u32,
    /// Receives kept posted on each service QP (notifications in flight towards this engine).
    pub recv_depth: u32,
    /// Q_Key of every QP of this engine (below `0x8000_0000`).
    pub qkey: u32,
    /// Peers this fabric connects to.
    pub max_peers: u32,
    /// Address handles (local rail x remote GID) alive at once.
    pub max_address_handles: usize,
    /// Most registrations.
    pub max_regions: usize,
    /// What to do when a device lacks RDMA WRITE.
    pub write_policy: WritePolicy,
    /// When READ and WRITE travel over SEND/RECV instead of RDMA.
    pub two_sided: TwoSided,
    /// How long a two-sided request whose SEND was delivered waits for the target's reply
    /// before it fails as `UNRESP_REMOTE` (a target that died after receiving it).
    pub reply_timeout: Duration,
    /// Two-sided WRITEs of at least this many bytes use the rendezvous protocol where both
    /// devices have RDMA READ (a request, then the target RDMA-READs the bytes straight from
    /// the initiator's memory: no copies, one round trip; libfabric's "long read"); smaller ones
    /// are sent in messages. 0 turns rendezvous off.
    ///
    /// With rendezvous on (and RDMA READ on every rail), every registration of this engine
    /// grants its devices remote READ, as libfabric's EFA provider registers its buffers:
    /// a peer that learns a registration's rkey (rendezvous requests carry it) can read it.
    /// Turn it off where that matters more than WRITE speed on devices without RDMA WRITE.
    pub rendezvous_min: u64,
    /// Create endpoint QPs and CQs on a thread domain (lock-free provider path) where the
    /// device supports it.
    pub thread_domain: bool,
    /// How long the target thread keeps busy-polling its CQs after the last notification
    /// before it blocks on its completion channels (`cq_events`) or, without them, falls back
    /// to sleeps of up to 500 µs. Covers the gap between the messages of a ping-pong so their
    /// latency is not a wake-up; zero blocks almost at once (least CPU).
    pub idle_spin: Duration,
    /// Once `idle_spin` is over, block the target thread on completion channels (arm its CQs,
    /// poll once more, wait up to 50 ms at a time) instead of sleeping in short intervals: an
    /// idle fabric then costs no CPU. Workers' endpoints get channels too, so a worker that
    /// pauses ([`WaitMode`](crate::WaitMode)) blocks until a completion arrives instead of
    /// sleeping. Devices that cannot raise CQ events (EFA's first
    /// generation) keep the sleeps whatever this says ([`EfaFabric::target_sleeps_on_events`]).
    pub cq_events: bool,
    /// Post WRITEs of up to the device's inline size inline (the data goes in the WQE, so the
    /// NIC reads no memory for them), where the device has RDMA WRITE and libefa has inline
    /// RDMA write (rdma-core 63). Endpoint QPs then use 128-byte WQEs.
    pub inline_write: bool,
    /// Count each endpoint rail's completed work requests on a hardware completion counter
    /// (rdma-core master's `efadv_create_comp_cntr`, devices with `COMP_CNTR`) and poll the
    /// rail's CQ only when the count has moved: while requests are in flight a poll then costs
    /// a read of host memory instead of a provider CQ poll (see the RDMA core's counter gate).
    /// Completions still come from the CQ, one per request, errors included. Off by default;
    /// [`EfaFabric::new`] refuses it with [`FabricError::Device`] on a device or library
    /// without counters.
    pub completion_counters: bool,
    /// Where the target thread runs: on the cores of the devices' NUMA node by default
    /// ([`Affinity`](crate::affinity::Affinity)); [`EfaFabric::local_cpus`](crate::fabric::Fabric::local_cpus)
    /// says what was chosen.
    pub affinity: crate::affinity::Affinity,
}

/// Largest queue and table sizes an efa fabric may be configured for (devices cap queues
/// further).
const MAX_SIZE: u32 = 1 << 16;

/// Refuses settings that cannot work or would exhaust memory, naming the value; before any
/// device is opened.
fn check_config(c: &EfaConfig) -> Result<(), FabricError> {
    use crate::fabric::check_range;
    check_range("efa", "devices", c.devices.len(), 0..=MAX_RAILS)?;
    check_range("efa", "queue_depth", c.queue_depth, 1..=MAX_SIZE)?;
    check_range("efa", "recv_depth", c.recv_depth, 1..=MAX_SIZE)?;
    check_range("efa", "qkey", c.qkey, 0..=0x7fff_ffff)?;
    check_range("efa", "max_peers", c.max_peers, 1..=MAX_SIZE)?;
    let tables = 1..=MAX_SIZE as usize;
    check_range(
        "efa",
        "max_address_handles",
        c.max_address_handles,
        tables.clone(),
    )?;
    check_range("efa", "max_regions", c.max_regions, tables)?;
    crate::fabric::check_nonzero("efa", "reply_timeout", c.reply_timeout)
}

impl Default for EfaConfig {
    fn default() -> Self {
        EfaConfig {
            devices: Vec::new(),
            queue_depth: 256,
            recv_depth: 256,
            qkey: 0x0efa_0001,
            max_peers: 1024,
            max_address_handles: 4096,
            max_regions: 1024,
            write_policy: WritePolicy::IfAvailable,
            two_sided: TwoSided::Fallback,
            reply_timeout: Duration::from_secs(5),
            rendezvous_min: 16 << 10,
            thread_domain: true,
            idle_spin: crate::fabric::rdma::backoff::DEFAULT_IDLE_SPIN,
            cq_events: true,
            inline_write: true,
            completion_counters: false,
            affinity: crate::affinity::Affinity::default(),
        }
    }
}

/// One EFA device of the fabric.
pub(crate) struct Rail {
    pub ctx: Arc<Context>,
    pub pd: Arc<Pd>,
    pub gid: GidEntry,
}

/// State shared by the fabric, its endpoints and its target thread.
pub(crate) struct Shared {
    pub config: EfaConfig,
    pub rails: Vec<Rail>,
    pub caps: Capabilities,
    /// What each rail's device does in hardware.
    pub rail_caps: Vec<RailCaps>,
    /// The smallest port `max_msg_sz` of the rails: the size of every protocol message buffer.
    pub max_msg: u32,
    /// Registrations as the two-sided protocol's target checks them (the segment's own rights,
    /// whatever the device can do).
    pub regions: Regions,
    /// AHs by (local rail, remote GID), shared by initiators (`connect`) and the target.
    pub ahs: Mutex<AhTable<Ah>>,
    /// The device lkey of each registration (by [`Regions`] slot) on each rail, for the RDMA
    /// READ of a rendezvous WRITE.
    pub lkeys: Box<[AtomicU32]>,
    /// Most bytes this engine's target pulls in one rendezvous READ (0: it does not pull).
    pub max_pull: u64,
    pub peers: Box<[RouteSlot<Ah>]>,
    pub notifications: OnceLock<Arc<Notifications>>,
    pub stop: Arc<AtomicBool>,
    /// Whether the target thread blocks on completion channels when idle.
    pub target_events: bool,
    /// CQ poll errors met by endpoints and the target thread (see [`EfaFabric::poll_errors`]).
    pub poll_errors: AtomicU64,
    /// Two-sided requests the target refused or could not answer (see
    /// [`EfaFabric::refused_requests`]).
    pub bad_requests: AtomicU64,
}

/// Peer ids by fabric instance, and by the GIDs a peer's rails sit on: a restarted peer (a new
/// instance on the same GIDs) takes its predecessor's id and slot, with a new route.
struct PeerIds {
    by_instance: HashMap<u64, PeerId>,
    by_gids: HashMap<(Vec<::efa::Gid>, u64), (PeerId, u64)>,
    next: PeerId,
}

/// One engine's EFA devices. See the [module docs](self).
pub struct EfaFabric {
    /// First: dropped (stopped and joined) before the rest of the fabric.
    _threads: Threads,
    /// The cpus the target thread was pinned to.
    cpus: Option<crate::affinity::CpuSet>,
    shared: Arc<Shared>,
    addresses: Vec<EfaAddress>,
    /// [`addr::identity`] of the engine's name, once bound.
    identity: OnceLock<u64>,
    ids: Mutex<PeerIds>,
    registry: MrRegistry,
    /// The [`Regions`] key of each registration, by its handle.
    region_keys: Mutex<HashMap<u64, u64>>,
}

impl std::fmt::Debug for EfaFabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EfaFabric")
            .field("addresses", &self.addresses())
            .field("capabilities", &self.shared.caps)
            .field("protocols", &self.protocols())
            .finish_non_exhaustive()
    }
}

fn io(what: impl std::fmt::Display, e: ::efa::Error) -> FabricError {
    FabricError::device("efa", what, e)
}

impl Shared {
    /// The device lkey of the registration in [`Regions`] slot `region` on rail `rail`.
    pub(crate) fn lkey(&self, region: usize, rail: u16) -> u32 {
        let i = region * self.rails.len() + usize::from(rail);
        self.lkeys.get(i).map_or(0, |k| k.load(Ordering::Acquire))
    }
}

impl EfaFabric {
    /// Whether the target thread blocks on completion channels once idle
    /// ([`EfaConfig::cq_events`] and every device able to raise CQ events), rather than
    /// sleeping in intervals of up to 500 µs.
    pub fn target_sleeps_on_events(&self) -> bool {
        self.shared.target_events
    }

    /// How many CQ polls failed, in endpoints and the target thread. A failed poll loses no
    /// completion; an endpoint whose CQ fails moves that rail's QP to the error state, so its
    /// outstanding requests complete as flushed instead of waiting for ever.
    pub fn poll_errors(&self) -> u64 {
        self.shared.poll_errors.load(Ordering::Relaxed)
    }

    /// How many two-sided requests this engine's target refused (bad key, range, rights or
    /// length: each answered with an error) or dropped (malformed, or from an initiator it has
    /// no address handle for).
    pub fn refused_requests(&self) -> u64 {
        self.shared.bad_requests.load(Ordering::Relaxed)
    }

    /// How this engine's rails carry READ (`write: false`) or WRITE towards a peer whose
    /// devices have every RDMA operation: [`Path::Hardware`] (RDMA) or [`Path::TwoSided`]
    /// (SEND/RECV); `None` when the operation is refused ([`TwoSided::Never`] on a device that
    /// lacks it). Towards a peer without the operation, the two-sided path is taken (unless
    /// refused).
    pub fn path(&self, write: bool) -> Option<Path> {
        let bit = if write {
            addr::RDMA_WRITE
        } else {
            addr::RDMA_READ
        };
        let local = self
            .shared
            .rail_caps
            .iter()
            .fold(bit, |b, r| b & r.rdma_bits());
        let mode = self.shared.config.two_sided;
        match plan::path(write, local, bit, mode) {
            Path::Hardware if local == 0 => None,
            p => Some(p),
        }
    }

    /// [`path`](Self::path) of READ and WRITE in words, e.g. `read: rdma, write: two-sided
    /// (SEND/RECV, rendezvous from 16384 bytes)`.
    pub fn protocols(&self) -> String {
        let name = |write: bool| match self.path(write) {
            Some(Path::Hardware) => "rdma".to_owned(),
            Some(Path::TwoSided) if write && self.shared.max_pull > 0 => format!(
                "two-sided (SEND/RECV, rendezvous from {} bytes)",
                self.shared.config.rendezvous_min
            ),
            Some(Path::TwoSided) => "two-sided (SEND/RECV)".to_owned(),
            None => "refused".to_owned(),
        };
        format!("read: {}, write: {}", name(false), name(true))
    }

    /// Opens the EFA devices, decides the capabilities, creates the service QPs and starts the
    /// target thread.
    ///
    /// # Errors
    ///
    /// [`FabricError::BadConfig`] names a setting out of range; [`FabricError::NoDevice`] when
    /// no EFA device is present; [`FabricError::Device`] when a device cannot be opened or set up
    /// (the cause is the [`efa::Error`]: the verbs call, its errno and the value at
    /// fault, or the loader's error); [`FabricError::DeviceUnfit`] when a device lacks what the
    /// configuration requires.
    pub fn new(config: EfaConfig) -> Result<Arc<EfaFabric>, FabricError> {
        check_config(&config)?;
        let names = if config.devices.is_empty() {
            ::efa::efa_devices()
                .map_err(|e| io("list devices", e))?
                .into_iter()
                .map(|d| d.name)
                .collect()
        } else {
            config.devices.clone()
        };
        if names.is_empty() {
            return Err(FabricError::NoDevice {
                fabric: "efa",
                wanted: "EFA device",
            });
        }
        let mut rails = Vec::with_capacity(names.len());
        let mut rail_caps = Vec::with_capacity(names.len());
        for name in &names {
            let ctx = Context::open(name).map_err(|e| io(format_args!("open {name}"), e))?;
            let attr = *ctx.require_efa().map_err(|e| io(name, e))?;
            let port = ctx
                .query_port(1)
                .map_err(|e| io(format_args!("{name} port"), e))?;
            rail_caps.push(RailCaps::from_device(name, &attr, port.max_msg_sz));
            let gid = ctx
                .preferred_gid(1)
                .map_err(|e| io(format_args!("{name} GID"), e))?;
            let pd = Pd::new(&ctx).map_err(|e| io(format_args!("{name} PD"), e))?;
            if config.completion_counters {
                // Refused here, by name, rather than at the first worker.
                endpoint::rail_counter(&ctx)
                    .map_err(|e| io(format_args!("{name} completion counter"), e))?;
            }
            rails.push(Rail { ctx, pd, gid });
        }
        let caps = plan::decide(
            &rail_caps,
            config.queue_depth,
            config.write_policy,
            config.two_sided,
        )?;
        let max_msg = u32::try_from(caps.max_message_size).unwrap_or(u32::MAX);
        if (max_msg as usize) <= proto::HEADER_LEN {
            return Err(FabricError::DeviceUnfit {
                fabric: "efa",
                device: names.join(","),
                reason: format!(
                    "port max_msg_sz {max_msg} leaves no room for a {}-byte protocol header",
                    proto::HEADER_LEN
                ),
            });
        }
        let instance = crate::fabric::rdma::random_u64();
        let service = target::Service::new(&rails, &config, max_msg)?;
        let addresses = service
            .qpns()
            .enumerate()
            .map(|(i, qpn)| EfaAddress {
                rail: i as u16,
                instance,
                identity: 0,
                gid: rails[i].gid.gid,
                qpn,
                qkey: config.qkey,
                rdma: rail_caps[i].rdma_bits(),
            })
            .collect();
        let (config_max_regions, config_max_ahs) = (config.max_regions, config.max_address_handles);
        let names_len = rails.len();
        let max_pull = if config.rendezvous_min > 0 && rail_caps.iter().all(|r| r.read) {
            caps.max_transfer_size
        } else {
            0
        };
        let shared = Arc::new(Shared {
            peers: (0..config.max_peers).map(|_| RouteSlot::new()).collect(),
            config,
            rails,
            caps,
            rail_caps,
            max_msg,
            regions: Regions::new(config_max_regions),
            lkeys: (0..config_max_regions.clamp(1, 1 << 16) * names_len)
                .map(|_| AtomicU32::new(0))
                .collect(),
            max_pull,
            ahs: Mutex::new(AhTable::new(config_max_ahs)),
            notifications: OnceLock::new(),
            stop: Arc::new(AtomicBool::new(false)),
            target_events: service.has_events(),
            poll_errors: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
        });
        let cpus = crate::fabric::rdma::threads::rail_cpus(
            "efa",
            "target thread",
            &shared.config.affinity,
            shared.rails.iter().map(|r| &r.ctx),
        )?;
        let thread = target::start(shared.clone(), service, cpus)?;
        let registry = MrRegistry::new(
            shared.rails.iter().map(|r| r.pd.clone()).collect(),
            shared.config.max_regions,
        );
        Ok(Arc::new(EfaFabric {
            _threads: Threads::new(shared.stop.clone(), vec![thread]),
            cpus,
            shared,
            addresses,
            identity: OnceLock::new(),
            ids: Mutex::new(PeerIds {
                by_instance: HashMap::new(),
                by_gids: HashMap::new(),
                next: 0,
            }),
            registry,
            region_keys: Mutex::new(HashMap::new()),
        }))
    }

    /// This engine's per-rail addresses, decoded.
    pub fn addresses(&self) -> Vec<EfaAddress> {
        let identity = self.identity.get().copied().unwrap_or(0);
        let with = |a: &EfaAddress| EfaAddress { identity, ..*a };
        self.addresses.iter().map(with).collect()
    }

    fn create_ah(&self, rail: u16, gid: ::efa::Gid) -> Result<Arc<Ah>, FabricError> {
        let r = &self.shared.rails[usize::from(rail)];
        let sgid = u8::try_from(r.gid.index).unwrap_or(0);
        Ah::new(&r.pd, AhAttr::new(gid, sgid))
            .map_err(|e| io(format_args!("{} AH to {gid}", r.ctx.name()), e))
    }
}

impl Fabric for EfaFabric {
    fn name(&self) -> &str {
        "efa"
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.caps.clone()
    }

    fn local_addresses(&self) -> Vec<Vec<u8>> {
        self.addresses().iter().map(|a| a.encode()).collect()
    }

    unsafe fn register(&self, region: MemoryRegion) -> Result<Registration, FabricError> {
        // SAFETY: forwarded from the caller (same contract).
        unsafe { self.register_on(region, &self.registry.all_rails()) }
    }

    unsafe fn register_on(
        &self,
        region: MemoryRegion,
        rails: &crate::RailSet,
    ) -> Result<Registration, FabricError> {
        let mut access = plan::mr_access(region.access, &self.shared.rail_caps);
        if self.shared.max_pull > 0 {
            // Rendezvous WRITEs are read from this memory by the target's device.
            access |= ::efa::Access::REMOTE_READ;
        }
        // SAFETY: forwarded from the caller (same contract).
        let mut reg = unsafe { self.registry.register_with(region, access, rails)? };
        let Some(key) = self
            .shared
            .regions
            .register(region.addr, region.len, region.access)
        else {
            let _ = self.registry.deregister(reg.handle);
            return Err(FabricError::Exhausted("efa memory regions"));
        };
        let short = Regions::short_key(key);
        let n_rails = self.shared.rails.len();
        for (rail, k) in reg.remote_keys.iter_mut().enumerate() {
            let slot = (key & 0xffff) as usize * n_rails + rail;
            if k.is_empty() {
                // Not registered on this rail: no peer targets it.
                self.shared.lkeys[slot].store(0, Ordering::Release);
                continue;
            }
            let rkey = crate::fabric::rdma::codec::decode_rkey(rail as u16, k)? as u32;
            *k = addr::encode_key(rkey, short);
            // Work requests carry the rkey beside the lkey (a rendezvous request names it).
            let lkey = reg.local_keys[rail] as u32;
            reg.local_keys[rail] = (u64::from(rkey) << 32) | u64::from(lkey);
            self.shared.lkeys[slot].store(lkey, Ordering::Release);
        }
        self.region_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(reg.handle, key);
        Ok(reg)
    }

    fn deregister(&self, registration: &Registration) -> Result<(), FabricError> {
        let key = self
            .region_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&registration.handle);
        // First the protocol's view (waits for the target thread to finish with the memory),
        // then the device's.
        if let Some(key) = key {
            self.shared.regions.deregister(key);
        }
        self.registry.deregister(registration.handle)
    }

    fn decode_remote_key(&self, rail: u16, key: &[u8]) -> Result<u64, FabricError> {
        addr::decode_key(rail, key)
    }

    fn connect(&self, remote: &[Vec<u8>]) -> Result<PeerId, FabricError> {
        let addrs = EfaAddress::decode_all(remote)?;
        let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        let instance = addrs[0].instance;
        if let Some(&id) = ids.by_instance.get(&instance) {
            return Ok(id);
        }
        let gids: Vec<::efa::Gid> = addrs.iter().map(|a| a.gid).collect();
        // The same engine (name) on the same devices with a new instance is a restart.
        let gids = (gids, addrs[0].identity);
        let restarted = ids.by_gids.get(&gids).copied();
        let id = restarted.map_or(ids.next, |(id, _)| id);
        let slot = self
            .shared
            .peers
            .get(id as usize)
            .ok_or(FabricError::Exhausted("efa peers"))?;
        let route = {
            let mut table = self
                .shared
                .ahs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Route::build(
                self.shared.rails.len() as u16,
                &addrs,
                &mut table,
                |l, gid| self.create_ah(l, gid),
                || FabricError::Exhausted("efa address handles"),
            )?
        };
        slot.set(route);
        match restarted {
            Some((_, old)) => {
                ids.by_instance.remove(&old);
            }
            None => ids.next += 1,
        }
        ids.by_instance.insert(instance, id);
        ids.by_gids.insert(gids, (id, instance));
        Ok(id)
    }

    fn accept(&self, initiator: &[Vec<u8>]) -> Result<(), FabricError> {
        let addrs = EfaAddress::decode_all(initiator)?;
        let mut table = self
            .shared
            .ahs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for l in 0..self.shared.rails.len() as u16 {
            for a in &addrs {
                table.get_or_create(
                    l,
                    a.gid,
                    || self.create_ah(l, a.gid),
                    || FabricError::Exhausted("efa address handles"),
                )?;
            }
        }
        Ok(())
    }

    fn bind_notifications(&self, sink: Arc<Notifications>) {
        let _ = self.shared.notifications.set(sink);
    }

    fn bind_name(&self, name: &str) {
        let _ = self.identity.set(addr::identity(name));
    }

    fn local_cpus(&self) -> Option<crate::affinity::CpuSet> {
        self.cpus
    }

    fn endpoint(&self) -> Result<Box<dyn Endpoint>, FabricError> {
        Ok(Box::new(endpoint::new_endpoint(self.shared.clone())?))
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn config_is_checked_before_any_device() {
        type Edit = fn(&mut EfaConfig);
        let cases: [(&str, Edit); 5] = [
            ("qkey", |c| c.qkey = 0x8000_0000),
            ("recv_depth", |c| c.recv_depth = 0),
            ("queue_depth", |c| c.queue_depth = u32::MAX),
            ("max_peers", |c| c.max_peers = u32::MAX),
            ("max_address_handles", |c| c.max_address_handles = 1 << 40),
        ];
        for (field, edit) in cases {
            let mut c = EfaConfig::default();
            edit(&mut c);
            match EfaFabric::new(c) {
                Err(FabricError::BadConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {:?}", other.map(|_| ())),
            }
        }
    }
}

//! `verbs`: RDMA over reliable-connected (RC) queue pairs of any non-EFA verbs device
//! (Soft-RoCE `rxe`, ConnectX-class RoCE or InfiniBand).
//!
//! # Shape
//!
//! - **Rails** are devices (one port each). Each rail addresses its QPs by the port's preferred
//!   GID: the RoCE v2 IPv4-mapped entry where there is one (index 1 on `rxe`).
//! - **Connections**: RC is point to point, so a published address cannot name a QP. It names
//!   the engine's *connection service* instead (a TCP port on the IPv4 address of the GID, or
//!   [`VerbsConfig::service_ip`]). [`Fabric::connect`] creates, for each of the
//!   [`VerbsConfig::max_endpoints`] endpoint slots, one RC QP per local rail per remote rail,
//!   sends their QPN/PSN/GID/MTU to the target's service (a length-prefixed, versioned
//!   TCP exchange), and connects them to the QPs the target created in answer. The target side
//!   of that handshake is this fabric's [`Fabric::accept`] path; an out-of-band `accept` has
//!   nothing left to do.
//! - **One QP pair each way**: a connection carries both directions. Once the initiator has
//!   confirmed that its QPs are connected, the target takes the sets it built in answer as its
//!   own connection to the initiator's engine, so its later [`Fabric::connect`] to that engine
//!   runs no handshake and its endpoints post on the other end of the initiator's QPs (as
//!   perftest's two sides share one QP pair). Where both engines connect at the same moment each
//!   keeps its own, and [`VerbsFabric::connections`] tells which happened.
//! - **Endpoints** (one per worker) claim a slot and own that slot's QPs and CQs of every peer
//!   they post to (taken from the fabric once per peer, on the first post). Posting and polling
//!   then touch only endpoint-owned objects: no lock, no allocation, one doorbell per run of
//!   work requests to the same QP, batch polls into a fixed array.
//! - **Notifications** are zero-length SENDs with immediate data (the tag). Every QP takes its
//!   receives from its rail's shared receive queue ([`VerbsConfig::recv_depth`] of them) and
//!   completes them into the rail's receive CQ, which one target thread per fabric polls: it
//!   counts tags with [`Notifications::record`] and reposts. A notification's completion at
//!   the initiator means the target's device acknowledged it; the count follows when the
//!   target thread polls (at once within [`VerbsConfig::idle_spin`] of the last notification,
//!   else when the completion wakes the idle thread from its completion channel, or within half
//!   a millisecond of its sleep on a device without CQ events), so a target waits with
//!   [`Notifications::wait_for`]. The target thread also creates every QP (it owns the CQ and
//!   queue they share), woken by an `eventfd` when a connection needs one.
//! - **Dead peers**: RC retransmits with the ACK timeout derived from
//!   [`VerbsConfig::unresponsive_timeout`]; when retries run out the request fails with
//!   `UNRESP_REMOTE`.
//! - **Failed connections**: RC moves a QP to the error state on any failed work request, and
//!   the requests behind it in that QP complete with `FLUSHED`; as a connection carries both
//!   directions, the peer's requests on it fail too (both are transient reasons, which the
//!   engine's [`RetryPolicy`](crate::RetryPolicy) posts again). Once the endpoint has drained
//!   them, its next post to that peer connects a new QP set (one handshake); after a failed
//!   attempt it waits a second before the next, failing requests with `UNREACH_REMOTE`
//!   meanwhile. The target keeps the QPs it built for a peer's connections until the fabric
//!   drops (or, once in the error state, until it needs room for new ones).
//!
//! [`Notifications::record`]: crate::Notifications::record
//! [`Notifications::wait_for`]: crate::Notifications::wait_for

pub mod addr;
mod conn;
mod endpoint;
mod handshake;
mod service;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use ::efa::{Context, DeviceKind, GidEntry, Mtu, Pd, PortState};

use crate::fabric::rdma::codec::decode_rkey;
pub(crate) use crate::fabric::rdma::random_u64;
use crate::fabric::rdma::registry::MrRegistry;
use crate::fabric::rdma::threads::Threads;
use crate::fabric::{
    Capabilities, Endpoint, Fabric, MemoryRegion, PeerId, Registration, MAX_RAILS,
};
use crate::{FabricError, Notifications};
pub use addr::{QpAddress, RailAddress};
use conn::QpSet;

/// Settings of a `verbs` fabric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerbsConfig {
    /// Devices to use as rails, in rail order. Empty: the first non-EFA device with an active
    /// port.
    pub devices: Vec<String>,
    /// Port of every device (1).
    pub port: u8,
    /// GID index on every device; `None` picks the preferred GID (RoCE v2 IPv4-mapped first).
    pub gid_index: Option<u32>,
    /// Send-queue depth per QP (per rail per peer per endpoint).
    pub queue_depth: u32,
    /// Receives kept posted in each rail's shared receive queue: notifications in flight to
    /// this engine per rail, from every peer together (a sender past them waits for the RNR
    /// retry). Capped by the device's `max_srq_wr` and by `target_cq_depth`.
    pub recv_depth: u32,
    /// Entries of each rail's receive CQ, into which every QP of the rail completes its
    /// receives (at least `recv_depth`).
    pub target_cq_depth: u32,
    /// Endpoints (workers) alive at once; every connection creates QPs for each.
    pub max_endpoints: u16,
    /// Peers this fabric connects to.
    pub max_peers: u32,
    /// Most registrations.
    pub max_regions: usize,
    /// Cap on one READ/WRITE work request (further capped by the port's `max_msg_sz`).
    pub max_transfer_size: u64,
    /// WRITEs of at most this many bytes are posted inline: the provider copies them into the
    /// work request, and the device reads no local memory for them (perftest's latency tests
    /// post inline too). Each initiator QP asks for this much inline data; a device that
    /// refuses gets QPs without (0 turns inline WRITEs off).
    pub inline_size: u32,
    /// How long RC retransmits to a silent peer before its requests fail with
    /// `UNRESP_REMOTE` (rounded to the RC ACK-timeout grid).
    pub unresponsive_timeout: Duration,
    /// IPv4 address the connection service binds and advertises; `None` uses the address
    /// in the first rail's IPv4-mapped GID.
    pub service_ip: Option<Ipv4Addr>,
    /// TCP port of the connection service; 0 picks a free one.
    pub service_port: u16,
    /// Limit of each connection handshake.
    pub handshake_timeout: Duration,
    /// How long the target thread keeps busy-polling its CQs after the last notification
    /// before it blocks on its completion channels (`cq_events`) or, without them, falls back
    /// to sleeps of up to 500 µs. Covers the gap between the messages of a ping-pong so their
    /// latency is not a wake-up; zero blocks almost at once (least CPU).
    pub idle_spin: Duration,
    /// Once `idle_spin` is over, block the target thread on completion channels (arm its CQs,
    /// poll once more, wait up to 50 ms at a time; a connection request may then wait as long
    /// for the thread) instead of sleeping in short intervals, so an idle fabric costs no CPU.
    /// Each endpoint slot's send CQs get channels too, so a worker that pauses
    /// ([`WaitMode`](crate::WaitMode)) blocks until a completion arrives instead of sleeping.
    /// Devices that cannot raise CQ events keep the sleeps.
    pub cq_events: bool,
    /// Where the target and connection-service threads run: on the cores of the devices' NUMA
    /// node by default ([`Affinity`](crate::affinity::Affinity)).
    pub affinity: crate::affinity::Affinity,
}

/// Largest queue and table sizes a verbs fabric may be configured for (devices cap queues
/// further).
const MAX_SIZE: u32 = 1 << 16;
/// Inline bytes an initiator QP asks for by default: small WRITEs (flags, pings, doorbells of
/// the layers above) without growing the send WQE much.
pub const DEFAULT_INLINE: u32 = 64;
/// Most inline bytes a verbs fabric may ask for (devices grant far less).
const MAX_INLINE: u32 = 4096;

/// Refuses settings that cannot work or would exhaust memory, naming the value; before any
/// device is opened.
fn check_config(c: &VerbsConfig) -> Result<(), FabricError> {
    use crate::fabric::{check_nonzero, check_range};
    check_range("verbs", "devices", c.devices.len(), 0..=MAX_RAILS)?;
    check_range("verbs", "queue_depth", c.queue_depth, 1..=MAX_SIZE)?;
    check_range(
        "verbs",
        "target_cq_depth",
        c.target_cq_depth,
        1..=MAX_SIZE * 64,
    )?;
    check_range("verbs", "recv_depth", c.recv_depth, 1..=c.target_cq_depth)?;
    check_range("verbs", "max_endpoints", c.max_endpoints, 1..=64)?;
    check_range("verbs", "max_peers", c.max_peers, 1..=MAX_SIZE)?;
    check_range("verbs", "max_regions", c.max_regions, 1..=MAX_SIZE as usize)?;
    check_range("verbs", "inline_size", c.inline_size, 0..=MAX_INLINE)?;
    check_range(
        "verbs",
        "max_transfer_size",
        c.max_transfer_size,
        1..=u64::MAX,
    )?;
    check_nonzero("verbs", "unresponsive_timeout", c.unresponsive_timeout)?;
    check_nonzero("verbs", "handshake_timeout", c.handshake_timeout)
}

impl Default for VerbsConfig {
    fn default() -> Self {
        VerbsConfig {
            devices: Vec::new(),
            port: 1,
            gid_index: None,
            queue_depth: 256,
            recv_depth: 4096,
            target_cq_depth: 16384,
            max_endpoints: 4,
            max_peers: 64,
            max_regions: 1024,
            max_transfer_size: 1 << 30,
            inline_size: DEFAULT_INLINE,
            unresponsive_timeout: Duration::from_secs(4),
            service_ip: None,
            service_port: 0,
            handshake_timeout: Duration::from_secs(5),
            idle_spin: crate::fabric::rdma::backoff::DEFAULT_IDLE_SPIN,
            cq_events: true,
            affinity: crate::affinity::Affinity::default(),
        }
    }
}

/// How a fabric's connections came about (see [`VerbsFabric::connections`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerbsConnections {
    /// Handshakes this fabric ran as initiator (a `connect`, or an endpoint connecting a slot
    /// again after a failure).
    pub dialed: u64,
    /// Handshakes this fabric answered for a peer.
    pub answered: u64,
    /// Peers this fabric posts to over the QPs it built in answer to theirs, with no handshake
    /// of its own.
    pub adopted: u64,
}

/// The counters behind [`VerbsConnections`].
#[derive(Default)]
pub(crate) struct ConnectionCounts {
    pub dialed: AtomicU64,
    pub answered: AtomicU64,
    pub adopted: AtomicU64,
}

/// One device of the fabric.
pub(crate) struct Rail {
    pub ctx: Arc<Context>,
    pub pd: Arc<Pd>,
    pub gid: GidEntry,
    pub lid: u16,
    pub mtu: Mtu,
    pub max_msg: u32,
    /// RDMA READs in flight per QP, each direction (device limit, at most 16).
    pub rd_atomic: u8,
}

/// A connected peer: per endpoint slot, its QP set until an endpoint takes it.
pub(crate) struct Peer {
    /// The peer's published addresses, to connect a slot again after a failure.
    pub addrs: Vec<RailAddress>,
    /// `None` while an endpoint holds the slot's set, or after a failed connection was dropped
    /// (the slot's next endpoint connects it again).
    pub sets: Box<[Mutex<Option<QpSet>>]>,
}

/// Peer ids by engine instance, and the next id to give.
pub(crate) struct PeerIds {
    pub by_instance: HashMap<u64, PeerId>,
    pub next: PeerId,
}

impl PeerIds {
    /// Whether `table` has an entry left for the next peer.
    fn has_room(&self, table: &[OnceLock<Peer>]) -> bool {
        table.get(self.next as usize).is_some()
    }

    /// Enters `peer`, the engine `instance`, under the next id of `table`; gives it back when
    /// the table is full.
    pub(crate) fn add(
        &mut self,
        table: &[OnceLock<Peer>],
        instance: u64,
        peer: Peer,
    ) -> Result<PeerId, Peer> {
        let id = self.next;
        match table.get(id as usize) {
            Some(entry) => entry.set(peer)?,
            None => return Err(peer),
        }
        self.by_instance.insert(instance, id);
        self.next += 1;
        Ok(id)
    }
}

/// State shared by the fabric, its endpoints and its threads.
pub(crate) struct Shared {
    pub config: VerbsConfig,
    pub rails: Vec<Rail>,
    pub instance: u64,
    pub service: SocketAddr,
    pub peers: Box<[OnceLock<Peer>]>,
    /// Held through a connect (a second connect to the same peer waits and then finds it);
    /// the target thread only tries it ([`Shared::adopt`]).
    pub ids: Mutex<PeerIds>,
    /// The target thread's job queue.
    pub jobs: service::Jobs,
    pub counts: ConnectionCounts,
    pub slots_in_use: AtomicU64,
    /// Per endpoint slot, one completion channel per rail for the slot's send CQs, so a waiting
    /// worker blocks on them (`cq_events`); empty where the devices cannot make channels.
    pub slot_channels: Box<[Vec<::efa::CompChannel>]>,
    pub notifications: OnceLock<Arc<Notifications>>,
    pub stop: Arc<AtomicBool>,
    pub max_transfer: u64,
    /// RC ACK timeout exponent (4.096 us x 2^t).
    pub ack_timeout: u8,
}

impl Shared {
    /// The published address of `rail`.
    pub(crate) fn rail_address(&self, rail: usize) -> RailAddress {
        let r = &self.rails[rail];
        let ip = match self.service.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        RailAddress {
            rail: rail as u16,
            instance: self.instance,
            gid: r.gid.gid,
            lid: r.lid,
            mtu: r.mtu,
            rd_atomic: r.rd_atomic,
            ip,
            port: self.service.port(),
        }
    }
}

/// One engine's RC verbs devices. See the [module docs](self).
pub struct VerbsFabric {
    /// First: dropped (stopped and joined) before the rest of the fabric.
    _threads: Threads,
    /// The cpus the fabric's threads were pinned to.
    cpus: Option<crate::affinity::CpuSet>,
    shared: Arc<Shared>,
    registry: MrRegistry,
}

impl std::fmt::Debug for VerbsFabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsFabric")
            .field(
                "rails",
                &self
                    .shared
                    .rails
                    .iter()
                    .map(|r| r.ctx.name())
                    .collect::<Vec<_>>(),
            )
            .field("service", &self.shared.service)
            .field("instance", &format_args!("{:#x}", self.shared.instance))
            .finish_non_exhaustive()
    }
}

fn io(what: impl std::fmt::Display, e: ::efa::Error) -> FabricError {
    FabricError::device("verbs", what, e)
}

/// Transport retries of every RC QP. Not 7: Soft-RoCE treats 7 like `rnr_retry` 7, as
/// "retry forever", and a dead peer would never be reported.
pub(crate) const RETRY_CNT: u8 = 6;

/// The RC ACK-timeout exponent so that `1 + RETRY_CNT` tries last about `total`.
pub(crate) fn ack_timeout_exponent(total: Duration) -> u8 {
    let per_try_ns = total.as_nanos() / (1 + u128::from(RETRY_CNT));
    let mut t = 1u8;
    // 4.096 us x 2^t >= per try.
    while t < 31 && 4096u128 << t < per_try_ns {
        t += 1;
    }
    t
}

fn open_rail(name: &str, config: &VerbsConfig) -> Result<Rail, FabricError> {
    let ctx = Context::open(name).map_err(|e| io(format_args!("open {name}"), e))?;
    if ctx.is_efa() {
        return Err(FabricError::Unsupported {
            what: "RC queue pairs on EFA devices (use the efa fabric)",
        });
    }
    let port = ctx
        .query_port(config.port)
        .map_err(|e| io(format_args!("{name} port {}", config.port), e))?;
    if port.state != PortState::Active {
        return Err(FabricError::DeviceUnfit {
            fabric: "verbs",
            device: name.to_string(),
            reason: format!("port {} is not active ({:?})", config.port, port.state),
        });
    }
    let gid = match config.gid_index {
        Some(i) => ctx
            .gid_entry(config.port, i)
            .map_err(|e| io(format_args!("{name} GID {i}"), e))?,
        None => ctx
            .preferred_gid(config.port)
            .map_err(|e| io(format_args!("{name} GID table"), e))?,
    };
    // As many READs in flight per QP as the device takes (perftest's default out_reads): 16 on
    // most HCAs, 128 on rxe, where a link's round trip otherwise caps READ bandwidth.
    let rd = ctx.device_attr().rc_read_depth();
    let pd = Pd::new(&ctx).map_err(|e| io(format_args!("{name} PD"), e))?;
    Ok(Rail {
        pd,
        gid,
        lid: port.lid,
        mtu: port.active_mtu,
        max_msg: port.max_msg_sz,
        rd_atomic: rd,
        ctx,
    })
}

fn default_device() -> Result<String, FabricError> {
    let list = ::efa::devices().map_err(|e| io("list devices", e))?;
    for d in list.iter().filter(|d| d.kind != DeviceKind::Efa) {
        if let Ok(ctx) = d.open() {
            if ctx
                .query_port(1)
                .map(|p| p.state == PortState::Active)
                .unwrap_or(false)
            {
                return Ok(d.name.clone());
            }
        }
    }
    Err(FabricError::NoDevice {
        fabric: "verbs",
        wanted: "non-EFA verbs device with an active port 1",
    })
}

impl VerbsFabric {
    /// Opens the devices, starts the connection service and the target thread.
    ///
    /// # Errors
    ///
    /// [`FabricError::BadConfig`] names a setting out of range; [`FabricError::NoDevice`] when
    /// no usable verbs device is present; [`FabricError::Device`] when a device cannot be opened or
    /// set up (the cause is the [`efa::Error`]); [`FabricError::DeviceUnfit`] for an
    /// inactive port or a GID without IPv4; [`FabricError::Os`] when the connection service cannot
    /// bind or start.
    pub fn new(config: VerbsConfig) -> Result<Arc<VerbsFabric>, FabricError> {
        check_config(&config)?;
        let names = if config.devices.is_empty() {
            vec![default_device()?]
        } else {
            config.devices.clone()
        };
        let rails = names
            .iter()
            .map(|n| open_rail(n, &config))
            .collect::<Result<Vec<_>, _>>()?;
        let ip = match config.service_ip {
            Some(ip) => ip,
            None => rails[0]
                .gid
                .gid
                .ipv4()
                .ok_or_else(|| FabricError::DeviceUnfit {
                    fabric: "verbs",
                    device: rails[0].ctx.name().to_string(),
                    reason: format!(
                        "GID {} is not IPv4-mapped; set service_ip",
                        rails[0].gid.gid
                    ),
                })?,
        };
        let listener = std::net::TcpListener::bind((ip, config.service_port)).map_err(|e| {
            FabricError::os("verbs", format_args!("bind connection service on {ip}"), e)
        })?;
        let service = listener
            .local_addr()
            .map_err(|e| FabricError::os("verbs", "read the service address", e))?;
        let max_transfer = rails
            .iter()
            .map(|r| u64::from(r.max_msg))
            .min()
            .unwrap_or(0)
            .min(config.max_transfer_size)
            .min(u64::from(u32::MAX));
        if max_transfer == 0 {
            return Err(FabricError::DeviceUnfit {
                fabric: "verbs",
                device: names.join(","),
                reason: "port max_msg_sz is 0".into(),
            });
        }
        let target = service::Target::new(&rails, &config)?;
        let (jobs, job_rx) = service::Jobs::new()?;
        let slot_channels = (0..config.max_endpoints)
            .map(|_| match config.cq_events {
                true => rails
                    .iter()
                    .map(|r| ::efa::CompChannel::new(&r.ctx))
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap_or_default(),
                false => Vec::new(),
            })
            .collect();
        let shared = Arc::new(Shared {
            slot_channels,
            peers: (0..config.max_peers).map(|_| OnceLock::new()).collect(),
            ids: Mutex::new(PeerIds {
                by_instance: HashMap::new(),
                next: 0,
            }),
            jobs,
            counts: ConnectionCounts::default(),
            ack_timeout: ack_timeout_exponent(config.unresponsive_timeout),
            config,
            rails,
            instance: random_u64(),
            service,
            slots_in_use: AtomicU64::new(0),
            notifications: OnceLock::new(),
            stop: Arc::new(AtomicBool::new(false)),
            max_transfer,
        });
        let cpus = crate::fabric::rdma::threads::rail_cpus(
            "verbs",
            "target and service threads",
            &shared.config.affinity,
            shared.rails.iter().map(|r| &r.ctx),
        )?;
        let threads = service::start(shared.clone(), listener, target, job_rx, cpus)?;
        let registry = MrRegistry::new(
            shared.rails.iter().map(|r| r.pd.clone()).collect(),
            shared.config.max_regions,
        );
        Ok(Arc::new(VerbsFabric {
            _threads: Threads::new(shared.stop.clone(), threads).waking(shared.service),
            cpus,
            shared,
            registry,
        }))
    }

    /// The connection service's socket address.
    pub fn service_address(&self) -> SocketAddr {
        self.shared.service
    }

    /// How this fabric's connections came about so far: handshakes dialed and answered, and
    /// peers reached over a connection they made (one RC QP pair serves both directions).
    pub fn connections(&self) -> VerbsConnections {
        let c = &self.shared.counts;
        VerbsConnections {
            dialed: c.dialed.load(Ordering::Relaxed),
            answered: c.answered.load(Ordering::Relaxed),
            adopted: c.adopted.load(Ordering::Relaxed),
        }
    }
}

impl Fabric for VerbsFabric {
    fn name(&self) -> &str {
        "verbs"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            rails: self.shared.rails.len() as u16,
            max_transfer_size: self.shared.max_transfer,
            max_message_size: self.shared.max_transfer,
            queue_depth: self.shared.config.queue_depth,
            supports_read: true,
            supports_write: true,
            supports_notify: true,
            // RC: a WRITE with immediate places its bytes before it consumes the receive that
            // carries the tag.
            supports_write_notify: true,
        }
    }

    fn local_addresses(&self) -> Vec<Vec<u8>> {
        (0..self.shared.rails.len())
            .map(|r| self.shared.rail_address(r).encode())
            .collect()
    }

    unsafe fn register(&self, region: MemoryRegion) -> Result<Registration, FabricError> {
        // SAFETY: forwarded from the caller (same contract).
        unsafe { self.registry.register(region) }
    }

    unsafe fn register_on(
        &self,
        region: MemoryRegion,
        rails: &crate::RailSet,
    ) -> Result<Registration, FabricError> {
        let access = crate::fabric::rdma::registry::mr_access(region.access);
        // SAFETY: forwarded from the caller (same contract).
        unsafe { self.registry.register_with(region, access, rails) }
    }

    fn deregister(&self, registration: &Registration) -> Result<(), FabricError> {
        self.registry.deregister(registration.handle)
    }

    fn decode_remote_key(&self, rail: u16, key: &[u8]) -> Result<u64, FabricError> {
        decode_rkey(rail, key)
    }

    fn connect(&self, remote: &[Vec<u8>]) -> Result<PeerId, FabricError> {
        let addrs = RailAddress::decode_all(remote)?;
        // Held through the handshake: a second connect to the same peer waits and then finds
        // it, rather than building a second set of QPs.
        let mut ids = self
            .shared
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let instance = addrs[0].instance;
        if let Some(&id) = ids.by_instance.get(&instance) {
            return Ok(id);
        }
        // Checked before the handshake: a full table builds no QPs.
        if !ids.has_room(&self.shared.peers) {
            return Err(FabricError::Exhausted("verbs peers"));
        }
        let sets = conn::connect(&self.shared, &addrs, 0, self.shared.config.max_endpoints)?;
        let peer = Peer {
            addrs,
            sets: sets.into_iter().map(|s| Mutex::new(Some(s))).collect(),
        };
        ids.add(&self.shared.peers, instance, peer)
            .map_err(|_| FabricError::Exhausted("verbs peers"))
    }

    fn accept(&self, initiator: &[Vec<u8>]) -> Result<(), FabricError> {
        // The connection handshake already created and connected the target's QPs; only check
        // that the addresses are ours to speak.
        RailAddress::decode_all(initiator).map(|_| ())
    }

    fn bind_notifications(&self, sink: Arc<Notifications>) {
        let _ = self.shared.notifications.set(sink);
    }

    fn local_cpus(&self) -> Option<crate::affinity::CpuSet> {
        self.cpus
    }

    fn endpoint(&self) -> Result<Box<dyn Endpoint>, FabricError> {
        Ok(Box::new(endpoint::new_endpoint(self.shared.clone())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked_before_any_device() {
        type Edit = fn(&mut VerbsConfig);
        let cases: [(&str, Edit); 6] = [
            ("queue_depth", |c| c.queue_depth = u32::MAX),
            ("inline_size", |c| c.inline_size = MAX_INLINE + 1),
            ("recv_depth", |c| c.recv_depth = c.target_cq_depth + 1),
            ("max_peers", |c| c.max_peers = u32::MAX),
            ("max_regions", |c| c.max_regions = 1 << 40),
            ("handshake_timeout", |c| {
                c.handshake_timeout = Duration::ZERO
            }),
        ];
        for (field, edit) in cases {
            let mut c = VerbsConfig::default();
            edit(&mut c);
            match VerbsFabric::new(c) {
                Err(FabricError::BadConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn ack_timeout_covers_the_configured_time() {
        for ms in [10u64, 100, 1000, 4000, 30_000] {
            let t = ack_timeout_exponent(Duration::from_millis(ms));
            let per_try_ns = 4096u128 << t;
            let tries = 1 + u128::from(RETRY_CNT);
            assert!(
                per_try_ns * tries >= u128::from(ms) * 1_000_000,
                "{ms} ms -> {t}"
            );
            assert!(
                t == 1 || (per_try_ns / 2) * tries < u128::from(ms) * 1_000_000,
                "{ms} ms -> {t}"
            );
        }
        assert_eq!(ack_timeout_exponent(Duration::ZERO), 1);
        assert_eq!(ack_timeout_exponent(Duration::from_secs(1 << 40)), 31);
    }
}

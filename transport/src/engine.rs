//! The engine: segments, names, remote segments, batches. Shared by all threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::batch::{BatchTable, MAX_BATCH_CAPACITY};
use crate::descriptor::FabricOffer;
use crate::descriptor::{RailDescriptor, SegmentDescriptor, MAX_NAME_LEN};
use crate::fabric::{
    Capabilities, Endpoint, Fabric, MemoryRegion, PeerId, Plane, Registration, MAX_PLANES,
    MAX_RAILS,
};
use crate::metadata::{Metadata, MetadataError, OnGone, WatchGuard};
use crate::metrics::{MetricsSnapshot, Registry as MetricsRegistry};
use crate::owned_view::OwnedView;
use crate::retry::{RetryPolicy, MAX_RETRIES};
use crate::slab::{Pin, Slab};
use crate::slice::SlicePlan;
use crate::topology::{effective_rails, AllRails, RailPolicy, RailSet};
use crate::wait::WaitMode;
use crate::worker::reap_orphans;
use crate::{
    Access, BatchId, BatchStatus, FabricError, Handle, Location, Notifications, OwnedMemory,
    RemoteSegment, RequestStatus, SegmentId, TransportError, Worker,
};

/// Engine ids, unique in the process (handles carry the id of their engine).
static NEXT_ENGINE_ID: AtomicU32 = AtomicU32::new(1);

/// Public facts about a local segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Name it is published under.
    pub name: String,
    /// Start address.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where it lives.
    pub location: Location,
    /// Rights of peers.
    pub access: Access,
    /// Rails its transfers use.
    pub rails: RailSet,
    /// Whether the engine owns the memory.
    pub owned: bool,
    /// How its registration went.
    pub registration: RegistrationReport,
}

/// How a segment's registration went: recorded once, when it was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationReport {
    /// Time the fabric took to register the memory on its rails (`ibv_reg_mr` on each; in
    /// parallel for large regions on several rails).
    pub took: Duration,
    /// Bytes registered.
    pub len: u64,
    /// Rails the memory is registered on (those with a key in the segment's descriptor).
    pub rails: RailSet,
    /// The page size backing the memory, where the engine knows it without asking the
    /// kernel: the hugetlbfs page size of [`OwnedMemory::huge`] memory, the base page size of
    /// other owned memory while transparent hugepages are not `always` on. `None` otherwise
    /// (memory advised for transparent hugepages, memory the engine does not own):
    /// [`Engine::segment_pages`] asks the kernel. Not looked up at registration, because
    /// reading `/proc/self/smaps` walks the mapping's page table: about 8 ms per GiB of 4 KiB
    /// pages, a few percent of pinning it.
    pub page_size: Option<u64>,
}

impl RegistrationReport {
    /// Bytes registered per second.
    pub fn bytes_per_sec(&self) -> f64 {
        self.len as f64 / self.took.as_secs_f64().max(1e-9)
    }
}

/// The base page size of this machine.
fn base_page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system; no memory is touched.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Whether transparent hugepages are `always` on (then any anonymous memory may get them).
fn thp_always() -> bool {
    static ALWAYS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALWAYS.get_or_init(|| {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|t| t.contains("[always]"))
    })
}

/// The page size backing owned memory, where known without asking the kernel (see
/// [`RegistrationReport::page_size`]).
fn known_page_size(owned: Option<&OwnedMemory>) -> Option<u64> {
    match owned.map(OwnedMemory::backing)? {
        crate::Backing::Huge(size) => Some(size),
        crate::Backing::Base if !thp_always() => Some(base_page_size()),
        crate::Backing::Base | crate::Backing::Transparent => None,
    }
}

pub(crate) struct LocalEntry {
    pub base: u64,
    pub len: u64,
    pub lkeys: [u64; MAX_RAILS],
    pub rails: RailSet,
    /// `rails` split by plane (see [`Fabric::planes`]): the rails a request to a peer reached
    /// over plane `p` may use.
    pub plane_rails: [RailSet; MAX_PLANES],
    pub name: String,
    pub location: Location,
    pub access: Access,
    pub registration: Registration,
    pub report: RegistrationReport,
    pub owned: Option<OwnedMemory>,
}

pub(crate) struct RemoteEntry {
    pub base: u64,
    pub len: u64,
    pub access: Access,
    pub peer: PeerId,
    pub rkeys: [u64; MAX_RAILS],
    /// The peer's rail facing each of our rails of the plane (by index within the plane): the
    /// same index, wrapped to the peer's rails, when the peer registered the segment there;
    /// else one of the rails it did register (see
    /// [`EngineConfig::register_policy_rails_only`]).
    pub rail_map: [u16; MAX_RAILS],
    /// The plane the peer is reached over, and its first local rail.
    pub plane: u8,
    pub rail_base: u16,
    pub desc: SegmentDescriptor,
    /// Set when the metadata service reports the owner gone (see `peer_gone.rs`).
    pub gone: Arc<AtomicBool>,
    /// Keeps the service's watch on the descriptor; dropped with the entry.
    pub _watch: WatchGuard,
}

/// Most local segments, remote segments or batches an engine may be configured for.
pub const MAX_TABLE: usize = 1 << 16;
/// Most notification tags an engine may be configured for.
pub const MAX_NOTIFY_TAGS: u32 = 1 << 20;

/// Refuses `value` outside `range` as setting `field`, naming both.
fn check_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), TransportError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(TransportError::Config(format!(
        "{field} = {value} is out of range (expected {}..={})",
        range.start(),
        range.end()
    )))
}

/// Refuses a name a descriptor cannot carry, or that no one could ask for: empty, with a NUL
/// byte, or longer than [`MAX_NAME_LEN`]. The error quotes only its start.
fn check_name(what: &'static str, name: &str) -> Result<(), TransportError> {
    let reason = if name.is_empty() {
        "is empty"
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else if name.len() > MAX_NAME_LEN {
        "is longer than the 1024 bytes a descriptor carries"
    } else {
        return Ok(());
    };
    let mut preview: String = name.chars().take(40).collect();
    if preview.len() < name.len() {
        preview.push('…');
    }
    Err(TransportError::BadName {
        what,
        preview,
        len: name.len(),
        reason,
    })
}

/// The peer's rail facing each local rail index of a plane (see [`RemoteEntry::rail_map`]),
/// for a peer with `rails` rails of which `keyed` have a key; `None` when none has.
fn remote_rail_map(rails: u16, keyed: &RailSet) -> Option<[u16; MAX_RAILS]> {
    if keyed.is_empty() || rails == 0 {
        return None;
    }
    let mut map = [0u16; MAX_RAILS];
    for (p, slot) in map.iter_mut().enumerate() {
        let wrapped = p as u16 % rails;
        *slot = if keyed.as_slice().contains(&wrapped) {
            wrapped
        } else {
            keyed.as_slice()[p % keyed.len()]
        };
    }
    Some(map)
}

/// Refuses a memory range that cannot be registered.
fn check_memory(addr: u64, len: u64) -> Result<(), TransportError> {
    let reason = if addr == 0 {
        "the address is null"
    } else if len == 0 {
        "the length is 0"
    } else if addr.checked_add(len).is_none() {
        "the range wraps around the address space"
    } else {
        return Ok(());
    };
    Err(TransportError::BadMemory { addr, len, reason })
}

/// Slice size where a plane has several rails (requests are cut to be striped over them).
pub const DEFAULT_SLICE_SIZE: u64 = 64 << 10;

/// [`EngineConfig::slice_size`] when not set: [`DEFAULT_SLICE_SIZE`] when a plane has rails to
/// stripe over, else the fabric's largest work request (`max`): slices on one rail add work
/// requests and completions and stripe nothing.
fn default_slice_size(planes: &[Plane], max: u64) -> u64 {
    if planes.iter().any(|p| p.rails.len() > 1) {
        DEFAULT_SLICE_SIZE
    } else {
        max
    }
}

/// Refuses settings that cannot work or would exhaust memory.
fn check_config(c: &EngineConfig) -> Result<(), TransportError> {
    check_name("engine", &c.name)?;
    if let Some(size) = c.slice_size {
        check_range("slice_size", size, 1..=u64::MAX)?;
    }
    check_range("max_segments", c.max_segments, 1..=MAX_TABLE)?;
    check_range("max_remote_segments", c.max_remote_segments, 1..=MAX_TABLE)?;
    check_range("max_batches", c.max_batches, 1..=MAX_TABLE)?;
    check_range("notify_tags", c.notify_tags, 0..=MAX_NOTIFY_TAGS)?;
    check_range("retry.max_retries", c.retry.max_retries, 0..=MAX_RETRIES)
}

/// Engine settings.
#[derive(Clone)]
pub struct EngineConfig {
    /// Engine name (owner of its segments in the metadata service).
    pub name: String,
    /// Slice size for splitting requests (at least 1; clamped to the fabric's
    /// `max_transfer_size`). `None` (the default): [`DEFAULT_SLICE_SIZE`] where a plane of the
    /// fabric has several rails to stripe over; where every plane has one rail there is nothing
    /// to stripe, and each request goes as one work request up to the fabric's
    /// `max_transfer_size`, as perftest and libfabric post a message.
    pub slice_size: Option<u64>,
    /// Most local segments, `1..=MAX_TABLE`.
    pub max_segments: usize,
    /// Most remote segments open at once, `1..=MAX_TABLE`.
    pub max_remote_segments: usize,
    /// Most batches allocated at once, `1..=MAX_TABLE`. A batch's request storage grows with
    /// the requests submitted to it and is given back when it is freed.
    pub max_batches: usize,
    /// Notification tags (`0..notify_tags`), at most `MAX_NOTIFY_TAGS`.
    pub notify_tags: u32,
    /// How long a submit keeps retrying against a full send queue before failing the rest of
    /// its work requests with `FLUSHED` (`Duration::MAX`: for as long as it takes).
    pub submit_timeout: Duration,
    /// When work requests that fail for a transient reason are posted again (see
    /// [`crate::retry`]); [`RetryPolicy::OFF`] turns retries off.
    pub retry: RetryPolicy,
    /// How workers wait for completions (see [`WaitMode`]); each worker may change its own.
    pub wait: WaitMode,
    /// Rail choice per location.
    pub rail_policy: Arc<dyn RailPolicy>,
    /// Register memory only on the rails `rail_policy` gives its location (per plane; a plane
    /// the policy leaves no rail of keeps all of its own), not on every rail. Registration then
    /// pins and maps the memory on the NICs local to its NUMA node or GPU only (Mooncake's
    /// users cut a 116 s registration to 14.9 s so). Transfers of the segment use those rails
    /// alone, as they do anyway; its descriptor carries no key for the others, so peers
    /// target only the registered rails. Off by default: every rail is registered.
    pub register_policy_rails_only: bool,
    /// Count operations, bytes, failures and latency per worker ([`Engine::metrics`]); on by
    /// default (its cost is within the noise of the transport benchmark, see BENCHMARKS.md).
    pub metrics: bool,
}

impl EngineConfig {
    /// Defaults for an engine called `name`: 64 KiB slices over several rails (whole requests on
    /// one), 256 segments, 1024 remote segments,
    /// 1024 batches, 1024 tags, 10 s submit timeout, all rails for all memory.
    pub fn new(name: impl Into<String>) -> Self {
        EngineConfig {
            name: name.into(),
            slice_size: None,
            max_segments: 256,
            max_remote_segments: 1024,
            max_batches: 1024,
            notify_tags: 1024,
            submit_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            wait: WaitMode::default(),
            rail_policy: Arc::new(AllRails),
            register_policy_rails_only: false,
            metrics: true,
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("name", &self.name)
            .field("slice_size", &self.slice_size)
            .field("max_segments", &self.max_segments)
            .field("max_remote_segments", &self.max_remote_segments)
            .field("max_batches", &self.max_batches)
            .field("notify_tags", &self.notify_tags)
            .field("submit_timeout", &self.submit_timeout)
            .field("retry", &self.retry)
            .field("wait", &self.wait)
            .field(
                "register_policy_rails_only",
                &self.register_policy_rails_only,
            )
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub id: u32,
    pub name: String,
    pub fabric: Arc<dyn Fabric>,
    pub caps: Capabilities,
    /// The fabric's planes, read once.
    pub planes: Vec<Plane>,
    pub metadata: Arc<dyn Metadata>,
    pub segments: Slab<LocalEntry>,
    pub remotes: Slab<RemoteEntry>,
    pub batches: BatchTable,
    pub notifications: Arc<Notifications>,
    pub plan: SlicePlan,
    pub policy: Arc<dyn RailPolicy>,
    /// See [`EngineConfig::register_policy_rails_only`].
    pub register_policy_rails_only: bool,
    pub submit_timeout: Duration,
    pub retry: RetryPolicy,
    pub wait: WaitMode,
    /// Work requests posted again after a transient failure.
    pub retried: AtomicU64,
    names: Mutex<HashMap<String, SegmentId>>,
    revision: AtomicU64,
    /// Endpoints of dropped workers with work requests still in flight (see
    /// [`Worker`](crate::Worker#dropping-a-worker)), and how many there are.
    pub orphans: Mutex<Vec<Box<dyn Endpoint>>>,
    pub orphan_count: AtomicUsize,
    /// Per-worker counters and registration figures.
    pub metrics: MetricsRegistry,
    /// Bumped each time a remote segment's owner is reported gone (see `peer_gone.rs`).
    pub gone_epoch: Arc<AtomicU64>,
}

impl Inner {
    /// One offer per plane: this engine's addresses and the registration's keys on its rails.
    fn offers(&self, registration: &Registration) -> Vec<FabricOffer> {
        let addresses = self.fabric.local_addresses();
        self.planes
            .iter()
            .map(|p| FabricOffer {
                fabric: p.name.clone(),
                rails: p
                    .rails
                    .clone()
                    .filter_map(|r| {
                        let address = addresses.get(r as usize)?.clone();
                        let key = registration.remote_keys.get(r as usize)?.clone();
                        Some(RailDescriptor { address, key })
                    })
                    .collect(),
            })
            .collect()
    }

    /// `rails` split by plane; a plane the policy left no rail of keeps all of its own, so
    /// every peer stays reachable.
    fn plane_rails(&self, rails: &RailSet) -> [RailSet; MAX_PLANES] {
        let mut split = [RailSet::new(); MAX_PLANES];
        for (set, plane) in split.iter_mut().zip(&self.planes) {
            for &r in rails.as_slice() {
                if plane.rails.contains(&r) {
                    set.push(r);
                }
            }
            if set.as_slice().is_empty() {
                plane.rails.clone().for_each(|r| set.push(r));
            }
        }
        split
    }

    /// The first of this engine's planes (its order of preference) that `desc` also offers,
    /// with the peer's rails on it.
    fn choose_plane<'d>(
        &self,
        desc: &'d SegmentDescriptor,
    ) -> Result<(usize, &'d [RailDescriptor]), TransportError> {
        for (i, plane) in self.planes.iter().enumerate() {
            if let Some((_, rails)) = desc.offers().find(|(f, _)| *f == plane.name) {
                return Ok((i, rails));
            }
        }
        Err(TransportError::FabricMismatch {
            name: desc.name.clone(),
            remote: desc.offers().map(|(f, _)| f).collect::<Vec<_>>().join("+"),
            local: self.fabric.name().to_string(),
        })
    }

    /// Takes over the endpoint of a dropped worker that still has work requests in flight.
    pub(crate) fn adopt(&self, ep: Box<dyn Endpoint>) {
        let mut orphans = self.orphans.lock().unwrap_or_else(PoisonError::into_inner);
        orphans.push(ep);
        self.orphan_count.store(orphans.len(), Ordering::Release);
    }

    /// Refuses a segment handle of another engine.
    #[inline]
    pub(crate) fn check_segment(&self, segment: SegmentId) -> Result<(), TransportError> {
        if segment.engine == self.id {
            Ok(())
        } else {
            Err(TransportError::ForeignHandle {
                handle: Handle::Segment(segment),
                engine: self.id,
            })
        }
    }

    /// Refuses a remote segment handle of another engine.
    #[inline]
    pub(crate) fn check_remote(&self, remote: RemoteSegment) -> Result<(), TransportError> {
        if remote.engine == self.id {
            Ok(())
        } else {
            Err(TransportError::ForeignHandle {
                handle: Handle::Remote(remote),
                engine: self.id,
            })
        }
    }
}

impl Drop for Inner {
    /// The last handle to the engine is gone, but the fabric may live on (a caller can hold its
    /// own `Arc` to it, and peers still hold keys). Deregister every segment and withdraw its
    /// descriptor *before* the owned memory is freed, so no peer can reach freed memory: their
    /// requests fail with `REMOTE_BAD_ADDRESS` instead.
    fn drop(&mut self) {
        // Dropped workers' endpoints first: once gone, their fabric resources no longer touch
        // the memory deregistered below.
        self.orphans
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        for entry in self.segments.drain() {
            let _ = self.metadata.remove(&entry.name);
            let _ = self.fabric.deregister(&entry.registration);
            drop(entry.owned);
        }
    }
}

/// The callback a remote segment's watch calls when its owner is gone (see `peer_gone.rs`):
/// sets the segment's flag and moves the engine's gone epoch.
pub(crate) fn on_gone(
    flag: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
    name: String,
    owner: String,
) -> OnGone {
    Box::new(move || {
        flag.store(true, Ordering::SeqCst);
        epoch.fetch_add(1, Ordering::SeqCst);
        log::warn!(
            "remote segment {name:?}: its owner {owner:?} is gone; its requests fail with PEER_GONE"
        );
    })
}

/// A transfer engine: registers memory as named segments, opens peers' segments, allocates
/// batches and reports their status. Cheap to clone (shared state); `Send + Sync`.
///
/// Requests are submitted and completions polled through a [`Worker`] (one per thread).
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.inner.name)
            .field("fabric", &self.inner.fabric.name())
            .field("rails", &self.inner.caps.rails)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Creates an engine over `fabric` (one fabric instance per engine), publishing segments in
    /// `metadata`.
    ///
    /// # Errors
    ///
    /// [`TransportError::Config`] when the fabric reports no rails or more than
    /// [`MAX_RAILS`](crate::fabric::MAX_RAILS), or a setting of `config` is out of range (the message names
    /// it and its value).
    pub fn new(
        config: EngineConfig,
        fabric: Arc<dyn Fabric>,
        metadata: Arc<dyn Metadata>,
    ) -> Result<Engine, TransportError> {
        let caps = fabric.capabilities();
        if caps.rails == 0 || caps.rails as usize > MAX_RAILS {
            return Err(TransportError::Config(format!(
                "fabric {} reports {} rails; 1..={MAX_RAILS} supported",
                fabric.name(),
                caps.rails
            )));
        }
        check_config(&config)?;
        let notifications = Arc::new(Notifications::new(config.notify_tags));
        fabric.bind_notifications(notifications.clone());
        fabric.bind_name(&config.name);
        let planes = fabric.planes();
        let slice_size = config
            .slice_size
            .unwrap_or_else(|| default_slice_size(&planes, caps.max_transfer_size));
        let plan = SlicePlan::new(slice_size, caps.max_transfer_size);
        let id = NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed);
        Ok(Engine {
            inner: Arc::new(Inner {
                id,
                name: config.name,
                planes,
                fabric,
                caps,
                metadata,
                segments: Slab::new(config.max_segments),
                remotes: Slab::new(config.max_remote_segments),
                batches: BatchTable::new(id, config.max_batches),
                notifications,
                plan,
                policy: config.rail_policy,
                register_policy_rails_only: config.register_policy_rails_only,
                submit_timeout: config.submit_timeout,
                retry: config.retry,
                wait: config.wait,
                retried: AtomicU64::new(0),
                names: Mutex::new(HashMap::new()),
                revision: AtomicU64::new(1),
                orphans: Mutex::new(Vec::new()),
                orphan_count: AtomicUsize::new(0),
                metrics: MetricsRegistry::new(config.metrics),
                gone_epoch: Arc::new(AtomicU64::new(0)),
            }),
        })
    }

    /// The engine's id, unique in the process. Every handle it issues carries it, and it
    /// refuses handles with another id ([`TransportError::ForeignHandle`]).
    pub fn id(&self) -> u32 {
        self.inner.id
    }

    /// The engine's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The fabric.
    pub fn fabric(&self) -> &Arc<dyn Fabric> {
        &self.inner.fabric
    }

    /// The fabric's capabilities as read at construction.
    pub fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    /// The slicing in force.
    pub fn slice_plan(&self) -> SlicePlan {
        self.inner.plan
    }

    /// Work requests posted again after a transient failure (see [`crate::retry`]), by all
    /// of this engine's workers.
    pub fn retries(&self) -> u64 {
        self.inner.retried.load(Ordering::Relaxed)
    }

    /// Arrival counters of notifications sent to this engine.
    pub fn notifications(&self) -> &Notifications {
        &self.inner.notifications
    }

    /// The cpus the fabric's own threads run on (its target and service threads), chosen by
    /// the fabric config's [`Affinity`](crate::affinity::Affinity): by default the cores of the
    /// NUMA node of its devices. `None` when they are not pinned (no NUMA information in sysfs,
    /// a fabric without devices or threads, or `Affinity::None`). Pin worker threads here
    /// ([`Engine::pin_current_thread`]) to keep them beside the devices.
    pub fn local_cpus(&self) -> Option<crate::affinity::CpuSet> {
        self.inner.fabric.local_cpus()
    }

    /// Pins the calling thread (say, the one driving a [`Worker`]) to [`Engine::local_cpus`],
    /// and returns them; `Ok(None)`, leaving the thread as it is, when there are none.
    ///
    /// # Errors
    ///
    /// [`AffinityError::Pin`](crate::affinity::AffinityError::Pin) when the kernel refuses the
    /// set (the set and the OS error are in it).
    pub fn pin_current_thread(
        &self,
    ) -> Result<Option<crate::affinity::CpuSet>, crate::affinity::AffinityError> {
        let Some(cpus) = self.local_cpus() else {
            return Ok(None);
        };
        crate::affinity::pin_current_thread(&cpus)?;
        Ok(Some(cpus))
    }

    /// A worker for submitting and completing requests on the calling thread.
    ///
    /// # Errors
    ///
    /// [`TransportError::Fabric`] when the fabric cannot create the worker's endpoint (the
    /// cause names the device call that failed).
    pub fn worker(&self) -> Result<Worker, TransportError> {
        Worker::new(self.inner.clone())
    }

    /// Registers memory the engine does not own and publishes it as segment `name`.
    ///
    /// Refused with a typed error: a bad name ([`TransportError::BadName`]: empty, with a NUL
    /// byte, or over 1024 bytes), a null, empty or wrapping range
    /// ([`TransportError::BadMemory`]), a name already registered. The location is the
    /// caller's word (the engine cannot tell host from device memory here).
    ///
    /// # Errors
    ///
    /// [`TransportError::BadName`], [`TransportError::BadMemory`], [`TransportError::DuplicateName`],
    /// [`TransportError::Exhausted`] (segment table full), [`TransportError::Fabric`] (the fabric
    /// could not register the range; the cause names the device call and its errno) and
    /// [`TransportError::Metadata`] (the descriptor could not be published).
    ///
    /// # Safety
    ///
    /// `addr..addr+len` must stay valid for reads and writes until [`Engine::unregister`]
    /// succeeds: local transfers and peers (as `access` allows) read and write it at any time in
    /// between, so the caller must not rely on its contents while transfers may touch it.
    pub unsafe fn register_memory(
        &self,
        name: &str,
        addr: *mut u8,
        len: usize,
        location: Location,
        access: Access,
    ) -> Result<SegmentId, TransportError> {
        self.register_inner(name, addr as u64, len as u64, location, access, None)
    }

    /// Registers engine-owned memory as segment `name` (checked as in
    /// [`Engine::register_memory`]; owned memory is host memory, so a `gpu:N` location is
    /// refused with [`TransportError::BadLocation`]). The memory is reachable only through
    /// [`Engine::read_owned`], [`Engine::write_owned`] and transfers until
    /// [`Engine::unregister`] returns it.
    ///
    /// # Errors
    ///
    /// As [`Engine::register_memory`], and [`TransportError::BadLocation`] for a device location.
    pub fn register_owned(
        &self,
        name: &str,
        memory: OwnedMemory,
        location: Location,
        access: Access,
    ) -> Result<SegmentId, TransportError> {
        let (addr, len) = (memory.addr(), memory.len() as u64);
        self.register_inner(name, addr, len, location, access, Some(memory))
    }

    fn register_inner(
        &self,
        name: &str,
        addr: u64,
        len: u64,
        location: Location,
        access: Access,
        owned: Option<OwnedMemory>,
    ) -> Result<SegmentId, TransportError> {
        let inner = &*self.inner;
        let _span =
            tracing::info_span!("register", engine = %inner.name, segment = name, len).entered();
        check_name("segment", name)?;
        check_memory(addr, len)?;
        if owned.is_some() && matches!(location, Location::Gpu(_)) {
            return Err(TransportError::BadLocation {
                location,
                reason: "memory the engine owns is host memory (use cpu:N)",
            });
        }
        let mut names = inner.names.lock().unwrap_or_else(PoisonError::into_inner);
        if names.contains_key(name) {
            return Err(TransportError::DuplicateName(name.to_string()));
        }
        let region = MemoryRegion { addr, len, access };
        let all = effective_rails(&*inner.policy, location, inner.caps.rails);
        let plane_rails = inner.plane_rails(&all);
        let mut used = RailSet::new();
        for set in &plane_rails[..inner.planes.len().min(MAX_PLANES)] {
            set.as_slice().iter().for_each(|&r| used.push(r));
        }
        let started = Instant::now();
        // SAFETY: the caller of `register_memory` promised validity until unregister; owned
        // memory is kept in the entry and dropped only after `deregister`.
        let registration = unsafe {
            if inner.register_policy_rails_only {
                inner.fabric.register_on(region, &used)?
            } else {
                inner.fabric.register(region)?
            }
        };
        let took = started.elapsed();
        inner.metrics.registered(took, len);
        let rails = inner.caps.rails as usize;
        if registration.local_keys.len() != rails || registration.remote_keys.len() != rails {
            let _ = inner.fabric.deregister(&registration);
            return Err(FabricError::BadRegistration {
                fabric: inner.fabric.name().to_string(),
                local_keys: registration.local_keys.len(),
                remote_keys: registration.remote_keys.len(),
                rails,
            }
            .into());
        }
        if let Some(&rail) = used
            .as_slice()
            .iter()
            .find(|&&r| registration.remote_keys[r as usize].is_empty())
        {
            let _ = inner.fabric.deregister(&registration);
            return Err(FabricError::MissingRail {
                fabric: inner.fabric.name().to_string(),
                rail,
            }
            .into());
        }
        let mut offers = inner.offers(&registration).into_iter();
        let first = offers.next().unwrap_or_default();
        let desc = SegmentDescriptor {
            revision: inner.revision.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            fabric: first.fabric,
            engine: inner.name.clone(),
            location,
            access,
            base: addr,
            len,
            rails: first.rails,
            alternates: offers.collect(),
        };
        if let Err(e) = inner.metadata.publish(&desc) {
            let _ = inner.fabric.deregister(&registration);
            return Err(e.into());
        }
        let mut lkeys = [0u64; MAX_RAILS];
        lkeys[..rails].copy_from_slice(&registration.local_keys);
        let mut registered = RailSet::new();
        for (r, key) in registration.remote_keys.iter().enumerate() {
            if !key.is_empty() {
                registered.push(r as u16);
            }
        }
        let report = RegistrationReport {
            took,
            len,
            rails: registered,
            page_size: known_page_size(owned.as_ref()),
        };
        tracing::debug!(
            took_us = took.as_micros() as u64,
            page_size = report.page_size.unwrap_or(0),
            rails = registered.len(),
            "registered"
        );
        let entry = LocalEntry {
            base: addr,
            len,
            lkeys,
            plane_rails,
            rails: all,
            name: name.to_string(),
            location,
            access,
            registration,
            report,
            owned,
        };
        match inner.segments.insert(entry) {
            Ok((index, generation)) => {
                let id = SegmentId {
                    engine: inner.id,
                    index,
                    generation,
                };
                names.insert(name.to_string(), id);
                Ok(id)
            }
            Err(entry) => {
                let _ = inner.metadata.remove(name);
                let _ = inner.fabric.deregister(&entry.registration);
                Err(TransportError::Exhausted {
                    what: "local segments",
                    max: inner.segments.capacity(),
                })
            }
        }
    }

    /// Unregisters a segment and removes its descriptor. Refused with
    /// [`TransportError::SegmentBusy`] while requests of this engine use it (wait for them,
    /// then retry); peers' later requests fail with `REMOTE_BAD_ADDRESS`. Returns the memory if
    /// the engine owned it.
    ///
    /// # Errors
    ///
    /// [`TransportError::UnknownSegment`] for a stale or foreign handle,
    /// [`TransportError::SegmentBusy`] while requests use it, [`TransportError::Fabric`] or
    /// [`TransportError::Metadata`] when deregistering or unpublishing fails.
    pub fn unregister(&self, segment: SegmentId) -> Result<Option<OwnedMemory>, TransportError> {
        let inner = &*self.inner;
        let _span = tracing::info_span!("unregister", engine = %inner.name, index = segment.index)
            .entered();
        inner.check_segment(segment)?;
        reap_orphans(inner, true);
        let mut names = inner.names.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = inner
            .segments
            .retire(segment.index, segment.generation)
            .map_err(|busy| match busy {
                Some(in_flight) => TransportError::SegmentBusy { segment, in_flight },
                None => TransportError::UnknownSegment(segment),
            })?;
        names.remove(&entry.name);
        // A descriptor the service failed to drop only misleads peers into REMOTE_BAD_ADDRESS
        // completions; the local teardown must go on regardless.
        let _ = inner.metadata.remove(&entry.name);
        inner.fabric.deregister(&entry.registration)?;
        inner.metrics.unregistered();
        Ok(entry.owned)
    }

    /// A local segment's entry, pinned until the guard drops.
    fn pin_segment(&self, segment: SegmentId) -> Result<Pin<'_, LocalEntry>, TransportError> {
        self.inner.check_segment(segment)?;
        self.inner
            .segments
            .pin(segment.index, segment.generation)
            // Lazily: `ok_or` builds the error and runs its drop glue on every call, which
            // showed in the per-op profile (`BENCHMARKS.md`); so throughout the hot path.
            .ok_or_else(|| TransportError::UnknownSegment(segment))
    }

    fn with_segment<R>(
        &self,
        segment: SegmentId,
        f: impl FnOnce(&LocalEntry) -> R,
    ) -> Result<R, TransportError> {
        let e = self.pin_segment(segment)?;
        Ok(f(&e))
    }

    /// Calls `f` on an open remote segment's entry, pinned meanwhile.
    fn with_remote<R>(
        &self,
        remote: RemoteSegment,
        f: impl FnOnce(&RemoteEntry) -> R,
    ) -> Result<R, TransportError> {
        self.inner.check_remote(remote)?;
        let e = self
            .inner
            .remotes
            .pin(remote.index, remote.generation)
            .ok_or_else(|| TransportError::UnknownRemote(remote))?;
        Ok(f(&e))
    }

    /// Facts about a local segment.
    pub fn segment_info(&self, segment: SegmentId) -> Result<SegmentInfo, TransportError> {
        self.with_segment(segment, |e| SegmentInfo {
            name: e.name.clone(),
            base: e.base,
            len: e.len,
            location: e.location,
            access: e.access,
            rails: e.rails,
            owned: e.owned.is_some(),
            registration: e.report,
        })
    }

    /// What backs a local segment's memory now, as the kernel reports it for its first byte
    /// ([`page_info`](crate::page_info)): a control-path call that reads `/proc/self/smaps`
    /// (milliseconds for a GiB of 4 KiB pages).
    ///
    /// # Errors
    ///
    /// [`TransportError::UnknownSegment`] for a stale or foreign handle,
    /// [`TransportError::Pages`] when smaps cannot be read or does not hold the address (the
    /// memory of a device, not of this process).
    pub fn segment_pages(&self, segment: SegmentId) -> Result<crate::PageInfo, TransportError> {
        let base = self.with_segment(segment, |e| e.base)?;
        crate::page_info(base).map_err(|source| TransportError::Pages { segment, source })
    }

    /// Holds an engine-owned segment open for reads and writes without a lookup per access
    /// (see [`OwnedView`]): for polling a flag a peer's WRITE sets, or a header written before
    /// every send.
    ///
    /// # Errors
    ///
    /// [`TransportError::ForeignHandle`] for another engine's handle,
    /// [`TransportError::UnknownSegment`] for a stale one and [`TransportError::NotOwned`] when
    /// the application registered the memory itself.
    pub fn owned_view(&self, segment: SegmentId) -> Result<OwnedView<'_>, TransportError> {
        OwnedView::new(self.pin_segment(segment)?, segment)
    }

    /// Copies bytes out of an engine-owned segment. Bytes that a transfer in flight is changing
    /// read as either their old or new value.
    pub fn read_owned(
        &self,
        segment: SegmentId,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), TransportError> {
        self.owned_view(segment)?.read(offset, out)
    }

    /// Copies bytes into an engine-owned segment.
    pub fn write_owned(
        &self,
        segment: SegmentId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), TransportError> {
        self.owned_view(segment)?.write(offset, data)
    }

    /// Opens the segment published as `name`: looks up its descriptor, asks the metadata
    /// service to watch it ([`Metadata::watch`]), connects to its owner over the first of this
    /// engine's fabrics it also offers ([`Engine::remote_fabric`]) on every rail, decodes its
    /// keys.
    ///
    /// When the service reports the owner gone (etcd: its lease expired because the process
    /// died or hung, or the descriptor was removed or replaced), the handle is marked gone:
    /// requests in flight to it end `Failed(PeerGone)` at the next [`Worker::wait`] (without
    /// waiting for a fabric timeout; their late completions are absorbed, so drain before
    /// freeing the batch, as after a cancel), and new requests to it are refused with
    /// [`TransportError::PeerGone`]. Close the handle and open the name again to use a
    /// restarted owner.
    ///
    /// # Errors
    ///
    /// [`TransportError::SegmentNotFound`] when nothing is published under `name` (also when
    /// its owner is gone); [`TransportError::FabricMismatch`] when the owner offers no fabric
    /// this engine speaks; [`TransportError::Fabric`] when the owner cannot be reached (bad
    /// address or key; the cause says why); [`TransportError::Metadata`] when the service
    /// fails; [`TransportError::Exhausted`] when `max_remote_segments` are open.
    pub fn open_segment(&self, name: &str) -> Result<RemoteSegment, TransportError> {
        let inner = &*self.inner;
        let _span =
            tracing::info_span!("open_segment", engine = %inner.name, segment = name).entered();
        let desc = inner.metadata.lookup(name).map_err(|e| match e {
            MetadataError::NotFound(n) => TransportError::SegmentNotFound(n),
            other => other.into(),
        })?;
        let (plane, rails) = inner.choose_plane(&desc)?;
        if rails.is_empty() || rails.len() > MAX_RAILS {
            return Err(FabricError::BadAddress {
                rail: 0,
                reason: format!("segment {name:?} lists {} rails", rails.len()),
            }
            .into());
        }
        let gone = Arc::new(AtomicBool::new(false));
        let on_gone = on_gone(
            gone.clone(),
            inner.gone_epoch.clone(),
            desc.name.clone(),
            desc.engine.clone(),
        );
        let watch = inner.metadata.watch(&desc, on_gone)?;
        if gone.load(Ordering::SeqCst) {
            return Err(TransportError::SegmentNotFound(name.to_string()));
        }
        let addresses: Vec<Vec<u8>> = rails.iter().map(|r| r.address.clone()).collect();
        let plane_name = &inner.planes[plane].name;
        let peer = tracing::info_span!("connect", fabric = %plane_name, rails = addresses.len())
            .in_scope(|| inner.fabric.connect_plane(plane, &addresses))?;
        let mut rkeys = [0u64; MAX_RAILS];
        let mut keyed = RailSet::new();
        for (i, r) in rails.iter().enumerate() {
            // An empty key: the owner did not register the segment on this rail.
            if !r.key.is_empty() {
                rkeys[i] = inner.fabric.decode_plane_key(plane, i as u16, &r.key)?;
                keyed.push(i as u16);
            }
        }
        let rail_map =
            remote_rail_map(rails.len() as u16, &keyed).ok_or_else(|| FabricError::BadAddress {
                rail: 0,
                reason: format!("segment {name:?} has a key on none of its rails"),
            })?;
        let entry = RemoteEntry {
            base: desc.base,
            len: desc.len,
            access: desc.access,
            peer,
            rkeys,
            rail_map,
            plane: plane as u8,
            rail_base: inner.planes[plane].rails.start,
            desc,
            gone,
            _watch: watch,
        };
        let (index, generation) =
            inner
                .remotes
                .insert(entry)
                .map_err(|_| TransportError::Exhausted {
                    what: "remote segments",
                    max: inner.remotes.capacity(),
                })?;
        Ok(RemoteSegment {
            engine: inner.id,
            index,
            generation,
        })
    }

    /// The descriptor an open remote segment was opened with.
    pub fn remote_descriptor(
        &self,
        remote: RemoteSegment,
    ) -> Result<SegmentDescriptor, TransportError> {
        self.with_remote(remote, |e| e.desc.clone())
    }

    /// The fabric an open remote segment is reached over: the first of this engine's fabrics
    /// (see [`Fabric::planes`]) that the segment's owner also offers.
    ///
    /// # Errors
    ///
    /// [`TransportError::UnknownRemote`] for a closed or foreign handle.
    pub fn remote_fabric(&self, remote: RemoteSegment) -> Result<String, TransportError> {
        self.with_remote(remote, |e| self.inner.planes[e.plane as usize].name.clone())
    }

    /// Closes a remote segment handle. Requests already submitted are unaffected (they carry
    /// what they need); new ones using the handle fail validation.
    pub fn close_segment(&self, remote: RemoteSegment) -> Result<(), TransportError> {
        self.inner.check_remote(remote)?;
        // Pins on remote segments last only for the length of a submit call, so a short bounded
        // retry rides them out.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match self.inner.remotes.retire(remote.index, remote.generation) {
                Ok(_) => return Ok(()),
                Err(None) => return Err(TransportError::UnknownRemote(remote)),
                Err(Some(_)) if Instant::now() < deadline => std::thread::yield_now(),
                Err(Some(in_flight)) => {
                    return Err(TransportError::RemoteBusy { remote, in_flight })
                }
            }
        }
    }

    /// This engine's per-rail fabric addresses (for a discovery layer's handshake).
    pub fn local_addresses(&self) -> Vec<Vec<u8>> {
        self.inner.fabric.local_addresses()
    }

    /// Accepts requests from the peer with these per-rail addresses (target side of a
    /// handshake; see [`Fabric::accept`]).
    pub fn accept_peer(&self, addresses: &[Vec<u8>]) -> Result<(), TransportError> {
        let _span =
            tracing::info_span!("accept", engine = %self.inner.name, rails = addresses.len())
                .entered();
        Ok(self.inner.fabric.accept(addresses)?)
    }

    /// Allocates a batch for up to `capacity` requests. Reusing slots allocates nothing once a
    /// slot of that capacity exists.
    ///
    /// # Errors
    ///
    /// [`TransportError::Config`] for a capacity of 0 or over the limit, and
    /// [`TransportError::Exhausted`] when every batch slot is in use.
    pub fn allocate_batch(&self, capacity: usize) -> Result<BatchId, TransportError> {
        let cap = u32::try_from(capacity)
            .ok()
            .filter(|&c| c <= MAX_BATCH_CAPACITY)
            .ok_or_else(|| {
                TransportError::Config(format!(
                    "batch capacity {capacity} not in 1..={MAX_BATCH_CAPACITY}"
                ))
            })?;
        self.inner.batches.allocate(cap)
    }

    /// Frees a batch. Refused with [`TransportError::BatchBusy`] while its work requests are in
    /// flight (also after a timeout or cancel: drain it with [`Worker::drain`] first).
    ///
    /// # Errors
    ///
    /// [`TransportError::StaleBatch`] for a freed or foreign handle and
    /// [`TransportError::BatchBusy`] while work requests are in flight.
    pub fn free_batch(&self, batch: BatchId) -> Result<(), TransportError> {
        self.inner.batches.check(batch)?;
        reap_orphans(&self.inner, true);
        self.inner.batches.release(batch, false).map(|_| ())
    }

    /// Empties a batch for reuse and returns its new handle (the old one becomes stale).
    /// Refused like [`Engine::free_batch`].
    pub fn recycle_batch(&self, batch: BatchId) -> Result<BatchId, TransportError> {
        self.inner.batches.check(batch)?;
        reap_orphans(&self.inner, true);
        self.inner.batches.release(batch, true)
    }

    /// Status of request `index` (in submission order) of a batch.
    pub fn request_status(
        &self,
        batch: BatchId,
        index: usize,
    ) -> Result<RequestStatus, TransportError> {
        let slot = self.inner.batches.get(batch)?;
        if index >= slot.submitted.load(Ordering::Acquire) as usize {
            return Err(TransportError::NoSuchRequest { batch, index });
        }
        let st = slot
            .pin(batch)
            .and_then(|pin| pin.request(index as u32).map(|r| r.status()))
            .unwrap_or(RequestStatus::Waiting);
        // The slot could have been recycled between the checks and the read.
        self.inner.batches.get(batch)?;
        Ok(st)
    }

    /// Counters of a batch.
    pub fn batch_status(&self, batch: BatchId) -> Result<BatchStatus, TransportError> {
        let slot = self.inner.batches.get(batch)?;
        let st = slot.status();
        self.inner.batches.get(batch)?;
        Ok(st)
    }

    /// Cancels every pending request of a batch; returns how many were cancelled. Their work
    /// requests still complete in the fabric (and are absorbed), so drain before freeing.
    pub fn cancel(&self, batch: BatchId) -> Result<u32, TransportError> {
        let slot = self.inner.batches.get(batch)?;
        let n = slot.abandon(batch, true);
        reap_orphans(&self.inner, true);
        Ok(n)
    }

    /// What the engine has done so far: operations and bytes by opcode, failures by reason,
    /// per peer and per rail, requests in flight, registrations and submit-to-complete
    /// latency, summed over its workers (see [`metrics`](crate::metrics)). All zero when
    /// [`EngineConfig::metrics`] is off, except the registration figures.
    pub fn metrics(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            retries: self.retries(),
            ..self.inner.metrics.snapshot()
        }
    }

    /// Applies the completions that have arrived for work requests of dropped workers (see
    /// [Dropping a worker](Worker#dropping-a-worker)); returns how many. Waits, drains and the
    /// calls that release resources do this too, so calling it is needed only to let such
    /// requests finish while nothing else runs.
    pub fn progress_dropped_workers(&self) -> usize {
        reap_orphans(&self.inner, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(rails: &[u16]) -> RailSet {
        let mut s = RailSet::new();
        rails.iter().for_each(|&r| s.push(r));
        s
    }

    #[test]
    fn remote_rails_without_a_key_are_never_targeted() {
        let m = remote_rail_map(2, &set(&[0, 1])).unwrap();
        assert_eq!(&m[..4], &[0, 1, 0, 1], "same index, wrapped");
        let m = remote_rail_map(4, &set(&[1])).unwrap();
        assert!(m.iter().all(|&r| r == 1));
        let m = remote_rail_map(4, &set(&[1, 3])).unwrap();
        assert_eq!(&m[..4], &[1, 1, 1, 3], "a keyed index keeps its rail");
        assert!(m.iter().all(|r| [1, 3].contains(r)));
        assert_eq!(remote_rail_map(4, &RailSet::new()), None);
    }
}

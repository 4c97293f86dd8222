//! The fabric abstraction: what the engine needs from a network (or a model of one).
//!
//! A fabric is created once per [`Engine`](crate::Engine) and owns that engine's devices
//! ("rails"). It is shared by all threads (`Send + Sync`) and used on the control path:
//! registration, peer connection, key decoding. The hot path runs through an [`Endpoint`], one per
//! [`Worker`](crate::Worker), owned by a single thread (`&mut self`, no locks needed), like an
//! io_uring ring or a thread-domain QP set.
//!
//! # Contract, in the order the engine uses it
//!
//! 1. [`Fabric::capabilities`] is read once. `rails` must be `1..=MAX_RAILS`; `max_transfer_size`
//!    bounds every READ/WRITE work request the engine posts (the engine slices larger requests).
//! 2. [`Fabric::register`] pins/registers memory on every rail and returns per-rail local keys
//!    (used in work requests) and per-rail remote keys as opaque bytes (published in the
//!    [`SegmentDescriptor`](crate::SegmentDescriptor)). [`Fabric::deregister`] undoes it; the
//!    engine calls it only when no work request of its own uses the memory.
//! 3. [`Fabric::local_addresses`] gives this engine's per-rail addresses (opaque bytes: e.g. EFA
//!    GID+QPN+QKey, a TCP `host:port`). They go into every descriptor this engine publishes.
//! 4. [`Fabric::connect`] is called when a segment of a peer is opened, with the peer's per-rail
//!    addresses. It returns a [`PeerId`] (a small dense index, equal for equal addresses) and
//!    must also make the *target* able to accept this initiator: EFA needs an AH on both sides
//!    (else the target completes with `UNKNOWN_PEER`); RC verbs connects QPs; TCP opens
//!    sockets. A fabric with a network handshake does it inside `connect`; the target side of
//!    it ends in [`Fabric::accept`], which an out-of-band discovery layer may also call.
//! 5. [`Fabric::decode_remote_key`] turns a descriptor's opaque key bytes for a rail into the
//!    `u64` carried by work requests, so the hot path never touches bytes or maps.
//! 6. [`Fabric::endpoint`] creates per-worker resources (QPs/CQs per rail).
//! 7. [`Endpoint::post`] takes work requests in bulk; [`Endpoint::poll`] returns completions in
//!    bulk into a caller slice. Neither may allocate or lock in steady state.
//!
//! # Completion rules
//!
//! - Every work request that `post` accepted yields exactly one [`Completion`] carrying its
//!   `token` (the engine encodes its batch slot and request index there; the fabric treats it as
//!   opaque, like `wr_id`). A request the fabric finds invalid after accepting it is completed
//!   with an error, never dropped.
//! - Completions may come in any order (SRD is unordered). The engine counts them; it never
//!   assumes that the last posted request completes last.
//! - A completion returned by `poll` frees one send-queue slot on its rail, so the engine may
//!   post one new request on that rail right away (it relies on this for notifications).
//! - A READ/WRITE completion means the data is placed at its destination. A
//!   [`WorkOp::Notify`] completion means the target has counted the tag (see
//!   [`Notifications`]).
//! - Dead peers must not hang the engine: such requests complete with
//!   [`FailReason::UnresponsiveRemote`](crate::FailReason) after a bounded time.
//!
//! # Target side
//!
//! The engine binds its [`Notifications`] with
//! [`Fabric::bind_notifications`]; a fabric that receives a notification (write-with-immediate,
//! SEND with immediate, a TCP notify frame) calls [`Notifications::record`](crate::Notifications::record).
//! Fabrics whose target side needs CPU work (TCP service threads, EFA receive CQs) run it on their
//! own threads; the transport never polls on behalf of a target.

pub mod auto;
#[cfg(feature = "rdma")]
pub mod efa;
pub mod multi;
#[cfg(feature = "rdma")]
mod rdma;
mod regions;
pub mod sim;
pub mod tcp;
#[cfg(feature = "rdma")]
pub mod verbs;

use std::sync::Arc;

use crate::{Access, FabricError, FailReason, Notifications, RailSet};

/// Most rails (devices) an engine may use.
pub const MAX_RAILS: usize = 16;

/// Refuses `value` outside `range` as setting `field` of `fabric`.
pub(crate) fn check_range<T: PartialOrd + std::fmt::Debug>(
    fabric: &'static str,
    field: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), FabricError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(FabricError::BadConfig {
        fabric,
        field,
        value: format!("{value:?}"),
        expected: format!("{:?}..={:?}", range.start(), range.end()),
    })
}

/// Refuses a zero duration as setting `field` of `fabric`.
pub(crate) fn check_nonzero(
    fabric: &'static str,
    field: &'static str,
    value: std::time::Duration,
) -> Result<(), FabricError> {
    if !value.is_zero() {
        return Ok(());
    }
    Err(FabricError::BadConfig {
        fabric,
        field,
        value: format!("{value:?}"),
        expected: "more than 0".into(),
    })
}

/// A peer as known to one fabric instance: a dense index handed out by [`Fabric::connect`].
pub type PeerId = u32;

/// Most planes (member fabrics) one fabric may speak.
pub const MAX_PLANES: usize = 4;

/// One fabric spoken by a fabric (see [`Fabric::planes`]): its name, as written into
/// descriptors, and its rails in the outer fabric's numbering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plane {
    /// The member fabric's name (`efa`, `verbs`, `tcp`, `sim`).
    pub name: String,
    /// Its rails, a contiguous range of the outer fabric's rails.
    pub rails: std::ops::Range<u16>,
}

fn check_single_plane(plane: usize) -> Result<(), FabricError> {
    if plane == 0 {
        return Ok(());
    }
    Err(FabricError::BadConfig {
        fabric: "plain",
        field: "plane",
        value: plane.to_string(),
        expected: "0 (a plain fabric speaks one plane)".into(),
    })
}

/// What a fabric can do. Read once by the engine at construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Rails (devices) available, `1..=MAX_RAILS`.
    pub rails: u16,
    /// Largest READ/WRITE in one work request (EFA: `max_rdma_size`, about 1 GiB).
    pub max_transfer_size: u64,
    /// Largest two-sided message (EFA: port `max_msg_sz`, about 8 KiB).
    pub max_message_size: u64,
    /// Send-queue depth per rail per endpoint.
    pub queue_depth: u32,
    /// One-sided READ is available.
    pub supports_read: bool,
    /// One-sided WRITE is available.
    pub supports_write: bool,
    /// [`WorkOp::Notify`] is available (write-with-immediate or SEND with immediate).
    pub supports_notify: bool,
    /// [`WorkOp::WriteNotify`] is available: a WRITE that also delivers a notification, in one
    /// work request whose bytes are placed before the target counts the tag (an RDMA WRITE
    /// with immediate, or a fabric's own protocol that sends the notification once the bytes
    /// are acknowledged). The engine then sends a one-slice WRITE with notification as one work
    /// request, where it otherwise waits for the WRITE's completion before it posts the
    /// notification (a round trip more).
    pub supports_write_notify: bool,
}

/// A memory range to register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Start address in this process.
    pub addr: u64,
    /// Length in bytes, at least 1.
    pub len: u64,
    /// Rights granted to peers.
    pub access: Access,
}

/// The result of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Fabric-private handle for [`Fabric::deregister`].
    pub handle: u64,
    /// Local key per rail (`lkey`), carried by work requests as `local_key`.
    pub local_keys: Vec<u64>,
    /// Remote key per rail, opaque bytes for the descriptor.
    pub remote_keys: Vec<Vec<u8>>,
}

/// The operation of a work request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkOp {
    /// Copy `len` bytes from the remote range to the local range.
    Read,
    /// Copy `len` bytes from the local range to the remote range.
    Write,
    /// Deliver `tag` to the target's notification counters (zero-length write-with-immediate or
    /// SEND with immediate). `len` is at most `max_message_size` and is 0 when the engine posts it.
    Notify {
        /// The tag the target counts.
        tag: u32,
    },
    /// A [`Write`](WorkOp::Write) whose target counts `tag` once the bytes are placed, as one
    /// work request (RDMA WRITE with immediate). Posted only to fabrics whose
    /// [`Capabilities::supports_write_notify`] is set; its completion means what a WRITE's and a
    /// [`Notify`](WorkOp::Notify)'s both mean.
    WriteNotify {
        /// The tag the target counts.
        tag: u32,
    },
}

impl WorkOp {
    /// Whether the operation carries `len` bytes from the local range to the remote one.
    pub fn writes(self) -> bool {
        matches!(self, WorkOp::Write | WorkOp::WriteNotify { .. })
    }
}

/// One work request, a plain `Copy` value (no allocation, no references).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkRequest {
    /// Opaque to the fabric; returned in the completion (the `wr_id`).
    pub token: u64,
    /// The operation.
    pub op: WorkOp,
    /// Local rail that posts it.
    pub rail: u16,
    /// The peer.
    pub peer: PeerId,
    /// The peer's rail it targets.
    pub remote_rail: u16,
    /// Local address (inside memory registered with this fabric).
    pub local_addr: u64,
    /// Local key for `rail`.
    pub local_key: u64,
    /// Remote address (the descriptor's `base` plus offset).
    pub remote_addr: u64,
    /// Remote key for `remote_rail`, as decoded by [`Fabric::decode_remote_key`].
    pub remote_key: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One completion: the token of the work request and its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Completion {
    /// The work request's token.
    pub token: u64,
    /// `None` on success, else why it failed.
    pub error: Option<FailReason>,
}

/// A network (or model of one) as seen by one engine. See the [module docs](self).
pub trait Fabric: Send + Sync {
    /// Short name, also written into descriptors (`sim`, `tcp`, `verbs`, `efa`). Peers must use
    /// the same fabric.
    fn name(&self) -> &str;

    /// What the fabric can do.
    fn capabilities(&self) -> Capabilities;

    /// This engine's per-rail addresses (opaque bytes), one entry per rail.
    fn local_addresses(&self) -> Vec<Vec<u8>>;

    /// Registers memory on every rail.
    ///
    /// # Safety
    ///
    /// `region` must be valid for reads and writes until [`Fabric::deregister`] returns; the
    /// fabric (and peers through it) may access it at any time in between.
    unsafe fn register(&self, region: MemoryRegion) -> Result<Registration, FabricError>;

    /// Registers memory on the rails of `rails` (rails out of range are ignored), for an engine
    /// that registers memory only on the rails its [`RailPolicy`](crate::RailPolicy) uses for
    /// the memory's location ([`EngineConfig::register_policy_rails_only`](crate::EngineConfig)).
    /// The registration still has an entry per rail: a rail left out has local key 0 and an
    /// *empty* remote key, and peers never target it. A fabric may register on more rails than
    /// asked; the default registers on every rail.
    ///
    /// # Safety
    ///
    /// As [`Fabric::register`].
    unsafe fn register_on(
        &self,
        region: MemoryRegion,
        rails: &RailSet,
    ) -> Result<Registration, FabricError> {
        let _ = rails;
        // SAFETY: forwarded from the caller (same contract).
        unsafe { self.register(region) }
    }

    /// Undoes a registration. After it returns, no peer can access the memory through it.
    fn deregister(&self, registration: &Registration) -> Result<(), FabricError>;

    /// Decodes the opaque remote key bytes a peer published for `rail`.
    fn decode_remote_key(&self, rail: u16, key: &[u8]) -> Result<u64, FabricError>;

    /// Connects to the peer with these per-rail addresses (see the module docs, step 4).
    fn connect(&self, remote: &[Vec<u8>]) -> Result<PeerId, FabricError>;

    /// Target side of a connection: makes this fabric accept requests from the initiator with
    /// these per-rail addresses (EFA: create an AH for it).
    fn accept(&self, initiator: &[Vec<u8>]) -> Result<(), FabricError>;

    /// Hands the fabric the counters that incoming notifications increment.
    fn bind_notifications(&self, sink: Arc<Notifications>);

    /// Tells the fabric its engine's name, before any address is published. A fabric that
    /// recognises restarted peers uses it to tell a restart (the same name on the same devices)
    /// from another engine sharing those devices. The default ignores it.
    fn bind_name(&self, _name: &str) {}

    /// The fabrics this one speaks, in order of preference, each with its rails in this
    /// fabric's numbering. A plain fabric speaks itself alone on all its rails (the default); a
    /// [`multi::MultiFabric`] lists its members. The engine publishes one offer per plane in
    /// each descriptor and reaches a peer over the first plane the peer also offers.
    fn planes(&self) -> Vec<Plane> {
        vec![Plane {
            name: self.name().to_string(),
            rails: 0..self.capabilities().rails,
        }]
    }

    /// [`Fabric::connect`] on plane `plane` (an index into [`Fabric::planes`]), with the
    /// peer's addresses for that plane.
    fn connect_plane(&self, plane: usize, remote: &[Vec<u8>]) -> Result<PeerId, FabricError> {
        check_single_plane(plane)?;
        self.connect(remote)
    }

    /// [`Fabric::accept`] on plane `plane`, with the initiator's addresses for that plane.
    fn accept_plane(&self, plane: usize, initiator: &[Vec<u8>]) -> Result<(), FabricError> {
        check_single_plane(plane)?;
        self.accept(initiator)
    }

    /// [`Fabric::decode_remote_key`] on plane `plane`: `rail` is the peer's rail within that
    /// plane.
    fn decode_plane_key(&self, plane: usize, rail: u16, key: &[u8]) -> Result<u64, FabricError> {
        check_single_plane(plane)?;
        self.decode_remote_key(rail, key)
    }

    /// Creates the per-worker hot-path resources.
    fn endpoint(&self) -> Result<Box<dyn Endpoint>, FabricError>;

    /// The cpus this fabric's own threads were pinned to by its
    /// [`Affinity`](crate::affinity::Affinity) (the cores of its devices' NUMA node by
    /// default), for the user's worker threads to follow; `None` where they are not pinned
    /// (no NUMA information, no threads, or [`Affinity::None`](crate::affinity::Affinity::None)).
    fn local_cpus(&self) -> Option<crate::affinity::CpuSet> {
        None
    }
}

/// Per-worker posting and polling. Owned by one thread at a time.
pub trait Endpoint: Send {
    /// Posts a prefix of `wrs` and returns how many were accepted. Fewer than `wrs.len()` means
    /// a send queue is full (backpressure): poll, then post the rest. Every accepted request
    /// completes exactly once.
    fn post(&mut self, wrs: &[WorkRequest]) -> usize;

    /// Moves up to `out.len()` completions into `out` and returns how many. Never blocks.
    fn poll(&mut self, out: &mut [Completion]) -> usize;

    /// Work requests accepted and not yet returned by `poll`.
    fn outstanding(&self) -> usize;

    /// Arms the endpoint's completion notifications, so that [`block`](Self::block) returns
    /// once a completion arrives. `false`: this endpoint cannot block now (no completion
    /// channels, or progress that only polling makes); the caller pauses instead. After `true`,
    /// poll once more before blocking, so a completion that came before the arming is not slept
    /// through. The default cannot block.
    fn arm(&mut self) -> bool {
        false
    }

    /// Blocks until a completion event arrives or `timeout` passes; only after
    /// [`arm`](Self::arm) returned `true` and a poll since found nothing. Returns at once where
    /// the endpoint cannot block.
    fn block(&mut self, timeout: std::time::Duration) {
        let _ = timeout;
    }
}

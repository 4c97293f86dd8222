//! A segment-addressed batch transfer engine, in the spirit of Mooncake's Transfer Engine, over
//! pluggable fabrics ([`fabric::sim`] here; `tcp`, `verbs`, `efa` implement the same
//! [`fabric::Fabric`] trait).
//!
//! # Model
//!
//! - An [`Engine`] (shared, `Send + Sync`, cheap to clone) owns one fabric instance and its
//!   rails. Memory is registered as a named *segment* ([`Engine::register_memory`], `unsafe`:
//!   the caller keeps it alive; or [`Engine::register_owned`]: the engine owns it) with a
//!   [`Location`] (`cpu:N`, `gpu:N`) and remote [`Access`] rights (none by default). Its
//!   [`SegmentDescriptor`] is published through a [`Metadata`] service.
//! - A peer's segment is opened by name ([`Engine::open_segment`]) into a [`RemoteSegment`].
//! - Requests ([`Request`]: READ, WRITE, WRITE_WITH_NOTIFY; local segment + offset or raw
//!   address; remote segment + offset; length) go into batches ([`Engine::allocate_batch`])
//!   through a per-thread [`Worker`]: [`Worker::submit`] validates all requests before posting
//!   any, slices them, stripes slices over rails and posts; [`Worker::wait`] drives completions.
//!   Status is readable from any thread ([`Engine::request_status`], [`Engine::batch_status`]).
//! - Unregistering a segment that requests still use is *refused*
//!   ([`TransportError::SegmentBusy`]); so is freeing a batch with work requests in flight
//!   ([`TransportError::BatchBusy`]); drain first ([`Worker::drain`]). A dropped worker hands
//!   its work requests in flight to the engine, which completes them (see
//!   [Dropping a worker](Worker#dropping-a-worker)).
//! - Handles ([`SegmentId`], [`RemoteSegment`], [`BatchId`]) belong to the engine that issued
//!   them; another engine refuses them ([`TransportError::ForeignHandle`]).
//! - Bad input is a typed error naming the offending value, never a panic: requests, names,
//!   memory ranges, configuration (checked when an engine or fabric is built), and timeouts
//!   (`Duration::MAX` means no deadline).
//! - The hot path (submit, post, poll, complete) takes no lock and allocates nothing once warm;
//!   completions are counted per request and batch with atomics, addressed by the work
//!   request's token (batch slot, generation, rail, request index).
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use transport::fabric::sim::{SimConfig, SimFabric, SimNetwork};
//! use transport::*;
//!
//! let net = SimNetwork::new();
//! let meta = Arc::new(LocalRegistry::new());
//! let engine = |name: &str| {
//!     let fabric = SimFabric::new(&net, SimConfig::default()).unwrap();
//!     Engine::new(EngineConfig::new(name), fabric, meta.clone()).unwrap()
//! };
//! let (a, b) = (engine("a"), engine("b"));
//!
//! // b exposes a writable buffer; a writes into it from its own buffer.
//! let target = b
//!     .register_owned("b/kv", OwnedMemory::zeroed(4096, 4096)?, "cpu:0".parse()?, Access::REMOTE_WRITE)?;
//! let src = a.register_owned("a/src", OwnedMemory::from_vec(vec![7; 4096])?, Location::Cpu(0), Access::NONE)?;
//! let remote = a.open_segment("b/kv")?;
//!
//! let mut worker = a.worker()?;
//! let batch = a.allocate_batch(8)?;
//! worker.submit(batch, &[Request::write(src, 0, remote, 100, 16).with_op(Opcode::WriteWithNotify(3))])?;
//! let status = worker.wait(batch, Duration::from_secs(1))?;
//! assert!(status.all_completed());
//! assert_eq!(b.notifications().count(3)?, 1);
//!
//! let mut out = [0u8; 16];
//! b.read_owned(target, 100, &mut out)?;
//! assert_eq!(out, [7; 16]);
//! a.free_batch(batch)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A thread that polls for bytes a peer writes (a flag at the end of each message, as
//! perftest's `write_lat` polls its buffer's last byte) holds the segment open with
//! [`Engine::owned_view`]: each [`OwnedView::load`] is then a volatile read and a bounds check,
//! with no lookup of the segment.
//!
//! # Clusters (etcd)
//!
//! Peer-to-peer discovery ([`PeerMetadata`], segments opened as `host:port/name`) needs no
//! service. For tens to hundreds of nodes, build with the `etcd` feature and give every engine
//! a `metadata::EtcdMetadata` (or [`discovery::connect`] with a Mooncake-style
//! `etcd://host:port[,host:port]`; `P2P` stays the default). Segment names are then
//! cluster-wide and each descriptor lives under a key prefix (`/efa-transport/`), bound to a
//! lease its process keeps alive (TTL 3 s by default).
//!
//! What that buys is a failure signal. When a process dies, hangs or is cut off, its lease
//! expires, etcd deletes its descriptors, and every engine that opened one of its segments
//! hears of it through a watch ([`Metadata::watch`]): requests in flight to that peer end
//! `Failed(`[`FailReason::PeerGone`]`)` at the next [`Worker::wait`] instead of hanging until
//! a fabric timeout, new ones are refused ([`TransportError::PeerGone`]), and opening its
//! names fails ([`TransportError::SegmentNotFound`]) until it is back; a restarted peer
//! (same names, new descriptors) is used again by opening its segment anew. The hot path
//! pays one atomic load per request for this (a per-remote `gone` flag); a wait sweeps its
//! batch only when a peer went gone since its last sweep. Requests complete exactly once: a
//! late fabric completion of a request already failed `PeerGone` is absorbed, as after a
//! cancel, so drain a batch before freeing it.
//!
//! ```no_run
//! use transport::fabric::tcp::{TcpConfig, TcpFabric};
//! use transport::{discovery, Engine, EngineConfig};
//!
//! let meta = discovery::connect("etcd://10.0.0.1:2379,10.0.0.2:2379", "node-7")?;
//! let fabric = TcpFabric::new(TcpConfig::default())?;
//! let engine = Engine::new(EngineConfig::new("node-7"), fabric, meta)?;
//! let remote = engine.open_segment("node-3/kv")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod access;
pub mod affinity;
mod batch;
mod bytes;
pub mod descriptor;
pub mod discovery;
mod engine;
mod error;
pub mod fabric;
mod handle;
mod location;
mod memory;
pub mod metadata;
pub mod metrics;
mod notify;
mod os_error;
mod owned_view;
pub mod pages;
mod peer_gone;
mod request;
pub mod retry;
mod slab;
mod slice;
mod store;
mod topology;
pub mod wait;
mod worker;

pub use access::Access;
pub use batch::{BatchStatus, RequestStatus, MAX_BATCH_CAPACITY};
pub use bytes::BytesError;
pub use descriptor::{DescriptorError, FabricOffer, RailDescriptor, SegmentDescriptor};
pub use discovery::{DiscoveryConfig, PeerMetadata};
pub use engine::{
    Engine, EngineConfig, RegistrationReport, SegmentInfo, DEFAULT_SLICE_SIZE, MAX_NOTIFY_TAGS,
    MAX_TABLE,
};
pub use error::{FabricError, FailReason, TransportError};
pub use handle::{BatchId, Handle, RemoteSegment, SegmentId};
pub use location::{Location, LocationParseError};
pub use memory::{AllocError, OwnedMemory};
#[cfg(feature = "etcd")]
pub use metadata::{EtcdConfig, EtcdMetadata};
pub use metadata::{LocalRegistry, Metadata, MetadataError};
pub use metrics::MetricsSnapshot;
pub use notify::Notifications;
pub use os_error::OsError;
pub use owned_view::OwnedView;
pub use pages::{page_info, Backing, HugeAllocError, HugePages, PageInfo, PageInfoError};
pub use request::{LocalAddr, Opcode, Request};
pub use retry::RetryPolicy;
pub use slice::{SlicePlan, MAX_SLICES_PER_REQUEST};
pub use topology::{AffinityTable, AllRails, RailPolicy, RailSet};
pub use wait::{WaitMode, BLOCK_BOUND};
pub use worker::Worker;

//! Where segment descriptors are published and found.
//!
//! The [`Metadata`] trait is the seam for discovery services: the in-process [`LocalRegistry`]
//! here, the peer-to-peer TCP exchange ([`PeerMetadata`](crate::discovery::PeerMetadata)) and,
//! with the `etcd` feature, a cluster store (`EtcdMetadata`). Implementations deal in names
//! and owned [`SegmentDescriptor`]s only, never in fabric types, so adding a service needs no
//! fabric change and adding a fabric needs no service change.
//!
//! A service may also tell the engine when a peer it opened is gone ([`Metadata::watch`]):
//! etcd does, through the lease that keeps each engine's descriptors alive. The engine then
//! fails that peer's requests with [`FailReason::PeerGone`](crate::FailReason::PeerGone) (see
//! [`Engine::open_segment`](crate::Engine::open_segment)).
//!
//! [`discovery::connect`](crate::discovery::connect) builds a service from a Mooncake-style
//! connection string (`P2P`, `etcd://host:port[,host:port]`).

mod local;
mod spec;

#[cfg(feature = "etcd")]
mod etcd;

use std::sync::Arc;

use crate::descriptor::{DescriptorError, SegmentDescriptor};

#[cfg(feature = "etcd")]
pub use etcd::{EtcdConfig, EtcdMetadata};
pub use local::LocalRegistry;
pub use spec::MetadataSpec;

/// Errors of a metadata service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// No descriptor under that name.
    #[error("no descriptor named {0:?}")]
    NotFound(String),
    /// A descriptor with a newer or equal revision is already published under that name by a
    /// different engine.
    #[error("segment {name:?} is owned by engine {owner:?}")]
    Conflict {
        /// The name.
        name: String,
        /// The engine that published it.
        owner: String,
    },
    /// A stored or received descriptor did not decode.
    #[error("corrupt descriptor for {name:?}: {source}")]
    Corrupt {
        /// The name.
        name: String,
        /// The decoding error.
        source: DescriptorError,
    },
    /// The service could not be reached or answered with an error.
    #[error("metadata service unavailable: {0}")]
    Unavailable(String),
    /// A call to the service failed; `op` names the call and its key or endpoints.
    #[error("metadata service: {op} failed")]
    Service {
        /// The call (`put "/efa-transport/a/kv"`, `connect 127.0.0.1:2379`, ...).
        op: String,
        /// What the service or its client library reported.
        #[source]
        source: ServiceError,
    },
    /// A call to the service did not finish in time.
    #[error("metadata service: {op} did not finish within {after:?}")]
    Timeout {
        /// The call.
        op: String,
        /// The bound it ran into.
        after: std::time::Duration,
    },
    /// A connection string that names no service this build can reach.
    #[error("metadata connection string {spec:?}: {reason}")]
    BadSpec {
        /// The string given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting of the service is out of range (the message names it and its value).
    #[error("bad metadata service configuration: {0}")]
    Config(String),
    /// Talking to a peer's service failed in the OS: its name did not resolve, no address of it
    /// accepted a connection, or a frame could not be sent or read.
    #[error("metadata service {server}: cannot {what}")]
    PeerIo {
        /// The peer's service (`host:port`).
        server: String,
        /// What failed: `resolve`, `connect`, `send a frame` or `read a frame`.
        what: &'static str,
        /// The OS error (of the last address tried).
        #[source]
        source: crate::OsError,
    },
    /// An OS call of the service (socket, thread) failed.
    #[error("metadata service: {what} failed")]
    Os {
        /// What the service was doing, with the address involved.
        what: String,
        /// The OS error.
        #[source]
        source: crate::OsError,
    },
}

impl MetadataError {
    /// A failed OS call while doing `what`.
    pub(crate) fn os(what: impl std::fmt::Display, source: std::io::Error) -> Self {
        MetadataError::Os {
            what: what.to_string(),
            source: source.into(),
        }
    }
}

/// The error a service's client library reported, kept whole (as the `source` of
/// [`MetadataError::Service`]). Cheap to clone; two are equal when they are the same report.
#[derive(Debug, Clone)]
pub struct ServiceError(Arc<dyn std::error::Error + Send + Sync>);

impl ServiceError {
    /// Wraps a client library's error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ServiceError(Arc::new(e))
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ServiceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for ServiceError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ServiceError {}

/// Called once when a watched descriptor's owner is gone (see [`Metadata::watch`]).
pub type OnGone = Box<dyn FnOnce() + Send + 'static>;

/// Keeps a watch ([`Metadata::watch`]) running; dropping it ends the watch.
pub struct WatchGuard {
    cancel: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl WatchGuard {
    /// A guard that runs `cancel` when dropped.
    pub fn new(cancel: impl FnOnce() + Send + Sync + 'static) -> Self {
        WatchGuard {
            cancel: Some(Box::new(cancel)),
        }
    }

    /// A guard of a service that does not watch (nothing to end).
    pub fn none() -> Self {
        WatchGuard { cancel: None }
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
    }
}

impl std::fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchGuard")
            .field("active", &self.cancel.is_some())
            .finish()
    }
}

/// A directory of segment descriptors keyed by name.
///
/// All methods are fallible and may block (network services); the engine calls them only on
/// the control path (register, unregister, open), never per request. Implementations must be
/// `Send + Sync`: an engine shares one instance across threads.
pub trait Metadata: Send + Sync {
    /// Publishes (inserts or replaces) a descriptor under `desc.name`. A service should refuse
    /// ([`MetadataError::Conflict`]) a name held by another engine.
    fn publish(&self, desc: &SegmentDescriptor) -> Result<(), MetadataError>;
    /// Finds the descriptor published under `name`.
    fn lookup(&self, name: &str) -> Result<SegmentDescriptor, MetadataError>;
    /// Removes the descriptor under `name`; returns whether one was there.
    fn remove(&self, name: &str) -> Result<bool, MetadataError>;

    /// Watches `desc` (as [`Metadata::lookup`] returned it) and calls `gone` once, from a
    /// thread of the service, when it stops being what is published under its name: its
    /// owner's lease expired (the process died or hung), it was removed, or it was replaced
    /// (the owner restarted or re-registered; the keys the watcher holds are stale either
    /// way). When it is already no longer published, `gone` is called before this returns.
    /// The watch ends when the returned guard is dropped. `gone` must be quick and must not
    /// call back into the service.
    ///
    /// The default watches nothing (services without a liveness signal, such as the
    /// peer-to-peer exchange, where a dead peer shows as fabric errors instead).
    ///
    /// # Errors
    ///
    /// The service could not be asked ([`MetadataError::Service`], [`MetadataError::Timeout`]).
    fn watch(&self, desc: &SegmentDescriptor, gone: OnGone) -> Result<WatchGuard, MetadataError> {
        let _ = (desc, gone);
        Ok(WatchGuard::none())
    }
}

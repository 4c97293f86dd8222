//! Where segment descriptors are published and found.
//!
//! The [`Metadata`] trait is the seam for discovery services: the in-process [`LocalRegistry`]
//! here, a peer-to-peer TCP exchange or a cluster store (etcd) elsewhere. Implementations deal in
//! names and owned [`SegmentDescriptor`]s only, never in fabric types, so adding a service needs
//! no fabric change and adding a fabric needs no service change.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::descriptor::{DescriptorError, SegmentDescriptor};

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
}

/// An in-process registry. Descriptors are stored in their encoded form, so everything that
/// passes through it also passes through the codec, as it would over a network.
#[derive(Debug, Default)]
pub struct LocalRegistry {
    entries: Mutex<HashMap<String, (String, Vec<u8>)>>,
}

impl LocalRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of published descriptors.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is published.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Metadata for LocalRegistry {
    fn publish(&self, desc: &SegmentDescriptor) -> Result<(), MetadataError> {
        let bytes = desc.encode().map_err(|source| MetadataError::Corrupt {
            name: desc.name.clone(),
            source,
        })?;
        let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((owner, _)) = map.get(&desc.name) {
            if owner != &desc.engine {
                return Err(MetadataError::Conflict {
                    name: desc.name.clone(),
                    owner: owner.clone(),
                });
            }
        }
        map.insert(desc.name.clone(), (desc.engine.clone(), bytes));
        Ok(())
    }

    fn lookup(&self, name: &str) -> Result<SegmentDescriptor, MetadataError> {
        let map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, bytes) = map
            .get(name)
            .ok_or_else(|| MetadataError::NotFound(name.to_string()))?;
        SegmentDescriptor::decode(bytes).map_err(|source| MetadataError::Corrupt {
            name: name.to_string(),
            source,
        })
    }

    fn remove(&self, name: &str) -> Result<bool, MetadataError> {
        let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(map.remove(name).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Access, Location};

    fn desc(name: &str, engine: &str, rev: u64) -> SegmentDescriptor {
        SegmentDescriptor {
            revision: rev,
            name: name.into(),
            fabric: "sim".into(),
            engine: engine.into(),
            location: Location::Cpu(0),
            access: Access::REMOTE_READ,
            base: 4096,
            len: 10,
            rails: vec![],
        }
    }

    #[test]
    fn publish_lookup_remove() {
        let reg = LocalRegistry::new();
        assert_eq!(reg.lookup("a"), Err(MetadataError::NotFound("a".into())));
        reg.publish(&desc("a", "e1", 1)).unwrap();
        assert_eq!(reg.lookup("a").unwrap(), desc("a", "e1", 1));
        reg.publish(&desc("a", "e1", 2)).unwrap();
        assert_eq!(reg.lookup("a").unwrap().revision, 2);
        assert!(matches!(
            reg.publish(&desc("a", "e2", 9)),
            Err(MetadataError::Conflict { .. })
        ));
        assert!(reg.remove("a").unwrap());
        assert!(!reg.remove("a").unwrap());
        assert!(reg.is_empty());
    }
}

//! The handles of the engine API: plain values that name a local segment, an opened remote
//! segment or a batch of one engine. A leaf: it depends on no other module, so the modules that
//! speak of handles (errors, requests, batches, the engine) need not import each other.

/// Handle of a local segment. Stale after [`Engine::unregister`](crate::Engine::unregister).
/// Only the engine that registered it accepts it (another engine refuses it with
/// [`TransportError::ForeignHandle`](crate::TransportError::ForeignHandle)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentId {
    pub(crate) engine: u32,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// Handle of an opened remote segment. Stale after
/// [`Engine::close_segment`](crate::Engine::close_segment). Only the engine that opened it
/// accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteSegment {
    pub(crate) engine: u32,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// Handle of an allocated batch. Stale after [`Engine::free_batch`](crate::Engine::free_batch)
/// or [`Engine::recycle_batch`](crate::Engine::recycle_batch): using it then is a
/// [`TransportError::StaleBatch`](crate::TransportError::StaleBatch). Only the engine that
/// allocated it accepts it (another engine refuses it with
/// [`TransportError::ForeignHandle`](crate::TransportError::ForeignHandle)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchId {
    pub(crate) engine: u32,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// A handle of the engine API, for errors that concern any kind of handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handle {
    /// A local segment.
    Segment(SegmentId),
    /// An opened remote segment.
    Remote(RemoteSegment),
    /// A batch.
    Batch(BatchId),
}

impl Handle {
    /// The engine that issued the handle (see [`Engine::id`](crate::Engine::id)).
    pub fn engine(self) -> u32 {
        match self {
            Handle::Segment(h) => h.engine,
            Handle::Remote(h) => h.engine,
            Handle::Batch(h) => h.engine,
        }
    }
}

impl std::fmt::Display for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handle::Segment(h) => write!(f, "{h:?}"),
            Handle::Remote(h) => write!(f, "{h:?}"),
            Handle::Batch(h) => write!(f, "{h:?}"),
        }
    }
}

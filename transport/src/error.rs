//! Typed errors: validation and API errors ([`TransportError`]) and completion failures
//! ([`FailReason`], named after the EFA completion statuses).

use crate::{BatchId, Handle, OsError, RemoteSegment, SegmentId};

/// Why a work request or a transfer request failed. The EFA-style names follow the provider's
/// `vendor_err` values so a failure reads the same on the sim, on verbs and on EFA hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FailReason {
    /// The work request was flushed (QP in error state, fabric shut down).
    Flushed = 1,
    /// The address handle is invalid.
    InvalidAh = 4,
    /// The local key is invalid.
    InvalidLkey = 5,
    /// The local length is invalid (e.g. above `max_rdma_size` / `max_msg_sz`).
    BadLength = 6,
    /// The remote key or range is not valid at the target (unregistered, out of bounds, no
    /// permission).
    RemoteBadAddress = 7,
    /// The target aborted the operation.
    RemoteAbort = 8,
    /// The destination QP number is wrong.
    BadDestQpn = 9,
    /// The target had no receive buffer.
    RemoteRnr = 10,
    /// The target's buffer was too short.
    RemoteBadLength = 11,
    /// The target did not answer in time (dead or unreachable peer).
    UnresponsiveRemote = 13,
    /// The target has no address handle for the initiator.
    UnknownPeer = 14,
    /// The target is unreachable.
    UnreachableRemote = 15,
    /// The two sides disagree on features.
    FeatureMismatch = 18,
    /// A transport-level failure with no EFA equivalent (e.g. a TCP connection reset).
    Io = 200,
    /// A fault injected by a test fabric without a more specific name.
    Injected = 201,
    /// The request is larger than the target accepts in one request (its
    /// `max_transfer_size`): use a smaller `slice_size`.
    ExceedsPeerLimit = 202,
    /// The peer that owns the remote segment is gone: the metadata service reported its
    /// descriptor expired (its process died or hung), removed or replaced (see
    /// [`Metadata::watch`](crate::Metadata::watch)). Requests in flight to it end with this
    /// rather than waiting for a fabric timeout.
    PeerGone = 203,
}

impl FailReason {
    /// Every reason, for iteration in tests and tools.
    pub const ALL: [FailReason; 17] = [
        FailReason::Flushed,
        FailReason::InvalidAh,
        FailReason::InvalidLkey,
        FailReason::BadLength,
        FailReason::RemoteBadAddress,
        FailReason::RemoteAbort,
        FailReason::BadDestQpn,
        FailReason::RemoteRnr,
        FailReason::RemoteBadLength,
        FailReason::UnresponsiveRemote,
        FailReason::UnknownPeer,
        FailReason::UnreachableRemote,
        FailReason::FeatureMismatch,
        FailReason::Io,
        FailReason::Injected,
        FailReason::ExceedsPeerLimit,
        FailReason::PeerGone,
    ];

    /// The EFA completion-status name (`REMOTE_BAD_ADDRESS`, `UNKNOWN_PEER`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            FailReason::Flushed => "FLUSHED",
            FailReason::InvalidAh => "INVALID_AH",
            FailReason::InvalidLkey => "INVALID_LKEY",
            FailReason::BadLength => "BAD_LENGTH",
            FailReason::RemoteBadAddress => "REMOTE_BAD_ADDRESS",
            FailReason::RemoteAbort => "REMOTE_ABORT",
            FailReason::BadDestQpn => "BAD_DEST_QPN",
            FailReason::RemoteRnr => "REMOTE_RNR",
            FailReason::RemoteBadLength => "REMOTE_BAD_LENGTH",
            FailReason::UnresponsiveRemote => "UNRESP_REMOTE",
            FailReason::UnknownPeer => "UNKNOWN_PEER",
            FailReason::UnreachableRemote => "UNREACH_REMOTE",
            FailReason::FeatureMismatch => "FEATURE_MISMATCH",
            FailReason::Io => "IO",
            FailReason::Injected => "INJECTED",
            FailReason::ExceedsPeerLimit => "EXCEEDS_PEER_LIMIT",
            FailReason::PeerGone => "PEER_GONE",
        }
    }

    /// The EFA `vendor_err` code, or `None` for reasons EFA has no code for.
    pub const fn vendor_err(self) -> Option<u32> {
        match self {
            FailReason::Io
            | FailReason::Injected
            | FailReason::ExceedsPeerLimit
            | FailReason::PeerGone => None,
            other => Some(other as u32),
        }
    }

    /// The reason for an EFA `vendor_err` code, if the code is known.
    pub fn from_vendor_err(code: u32) -> Option<FailReason> {
        FailReason::ALL
            .into_iter()
            .find(|r| r.vendor_err() == Some(code))
    }

    pub(crate) const fn code(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_code(code: u8) -> Option<FailReason> {
        FailReason::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl std::fmt::Display for FailReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An error reported by a fabric outside the completion path (setup, registration, posting).
///
/// Failures of the device or of the OS keep their cause as [`source`](std::error::Error::source):
/// the verbs call, its errno and the limit at fault (`efa::Error`, with the `rdma` feature), or
/// the OS error ([`OsError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FabricError {
    /// The fabric cannot do this operation.
    #[error("fabric does not support {what}")]
    Unsupported {
        /// What is missing.
        what: &'static str,
    },
    /// An opaque peer address could not be parsed or reached.
    #[error("bad peer address on rail {rail}: {reason}")]
    BadAddress {
        /// The rail.
        rail: u16,
        /// Why.
        reason: String,
    },
    /// An opaque remote key could not be parsed.
    #[error("bad remote key on rail {rail}")]
    BadKey {
        /// The rail.
        rail: u16,
    },
    /// A rail index beyond the fabric's rails.
    #[error("rail {rail} out of range (fabric has {rails} rails)")]
    BadRail {
        /// The rail given.
        rail: u16,
        /// The rail count.
        rails: u16,
    },
    /// A configuration value out of range, refused when the fabric is built.
    #[error("{fabric}: {field} = {value} is out of range (expected {expected})")]
    BadConfig {
        /// The fabric (`sim`, `tcp`, ...).
        fabric: &'static str,
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it may be.
        expected: String,
    },
    /// A resource limit (regions, peers, queues) was reached.
    #[error("fabric resource exhausted: {0}")]
    Exhausted(&'static str),
    /// A memory range the fabric cannot register.
    #[error("{fabric}: cannot register memory {addr:#x}+{len}: {reason}")]
    BadRegion {
        /// The fabric.
        fabric: &'static str,
        /// Start address.
        addr: u64,
        /// Length.
        len: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A registration the fabric does not hold (already deregistered, or another fabric's).
    #[error("{fabric}: no registration with key {handle:#x}")]
    UnknownRegistration {
        /// The fabric.
        fabric: &'static str,
        /// The registration's handle.
        handle: u64,
    },
    /// A fabric returned a registration with the wrong number of keys.
    #[error(
        "{fabric}: registration has {local_keys} local / {remote_keys} remote keys for {rails} rails"
    )]
    BadRegistration {
        /// The fabric.
        fabric: String,
        /// Local keys returned.
        local_keys: usize,
        /// Remote keys returned.
        remote_keys: usize,
        /// The fabric's rails.
        rails: usize,
    },
    /// A registration made for an engine that registers memory only on its policy's rails
    /// has no key on a rail that the policy uses for the memory.
    #[error("{fabric}: registration has no key on rail {rail}, which the rail policy uses")]
    MissingRail {
        /// The fabric.
        fabric: String,
        /// The rail without a key.
        rail: u16,
    },
    /// No device the fabric can use is present.
    #[error("{fabric}: no {wanted} found")]
    NoDevice {
        /// The fabric.
        fabric: &'static str,
        /// The kind of device it looked for.
        wanted: &'static str,
    },
    /// A device is present but cannot serve the fabric as configured.
    #[error("{fabric}: device {device}: {reason}")]
    DeviceUnfit {
        /// The fabric.
        fabric: &'static str,
        /// The device's name.
        device: String,
        /// What it lacks, with the values at fault.
        reason: String,
    },
    /// A peer refused to connect.
    #[error("{fabric}: peer {peer} refused: {reason}")]
    Refused {
        /// The fabric.
        fabric: &'static str,
        /// The peer's address.
        peer: String,
        /// The reason it gave.
        reason: String,
    },
    /// A device call (verbs, efadv) failed; the cause names the call, its errno and the value
    /// at fault.
    #[cfg(feature = "rdma")]
    #[error("{fabric}: {what} failed")]
    Device {
        /// The fabric.
        fabric: &'static str,
        /// What the fabric was doing, with the device's name.
        what: String,
        /// The device's error.
        #[source]
        source: ::efa::Error,
    },
    /// A thread of the fabric could not be placed as its [`Affinity`](crate::affinity::Affinity)
    /// asks (the cpu set and the OS error are in the cause).
    #[error("{fabric}: {what}")]
    Affinity {
        /// The fabric.
        fabric: &'static str,
        /// Which thread.
        what: String,
        /// Why.
        #[source]
        source: crate::affinity::AffinityError,
    },
    /// An OS call (socket, thread) failed.
    #[error("{fabric}: {what} failed")]
    Os {
        /// The fabric.
        fabric: &'static str,
        /// What the fabric was doing, with the address or name involved.
        what: String,
        /// The OS error.
        #[source]
        source: OsError,
    },
}

impl FabricError {
    /// A failed device call of `fabric` while doing `what`.
    #[cfg(feature = "rdma")]
    pub(crate) fn device(
        fabric: &'static str,
        what: impl std::fmt::Display,
        source: ::efa::Error,
    ) -> Self {
        FabricError::Device {
            fabric,
            what: what.to_string(),
            source,
        }
    }

    /// A thread of `fabric` (`what`) that could not be started or pinned.
    pub(crate) fn affinity(
        fabric: &'static str,
        what: impl std::fmt::Display,
        source: crate::affinity::AffinityError,
    ) -> Self {
        FabricError::Affinity {
            fabric,
            what: what.to_string(),
            source,
        }
    }

    /// A failed OS call of `fabric` while doing `what`.
    pub(crate) fn os(
        fabric: &'static str,
        what: impl std::fmt::Display,
        source: std::io::Error,
    ) -> Self {
        FabricError::Os {
            fabric,
            what: what.to_string(),
            source: source.into(),
        }
    }
}

/// Errors of the transport API. Each names the offending value(s).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A request of zero bytes.
    #[error("request {index}: zero length")]
    ZeroLength {
        /// Index of the request in the submitted slice.
        index: usize,
    },
    /// A request that would need more work requests than one request may count.
    #[error(
        "request {index}: {len} bytes in slices of {slice_size} need {slices} work requests, \
         more than the {max} a request may have (raise slice_size or split the request)"
    )]
    TooManySlices {
        /// Index of the request.
        index: usize,
        /// Its length.
        len: u64,
        /// The slice size in force.
        slice_size: u64,
        /// Slices it would need.
        slices: u64,
        /// The limit ([`MAX_SLICES_PER_REQUEST`](crate::MAX_SLICES_PER_REQUEST)).
        max: u64,
    },
    /// A submit that would put more work requests in flight on a batch than it can count.
    #[error(
        "batch {batch:?}: {in_flight} work requests in flight + {adding} new exceed the limit of {max}"
    )]
    TooManyInFlight {
        /// The batch.
        batch: BatchId,
        /// Work requests in flight before the submit.
        in_flight: u32,
        /// Work requests the submit needs.
        adding: u64,
        /// The limit.
        max: u32,
    },
    /// A deferred submit ([`Worker::submit_deferred`](crate::Worker::submit_deferred)) needs
    /// more work requests than the worker's post queue has room for; nothing was submitted.
    #[error(
        "a deferred submit needs {work_requests} work requests and the worker's post queue has \
         room for {room}: post the deferred ones first (post_deferred) or submit at once"
    )]
    DeferredQueueFull {
        /// Work requests the submit needs.
        work_requests: u64,
        /// Free places in the post queue.
        room: usize,
    },
    /// Local memory not inside any registered segment.
    #[error("request {index}: local range {addr:#x}+{len} is not inside a registered segment")]
    LocalNotRegistered {
        /// Index of the request.
        index: usize,
        /// Start address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// A local range that runs past its segment.
    #[error("request {index}: local range offset {offset}+{len} exceeds segment {segment:?} of {seg_len} bytes")]
    LocalOutOfRange {
        /// Index of the request.
        index: usize,
        /// The segment.
        segment: SegmentId,
        /// Offset in the segment.
        offset: u64,
        /// Length.
        len: u64,
        /// Segment length.
        seg_len: u64,
    },
    /// A remote range that runs past the remote segment.
    #[error(
        "request {index}: remote range {offset}+{len} exceeds segment {name:?} of {seg_len} bytes"
    )]
    RemoteOutOfRange {
        /// Index of the request.
        index: usize,
        /// Remote segment name.
        name: String,
        /// Offset in the remote segment.
        offset: u64,
        /// Length.
        len: u64,
        /// Remote segment length.
        seg_len: u64,
    },
    /// A remote segment handle that is not open (closed or stale).
    #[error("unknown or closed remote segment {0:?}")]
    UnknownRemote(RemoteSegment),
    /// A remote segment handle still used by a submit in progress.
    #[error("remote segment {remote:?} is used by {in_flight} submits in progress")]
    RemoteBusy {
        /// The handle.
        remote: RemoteSegment,
        /// Submits using it.
        in_flight: u32,
    },
    /// A local segment handle that is not registered (unregistered or stale).
    #[error("unknown or unregistered local segment {0:?}")]
    UnknownSegment(SegmentId),
    /// The remote segment does not grant the access the op needs.
    #[error("request {index}: remote segment {name:?} grants {granted}, {op} needs {needed}")]
    AccessDenied {
        /// Index of the request.
        index: usize,
        /// Remote segment name.
        name: String,
        /// The op.
        op: &'static str,
        /// Rights granted.
        granted: crate::Access,
        /// Rights needed.
        needed: crate::Access,
    },
    /// The peer owning the remote segment is gone (see
    /// [`FailReason::PeerGone`]); open its segment again once it is back.
    #[error("request {index}: the owner of remote segment {name:?} is gone")]
    PeerGone {
        /// Index of the request.
        index: usize,
        /// Remote segment name.
        name: String,
    },
    /// No segment of this name is published.
    #[error("no segment named {0:?}")]
    SegmentNotFound(String),
    /// The segment was published by a fabric this engine does not speak.
    #[error("segment {name:?} is on fabric {remote:?}, this engine uses {local:?}")]
    FabricMismatch {
        /// Segment name.
        name: String,
        /// The segment's fabric.
        remote: String,
        /// This engine's fabric.
        local: String,
    },
    /// A segment or engine name that cannot be published.
    #[error("{what} name {preview:?} ({len} bytes) {reason}")]
    BadName {
        /// `segment` or `engine`.
        what: &'static str,
        /// The start of the name.
        preview: String,
        /// Its length in bytes.
        len: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// What backs a segment's memory could not be read.
    #[error("segment {segment:?}: cannot tell what pages back its memory")]
    Pages {
        /// The segment.
        segment: crate::SegmentId,
        /// Why.
        #[source]
        source: crate::PageInfoError,
    },
    /// A memory range that cannot be registered.
    #[error("memory {addr:#x}+{len} cannot be registered: {reason}")]
    BadMemory {
        /// Start address.
        addr: u64,
        /// Length.
        len: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A location that does not fit the memory registered with it.
    #[error("location {location} does not fit: {reason}")]
    BadLocation {
        /// The location given.
        location: crate::Location,
        /// Why it does not fit.
        reason: &'static str,
    },
    /// A local segment name already registered in this engine.
    #[error("segment name {0:?} already registered")]
    DuplicateName(String),
    /// The batch cannot take that many more requests.
    #[error("batch {batch:?} full: {submitted} submitted + {adding} new > capacity {capacity}")]
    BatchFull {
        /// The batch.
        batch: BatchId,
        /// Already submitted.
        submitted: usize,
        /// Requests in this call.
        adding: usize,
        /// Capacity.
        capacity: usize,
    },
    /// A batch handle whose slot was freed or reused.
    #[error("stale or unknown batch handle {0:?}")]
    StaleBatch(BatchId),
    /// A request index beyond what was submitted.
    #[error("batch {batch:?} has no request {index}")]
    NoSuchRequest {
        /// The batch.
        batch: BatchId,
        /// The index.
        index: usize,
    },
    /// The batch still has work requests in flight.
    #[error("batch {batch:?} has {in_flight} work requests in flight")]
    BatchBusy {
        /// The batch.
        batch: BatchId,
        /// Work requests still owned by the fabric.
        in_flight: u32,
    },
    /// The segment is still used by requests in flight.
    #[error("segment {segment:?} is used by {in_flight} requests in flight")]
    SegmentBusy {
        /// The segment.
        segment: SegmentId,
        /// Requests in flight.
        in_flight: u32,
    },
    /// The operation needs an engine-owned segment.
    #[error("segment {0:?} is not owned by the engine")]
    NotOwned(SegmentId),
    /// Out of range access to an owned segment through the engine.
    #[error("offset {offset}+{len} exceeds segment {segment:?} of {seg_len} bytes")]
    OwnedOutOfRange {
        /// The segment.
        segment: SegmentId,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Segment length.
        seg_len: u64,
    },
    /// A notification tag beyond the configured table.
    #[error("notification tag {tag} out of range (table has {tags} tags)")]
    BadTag {
        /// The tag.
        tag: u32,
        /// Table size.
        tags: u32,
    },
    /// A configured limit (segments, batches, remote segments) was reached.
    #[error("limit reached: {what} (max {max})")]
    Exhausted {
        /// What ran out.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// A handle issued by another engine (handles are only meaningful to their own engine).
    #[error("{handle} was issued by engine #{}, not by this engine #{engine}", handle.engine())]
    ForeignHandle {
        /// The handle.
        handle: Handle,
        /// The id of the engine it was given to.
        engine: u32,
    },
    /// A bad configuration value.
    #[error("bad configuration: {0}")]
    Config(String),
    /// A fabric error.
    #[error(transparent)]
    Fabric(#[from] FabricError),
    /// A metadata-service error.
    #[error(transparent)]
    Metadata(#[from] crate::metadata::MetadataError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_codes_round_trip() {
        for r in FailReason::ALL {
            assert_eq!(FailReason::from_code(r.code()), Some(r));
            if let Some(v) = r.vendor_err() {
                assert_eq!(FailReason::from_vendor_err(v), Some(r));
            }
        }
        assert_eq!(
            FailReason::from_vendor_err(14),
            Some(FailReason::UnknownPeer)
        );
        assert_eq!(
            FailReason::from_vendor_err(13).unwrap().name(),
            "UNRESP_REMOTE"
        );
        assert_eq!(FailReason::from_vendor_err(2), None);
        assert_eq!(FailReason::PeerGone.name(), "PEER_GONE");
        assert_eq!(FailReason::PeerGone.vendor_err(), None);
    }
}

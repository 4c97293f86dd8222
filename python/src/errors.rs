//! The exception classes: one per [`TransportError`] variant, one per [`FailReason`], and the
//! package's own (closed engine, unusable buffer, timeout).

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyModule;
use transport::{FailReason, TransportError};

create_exception!(
    _native,
    TransportErrorExc,
    PyException,
    "Base of every error the engine raises (mirrors the transport's TransportError)."
);
create_exception!(
    _native,
    EngineClosed,
    TransportErrorExc,
    "The engine was closed; no call on it or its handles works any more."
);
create_exception!(
    _native,
    BadBuffer,
    TransportErrorExc,
    "An object or address that cannot be registered: not a writable, C-contiguous buffer, empty, or not mapped read-write in this process."
);
create_exception!(
    _native,
    TransferFailed,
    TransportErrorExc,
    "A request of a batch failed on the fabric; `reason` names the EFA completion status, `index` the first failed request."
);
create_exception!(
    _native,
    TransferTimeout,
    TransportErrorExc,
    "A wait reached its timeout before every request of the batch finished."
);

/// Declares one exception class per name, under `base`.
macro_rules! classes {
    ($base:ident: $($name:ident => $doc:literal),* $(,)?) => {
        $(create_exception!(_native, $name, $base, $doc);)*
    };
}

classes! { TransportErrorExc:
    ZeroLength => "A request of zero bytes.",
    TooManySlices => "A request would need more work requests than one request may have.",
    TooManyInFlight => "A submit would put more work requests in flight on a batch than it can count.",
    LocalNotRegistered => "Local memory that no registered segment covers.",
    LocalOutOfRange => "A local range that runs past its segment.",
    RemoteOutOfRange => "A remote range that runs past the remote segment, or that no segment of the peer covers.",
    UnknownRemote => "A remote segment handle that is closed or stale.",
    RemoteBusy => "A remote segment still used by a submit in progress.",
    UnknownSegment => "A local segment that is unregistered or stale.",
    AccessDenied => "The remote segment does not grant the access the operation needs.",
    SegmentNotFound => "No segment of that name is published.",
    FabricMismatch => "The segment was published over another fabric.",
    BadName => "A segment or engine name that cannot be published.",
    BadMemory => "A memory range that cannot be registered.",
    BadLocation => "A location that does not fit the memory registered with it.",
    DuplicateName => "A segment name already registered in this engine.",
    BatchFull => "The batch cannot take that many more requests.",
    StaleBatch => "A batch that was freed.",
    NoSuchRequest => "A request index beyond what was submitted.",
    BatchBusy => "The batch still has work requests in flight.",
    SegmentBusy => "The segment is still used by requests in flight.",
    NotOwned => "The operation needs memory the engine owns.",
    OwnedOutOfRange => "Out-of-range access to engine-owned memory.",
    BadTag => "A notification tag beyond the engine's table.",
    Exhausted => "A configured limit was reached.",
    ForeignHandle => "A handle issued by another engine.",
    ConfigError => "A bad configuration value.",
    FabricError => "An error of the fabric outside the completion path (setup, registration, posting).",
    MetadataError => "An error of the metadata (discovery) service.",
}

classes! { TransferFailed:
    Flushed => "FLUSHED: the work request was flushed (queue pair in error, fabric shut down).",
    InvalidAh => "INVALID_AH: the address handle is invalid.",
    InvalidLkey => "INVALID_LKEY: the local key is invalid.",
    BadLength => "BAD_LENGTH: the local length is invalid.",
    RemoteBadAddress => "REMOTE_BAD_ADDRESS: the remote key or range is not valid at the target.",
    RemoteAbort => "REMOTE_ABORT: the target aborted the operation.",
    BadDestQpn => "BAD_DEST_QPN: the destination queue pair number is wrong.",
    RemoteRnr => "REMOTE_RNR: the target had no receive buffer.",
    RemoteBadLength => "REMOTE_BAD_LENGTH: the target's buffer was too short.",
    UnresponsiveRemote => "UNRESP_REMOTE: the target did not answer in time (dead or unreachable peer).",
    UnknownPeer => "UNKNOWN_PEER: the target has no address handle for the initiator.",
    UnreachableRemote => "UNREACH_REMOTE: the target is unreachable.",
    FeatureMismatch => "FEATURE_MISMATCH: the two sides disagree on features.",
    IoFailure => "IO: a transport-level failure with no EFA equivalent (e.g. a TCP connection reset).",
    Injected => "INJECTED: a fault injected by a test fabric.",
    ExceedsPeerLimit => "EXCEEDS_PEER_LIMIT: the request is larger than the target accepts in one request.",
    PeerGone => "PEER_GONE: the owner of the remote segment is gone (its lease in the metadata service expired, or it was removed or replaced).",
}

/// The error's message followed by each of its causes (`message: cause: cause`), so an
/// exception keeps what the causes name (a verbs call and its errno, an OS error).
fn message(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    msg
}

/// The exception for a transport error, carrying its message and causes.
pub fn transport_err(e: TransportError) -> PyErr {
    use TransportError as T;
    let msg = message(&e);
    match e {
        T::ZeroLength { .. } => ZeroLength::new_err(msg),
        T::TooManySlices { .. } => TooManySlices::new_err(msg),
        T::TooManyInFlight { .. } => TooManyInFlight::new_err(msg),
        T::LocalNotRegistered { .. } => LocalNotRegistered::new_err(msg),
        T::LocalOutOfRange { .. } => LocalOutOfRange::new_err(msg),
        T::RemoteOutOfRange { .. } => RemoteOutOfRange::new_err(msg),
        T::UnknownRemote(_) => UnknownRemote::new_err(msg),
        T::RemoteBusy { .. } => RemoteBusy::new_err(msg),
        T::UnknownSegment(_) => UnknownSegment::new_err(msg),
        T::AccessDenied { .. } => AccessDenied::new_err(msg),
        T::SegmentNotFound(_) => SegmentNotFound::new_err(msg),
        T::FabricMismatch { .. } => FabricMismatch::new_err(msg),
        T::BadName { .. } => BadName::new_err(msg),
        T::BadMemory { .. } => BadMemory::new_err(msg),
        T::BadLocation { .. } => BadLocation::new_err(msg),
        T::DuplicateName(_) => DuplicateName::new_err(msg),
        T::BatchFull { .. } => BatchFull::new_err(msg),
        T::StaleBatch(_) => StaleBatch::new_err(msg),
        T::NoSuchRequest { .. } => NoSuchRequest::new_err(msg),
        T::BatchBusy { .. } => BatchBusy::new_err(msg),
        T::SegmentBusy { .. } => SegmentBusy::new_err(msg),
        T::NotOwned(_) => NotOwned::new_err(msg),
        T::OwnedOutOfRange { .. } => OwnedOutOfRange::new_err(msg),
        T::BadTag { .. } => BadTag::new_err(msg),
        T::Exhausted { .. } => Exhausted::new_err(msg),
        T::ForeignHandle { .. } => ForeignHandle::new_err(msg),
        T::Config(_) => ConfigError::new_err(msg),
        T::Fabric(_) => FabricError::new_err(msg),
        T::Metadata(_) => MetadataError::new_err(msg),
        // The enum may grow: anything new is still a transport error.
        #[allow(unreachable_patterns)]
        _ => TransportErrorExc::new_err(msg),
    }
}

/// The exception for a failed request: its class names the reason; `reason`, `vendor_err`
/// and `index` are set on the instance.
pub fn failure_err(py: Python<'_>, index: usize, reason: FailReason, context: &str) -> PyErr {
    use FailReason as F;
    let msg = format!("{context}request {index} failed: {}", reason.name());
    let err = match reason {
        F::Flushed => Flushed::new_err(msg),
        F::InvalidAh => InvalidAh::new_err(msg),
        F::InvalidLkey => InvalidLkey::new_err(msg),
        F::BadLength => BadLength::new_err(msg),
        F::RemoteBadAddress => RemoteBadAddress::new_err(msg),
        F::RemoteAbort => RemoteAbort::new_err(msg),
        F::BadDestQpn => BadDestQpn::new_err(msg),
        F::RemoteRnr => RemoteRnr::new_err(msg),
        F::RemoteBadLength => RemoteBadLength::new_err(msg),
        F::UnresponsiveRemote => UnresponsiveRemote::new_err(msg),
        F::UnknownPeer => UnknownPeer::new_err(msg),
        F::UnreachableRemote => UnreachableRemote::new_err(msg),
        F::FeatureMismatch => FeatureMismatch::new_err(msg),
        F::Io => IoFailure::new_err(msg),
        F::Injected => Injected::new_err(msg),
        F::ExceedsPeerLimit => ExceedsPeerLimit::new_err(msg),
        F::PeerGone => PeerGone::new_err(msg),
    };
    let value = err.value(py);
    // Attributes on a fresh exception instance cannot fail short of memory exhaustion, and
    // the exception is still meaningful without them.
    let _ = value.setattr("reason", reason.name());
    let _ = value.setattr("vendor_err", reason.vendor_err());
    let _ = value.setattr("index", index);
    err
}

/// The class of each failure reason, by EFA name (for `FAILURE_CLASSES`).
fn failure_classes(py: Python<'_>) -> Vec<(&'static str, Bound<'_, pyo3::types::PyType>)> {
    FailReason::ALL
        .into_iter()
        .map(|r| {
            let e = failure_err(py, 0, r, "");
            (r.name(), e.get_type(py))
        })
        .collect()
}

/// Adds every exception class and the `FAILURE_CLASSES` map to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    macro_rules! add {
        ($($name:ident),* $(,)?) => { $(m.add(stringify!($name), py.get_type::<$name>())?;)* };
    }
    m.add("TransportError", py.get_type::<TransportErrorExc>())?;
    add!(
        EngineClosed,
        BadBuffer,
        TransferFailed,
        TransferTimeout,
        ZeroLength,
        TooManySlices,
        TooManyInFlight,
        LocalNotRegistered,
        LocalOutOfRange,
        RemoteOutOfRange,
        UnknownRemote,
        RemoteBusy,
        UnknownSegment,
        AccessDenied,
        SegmentNotFound,
        FabricMismatch,
        BadName,
        BadMemory,
        BadLocation,
        DuplicateName,
        BatchFull,
        StaleBatch,
        NoSuchRequest,
        BatchBusy,
        SegmentBusy,
        NotOwned,
        OwnedOutOfRange,
        BadTag,
        Exhausted,
        ForeignHandle,
        ConfigError,
        FabricError,
        MetadataError,
        Flushed,
        InvalidAh,
        InvalidLkey,
        BadLength,
        RemoteBadAddress,
        RemoteAbort,
        BadDestQpn,
        RemoteRnr,
        RemoteBadLength,
        UnresponsiveRemote,
        UnknownPeer,
        UnreachableRemote,
        FeatureMismatch,
        IoFailure,
        Injected,
        ExceedsPeerLimit,
        PeerGone,
    );
    let map = pyo3::types::PyDict::new(py);
    for (name, class) in failure_classes(py) {
        map.set_item(name, class)?;
    }
    m.add("FAILURE_CLASSES", map)?;
    Ok(())
}

"""The transport engine from Python.

Two layers:

* :class:`Engine` and friends: the engine's own model. Register any writable buffer
  (bytearray, memoryview, mmap, numpy array) as a named :class:`Segment`, open a peer's
  segment by name as a :class:`RemoteSegment`, run :class:`Request` s in a :class:`Batch`
  and wait, read per-request status, count notifications. Errors are typed exceptions
  (:class:`TransportError` and its subclasses; a failed request raises the
  :class:`TransferFailed` subclass named after its EFA completion status).
* :class:`efa_transport.mooncake.TransferEngine`: Mooncake Transfer Engine's Python API
  (``initialize``, ``register_memory``, ``transfer_sync_write``, ...), integer return codes,
  raw addresses.

Every call that transfers, waits or registers releases the GIL; waits wake every few
milliseconds to check for signals, so Ctrl-C interrupts them with KeyboardInterrupt.
"""

from ._native import (  # noqa: F401
    FAIL_REASONS,
    FAILURE_CLASSES,
    AccessDenied,
    BadBuffer,
    BadDestQpn,
    BadLength,
    BadLocation,
    BadMemory,
    BadName,
    BadTag,
    Batch,
    BatchBusy,
    BatchFull,
    BatchStatus,
    ConfigError,
    DuplicateName,
    Engine,
    EngineClosed,
    Exhausted,
    ExceedsPeerLimit,
    FabricError,
    FabricMismatch,
    FeatureMismatch,
    Flushed,
    ForeignHandle,
    Injected,
    InvalidAh,
    InvalidLkey,
    IoFailure,
    LocalNotRegistered,
    LocalOutOfRange,
    MetadataError,
    NoSuchRequest,
    NotOwned,
    OwnedOutOfRange,
    PeerGone,
    RemoteAbort,
    RemoteBadAddress,
    RemoteBadLength,
    RemoteBusy,
    RemoteOutOfRange,
    RemoteRnr,
    RemoteSegment,
    Request,
    RequestList,
    RequestStatus,
    Segment,
    SegmentBusy,
    SegmentNotFound,
    StaleBatch,
    TooManyInFlight,
    TooManySlices,
    TransferFailed,
    TransferTimeout,
    TransportError,
    UnknownPeer,
    UnknownRemote,
    UnknownSegment,
    UnreachableRemote,
    UnresponsiveRemote,
    ZeroLength,
    __version__,
)

__all__ = [name for name in dir() if not name.startswith("_")] + ["__version__"]

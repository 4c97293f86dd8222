//! The crate's single error type.
//!
//! Every failure names what failed and the value at fault, so a caller can report it without
//! guessing: a verbs call and its errno, a device limit and the value that broke it, a missing
//! capability, or a queue pair in the wrong state.

use std::fmt;

use crate::status::QpState;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A device or library limit that a request exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// Total bytes of a SEND (port `max_msg_sz`).
    SendBytes,
    /// Total bytes of a UD datagram (active path MTU).
    DatagramBytes,
    /// Total bytes of one RDMA read or write (`max_rdma_size` on EFA, `max_msg_sz` elsewhere).
    RdmaBytes,
    /// Bytes of inline data (`max_inline_data` granted to the queue pair).
    InlineBytes,
    /// Scatter/gather entries of a send-queue work request.
    SendSges,
    /// Scatter/gather entries of an RDMA work request.
    RdmaSges,
    /// Scatter/gather entries of a receive work request.
    RecvSges,
    /// Work requests in one batch (send-queue depth).
    BatchLength,
    /// Send-queue depth requested at creation.
    SendQueueDepth,
    /// Receive-queue depth requested at creation.
    RecvQueueDepth,
    /// Completion-queue depth requested at creation.
    CqDepth,
    /// A Q_Key; values at or above `0x8000_0000` are privileged.
    QKey,
    /// A byte range inside a memory region.
    MrRange,
    /// A GID table index.
    GidIndex,
    /// A 24-bit queue pair number or packet sequence number.
    Bits24,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Limit::SendBytes => "send size",
            Limit::DatagramBytes => "datagram size (path MTU)",
            Limit::RdmaBytes => "RDMA size",
            Limit::InlineBytes => "inline size",
            Limit::SendSges => "send SGE count",
            Limit::RdmaSges => "RDMA SGE count",
            Limit::RecvSges => "receive SGE count",
            Limit::BatchLength => "work requests per batch",
            Limit::SendQueueDepth => "send queue depth",
            Limit::RecvQueueDepth => "receive queue depth",
            Limit::CqDepth => "completion queue depth",
            Limit::QKey => "Q_Key",
            Limit::MrRange => "memory region range end",
            Limit::GidIndex => "GID index",
            Limit::Bits24 => "24-bit field",
        };
        f.write_str(s)
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `libibverbs` or `libefa` could not be loaded or lacks a required symbol.
    #[error("verbs library unavailable ({})", source.library())]
    Library {
        /// What the loader reported: the library and `dlerror()`'s text, or the missing symbol
        /// (boxed: it is large, and rare).
        source: Box<efa_sys::LoadError>,
    },
    /// A verbs or efadv call failed.
    #[error("{call} failed: {} (errno {errno}){}", os_text(*errno), ArgText(*arg))]
    Verbs {
        /// The C function that failed, e.g. `"ibv_modify_qp"`.
        call: &'static str,
        /// The errno it reported.
        errno: i32,
        /// The argument most likely at fault, with its name, when there is one.
        arg: Option<(&'static str, u64)>,
    },
    /// A request exceeds a device or library limit; checked before the device sees it.
    #[error("{limit} {value} exceeds the limit {max}")]
    Limit {
        /// Which limit.
        limit: Limit,
        /// The offending value.
        value: u64,
        /// The largest accepted value.
        max: u64,
    },
    /// The device, library or transport lacks what was asked for.
    #[error("{what} unsupported: {why}")]
    Unsupported {
        /// The operation or feature, e.g. `"RDMA write"`.
        what: &'static str,
        /// Why it is unavailable, e.g. `"device lacks the RDMA_WRITE capability"`.
        why: &'static str,
    },
    /// An argument is malformed.
    #[error("invalid {what}: {value:#x}")]
    Invalid {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The queue pair is in a state that does not allow the operation.
    #[error("cannot {op} while the queue pair is in state {state:?}")]
    QpState {
        /// The operation attempted.
        op: &'static str,
        /// The state the queue pair is in.
        state: QpState,
    },
    /// A poll of a CQ on a thread that has a batch open on a QP completing its sends into that
    /// CQ. rdma-core's EFA provider holds the QP's send-queue lock from `ibv_wr_start` to
    /// `ibv_wr_complete` and takes it again to retire the QP's send completions, so the poll would
    /// wait for ever (QPs and CQs on one [`ThreadDomain`](crate::ThreadDomain) take no lock).
    #[error(
        "polling this CQ would deadlock: this thread has a batch open on QP {}, whose send \
         completions it holds (commit or abort the batch first)",
        QpText(*qpn)
    )]
    PollInBatch {
        /// The QP whose batch is open; `u32::MAX` when more batches were open on the thread than
        /// are told apart.
        qpn: u32,
    },
    /// No verbs device has this name.
    #[error("no verbs device named {name:?}")]
    NoSuchDevice {
        /// The name asked for.
        name: String,
    },
    /// An EFA-only operation was attempted on another kind of device.
    #[error("device {device:?} is not an EFA device")]
    NotEfa {
        /// The device's name.
        device: String,
    },
    /// Reading a sysfs file failed.
    #[error("{}", SysfsText(path, *errno))]
    Sysfs {
        /// The path.
        path: String,
        /// The OS error number, 0 when the content was malformed.
        errno: i32,
    },
}

impl From<efa_sys::LoadError> for Error {
    fn from(e: efa_sys::LoadError) -> Self {
        Error::Library {
            source: Box::new(e),
        }
    }
}

/// The OS's text for an errno.
fn os_text(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

/// ` with NAME = VALUE` for the argument at fault of a verbs call, nothing without one.
struct ArgText(Option<(&'static str, u64)>);

impl fmt::Display for ArgText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((name, value)) => write!(f, " with {name} = {value}"),
            None => Ok(()),
        }
    }
}

/// The QP of [`Error::PollInBatch`]: its number, or that several batches were open.
struct QpText(u32);

impl fmt::Display for QpText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            u32::MAX => f.write_str("(one of several)"),
            qpn => write!(f, "{qpn:#x}"),
        }
    }
}

/// A sysfs failure in words: malformed content (errno 0) or the OS error reading it.
struct SysfsText<'a>(&'a str, i32);

impl fmt::Display for SysfsText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            0 => write!(f, "malformed sysfs file {}", self.0),
            e => write!(f, "reading {}: {} (errno {e})", self.0, os_text(e)),
        }
    }
}

impl Error {
    /// The errno carried by this error, when it came from the OS or a verbs call.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Verbs { errno, .. } => Some(*errno),
            Error::Sysfs { errno, .. } if *errno != 0 => Some(*errno),
            _ => None,
        }
    }

    /// A verbs call failure without a named argument.
    pub(crate) fn verbs(call: &'static str, errno: i32) -> Self {
        Error::Verbs {
            call,
            errno,
            arg: None,
        }
    }

    /// A verbs call failure naming the argument at fault.
    pub(crate) fn verbs_arg(
        call: &'static str,
        errno: i32,
        name: &'static str,
        value: u64,
    ) -> Self {
        Error::Verbs {
            call,
            errno,
            arg: Some((name, value)),
        }
    }

    /// A verbs call that reported failure through `errno` (NULL return); reads errno now.
    pub(crate) fn last_os(call: &'static str) -> Self {
        Error::verbs(call, last_errno())
    }

    pub(crate) fn limit(limit: Limit, value: u64, max: u64) -> Self {
        Error::Limit { limit, value, max }
    }
}

/// The calling thread's errno, or `EIO` when the library failed without setting it.
pub(crate) fn last_errno() -> i32 {
    match std::io::Error::last_os_error().raw_os_error() {
        Some(0) | None => libc::EIO,
        Some(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_call_errno_and_argument() {
        let e = Error::verbs_arg("ibv_create_cq_ex", libc::EINVAL, "cqe", 1 << 30);
        let s = e.to_string();
        assert!(s.contains("ibv_create_cq_ex"), "{s}");
        assert!(s.contains("errno 22"), "{s}");
        assert!(s.contains("cqe = 1073741824"), "{s}");
        assert_eq!(e.errno(), Some(libc::EINVAL));
    }

    #[test]
    fn loader_error_is_the_source() {
        let load = efa_sys::LoadError::SymbolMissing {
            library: efa_sys::LibraryName::new(b"libefa.so.1"),
            symbol: "efadv_query_device",
            version: "EFA_1.1",
        };
        let e = Error::from(load);
        assert!(e.to_string().contains("libefa.so.1"), "{e}");
        let cause = std::error::Error::source(&e).expect("the loader's error is kept");
        assert!(cause.to_string().contains("efadv_query_device"), "{cause}");
        assert_eq!(e.errno(), None);
    }

    #[test]
    fn limit_display_names_value_and_max() {
        let s = Error::limit(Limit::SendBytes, 9000, 8928).to_string();
        assert!(
            s.contains("9000") && s.contains("8928") && s.contains("send size"),
            "{s}"
        );
        assert_eq!(Error::limit(Limit::QKey, 1, 0).errno(), None);
    }
}

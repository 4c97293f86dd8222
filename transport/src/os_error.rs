//! [`OsError`]: the OS error kept as the cause of the crate's errors. A leaf module, so the
//! error types that keep one need not import each other.

use std::sync::Arc;

/// An OS error kept as the cause of a [`FabricError`](crate::FabricError) or a
/// [`MetadataError`](crate::MetadataError): shared, so the error stays `Clone`, and
/// compared by [`kind`](Self::kind) and [`raw_os_error`](Self::raw_os_error), so tests can match
/// errors with `==`.
#[derive(Debug, Clone)]
pub struct OsError(Arc<std::io::Error>);

impl OsError {
    /// The kind of the OS error.
    pub fn kind(&self) -> std::io::ErrorKind {
        self.0.kind()
    }

    /// The errno, when the error came from the OS.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.0.raw_os_error()
    }

    /// The error itself.
    pub fn io_error(&self) -> &std::io::Error {
        &self.0
    }
}

impl From<std::io::Error> for OsError {
    fn from(e: std::io::Error) -> Self {
        OsError(Arc::new(e))
    }
}

impl PartialEq for OsError {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.raw_os_error() == other.raw_os_error()
    }
}

impl Eq for OsError {}

impl std::fmt::Display for OsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for OsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

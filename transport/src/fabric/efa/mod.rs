//! The `efa` fabric (in progress).

//! `efa_transport._native`: the transport engine from Python.
//!
//! Two layers: `TransferEngine` (module `mooncake`), Mooncake Transfer Engine's Python API (raw
//! addresses, integer return codes), and the Pythonic classes of module `api` (`Engine`,
//! `Segment`, `RemoteSegment`, `Request`, `Batch`, typed exceptions). Every call that waits,
//! transfers or registers releases the GIL; waits check for signals every few milliseconds
//! so Ctrl-C interrupts them.

mod api;
mod core;
mod errors;
mod maps;
mod mooncake;

use pyo3::prelude::*;

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<api::PyEngine>()?;
    m.add_class::<api::PySegment>()?;
    m.add_class::<api::PyRemoteSegment>()?;
    m.add_class::<api::PyRequest>()?;
    m.add_class::<api::PyRequestList>()?;
    m.add_class::<api::PyBatch>()?;
    m.add_class::<api::PyBatchStatus>()?;
    m.add_class::<api::PyRequestStatus>()?;
    m.add_class::<mooncake::TransferEngine>()?;
    m.add_class::<mooncake::TransferOpcode>()?;
    m.add_class::<mooncake::TransferNotify>()?;
    errors::register(m)?;
    m.add(
        "FAIL_REASONS",
        transport::FailReason::ALL
            .into_iter()
            .map(|r| r.name())
            .collect::<Vec<_>>(),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

//! The Pythonic layer: `Engine`, `Segment`, `RemoteSegment`, `Request`, `Batch`,
//! `BatchStatus`, `RequestStatus`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use transport::fabric::sim::SimConfig;
use transport::{BatchId, BatchStatus, FailReason, Opcode, RemoteSegment, Request, SegmentId};

use crate::core::{
    parse_access, parse_location, status_parts, timeout_of, Core, Error, Finished, MetaChoice,
    Options,
};
use crate::errors::{failure_err, TransferTimeout};
use crate::maps::check_rw_mapped;

/// The default timeout of synchronous transfers, in seconds.
pub const DEFAULT_TIMEOUT: f64 = 30.0;

/// The address, length and exporting object of a writable, C-contiguous buffer. The object
/// keeps the buffer exported while it lives: a `bytearray` cannot be resized, an `mmap`
/// cannot be closed, a numpy array cannot be resized.
pub fn export_buffer(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
) -> Result<(u64, u64, Py<PyAny>), Error> {
    let view = py
        .import("builtins")?
        .getattr("memoryview")?
        .call1((obj,))
        .map_err(|e| {
            Error::Buffer(format!(
                "{} does not support the buffer protocol ({e})",
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
    if view.getattr("readonly")?.extract::<bool>()? {
        return Err(Error::Buffer(
            "the buffer is read-only: registered memory is written by READs and by peers; pass a writable buffer (bytearray, numpy array, mmap, ...)".into(),
        ));
    }
    if !view.getattr("c_contiguous")?.extract::<bool>()? {
        return Err(Error::Buffer(
            "the buffer is not C-contiguous: register one contiguous range".into(),
        ));
    }
    let len: u64 = view.getattr("nbytes")?.extract()?;
    if len == 0 {
        return Err(Error::Buffer("the buffer is empty".into()));
    }
    let ctypes = py.import("ctypes")?;
    // A ctypes object over the buffer holds an export of it for as long as it lives.
    let holder = ctypes
        .getattr("c_char")?
        .call_method1("from_buffer", (&view,))?;
    let addr: u64 = ctypes.call_method1("addressof", (&holder,))?.extract()?;
    Ok((addr, len, holder.unbind()))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A transfer engine over one fabric, with its own discovery server.
///
/// Engine(name=None, fabric="auto", *, listen="127.0.0.1:0", devices=None, metadata="p2p",
/// peers=None, workers=4, slice_size=None, notify_tags=1024, sim_error_rate=0.0,
/// sim_error_reasons=None, sim_max_delay=None, sim_unresp_timeout=None)
#[pyclass(frozen, module = "efa_transport._native", name = "Engine")]
pub struct PyEngine {
    pub(crate) core: Arc<Core>,
}

impl std::fmt::Debug for PyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyEngine").finish_non_exhaustive()
    }
}

impl PyEngine {
    pub(crate) fn from_core(core: Arc<Core>) -> Self {
        PyEngine { core }
    }
}

/// Counter for default engine names.
fn default_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "py-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn reason_of(name: &str) -> Result<FailReason, Error> {
    FailReason::ALL
        .into_iter()
        .find(|r| r.name().eq_ignore_ascii_case(name))
        .ok_or_else(|| Error::Config(format!("unknown failure reason {name:?}")))
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (name=None, fabric="auto", *, listen="127.0.0.1:0", devices=None,
        metadata="p2p", peers=None, workers=4, slice_size=None, notify_tags=1024,
        sim_error_rate=0.0, sim_error_reasons=None, sim_max_delay=None, sim_unresp_timeout=None))]
    #[allow(clippy::too_many_arguments)] // The Python signature, argument for argument.
    fn new(
        py: Python<'_>,
        name: Option<String>,
        fabric: &str,
        listen: &str,
        devices: Option<Vec<String>>,
        metadata: &str,
        peers: Option<Vec<String>>,
        workers: usize,
        slice_size: Option<u64>,
        notify_tags: u32,
        sim_error_rate: f64,
        sim_error_reasons: Option<Vec<String>>,
        sim_max_delay: Option<f64>,
        sim_unresp_timeout: Option<f64>,
    ) -> PyResult<Self> {
        let mut o = Options::new(name.unwrap_or_else(default_name), fabric.to_string());
        o.listen = listen.to_string();
        o.devices = devices.unwrap_or_default();
        o.metadata = match metadata {
            "p2p" | "P2PHANDSHAKE" => MetaChoice::P2p,
            "local" => MetaChoice::Local,
            etcd if etcd
                .get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("etcd://")) =>
            {
                MetaChoice::Spec(etcd.to_string())
            }
            other => {
                return Err(Error::Config(format!(
                    "metadata {other:?} (expected \"p2p\", \"local\" or \"etcd://host:port\")"
                ))
                .into())
            }
        };
        o.peers = peers.unwrap_or_default();
        o.workers = workers;
        o.slice_size = slice_size;
        o.notify_tags = notify_tags;
        let mut sim = SimConfig::default();
        sim.faults.error_rate = sim_error_rate;
        if let Some(rs) = sim_error_reasons {
            sim.faults.error_reasons = rs.iter().map(|r| reason_of(r)).collect::<Result<_, _>>()?;
        }
        sim.faults.max_delay = timeout_of("sim_max_delay", sim_max_delay)?;
        if let Some(t) = timeout_of("sim_unresp_timeout", sim_unresp_timeout)? {
            sim.faults.unresp_timeout = t;
        }
        o.sim = sim;
        let core = py.detach(|| Core::build(o))?;
        Ok(PyEngine {
            core: Arc::new(core),
        })
    }

    /// The engine's name.
    #[getter]
    fn name(&self) -> String {
        self.core.engine.name().to_string()
    }

    /// The fabric in use: "efa", "verbs", "tcp" or "sim", or several joined by "+".
    #[getter]
    fn fabric(&self) -> String {
        self.core.fabric.clone()
    }

    /// Why that fabric (the automatic choice's reason).
    #[getter]
    fn fabric_reason(&self) -> String {
        self.core.reason.clone()
    }

    /// Rails (devices) of the fabric.
    #[getter]
    fn rails(&self) -> u16 {
        self.core.engine.capabilities().rails
    }

    /// `host:port` of this engine's discovery server (None with metadata="local"). Peers open
    /// this engine's segments as f"{address}/{name}".
    #[getter]
    fn address(&self) -> Option<String> {
        self.core.address()
    }

    /// Whether close() was called.
    #[getter]
    fn closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Registers a writable, C-contiguous buffer (bytearray, memoryview, mmap, numpy array,
    /// array.array, ...) as segment `name`. The buffer stays exported (cannot be resized or
    /// closed) until the segment is unregistered. `access`: what peers may do ("r", "w",
    /// "rw", "none").
    #[pyo3(signature = (name, buffer, access="rw", location="cpu:0"))]
    fn register(
        &self,
        py: Python<'_>,
        name: &str,
        buffer: &Bound<'_, PyAny>,
        access: &str,
        location: &str,
    ) -> PyResult<PySegment> {
        let access = parse_access(access)?;
        let location = parse_location(location)?;
        self.core.check_open()?;
        let (addr, len, hold) = export_buffer(py, buffer)?;
        // SAFETY: `hold` keeps the buffer exported, so its memory stays allocated and in place
        // until the core drops `hold`, which it does only after unregister succeeds.
        let id = unsafe {
            self.core
                .register(py, name, addr, len, location, access, Some(hold))?
        };
        Ok(PySegment::new(&self.core, id, name, addr, len, false))
    }

    /// Registers raw memory by address (a torch tensor's `data_ptr()`, a ctypes buffer),
    /// keeping `owner` referenced until unregistered. The range must be mapped readable and
    /// writable in this process (checked); the caller keeps it allocated while registered.
    #[pyo3(signature = (name, ptr, length, owner=None, access="rw", location="cpu:0"))]
    #[allow(clippy::too_many_arguments)] // The Python signature, argument for argument.
    fn register_ptr(
        &self,
        py: Python<'_>,
        name: &str,
        ptr: u64,
        length: u64,
        owner: Option<Py<PyAny>>,
        access: &str,
        location: &str,
    ) -> PyResult<PySegment> {
        let access = parse_access(access)?;
        let location = parse_location(location)?;
        self.core.check_open()?;
        check_rw_mapped(ptr, length).map_err(Error::Buffer)?;
        // SAFETY: the range is mapped read-write now (checked); keeping it so while registered
        // is the documented duty of the caller, as for any raw-address API.
        let id = unsafe {
            self.core
                .register(py, name, ptr, length, location, access, owner)?
        };
        Ok(PySegment::new(&self.core, id, name, ptr, length, false))
    }

    /// Allocates `size` zeroed bytes owned by the engine and registers them as `name`; read
    /// and write them with Segment.read / Segment.write.
    #[pyo3(signature = (name, size, access="rw"))]
    fn allocate(
        &self,
        py: Python<'_>,
        name: &str,
        size: usize,
        access: &str,
    ) -> PyResult<PySegment> {
        let access = parse_access(access)?;
        let id = self.core.register_owned(py, name, size, access)?;
        let info = self.core.engine.segment_info(id).map_err(Error::from)?;
        Ok(PySegment::new(
            &self.core, id, name, info.base, info.len, true,
        ))
    }

    /// Unregisters a segment (same as segment.unregister()).
    fn unregister(&self, py: Python<'_>, segment: &PySegment) -> PyResult<()> {
        segment.unregister(py)
    }

    /// Opens a peer's segment: "host:port/name" asks that discovery server; a plain name
    /// looks here, then in the configured peers.
    fn open_segment(&self, py: Python<'_>, name: &str) -> PyResult<PyRemoteSegment> {
        self.core.check_open()?;
        let engine = &self.core.engine;
        let (id, desc, fabric) = py.detach(|| -> Result<_, Error> {
            let id = engine.open_segment(name)?;
            Ok((id, engine.remote_descriptor(id)?, engine.remote_fabric(id)?))
        })?;
        Ok(PyRemoteSegment {
            core: self.core.clone(),
            id,
            fabric,
            name: name.to_string(),
            base: desc.base,
            length: desc.len,
            access: desc.access.to_string(),
        })
    }

    /// The segments a peer's discovery server publishes under names starting with `prefix`,
    /// as (name, base address, length) tuples in name order.
    #[pyo3(signature = (peer, prefix=""))]
    fn list_segments(
        &self,
        py: Python<'_>,
        peer: &str,
        prefix: &str,
    ) -> PyResult<Vec<(String, u64, u64)>> {
        self.core.check_open()?;
        let Some(meta) = self.core.peer.clone() else {
            return Err(Error::Config("list_segments needs metadata=\"p2p\"".into()).into());
        };
        let l = py
            .detach(|| meta.list(peer, prefix))
            .map_err(|e| Error::from(transport::TransportError::from(e)))?;
        Ok(l.segments
            .into_iter()
            .map(|s| (s.name, s.base, s.len))
            .collect())
    }

    /// A batch for up to `capacity` requests, submitted and waited on through this thread's
    /// worker.
    #[pyo3(signature = (capacity=64))]
    fn batch(&self, capacity: usize) -> PyResult<PyBatch> {
        let (id, slot) = self.core.allocate_batch(capacity)?;
        Ok(PyBatch {
            core: self.core.clone(),
            state: Mutex::new(Some(id)),
            slot,
            capacity,
        })
    }

    /// Runs requests as one batch and waits for them (GIL released; Ctrl-C cancels). Raises
    /// the failed request's TransferFailed subclass, or TransferTimeout.
    #[pyo3(signature = (requests, timeout=DEFAULT_TIMEOUT))]
    fn transfer(
        &self,
        py: Python<'_>,
        requests: &Bound<'_, PyAny>,
        timeout: f64,
    ) -> PyResult<PyBatchStatus> {
        let timeout = timeout_of("timeout", Some(timeout))?.unwrap_or(Duration::MAX);
        REQS.with(|cell| {
            let mut reqs = cell.take();
            reqs.clear();
            let r =
                collect_requests(requests, &mut reqs).and_then(|()| self.run(py, &reqs, timeout));
            cell.set(reqs);
            r
        })
    }

    /// WRITE `length` bytes from `local` at `offset` to `remote` at `remote_offset` and wait;
    /// `notify`: a tag counted at the target once the bytes are placed.
    #[pyo3(signature = (local, offset, remote, remote_offset, length, notify=None, timeout=DEFAULT_TIMEOUT))]
    #[allow(clippy::too_many_arguments)] // The Python signature, argument for argument.
    fn write(
        &self,
        py: Python<'_>,
        local: &PySegment,
        offset: u64,
        remote: &PyRemoteSegment,
        remote_offset: u64,
        length: u64,
        notify: Option<u32>,
        timeout: f64,
    ) -> PyResult<PyBatchStatus> {
        let mut r = Request::write(local.id, offset, remote.id, remote_offset, length);
        if let Some(tag) = notify {
            r = r.with_op(Opcode::WriteWithNotify(tag));
        }
        let timeout = timeout_of("timeout", Some(timeout))?.unwrap_or(Duration::MAX);
        self.run(py, &[r], timeout)
    }

    /// READ `length` bytes of `remote` at `remote_offset` into `local` at `offset` and wait.
    #[pyo3(signature = (local, offset, remote, remote_offset, length, timeout=DEFAULT_TIMEOUT))]
    #[allow(clippy::too_many_arguments)] // The Python signature, argument for argument.
    fn read(
        &self,
        py: Python<'_>,
        local: &PySegment,
        offset: u64,
        remote: &PyRemoteSegment,
        remote_offset: u64,
        length: u64,
        timeout: f64,
    ) -> PyResult<PyBatchStatus> {
        let r = Request::read(local.id, offset, remote.id, remote_offset, length);
        let timeout = timeout_of("timeout", Some(timeout))?.unwrap_or(Duration::MAX);
        self.run(py, &[r], timeout)
    }

    /// Arrivals of notification `tag` so far.
    fn notify_count(&self, tag: u32) -> PyResult<u64> {
        self.core.check_open()?;
        Ok(self
            .core
            .engine
            .notifications()
            .count(tag)
            .map_err(Error::from)?)
    }

    /// Waits (GIL released, Ctrl-C interrupts) until `tag` counted `count` arrivals or
    /// `timeout` seconds passed (None: no limit); returns the count seen last. The thread
    /// sleeps until an arrival wakes it.
    #[pyo3(signature = (tag, count=1, timeout=None))]
    fn wait_notify(
        &self,
        py: Python<'_>,
        tag: u32,
        count: u64,
        timeout: Option<f64>,
    ) -> PyResult<u64> {
        let timeout = timeout_of("timeout", timeout)?;
        Ok(self.core.wait_notify(py, tag, count, timeout)?)
    }

    /// Subtracts `count` arrivals of `tag` (to reuse it); returns the count left.
    fn consume_notify(&self, tag: u32, count: u64) -> PyResult<u64> {
        self.core.check_open()?;
        Ok(self
            .core
            .engine
            .notifications()
            .consume(tag, count)
            .map_err(Error::from)?)
    }

    /// Closes the engine: every segment is unregistered and its buffer released, discovery
    /// stops. Later calls raise EngineClosed. Idempotent.
    fn close(&self, py: Python<'_>) {
        self.core.close(py)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) {
        self.core.close(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "Engine(name={:?}, fabric={:?}, address={}{})",
            self.core.engine.name(),
            self.core.fabric,
            self.core
                .address()
                .map_or_else(|| "None".to_string(), |a| format!("{a:?}")),
            if self.core.is_closed() {
                ", closed"
            } else {
                ""
            }
        )
    }

    /// Reference figure for the benchmark: the same transfer loop written against the Rust
    /// API, run here without the GIL. Returns nanoseconds per batch. With `raw`, local memory
    /// is given by address (as the Mooncake API gives it) rather than segment and offset.
    #[pyo3(signature = (local, remote, batch, iterations, length=64, raw=false))]
    #[allow(clippy::too_many_arguments)] // The Python signature, argument for argument.
    fn _rust_loop_ns(
        &self,
        py: Python<'_>,
        local: &PySegment,
        remote: &PyRemoteSegment,
        batch: usize,
        iterations: u64,
        length: u64,
        raw: bool,
    ) -> PyResult<f64> {
        self.core.check_open()?;
        let engine = &self.core.engine;
        let (l, r, base) = (local.id, remote.id, local.address);
        let ns = py.detach(|| -> Result<f64, Error> {
            let mut w = engine.worker()?;
            let reqs: Vec<Request> = (0..batch as u64)
                .map(|i| {
                    let mut req = Request::write(l, i * length, r, i * length, length);
                    if raw {
                        req.local = transport::LocalAddr::Raw(base + i * length);
                    }
                    req
                })
                .collect();
            let mut b = engine.allocate_batch(batch)?;
            let start = std::time::Instant::now();
            for _ in 0..iterations {
                w.submit(b, &reqs)?;
                let st = w.wait(b, Duration::from_secs(10))?;
                if !st.all_completed() {
                    return Err(Error::Config(format!("reference loop: {st:?}")));
                }
                b = engine.recycle_batch(b)?;
            }
            let ns = start.elapsed().as_nanos() as f64 / iterations.max(1) as f64;
            engine.free_batch(b)?;
            Ok(ns)
        })?;
        Ok(ns)
    }
}

thread_local! {
    /// Request storage reused by `transfer` (no allocation per call once warm).
    static REQS: std::cell::Cell<Vec<Request>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Requests converted once, to run many times (`Engine.transfer`, `Batch.submit`) without
/// converting each `Request` again.
#[pyclass(frozen, module = "efa_transport._native", name = "RequestList")]
#[derive(Debug)]
pub struct PyRequestList {
    reqs: Vec<Request>,
}

#[pymethods]
impl PyRequestList {
    #[new]
    fn new(requests: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut reqs = Vec::new();
        collect_requests(requests, &mut reqs)?;
        Ok(PyRequestList { reqs })
    }

    fn __len__(&self) -> usize {
        self.reqs.len()
    }

    fn __repr__(&self) -> String {
        format!("RequestList({} requests)", self.reqs.len())
    }
}

/// Appends the requests of a `RequestList` or of a sequence of `Request` objects.
fn collect_requests(requests: &Bound<'_, PyAny>, out: &mut Vec<Request>) -> PyResult<()> {
    if let Ok(list) = requests.cast::<PyRequestList>() {
        out.extend_from_slice(&list.get().reqs);
    } else if let Ok(list) = requests.cast::<PyList>() {
        for item in list.iter() {
            out.push(item.cast::<PyRequest>()?.get().req);
        }
    } else {
        for item in requests.try_iter()? {
            out.push(item?.cast::<PyRequest>()?.get().req);
        }
    }
    Ok(())
}

impl PyEngine {
    fn run(&self, py: Python<'_>, reqs: &[Request], timeout: Duration) -> PyResult<PyBatchStatus> {
        match self.core.run_sync(py, reqs, timeout)? {
            Finished::Done {
                status,
                failure: None,
            } => Ok(status.into()),
            Finished::Done {
                failure: Some((i, reason)),
                ..
            } => Err(failure_err(py, i, reason, "")),
            Finished::TimedOut(st) => Err(TransferTimeout::new_err(format!(
                "{} of {} requests unfinished after {:.3} s",
                st.timed_out,
                st.submitted,
                secs(timeout)
            ))),
        }
    }
}

/// A registered local segment. Stays registered (and its buffer held) until unregister() or
/// the engine's close(), whether or not this object is kept.
#[pyclass(frozen, module = "efa_transport._native", name = "Segment")]
pub struct PySegment {
    core: Arc<Core>,
    pub(crate) id: SegmentId,
    /// The name it is published under.
    #[pyo3(get)]
    name: String,
    /// Start address.
    #[pyo3(get)]
    address: u64,
    /// Length in bytes.
    #[pyo3(get)]
    length: u64,
    /// Whether the engine owns the memory (Engine.allocate).
    #[pyo3(get)]
    owned: bool,
}

impl PySegment {
    fn new(
        core: &Arc<Core>,
        id: SegmentId,
        name: &str,
        address: u64,
        length: u64,
        owned: bool,
    ) -> Self {
        PySegment {
            core: core.clone(),
            id,
            name: name.to_string(),
            address,
            length,
            owned,
        }
    }
}

#[pymethods]
impl PySegment {
    /// Unregisters the segment and releases its buffer. Raises SegmentBusy while requests
    /// use it.
    fn unregister(&self, py: Python<'_>) -> PyResult<()> {
        Ok(self.core.unregister(py, self.id)?)
    }

    /// Copies `length` bytes at `offset` out of an engine-owned segment.
    fn read(&self, py: Python<'_>, offset: u64, length: usize) -> PyResult<Py<PyBytes>> {
        self.core.check_open()?;
        let mut out = vec![0u8; length];
        self.core
            .engine
            .read_owned(self.id, offset, &mut out)
            .map_err(Error::from)?;
        Ok(PyBytes::new(py, &out).unbind())
    }

    /// Copies `data` into an engine-owned segment at `offset`.
    fn write(&self, offset: u64, data: &[u8]) -> PyResult<()> {
        self.core.check_open()?;
        Ok(self
            .core
            .engine
            .write_owned(self.id, offset, data)
            .map_err(Error::from)?)
    }

    fn __len__(&self) -> usize {
        self.length as usize
    }

    fn __repr__(&self) -> String {
        format!(
            "Segment(name={:?}, address={:#x}, length={})",
            self.name, self.address, self.length
        )
    }
}

/// A peer's segment, opened by name.
#[pyclass(frozen, module = "efa_transport._native", name = "RemoteSegment")]
pub struct PyRemoteSegment {
    core: Arc<Core>,
    pub(crate) id: RemoteSegment,
    /// The name it was opened by.
    #[pyo3(get)]
    name: String,
    /// Its start address in the peer.
    #[pyo3(get)]
    base: u64,
    /// Its length.
    #[pyo3(get)]
    length: u64,
    /// What this engine may do there ("REMOTE_READ|REMOTE_WRITE", ...).
    #[pyo3(get)]
    access: String,
    /// The fabric the peer is reached over (for an engine on several, the first both speak).
    #[pyo3(get)]
    fabric: String,
}

#[pymethods]
impl PyRemoteSegment {
    /// Closes the handle (requests already submitted are unaffected).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.core.check_open()?;
        let engine = &self.core.engine;
        Ok(py
            .detach(|| engine.close_segment(self.id))
            .map_err(Error::from)?)
    }

    fn __len__(&self) -> usize {
        self.length as usize
    }

    fn __repr__(&self) -> String {
        format!(
            "RemoteSegment(name={:?}, base={:#x}, length={}, access={}, fabric={})",
            self.name, self.base, self.length, self.access, self.fabric
        )
    }
}

/// One transfer request: Request.read(...) or Request.write(...).
#[pyclass(frozen, module = "efa_transport._native", name = "Request")]
#[derive(Debug)]
pub struct PyRequest {
    req: Request,
}

#[pymethods]
impl PyRequest {
    /// READ `length` bytes of `remote` at `remote_offset` into `local` at `offset`.
    #[staticmethod]
    fn read(
        local: &PySegment,
        offset: u64,
        remote: &PyRemoteSegment,
        remote_offset: u64,
        length: u64,
    ) -> Self {
        PyRequest {
            req: Request::read(local.id, offset, remote.id, remote_offset, length),
        }
    }

    /// WRITE `length` bytes of `local` at `offset` to `remote` at `remote_offset`; with
    /// `notify`, the target counts one arrival of that tag once the bytes are placed.
    #[staticmethod]
    #[pyo3(signature = (local, offset, remote, remote_offset, length, notify=None))]
    fn write(
        local: &PySegment,
        offset: u64,
        remote: &PyRemoteSegment,
        remote_offset: u64,
        length: u64,
        notify: Option<u32>,
    ) -> Self {
        let mut req = Request::write(local.id, offset, remote.id, remote_offset, length);
        if let Some(tag) = notify {
            req = req.with_op(Opcode::WriteWithNotify(tag));
        }
        PyRequest { req }
    }

    /// "READ", "WRITE" or "WRITE_WITH_NOTIFY".
    #[getter]
    fn op(&self) -> &'static str {
        match self.req.op {
            Opcode::Read => "READ",
            Opcode::Write => "WRITE",
            Opcode::WriteWithNotify(_) => "WRITE_WITH_NOTIFY",
        }
    }

    /// Length in bytes.
    #[getter]
    fn length(&self) -> u64 {
        self.req.len
    }

    fn __repr__(&self) -> String {
        format!(
            "Request({}, {} bytes, remote offset {})",
            self.op(),
            self.req.len,
            self.req.remote_offset
        )
    }
}

/// Counters of a batch.
#[pyclass(
    frozen,
    get_all,
    module = "efa_transport._native",
    name = "BatchStatus"
)]
#[derive(Debug, Clone, Copy)]
pub struct PyBatchStatus {
    /// Capacity given at allocation.
    capacity: u32,
    /// Requests submitted.
    submitted: u32,
    /// Submitted and not yet finished.
    pending: u32,
    /// Completed.
    completed: u32,
    /// Failed.
    failed: u32,
    /// Timed out.
    timed_out: u32,
    /// Cancelled.
    cancelled: u32,
    /// Work requests still owned by the fabric.
    in_flight: u32,
}

impl From<BatchStatus> for PyBatchStatus {
    fn from(s: BatchStatus) -> Self {
        PyBatchStatus {
            capacity: s.capacity,
            submitted: s.submitted,
            pending: s.pending,
            completed: s.completed,
            failed: s.failed,
            timed_out: s.timed_out,
            cancelled: s.cancelled,
            in_flight: s.in_flight,
        }
    }
}

#[pymethods]
impl PyBatchStatus {
    /// Every submitted request finished (in any way).
    #[getter]
    fn done(&self) -> bool {
        self.pending == 0
    }

    /// Every submitted request completed.
    #[getter]
    fn ok(&self) -> bool {
        self.completed == self.submitted
    }

    fn __repr__(&self) -> String {
        format!(
            "BatchStatus(submitted={}, completed={}, failed={}, timed_out={}, cancelled={}, pending={})",
            self.submitted, self.completed, self.failed, self.timed_out, self.cancelled, self.pending
        )
    }
}

/// The state of one request: `state` is "waiting", "pending", "completed", "failed",
/// "timed_out" or "cancelled"; a failed one has its EFA `reason` and `vendor_err`.
#[pyclass(
    frozen,
    get_all,
    module = "efa_transport._native",
    name = "RequestStatus"
)]
#[derive(Debug)]
pub struct PyRequestStatus {
    /// The state.
    state: &'static str,
    /// The failure's EFA name, for a failed request.
    reason: Option<&'static str>,
    /// The failure's EFA vendor_err code, where EFA has one.
    vendor_err: Option<u32>,
}

#[pymethods]
impl PyRequestStatus {
    fn __repr__(&self) -> String {
        match self.reason {
            Some(r) => format!("RequestStatus({}, {r})", self.state),
            None => format!("RequestStatus({})", self.state),
        }
    }
}

/// A batch of requests: submit() any number of times up to its capacity, wait(), read
/// per-request status, free() (or use it as a context manager).
#[pyclass(frozen, module = "efa_transport._native", name = "Batch")]
pub struct PyBatch {
    core: Arc<Core>,
    state: Mutex<Option<BatchId>>,
    slot: usize,
    /// Most requests it takes.
    #[pyo3(get)]
    capacity: usize,
}

impl std::fmt::Debug for PyBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyBatch")
            .field("state", &self.state)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl PyBatch {
    fn id(&self) -> Result<BatchId, Error> {
        self.core.check_open()?;
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ok_or_else(|| Error::Config("the batch was freed".into()))
    }
}

impl Drop for PyBatch {
    fn drop(&mut self) {
        let taken = self
            .state
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(id) = taken {
            self.core.drop_batch(self.slot, id);
        }
    }
}

#[pymethods]
impl PyBatch {
    /// Validates then posts the requests (all or none); returns the index of the first.
    ///
    /// With `defer`, everything but the doorbell happens now (validation, pins, work
    /// requests); the requests are posted by the next `submit`, `wait` or `status` of a batch
    /// of the same thread, by `post_deferred`, or when the engine closes (as the engine's
    /// `Worker::submit_deferred`). A ping-pong prepares its next message this way while the
    /// peer's is on its way.
    #[pyo3(signature = (requests, defer=false))]
    fn submit(&self, py: Python<'_>, requests: &Bound<'_, PyAny>, defer: bool) -> PyResult<usize> {
        let id = self.id()?;
        let mut reqs = Vec::new();
        collect_requests(requests, &mut reqs)?;
        Ok(self.core.submit(py, self.slot, id, &reqs, defer)?)
    }

    /// Posts the deferred requests of this batch's thread (every batch of it); returns how
    /// many work requests went out.
    fn post_deferred(&self, py: Python<'_>) -> PyResult<usize> {
        self.id()?;
        Ok(self.core.settle_deferred(py, self.slot, true)?)
    }

    /// Takes back the deferred requests of this batch's thread unsent: they end failed with
    /// reason "FLUSHED". Returns how many work requests were dropped.
    fn discard_deferred(&self, py: Python<'_>) -> PyResult<usize> {
        self.id()?;
        Ok(self.core.settle_deferred(py, self.slot, false)?)
    }

    /// Waits (GIL released; Ctrl-C raises KeyboardInterrupt and leaves the batch as it is)
    /// until every submitted request finished, or `timeout` seconds (None: no limit) passed,
    /// when the unfinished ones become "timed_out". With `check`, raises the first failed
    /// request's TransferFailed subclass, or TransferTimeout; else returns the status either
    /// way.
    #[pyo3(signature = (timeout=None, check=true))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>, check: bool) -> PyResult<PyBatchStatus> {
        let id = self.id()?;
        let t = timeout_of("timeout", timeout)?;
        let st = self.core.wait_batch(py, self.slot, id, t)?;
        if check {
            if st.failed > 0 {
                for i in 0..st.submitted as usize {
                    let s = self
                        .core
                        .engine
                        .request_status(id, i)
                        .map_err(Error::from)?;
                    if let transport::RequestStatus::Failed(r) = s {
                        return Err(failure_err(py, i, r, ""));
                    }
                }
            }
            if st.timed_out > 0 {
                return Err(TransferTimeout::new_err(format!(
                    "{} of {} requests timed out",
                    st.timed_out, st.submitted
                )));
            }
        }
        Ok(st.into())
    }

    /// The batch's counters now (polls once first, without waiting).
    fn status(&self, py: Python<'_>) -> PyResult<PyBatchStatus> {
        let id = self.id()?;
        self.core.progress(py, self.slot)?;
        Ok(self
            .core
            .engine
            .batch_status(id)
            .map_err(Error::from)?
            .into())
    }

    /// The state of request `index` (in submission order).
    fn request_status(&self, index: usize) -> PyResult<PyRequestStatus> {
        let id = self.id()?;
        let s = self
            .core
            .engine
            .request_status(id, index)
            .map_err(Error::from)?;
        let (state, reason) = status_parts(s);
        Ok(PyRequestStatus {
            state,
            reason: reason.map(FailReason::name),
            vendor_err: reason.and_then(FailReason::vendor_err),
        })
    }

    /// Cancels every unfinished request; returns how many.
    fn cancel(&self) -> PyResult<u32> {
        let id = self.id()?;
        Ok(self.core.engine.cancel(id).map_err(Error::from)?)
    }

    /// Frees the batch: waits up to `drain` seconds for its work requests, cancelling what is
    /// left (freed later, once drained). Idempotent.
    #[pyo3(signature = (drain=5.0))]
    fn free(&self, py: Python<'_>, drain: f64) -> PyResult<()> {
        let drain = timeout_of("drain", Some(drain))?.unwrap_or(Duration::MAX);
        let taken = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match taken {
            Some(id) if !self.core.is_closed() => {
                Ok(self.core.release_batch(py, self.slot, id, drain)?)
            }
            _ => Ok(()),
        }
    }

    fn __len__(&self) -> PyResult<usize> {
        let id = self.id()?;
        Ok(self
            .core
            .engine
            .batch_status(id)
            .map_err(Error::from)?
            .submitted as usize)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.free(py, 5.0)
    }
}

impl std::fmt::Debug for PySegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PySegment")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("address", &self.address)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PyRemoteSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyRemoteSegment")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("base", &self.base)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

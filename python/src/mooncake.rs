//! `TransferEngine`: Mooncake Transfer Engine's Python API (names, arguments, integer return
//! codes) over the engine. Peers are addressed as `host:rpc_port` (their discovery server) and
//! their memory by raw virtual address, which is resolved against the segments the peer
//! publishes (protocol 1.2's listing) and refused when no segment covers it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use transport::{
    Access, BatchId, LocalAddr, Location, Opcode, RemoteSegment, Request, SegmentId, TransportError,
};

use crate::api::PyEngine;
use crate::core::{Core, Error, Finished, MetaChoice, Options};
use crate::maps::check_rw_mapped;

/// Name prefix of the segments this layer publishes (`mc/<sequence>`, so name order is
/// registration order).
const PREFIX: &str = "mc/";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Direction of a transfer (Mooncake's `TransferOpcode`).
#[pyclass(
    eq,
    eq_int,
    frozen,
    module = "efa_transport._native",
    name = "TransferOpcode"
)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TransferOpcode {
    /// Remote to local.
    #[pyo3(name = "READ")]
    Read = 0,
    /// Local to remote.
    #[pyo3(name = "WRITE")]
    Write = 1,
}

/// Mooncake's notification message (`name`, `msg`). Accepted for signature compatibility;
/// transfers that carry one return -1 (notifications here are counted tags: Engine.wait_notify).
#[pyclass(module = "efa_transport._native", name = "TransferNotify")]
#[derive(Debug, Clone)]
pub struct TransferNotify {
    /// Notification name.
    #[pyo3(get, set)]
    name: String,
    /// Message.
    #[pyo3(get, set)]
    msg: String,
}

#[pymethods]
impl TransferNotify {
    #[new]
    #[pyo3(signature = (name=String::new(), msg=String::new()))]
    fn new(name: String, msg: String) -> Self {
        TransferNotify { name, msg }
    }
}

struct LocalBuf {
    id: SegmentId,
    len: u64,
    managed: bool,
}

struct RemoteRange {
    name: String,
    base: u64,
    len: u64,
    handle: Option<RemoteSegment>,
}

struct AsyncBatch {
    id: BatchId,
    slot: usize,
    started: Instant,
}

struct Mc {
    core: Arc<Core>,
    local: Mutex<BTreeMap<u64, LocalBuf>>,
    seq: AtomicU64,
    remotes: Mutex<HashMap<String, Vec<RemoteRange>>>,
    batches: Mutex<HashMap<i64, AsyncBatch>>,
    next_batch: AtomicU64,
    timeout: Duration,
}

/// Mooncake-compatible transfer engine. Methods return 0 (or a value) on success and a
/// negative number on failure, as Mooncake's do; get_last_error() says why.
#[pyclass(frozen, module = "efa_transport._native", name = "TransferEngine")]
pub struct TransferEngine {
    state: OnceLock<Arc<Mc>>,
    last_error: Mutex<String>,
}

impl std::fmt::Debug for TransferEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferEngine")
            .field("initialized", &self.state.get().is_some())
            .finish_non_exhaustive()
    }
}

/// The transfer timeout: `MC_TRANSFER_TIMEOUT` seconds, 30 by default.
fn transfer_timeout() -> Duration {
    std::env::var("MC_TRANSFER_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map_or(Duration::from_secs(30), Duration::from_secs)
}

/// Mooncake's protocol names to fabric names.
fn fabric_of(protocol: &str) -> Result<&'static str, Error> {
    Ok(match protocol.to_ascii_lowercase().as_str() {
        "efa" => "efa",
        "rdma" | "verbs" => "verbs",
        "tcp" => "tcp",
        "sim" => "sim",
        "" | "auto" => "auto",
        other => {
            return Err(Error::Config(format!(
                "protocol {other:?} (expected efa, rdma, tcp, sim or auto)"
            )))
        }
    })
}

/// `host[:port]` to (host, port); port 0 when absent.
fn split_host(hostname: &str) -> (String, u16) {
    if let Some((h, p)) = hostname.rsplit_once(':') {
        if let Ok(port) = p.parse::<u16>() {
            if !h.is_empty() && !h.ends_with(':') {
                return (h.trim_matches(['[', ']']).to_string(), port);
            }
        }
    }
    (hostname.trim_matches(['[', ']']).to_string(), 0)
}

fn listen_of(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A list (or other sequence) of non-negative Python ints. Read as i64, which CPython converts
/// faster than u64; user-space addresses and lengths are far below 2^63, so a negative value
/// is simply bad input. Lists are read by index (no iterator object per call).
fn ints(obj: &Bound<'_, PyAny>, what: &str) -> Result<Vec<u64>, Error> {
    let unsigned =
        |v: i64| u64::try_from(v).map_err(|_| Error::Config(format!("{what} {v} is negative")));
    if let Ok(list) = obj.cast::<PyList>() {
        let mut out = Vec::with_capacity(list.len());
        for i in 0..list.len() {
            out.push(unsigned(list.get_item(i)?.extract::<i64>()?)?);
        }
        return Ok(out);
    }
    obj.extract::<Vec<i64>>()?
        .into_iter()
        .map(unsigned)
        .collect()
}

/// One request's integer, as [`ints`] reads them.
fn one(v: i64, what: &str) -> Result<Vec<u64>, Error> {
    u64::try_from(v)
        .map(|v| vec![v])
        .map_err(|_| Error::Config(format!("{what} {v} is negative")))
}

impl TransferEngine {
    fn mc(&self) -> Result<&Arc<Mc>, Error> {
        let mc = self
            .state
            .get()
            .ok_or_else(|| Error::Config("the engine is not initialized".into()))?;
        mc.core.check_open()?;
        Ok(mc)
    }

    /// 0, or -1 with the error kept for get_last_error(); a Python exception (an interrupt,
    /// a list item of the wrong type) is raised.
    fn code(&self, r: Result<(), Error>) -> PyResult<i64> {
        self.value(r.map(|()| 0), -1)
    }

    /// The value, or `failed` with the error kept for get_last_error(); a Python exception is
    /// raised.
    fn value<T>(&self, r: Result<T, Error>, failed: T) -> PyResult<T> {
        match r {
            Ok(v) => Ok(v),
            Err(Error::Py(e)) => Err(e),
            Err(e) => {
                self.fail(e);
                Ok(failed)
            }
        }
    }

    fn fail(&self, e: Error) {
        let msg = e.to_string();
        log::warn!("TransferEngine: {msg}");
        *lock(&self.last_error) = msg;
    }

    #[allow(clippy::too_many_arguments)] // The Python signature, argument for argument.
    fn init(
        &self,
        py: Python<'_>,
        local_hostname: &str,
        metadata_server: &str,
        protocol: &str,
        device_name: &str,
        metadata_type: Option<&str>,
    ) -> Result<(), Error> {
        if self.state.get().is_some() {
            return Err(Error::Config("already initialized".into()));
        }
        let p2p = metadata_server.eq_ignore_ascii_case("P2PHANDSHAKE")
            || metadata_type.is_some_and(|t| {
                t.eq_ignore_ascii_case("p2p") || t.eq_ignore_ascii_case("P2PHANDSHAKE")
            });
        if !p2p {
            return Err(Error::Config(format!(
                "metadata server {metadata_server:?}: only P2PHANDSHAKE (peer-to-peer discovery) is supported"
            )));
        }
        let (host, port) = split_host(local_hostname);
        if host.is_empty() {
            return Err(Error::Config(format!(
                "local_hostname {local_hostname:?} has no host"
            )));
        }
        let mut o = Options::new(local_hostname.to_string(), fabric_of(protocol)?.to_string());
        o.metadata = MetaChoice::P2p;
        o.devices = device_name
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect();
        o.listen = listen_of(&host, port);
        let core = match py.detach(|| Core::build(o.clone())) {
            // The port asked for is taken: take any, as get_rpc_port() reports.
            Err(Error::Transport(TransportError::Metadata(_))) if port != 0 => {
                o.listen = listen_of(&host, 0);
                py.detach(|| Core::build(o))?
            }
            other => other?,
        };
        let mc = Mc {
            core: Arc::new(core),
            local: Mutex::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
            remotes: Mutex::new(HashMap::new()),
            batches: Mutex::new(HashMap::new()),
            next_batch: AtomicU64::new(1),
            timeout: transfer_timeout(),
        };
        self.state
            .set(Arc::new(mc))
            .map_err(|_| Error::Config("already initialized".into()))
    }
}

impl Mc {
    /// Registers raw memory under the next `mc/` name.
    fn register(&self, py: Python<'_>, addr: u64, len: u64) -> Result<(), Error> {
        check_rw_mapped(addr, len).map_err(Error::Buffer)?;
        if lock(&self.local).contains_key(&addr) {
            return Err(Error::Buffer(format!("{addr:#x} is already registered")));
        }
        let name = format!("{PREFIX}{:012}", self.seq.fetch_add(1, Ordering::Relaxed));
        // SAFETY: mapped read-write now (checked); keeping it so while registered is the
        // caller's duty, as with Mooncake's register_memory.
        let id = unsafe {
            self.core.register(
                py,
                &name,
                addr,
                len,
                Location::Cpu(0),
                Access::REMOTE_READ_WRITE,
                None,
            )?
        };
        lock(&self.local).insert(
            addr,
            LocalBuf {
                id,
                len,
                managed: false,
            },
        );
        Ok(())
    }

    fn unregister(&self, py: Python<'_>, addr: u64, managed: bool) -> Result<(), Error> {
        // Out of the map first, so no copy (`with_local`) starts on memory about to be freed;
        // back in if the engine refuses (a segment still in use).
        let buf = {
            let mut local = lock(&self.local);
            match local.get(&addr) {
                None => {
                    return Err(Error::Buffer(format!(
                        "{addr:#x} is not a registered buffer"
                    )))
                }
                Some(b) if b.managed != managed => {
                    return Err(Error::Buffer(format!(
                        "{addr:#x} is {}a managed buffer",
                        if b.managed { "" } else { "not " }
                    )))
                }
                Some(_) => local.remove(&addr).expect("present under the lock"),
            }
        };
        if let Err(e) = self.core.unregister(py, buf.id) {
            lock(&self.local).insert(addr, buf);
            return Err(e);
        }
        Ok(())
    }

    /// Runs `f` on a pointer to `addr` when a registered buffer holds `addr..addr+len`, with
    /// the map locked so the buffer cannot be unregistered (and freed) meanwhile.
    fn with_local<R>(&self, addr: u64, len: u64, f: impl FnOnce(*mut u8) -> R) -> Result<R, Error> {
        let end = addr
            .checked_add(len)
            .ok_or_else(|| Error::Buffer(format!("{addr:#x}+{len} wraps")))?;
        let local = lock(&self.local);
        match local.range(..=addr).next_back() {
            Some((&base, b)) if end <= base.saturating_add(b.len) => Ok(f(addr as *mut u8)),
            _ => Err(Error::Buffer(format!(
                "{addr:#x}+{len} is not inside a registered buffer"
            ))),
        }
    }

    /// The open remote segment of `target` that covers `addr..addr+len`, and the offset in it.
    fn resolve(&self, target: &str, addr: u64, len: u64) -> Result<(RemoteSegment, u64), Error> {
        let end = addr
            .checked_add(len)
            .ok_or_else(|| Error::Buffer(format!("peer range {addr:#x}+{len} wraps")))?;
        let find = |ranges: &[RemoteRange]| {
            ranges
                .iter()
                .position(|r| r.base <= addr && end <= r.base.saturating_add(r.len))
        };
        let mut refreshed = false;
        loop {
            {
                let remotes = lock(&self.remotes);
                if let Some(ranges) = remotes.get(target) {
                    if let Some(i) = find(ranges) {
                        if let Some(h) = ranges[i].handle {
                            return Ok((h, addr - ranges[i].base));
                        }
                        let name = format!("{target}/{}", ranges[i].name);
                        let base = ranges[i].base;
                        drop(remotes);
                        let h = self.core.engine.open_segment(&name)?;
                        let mut remotes = lock(&self.remotes);
                        if let Some(r) = remotes
                            .get_mut(target)
                            .and_then(|rs| rs.iter_mut().find(|r| r.base == base))
                        {
                            match r.handle {
                                Some(other) => {
                                    let _ = self.core.engine.close_segment(h);
                                    return Ok((other, addr - base));
                                }
                                None => r.handle = Some(h),
                            }
                        }
                        return Ok((h, addr - base));
                    }
                }
            }
            if refreshed {
                return Err(Error::Unmapped(format!(
                    "no segment of {target} covers {addr:#x}+{len}"
                )));
            }
            self.refresh(target)?;
            refreshed = true;
        }
    }

    /// Lists the peer's segments anew (keeping handles of the ones that did not change).
    fn refresh(&self, target: &str) -> Result<(), Error> {
        let meta = self
            .core
            .peer
            .as_ref()
            .ok_or_else(|| Error::Config("no discovery service".into()))?;
        let listing = meta
            .list(target, PREFIX)
            .map_err(|e| Error::Transport(e.into()))?;
        let mut remotes = lock(&self.remotes);
        let old = remotes.remove(target).unwrap_or_default();
        let mut fresh: Vec<RemoteRange> = listing
            .segments
            .into_iter()
            .map(|s| RemoteRange {
                name: s.name,
                base: s.base,
                len: s.len,
                handle: None,
            })
            .collect();
        for o in old {
            match fresh
                .iter_mut()
                .find(|f| f.name == o.name && f.base == o.base && f.len == o.len)
            {
                Some(f) => f.handle = o.handle,
                None => {
                    if let Some(h) = o.handle {
                        let _ = self.core.engine.close_segment(h);
                    }
                }
            }
        }
        remotes.insert(target.to_string(), fresh);
        Ok(())
    }

    /// Forgets what is known of `target`'s segments (after a failure that says it changed).
    fn forget(&self, target: &str) {
        if let Some(old) = lock(&self.remotes).remove(target) {
            for h in old.into_iter().filter_map(|r| r.handle) {
                let _ = self.core.engine.close_segment(h);
            }
        }
    }

    /// The requests of a Mooncake batch, resolved (the GIL is released only to list or open
    /// a peer's segments).
    fn requests(
        &self,
        py: Python<'_>,
        target: &str,
        buffers: Vec<u64>,
        peers: Vec<u64>,
        lengths: Vec<u64>,
        op: TransferOpcode,
    ) -> Result<Vec<Request>, Error> {
        if buffers.len() != peers.len() || buffers.len() != lengths.len() {
            return Err(Error::Config(format!(
                "{} buffers, {} peer addresses and {} lengths: the lists must be as long",
                buffers.len(),
                peers.len(),
                lengths.len()
            )));
        }
        if buffers.is_empty() {
            return Err(Error::Config("no requests".into()));
        }
        let op = match op {
            TransferOpcode::Read => Opcode::Read,
            TransferOpcode::Write => Opcode::Write,
        };
        let n = buffers.len();
        // Local addresses to segment offsets through the ordered map (the engine's own
        // raw-address search is linear in the segments); what no buffer holds stays raw, for
        // the engine to refuse with LocalNotRegistered.
        let locals: Vec<LocalAddr> = {
            let local = lock(&self.local);
            buffers
                .iter()
                .zip(&lengths)
                .map(|(&addr, &len)| match local.range(..=addr).next_back() {
                    Some((&base, b))
                        if addr
                            .checked_add(len)
                            .is_some_and(|end| end <= base.saturating_add(b.len)) =>
                    {
                        LocalAddr::Segment {
                            segment: b.id,
                            offset: addr - base,
                        }
                    }
                    _ => LocalAddr::Raw(addr),
                })
                .collect()
        };
        let mut out = Vec::with_capacity(n);
        let request = |remote, remote_offset, i: usize| Request {
            op,
            local: locals[i],
            remote,
            remote_offset,
            len: lengths[i],
        };
        while out.len() < n {
            // Fast path: one lock for a run of hits, the segment that covered the previous
            // address tried first (a batch mostly stays inside one buffer).
            {
                let remotes = lock(&self.remotes);
                let ranges = remotes.get(target).map_or(&[][..], Vec::as_slice);
                let mut last = 0usize;
                while out.len() < n {
                    let i = out.len();
                    let (peer, len) = (peers[i], lengths[i]);
                    let covers = |r: &RemoteRange| {
                        r.handle.is_some()
                            && r.base <= peer
                            && peer
                                .checked_add(len)
                                .is_some_and(|end| end <= r.base.saturating_add(r.len))
                    };
                    let hit = match ranges.get(last) {
                        Some(r) if covers(r) => Some(last),
                        _ => ranges.iter().position(covers),
                    };
                    let Some(k) = hit else { break };
                    last = k;
                    let r = &ranges[k];
                    if let Some(h) = r.handle {
                        out.push(request(h, peer - r.base, i));
                    }
                }
            }
            // A miss: list or open (network, no lock held), then go on.
            if out.len() < n {
                let i = out.len();
                let (peer, len) = (peers[i], lengths[i]);
                let (remote, remote_offset) = py.detach(|| self.resolve(target, peer, len))?;
                out.push(request(remote, remote_offset, i));
            }
        }
        Ok(out)
    }

    /// Runs a batch synchronously: Ok on full success.
    fn sync(
        &self,
        py: Python<'_>,
        target: &str,
        buffers: Vec<u64>,
        peers: Vec<u64>,
        lengths: Vec<u64>,
        op: TransferOpcode,
    ) -> Result<(), Error> {
        let reqs = self.requests(py, target, buffers, peers, lengths, op)?;
        match self.core.run_sync(py, &reqs, self.timeout)? {
            Finished::Done { failure: None, .. } => Ok(()),
            Finished::Done {
                failure: Some((i, reason)),
                ..
            } => {
                if reason == transport::FailReason::RemoteBadAddress {
                    self.forget(target);
                }
                Err(Error::Config(format!(
                    "request {i} to {target} failed: {}",
                    reason.name()
                )))
            }
            Finished::TimedOut(st) => Err(Error::Config(format!(
                "{} of {} requests to {target} timed out after {:?}",
                st.timed_out, st.submitted, self.timeout
            ))),
        }
    }

    /// Submits a batch; returns its id.
    fn submit(
        &self,
        py: Python<'_>,
        target: &str,
        buffers: Vec<u64>,
        peers: Vec<u64>,
        lengths: Vec<u64>,
        op: TransferOpcode,
    ) -> Result<i64, Error> {
        let reqs = self.requests(py, target, buffers, peers, lengths, op)?;
        let (id, slot) = self.core.allocate_batch(reqs.len())?;
        if let Err(e) = self.core.submit(py, slot, id, &reqs, false) {
            let _ = self.core.engine.free_batch(id);
            return Err(e);
        }
        let n = self.next_batch.fetch_add(1, Ordering::Relaxed) as i64;
        lock(&self.batches).insert(
            n,
            AsyncBatch {
                id,
                slot,
                started: Instant::now(),
            },
        );
        Ok(n)
    }

    /// 1 completed, 0 in progress, -1 failed, -2 timed out (finished batches are freed).
    fn check(&self, py: Python<'_>, batch: i64) -> Result<i64, Error> {
        let (id, slot, started) = {
            let b = lock(&self.batches);
            let a = b
                .get(&batch)
                .ok_or_else(|| Error::Config(format!("unknown batch id {batch}")))?;
            (a.id, a.slot, a.started)
        };
        self.core.progress(py, slot)?;
        let st = self.core.engine.batch_status(id)?;
        let code = if st.pending == 0 {
            if st.all_completed() {
                1
            } else {
                -1
            }
        } else if started.elapsed() >= self.timeout {
            self.core.wait_batch(py, slot, id, Some(Duration::ZERO))?;
            -2
        } else {
            return Ok(0);
        };
        lock(&self.batches).remove(&batch);
        self.core
            .release_batch(py, slot, id, Duration::from_millis(100))?;
        Ok(code)
    }

    /// Waits for batches; Ok when every one completed.
    fn wait_all(&self, py: Python<'_>, ids: &[i64]) -> Result<(), Error> {
        let mut first_err = None;
        for &n in ids {
            let Some(a) = lock(&self.batches).remove(&n) else {
                first_err.get_or_insert(Error::Config(format!("unknown batch id {n}")));
                continue;
            };
            let left = self.timeout.saturating_sub(a.started.elapsed());
            let r = self.core.wait_batch(py, a.slot, a.id, Some(left));
            let _ = self
                .core
                .release_batch(py, a.slot, a.id, Duration::from_millis(100));
            match r {
                Ok(st) if st.all_completed() => {}
                Ok(st) => {
                    first_err.get_or_insert(Error::Config(format!("batch {n}: {st:?}")));
                }
                Err(Error::Py(e)) => return Err(Error::Py(e)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[pymethods]
impl TransferEngine {
    #[new]
    fn new() -> Self {
        TransferEngine {
            state: OnceLock::new(),
            last_error: Mutex::new(String::new()),
        }
    }

    /// initialize(local_hostname, metadata_server, protocol, device_name) -> int
    ///
    /// metadata_server "P2PHANDSHAKE": peer-to-peer discovery (the only service supported);
    /// protocol "efa", "rdma" (verbs), "tcp", "sim" or "" / "auto"; device_name: comma
    /// separated devices used as rails ("" for the fabric's default). 0 on success.
    fn initialize(
        &self,
        py: Python<'_>,
        local_hostname: &str,
        metadata_server: &str,
        protocol: &str,
        device_name: &str,
    ) -> PyResult<i64> {
        let r = self.init(
            py,
            local_hostname,
            metadata_server,
            protocol,
            device_name,
            None,
        );
        self.code(r)
    }

    /// initialize_ext(local_hostname, metadata_server, protocol, device_name, metadata_type)
    /// -> int; metadata_type "p2p" is the same as metadata_server "P2PHANDSHAKE".
    fn initialize_ext(
        &self,
        py: Python<'_>,
        local_hostname: &str,
        metadata_server: &str,
        protocol: &str,
        device_name: &str,
        metadata_type: &str,
    ) -> PyResult<i64> {
        let r = self.init(
            py,
            local_hostname,
            metadata_server,
            protocol,
            device_name,
            Some(metadata_type),
        );
        self.code(r)
    }

    /// The port of this engine's discovery server: peers address it as "host:port". -1 before
    /// initialize.
    fn get_rpc_port(&self) -> PyResult<i64> {
        let r = self.mc().map(|mc| {
            mc.core
                .peer
                .as_ref()
                .map_or(-1, |p| i64::from(p.local_addr().port()))
        });
        self.value(r, -1)
    }

    /// The engine below, as an efa_transport.Engine (None before initialize).
    fn get_engine(&self) -> Option<PyEngine> {
        self.state
            .get()
            .map(|mc| PyEngine::from_core(mc.core.clone()))
    }

    /// register_memory(buffer_addr, capacity) -> int. The range must be mapped read-write
    /// (checked) and stay allocated until unregister_memory.
    fn register_memory(&self, py: Python<'_>, buffer_addr: u64, capacity: u64) -> PyResult<i64> {
        let r = self
            .mc()
            .and_then(|mc| mc.register(py, buffer_addr, capacity));
        self.code(r)
    }

    /// unregister_memory(buffer_addr) -> int
    fn unregister_memory(&self, py: Python<'_>, buffer_addr: u64) -> PyResult<i64> {
        let r = self
            .mc()
            .and_then(|mc| mc.unregister(py, buffer_addr, false));
        self.code(r)
    }

    /// batch_register_memory(buffer_addresses, capacities) -> int (stops at the first
    /// failure; the ones before it stay registered).
    fn batch_register_memory(
        &self,
        py: Python<'_>,
        buffer_addresses: Vec<u64>,
        capacities: Vec<u64>,
    ) -> PyResult<i64> {
        let r = self.mc().and_then(|mc| {
            if buffer_addresses.len() != capacities.len() {
                return Err(Error::Config(format!(
                    "{} addresses, {} capacities",
                    buffer_addresses.len(),
                    capacities.len()
                )));
            }
            buffer_addresses
                .iter()
                .zip(&capacities)
                .try_for_each(|(&a, &c)| mc.register(py, a, c))
        });
        self.code(r)
    }

    /// batch_unregister_memory(buffer_addresses) -> int (tries every one).
    fn batch_unregister_memory(&self, py: Python<'_>, buffer_addresses: Vec<u64>) -> PyResult<i64> {
        let r = self.mc().and_then(|mc| {
            let mut first = Ok(());
            for a in buffer_addresses {
                if let Err(e) = mc.unregister(py, a, false) {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
            first
        });
        self.code(r)
    }

    /// allocate_managed_buffer(length) -> int: the address of `length` zeroed, registered
    /// bytes the engine owns, or 0 on failure.
    fn allocate_managed_buffer(&self, py: Python<'_>, length: usize) -> PyResult<u64> {
        let r = self.mc().and_then(|mc| {
            let name = format!("{PREFIX}{:012}", mc.seq.fetch_add(1, Ordering::Relaxed));
            let id = mc
                .core
                .register_owned(py, &name, length, Access::REMOTE_READ_WRITE)?;
            let info = mc.core.engine.segment_info(id)?;
            lock(&mc.local).insert(
                info.base,
                LocalBuf {
                    id,
                    len: info.len,
                    managed: true,
                },
            );
            Ok(info.base)
        });
        self.value(r, 0)
    }

    /// free_managed_buffer(buffer_addr, length) -> int
    fn free_managed_buffer(&self, py: Python<'_>, buffer_addr: u64, length: u64) -> PyResult<i64> {
        let r = self.mc().and_then(|mc| {
            let known = lock(&mc.local).get(&buffer_addr).map(|b| b.len);
            if known.is_some_and(|l| l != length) {
                return Err(Error::Buffer(format!(
                    "{buffer_addr:#x} has {} bytes, not {length}",
                    known.unwrap_or(0)
                )));
            }
            mc.unregister(py, buffer_addr, true)
        });
        self.code(r)
    }

    /// get_first_buffer_address(segment_name) -> int: the first buffer (in registration
    /// order) that the engine `segment_name` ("host:port", or this engine's own) publishes;
    /// 0 if none.
    fn get_first_buffer_address(&self, py: Python<'_>, segment_name: &str) -> PyResult<u64> {
        let r = self.mc().and_then(|mc| {
            let meta = mc
                .core
                .peer
                .as_ref()
                .ok_or_else(|| Error::Config("no discovery service".into()))?;
            let own = meta.local_addr().to_string();
            let segs = if segment_name == own || segment_name == mc.core.engine.name() {
                meta.local_list(PREFIX)
            } else {
                py.detach(|| meta.list(segment_name, PREFIX))
                    .map_err(|e| Error::Transport(e.into()))?
                    .segments
            };
            Ok(segs.first().map_or(0, |s| s.base))
        });
        self.value(r, 0)
    }

    /// write_bytes_to_buffer(dest_address, src_ptr, length) -> int: copies `length` bytes of
    /// `src_ptr` (bytes-like) into a registered or managed buffer.
    fn write_bytes_to_buffer(
        &self,
        dest_address: u64,
        src_ptr: &[u8],
        length: usize,
    ) -> PyResult<i64> {
        let r = self.mc().and_then(|mc| {
            if length > src_ptr.len() {
                return Err(Error::Buffer(format!(
                    "length {length} exceeds the {} bytes given",
                    src_ptr.len()
                )));
            }
            mc.with_local(dest_address, length as u64, |dst| {
                // SAFETY: `dst..dst+length` lies inside a registered buffer (checked, and it
                // stays registered while the map is locked), which is engine-owned or kept
                // valid by the caller while registered; `src_ptr` is a distinct Python buffer
                // of at least `length` bytes.
                unsafe { std::ptr::copy_nonoverlapping(src_ptr.as_ptr(), dst, length) }
            })
        });
        self.code(r)
    }

    /// read_bytes_from_buffer(source_address, length) -> bytes, from a registered or managed
    /// buffer. Raises BadBuffer for a range no buffer holds.
    fn read_bytes_from_buffer(
        &self,
        py: Python<'_>,
        source_address: u64,
        length: usize,
    ) -> PyResult<Py<PyBytes>> {
        let mc = self.mc()?;
        let bytes = mc.with_local(source_address, length as u64, |src| {
            // SAFETY: `src..src+length` lies inside a registered buffer (checked), valid while
            // registered, and it stays registered while the map is locked; the bytes are
            // copied out before the lock is released.
            let view = unsafe { std::slice::from_raw_parts(src as *const u8, length) };
            PyBytes::new(py, view).unbind()
        })?;
        Ok(bytes)
    }

    /// transfer_sync_write(target_hostname, buffer, peer_buffer_address, length,
    /// transport_hint="") -> int
    #[pyo3(signature = (target_hostname, buffer, peer_buffer_address, length, transport_hint=""))]
    fn transfer_sync_write(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffer: i64,
        peer_buffer_address: i64,
        length: i64,
        transport_hint: &str,
    ) -> PyResult<i64> {
        let _ = transport_hint;
        let r = self.mc().and_then(|mc| {
            mc.sync(
                py,
                target_hostname,
                one(buffer, "buffer address")?,
                one(peer_buffer_address, "peer buffer address")?,
                one(length, "length")?,
                TransferOpcode::Write,
            )
        });
        self.code(r)
    }

    /// transfer_sync_read(target_hostname, buffer, peer_buffer_address, length,
    /// transport_hint="") -> int
    #[pyo3(signature = (target_hostname, buffer, peer_buffer_address, length, transport_hint=""))]
    fn transfer_sync_read(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffer: i64,
        peer_buffer_address: i64,
        length: i64,
        transport_hint: &str,
    ) -> PyResult<i64> {
        let _ = transport_hint;
        let r = self.mc().and_then(|mc| {
            mc.sync(
                py,
                target_hostname,
                one(buffer, "buffer address")?,
                one(peer_buffer_address, "peer buffer address")?,
                one(length, "length")?,
                TransferOpcode::Read,
            )
        });
        self.code(r)
    }

    /// transfer_sync(target_hostname, buffer, peer_buffer_address, length, opcode,
    /// notify=None, transport_hint="") -> int; a notify returns -1 (not supported).
    #[pyo3(signature = (target_hostname, buffer, peer_buffer_address, length, opcode, notify=None, transport_hint=""))]
    #[allow(clippy::too_many_arguments)] // The Python signature, argument for argument.
    fn transfer_sync(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffer: i64,
        peer_buffer_address: i64,
        length: i64,
        opcode: TransferOpcode,
        notify: Option<TransferNotify>,
        transport_hint: &str,
    ) -> PyResult<i64> {
        let _ = transport_hint;
        if notify.is_some() {
            return self.code(Err(Error::Config(
                "notify messages are not supported (use Engine.wait_notify tags)".into(),
            )));
        }
        let r = self.mc().and_then(|mc| {
            mc.sync(
                py,
                target_hostname,
                one(buffer, "buffer address")?,
                one(peer_buffer_address, "peer buffer address")?,
                one(length, "length")?,
                opcode,
            )
        });
        self.code(r)
    }

    /// transfer_submit_write(target_hostname, buffer, peer_buffer_address, length,
    /// transport_hint="") -> int: a batch id, or negative on failure.
    #[pyo3(signature = (target_hostname, buffer, peer_buffer_address, length, transport_hint=""))]
    fn transfer_submit_write(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffer: i64,
        peer_buffer_address: i64,
        length: i64,
        transport_hint: &str,
    ) -> PyResult<i64> {
        let _ = transport_hint;
        let r = self.mc().and_then(|mc| {
            mc.submit(
                py,
                target_hostname,
                one(buffer, "buffer address")?,
                one(peer_buffer_address, "peer buffer address")?,
                one(length, "length")?,
                TransferOpcode::Write,
            )
        });
        self.value(r, -1)
    }

    /// transfer_check_status(batch_id) -> int: 1 completed, 0 in progress, -1 failed (or an
    /// unknown id), -2 timed out. A finished batch is freed.
    fn transfer_check_status(&self, py: Python<'_>, batch_id: i64) -> PyResult<i64> {
        let r = self.mc().and_then(|mc| mc.check(py, batch_id));
        self.value(r, -1)
    }

    /// batch_transfer_sync_write(target_hostname, buffers, peer_buffer_addresses, lengths,
    /// transport_hint="") -> int
    #[pyo3(signature = (target_hostname, buffers, peer_buffer_addresses, lengths, transport_hint=""))]
    fn batch_transfer_sync_write(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffers: &Bound<'_, PyAny>,
        peer_buffer_addresses: &Bound<'_, PyAny>,
        lengths: &Bound<'_, PyAny>,
        transport_hint: &str,
    ) -> PyResult<i64> {
        let _ = transport_hint;
        let r = self.mc().and_then(|mc| {
            mc.sync(
                py,
                target_hostname,
                ints(buffers, "buffer address")?,
                ints(peer_buffer_addresses, "peer buffer address")?,
                ints(lengths, "length")?,
                TransferOpcode::Write,
            )
        });
        self.code(r)
    }

    /// batch_transfer_sync_read(target_hostname, buffers, peer_buffer_addresses, lengths,
    /// transport_hint="") -> int
    #[pyo3(signature = (target_hostname, buffers, peer_buffer_addresses, lengths, transport_hint=""))]
    fn batch_transfer_sync_read(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffers: &Bound<'_, PyAny>,
        peer_buffer_addresses: &Bound<'_, PyAny>,
        lengths: &Bound<'_, PyAny>,
        transport_hint: &str,
    ) -> PyResult<i64> {
        let _ = transport_hint;
        let r = self.mc().and_then(|mc| {
            mc.sync(
                py,
                target_hostname,
                ints(buffers, "buffer address")?,
                ints(peer_buffer_addresses, "peer buffer address")?,
                ints(lengths, "length")?,
                TransferOpcode::Read,
            )
        });
        self.code(r)
    }

    /// batch_transfer_sync(target_hostname, buffers, peer_buffer_addresses, lengths, opcode,
    /// notify=None, transport_hint="") -> int; a notify returns -1 (not supported).
    #[pyo3(signature = (target_hostname, buffers, peer_buffer_addresses, lengths, opcode, notify=None, transport_hint=""))]
    #[allow(clippy::too_many_arguments)] // The Python signature, argument for argument.
    fn batch_transfer_sync(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffers: &Bound<'_, PyAny>,
        peer_buffer_addresses: &Bound<'_, PyAny>,
        lengths: &Bound<'_, PyAny>,
        opcode: TransferOpcode,
        notify: Option<TransferNotify>,
        transport_hint: &str,
    ) -> PyResult<i64> {
        let _ = transport_hint;
        if notify.is_some() {
            return self.code(Err(Error::Config(
                "notify messages are not supported (use Engine.wait_notify tags)".into(),
            )));
        }
        let r = self.mc().and_then(|mc| {
            mc.sync(
                py,
                target_hostname,
                ints(buffers, "buffer address")?,
                ints(peer_buffer_addresses, "peer buffer address")?,
                ints(lengths, "length")?,
                opcode,
            )
        });
        self.code(r)
    }

    /// batch_transfer_async_write(target_hostname, buffers, peer_buffer_addresses, lengths,
    /// transport_hint="") -> int: a batch id, or 0 on failure.
    #[pyo3(signature = (target_hostname, buffers, peer_buffer_addresses, lengths, transport_hint=""))]
    fn batch_transfer_async_write(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffers: &Bound<'_, PyAny>,
        peer_buffer_addresses: &Bound<'_, PyAny>,
        lengths: &Bound<'_, PyAny>,
        transport_hint: &str,
    ) -> PyResult<i64> {
        self.batch_transfer_async(
            py,
            target_hostname,
            buffers,
            peer_buffer_addresses,
            lengths,
            TransferOpcode::Write,
            transport_hint,
        )
    }

    /// batch_transfer_async_read(target_hostname, buffers, peer_buffer_addresses, lengths,
    /// transport_hint="") -> int: a batch id, or 0 on failure.
    #[pyo3(signature = (target_hostname, buffers, peer_buffer_addresses, lengths, transport_hint=""))]
    fn batch_transfer_async_read(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffers: &Bound<'_, PyAny>,
        peer_buffer_addresses: &Bound<'_, PyAny>,
        lengths: &Bound<'_, PyAny>,
        transport_hint: &str,
    ) -> PyResult<i64> {
        self.batch_transfer_async(
            py,
            target_hostname,
            buffers,
            peer_buffer_addresses,
            lengths,
            TransferOpcode::Read,
            transport_hint,
        )
    }

    /// batch_transfer_async(target_hostname, buffers, peer_buffer_addresses, lengths, opcode,
    /// transport_hint="") -> int: a batch id, or 0 on failure.
    #[pyo3(signature = (target_hostname, buffers, peer_buffer_addresses, lengths, opcode, transport_hint=""))]
    #[allow(clippy::too_many_arguments)] // The Python signature, argument for argument.
    fn batch_transfer_async(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffers: &Bound<'_, PyAny>,
        peer_buffer_addresses: &Bound<'_, PyAny>,
        lengths: &Bound<'_, PyAny>,
        opcode: TransferOpcode,
        transport_hint: &str,
    ) -> PyResult<i64> {
        let _ = transport_hint;
        let r = self.mc().and_then(|mc| {
            mc.submit(
                py,
                target_hostname,
                ints(buffers, "buffer address")?,
                ints(peer_buffer_addresses, "peer buffer address")?,
                ints(lengths, "length")?,
                opcode,
            )
        });
        self.value(r, 0)
    }

    /// get_batch_transfer_status(batch_ids) -> int: waits for every batch; 0 when all
    /// completed, -1 when any failed, timed out or is unknown. The batches are freed.
    fn get_batch_transfer_status(&self, py: Python<'_>, batch_ids: Vec<i64>) -> PyResult<i64> {
        let r = self.mc().and_then(|mc| mc.wait_all(py, &batch_ids));
        self.code(r)
    }

    /// get_notifies() -> list: always empty (notify messages are not supported; see
    /// Engine.wait_notify for counted notifications).
    fn get_notifies(&self) -> Vec<TransferNotify> {
        Vec::new()
    }

    /// send_probe(peer_server_name) -> int: 0 when the peer's discovery server answers a
    /// handshake.
    fn send_probe(&self, py: Python<'_>, peer_server_name: &str) -> PyResult<i64> {
        let r = self.mc().and_then(|mc| {
            let meta = mc
                .core
                .peer
                .as_ref()
                .ok_or_else(|| Error::Config("no discovery service".into()))?;
            py.detach(|| meta.hello(peer_server_name))
                .map(|_| ())
                .map_err(|e| Error::Transport(e.into()))
        });
        self.code(r)
    }

    /// get_local_topology(device_name=None) -> str: JSON with the fabric, why it was chosen
    /// and its rails.
    #[pyo3(signature = (device_name=None))]
    fn get_local_topology(&self, device_name: Option<&str>) -> PyResult<String> {
        let _ = device_name;
        let mc = self.mc()?;
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        Ok(format!(
            "{{\"fabric\": \"{}\", \"reason\": \"{}\", \"rails\": {}}}",
            mc.core.fabric,
            esc(&mc.core.reason),
            mc.core.engine.capabilities().rails
        ))
    }

    /// The message of the last failure a call reported with a negative code.
    fn get_last_error(&self) -> String {
        lock(&self.last_error).clone()
    }

    /// Closes the engine (extension): unregisters everything and stops discovery.
    fn close(&self, py: Python<'_>) {
        if let Some(mc) = self.state.get() {
            mc.core.close(py);
        }
    }
}

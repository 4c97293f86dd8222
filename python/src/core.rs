//! The engine as the Python classes share it: fabric and discovery set-up, a small pool of
//! workers (one per Python thread, round robin), the buffers held while registered, and the
//! GIL-free, interruptible waits.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use transport::discovery::{DiscoveryConfig, PeerMetadata};
use transport::fabric::auto::{self, DeviceProbe, FabricKind, Scope};
use transport::fabric::efa::{EfaConfig, EfaFabric};
use transport::fabric::multi::MultiFabric;
use transport::fabric::sim::{SimConfig, SimFabric, SimNetwork};
use transport::fabric::tcp::{TcpConfig, TcpFabric};
use transport::fabric::verbs::{VerbsConfig, VerbsFabric};
use transport::fabric::Fabric;
use transport::{
    Access, BatchId, BatchStatus, Engine, EngineConfig, FailReason, LocalRegistry, Location,
    Metadata, Request, RequestStatus, SegmentId, TransportError, Worker,
};

use crate::errors::{transport_err, BadBuffer, ConfigError, EngineClosed, RemoteOutOfRange};

/// Longest stretch spent without the GIL before signals are checked (Ctrl-C).
pub const SLICE: Duration = Duration::from_millis(20);
/// Smallest batch the pool keeps for reuse.
const SPARE_MIN: usize = 32;

/// An error of a call: the transport's, a closed engine, or a Python exception (an interrupt).
#[derive(Debug)]
pub enum Error {
    /// The transport refused or failed.
    Transport(TransportError),
    /// The engine was closed.
    Closed,
    /// A Python exception (KeyboardInterrupt from a signal, a conversion).
    Py(PyErr),
    /// A configuration value the package refuses before the transport sees it.
    Config(String),
    /// A buffer or address that cannot be registered.
    Buffer(String),
    /// A peer address that no published segment covers.
    Unmapped(String),
}

impl From<TransportError> for Error {
    fn from(e: TransportError) -> Self {
        Error::Transport(e)
    }
}

impl From<PyErr> for Error {
    fn from(e: PyErr) -> Self {
        Error::Py(e)
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Transport(t) => transport_err(t),
            Error::Closed => EngineClosed::new_err("the engine is closed"),
            Error::Py(p) => p,
            Error::Config(m) => ConfigError::new_err(m),
            Error::Buffer(m) => BadBuffer::new_err(m),
            Error::Unmapped(m) => RemoteOutOfRange::new_err(m),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Transport(t) => write!(f, "{t}"),
            Error::Closed => f.write_str("the engine is closed"),
            Error::Py(p) => write!(f, "{p}"),
            Error::Config(m) | Error::Buffer(m) | Error::Unmapped(m) => f.write_str(m),
        }
    }
}

/// Where segment descriptors go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaChoice {
    /// The peer-to-peer discovery server of this engine (`host:port/name` opens a peer's).
    P2p,
    /// A registry shared by the engines of this process (plain names; `sim` in one process).
    Local,
    /// A service named by a connection string (`etcd://host:port[,host:port]`; needs the
    /// package built with the `etcd` feature, else a `MetadataError` naming the string).
    Spec(String),
}

/// Settings of an engine, from the Python constructors.
#[derive(Debug, Clone)]
pub struct Options {
    /// Engine name.
    pub name: String,
    /// `auto`, `sim`, `tcp`, `efa`, `verbs` (or `rdma`).
    pub fabric: String,
    /// `host:port` of the discovery server (port 0: any); its host is also the tcp fabric's.
    pub listen: String,
    /// Devices used as rails (efa, verbs); empty: the fabric's default.
    pub devices: Vec<String>,
    /// Metadata service.
    pub metadata: MetaChoice,
    /// Discovery servers asked for plain names.
    pub peers: Vec<String>,
    /// Workers in the pool.
    pub workers: usize,
    /// Slice size, when not the engine's default.
    pub slice_size: Option<u64>,
    /// Notification tags.
    pub notify_tags: u32,
    /// Settings of the `sim` fabric.
    pub sim: SimConfig,
}

impl Options {
    /// Defaults for an engine called `name` on `fabric`.
    pub fn new(name: String, fabric: String) -> Options {
        Options {
            name,
            fabric,
            listen: "127.0.0.1:0".into(),
            devices: Vec::new(),
            metadata: MetaChoice::P2p,
            peers: Vec::new(),
            workers: 4,
            slice_size: None,
            notify_tags: 1024,
            sim: SimConfig::default(),
        }
    }
}

/// The network every `sim` engine of this process is on.
fn sim_network() -> &'static Arc<SimNetwork> {
    static NET: OnceLock<Arc<SimNetwork>> = OnceLock::new();
    NET.get_or_init(SimNetwork::new)
}

/// The registry shared by `metadata="local"` engines of this process.
fn local_registry() -> Arc<LocalRegistry> {
    static REG: OnceLock<Arc<LocalRegistry>> = OnceLock::new();
    REG.get_or_init(|| Arc::new(LocalRegistry::new())).clone()
}

/// `host:port` to an address, IPv4 first.
pub fn resolve(what: &str, hostport: &str) -> Result<SocketAddr, Error> {
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(|e| Error::Config(format!("{what} {hostport:?}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| Error::Config(format!("{what} {hostport:?}: no address")))
}

/// One worker of the pool, with the batches it keeps for synchronous transfers.
#[derive(Default)]
pub struct Slot {
    worker: Option<Worker>,
    /// A free batch kept for reuse, and its capacity.
    spare: Option<(BatchId, usize)>,
    /// Batches given up on (timed out, interrupted) whose work requests are still in flight;
    /// freed once they drain.
    zombies: Vec<BatchId>,
}

/// How a synchronous transfer ended.
#[derive(Debug, Clone, Copy)]
pub enum Finished {
    /// Every request ended; the first failed one, if any.
    Done {
        /// Final counters.
        status: BatchStatus,
        /// Index and reason of the first failed request.
        failure: Option<(usize, FailReason)>,
    },
    /// The timeout passed first (the unfinished requests are `TimedOut`).
    TimedOut(BatchStatus),
}

/// A registration's hold on its memory: the object that keeps a buffer exported (None for
/// memory the engine owns or raw addresses).
pub type Hold = Option<Py<PyAny>>;

/// An engine and what the Python classes need around it.
pub struct Core {
    // Field order is drop order: workers before the engine, the engine (which deregisters
    // everything) before the buffers it used.
    slots: Box<[Mutex<Slot>]>,
    /// The engine.
    pub engine: Engine,
    /// The fabric's name.
    pub fabric: String,
    /// Why this fabric (for `auto`).
    pub reason: String,
    /// The discovery server, for `metadata="p2p"`.
    pub peer: Option<Arc<PeerMetadata>>,
    closed: AtomicBool,
    held: Mutex<HashMap<SegmentId, Hold>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// This thread's turn in the worker pools (the same index in every engine).
    static THREAD_SLOT: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
}

/// The fabrics named by `fabric` (`auto`, one of `efa`, `rdma`/`verbs`, `tcp`, `sim`, or
/// several joined by `+` in order of preference, e.g. `efa+tcp`), and why.
fn fabric_kinds(fabric: &str) -> Result<(Vec<FabricKind>, String), Error> {
    let lower = fabric.to_ascii_lowercase();
    if lower.is_empty() || lower == "auto" {
        let s = auto::select(&DeviceProbe::system(), Scope::CrossProcess);
        return Ok((vec![s.kind], s.reason));
    }
    let kinds = lower
        .split('+')
        .map(|one| match one {
            "rdma" => Ok(FabricKind::Verbs),
            other => other.parse::<FabricKind>().map_err(|_| {
                Error::Config(format!(
                    "fabric {other:?} in {fabric:?} (expected auto, or efa, rdma, verbs, tcp, sim \
                     joined by '+' in order of preference)"
                ))
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((kinds, "asked for".to_string()))
}

/// One fabric of kind `kind`, as the engine's options ask.
fn build_fabric(
    kind: FabricKind,
    o: &Options,
    listen: SocketAddr,
) -> Result<Arc<dyn Fabric>, Error> {
    let fabric: Arc<dyn Fabric> = match kind {
        FabricKind::Sim => {
            SimFabric::new(sim_network(), o.sim.clone()).map_err(TransportError::from)?
        }
        FabricKind::Tcp => TcpFabric::new(TcpConfig {
            bind: SocketAddr::new(listen.ip(), 0),
            ..TcpConfig::default()
        })
        .map_err(TransportError::from)?,
        FabricKind::Efa => EfaFabric::new(EfaConfig {
            devices: o.devices.clone(),
            ..EfaConfig::default()
        })
        .map_err(TransportError::from)?,
        FabricKind::Verbs => VerbsFabric::new(VerbsConfig {
            devices: o.devices.clone(),
            max_endpoints: (o.workers as u16 + 1).clamp(2, 64),
            ..VerbsConfig::default()
        })
        .map_err(TransportError::from)?,
    };
    Ok(fabric)
}

impl Core {
    /// Builds the fabric, the metadata service and the engine.
    pub fn build(o: Options) -> Result<Core, Error> {
        if o.workers == 0 || o.workers > 64 {
            return Err(Error::Config(format!(
                "workers = {} (expected 1..=64)",
                o.workers
            )));
        }
        let (kinds, reason) = fabric_kinds(&o.fabric)?;
        let listen = resolve("listen address", &o.listen)?;
        let members = kinds
            .iter()
            .map(|&k| build_fabric(k, &o, listen))
            .collect::<Result<Vec<_>, _>>()?;
        let fabric: Arc<dyn Fabric> = match <[_; 1]>::try_from(members) {
            Ok([one]) => one,
            Err(many) => MultiFabric::new(many).map_err(TransportError::from)?,
        };
        let (metadata, peer): (Arc<dyn Metadata>, _) = match &o.metadata {
            MetaChoice::P2p => {
                let mut c = DiscoveryConfig::new(o.name.clone());
                c.bind = listen;
                c.peers = o.peers.clone();
                let m = PeerMetadata::bind(c).map_err(TransportError::from)?;
                m.attach_fabric(fabric.clone());
                (m.clone(), Some(m))
            }
            MetaChoice::Local => (local_registry(), None),
            MetaChoice::Spec(spec) => (
                transport::discovery::connect(spec, &o.name).map_err(TransportError::from)?,
                None,
            ),
        };
        let mut config = EngineConfig::new(o.name);
        config.slice_size = o.slice_size;
        config.notify_tags = o.notify_tags;
        let fabric_name = fabric.name().to_string();
        let engine = Engine::new(config, fabric, metadata)?;
        Ok(Core {
            slots: (0..o.workers)
                .map(|_| Mutex::new(Slot::default()))
                .collect(),
            engine,
            fabric: fabric_name,
            reason,
            peer,
            closed: AtomicBool::new(false),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Refuses calls on a closed engine.
    #[inline]
    pub fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Whether [`Core::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The calling thread's worker slot.
    #[inline]
    pub fn slot_index(&self) -> usize {
        THREAD_SLOT.with(|s| *s) % self.slots.len()
    }

    /// Locks slot `i` and makes sure it has a worker.
    pub fn slot(&self, i: usize) -> Result<MutexGuard<'_, Slot>, Error> {
        let mut g = lock(&self.slots[i]);
        // Checked under the lock: `close` takes the workers under the same locks.
        self.check_open()?;
        if g.worker.is_none() {
            g.worker = Some(self.engine.worker()?);
        }
        Ok(g)
    }

    /// The discovery address (`host:port`), for `metadata="p2p"`.
    pub fn address(&self) -> Option<String> {
        self.peer.as_ref().map(|p| p.local_addr().to_string())
    }

    /// Registers `addr..addr+len` as segment `name`, holding `hold` until it is unregistered.
    ///
    /// # Safety
    ///
    /// The range must stay valid for reads and writes until [`Core::unregister`] succeeds
    /// (which drops `hold`, so `hold` may be what keeps it valid).
    #[allow(clippy::too_many_arguments)] // The Python register's arguments, plus what keeps the memory alive.
    pub unsafe fn register(
        &self,
        py: Python<'_>,
        name: &str,
        addr: u64,
        len: u64,
        location: Location,
        access: Access,
        hold: Hold,
    ) -> Result<SegmentId, Error> {
        self.check_open()?;
        let len = usize::try_from(len)
            .map_err(|_| Error::Buffer(format!("length {len} does not fit this machine")))?;
        let engine = &self.engine;
        let id = py.detach(|| {
            // SAFETY: the caller keeps the range valid until unregister succeeds.
            unsafe { engine.register_memory(name, addr as *mut u8, len, location, access) }
        })?;
        lock(&self.held).insert(id, hold);
        Ok(id)
    }

    /// Registers memory the engine owns (zeroed, page aligned).
    pub fn register_owned(
        &self,
        py: Python<'_>,
        name: &str,
        len: usize,
        access: Access,
    ) -> Result<SegmentId, Error> {
        self.check_open()?;
        let memory = transport::OwnedMemory::zeroed(len, 4096)
            .map_err(|e| Error::Buffer(format!("cannot allocate {len} bytes: {e}")))?;
        let engine = &self.engine;
        let id = py.detach(|| engine.register_owned(name, memory, Location::Cpu(0), access))?;
        lock(&self.held).insert(id, None);
        Ok(id)
    }

    /// Unregisters a segment, then lets go of what held its memory.
    pub fn unregister(&self, py: Python<'_>, id: SegmentId) -> Result<(), Error> {
        self.check_open()?;
        let engine = &self.engine;
        py.detach(|| engine.unregister(id))?;
        let hold = lock(&self.held).remove(&id);
        drop(hold);
        Ok(())
    }

    /// Submits `reqs` as one batch on the calling thread's worker and waits (GIL released,
    /// interruptible) until every request ended or `timeout` passed.
    pub fn run_sync(
        &self,
        py: Python<'_>,
        reqs: &[Request],
        timeout: Duration,
    ) -> Result<Finished, Error> {
        let i = self.slot_index();
        let start = Instant::now();
        // Submit and the first slice in one release of the GIL: a fast transfer costs one.
        let (batch, cap, done) = py.detach(|| -> Result<_, Error> {
            let mut g = self.slot(i)?;
            let slot = &mut *g;
            let (batch, cap) = slot.take_batch(&self.engine, reqs.len())?;
            let w = slot.worker.as_mut().expect("slot() made the worker");
            if let Err(e) = w.submit(batch, reqs) {
                // A refused submit leaves the batch untouched.
                slot.spare = Some((batch, cap));
                return Err(e.into());
            }
            let st = w.drain(batch, SLICE.min(timeout))?;
            // Done when every request ended: a request failed early (its peer gone) may still
            // have work requests in flight, and then the batch is parked until they drain.
            if st.pending == 0 {
                let f = self.finish(batch, st)?;
                slot.give_back(&self.engine, batch, cap);
                return Ok((batch, cap, Some(f)));
            }
            Ok((batch, cap, None))
        })?;
        if let Some(f) = done {
            return Ok(f);
        }
        loop {
            if let Err(e) = py.check_signals() {
                // The interrupt is what the caller hears of; the batch is parked either way.
                let _ = self.give_up(py, i, batch, true);
                return Err(e.into());
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                let st = self.give_up(py, i, batch, false)?;
                return Ok(Finished::TimedOut(st));
            }
            let slice = SLICE.min(timeout - elapsed);
            let done = py.detach(|| -> Result<_, Error> {
                let mut g = self.slot(i)?;
                let slot = &mut *g;
                let w = slot.worker.as_mut().expect("slot() made the worker");
                let st = w.drain(batch, slice)?;
                if st.pending != 0 {
                    return Ok(None);
                }
                let f = self.finish(batch, st)?;
                slot.give_back(&self.engine, batch, cap);
                Ok(Some(f))
            })?;
            if let Some(f) = done {
                return Ok(f);
            }
        }
    }

    /// Ends a synchronous batch early: cancels it (`cancel`) or lets its unfinished requests
    /// time out; the batch is freed once its work requests drain.
    fn give_up(
        &self,
        py: Python<'_>,
        i: usize,
        batch: BatchId,
        cancel: bool,
    ) -> Result<BatchStatus, Error> {
        py.detach(|| {
            let mut g = self.slot(i)?;
            let slot = &mut *g;
            let st = if cancel {
                self.engine.cancel(batch)?;
                self.engine.batch_status(batch)?
            } else {
                let w = slot.worker.as_mut().expect("slot() made the worker");
                w.wait(batch, Duration::ZERO)?
            };
            slot.zombies.push(batch);
            Ok(st)
        })
    }

    /// The outcome of a batch whose requests all ended.
    fn finish(&self, batch: BatchId, status: BatchStatus) -> Result<Finished, TransportError> {
        let mut failure = None;
        if status.failed > 0 {
            for i in 0..status.submitted as usize {
                if let RequestStatus::Failed(r) = self.engine.request_status(batch, i)? {
                    failure = Some((i, r));
                    break;
                }
            }
        }
        Ok(Finished::Done { status, failure })
    }

    /// Allocates a batch for the thread's worker slot (its submits and waits go through it).
    pub fn allocate_batch(&self, capacity: usize) -> Result<(BatchId, usize), Error> {
        self.check_open()?;
        Ok((self.engine.allocate_batch(capacity)?, self.slot_index()))
    }

    /// Submits to a batch through worker slot `i`; with `defer`, without ringing the doorbell
    /// (see [`transport::Worker::submit_deferred`]).
    pub fn submit(
        &self,
        py: Python<'_>,
        i: usize,
        batch: BatchId,
        reqs: &[Request],
        defer: bool,
    ) -> Result<usize, Error> {
        py.detach(|| {
            let mut g = self.slot(i)?;
            let w = g.worker.as_mut().expect("slot() made the worker");
            Ok(match defer {
                true => w.submit_deferred(batch, reqs)?,
                false => w.submit(batch, reqs)?,
            })
        })
    }

    /// Posts (`post`) or discards the deferred work of worker slot `i`; how many work requests.
    pub fn settle_deferred(&self, py: Python<'_>, i: usize, post: bool) -> Result<usize, Error> {
        py.detach(|| {
            let mut g = self.slot(i)?;
            let w = g.worker.as_mut().expect("slot() made the worker");
            Ok(match post {
                true => w.post_deferred(),
                false => w.discard_deferred(),
            })
        })
    }

    /// Polls worker slot `i` once (so status reads make progress without a wait).
    pub fn progress(&self, py: Python<'_>, i: usize) -> Result<(), Error> {
        py.detach(|| {
            let mut g = self.slot(i)?;
            g.worker
                .as_mut()
                .expect("slot() made the worker")
                .progress();
            Ok(())
        })
    }

    /// Waits (GIL released, interruptible) until every request of `batch` ended, or marks
    /// the unfinished ones `TimedOut` when `timeout` passes; `None`: no timeout.
    pub fn wait_batch(
        &self,
        py: Python<'_>,
        i: usize,
        batch: BatchId,
        timeout: Option<Duration>,
    ) -> Result<BatchStatus, Error> {
        let start = Instant::now();
        loop {
            let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
            let slice = left.map_or(SLICE, |l| l.min(SLICE));
            let st = py.detach(|| -> Result<_, Error> {
                let mut g = self.slot(i)?;
                let w = g.worker.as_mut().expect("slot() made the worker");
                let st = w.drain(batch, slice)?;
                if st.pending == 0 {
                    return Ok(Some(st));
                }
                if left.is_some_and(|l| l <= slice) {
                    return Ok(Some(w.wait(batch, Duration::ZERO)?));
                }
                Ok(None)
            })?;
            if let Some(st) = st {
                return Ok(st);
            }
            py.check_signals()?;
        }
    }

    /// Drains a batch (bounded) and frees it; a batch that does not drain in time is freed
    /// later, once it does.
    pub fn release_batch(
        &self,
        py: Python<'_>,
        i: usize,
        batch: BatchId,
        drain: Duration,
    ) -> Result<(), Error> {
        py.detach(|| {
            let mut g = self.slot(i)?;
            let slot = &mut *g;
            let w = slot.worker.as_mut().expect("slot() made the worker");
            let st = w.drain(batch, drain)?;
            if st.in_flight == 0 {
                self.engine.free_batch(batch)?;
            } else {
                self.engine.cancel(batch)?;
                slot.zombies.push(batch);
            }
            Ok(())
        })
    }

    /// Frees a batch whose Python handle is gone, without waiting: one still in flight is
    /// cancelled and freed once it drains.
    pub fn drop_batch(&self, i: usize, batch: BatchId) {
        if self.is_closed() {
            return;
        }
        let mut g = lock(&self.slots[i]);
        if let Err(TransportError::BatchBusy { .. }) = self.engine.free_batch(batch) {
            let _ = self.engine.cancel(batch);
            g.zombies.push(batch);
        }
    }

    /// Waits (GIL released, interruptible) until notification `tag` counted `count`
    /// arrivals or `timeout` passed; returns the count seen last.
    pub fn wait_notify(
        &self,
        py: Python<'_>,
        tag: u32,
        count: u64,
        timeout: Option<Duration>,
    ) -> Result<u64, Error> {
        self.check_open()?;
        let start = Instant::now();
        loop {
            let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
            let slice = left.map_or(SLICE, |l| l.min(SLICE));
            let n = py.detach(|| self.engine.notifications().wait_for(tag, count, slice))?;
            if n >= count || left.is_some_and(|l| l <= slice) {
                return Ok(n);
            }
            py.check_signals()?;
        }
    }

    /// Closes the engine: drops the workers (their requests in flight are completed by the
    /// engine), unregisters every segment and lets go of the buffers, stops discovery.
    /// Later calls raise `EngineClosed`. Segments still busy keep their buffers held until the
    /// engine object is gone.
    pub fn close(&self, py: Python<'_>) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        py.detach(|| {
            for s in self.slots.iter() {
                let mut g = lock(s);
                let slot = &mut *g;
                if let Some(w) = slot.worker.as_mut() {
                    for b in slot.zombies.drain(..) {
                        let _ = w.drain(b, Duration::from_millis(200));
                        let _ = self.engine.free_batch(b);
                    }
                }
                if let Some((b, _)) = slot.spare.take() {
                    let _ = self.engine.free_batch(b);
                }
                slot.worker = None;
            }
        });
        let ids: Vec<SegmentId> = lock(&self.held).keys().copied().collect();
        for id in ids {
            let engine = &self.engine;
            if py.detach(|| engine.unregister(id)).is_ok() {
                let hold = lock(&self.held).remove(&id);
                drop(hold);
            }
        }
        if let Some(p) = &self.peer {
            py.detach(|| p.shutdown());
        }
    }
}

impl Slot {
    /// A free batch of at least `n` requests: the spare one, or a new one.
    fn take_batch(&mut self, engine: &Engine, n: usize) -> Result<(BatchId, usize), Error> {
        if !self.zombies.is_empty() {
            if let Some(w) = self.worker.as_mut() {
                w.progress();
            }
            self.zombies
                .retain(|b| matches!(engine.free_batch(*b), Err(TransportError::BatchBusy { .. })));
        }
        if let Some((b, cap)) = self.spare.take() {
            if cap >= n {
                return Ok((b, cap));
            }
            let _ = engine.free_batch(b);
        }
        let cap = n.max(SPARE_MIN);
        match engine.allocate_batch(cap) {
            Ok(b) => Ok((b, cap)),
            // Past the largest batch, let the engine's own error name the limit.
            Err(_) if cap != n => Ok((engine.allocate_batch(n)?, n)),
            Err(e) => Err(e.into()),
        }
    }

    /// Keeps a batch whose work requests all completed for the next synchronous transfer.
    fn give_back(&mut self, engine: &Engine, batch: BatchId, cap: usize) {
        match engine.recycle_batch(batch) {
            Ok(b) => {
                if let Some((old, _)) = self.spare.replace((b, cap)) {
                    let _ = engine.free_batch(old);
                }
            }
            Err(_) => self.zombies.push(batch),
        }
    }
}

/// Parses an access string: `r` (peers may read), `w` (peers may write), `rw`, or `""`/`none`.
pub fn parse_access(s: &str) -> Result<Access, Error> {
    let mut a = Access::NONE;
    if s.eq_ignore_ascii_case("none") {
        return Ok(a);
    }
    for c in s.chars() {
        match c.to_ascii_lowercase() {
            'r' => a = a.union(Access::REMOTE_READ),
            'w' => a = a.union(Access::REMOTE_WRITE),
            _ => {
                return Err(Error::Config(format!(
                    "access {s:?} (expected \"r\", \"w\", \"rw\" or \"none\")"
                )))
            }
        }
    }
    Ok(a)
}

/// Parses `cpu:N` / `gpu:N`.
pub fn parse_location(s: &str) -> Result<Location, Error> {
    s.parse()
        .map_err(|e| Error::Config(format!("location {s:?}: {e}")))
}

/// Seconds (None: no limit) to a duration, refusing negative and non-finite values.
pub fn timeout_of(what: &str, secs: Option<f64>) -> Result<Option<Duration>, Error> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.0 => Duration::try_from_secs_f64(s)
            .map(Some)
            .map_err(|e| Error::Config(format!("{what} = {s}: {e}"))),
        Some(s) => Err(Error::Config(format!(
            "{what} = {s} (expected seconds >= 0, or None)"
        ))),
    }
}

/// A request status as `(state, reason)`.
pub fn status_parts(s: RequestStatus) -> (&'static str, Option<FailReason>) {
    match s {
        RequestStatus::Waiting => ("waiting", None),
        RequestStatus::Pending => ("pending", None),
        RequestStatus::Completed => ("completed", None),
        RequestStatus::Failed(r) => ("failed", Some(r)),
        RequestStatus::TimedOut => ("timed_out", None),
        RequestStatus::Cancelled => ("cancelled", None),
    }
}

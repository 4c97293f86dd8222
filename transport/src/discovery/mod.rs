//! Peer-to-peer discovery, the embedded default: no external service.
//!
//! Every engine runs a [`PeerMetadata`]: a [`Metadata`] implementation that keeps the
//! descriptors this engine publishes and serves them over TCP from a small server thread.
//! Opening `host:port/segment` asks that server directly (unless a local segment has exactly
//! that name); opening a plain name looks in the local store, then asks the configured peers in
//! order. Each connection starts with a
//! handshake carrying the requester's fabric addresses, which the target hands to
//! [`Fabric::accept`] (for EFA: the reverse address handle). The frames are versioned and
//! length-checked ([`wire`]); every read has a deadline, connections are bounded in number,
//! and a hostile or broken client is logged and dropped without disturbing others.
//! A peer may also list what a server publishes ([`PeerMetadata::list`]: names and address
//! ranges by prefix, protocol 1.2), so an address in the peer's memory can be resolved to the
//! segment that covers it (the Python package's Mooncake-compatible layer does this).
//!
//! A cluster-wide store (etcd) would be another [`Metadata`] implementation; fabrics and the
//! engine do not change.
//!
//! ```no_run
//! use std::sync::Arc;
//! use transport::discovery::{DiscoveryConfig, PeerMetadata};
//! use transport::fabric::tcp::{TcpConfig, TcpFabric};
//! use transport::{Engine, EngineConfig};
//!
//! let fabric = TcpFabric::new(TcpConfig::default())?;
//! let meta = PeerMetadata::bind(DiscoveryConfig::new("node-a"))?;
//! meta.attach_fabric(fabric.clone());
//! let engine = Engine::new(EngineConfig::new("node-a"), fabric, meta.clone())?;
//! let remote = engine.open_segment("10.0.0.2:7000/kv/0")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod conn;
mod connect;
mod server;
pub mod wire;

pub use connect::connect;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::descriptor::SegmentDescriptor;
use crate::fabric::multi::{hello_name, split_hello};
use crate::fabric::Fabric;
use crate::metadata::{Metadata, MetadataError};
use conn::{read_frame, write_frame, FrameError};
use wire::{ErrorCode, Listing, Message, PeerHello, SegmentSummary};

/// Settings of a [`PeerMetadata`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Engine name (the owner of published descriptors, sent in hellos).
    pub engine: String,
    /// Where the server binds (`127.0.0.1:0` by default).
    pub bind: SocketAddr,
    /// Discovery servers (`host:port`) asked, in order, for names not published locally.
    pub peers: Vec<String>,
    /// Bound on connecting to a peer's server.
    pub connect_timeout: Duration,
    /// A frame, once begun, must arrive whole within this (defeats slow-drip clients).
    pub frame_timeout: Duration,
    /// An idle connection is closed after this.
    pub idle_timeout: Duration,
    /// A connection is closed after this long however busy it is, so no client holds a slot
    /// for ever (a client that looks something up now and then included).
    pub session_timeout: Duration,
    /// Largest frame body accepted.
    pub max_frame: usize,
    /// Most connections served at once. When all are taken, a new connection takes the slot
    /// of the longest-open connection that is idle between frames; when none is idle, it is
    /// refused with an Error frame (code `Busy`).
    pub max_connections: usize,
}

impl DiscoveryConfig {
    /// Defaults for engine `engine`: loopback any port, no peers, 2 s connect and frame
    /// timeouts, 10 s idle timeout, 30 s sessions, 64 KiB frames, 64 connections.
    pub fn new(engine: impl Into<String>) -> Self {
        DiscoveryConfig {
            engine: engine.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            peers: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            frame_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(30),
            max_frame: wire::DEFAULT_MAX_BODY,
            max_connections: 64,
        }
    }
}

/// Counters of a discovery server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiscoveryStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections or handshakes rejected (malformed, hostile, refused, over the limit).
    pub rejected: u64,
    /// Descriptors served.
    pub served: u64,
    /// Idle connections closed to make room for a new one.
    pub evicted: u64,
    /// Connections open now.
    pub open: u64,
    /// Of those, connections waiting between frames (the ones a new connection may take over).
    pub idle: u64,
}

#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicU64,
    rejected: AtomicU64,
    served: AtomicU64,
    evicted: AtomicU64,
}

/// One open connection of the server, as the accept loop sees it.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    /// A second handle on the socket, to close it when the slot is taken over.
    sock: TcpStream,
    started: Instant,
    /// Waiting for the first byte of a frame (a slot that may be taken over).
    idle: AtomicBool,
}

pub(crate) struct State {
    config: DiscoveryConfig,
    store: Mutex<HashMap<String, SegmentDescriptor>>,
    /// Weak: the engine owns the fabric; discovery must not keep it (and the memory it
    /// exposes) alive after the engine is gone.
    fabric: RwLock<Option<Weak<dyn Fabric>>>,
    peers: RwLock<Vec<String>>,
    stop: AtomicBool,
    /// Open connections (at most `max_connections`).
    conns: Mutex<Vec<Arc<ConnInfo>>>,
    stats: Stats,
}

impl State {
    fn find(&self, name: &str) -> Option<SegmentDescriptor> {
        self.store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// The published segments whose names start with `prefix`, in name order, as many as fit
    /// in a frame body of `max_body` bytes.
    pub(crate) fn list(&self, prefix: &str, max_body: usize) -> Listing {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<SegmentSummary> = store
            .values()
            .filter(|d| d.name.starts_with(prefix))
            .map(|d| SegmentSummary {
                name: d.name.clone(),
                base: d.base,
                len: d.len,
            })
            .collect();
        drop(store);
        all.sort_by(|a, b| a.name.cmp(&b.name));
        // Count and truncation flag, then entries while they fit.
        let mut used = 4 + 1;
        let mut listing = Listing::default();
        for seg in all {
            let need = wire::SUMMARY_FIXED_LEN + seg.name.len();
            if used + need > max_body {
                listing.truncated = true;
                break;
            }
            used += need;
            listing.segments.push(seg);
        }
        listing
    }

    fn fabric(&self) -> Option<Arc<dyn Fabric>> {
        self.fabric
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(Weak::upgrade)
    }

    fn own_hello(&self) -> PeerHello {
        let f = self.fabric();
        PeerHello {
            engine: self.config.engine.clone(),
            fabric: f
                .as_ref()
                .map(|f| hello_name(&f.planes()))
                .unwrap_or_default(),
            addresses: f.map(|f| f.local_addresses()).unwrap_or_default(),
        }
    }

    /// Target side of the handshake: let the fabric accept the requester.
    fn accept(&self, hello: &PeerHello) -> Result<(), String> {
        let Some(f) = self.fabric() else {
            return Ok(());
        };
        if hello.fabric.is_empty() || hello.addresses.is_empty() {
            return Ok(());
        }
        let Some(offered) = split_hello(&hello.fabric, &hello.addresses) else {
            return Err(format!(
                "engine {:?} sent fabric {:?} with {} addresses, which do not add up",
                hello.engine,
                hello.fabric,
                hello.addresses.len()
            ));
        };
        let _span =
            tracing::info_span!("accept", peer = %hello.engine, rails = hello.addresses.len())
                .entered();
        // Accept the requester on every plane both engines speak.
        let mut accepted = Ok(false);
        for (i, plane) in f.planes().iter().enumerate() {
            if let Some((_, addresses)) = offered.iter().find(|(n, _)| *n == plane.name) {
                accepted = accepted.and_then(|_| f.accept_plane(i, addresses).map(|()| true));
            }
        }
        match accepted {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "engine {:?} speaks fabric {:?}, this engine {:?}",
                hello.engine,
                hello.fabric,
                f.name()
            )),
            Err(e) => Err(format!("fabric refused engine {:?}: {e}", hello.engine)),
        }
    }
}

/// Most connections a server may be configured for (each is served by a thread).
pub const MAX_CONNECTIONS: usize = 4096;
/// Largest frame body a server may be configured for.
pub const MAX_FRAME_LIMIT: usize = 16 << 20;
/// Smallest frame body a server may be configured for (a hello with one rail fits).
pub const MIN_FRAME_LIMIT: usize = 256;

/// Refuses settings the server cannot work with, naming the value.
fn check_config(c: &DiscoveryConfig) -> Result<(), MetadataError> {
    let bad = |field: &str, value: String, expected: &str| {
        Err(MetadataError::Config(format!(
            "discovery: {field} = {value} (expected {expected})"
        )))
    };
    for (field, d) in [
        ("connect_timeout", c.connect_timeout),
        ("frame_timeout", c.frame_timeout),
        ("idle_timeout", c.idle_timeout),
        ("session_timeout", c.session_timeout),
    ] {
        if d.is_zero() {
            return bad(field, format!("{d:?}"), "more than 0");
        }
    }
    if !(1..=MAX_CONNECTIONS).contains(&c.max_connections) {
        return bad(
            "max_connections",
            c.max_connections.to_string(),
            &format!("1..={MAX_CONNECTIONS}"),
        );
    }
    if !(MIN_FRAME_LIMIT..=MAX_FRAME_LIMIT).contains(&c.max_frame) {
        return bad(
            "max_frame",
            c.max_frame.to_string(),
            &format!("{MIN_FRAME_LIMIT}..={MAX_FRAME_LIMIT}"),
        );
    }
    Ok(())
}

/// The embedded discovery service of one engine. See the [module docs](self).
pub struct PeerMetadata {
    state: Arc<State>,
    local: SocketAddr,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for PeerMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerMetadata")
            .field("engine", &self.state.config.engine)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// Splits `host:port/segment` into the server address and the segment name; `None` for a
/// plain name (no `/`, or no `:port` before the first `/`).
pub fn split_remote_name(name: &str) -> Option<(&str, &str)> {
    let (host, seg) = name.split_once('/')?;
    let (h, port) = host.rsplit_once(':')?;
    if h.is_empty()
        || seg.is_empty()
        || port.is_empty()
        || !port.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    port.parse::<u16>().ok()?;
    Some((host, seg))
}

/// A failed frame exchange with `server`: an OS error is kept as the cause
/// ([`MetadataError::PeerIo`]); a closed connection, a timeout or a malformed frame is told in
/// words ([`MetadataError::Unavailable`]).
fn frame_failure(server: &str, what: &'static str, e: FrameError) -> MetadataError {
    match e {
        FrameError::Io(source) => MetadataError::PeerIo {
            server: server.to_owned(),
            what,
            source: source.into(),
        },
        e => MetadataError::Unavailable(format!("{server}: {what}: {e}")),
    }
}

impl PeerMetadata {
    /// Binds the server and starts its thread.
    pub fn bind(config: DiscoveryConfig) -> Result<Arc<PeerMetadata>, MetadataError> {
        check_config(&config)?;
        let listener = TcpListener::bind(config.bind)
            .map_err(|e| MetadataError::os(format_args!("bind {}", config.bind), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| MetadataError::os("read the bound address", e))?;
        let state = Arc::new(State {
            peers: RwLock::new(config.peers.clone()),
            config,
            store: Mutex::new(HashMap::new()),
            fabric: RwLock::new(None),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            stats: Stats::default(),
        });
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("discovery".into())
            .spawn(move || server::run(listener, st))
            .map_err(|e| MetadataError::os("spawn the discovery thread", e))?;
        log::info!(
            "discovery: engine {:?} serving on {local}",
            state.config.engine
        );
        Ok(Arc::new(PeerMetadata {
            state,
            local,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Where the server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Uses `fabric` for handshakes: its addresses go into this engine's hellos, and hellos
    /// from others are handed to its [`Fabric::accept`]. Held weakly: once the engine drops
    /// the fabric, handshakes go on without one.
    pub fn attach_fabric(&self, fabric: Arc<dyn Fabric>) {
        *self
            .state
            .fabric
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::downgrade(&fabric));
    }

    /// Adds a discovery server (`host:port`) to ask for plain names.
    pub fn add_peer(&self, peer: impl Into<String>) {
        self.state
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(peer.into());
    }

    /// Server counters.
    pub fn stats(&self) -> DiscoveryStats {
        let s = &self.state.stats;
        let conns = self
            .state
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        DiscoveryStats {
            accepted: s.accepted.load(Relaxed),
            rejected: s.rejected.load(Relaxed),
            served: s.served.load(Relaxed),
            evicted: s.evicted.load(Relaxed),
            open: conns.len() as u64,
            idle: conns.iter().filter(|c| c.idle.load(Acquire)).count() as u64,
        }
    }

    /// Handshakes with `server`. A `Busy` refusal (every slot taken, possibly by connections
    /// the server has not yet seen close) is retried a few times with a short back-off
    /// (1 ms doubling to 50 ms, 8 tries, about 160 ms in all) before it is reported.
    fn connect(&self, server: &str) -> Result<(TcpStream, PeerHello), MetadataError> {
        const BUSY_RETRIES: u32 = 8;
        let mut attempt = 0;
        loop {
            match self.connect_once(server) {
                Err((true, _)) if attempt < BUSY_RETRIES => {
                    std::thread::sleep(Duration::from_millis((1u64 << attempt).min(50)));
                    attempt += 1;
                }
                Err((_, e)) => return Err(e),
                Ok(v) => return Ok(v),
            }
        }
    }

    /// One handshake; an error says whether the server refused it as busy.
    fn connect_once(&self, server: &str) -> Result<(TcpStream, PeerHello), (bool, MetadataError)> {
        let c = &self.state.config;
        let unavailable = |why: String| {
            (
                false,
                MetadataError::Unavailable(format!("{server}: {why}")),
            )
        };
        let unreachable = |what: &'static str, e: std::io::Error| {
            (
                false,
                MetadataError::PeerIo {
                    server: server.to_owned(),
                    what,
                    source: e.into(),
                },
            )
        };
        let addrs: Vec<SocketAddr> = server
            .to_socket_addrs()
            .map_err(|e| unreachable("resolve", e))?
            .collect();
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, c.connect_timeout) {
                Ok(mut sock) => {
                    let _ = sock.set_nodelay(true);
                    let hello = Message::Hello(self.state.own_hello());
                    write_frame(&mut sock, &hello, c.frame_timeout)
                        .map_err(|e| (false, frame_failure(server, "send a frame", e)))?;
                    return match read_frame(
                        &mut sock,
                        c.max_frame,
                        c.frame_timeout,
                        c.frame_timeout,
                    ) {
                        Ok(Message::Welcome(w)) => Ok((sock, w)),
                        Ok(Message::Error { code, message }) => {
                            let (_, e) =
                                unavailable(format!("handshake refused ({code:?}): {message}"));
                            Err((code == ErrorCode::Busy, e))
                        }
                        Ok(_) => Err(unavailable("unexpected reply to hello".into())),
                        Err(e) => Err((false, frame_failure(server, "read a frame", e))),
                    };
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => unreachable("connect", e),
            None => unavailable("resolves to no address".into()),
        })
    }

    /// Handshakes with the discovery server at `server` (`host:port`) and returns what it
    /// says about itself. The server's fabric accepts this engine's addresses.
    pub fn hello(&self, server: &str) -> Result<PeerHello, MetadataError> {
        self.connect(server).map(|(_, w)| w)
    }

    /// Asks the server at `server` for segment `name`.
    pub fn fetch(&self, server: &str, name: &str) -> Result<SegmentDescriptor, MetadataError> {
        let c = &self.state.config;
        let (mut sock, _) = self.connect(server)?;
        let unavailable = |why: String| MetadataError::Unavailable(format!("{server}: {why}"));
        write_frame(
            &mut sock,
            &Message::Lookup(name.to_string()),
            c.frame_timeout,
        )
        .map_err(|e| frame_failure(server, "send a frame", e))?;
        match read_frame(&mut sock, c.max_frame, c.frame_timeout, c.frame_timeout) {
            Ok(Message::Found(d)) if d.name == name => Ok(d),
            Ok(Message::Found(d)) => {
                Err(unavailable(format!("asked for {name:?}, got {:?}", d.name)))
            }
            Ok(Message::Error {
                code: ErrorCode::NotFound,
                ..
            }) => Err(MetadataError::NotFound(name.to_string())),
            Ok(Message::Error { code, message }) => {
                Err(unavailable(format!("{code:?}: {message}")))
            }
            Ok(_) => Err(unavailable("unexpected reply to lookup".into())),
            Err(FrameError::Wire(e)) => Err(unavailable(format!("malformed reply: {e}"))),
            Err(e) => Err(frame_failure(server, "read a frame", e)),
        }
    }

    /// Asks the server at `server` (`host:port`) which segments it publishes under names that
    /// start with `prefix` (`""` for all): their names and address ranges, in name order. A
    /// server older than protocol 1.2 closes the connection instead
    /// ([`MetadataError::Unavailable`]).
    pub fn list(&self, server: &str, prefix: &str) -> Result<Listing, MetadataError> {
        let c = &self.state.config;
        let (mut sock, _) = self.connect(server)?;
        let unavailable = |why: String| MetadataError::Unavailable(format!("{server}: {why}"));
        write_frame(
            &mut sock,
            &Message::List(prefix.to_string()),
            c.frame_timeout,
        )
        .map_err(|e| frame_failure(server, "send a frame", e))?;
        match read_frame(&mut sock, c.max_frame, c.frame_timeout, c.frame_timeout) {
            Ok(Message::Listing(l)) => Ok(l),
            Ok(Message::Error { code, message }) => {
                Err(unavailable(format!("{code:?}: {message}")))
            }
            Ok(_) => Err(unavailable("unexpected reply to list".into())),
            Err(e) => Err(frame_failure(server, "read a frame", e)),
        }
    }

    /// The segments this engine publishes under names that start with `prefix`, as
    /// [`PeerMetadata::list`] reports them to peers (without the frame limit).
    pub fn local_list(&self, prefix: &str) -> Vec<SegmentSummary> {
        self.state.list(prefix, usize::MAX).segments
    }

    /// Stops the server (also on drop). Lookups by this instance still work.
    pub fn shutdown(&self) {
        if self.state.stop.swap(true, AcqRel) {
            return;
        }
        let _ = TcpStream::connect_timeout(&self.local, Duration::from_millis(200));
        let t = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

impl Drop for PeerMetadata {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Metadata for PeerMetadata {
    fn publish(&self, desc: &SegmentDescriptor) -> Result<(), MetadataError> {
        // Encode once so a descriptor this engine could not send is refused here.
        desc.encode().map_err(|source| MetadataError::Corrupt {
            name: desc.name.clone(),
            source,
        })?;
        let mut store = self
            .state
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = store.get(&desc.name) {
            if old.engine != desc.engine {
                return Err(MetadataError::Conflict {
                    name: desc.name.clone(),
                    owner: old.engine.clone(),
                });
            }
        }
        store.insert(desc.name.clone(), desc.clone());
        Ok(())
    }

    fn lookup(&self, name: &str) -> Result<SegmentDescriptor, MetadataError> {
        // Local names first, even those shaped like `host:port/segment`.
        if let Some(d) = self.state.find(name) {
            return Ok(d);
        }
        if let Some((server, seg)) = split_remote_name(name) {
            return self.fetch(server, seg);
        }
        let peers = self
            .state
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut failures = Vec::new();
        for p in &peers {
            match self.fetch(p, name) {
                Ok(d) => return Ok(d),
                Err(MetadataError::NotFound(_)) => {}
                Err(e) => {
                    log::warn!("discovery: peer {p} unavailable: {e}");
                    failures.push(e.to_string());
                }
            }
        }
        if !peers.is_empty() && failures.len() == peers.len() {
            return Err(MetadataError::Unavailable(failures.join("; ")));
        }
        Err(MetadataError::NotFound(name.to_string()))
    }

    fn remove(&self, name: &str) -> Result<bool, MetadataError> {
        Ok(self
            .state
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_names_split_at_the_first_slash() {
        assert_eq!(
            split_remote_name("127.0.0.1:7000/kv/0"),
            Some(("127.0.0.1:7000", "kv/0"))
        );
        assert_eq!(split_remote_name("node-b:80/w"), Some(("node-b:80", "w")));
        assert_eq!(split_remote_name("[::1]:9/x"), Some(("[::1]:9", "x")));
        for plain in ["kv/0", "kv", "a:b/c", "h:99999/x", "h:1/", ":1/x"] {
            assert_eq!(split_remote_name(plain), None, "{plain}");
        }
    }
}

//! `tcp`: the fabric over real sockets, for engines in different processes or hosts without an
//! RDMA device.
//!
//! - **Streams**: each worker's [`Endpoint`] opens one TCP stream per (peer, rail) on first
//!   use; [`TcpConfig::rails`] sets how many rails (streams per peer per worker) there are,
//!   and the engine stripes slices over them. Sockets use `TCP_NODELAY` (the endpoint batches
//!   frames itself) and vectored I/O.
//! - **Hot path**: `post`/`poll` do the socket I/O themselves on non-blocking sockets: no I/O
//!   thread, no hand-off, no shared queue, no lock, no allocation in steady state (a stream's
//!   ring and buffers are allocated once, at its first use). Only the first request to a peer
//!   on a rail waits for the connection (bounded by [`TcpConfig::connect_timeout`]). Each stream holds at most [`TcpConfig::queue_depth`]
//!   requests; `post` accepts a prefix when one is full.
//! - **Target side**: a listener thread and one service thread per connection (at most
//!   [`TcpConfig::max_connections`]; a connection must say hello within
//!   [`TcpConfig::connect_timeout`]) check every request against the registrations (the
//!   remote key names a registration: key, bounds and rights are checked) and answer
//!   violations with `REMOTE_BAD_ADDRESS`, and requests larger than the target's
//!   `max_transfer_size` with `EXCEEDS_PEER_LIMIT`; a malformed frame closes that connection
//!   only. See `wire.rs` for the frame layout.
//! - **Dead peers**: a stream whose connection breaks, or that makes no progress for
//!   [`TcpConfig::timeout`] while requests are outstanding, fails them with
//!   `UNRESP_REMOTE`. Other peers' streams are untouched. A later post reconnects (after
//!   [`TcpConfig::reconnect_backoff`], or at once after a fresh [`Fabric::connect`] to the
//!   peer, which `open_segment` does).
//! - **Addresses**: per rail `"TCP1" | rail u16 | instance u64 | "ip:port"`. The instance is a
//!   random number per fabric, checked by the target's hello, so a stale descriptor of a
//!   restarted peer on the same port is refused instead of reaching new memory.

mod endpoint;
mod service;
mod sys;
mod wire;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::fabric::regions::{self, Regions};
use crate::fabric::{
    Capabilities, Endpoint, Fabric, MemoryRegion, PeerId, Registration, MAX_RAILS,
};
use crate::{FabricError, Notifications};

/// Settings of a tcp fabric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// Where the service listener binds (`127.0.0.1:0` by default: loopback, any port).
    pub bind: SocketAddr,
    /// The address peers should dial, when it differs from the bound one (required when
    /// binding an unspecified address such as `0.0.0.0`).
    pub advertise: Option<SocketAddr>,
    /// Rails, `1..=MAX_RAILS`: one TCP stream per rail per peer per worker.
    pub rails: u16,
    /// Requests in flight per stream (the send-queue depth), `1..=MAX_QUEUE_DEPTH`.
    pub queue_depth: u32,
    /// Largest READ/WRITE in one request, `1..=MAX_TRANSFER_LIMIT`. A target answers larger
    /// requests with `EXCEEDS_PEER_LIMIT` (the connection stays up), so peers with different
    /// limits work together as long as the initiator's slices fit the target's limit.
    pub max_transfer_size: u64,
    /// A stream with outstanding requests that moves no byte for this long is declared dead
    /// (its requests fail with `UNRESP_REMOTE`); a target drops a connection stalled
    /// mid-frame for this long.
    pub timeout: Duration,
    /// Bound on connecting and greeting a peer.
    pub connect_timeout: Duration,
    /// After a stream fails, posts to it fail at once for this long before a reconnect is
    /// tried (unless the peer is connected anew).
    pub reconnect_backoff: Duration,
    /// `SO_SNDBUF`/`SO_RCVBUF` for every socket (`1..=MAX_SOCKET_BUFFER`); `None` keeps the
    /// kernel's autotuning.
    pub socket_buffer: Option<usize>,
    /// When a worker's `poll` finds nothing to do many times in a row while requests are
    /// outstanding, it sleeps in `ppoll` until a socket is ready, for at most this long, instead
    /// of spinning (which starves a receiver on the same cores). `None`: `poll` never waits;
    /// else at most [`MAX_IDLE_WAIT`].
    pub idle_wait: Option<Duration>,
    /// Most registrations, `1..=MAX_TABLE`.
    pub max_regions: usize,
    /// Most peers, `1..=MAX_TABLE`.
    pub max_peers: usize,
    /// Most incoming data connections served at once (one service thread each),
    /// `1..=MAX_CONNECTIONS`. A quarter of
    /// them (at least one) may be still waiting for their hello, which is due within
    /// `connect_timeout`. Connections beyond either limit are answered with a refusal at once
    /// and closed.
    pub max_connections: usize,
    /// Where the listener thread runs; the service threads it starts inherit its cpus. TCP has
    /// no RDMA device to read a NUMA node from, so the default
    /// ([`Affinity::DeviceNuma`](crate::affinity::Affinity::DeviceNuma)) leaves them unpinned;
    /// [`Affinity::Cpus`](crate::affinity::Affinity::Cpus) pins them.
    pub affinity: crate::affinity::Affinity,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            rails: 1,
            queue_depth: 64,
            max_transfer_size: 64 << 20,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            reconnect_backoff: Duration::from_millis(500),
            socket_buffer: None,
            idle_wait: Some(Duration::from_micros(500)),
            max_regions: 1024,
            max_peers: 1024,
            max_connections: 256,
            affinity: crate::affinity::Affinity::default(),
        }
    }
}

/// Counters of a fabric's target side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpStats {
    /// Connections accepted.
    pub connections: u64,
    /// Requests served.
    pub served: u64,
    /// Requests answered with an error (bad key, bounds or rights).
    pub denied: u64,
    /// Connections closed for a malformed frame or refused hello.
    pub rejected: u64,
    /// Connections closed for a stall, truncation or I/O error.
    pub dropped: u64,
    /// Connections refused at once because `max_connections` (or its share for connections
    /// still waiting for their hello) was reached.
    pub refused: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    connections: AtomicU64,
    served: AtomicU64,
    denied: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    /// Service threads running now...
    serving: AtomicUsize,
    /// ...and those of them still waiting for the hello.
    greeting: AtomicUsize,
}

#[derive(Debug)]
pub(crate) struct Peer {
    addrs: Vec<SocketAddr>,
    instance: u64,
    /// Bumped by every `connect`: lets a failed stream reconnect without waiting out its
    /// back-off.
    epoch: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    config: TcpConfig,
    instance: u64,
    regions: Regions,
    notifications: OnceLock<Arc<Notifications>>,
    peers: Box<[OnceLock<Peer>]>,
    stop: AtomicBool,
    stats: Stats,
}

/// One engine's tcp fabric. See the [module docs](self).
///
/// Dropping it (normally with its engine) stops the service threads and retires every
/// registration before the engine frees owned memory, since the engine drops its fabric first.
/// A clone of the `Arc` kept past the engine keeps peers able to reach that memory: drop it
/// with the engine, or call [`TcpFabric::shutdown`] first.
#[derive(Debug)]
pub struct TcpFabric {
    shared: Arc<Shared>,
    local: SocketAddr,
    peer_ids: Mutex<HashMap<Vec<Vec<u8>>, PeerId>>,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// The cpus the listener (and so every service thread) was pinned to.
    cpus: Option<crate::affinity::CpuSet>,
}

const ADDR_MAGIC: &[u8; 4] = b"TCP1";

fn random_instance() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() | 1
}

/// Encodes a rail address.
fn encode_address(rail: u16, instance: u64, addr: SocketAddr) -> Vec<u8> {
    let text = addr.to_string();
    let mut a = Vec::with_capacity(14 + text.len());
    a.extend_from_slice(ADDR_MAGIC);
    a.extend_from_slice(&rail.to_le_bytes());
    a.extend_from_slice(&instance.to_le_bytes());
    a.extend_from_slice(text.as_bytes());
    a
}

/// A parsed per-rail address: the rail, the fabric instance and the socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpAddress {
    /// Rail index the address was published for.
    pub rail: u16,
    /// Random incarnation number of the fabric that published it.
    pub instance: u64,
    /// Where its service listener accepts connections.
    pub socket: SocketAddr,
}

impl TcpAddress {
    /// Parses the opaque address bytes a tcp fabric publishes for one rail.
    pub fn parse(rail: u16, bytes: &[u8]) -> Result<TcpAddress, FabricError> {
        let bad = |reason: String| FabricError::BadAddress { rail, reason };
        if bytes.len() < 14 || &bytes[..4] != ADDR_MAGIC {
            return Err(bad(format!("not a tcp address ({} bytes)", bytes.len())));
        }
        let r = u16::from_le_bytes([bytes[4], bytes[5]]);
        let mut inst = [0u8; 8];
        inst.copy_from_slice(&bytes[6..14]);
        let text = std::str::from_utf8(&bytes[14..])
            .map_err(|_| bad("socket address is not UTF-8".into()))?;
        let socket = text
            .parse()
            .map_err(|_| bad(format!("bad socket address {text:?}")))?;
        Ok(TcpAddress {
            rail: r,
            instance: u64::from_le_bytes(inst),
            socket,
        })
    }
}

/// Largest [`TcpConfig::queue_depth`].
pub const MAX_QUEUE_DEPTH: u32 = 1 << 16;
/// Largest [`TcpConfig::max_transfer_size`] (1 TiB); a request header claiming more is
/// malformed and closes its connection.
pub const MAX_TRANSFER_LIMIT: u64 = 1 << 40;
/// Largest [`TcpConfig::max_peers`] and [`TcpConfig::max_regions`].
pub const MAX_TABLE: usize = 1 << 16;
/// Largest [`TcpConfig::max_connections`] (one service thread each).
pub const MAX_CONNECTIONS: usize = 4096;
/// Largest [`TcpConfig::socket_buffer`] (the kernel doubles it into an `int`).
pub const MAX_SOCKET_BUFFER: usize = 1 << 30;
/// Longest [`TcpConfig::idle_wait`] (a `poll` may sleep this long).
pub const MAX_IDLE_WAIT: Duration = Duration::from_secs(1);

/// Refuses settings that cannot work, naming the value (a zero timeout, a table that would
/// exhaust memory, ...).
fn check_config(c: &TcpConfig) -> Result<(), FabricError> {
    use crate::fabric::{check_nonzero, check_range};
    check_range("tcp", "rails", c.rails, 1..=MAX_RAILS as u16)?;
    check_range("tcp", "queue_depth", c.queue_depth, 1..=MAX_QUEUE_DEPTH)?;
    check_range(
        "tcp",
        "max_transfer_size",
        c.max_transfer_size,
        1..=MAX_TRANSFER_LIMIT,
    )?;
    check_nonzero("tcp", "timeout", c.timeout)?;
    check_nonzero("tcp", "connect_timeout", c.connect_timeout)?;
    if let Some(b) = c.socket_buffer {
        check_range("tcp", "socket_buffer", b, 1..=MAX_SOCKET_BUFFER)?;
    }
    if let Some(w) = c.idle_wait {
        check_range(
            "tcp",
            "idle_wait",
            w,
            Duration::from_nanos(1)..=MAX_IDLE_WAIT,
        )?;
    }
    check_range("tcp", "max_regions", c.max_regions, 1..=MAX_TABLE)?;
    check_range("tcp", "max_peers", c.max_peers, 1..=MAX_TABLE)?;
    check_range(
        "tcp",
        "max_connections",
        c.max_connections,
        1..=MAX_CONNECTIONS,
    )
}

impl TcpFabric {
    /// Binds the service listener and starts its thread. Every setting is checked first
    /// ([`FabricError::BadConfig`] names the one out of range).
    ///
    /// # Errors
    ///
    /// [`FabricError::BadConfig`] names a setting out of range (also an unspecified `bind` address
    /// without `advertise`); [`FabricError::Os`] when the listener cannot bind or start (the cause is
    /// the OS error).
    pub fn new(config: TcpConfig) -> Result<Arc<TcpFabric>, FabricError> {
        check_config(&config)?;
        let listener = TcpListener::bind(config.bind)
            .map_err(|e| FabricError::os("tcp", format_args!("bind {}", config.bind), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| FabricError::os("tcp", "read the bound address", e))?;
        let local = match config.advertise {
            Some(a) => a,
            None if bound.ip().is_unspecified() => {
                return Err(FabricError::BadConfig {
                    fabric: "tcp",
                    field: "advertise",
                    value: format!("None (bound to {bound})"),
                    expected: "an address peers can dial when `bind` is unspecified".into(),
                })
            }
            None => bound,
        };
        let shared = Arc::new(Shared {
            regions: Regions::new(config.max_regions),
            peers: (0..config.max_peers).map(|_| OnceLock::new()).collect(),
            instance: random_instance(),
            notifications: OnceLock::new(),
            stop: AtomicBool::new(false),
            stats: Stats::default(),
            config,
        });
        let cpus = shared
            .config
            .affinity
            .for_fabric::<&std::path::Path>("tcp", &[])
            .map_err(|e| FabricError::affinity("tcp", "listener thread", e))?;
        let s = shared.clone();
        let handle = crate::affinity::spawn_pinned("tcp-listener", cpus, move || {
            service::run_listener(listener, s)
        })
        .map_err(|e| FabricError::affinity("tcp", "the listener thread", e))?;
        log::info!("tcp fabric: serving on {bound} (advertised as {local})");
        Ok(Arc::new(TcpFabric {
            shared,
            local,
            peer_ids: Mutex::new(HashMap::new()),
            listener: Mutex::new(Some(handle)),
            cpus,
        }))
    }

    /// The address peers dial.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// This fabric's random incarnation number (part of its addresses).
    pub fn instance(&self) -> u64 {
        self.shared.instance
    }

    /// Target-side counters.
    pub fn stats(&self) -> TcpStats {
        let s = &self.shared.stats;
        TcpStats {
            connections: s.connections.load(Relaxed),
            served: s.served.load(Relaxed),
            denied: s.denied.load(Relaxed),
            rejected: s.rejected.load(Relaxed),
            dropped: s.dropped.load(Relaxed),
            refused: s.refused.load(Relaxed),
        }
    }

    fn parse_peer(&self, remote: &[Vec<u8>]) -> Result<(u64, Vec<SocketAddr>), FabricError> {
        if remote.is_empty() || remote.len() > MAX_RAILS {
            return Err(FabricError::BadAddress {
                rail: 0,
                reason: format!("{} rails listed", remote.len()),
            });
        }
        let mut instance = None;
        let mut addrs = Vec::with_capacity(remote.len());
        for (i, bytes) in remote.iter().enumerate() {
            let rail = i as u16;
            let a = TcpAddress::parse(rail, bytes)?;
            if a.rail != rail {
                return Err(FabricError::BadAddress {
                    rail,
                    reason: format!("address of rail {} listed as rail {rail}", a.rail),
                });
            }
            if *instance.get_or_insert(a.instance) != a.instance {
                return Err(FabricError::BadAddress {
                    rail,
                    reason: "rails of different fabric instances".into(),
                });
            }
            addrs.push(a.socket);
        }
        Ok((instance.unwrap_or(0), addrs))
    }

    /// Stops the listener and service threads and retires every registration (waiting for
    /// requests that use one). Called on drop; later peer requests fail to connect.
    pub fn shutdown(&self) {
        if self.shared.stop.swap(true, AcqRel) {
            return;
        }
        // Wake the blocking accept so the listener sees the flag.
        let _ = TcpStream::connect_timeout(&self.local, Duration::from_millis(200));
        let handle = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        self.shared.regions.retire_all();
    }
}

impl Drop for TcpFabric {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Fabric for TcpFabric {
    fn name(&self) -> &str {
        "tcp"
    }

    fn capabilities(&self) -> Capabilities {
        let c = &self.shared.config;
        Capabilities {
            rails: c.rails,
            max_transfer_size: c.max_transfer_size,
            max_message_size: 0,
            queue_depth: c.queue_depth,
            supports_read: true,
            supports_write: true,
            supports_notify: true,
            // The target places a WRITE_NOTIFY's payload, counts its tag, then responds.
            supports_write_notify: true,
        }
    }

    fn local_addresses(&self) -> Vec<Vec<u8>> {
        (0..self.shared.config.rails)
            .map(|r| encode_address(r, self.shared.instance, self.local))
            .collect()
    }

    unsafe fn register(&self, region: MemoryRegion) -> Result<Registration, FabricError> {
        regions::register(
            &self.shared.regions,
            region,
            self.shared.config.rails,
            "tcp memory regions",
        )
    }

    fn deregister(&self, registration: &Registration) -> Result<(), FabricError> {
        regions::deregister(&self.shared.regions, registration, "tcp")
    }

    fn decode_remote_key(&self, rail: u16, key: &[u8]) -> Result<u64, FabricError> {
        regions::decode_key(rail, key)
    }

    fn connect(&self, remote: &[Vec<u8>]) -> Result<PeerId, FabricError> {
        let (instance, addrs) = self.parse_peer(remote)?;
        // Greet the peer once now, so an unreachable or restarted peer is an error of the
        // open, not of every later request.
        endpoint::open(&self.shared, addrs[0], 0, instance).map_err(|e| {
            FabricError::BadAddress {
                rail: 0,
                reason: format!("cannot reach tcp peer {}: {e}", addrs[0]),
            }
        })?;
        let mut ids = self.peer_ids.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&id) = ids.get(remote) {
            if let Some(p) = self.shared.peers[id as usize].get() {
                p.epoch.fetch_add(1, AcqRel);
            }
            return Ok(id);
        }
        let id = ids.len();
        let slot = self
            .shared
            .peers
            .get(id)
            .ok_or(FabricError::Exhausted("tcp peers"))?;
        let _ = slot.set(Peer {
            addrs,
            instance,
            epoch: AtomicU64::new(0),
        });
        ids.insert(remote.to_vec(), id as PeerId);
        log::debug!(
            "tcp fabric: peer {id} is {:?}",
            slot.get().map(|p| &p.addrs)
        );
        Ok(id as PeerId)
    }

    fn accept(&self, initiator: &[Vec<u8>]) -> Result<(), FabricError> {
        // TCP needs no per-initiator state on the target; check the addresses only.
        self.parse_peer(initiator).map(|_| ())
    }

    fn bind_notifications(&self, sink: Arc<Notifications>) {
        let _ = self.shared.notifications.set(sink);
    }

    fn local_cpus(&self) -> Option<crate::affinity::CpuSet> {
        self.cpus
    }

    fn endpoint(&self) -> Result<Box<dyn Endpoint>, FabricError> {
        Ok(Box::new(endpoint::TcpEndpoint::new(self.shared.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_reject_garbage() {
        let sock: SocketAddr = "10.1.2.3:4567".parse().unwrap();
        let a = encode_address(2, 99, sock);
        assert_eq!(
            TcpAddress::parse(2, &a).unwrap(),
            TcpAddress {
                rail: 2,
                instance: 99,
                socket: sock
            }
        );
        assert!(TcpAddress::parse(0, b"SIM\0\0\0\0\0\0").is_err());
        let mut bad = a.clone();
        bad.truncate(20);
        assert!(TcpAddress::parse(0, &bad).is_err());
        assert!(TcpAddress::parse(0, &a[..10]).is_err());
    }

    #[test]
    fn config_is_checked() {
        let c = TcpConfig {
            rails: 0,
            ..TcpConfig::default()
        };
        assert!(matches!(
            TcpFabric::new(c),
            Err(FabricError::BadConfig { field: "rails", .. })
        ));
        let c = TcpConfig {
            bind: "0.0.0.0:0".parse().unwrap(),
            ..TcpConfig::default()
        };
        assert!(matches!(
            TcpFabric::new(c),
            Err(FabricError::BadConfig {
                field: "advertise",
                ..
            })
        ));
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpConfig {
            bind: taken.local_addr().unwrap(),
            ..TcpConfig::default()
        };
        match TcpFabric::new(c) {
            Err(FabricError::Os { fabric, source, .. }) => {
                assert_eq!(fabric, "tcp");
                assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse, "{source}");
                assert!(source.raw_os_error().is_some());
            }
            other => panic!("expected the OS error of bind, got {other:?}"),
        }
    }
}

//! Both sides in this process: two engines on the chosen fabric, each side's work on its own threads.

use crate::measure::{self, Link, StreamOp, StreamResult, TAG_SEND};
use crate::runner::{BwMeasurement, LatMeasurement, Point, Runner, Setup};
use crate::stats::{windows_of, Window};
use crate::{cli::Verb, cpu};
use anyhow::{anyhow, Context};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use transport::fabric::Fabric;
use transport::{Access, Engine, LocalRegistry, Location, OwnedMemory};

/// Name of each side's segment.
pub const SERVER_SEGMENT: &str = "efa-perf/server";
/// Name of the client's segment.
pub const CLIENT_SEGMENT: &str = "efa-perf/client";

/// Two engines wired to each other.
pub struct Loopback {
    client: Link,
    server: Link,
    setup: Setup,
    timeout: Duration,
}

/// Maps a verb onto a stream operation.
pub fn stream_op(verb: Verb) -> StreamOp {
    match verb {
        Verb::Send | Verb::Notify => StreamOp::Send,
        Verb::Write => StreamOp::Write,
        Verb::Read => StreamOp::Read,
    }
}

/// Registers a zeroed segment of `len` bytes on `engine` under `name`.
pub fn register(engine: &Engine, name: &str, len: u64) -> anyhow::Result<transport::SegmentId> {
    let len = usize::try_from(len)
        .map_err(|_| anyhow!("segment of {len} bytes does not fit in memory"))?;
    let mem = OwnedMemory::zeroed(len, 4096).map_err(|e| anyhow!("allocating {len} bytes: {e}"))?;
    engine
        .register_owned(name, mem, Location::Cpu(0), Access::REMOTE_READ_WRITE)
        .with_context(|| format!("registering segment {name} ({len} bytes)"))
}

/// Engines on two fabric instances that reach each other, each with a segment of `len` bytes (its
/// stripes) that the other has opened: the client's link and the server's.
pub fn link_pair(
    server_fabric: Arc<dyn Fabric>,
    client_fabric: Arc<dyn Fabric>,
    server_config: transport::EngineConfig,
    client_config: transport::EngineConfig,
    stripe: u64,
    len: u64,
) -> anyhow::Result<(Link, Link)> {
    let registry = Arc::new(LocalRegistry::new());
    let server = Engine::new(server_config, server_fabric, registry.clone())
        .context("creating the server engine")?;
    let client = Engine::new(client_config, client_fabric, registry)
        .context("creating the client engine")?;
    let sseg = register(&server, SERVER_SEGMENT, len)?;
    let cseg = register(&client, CLIENT_SEGMENT, len)?;
    let to_server = client
        .open_segment(SERVER_SEGMENT)
        .context("client opening the server's segment")?;
    let to_client = server
        .open_segment(CLIENT_SEGMENT)
        .context("server opening the client's segment")?;
    Ok((
        Link {
            engine: client,
            local: cseg,
            remote: to_server,
            stripe,
        },
        Link {
            engine: server,
            local: sseg,
            remote: to_client,
            stripe,
        },
    ))
}

impl Loopback {
    /// Builds engines on the two fabric instances (which must reach each other) and opens each side's
    /// segment from the other.
    pub fn new(
        server_fabric: Arc<dyn Fabric>,
        client_fabric: Arc<dyn Fabric>,
        setup: Setup,
        stripe: u64,
        streams: u32,
        timeout: Duration,
        params: &crate::fabrics::Params,
    ) -> anyhow::Result<Self> {
        let (client, server) = link_pair(
            server_fabric,
            client_fabric,
            crate::fabrics::engine_config("efa-perf-server", params),
            crate::fabrics::engine_config("efa-perf-client", params),
            stripe,
            stripe * streams as u64,
        )?;
        Ok(Self {
            client,
            server,
            setup,
            timeout,
        })
    }
}

/// Adds up streams: total over the longest stream's time, windows merged across streams.
pub fn combine(results: &[StreamResult], streams: u32, depth: u32) -> (Window, Vec<Window>) {
    let ops: u64 = results.iter().map(|r| r.ops).sum();
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let end = results.iter().map(|r| r.end).max().unwrap_or_default();
    let mut events: Vec<_> = results
        .iter()
        .flat_map(|r| r.events.iter().copied())
        .collect();
    // Windows of at least one full queue of every stream, and at least 1/64 of the run, so one lucky
    // completion burst does not make the peak.
    let min_ops = (streams as u64 * depth as u64).max(ops / 64);
    (
        Window {
            bytes,
            ops,
            elapsed: end,
        },
        windows_of(&mut events, min_ops),
    )
}

impl Runner for Loopback {
    fn setup(&self) -> Setup {
        self.setup.clone()
    }

    fn engines(&self) -> Vec<Engine> {
        vec![self.client.engine.clone(), self.server.engine.clone()]
    }

    fn bandwidth(&mut self, p: &Point) -> anyhow::Result<BwMeasurement> {
        let op = stream_op(p.verb);
        let timeout = self.timeout;
        let wall0 = Instant::now();
        let proc0 = cpu::process_cpu();
        let start = Instant::now();
        let (client_results, server_results) = std::thread::scope(|s| {
            let spawn = |link: &Link, i: u32| {
                let link = link.clone();
                s.spawn(move || measure::stream(&link, i, op, p, start, timeout))
            };
            let c: Vec<_> = (0..p.streams).map(|i| spawn(&self.client, i)).collect();
            let sv: Vec<_> = if p.bidirectional {
                (0..p.streams).map(|i| spawn(&self.server, i)).collect()
            } else {
                Vec::new()
            };
            let join =
                |hs: Vec<std::thread::ScopedJoinHandle<'_, anyhow::Result<StreamResult>>>| {
                    hs.into_iter()
                        .map(|h| h.join().map_err(|_| anyhow!("a stream thread panicked"))?)
                        .collect::<anyhow::Result<Vec<_>>>()
                };
            (join(c), join(sv))
        });
        let (client_results, server_results) = (client_results?, server_results?);
        if op == StreamOp::Send {
            // Two-sided: each side must have received every message the other sent.
            let to_server: u64 = client_results.iter().map(|r| r.ops).sum();
            let to_client: u64 = server_results.iter().map(|r| r.ops).sum();
            for (link, n, who) in [
                (&self.server, to_server, "server"),
                (&self.client, to_client, "client"),
            ] {
                if n > 0 {
                    measure::await_tag(&link.engine, TAG_SEND, n, timeout)
                        .with_context(|| format!("{who} receiving SENDs"))?;
                    link.engine.notifications().consume(TAG_SEND, n)?;
                }
            }
        }
        let wall = wall0.elapsed();
        let proc = cpu::process_cpu().saturating_sub(proc0);
        let all: Vec<StreamResult> = client_results
            .iter()
            .chain(server_results.iter())
            .cloned()
            .collect();
        let (total, windows) = combine(
            &all,
            p.streams * if p.bidirectional { 2 } else { 1 },
            p.depth,
        );
        let client_cpu: Duration = client_results.iter().map(|r| r.cpu).sum();
        Ok(BwMeasurement {
            total,
            windows,
            cpu_client: p.cpu.then(|| cpu::percent(client_cpu, wall)),
            // Everything else this process did: the server's threads and the fabric's own.
            cpu_server: p
                .cpu
                .then(|| cpu::percent(proc.saturating_sub(client_cpu), wall)),
        })
    }

    fn latency(&mut self, p: &Point) -> anyhow::Result<LatMeasurement> {
        let op = stream_op(p.verb);
        let timeout = self.timeout;
        let wall0 = Instant::now();
        let proc0 = cpu::process_cpu();
        let stop = AtomicBool::new(false);
        if op == StreamOp::Write {
            self.client.reset_rx(p.size)?;
            self.server.reset_rx(p.size)?;
        }
        let (client, server) = std::thread::scope(|s| {
            let server = (op != StreamOp::Read).then(|| {
                let link = self.server.clone();
                let stop = &stop;
                s.spawn(move || measure::latency_server(&link, op, p.size, stop, timeout))
            });
            let client = measure::latency_client(&self.client, op, p.size, p.amount, timeout);
            // Also on failure, so the server stops waiting for pings at once.
            stop.store(true, Ordering::Release);
            let server = server
                .map(|h| h.join().map_err(|_| anyhow!("server thread panicked"))?)
                .transpose();
            (client, server)
        });
        let (samples, client_cpu) = client?;
        server?;
        let wall = wall0.elapsed();
        let proc = cpu::process_cpu().saturating_sub(proc0);
        Ok(LatMeasurement {
            samples_us: samples,
            cpu_client: p.cpu.then(|| cpu::percent(client_cpu, wall)),
            cpu_server: p
                .cpu
                .then(|| cpu::percent(proc.saturating_sub(client_cpu), wall)),
        })
    }
}
